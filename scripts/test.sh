#!/usr/bin/env bash
# The project's test command (README): installs what is missing, then runs
#   1. formatting and lints,
#   2. unit and host integration tests (cairnd with the real incus CLI, pylxd, liblxc),
#   3. the QEMU tier (the appliance image booted under QEMU), unless CAIRN_SKIP_QEMU=1.
# Must run as root (containers, loop devices, namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "host dependencies"
bash scripts/install-deps.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "unit and host integration tests"
cargo test --workspace

if [ "${CAIRN_SKIP_QEMU:-0}" != 1 ] && [ -f tests/qemu/run-tier.sh ]; then
  step "QEMU tier"
  bash tests/qemu/run-tier.sh
fi
step "done"
