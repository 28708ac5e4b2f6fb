#!/usr/bin/env bash
# Runs Cairn: installs what is missing, builds the image and boots one appliance node under
# QEMU (more with --nodes N), printing its API address and a trust token as one JSON line.
# Ctrl-C powers the node(s) off through ACPI. Must run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >&2
bash tests/qemu/install-deps.sh >&2
exec cargo run --release -q -p cairn-lab -- up "$@"
