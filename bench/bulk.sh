#!/usr/bin/env bash
# mclient bulk-set and bulk-get of N keys (100-byte values) over three local memcached
# servers, process start included, beside the anchor in the same run: the library's own
# pipelined multi-get on one connection (bench/drivers/examples/throughput.rs). Also the CPU the
# servers and mclient used: on a 2-core machine the sum is the bound.
# Each round also times a bulk-set with two of the three servers marked as holding strays (as
# after an `add`, until `mcadmin settle`: each record is also deleted where it may be stale),
# and mclient's start alone (an empty bulk-get: process start and the table opened).
# OTHER=DIR: another build's mclient (DIR/mclient, say a copy of main's) run beside this one in
# every round, on the same servers and table, its rows marked "(other)": the VM's noise moves
# both alike, so compare builds within one run. NOMARK=1 leaves out the marked bulk-set rows.
# Needs memcached. Usage: bench/bulk.sh   [N=100000] [ROUNDS=3] [OTHER=DIR] [NOMARK=1]. Printed,
# never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
ROUNDS=${ROUNDS:-3}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q --bin mcadmin --bin mclient && cargo build --release -q -p mcshm-bench --example throughput --example write_cost
. bench/lib.sh
bench_need memcached
bench_start
start_memcached 3 -m 512
"$target"/release/mcadmin --dir "$work" --domain bulk add --no-flush "${servers[@]}" > /dev/null
value=$(head -c 100 /dev/zero | tr '\0' v)
seq 0 $((N - 1)) | awk -v v="$value" '{printf "key:%s 0 100\n%s\n", $1, v}' > "$work/records"
seq 0 $((N - 1)) | sed 's/^/key:/' > "$work/keys"
builds=("${THIS:-$target/release}/mclient")
[ -n "${OTHER:-}" ] && builds+=("$OTHER/mclient")
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
hz=$(getconf CLK_TCK)
run() { # run NAME INPUT: wall seconds, mclient CPU seconds, servers' CPU seconds (of $mclient)
    local before s e
    before=$(ticks "${pids[@]}")
    s=$(date +%s%N)
    /usr/bin/time -f '%U %S' -o "$work/time" "${mclient[@]}" "$1" < "$2" > "$work/out"
    e=$(date +%s%N)
    awk -v w=$((e - s)) -v t="$(cat "$work/time")" -v srv=$(( $(ticks "${pids[@]}") - before )) -v hz="$hz" \
        'BEGIN {split(t, c, " "); printf "%.3f %.3f %.3f\n", w / 1e9, c[1] + c[2], srv / hz}'
}
echo "3 memcached (${servers[*]}), $N keys of 100 bytes, $ROUNDS rounds (medians), $(nproc) cores"
mark() { "$target"/release/examples/write_cost mark "$work" bulk "$1"; }
for round in $(seq "$ROUNDS"); do
  for build in "${builds[@]}"; do
    mclient=("$build" --dir "$work" --domain bulk)
    tag=""; [ "$build" != "${builds[0]}" ] && tag="_(other)"
    echo "set$tag $(run bulk-set "$work/records")" >> "$work/results"
    echo "get$tag $(run bulk-get "$work/keys")" >> "$work/results"
    cmp -s "$work/out" "$work/records" || echo "bulk-get${tag//_/ } did not return what bulk-set stored" >&2
    if [ -z "${NOMARK:-}" ]; then
        mark 2
        echo "set,_2_of_3_marked$tag $(run bulk-set "$work/records")" >> "$work/results"
        mark 0
    fi
    echo "start_(empty_bulk-get)$tag $(run bulk-get /dev/null)" >> "$work/results"
  done
done
python3 - "$work/results" "$N" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    verb, *figures = line.split()
    rows.setdefault(verb, []).append([float(f) for f in figures])
n = int(sys.argv[2])
print("| mclient | wall s, median (range) | keys/s | mclient CPU s | servers' CPU s |")
print("|---|---|---|---|---|")
for verb, runs in rows.items():
    wall, mine, servers = (statistics.median(r[i] for r in runs) for i in range(3))
    lo, hi = min(r[0] for r in runs), max(r[0] for r in runs)
    rate = "" if verb.startswith("start") else f"{n / wall:,.0f}"
    name = (verb if verb.startswith("start") else "bulk-" + verb).replace("_", " ")
    print(f"| {name} | {wall:.3f} ({lo:.3f}-{hi:.3f}) | {rate} | {mine:.3f} | {servers:.3f} |")
PY
printf '\nanchor, the library in-process on one connection: '
"$target"/release/examples/throughput "${servers[0]}" multiget 10000 20
