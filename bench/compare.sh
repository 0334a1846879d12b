#!/usr/bin/env bash
# Side by side, in one run, against one local memcached:
#   1. mclient bulk-set / bulk-get vs memccp / memccat on the same 10 000 keys
#   2. request/response ops/s on one connection: libmcshm vs libmemcached (memcslap)
#   3. pipelined multi-get keys/s (libmcshm)
# Needs memcached and libmemcached-tools (apt-get install -y memcached libmemcached-tools).
# Usage: bench/compare.sh            Figures are printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000}
for tool in memcached memccp memccat memcslap; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y memcached libmemcached-tools" >&2; exit 2; }
done
cargo build --release -q --bin mclient && cargo build --release -q -p mcshm-bench --example throughput
MCLIENT=target/release/mclient
THROUGHPUT=target/release/examples/throughput
work=$(mktemp -d)
user=(); [ "$(id -u)" = 0 ] && user=(-u root)
MEMCACHED_PORT_FILENAME=$work/ports memcached -l 127.0.0.1 -p -1 -U 0 -m 256 "${user[@]}" &
mc=$!
trap 'kill $mc 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -s "$work/ports" ] && break; sleep 0.05; done
port=$(sed -n 's/^TCP INET: //p' "$work/ports" | head -1)
server=127.0.0.1:$port
export MEMCACHED_SERVERS=$server
echo "memcached on $server, $N keys"

# The same N keys and 100-byte values for both tools: files for memccp, records for mclient.
mkdir "$work/files"
value=$(head -c 100 /dev/zero | tr '\0' v)
for i in $(seq 1 "$N"); do printf '%s' "$value" > "$work/files/key$i"; done
for i in $(seq 1 "$N"); do printf 'key%s 0 100\n%s\n' "$i" "$value"; done > "$work/records"
seq 1 "$N" | sed 's/^/key/' > "$work/keys"

secs() { local s; s=$(date +%s.%N); "$@" > /dev/null; awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN {print b - a}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", a / b}'; }
t_memccp=$(cd "$work/files" && secs sh -c "ls | xargs memccp --servers=$server")
"$MCLIENT" flush > /dev/null
t_bulkset=$(secs sh -c "$MCLIENT bulk-set < $work/records")
t_memccat=$(secs sh -c "xargs memccat --servers=$server < $work/keys")
t_bulkget=$(secs sh -c "$MCLIENT bulk-get < $work/keys")
printf '\n%-34s %10s %10s %8s\n' "store/read $N keys" "libmemc" "mclient" "ratio"
printf '%-34s %9.3fs %9.3fs %7sx\n' "memccp vs mclient bulk-set" "$t_memccp" "$t_bulkset" "$(ratio "$t_memccp" "$t_bulkset")"
printf '%-34s %9.3fs %9.3fs %7sx\n' "memccat vs mclient bulk-get" "$t_memccat" "$t_bulkget" "$(ratio "$t_memccat" "$t_bulkget")"

echo
echo "request/response, one connection:"
printf '  libmcshm:     '; "$THROUGHPUT" "$server" reqresp 50000
printf '  libmemcached: '
memcslap --servers="$server" --concurrency=1 --execute-number=50000 --test=get 2>&1 \
    | awk '/Time to get/ {printf "%.0f ops/s (memcslap --test=get: %s gets in %s s)\n", $4 / $(NF-1), $4, $(NF-1)}'
printf '                '
memcslap --servers="$server" --concurrency=1 --execute-number=50000 --test=set 2>&1 \
    | awk '/Time to set/ {printf "%.0f ops/s (memcslap --test=set: %s sets in %s s)\n", $4 / $(NF-1), $4, $(NF-1)}'
echo
echo "pipelined multi-get:"
printf '  libmcshm:     '; "$THROUGHPUT" "$server" multiget 10000 20
