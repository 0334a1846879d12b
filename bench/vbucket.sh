#!/usr/bin/env bash
# key -> server on virtual buckets against ketama, at 100 and 10 000 servers: mcshm's router
# (bench/drivers/examples/vbucket_lookup.rs: Router::for_snapshot, and the placement alone,
# Locator::owner) and libmemcached's own memcached_server_by_key (bench/c/vbucket_lookup.c:
# memcached_bucket_set; ketama weighted for comparison), on the same 100 000 keys and the same
# server names, balanced maps of 1 024 and 65 536 buckets, hash one-at-a-time. PASSES passes
# (5 unless set), each running the Rust driver and the C program (which goes first alternates
# from pass to pass), each program ROUNDS interleaved rounds (11 unless set). A cell is the
# median of the passes' medians, ns per lookup, with the lowest and highest round of all
# passes. Figures are printed, never asserted. No network I/O: the addresses are only named.
# Usage: [PASSES=5] [ROUNDS=11] bench/vbucket.sh   (needs cc, pkg-config, libmemcached-dev,
# python3; alone on the machine: here, flock -x /tmp/mcshm-cpu.lock bench/vbucket.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_need cc pkg-config python3
passes=${PASSES:-5}
rounds=${ROUNDS:-11}
cargo build --release -q -p mcshm-bench --example vbucket_lookup
target=${CARGO_TARGET_DIR:-target}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cc -O2 -o "$out/vbucket_lookup" bench/c/vbucket_lookup.c $(pkg-config --cflags --libs libmemcached)
for pass in $(seq "$passes"); do
    if [ $((pass % 2)) = 1 ]; then
        "$target/release/examples/vbucket_lookup" "$rounds" >> "$out/rows"
        "$out/vbucket_lookup" "$rounds" >> "$out/rows"
    else
        "$out/vbucket_lookup" "$rounds" >> "$out/rows"
        "$target/release/examples/vbucket_lookup" "$rounds" >> "$out/rows"
    fi
done
python3 - "$out/rows" <<'EOF'
import statistics, sys
cells = {}
for line in open(sys.argv[1]):
    _, who, dist, servers, med, lo, hi = line.split()
    cells.setdefault((who, dist, int(servers)), []).append((med, lo, hi))
def cell(key):
    runs = [r for r in cells.get(key, []) if r[0] != "-"]
    if not runs:
        return "-"
    med = statistics.median(float(r[0]) for r in runs)
    lo = min(float(r[1]) for r in runs)
    hi = max(float(r[2]) for r in runs)
    return f"{med:.0f} ns ({lo:.0f}–{hi:.0f})"
print("| servers | distribution | mcshm: Router::owner | mcshm: the placement alone (Locator::owner) | libmemcached: memcached_server_by_key |")
print("|---|---|---|---|---|")
for servers in (100, 10000):
    for dist, label in (("ketama", "ketama"), ("vbucket-1024", "vbucket, 1 024 buckets"),
                        ("vbucket-65536", "vbucket, 65 536 buckets")):
        count = f"{servers:,}".replace(",", " ")
        print(f"| {count} | {label} | {cell(('mcshm', dist, servers))} | "
              f"{cell(('mcshm-locator', dist, servers))} | {cell(('libmemcached', dist, servers))} |")
EOF
