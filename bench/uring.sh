#!/usr/bin/env bash
# A measured try of io_uring for mcproxy's data path: the same minimal relay (bench/uring: one
# thread, a connection to memcached per client, bytes copied as they come) on epoll and on
# io_uring (tokio-uring), beside mcproxy and twemproxy on the same single memcached, in one run
# with the paths interleaved. Figures: requests/s, p99, and CPU per 100 000 gets of each
# relay or proxy. The relays do no routing or parsing: what differs between them is the I/O
# mechanism alone, which is what io_uring would change in mcproxy.
# Needs memcached and nutcracker. Usage: bench/uring.sh [SECS=3] [ROUNDS=3] [CONNS="16 64"]
# Figures are printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-3}
ROUNDS=${ROUNDS:-3}
. bench/lib.sh
bench_need memcached nutcracker
cargo build --release -q --bin mcproxy --bin mcadmin && cargo build --release -q -p mcshm-proxy --example loadgen
(cd bench/uring && cargo build --release -q)
LOADGEN=target/release/examples/loadgen
bench_start
start_memcached 1 -m 256
target/release/mcadmin --dir "$work" --domain one add --no-flush "${servers[0]}" > /dev/null
start_mcproxy one
declare -A addr pid
addr[mcproxy]=$mcproxy_addr; pid[mcproxy]=$mcproxy
for mode in epoll uring; do
    port=$(free_port)
    bench/uring/target/release/uring-try "$mode" "127.0.0.1:$port" "${servers[0]}" > "$work/$mode.log" &
    pid[relay-$mode]=$!; pids+=($!); addr[relay-$mode]=127.0.0.1:$port
done
nut_port=$(free_port)
printf 'one:\n  listen: 127.0.0.1:%s\n  hash: md5\n  distribution: ketama\n  timeout: 1000\n  server_connections: 2\n  servers:\n   - %s:1\n' \
    "$nut_port" "${servers[0]}" > "$work/nutcracker.yml"
nutcracker -c "$work/nutcracker.yml" -o "$work/nutcracker.log" -s "$(free_port)" &
pid[twemproxy]=$!; pids+=($!); addr[twemproxy]=127.0.0.1:$nut_port
for name in "${!addr[@]}"; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/${addr[$name]%:*}/${addr[$name]##*:}") 2>/dev/null && break; sleep 0.05; done
done
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
echo "1 memcached (${servers[0]}); ${SECS}s per cell, $ROUNDS rounds interleaved (medians), $(nproc) cores"
for conns in ${CONNS:-16 64}; do
    for round in $(seq "$ROUNDS"); do
        for name in relay-epoll relay-uring mcproxy twemproxy; do
            before=$(ticks "${pid[$name]}")
            out=$("$LOADGEN" --target "${addr[$name]}" --op get --conns "$conns" --seconds "$SECS")
            used=$(( $(ticks "${pid[$name]}") - before ))
            r=$(sed 's/.*"requests":\([0-9]*\).*/\1/' <<<"$out")
            rps=$(loadgen_field "$out" rps)
            p99=$(loadgen_field "$out" p99_us)
            echo "$conns $name $rps $p99 $(awk -v t="$used" -v hz="$hz" -v r="$r" 'BEGIN {print t / hz / ((r + 10000) / 100000)}')" >> "$work/results"
        done
    done
done
python3 - "$work/results" <<'PY'
import statistics, sys
cells = {}
for line in open(sys.argv[1]):
    conns, name, *f = line.split()
    cells.setdefault((conns, name), []).append([float(x) for x in f])
print("| get, connections | path | req/s | p99 µs | CPU s / 100k |")
print("|---|---|---|---|---|")
for (conns, name), rows in cells.items():
    rps, p99, cpu = (statistics.median(r[i] for r in rows) for i in range(3))
    print(f"| {conns} | {name} | {rps:.0f} | {p99:.0f} | {cpu:.3f} |")
PY
