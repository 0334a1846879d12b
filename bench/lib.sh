# Shared by the bench scripts (sourced): local memcached servers and an mcproxy, each on a port
# the kernel chose, killed when the script exits. A script calls bench_start first.

bench_user=(); [ "$(id -u)" = 0 ] && bench_user=(-u root)

# bench_need TOOL...: exits 2, naming the packages, when a tool is missing.
bench_need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y $*" >&2; exit 2; }
    done
}

# free_port: a TCP port on 127.0.0.1 that nobody listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# bench_start: a scratch directory in `work`, no servers yet, and everything started from here
# on stopped (and `work` removed) when the script exits.
bench_start() {
    work=$(mktemp -d)
    pids=(); servers=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}

# start_memcached N [ARGS...]: N servers (memcached -t 1 ARGS), their addresses in `servers`.
start_memcached() {
    local n=$1; shift
    local i
    for i in $(seq "$n"); do
        local ports="$work/ports.${#servers[@]}"
        MEMCACHED_PORT_FILENAME=$ports memcached -l 127.0.0.1 -p -1 -U 0 -t 1 "$@" "${bench_user[@]}" &
        pids+=($!)
        for _ in $(seq 100); do [ -s "$ports" ] && break; sleep 0.05; done
        servers+=("127.0.0.1:$(sed -n 's/^TCP INET: //p' "$ports" | head -1)")
    done
}

# start_mcproxy DOMAIN: target/release/mcproxy on the registry in `work`, its address in
# `mcproxy_addr` and its pid in `mcproxy`.
start_mcproxy() {
    target/release/mcproxy --dir "$work" --domain "$1" --listen 127.0.0.1:0 2> "$work/mcproxy.log" &
    mcproxy=$!; pids+=($mcproxy)
    for _ in $(seq 100); do grep -q serving "$work/mcproxy.log" 2>/dev/null && break; sleep 0.05; done
    mcproxy_addr=$(sed -n 's/.* on \(127.*\)$/\1/p' "$work/mcproxy.log" | head -1)
}

# loadgen_field JSON NAME: the number NAME of a loadgen result line (rps, p50_us, p99_us, requests).
loadgen_field() { sed "s/.*\"$2\":\([0-9]*\).*/\1/" <<<"$1"; }
