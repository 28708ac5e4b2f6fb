#!/usr/bin/env bash
# The QEMU tier: installs the host packages, builds cairnd and the appliance image (caches in
# /var/cache/cairn-image, outside the repository), then boots it under QEMU for the
# #[ignore]d tests of tests/qemu/tests/appliance.rs and cluster.rs, one at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/qemu/install-deps.sh
cargo build --release -p cairnd
CAIRND="${CARGO_TARGET_DIR:-$PWD/target}/release/cairnd" bash image/build.sh
cargo test -p cairn-lab --test appliance --test cluster -- --ignored --test-threads=1
