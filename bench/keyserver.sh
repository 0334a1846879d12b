#!/usr/bin/env bash
# key -> server from C, libmemcached against libmcshm on the same lists (hostname, IPv4, IPv6;
# 3 / 100 / 1 000 servers), 100 000 distinct keys, best of 5 interleaved runs each. A ratio
# above 1 means libmcshm is faster. Figures are printed, never asserted.
# Usage: bench/keyserver.sh   (needs cc, pkg-config and libmemcached-dev)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p libmcshm-c
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cc -O2 -o "$out/keyserver" bench/c/keyserver.c -Iinclude -Ltarget/release -lmcshm \
    $(pkg-config --cflags --libs libmemcached)
echo "| list | servers | libmemcached | libmcshm | ratio |"
echo "|---|---|---|---|---|"
for kind in hostname ipv4 ipv6; do
    for n in 3 100 1000; do
        LD_LIBRARY_PATH=target/release "$out/keyserver" "$kind" "$n"
    done
done
