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
#   mcproxy   one mcproxy on the host directory (as bench/proxy.sh starts it, default threads),
#             driven by proxy/examples/loadgen.rs: get, set and 10-key multi-get (mget10) at
#             1 connection depth 1, 16 connections depth 1 and 1 connection pipeline depth 32,
#             PSECS seconds per cell; requests/s, p50/p99 of loadgen's round trips (at depth 32
#             one round trip carries 32 requests), the servers' gets per request (cmd_get: the
#             fence reads on the wire; mcproxy sends one per server connection per loop turn),
#             and CPU µs per request of mcproxy and of the servers (schedstat, every thread).
#             Each loadgen run first stores its 10 000 keys (100 pipelined sets per write);
#             those are counted in the CPU per request (requests + 10 000, as bench/proxy.sh
#             does) and their fence reads in the gets (a few hundred per run: < 0.01 per
#             request). mcproxy and loadgen are not pinned.
# Needs memcached, etcd (etcd-server), jq. Loopback only; every wait has a deadline; all that
# it starts is stopped and its scratch directory removed on exit.
# Usage: bench/fence.sh   [N=20000] [REPS=5] [BULK=100000] [COMMITS=10] [PSECS=2]
#                         [PCELLS="get:1:1 set:1:1 mget10:1:1 get:16:1 …" (OP:CONNS:DEPTH)]
# Printed, never asserted. Holds no lock itself: wrap it in `flock -x /tmp/mcshm-cpu.lock`
# beside other benchmarks. About 5 minutes on 2 cores.
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
PSECS=${PSECS:-2}
PCELLS=${PCELLS:-get:1:1 set:1:1 mget10:1:1 get:16:1 set:16:1 mget10:16:1 get:1:32 set:1:32 mget10:1:32}
cargo build --release -q --bin mcadmin --bin mclient --bin mcproxy && cargo build --release -q -p mcshm-bench --example fence_cost
cargo build --release -q -p mcshm-proxy --example loadgen
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
    kill -0 "${pids[0]}" 2>/dev/null || break # e.g. its port was taken since free_port chose it
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

# mcproxy: one process on the host directory, loadgen through it, both states interleaved.
"$target/release/mcproxy" --dir "$FENCE_HOST" --domain "$domain" --listen 127.0.0.1:0 2>"$work/mcproxy.log" &
mcproxy=$!; pids+=($mcproxy)
for _ in $(seq 200); do grep -q serving "$work/mcproxy.log" 2>/dev/null && break; sleep 0.05; done
mcproxy_addr=$(sed -n 's/.* on \(127.*\)$/\1/p' "$work/mcproxy.log" | head -1)
[ -n "$mcproxy_addr" ] || { echo "mcproxy did not start: $(tail -3 "$work/mcproxy.log")" >&2; exit 1; }
# cpu_ns PID...: the CPU time the processes have run, every thread, in ns (schedstat).
cpu_ns() {
    local p total=0 t
    for p in "$@"; do
        for t in /proc/"$p"/task/*/schedstat; do
            total=$((total + $(awk '{print $1}' "$t" 2>/dev/null || echo 0)))
        done
    done
    echo "$total"
}
# server_gets: the sum of the servers' cmd_get (`stats` sends no fence read).
server_gets() {
    python3 - "${servers[@]}" <<'PY'
import socket, sys
total = 0
for address in sys.argv[1:]:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"stats\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith("STAT cmd_get "):
            total += int(line.split()[2])
print(total)
PY
}
server_pids=("${pids[@]:1:3}")
echo "mcproxy on $mcproxy_addr; loadgen ${PSECS}s per cell: $PCELLS" >&2
for rep in $(seq "$REPS"); do
    if [ $((rep % 2)) = 1 ]; then order="off on"; else order="on off"; fi
    for state in $order; do
        switch "$state"
        for cell in $PCELLS; do
            IFS=: read -r op conns depth <<<"$cell"
            g0=$(server_gets); p0=$(cpu_ns "$mcproxy"); s0=$(cpu_ns "${server_pids[@]}")
            out=$(timeout 60 "$target/release/examples/loadgen" --target "$mcproxy_addr" --op "$op" \
                --conns "$conns" --depth "$depth" --seconds "$PSECS")
            p1=$(cpu_ns "$mcproxy"); s1=$(cpu_ns "${server_pids[@]}"); g1=$(server_gets)
            requests=$(loadgen_field "$out" requests)
            echo "row mcproxy_${op}_c${conns}d${depth} $state $(loadgen_field "$out" rps) $(loadgen_field "$out" p50_us) $(loadgen_field "$out" p99_us) $(awk \
                -v r="$requests" -v g=$((g1 - g0)) -v p=$((p1 - p0)) -v s=$((s1 - s0)) \
                'BEGIN { printf "%.3f %.2f %.2f", g / r, p / 1e3 / (r + 10000), s / 1e3 / (r + 10000) }')" | tee -a "$rows"
        done
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
    if op.startswith("mcproxy_"):
        _, what, shape = op.split("_")
        conns, depth = shape[1:].split("d")
        name = f"mcproxy {what}, {conns} conn{'s' if conns != '1' else ''} depth {depth}"
        a, b = col(off, 0), col(on, 0)
        print(f"| {name}, req/s | {cell(a, rate)} | {cell(b, rate)} | {ratio(a, b)} |")
        for i, what in ((1, "p50 µs"), (2, "p99 µs")):
            a, b = col(off, i), col(on, i)
            print(f"| {name}, {what} | {cell(a, us)} | {cell(b, us)} | {ratio(a, b)} |")
        for i, what in ((4, "mcproxy CPU µs/req"), (5, "servers' CPU µs/req")):
            a, b = col(off, i), col(on, i)
            print(f"| {name}, {what} | {cell(a, lambda v: f'{v:.2f}')} | {cell(b, lambda v: f'{v:.2f}')} | {ratio(a, b)} |")
        a, b = col(off, 3), col(on, 3)
        print(f"| {name}, server gets per req | {cell(a, lambda v: f'{v:.3f}')} | {cell(b, lambda v: f'{v:.3f}')} | |")
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
PY
