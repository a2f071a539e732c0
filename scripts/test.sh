#!/usr/bin/env bash
# Runs every check and test of busmq. Works on a fresh Debian machine with
# only the Rust toolchain: anything else the tests need is installed here.
set -euo pipefail
cd "$(dirname "$0")/.."

# protoc comes vendored through cargo (protoc-bin-vendored). The Redis
# tests start their own redis-server processes (standalone, sentinel,
# cluster, TLS with certificates made by openssl) on random loopback ports.
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null \
  || ! command -v openssl >/dev/null; then
  echo "installing redis-server, redis-tools and openssl (Debian packages)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server redis-tools openssl >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Cross-service tests start the real binaries, so build them first.
cargo build --workspace --bins
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
set -e
# One summary line for the whole run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i; if ($(i+1) ~ /^ignored;?$/) s += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' target/test-output.log
exit "$status"
