#!/usr/bin/env bash
# The cheap ratio benchmarks in one run, for a person to run before a release: each part beside
# its anchor, then one summary table of the figures that have a target (docs/BENCHMARKS.md says
# where each target comes from). Nothing is asserted: a figure past its target is marked "over",
# and the exit status is 0 whatever the figures (speed is judged by a person on known hardware,
# not by a script on a shared machine).
#
#   first op   the first lookup after a weight change at 10 000 servers (bench/first_op.sh)
#   lookup     key → server with distinct keys, 10 000 against 100 servers (criterion, the
#              client bench's server_for_distinct_keys_shared_ring)
#   bulk       mclient bulk-set / bulk-get of 100 000 keys over 3 memcached (bench/bulk.sh)
#   proxy      mcproxy's CPU per request against twemproxy's at 1 and 16 connections
#              (bench/proxy.sh; skipped with a reason when nutcracker is not installed)
#
# Needs memcached (and nutcracker for the proxy part). About 5 minutes on 2 cores.
# Usage: bench/guard.sh [PART...]   (default: first-op lookup bulk proxy)
set -euo pipefail
cd "$(dirname "$0")/.."
parts=("$@"); [ ${#parts[@]} -gt 0 ] || parts=(first-op lookup bulk proxy)
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
summary=()

# row WHAT MEASURED TARGET VERDICT: one line of the summary.
row() { summary+=("| $1 | $2 | $3 | $4 |"); }
# within VALUE LIMIT: "ok" when VALUE <= LIMIT (decimals), else "over".
within() { awk -v v="$1" -v l="$2" 'BEGIN { print (v + 0 <= l + 0) ? "ok" : "over" }'; }
# atleast VALUE LIMIT: "ok" when VALUE >= LIMIT, else "under".
atleast() { awk -v v="$1" -v l="$2" 'BEGIN { print (v + 0 >= l + 0) ? "ok" : "under" }'; }

first_op() {
    echo "## first operation after a change (bench/first_op.sh)"
    bench/first_op.sh | tee "$out/first_op"
    local median
    median=$(awk -F'|' '/a weight change/ { gsub(/[^0-9.]/, "", $4); print $4 }' "$out/first_op")
    [ -n "$median" ] && row "first lookup after a weight change, 10 000 servers (median)" \
        "$median µs" "≤ 50 µs" "$(within "$median" 50)"
}

lookup() {
    echo "## key → server, distinct keys (criterion)"
    cargo bench -q -p libmcshm --bench client -- server_for_distinct_keys_shared_ring \
        --warm-up-time 1 --measurement-time 3 --noplot 2>/dev/null | tee "$out/lookup" |
        grep -E "shared_ring/|time:" || true
    # criterion prints "time:   [low median high]" after each benchmark's name.
    local small large
    median_of() {
        awk -v id="shared_ring/$1" '$0 ~ id "$" || $0 ~ id " " { found = 1 }
             found && /time:/ { sub(/.*\[/, ""); print $3, $4; exit }' "$out/lookup"
    }
    small=$(median_of 100); large=$(median_of 10000)
    [ -n "$small" ] && [ -n "$large" ] || { row "lookup ratio 10 000 / 100 servers" "not parsed" "≤ 2.0" "?"; return; }
    local ratio
    ratio=$(awk -v a="$large" -v b="$small" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        f = x[2] == "µs" ? 1000 : 1; g = y[2] == "µs" ? 1000 : 1
        printf "%.2f", x[1] * f / (y[1] * g) }')
    row "lookup, 10 000 / 100 servers ($large / $small)" "$ratio" "≤ 2.0" "$(within "$ratio" 2.0)"
}

bulk() {
    echo "## mclient bulk-set and bulk-get (bench/bulk.sh)"
    ROUNDS=3 bench/bulk.sh | tee "$out/bulk"
    local verb rate
    for verb in set get; do
        rate=$(awk -F'|' -v v="bulk-$verb" '$2 ~ v { gsub(/[^0-9]/, "", $4); print $4; exit }' "$out/bulk")
        [ -n "$rate" ] && row "mclient bulk-$verb, 100 000 keys, 3 servers (keys/s)" "$rate" \
            "≥ 1 000 000" "$(atleast "$rate" 1000000)"
    done
}

proxy() {
    echo "## mcproxy against twemproxy (bench/proxy.sh)"
    if ! command -v nutcracker >/dev/null; then
        echo "skipped: nutcracker is not installed (apt-get install -y nutcracker)"
        row "mcproxy CPU / twemproxy CPU" "skipped" "≤ 0.8 at 16, ≤ 1.0 at 1" "?"
        return
    fi
    SECS=2 ROUNDS=3 OPS="get set" CONNS="1 16" PATHS="mcproxy twemproxy" bench/proxy.sh | tee "$out/proxy"
    # proxy.sh's table: | op | conns | path | req/s | p50 | p99 | CPU | CPU vs twemproxy | p99 vs twemproxy |
    local op conns cpu p99 limit
    for op in get set; do
        for conns in 1 16; do
            read -r cpu p99 < <(awk -F'|' -v op="$op" -v c="$conns" '
                $2 == " " op " " && $3 == " " c " " && $4 == " mcproxy " {
                    gsub(/ /, "", $9); gsub(/ /, "", $10); print $9, $10; exit }' "$out/proxy") || true
            limit=$([ "$conns" = 1 ] && echo 1.0 || echo 0.8)
            [ -n "${cpu:-}" ] && row "mcproxy CPU / twemproxy CPU, $op, $conns connections" "$cpu" \
                "≤ $limit" "$(within "$cpu" "$limit")"
            [ -n "${p99:-}" ] && row "mcproxy p99 / twemproxy p99, $op, $conns connections" "$p99" \
                "≤ 1.0" "$(within "$p99" 1.0)"
        done
    done
}

for part in "${parts[@]}"; do
    case $part in
        first-op) first_op ;;
        lookup) lookup ;;
        bulk) bulk ;;
        proxy) proxy ;;
        *) echo "bench/guard.sh: unknown part '$part' (first-op, lookup, bulk, proxy)" >&2; exit 2 ;;
    esac
    echo
done
echo "## summary ($(nproc) cores, $(date -u +%Y-%m-%d), $(git rev-parse --short HEAD))"
echo "| figure | measured | target | |"
echo "|---|---|---|---|"
printf '%s\n' "${summary[@]}"
