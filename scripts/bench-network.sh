#!/usr/bin/env bash
# Network benchmark (issue 11): TCP throughput and ping RTT container<->container on one
# managed bridge against host<->host over a veth pair, in the same run, all inside network
# namespaces the benchmark makes (the host's links are never touched); and launch -> IPv4
# shown by the API on the appliance's first-start bridge. Prints figures; asserts nothing.
# Usage: bash scripts/bench-network.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p cairnd --test network_bridge -- --ignored --nocapture bench_bridge_against_veth 2>&1 \
  | grep -E 'TCP|host<->|container<->|ping RTT|sending to'
cargo test --release -p cairnd --test network_bridge -- --nocapture the_preseed_network 2>&1 \
  | grep -E 'launch -> IPv4'
