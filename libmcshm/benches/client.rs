//! Routing benchmarks: key → server on the ketama ring (MD5 included) for 3, 100 and 10 000
//! servers with one key, and for 100, 1 000 and 10 000 servers with 1 M distinct keys, both on
//! a ring built in the process and through a client on a domain's shared ring (format 3: the
//! lookup reads the mapping); ring builds, and the per-operation routing overhead of a client
//! when the table version is unchanged.
//!
//! Run: cargo bench -p libmcshm --bench client

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use libmcshm::placement::Ring;
use libmcshm::table::Table;
use libmcshm::{Address, Client, Domain, Registry, Server, Timeouts};

/// A 30-byte key.
const KEY: &[u8] = b"user:1234567:profile:settings!";

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("cache{i}.example.com:{}", 11211 + i % 2))
        .collect()
}

fn ring_of(names: &[String]) -> Ring {
    Ring::build(
        names
            .iter()
            .map(String::as_str)
            .zip((0..).map(|i| 1 + (i % 3) as u16)),
    )
}

fn rings(c: &mut Criterion) {
    assert_eq!(KEY.len(), 30);
    let mut group = c.benchmark_group("ring");
    for n in [3, 100, 10_000] {
        let names = names(n);
        let ring = ring_of(&names);
        group.bench_with_input(BenchmarkId::new("server_for_30_byte_key", n), &n, |b, _| {
            b.iter(|| black_box(ring.server_for(black_box(KEY))))
        });
    }
    // 1 000 000 distinct keys, as a real workload sends them: the points a lookup touches are
    // not in cache (one hot key would keep them there).
    let keys: Vec<String> = (0..1_000_000)
        .map(|n| format!("user:{n:08}:profile"))
        .collect();
    for n in [100, 1_000, 10_000] {
        let names = names(n);
        let ring = ring_of(&names);
        let mut next = 0usize;
        group.bench_with_input(
            BenchmarkId::new("server_for_distinct_keys", n),
            &n,
            |b, _| {
                b.iter(|| {
                    next = (next + 1) % keys.len();
                    black_box(ring.server_for(black_box(keys[next].as_bytes())))
                })
            },
        );
    }
    group.sample_size(10);
    for n in [100, 10_000] {
        let names = names(n);
        group.bench_with_input(BenchmarkId::new("build", n), &n, |b, _| {
            b.iter(|| black_box(ring_of(&names)))
        });
    }
    group.finish();
}

/// A domain of `n` servers (weights 1..=3, as [`ring_of`]) in `dir`.
fn domain_of(dir: &std::path::Path, n: usize) -> Domain {
    let domain = Domain::new(&format!("bench{n}")).unwrap();
    let servers: Vec<Server> = names(n)
        .iter()
        .enumerate()
        .map(|(i, name)| Server {
            weight: 1 + (i % 3) as u16,
            ..Server::new(Address::parse(name).unwrap())
        })
        .collect();
    Registry::open_writer(dir, &domain, true)
        .unwrap()
        .replace(&Table {
            servers,
            ..Table::default()
        })
        .unwrap();
    domain
}

fn client_distinct_keys(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..1_000_000)
        .map(|n| format!("user:{n:08}:profile"))
        .collect();
    let mut group = c.benchmark_group("client");
    for n in [100, 1_000, 10_000] {
        let domain = domain_of(dir.path(), n);
        let mut client = Client::for_domain(dir.path(), &domain, Timeouts::default()).unwrap();
        let mut next = 0usize;
        group.bench_with_input(
            BenchmarkId::new("server_for_distinct_keys_shared_ring", n),
            &n,
            |b, _| {
                b.iter(|| {
                    next = (next + 1) % keys.len();
                    black_box(client.server_for(black_box(keys[next].as_bytes())).is_ok())
                })
            },
        );
    }
    group.finish();
}

fn client_routing(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let domain = Domain::new("bench").unwrap();
    let servers: Vec<Server> = names(100)
        .iter()
        .map(|n| Server::new(Address::parse(n).unwrap()))
        .collect();
    Registry::open_writer(dir.path(), &domain, true)
        .unwrap()
        .replace(&Table {
            servers,
            ..Table::default()
        })
        .unwrap();
    let mut client = Client::for_domain(dir.path(), &domain, Timeouts::default()).unwrap();
    let ring = ring_of(&names(100));
    let mut group = c.benchmark_group("client");
    // Key check + version check (one atomic load) + ring lookup (MD5 + binary search).
    group.bench_function("server_for_100_servers_version_unchanged", |b| {
        b.iter(|| black_box(client.server_for(black_box(KEY)).unwrap().port()))
    });
    // The same lookup without the client, to isolate the client's per-operation overhead.
    group.bench_function("ring_lookup_alone_100_servers", |b| {
        b.iter(|| black_box(ring.server_for(black_box(KEY))))
    });
    group.finish();
}

criterion_group!(benches, rings, client_routing, client_distinct_keys);
criterion_main!(benches);
