#!/usr/bin/env bash
# What waiting for changes costs: CPU of 200 idle wait_for_change callers over 5 s, and the
# median commit time alone and with those 200 waiters (bench/drivers/examples/waiters.rs).
# Usage: bench/waiters.sh [WAITERS]     Figures are printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p mcshm-bench --example waiters -- "${1:-200}"
