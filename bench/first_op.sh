#!/usr/bin/env bash
# The first client operation after a table change, at 100 / 1 000 / 10 000 servers: a change
# that keeps the ring (a reason) and one that changes it (a server down under rehash); then, at
# 10 000 servers, the first lookup after each operator change (weight, retry interval, down/up:
# worst of 6 and median, docs/BENCHMARKS.md "The first lookup after an operator's change").
# Usage: bench/first_op.sh     Figures are printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p mcshm-bench --example first_op
