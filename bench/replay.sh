#!/usr/bin/env bash
# What the replay rejoin policy costs a write and what it keeps, side by side in one run (see
# bench/drivers/examples/replay_cost.rs): sets/s under flush and replay with every server up
# and with one down; the rejoin of a server that missed 10 000 and 100 000 keys, replay
# against flush; and the blip table (keys still served after a blip and after an outage).
# Needs memcached. Usage: bench/replay.sh   (N=20000 sets per round). Printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
cargo build --release -q -p mcshm-bench --example replay_cost
. bench/lib.sh
bench_need memcached
bench_start
start_memcached 3 -m 256
mkdir "$work/reg"
target/release/examples/replay_cost "$work/reg" "$N" "${servers[@]}"
