#!/usr/bin/env bash
# PHP on the same host as mcproxy: TCP loopback (127.0.0.1) against a unix socket, side by side.
# One mcproxy listens on both (two local memcached behind it); PHP's two memcached extensions
# (PECL memcache: addServer('unix:///path', 0); php-memcached: addServer('/path', 0)) each run
# PROCS processes at once, each N gets or sets of 100-byte values one request at a time
# (bench/php_socket.php), as web requests do. Per cell: requests/s (all processes), PHP's
# CPU per request (the loop alone, from getrusage), mcproxy's CPU per request (/proc) and the
# wall time of the slowest process; rounds interleave the transports, each figure the median.
# Needs php-cli php-memcache php-memcached memcached (test.sh installs them).
# Usage: bench/php_socket.sh [N=20000 per process] [ROUNDS=3] [PROCS="1 8"] [OPS="get set"]
#                            [EXTS="memcache memcached"]
# Figures are printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_need memcached php
for ext in ${EXTS:-memcache memcached}; do
    php -m | grep -x "$ext" > /dev/null || { echo "missing PHP's $ext: apt-get install -y php-$ext" >&2; exit 2; }
done
cargo build --release -q --bin mcproxy --bin mcadmin
N=${N:-20000}
bench_start

start_memcached 2 -m 256
target/release/mcadmin --dir "$work" --domain bench add "${servers[@]}" > /dev/null
sock=$work/mcproxy.sock
target/release/mcproxy --dir "$work" --domain bench --listen 127.0.0.1:0 --listen "unix:$sock" \
    2> "$work/mcproxy.log" &
mcproxy=$!; pids+=($mcproxy)
for _ in $(seq 100); do [ "$(grep -c serving "$work/mcproxy.log" 2>/dev/null)" = 2 ] && break; sleep 0.05; done
tcp=$(sed -n 's/.* on \(127.*\)$/\1/p' "$work/mcproxy.log" | head -1)

loop=bench/php_socket.php
# The keys the gets read (php:0 .. php:999).
php "$loop" memcached "$tcp" set 1000 > /dev/null

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
echo "mcproxy on $tcp and unix:$sock, 2 memcached behind it; PHP $(php -r 'echo PHP_VERSION;'),"
echo "memcache $(php -r 'echo phpversion("memcache");'), memcached $(php -r 'echo phpversion("memcached");');"
echo "$N requests per process, ${ROUNDS:=3} rounds, $(nproc) cores"
echo
results=$work/results
for ext in ${EXTS:-memcache memcached}; do
    for op in ${OPS:-get set}; do
        for procs in ${PROCS:-1 8}; do
            for round in $(seq "$ROUNDS"); do
                for transport in tcp unix; do
                    case $transport in
                        tcp) target=$tcp ;;
                        unix) target=unix:$sock ;;
                    esac
                    before=$(cpu_ticks "$mcproxy")
                    php_pids=()
                    for p in $(seq "$procs"); do
                        php "$loop" "$ext" "$target" "$op" "$N" > "$work/out.$p" &
                        php_pids+=($!)
                    done
                    for p in "${php_pids[@]}"; do wait "$p"; done
                    used=$(( $(cpu_ticks "$mcproxy") - before ))
                    cat "$work"/out.* | awk -v ext="$ext" -v op="$op" -v procs="$procs" \
                        -v t="$transport" -v used="$used" -v hz="$hz" -v n="$N" '
                        { if ($1 > wall) wall = $1; cpu += $2; lines++ }
                        END {
                            if (lines != procs) { print "a PHP process failed" > "/dev/stderr"; exit 1 }
                            total = n * procs
                            printf "%s %s %s %s %.0f %.2f %.2f %.3f\n", ext, op, procs, t,
                                total / wall, cpu / total * 1e6, used / hz / total * 1e6, wall
                        }' >> "$results"
                    rm -f "$work"/out.*
                done
            done
        done
    done
done
python3 - "$results" <<'PY'
import statistics, sys
cells = {}
for line in open(sys.argv[1]):
    ext, op, procs, transport, *figures = line.split()
    cells.setdefault((ext, op, procs), {}).setdefault(transport, []).append([float(f) for f in figures])
print("| extension | op | PHP processes | transport | req/s | PHP CPU µs/req | mcproxy CPU µs/req | wall s | unix / tcp: PHP CPU, mcproxy CPU, wall |")
print("|---|---|---|---|---|---|---|---|---|")
for (ext, op, procs), by in cells.items():
    med = {t: [statistics.median(r[i] for r in rows) for i in range(4)] for t, rows in by.items()}
    for t in ("tcp", "unix"):
        rps, php, proxy, wall = med[t]
        ratio = ""
        if t == "unix":
            (_, p0, x0, w0) = med["tcp"]
            ratio = f"{php / p0:.2f}, {proxy / x0:.2f}, {wall / w0:.2f}"
        print(f"| {ext} | {op} | {procs} | {t} | {rps:.0f} | {php:.1f} | {proxy:.1f} | {wall:.2f} | {ratio} |")
PY
