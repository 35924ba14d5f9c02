# A PostgreSQL server for scripts/test.sh (sourced, not run): Debian's
# server binaries (the machine's, or the `postgresql-15` package downloaded
# through a private apt directory and cached outside the repository), a
# cluster made by initdb in a temporary directory, no system service.
#
# `pg_start DIR` makes the cluster in DIR, starts it on a free loopback port
# (as `nobody` when run as root: PostgreSQL refuses root), waits until it
# accepts connections and leaves the URL of its `postgres` database
# (superuser `relay`, trust authentication on loopback) in PG_URL; the PID
# goes to the caller's PIDS array.

# shellcheck source=scripts/test-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/test-lib.sh"

PG_DEB=postgresql-15
PG_CACHE=${RELAY_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/relay-test}/$PG_DEB

# Leaves the directory of initdb and postgres in PG_BIN.
pg_fetch() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "${RELAY_TEST_PG_DOWNLOAD:-}" ] && [ -n "$found" ] && [ -x "$found/initdb" ] && [ -x "$found/postgres" ]; then
    PG_BIN=$found
    return 0
  fi
  if [ ! -x "$PG_CACHE/usr/lib/postgresql/15/bin/postgres" ]; then
    local work
    work=$(mktemp -d)
    apt_private "$work"
    (cd "$work" && apt-get "${APT_PRIVATE[@]}" -qq download "$PG_DEB" libpq5)
    mkdir -p "$PG_CACHE"
    for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$PG_CACHE"; done
    rm -rf "$work"
  fi
  PG_BIN=$PG_CACHE/usr/lib/postgresql/15/bin
  export LD_LIBRARY_PATH=$PG_CACHE/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  if ldd "$PG_BIN/postgres" | grep -q 'not found'; then
    echo "PostgreSQL's server needs libraries this machine lacks:" >&2
    ldd "$PG_BIN/postgres" | grep 'not found' >&2
    return 1
  fi
}

pg_start() {
  local dir=$1 port as=()
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown -R nobody:nogroup "$dir"
    as=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
  fi
  "${as[@]}" "$PG_BIN/initdb" -D "$dir/data" -U relay --auth=trust --encoding=UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
    { echo "initdb failed; its output:" >&2; cat "$dir/initdb.log" >&2; return 1; }
  port=$(free_port)
  # fsync off: the server's own durability is not under test (clients are
  # killed, never the server), and its disk writes would slow every test.
  "${as[@]}" "$PG_BIN/postgres" -D "$dir/data" -h 127.0.0.1 -p "$port" -k "$dir" \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 \
    >"$dir/postgres.log" 2>&1 &
  PIDS+=("$!")
  PG_URL="postgres://relay@127.0.0.1:$port/postgres"
  if ! wait_for "$PG_BIN/pg_isready -q -h 127.0.0.1 -p $port" 30; then
    echo "PostgreSQL did not become ready; its log:" >&2
    tail -n 40 "$dir/postgres.log" >&2
    return 1
  fi
}
