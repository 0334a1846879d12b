#!/usr/bin/env bash
# What the no-stale-read rules cost a write, side by side in one run: sets/s of the libmcshm
# client over 3 local memcached servers with no server marked as holding strays (the cost
# before the marks existed, and after `mcadmin settle`) and with two of them marked (after an
# `add`: each write also deletes its key from the marked servers it does not go to).
# Needs memcached. Usage: bench/coherence.sh   (N=20000 sets per round). Printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
command -v memcached >/dev/null || { echo "missing memcached: apt-get install -y memcached" >&2; exit 2; }
cargo build --release -q -p libmcshm --example write_cost
work=$(mktemp -d)
user=(); [ "$(id -u)" = 0 ] && user=(-u root)
pids=(); servers=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
for i in 1 2 3; do
    MEMCACHED_PORT_FILENAME=$work/ports$i memcached -l 127.0.0.1 -p -1 -U 0 -m 64 -t 1 "${user[@]}" &
    pids+=($!)
    for _ in $(seq 100); do [ -s "$work/ports$i" ] && break; sleep 0.05; done
    servers+=("127.0.0.1:$(sed -n 's/^TCP INET: //p' "$work/ports$i" | head -1)")
done
mkdir "$work/reg"
target/release/examples/write_cost "$work/reg" "$N" "${servers[@]}"
