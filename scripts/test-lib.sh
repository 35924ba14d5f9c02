# Helpers for the test-server scripts (sourced, not run).

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Wait until command `$1` succeeds, up to `$2` seconds.
wait_for() {
  local i
  for i in $(seq 1 $(($2 * 4))); do
    if eval "$1" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.25
  done
  return 1
}

# Whether a GET of URL `$1` answers 2xx.
http_ok() {
  python3 -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null
}

# A private apt directory: the machine's own Debian apt source entries copied
# into a work directory, so packages and source packages can be downloaded
# without installing anything system-wide and without naming any host. After
# `apt_private WORK`, run `apt-get "${APT_PRIVATE[@]}" …`.

apt_private() {
  local work=$1
  mkdir -p "$work/apt/sources.list.d" "$work/apt/lists/partial" "$work/apt/cache/archives/partial"
  # The machine's own Debian entries, with source packages too.
  local found=0 f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    if grep -q '^URIs:.*debian' "$f"; then
      sed -e 's/^Types: deb$/Types: deb deb-src/' "$f" >"$work/apt/sources.list.d/$(basename "$f")"
      found=1
    fi
  done
  if [ -f /etc/apt/sources.list ] && grep -q '^deb .*debian' /etc/apt/sources.list; then
    grep '^deb .*debian' /etc/apt/sources.list | sed -e 's/^deb /deb-src /' >"$work/apt/sources.list.d/debian-src.list"
    grep '^deb .*debian' /etc/apt/sources.list >>"$work/apt/sources.list.d/debian-src.list"
    found=1
  fi
  if [ "$found" = 0 ]; then
    echo "no Debian apt source entry found in /etc/apt" >&2
    return 1
  fi
  APT_PRIVATE=(-o "APT::Sandbox::User=root" -o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$work/apt/sources.list.d"
    -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache")
  apt-get "${APT_PRIVATE[@]}" -qq update
}
