# A Prometheus server for scripts/test.sh (sourced, not run), from Debian's
# `prometheus` package, downloaded through a private apt directory (nothing
# installed system-wide) and cached outside the repository.
#
# `prom_start DIR TARGET` writes DIR/prometheus.yml scraping TARGET
# (`127.0.0.1:PORT`, the metrics endpoint a test serves) every second,
# starts Prometheus on a free loopback port with its data in DIR, waits
# until it is ready and leaves its URL in PROM_URL; the PID goes to the
# caller's PIDS array.

# shellcheck source=scripts/test-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/test-lib.sh"

PROM_DEB_VERSION=2.42.0+ds-5+deb12u1
PROM_CACHE=${RELAY_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/relay-test}/prometheus-$PROM_DEB_VERSION

prom_fetch() {
  if [ -x "$PROM_CACHE/usr/bin/prometheus" ]; then
    return 0
  fi
  local work
  work=$(mktemp -d)
  apt_private "$work"
  (cd "$work" && apt-get "${APT_PRIVATE[@]}" -qq download "prometheus=$PROM_DEB_VERSION")
  mkdir -p "$PROM_CACHE"
  dpkg-deb -x "$work"/prometheus_*.deb "$PROM_CACHE"
  rm -rf "$work"
}

prom_start() {
  local dir=$1 target=$2 port
  mkdir -p "$dir/data"
  port=$(free_port)
  cat >"$dir/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: relay-test
    static_configs:
      - targets: ["$target"]
YML
  "$PROM_CACHE/usr/bin/prometheus" --config.file "$dir/prometheus.yml" --storage.tsdb.path "$dir/data" \
    --web.listen-address "127.0.0.1:$port" >"$dir/prometheus.log" 2>&1 &
  PIDS+=("$!")
  PROM_URL="http://127.0.0.1:$port"
  if wait_for "http_ok $PROM_URL/-/ready" 30; then
    return 0
  fi
  echo "Prometheus did not become ready; its log:" >&2
  tail -n 40 "$dir/prometheus.log" >&2
  return 1
}
