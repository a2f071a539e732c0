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
# tests/python_client.rs makes a virtualenv and installs grpcio-tools from
# PyPI into it; Debian's python3 needs python3-venv for that.
if command -v python3 >/dev/null && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  echo "installing python3-venv (Debian package)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Cross-service tests start the real binaries, so build them first.
cargo build --workspace --bins
# Tests that cannot run here record why in target/skipped (busmq_testkit::skip).
rm -rf target/skipped
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
set -e
# One summary line for the whole run. A test that skipped itself also
# reported "ok", so it moves from passed to skipped.
recorded=0
if [ -d target/skipped ]; then
  recorded=$(find target/skipped -name '*.txt' | wc -l)
  [ "$recorded" -eq 0 ] || { echo "skipped:"; cat target/skipped/*.txt; }
fi
awk -v recorded="$recorded" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i; if ($(i+1) ~ /^ignored;?$/) s += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p - recorded, f, s + recorded }' target/test-output.log
exit "$status"
