#!/usr/bin/env bash
# The binary protocol through mcproxy beside the text protocol, in one run: requests/s and
# latency of get, set and a 10-key multi-get (binary: ten getkq and a noop) through the same
# proxy over two local memcached servers, at 1 and 16 connections, interleaved.
# Needs memcached. Usage: bench/proxy_binary.sh   (SECS=3 per cell). Printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-3}
cargo build --release -q --bin mcadmin --bin mcproxy
cargo build --release -q -p mcshm-proxy --example loadgen
. bench/lib.sh
bench_need memcached
bench_start
start_memcached 2 -m 64
target/release/mcadmin --dir "$work" --domain bench add "${servers[@]}" > /dev/null
start_mcproxy bench
proxy=$mcproxy_addr
echo "mcproxy on $proxy over ${servers[*]}; ${SECS} s per cell"
printf '%-8s %-6s %14s %14s %8s %18s\n' op conns "text req/s" "binary req/s" ratio "p99 text/binary"
for op in get set mget10; do
    for conns in 1 16; do
        run() { target/release/examples/loadgen --target "$proxy" --op "$op" --conns "$conns" --seconds "$SECS" --protocol "$1"; }
        t=$(run text); b=$(run binary)
        field() { sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1"; }
        printf '%-8s %-6s %14s %14s %8s %18s\n' "$op" "$conns" "$(field "$t" rps)" "$(field "$b" rps)" \
            "$(awk -v a="$(field "$b" rps)" -v b="$(field "$t" rps)" 'BEGIN {printf "%.2f", a / b}')" \
            "$(field "$t" p99_us)/$(field "$b" p99_us) us"
    done
done
