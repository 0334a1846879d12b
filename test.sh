#!/usr/bin/env bash
# The test suite, in one command: installs what the tests need when it is missing (Debian or
# Ubuntu, as root; otherwise prints the exact command to run), then, for the whole suite, checks
# formatting, lints, docs and the benchmarks' build, and runs `cargo test --workspace` (with any
# arguments given, only the tests they select). `.ci/run` runs this same script.
#
# The tests start their own memcached servers and a 3-member etcd cluster on loopback ports, use
# the real libmemcached as the ketama oracle, build, install and run a C program under valgrind,
# and drive mcproxy with PHP's and Python's own memcached clients.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v memcached >/dev/null 2>&1 || need+=(memcached)
# memcached -S (a SASL server, which mclient must name) needs the SASL mechanisms.
if command -v dpkg >/dev/null 2>&1 && ! dpkg -s libsasl2-modules >/dev/null 2>&1; then
    need+=(libsasl2-modules)
fi
# libmemcached is the ketama oracle of tests/ketama.rs; its tools are the bench/ baseline.
pkg-config --exists libmemcached 2>/dev/null || need+=(libmemcached-dev)
command -v memcslap >/dev/null 2>&1 || need+=(libmemcached-tools)
# The fleet tests start a real etcd cluster (Debian's etcd 3.4 serves the v3 JSON gateway).
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
# mcproxy is tested with clients nobody here wrote: PHP's PECL memcache and php-memcached,
# and Python's pymemcache (Debian's python3 is the one that sees python3-pymemcache).
command -v php >/dev/null 2>&1 || need+=(php-cli)
php -m 2>/dev/null | grep -x memcache >/dev/null || need+=(php-memcache)
php -m 2>/dev/null | grep -x memcached >/dev/null || need+=(php-memcached)
/usr/bin/python3 -c 'import pymemcache' >/dev/null 2>&1 || need+=(python3-pymemcache)
# pylibmc (binary=True) is the second binary-protocol client of the proxy's tests.
/usr/bin/python3 -c 'import pylibmc' >/dev/null 2>&1 || need+=(python3-pylibmc)
# The C API test installs with make, builds with cc through pkg-config, and runs valgrind;
# the locking tests hold locks with util-linux flock.
command -v make >/dev/null 2>&1 || need+=(make)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v flock >/dev/null 2>&1 || need+=(util-linux)
# make deb's test: dpkg-shlibdeps (dpkg-dev), lintian, and systemd-analyze for the units.
command -v dpkg-shlibdeps >/dev/null 2>&1 || need+=(dpkg-dev)
command -v lintian >/dev/null 2>&1 || need+=(lintian)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The boot test (packaging/boot-test.sh, as root) debootstraps a Debian and boots the packages
# in it with systemd-nspawn; the packaging scripts are checked with shellcheck.
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
# The TLS tests make their certificates with openssl.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The partition tests cut a host off in a network namespace of their own (ip netns, veth).
command -v ip >/dev/null 2>&1 || need+=(iproute2)

if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q "${need[@]}"
    else
        echo "test.sh: the tests need these packages: ${need[*]}" >&2
        echo "test.sh: install them with: sudo apt-get install -y ${need[*]}" >&2
        echo "test.sh: (or run ./test.sh as root, which installs them)" >&2
        exit 2
    fi
fi

cargo --version
# The checks of every stop, before the tests, when the whole suite runs (arguments select tests
# and skip them): formatting, lints, docs (their links too) and that the benchmarks build.
if [ $# -eq 0 ]; then
    for component in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep "^$component" >/dev/null; then
            command -v rustup >/dev/null 2>&1 && rustup component add "$component"
        fi
    done
    echo "test.sh: cargo fmt --check" >&2
    cargo fmt --all --check
    echo "test.sh: cargo clippy -D warnings" >&2
    cargo clippy --workspace --all-targets -- -D warnings
    echo "test.sh: cargo doc -D warnings" >&2
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items
    echo "test.sh: cargo build --benches" >&2
    # That the benchmarks build, not how fast they run: in the dev profile, whose dependencies
    # the tests below reuse (`cargo bench --no-run` built every dependency a second time, a
    # minute of the suite on 2 cores); `cargo bench` itself builds them optimised.
    cargo build --workspace --benches
fi
if [ $# -eq 0 ] && [ "$(id -u)" -eq 0 ]; then
    # The tests that act as other users are #[ignore]d for everyone else (visibly skipped).
    exec cargo test --workspace -- --include-ignored
fi
exec cargo test --workspace "$@"
