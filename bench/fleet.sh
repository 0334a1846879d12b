#!/usr/bin/env bash
# The fleet on loopback: one 3-member etcd cluster and HOSTS simulated hosts (a registry
# directory and a real `mcadmin sync --all` process each). For each host count (a
# comma-separated list runs one row each, on a fresh etcd) it prints p50/p99 of
#   acknowledged `mcadmin --etcd … set ADDR --weight N` -> visible in every host's local table
#   a client's mark-down on one host -> visible on the others (they route around it)
# what a change costs the agents and etcd (CPU from /proc, less the idle rate measured as long
# with no change), the idle cost itself, memory, etcd's watchers and connections, and a table
# of the rows at the end; beside the anchors (mcrouter's ~1 s config settle, ElastiCache's
# 60 s discovery poll). Figures are printed, never asserted (docs/BENCHMARKS.md has them).
#
# Usage: bench/fleet.sh [ROUNDS|auto] [HOSTS[,HOSTS…]]     e.g. bench/fleet.sh auto 100,500,1000
#   ROUNDS auto: 200 changes up to 20 hosts, 50 up to 100, 30 up to 500, 20 above (each change
#     waits for every host, each wait has a deadline, and the whole row a time limit); then as
#     many mark-downs, at most one per server.
#   GAP_MS: the pause after a change has reached every host (default 2500 from 100 hosts
#     on: each change meets a quiet fleet; 0 measures changes back to back).
#   SERVERS=50: the domain's size (one server's weight changes: every row sends the same
#     document, ~9 KB at 50 servers).
#   KEEP=1 keeps the work directories (logs); MCADMIN=PATH runs the agents and the edits with
#     another build (e.g. an older commit's); NICE=-10 (root) runs etcd, the agents and the
#     driver at that priority, so that other work on the machine disturbs the figures less
#     (the report says how much CPU went elsewhere).
#   RAW=1: no agents; HOSTS watch streams held by one process that only counts messages
#     (fleet/examples/fanout.rs), and puts of a RAW_SIZE-byte value (default 8000, the
#     document of 50 servers): etcd's own share of the fan-out, the floor under the agents'.
# Holds no lock itself: wrap it in `flock -x /tmp/mcshm-cpu.lock` beside other benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-auto}
HOSTS=${2:-5}
servers=${SERVERS:-50}
target=${CARGO_TARGET_DIR:-target}
command -v etcd >/dev/null || { echo "needs etcd: apt-get install -y etcd-server" >&2; exit 2; }
cargo build --release -q --bin mcadmin --example propagation --example fanout -p mcshm -p mcshm-fleet
mcadmin=${MCADMIN:-$target/release/mcadmin}
run=(nice -n "${NICE:-0}")
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

rounds_for() {
  if [ "$ROUNDS" != auto ]; then echo "$ROUNDS"
  elif [ "$1" -le 20 ]; then echo 200
  elif [ "$1" -le 100 ]; then echo 50
  elif [ "$1" -le 500 ]; then echo 30
  else echo 20; fi
}
# GAP_MS: the pause after a change has reached every host, before the next. Default 2500 ms
# from 100 hosts on (longer than the 1-2 s after which the agents write their host records:
# each change meets a quiet fleet, as an operator's edit would), 200 ms below.
gap_for() {
  if [ -n "${GAP_MS:-}" ]; then echo "$GAP_MS"
  elif [ "$1" -ge 100 ]; then echo 2500
  else echo 200; fi
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mem_available_kib() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }

# The hosts' tables live on tmpfs when there is one (/dev/shm), as under /run/mcshm on a real
# host: an mmap'ed file on a disk is written back by the kernel's flusher threads, a cost a
# host does not pay. etcd's data stays on disk (/tmp), as a member's would.
shm=/dev/shm; [ -d "$shm" ] && [ -w "$shm" ] || shm=/tmp
agents=(); members=(); work=""; data=""
# Stops what this script started: the agents (SIGTERM revokes their leases; SIGKILL after
# 15 s), then etcd (SIGKILL after 5 s: the last member may wait for a quorum).
stop_all() {
  local deadline
  [ ${#agents[@]} -gt 0 ] && kill "${agents[@]}" 2>/dev/null || true
  deadline=$((SECONDS + 15))
  while [ $SECONDS -lt $deadline ] && kill -0 "${agents[@]}" 2>/dev/null; do sleep 0.2; done
  [ ${#agents[@]} -gt 0 ] && kill -9 "${agents[@]}" 2>/dev/null || true
  [ ${#members[@]} -gt 0 ] && kill "${members[@]}" 2>/dev/null || true
  deadline=$((SECONDS + 5))
  while [ $SECONDS -lt $deadline ] && kill -0 "${members[@]}" 2>/dev/null; do sleep 0.2; done
  [ ${#members[@]} -gt 0 ] && kill -9 "${members[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  agents=(); members=()
  if [ -z "${KEEP:-}" ]; then rm -rf "$work" "$data"; fi
  work=""; data=""
}
rows=$(mktemp)
trap 'stop_all; rm -f "$rows"' EXIT
trap 'exit 130' INT TERM

# One row: a fresh 3-member etcd and N agents; prints the example's report, appends its row.
run_row() {
  local n=$1 rounds=$2 i h
  work=$(mktemp -d "$shm/mcshm-fleet.XXXXXX")
  data=$(mktemp -d /tmp/mcshm-fleet-etcd.XXXXXX)
  local -a cport pport
  for i in 0 1 2; do cport[$i]=$(port); pport[$i]=$(port); done
  local initial="" endpoints=""
  for i in 0 1 2; do
    initial+="m$i=http://127.0.0.1:${pport[$i]},"; endpoints+="http://127.0.0.1:${cport[$i]},"
  done
  initial=${initial%,}; endpoints=${endpoints%,}
  for i in 0 1 2; do
    "${run[@]}" etcd --name m$i --data-dir "$data/m$i" \
      --listen-client-urls http://127.0.0.1:${cport[$i]} --advertise-client-urls http://127.0.0.1:${cport[$i]} \
      --listen-peer-urls http://127.0.0.1:${pport[$i]} --initial-advertise-peer-urls http://127.0.0.1:${pport[$i]} \
      --initial-cluster "$initial" --initial-cluster-state new >"$work/etcd$i.log" 2>&1 &
    members+=($!)
  done
  printf '%s\n' "${members[@]}" >"$work/etcd.pids"
  local ready=""
  for _ in $(seq 150); do
    if "$mcadmin" --etcd "$endpoints" --etcd-timeout 1 domains >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.2
  done
  [ -n "$ready" ] || { echo "etcd did not come up within 30 s (logs: $work/etcd*.log)" >&2; KEEP=1; return 1; }
  if [ -n "${RAW:-}" ]; then
    echo "== $n raw watch streams, etcd 3 members, $rounds puts of ${RAW_SIZE:-8000} bytes, nice ${NICE:-0} ($(nproc) cores)"
    timeout $(( 120 + rounds * 60 )) "${run[@]}" "$target/release/examples/fanout" \
      "$endpoints" "$rounds" "$work" "$n" "${RAW_SIZE:-8000}" | tee "$work/report" || true
    grep '^raw ' "$work/report" >>"$rows" || true
    stop_all
    return 0
  fi
  local before_kib; before_kib=$(mem_available_kib)
  # Started 50 at a time: each agent's first full read, watches and lease come in a burst.
  for h in $(seq "$n"); do
    mkdir -p "$work/host$h"
    "${run[@]}" "$mcadmin" --etcd "$endpoints" --dir "$work/host$h" sync --all --name "host$h" \
      >"$work/sync$h.log" 2>&1 &
    agents+=($!)
    if (( h % 50 == 0 )); then sleep 0.5; fi
  done
  printf '%s\n' "${agents[@]}" >"$work/agents.pids"
  echo "== $n hosts: etcd 3 members, $n mcadmin sync agents, $rounds changes to a domain of $servers servers, $(gap_for "$n") ms apart, nice ${NICE:-0} ($(nproc) cores, $(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1048576 )) GiB)"
  # Bounded: registration and the domain's creation have their own deadlines in the example,
  # each change at most 60 s, the idle window at most 60 s.
  local limit=$(( 300 + n / 5 + rounds * 2 * (60 + $(gap_for "$n") / 1000 + 1) + 60 ))
  local status=0
  timeout "$limit" "${run[@]}" "$target/release/examples/propagation" "$endpoints" "$rounds" "$work" "$servers" "$(gap_for "$n")" \
    | tee "$work/report" || status=$?
  local after_kib; after_kib=$(mem_available_kib)
  echo "memory the row took (MemAvailable before the agents, after the run): $(( (before_kib - after_kib) / 1024 )) MiB"
  local dead=0
  for i in "${agents[@]}"; do kill -0 "$i" 2>/dev/null || dead=$((dead + 1)); done
  [ "$dead" -eq 0 ] || echo "$dead agents exited during the run (logs: $work/sync*.log; KEEP=1 keeps them)"
  grep '^row ' "$work/report" >>"$rows" || true
  [ "$status" -eq 0 ] || echo "propagation ended with status $status (124: the run's time limit, ${limit} s)"
  stop_all
}

IFS=, read -ra counts <<<"$HOSTS"
for n in "${counts[@]}"; do run_row "$n" "$(rounds_for "$n")" || true; done

echo
grep '^raw ' "$rows" || true
grep -q '^row ' "$rows" || exit 0
echo "| hosts | changes | p50 | p99 | half the hosts, p50 | mark-down p50 / p99 | agent CPU per change | etcd CPU per change | idle: agents / etcd CPU s/s | agent RSS (PSS) | etcd RSS m0/m1/m2 | watchers m0/m1/m2 | client conns m0/m1/m2 | other load, edits / idle |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
while read -r line; do
  [ "${line%% *}" = row ] || continue
  declare -A f=()
  for kv in ${line#row }; do f[${kv%%=*}]=${kv#*=}; done
  echo "| ${f[hosts]} | ${f[changes]} | ${f[p50_ms]} ms | ${f[p99_ms]} ms | ${f[half_p50_ms]} ms | ${f[down_p50_ms]} / ${f[down_p99_ms]} ms | ${f[agent_us_per_change]} µs | ${f[etcd_ms_per_change]} ms | ${f[idle_agents_cpu]} / ${f[idle_etcd_cpu]} | ${f[agent_rss_mib]} (${f[agent_pss_mib]}) MiB | ${f[etcd_rss_mib]} MiB | ${f[watchers]} | ${f[conns]} | ${f[other_cpu]} |"
  unset f
done <"$rows"
