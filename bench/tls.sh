#!/usr/bin/env bash
# TLS against clear text, side by side in one run: two memcached on this host, one in clear and
# one with -Z (certificates made here by openssl), each the only server of its domain (`clear`
# and `tls`, the latter given its settings by `mcadmin tls`). For get, set and 10-key multi-get
# at 1 and 16 connections: requests/s and p50/p99 through the libmcshm client in-process and
# through mcproxy (its clients in clear, its server connections as the domain says), from
# proxy/examples/loadgen.rs. Then the cost of a new connection (TCP, handshake, one round
# trip): connections are persistent, so it is paid once per connection.
# Needs memcached and openssl. Usage: bench/tls.sh   [SECS=3 per cell] [ROUNDS=3]
# [OPS="get set mget10"] [CONNS="1 16"] [HANDSHAKES=500]. Figures are printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-3}
. bench/lib.sh
bench_need memcached openssl
cargo build --release -q --bin mcproxy --bin mcadmin && cargo build --release -q -p mcshm-proxy --example loadgen \
    && cargo build --release -q -p mcshm-bench --example handshake
LOADGEN=target/release/examples/loadgen
bench_start

# A CA and a P-256 server certificate for 127.0.0.1 (what the tests make).
(
    cd "$work"
    printf '[server]\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > ext.cnf
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key
    openssl req -x509 -new -key ca.key -out ca.crt -days 2 -subj /CN=bench-ca
    openssl ecparam -name prime256v1 -genkey -noout -out server.key
    openssl req -new -key server.key -out server.csr -subj /CN=server
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
        -days 2 -extfile ext.cnf -extensions server
    chmod 644 server.key
) 2> /dev/null
start_memcached 1 -m 256
start_memcached 1 -m 256 -Z -o "ssl_chain_cert=$work/server.crt,ssl_key=$work/server.key"
mcadmin=(target/release/mcadmin --dir "$work")
"${mcadmin[@]}" --domain clear add --no-flush "${servers[0]}" > /dev/null
"${mcadmin[@]}" --domain tls add --no-flush "${servers[1]}" > /dev/null
"${mcadmin[@]}" --domain tls tls --ca "$work/ca.crt" > /dev/null
proxy_for=()
for domain in clear tls; do
    start_mcproxy "$domain"
    proxy_for+=("$mcproxy_addr")
    mv "$work/mcproxy.log" "$work/mcproxy-$domain.log"
done

echo "memcached in clear on ${servers[0]}, with -Z on ${servers[1]} (TLS 1.3, P-256, $(memcached -V));"
echo "mcproxy on ${proxy_for[0]} (clear) and ${proxy_for[1]} (TLS); ${SECS}s per cell, $(nproc) cores,"
echo "${ROUNDS:=3} rounds with the paths interleaved: each figure is the median of its rounds"
echo
results=$work/results
for op in ${OPS:-get set mget10}; do
    for conns in ${CONNS:-1 16}; do
        for round in $(seq "$ROUNDS"); do
            for path in libmcshm mcproxy; do
                for wire in clear tls; do
                    case $path:$wire in
                        libmcshm:*) args=(--domain "$work:$wire") ;;
                        mcproxy:clear) args=(--target "${proxy_for[0]}") ;;
                        mcproxy:tls) args=(--target "${proxy_for[1]}") ;;
                    esac
                    out=$("$LOADGEN" "${args[@]}" --op "$op" --conns "$conns" --seconds "$SECS")
                    rps=$(loadgen_field "$out" rps)
                    p50=$(loadgen_field "$out" p50_us)
                    p99=$(loadgen_field "$out" p99_us)
                    echo "$op $conns $path $wire $rps $p50 $p99" >> "$results"
                done
            done
        done
    done
done
python3 - "$results" <<'PY'
import statistics, sys
cells = {}
for line in open(sys.argv[1]):
    op, conns, path, wire, *figures = line.split()
    cells.setdefault((op, conns, path, wire), []).append([float(f) for f in figures])
print("| op | conns | path | clear req/s | TLS req/s | TLS/clear | clear p50/p99 µs | TLS p50/p99 µs |")
print("|---|---|---|---|---|---|---|---|")
for (op, conns, path, wire), rows in cells.items():
    if wire != "clear":
        continue
    clear = [statistics.median(r[i] for r in rows) for i in range(3)]
    tls = [statistics.median(r[i] for r in cells[(op, conns, path, "tls")]) for i in range(3)]
    print(f"| {op} | {conns} | {path} | {clear[0]:.0f} | {tls[0]:.0f} | {tls[0] / clear[0]:.2f} "
          f"| {clear[1]:.0f}/{clear[2]:.0f} | {tls[1]:.0f}/{tls[2]:.0f} |")
PY
echo
echo "A new connection (connect, handshake, one version round trip), ${HANDSHAKES:=500} in a row:"
for domain in clear tls; do
    echo "  $domain: $(target/release/examples/handshake "$work" "$domain" "$HANDSHAKES")"
done
