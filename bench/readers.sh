#!/usr/bin/env bash
# What one table change costs a host: 200 reader processes on a domain of 100 / 1 000 / 10 000
# servers, the total CPU they spend per change (new ring / ring kept) and each reader's
# private memory (bench/drivers/examples/readers.rs). Usage: bench/readers.sh [READERS]
# Figures are printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p mcshm-bench --example readers
for servers in 100 1000 10000; do
    target/release/examples/readers "$servers" "${1:-200}"
done
