#!/usr/bin/env bash
# What a fence read costs (issue 34), fencing off and on side by side in one run: one
# 1-member etcd, 3 local memcached (-t 1), one host directory mirrored by a real
# `mcadmin sync --all`, one fleet domain of the 3 servers. The domain's policy is switched
# with `mcadmin --etcd … policy --fence on|off`, and each switch waits until the host's table
# mirrors it (`mcadmin --dir … --json list`: fleet.revision and policy.fence). REPS
# interleaved repetitions of each state (the order alternates: off on, on off, …) of:
#   library   single get (hit), single set, 10-key get_many: one warm client in one process
#             (bench/drivers/examples/fence_cost.rs), N operations per repetition; ops/s and
#             per-operation p50/p99, the servers' gets per operation (cmd_get: the fence
#             reads on the wire), and CPU µs per operation of the client and of the servers
#             (schedstat: what the fence read costs whatever the wake-ups do to the latency),
#             and the times per operation the client blocked waiting for an answer
#             (voluntary context switches: one more would be a wait more, not only CPU)
#   mclient   bulk-set and bulk-get of BULK keys (100-byte values), process start included
#   commit    `mcadmin --etcd … set ADDR --weight W`, W going 1 -> 3 -> 1 (every commit moves
#             keys, and with fencing on the fences of the servers that lose some are raised
#             before the etcd put; the table says how many), COMMITS of each state
# then one table: op | off | on | on/off, medians and ranges over the repetitions (on/off:
# each "on" repetition beside the "off" next to it in time).
# mcproxy: its fencing lands separately; its rows are marked "not measured" (a place for them).
# Needs memcached, etcd (etcd-server), jq. Loopback only; every wait has a deadline; all that
# it starts is stopped and its scratch directory removed on exit.
# Usage: bench/fence.sh   [N=20000] [REPS=5] [BULK=100000] [COMMITS=10]. Printed, never
# asserted. Holds no lock itself: wrap it in `flock -x /tmp/mcshm-cpu.lock` beside other
# benchmarks. About 1.5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
mcadmin=$target/release/mcadmin
domain=fence

# switch on|off: commits the domain's fence policy, then waits (30 s at most) until the host's
# table mirrors that revision and policy. Run by the driver as `bench/fence.sh switch STATE`
# too, with FENCE_ETCD and FENCE_HOST in its environment.
switch() {
    local want=$1 rev
    rev=$(timeout 30 "$mcadmin" --etcd "$FENCE_ETCD" --domain "$domain" --json policy --fence "$want" | jq -e .revision)
    for _ in $(seq 300); do
        if timeout 10 "$mcadmin" --dir "$FENCE_HOST" --domain "$domain" --json list 2>/dev/null |
            jq -e --argjson rev "$rev" --arg want "$want" \
                '.fleet.revision >= $rev and .policy.fence == $want' >/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "the host did not mirror fence $want (revision $rev) within 30 s" >&2
    return 1
}
if [ "${1:-}" = switch ]; then switch "$2"; exit; fi

N=${N:-20000}
REPS=${REPS:-5}
BULK=${BULK:-100000}
COMMITS=${COMMITS:-10}
cargo build --release -q --bin mcadmin --bin mclient && cargo build --release -q -p mcshm-bench --example fence_cost
. bench/lib.sh
bench_need memcached etcd jq

# Everything started is stopped on exit: SIGTERM (the agent revokes its lease), SIGKILL after 10 s.
work=$(mktemp -d); pids=(); servers=()
fence_cleanup() {
    local deadline
    trap '' INT TERM
    [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while [ $SECONDS -lt $deadline ] && kill -0 "${pids[@]}" 2>/dev/null; do sleep 0.1; done
    [ ${#pids[@]} -gt 0 ] && kill -9 "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap fence_cleanup EXIT
trap 'exit 130' INT TERM

cport=$(free_port); pport=$(free_port)
export FENCE_ETCD=http://127.0.0.1:$cport FENCE_HOST=$work/host
etcd --name m0 --data-dir "$work/etcd" \
    --listen-client-urls "$FENCE_ETCD" --advertise-client-urls "$FENCE_ETCD" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "m0=http://127.0.0.1:$pport" --initial-cluster-state new >"$work/etcd.log" 2>&1 &
pids+=($!)
ready=""
for _ in $(seq 150); do
    if timeout 5 "$mcadmin" --etcd "$FENCE_ETCD" --etcd-timeout 1 domains >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.2
done
[ -n "$ready" ] || { echo "etcd did not come up within 30 s: $(tail -3 "$work/etcd.log")" >&2; exit 1; }
start_memcached 3 -m 256
# PIN: where the servers and the load run. same (default): the 3 servers, the library's driver
# and mclient on the first core (a request hands the core over: no wake-up of an idle core,
# and the fence read's CPU shows in full); split: the servers on the last core, the load on
# the first; 0: left to the scheduler. Whatever the placement, single-request figures on the
# shared 2-core VM jump between modes for whole repetitions (a get's p50 ~7, ~15 or ~55 µs,
# fencing on or off alike): compare within a run, pair by pair (docs/BENCHMARKS.md).
last=$(( $(nproc) - 1 )); pin=()
case "${PIN:-same}" in
    split) core=$last ;;
    same) core=0 ;;
    *) core="" ;;
esac
if [ -n "$core" ] && [ "$last" -ge 1 ] && command -v taskset >/dev/null; then
    for p in "${pids[@]:1:3}"; do taskset -pc "$core" "$p" >/dev/null; done
    pin=(taskset -c 0)
fi
mkdir "$FENCE_HOST"
"$mcadmin" --etcd "$FENCE_ETCD" --dir "$FENCE_HOST" sync --all --name host1 >"$work/sync.log" 2>&1 &
pids+=($!)
timeout 30 "$mcadmin" --etcd "$FENCE_ETCD" --domain "$domain" add "${servers[@]}" >/dev/null
switch off
printf '#!/bin/sh\nexec %q switch "$1"\n' "$PWD/bench/fence.sh" >"$work/switch"
chmod +x "$work/switch"
rows=$work/rows

echo "1-member etcd, 3 memcached -t 1 (${servers[*]}), one host directory with mcadmin sync;"
echo "pinned: ${PIN:-same}; library: $N operations per repetition, mclient: $BULK keys, commits: $COMMITS each; $REPS repetitions per state, interleaved; $(nproc) cores, $(uname -r), $(memcached -V), etcd $(etcd --version | sed -n "s/^etcd Version: //p"), $(date -u +%F)"

# The library, in one process.
FENCE_SERVER_PIDS="${pids[*]:1:3}" timeout 540 "${pin[@]}" "$target/release/examples/fence_cost" "$FENCE_HOST" "$domain" "$N" "$REPS" "$work/switch" | tee "$rows"

# mclient: bulk-set then bulk-get of BULK keys, both states interleaved.
value=$(head -c 100 /dev/zero | tr '\0' v)
seq 0 $((BULK - 1)) | awk -v v="$value" '{printf "bulk:%s 0 100\n%s\n", $1, v}' >"$work/records"
seq 0 $((BULK - 1)) | sed 's/^/bulk:/' >"$work/keys"
mclient=("$target/release/mclient" --dir "$FENCE_HOST" --domain "$domain")
# timed VERB INPUT: wall seconds of one mclient run (process start included).
timed() {
    local s e
    s=$(date +%s%N)
    timeout 120 "${pin[@]}" "${mclient[@]}" "$1" <"$2" >"$work/out"
    e=$(date +%s%N)
    awk -v w=$((e - s)) 'BEGIN { printf "%.4f", w / 1e9 }'
}
for rep in $(seq "$REPS"); do
    if [ $((rep % 2)) = 1 ]; then order="off on"; else order="on off"; fi
    for state in $order; do
        switch "$state"
        w=$(timed bulk-set "$work/records")
        echo "row mclient_bulk-set_${BULK} $state $(awk -v w="$w" -v n="$BULK" 'BEGIN { printf "%.0f", n / w }') - - -" | tee -a "$rows"
        w=$(timed bulk-get "$work/keys")
        cmp -s "$work/out" "$work/records" || echo "bulk-get did not return what bulk-set stored ($state)" >&2
        echo "row mclient_bulk-get_${BULK} $state $(awk -v w="$w" -v n="$BULK" 'BEGIN { printf "%.0f", n / w }') - - -" | tee -a "$rows"
    done
done

# The commit side: a weight change that moves keys off the two other servers.
# The weight of the first server goes 1 -> 3 -> 1 ...: up, the two others lose keys (2 fenced
# when on); down, the first loses keys (1 fenced).
weight=1
for rep in $(seq "$COMMITS"); do
    if [ $((rep % 2)) = 1 ]; then order="off on"; else order="on off"; fi
    for state in $order; do
        switch "$state"
        weight=$((4 - weight))
        s=$(date +%s%N)
        fenced=$(timeout 30 "$mcadmin" --etcd "$FENCE_ETCD" --domain "$domain" --json set "${servers[0]}" --weight "$weight" | jq -e .fenced)
        e=$(date +%s%N)
        echo "row commit_set_weight $state - $(awk -v t=$((e - s)) 'BEGIN { printf "%.1f", t / 1e6 }') - $fenced" | tee -a "$rows"
    done
done

echo
python3 - "$rows" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    if not line.startswith("row "):
        continue
    _, op, state, *f = line.split()
    rows.setdefault(op, {}).setdefault(state, []).append(f)

def col(runs, i):
    return [float(r[i]) for r in runs]

def cell(values, fmt):
    m = statistics.median(values)
    return f"{fmt(m)} ({fmt(min(values))}-{fmt(max(values))})"

def ratio(off, on):
    # Paired by repetition: the i-th off beside the i-th on (adjacent in time).
    r = [b / a for a, b in zip(off, on)]
    return f"{statistics.median(r):.3f} ({min(r):.3f}-{max(r):.3f})"

rate = lambda v: f"{v:,.0f}"
us = lambda v: f"{v:.1f}"
ms = lambda v: f"{v:.1f}"
print("| op | off | on | on/off |")
print("|---|---|---|---|")
for op, states in rows.items():
    off, on = states.get("off", []), states.get("on", [])
    if not off or not on:
        continue
    if op == "commit_set_weight":
        a, b = col(off, 1), col(on, 1)
        fenced = ", ".join(sorted(set(r[3] for r in on)))
        print(f"| mcadmin --etcd set --weight (ms; fenced {fenced} servers when on) | {cell(a, ms)} | {cell(b, ms)} | {ratio(a, b)} |")
        continue
    a, b = col(off, 0), col(on, 0)
    name = op.replace("_", " ")
    print(f"| {name}, ops/s{' (keys/s)' if op.startswith('mclient') else ''} | {cell(a, rate)} | {cell(b, rate)} | {ratio(a, b)} |")
    if off[0][1] != "-":
        for i, what in ((1, "p50 µs"), (2, "p99 µs")):
            a, b = col(off, i), col(on, i)
            print(f"| {name}, {what} | {cell(a, us)} | {cell(b, us)} | {ratio(a, b)} |")
        for i, what in ((4, "client CPU µs/op"), (5, "servers' CPU µs/op"), (6, "client blocks (waits for an answer)/op")):
            a, b = col(off, i), col(on, i)
            print(f"| {name}, {what} | {cell(a, lambda v: f'{v:.2f}')} | {cell(b, lambda v: f'{v:.2f}')} | {ratio(a, b)} |")
        a, b = col(off, 3), col(on, 3)
        print(f"| {name}, server gets per op | {cell(a, lambda v: f'{v:.2f}')} | {cell(b, lambda v: f'{v:.2f}')} | |")
print("| mcproxy get / set / 10-key get (1 connection) | not measured | not measured: its fencing lands separately | |")
PY
