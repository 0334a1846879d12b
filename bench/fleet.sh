#!/usr/bin/env bash
# Fleet propagation on loopback: one 3-member etcd cluster, HOSTS simulated hosts (a registry
# directory and a `mcadmin sync` agent each), ROUNDS changes. Prints p50/p99 of
#   acknowledged `mcadmin --etcd … add`  -> visible in every host's local table
#   a client's mark-down on one host     -> visible on the others (they route around it)
# beside the anchors (mcrouter's ~1 s config settle, ElastiCache's 60 s discovery poll).
# Figures are printed, never asserted. Usage: bench/fleet.sh [ROUNDS] [HOSTS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-200}
HOSTS=${2:-5}
command -v etcd >/dev/null || { echo "needs etcd: apt-get install -y etcd-server" >&2; exit 2; }
cargo build --release -q --bin mcadmin --example propagation -p mcshm -p mcshm-fleet
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -a cport pport
for i in 0 1 2; do cport[$i]=$(port); pport[$i]=$(port); done
initial=""; endpoints=""
for i in 0 1 2; do
  initial+="m$i=http://127.0.0.1:${pport[$i]},"; endpoints+="http://127.0.0.1:${cport[$i]},"
done
initial=${initial%,}; endpoints=${endpoints%,}
for i in 0 1 2; do
  etcd --name m$i --data-dir "$work/m$i" \
    --listen-client-urls http://127.0.0.1:${cport[$i]} --advertise-client-urls http://127.0.0.1:${cport[$i]} \
    --listen-peer-urls http://127.0.0.1:${pport[$i]} --initial-advertise-peer-urls http://127.0.0.1:${pport[$i]} \
    --initial-cluster "$initial" --initial-cluster-state new >"$work/etcd$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 100); do
  target/release/mcadmin --etcd "$endpoints" --etcd-timeout 1 domains >/dev/null 2>&1 && break
  sleep 0.1
done
dirs=()
for h in $(seq "$HOSTS"); do
  mkdir -p "$work/host$h"; dirs+=("$work/host$h")
  target/release/mcadmin --etcd "$endpoints" --dir "$work/host$h" sync --all --name "host$h" \
    >"$work/sync$h.log" 2>&1 &
  pids+=($!)
done
echo "etcd 3 members, $HOSTS hosts, $ROUNDS changes ($(nproc) cores)"
target/release/examples/propagation "$endpoints" "$ROUNDS" "${dirs[@]}"
