#!/usr/bin/env bash
# The whole test suite, as CI runs it, on a fresh machine.
#
# It installs what the tests need, starts the local test servers on 127.0.0.1
# (none are needed yet: every test so far runs on the simulated providers;
# the AWS emulator, kube-apiserver, OpenBao and Prometheus start here when
# their providers land), runs the checks, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# Servers started below register their PIDs here and are stopped on exit.
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

log "toolchain"
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (rustup toolchain); none found on PATH" >&2
  exit 1
fi
cargo --version
rustup component list --installed 2>/dev/null | grep -qE '^(rustfmt|clippy)' || rustup component add rustfmt clippy

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

log "benches compile and run once"
cargo bench --bench rollouts -- --test

log "all checks passed"
