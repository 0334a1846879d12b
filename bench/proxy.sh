#!/usr/bin/env bash
# mcproxy against twemproxy (Debian nutcracker 0.5, the proxy memcached operators use most),
# side by side in one run: the same two local memcached servers, the same load generator
# (proxy/examples/loadgen.rs), the same keys. For get, set and 10-key multi-get at 1, 16 and
# 64 client connections: requests/s and p50/p99 latency through mcproxy, through twemproxy,
# straight to one memcached (the "direct connection"), and with the libmcshm client in-process
# (the direct libmcshm path); mcproxy both on TCP loopback and on a unix socket (one process
# listening on both: the `mcproxy-unix` path). Then each proxy's CPU per 100 000 requests, and
# its CPU and p99 against twemproxy's.
# Needs memcached and nutcracker (apt-get install -y memcached nutcracker).
# Usage: bench/proxy.sh   [SECS=5 per cell] [ROUNDS=3] [OPS="get set mget10"] [CONNS="1 16 64"]
#                         [PATHS="direct libmcshm mcproxy mcproxy-unix twemproxy"]
# Figures are printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-5}
. bench/lib.sh
bench_need memcached nutcracker
cargo build --release -q --bin mcproxy --bin mcadmin && cargo build --release -q -p mcshm-proxy --example loadgen
LOADGEN=target/release/examples/loadgen
bench_start

start_memcached 2 -m 256
target/release/mcadmin --dir "$work" --domain bench add "${servers[@]}" > /dev/null
# One mcproxy, on TCP loopback and on a unix socket.
mcproxy_sock=$work/mcproxy.sock
target/release/mcproxy --dir "$work" --domain bench --listen 127.0.0.1:0 --listen "unix:$mcproxy_sock" \
    2> "$work/mcproxy.log" &
mcproxy=$!; pids+=($mcproxy)
for _ in $(seq 100); do [ "$(grep -c serving "$work/mcproxy.log" 2>/dev/null)" = 2 ] && break; sleep 0.05; done
mcproxy_addr=$(sed -n 's/.* on \(127.*\)$/\1/p' "$work/mcproxy.log" | head -1)

nut_port=$(free_port)
cat > "$work/nutcracker.yml" <<YML
bench:
  listen: 127.0.0.1:$nut_port
  hash: md5
  distribution: ketama
  timeout: 1000
  auto_eject_hosts: false
  server_connections: 2
  servers:
   - ${servers[0]}:1
   - ${servers[1]}:1
YML
nutcracker -c "$work/nutcracker.yml" -o "$work/nutcracker.log" -s "$(free_port)" &
nutcracker=$!; pids+=($nutcracker)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$nut_port) 2>/dev/null && break; sleep 0.05; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
echo "2 memcached (${servers[*]}), mcproxy on $mcproxy_addr and unix:$mcproxy_sock (default threads and server connections),"
echo "twemproxy on 127.0.0.1:$nut_port (ketama md5, 2 server connections); ${SECS}s per cell, $(nproc) cores,"
echo "${ROUNDS:=3} rounds with the paths interleaved: each figure is the median of its rounds"
echo
results=$work/results
for op in ${OPS:-get set mget10}; do
    for conns in ${CONNS:-1 16 64}; do
        for round in $(seq "$ROUNDS"); do
            for path in ${PATHS:-direct libmcshm mcproxy mcproxy-unix twemproxy}; do
                case $path in
                    direct) args=(--target "${servers[0]}"); pid= ;;
                    libmcshm) args=(--domain "$work:bench"); pid= ;;
                    mcproxy) args=(--target "$mcproxy_addr"); pid=$mcproxy ;;
                    mcproxy-unix) args=(--target "unix:$mcproxy_sock"); pid=$mcproxy ;;
                    twemproxy) args=(--target "127.0.0.1:$nut_port"); pid=$nutcracker ;;
                esac
                before=0; [ -n "$pid" ] && before=$(cpu_ticks "$pid")
                out=$("$LOADGEN" "${args[@]}" --op $op --conns $conns --seconds "$SECS" --depth "${DEPTH:-1}")
                cpu=-
                if [ -n "$pid" ]; then
                    # (Includes the populate phase's requests, which are counted too.)
                    used=$(( $(cpu_ticks "$pid") - before ))
                    requests=$(loadgen_field "$out" requests)
                    cpu=$(awk -v t="$used" -v hz="$hz" -v r="$requests" 'BEGIN {printf "%.3f", t / hz / ((r + 10000) / 100000)}')
                fi
                rps=$(loadgen_field "$out" rps)
                p50=$(loadgen_field "$out" p50_us)
                p99=$(loadgen_field "$out" p99_us)
                echo "$op $conns $path $rps $p50 $p99 $cpu" >> "$results"
            done
        done
    done
done
python3 - "$results" <<'PY'
import statistics, sys
cells = {}
for line in open(sys.argv[1]):
    op, conns, path, *figures = line.split()
    cells.setdefault((op, conns, path), []).append(figures)
print("| op | conns | path | req/s | p50 µs | p99 µs | proxy CPU s / 100k req | CPU vs twemproxy | p99 vs twemproxy |")
print("|---|---|---|---|---|---|---|---|---|")
def median(rows, i):
    values = [float(r[i]) for r in rows if r[i] != "-"]
    return statistics.median(values) if values else None
for (op, conns, path), rows in cells.items():
    rps, p50, p99, cpu = (median(rows, i) for i in range(4))
    twem = cells.get((op, conns, "twemproxy"))
    ratio = p99_ratio = ""
    if twem and path.startswith("mcproxy"):
        twem_cpu, twem_p99 = median(twem, 3), median(twem, 2)
        ratio = f"{cpu / twem_cpu:.2f}" if cpu is not None and twem_cpu else ""
        p99_ratio = f"{p99 / twem_p99:.2f}" if twem_p99 else ""
    shown = f"{cpu:.3f}" if cpu is not None else "-"
    print(f"| {op} | {conns} | {path} | {rps:.0f} | {p50:.0f} | {p99:.0f} | {shown} | {ratio} | {p99_ratio} |")
PY
