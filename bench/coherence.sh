#!/usr/bin/env bash
# What the no-stale-read rules cost a write, side by side in one run: sets/s of the libmcshm
# client over 3 local memcached servers with no server marked as holding strays (the cost
# before the marks existed, and after `mcadmin settle`) and with two of them marked (after an
# `add`: each write also deletes its key from the marked servers it does not go to).
# Needs memcached. Usage: bench/coherence.sh   (N=20000 sets per round). Printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
cargo build --release -q -p mcshm-bench --example write_cost
. bench/lib.sh
bench_need memcached
bench_start
start_memcached 3 -m 64
mkdir "$work/reg"
target/release/examples/write_cost "$work/reg" "$N" "${servers[@]}"
