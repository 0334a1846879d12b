//! Key → server on a `vbucket` domain must be what libmemcached itself picks with
//! `MEMCACHED_DISTRIBUTION_VIRTUAL_BUCKET` (`memcached_bucket_set`) and the same
//! `MEMCACHED_BEHAVIOR_HASH`, so that mcshm clients and libmemcached (php-memcached
//! `setBucket`) clients of one fleet send every key to the same server. The oracle is the real
//! library: a small C program (tests/c/vbucket_oracle.c) compiled here against the system's
//! libmemcached, as tests/ketama.rs does for the rings.
//!
//! The map is deliberately lopsided (a seeded pseudo-random owner per bucket, biased towards the
//! first servers): a balanced map (`b % n`) would let a wrong mask or a wrong bucket → owner
//! indexing agree by accident. The keys cover every length from 1 to 250 and bytes ≥ 0x80
//! (which libhashkit's one-at-a-time and FNV-1a add as signed chars). Nothing is connected to:
//! the addresses are only named.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use libmcshm::client::Router;
use libmcshm::hash::KeyHash;
use libmcshm::placement::buckets::{BucketMap, Shape};
use libmcshm::placement::{Distribution, Locator, Member};
use libmcshm::table::{Policy, Snapshot};
use libmcshm::{Address, Server};

/// Compiles the oracle (see `common::cbuild`).
fn oracle(dir: &std::path::Path) -> std::path::PathBuf {
    common::cbuild::libmemcached_oracle(dir, "vbucket_oracle")
}

/// What libmemcached answers for `keys` with `hash`, the host map `owners` (one position per
/// bucket) and `servers` in this order: one `host:port` per key.
fn ask_oracle(
    exe: &Path,
    hash: KeyHash,
    owners: &[u16],
    servers: &[Address],
    keys: &[Vec<u8>],
) -> Vec<String> {
    let map: Vec<String> = owners.iter().map(u16::to_string).collect();
    let mut input = Vec::with_capacity(keys.iter().map(|k| k.len() + 1).sum());
    for key in keys {
        input.extend_from_slice(key);
        input.push(b'\n');
    }
    let mut oracle = Command::new(exe);
    oracle
        .arg(hash.as_str())
        .arg(owners.len().to_string())
        .arg(map.join(","))
        .args(servers.iter().map(host_port));
    common::cbuild::ask_oracle(&mut oracle, input, keys.len())
}

/// `host:port` as libmemcached names a server (no brackets, the port always).
fn host_port(address: &Address) -> String {
    format!("{}:{}", address.host(), address.port().unwrap())
}

/// A router over `servers` (in this order, all up) on a `vbucket` domain of `hash` whose map
/// has the owners `owners` and no replicas.
fn router(hash: KeyHash, owners: &[u16], servers: &[Address]) -> Router {
    let shape = Shape::new(owners.len(), 0).unwrap();
    let map = BucketMap::new(shape, owners.to_vec(), None, servers.len()).unwrap();
    Router::for_snapshot(Snapshot {
        domain: "vbucket".into(),
        version: 1,
        changed_ms: 0,
        writer_pid: 0,
        writer_uid: 0,
        servers: servers
            .iter()
            .enumerate()
            .map(|(n, a)| Server {
                id: n as u32 + 1,
                live: n as u32,
                ..Server::new(a.clone())
            })
            .collect(),
        policy: Policy {
            distribution: Distribution::VBucket(hash),
            ..Policy::default()
        },
        next_id: servers.len() as u32 + 1,
        fleet_revision: 0,
        buckets: Some(Arc::new(map)),
    })
}

/// splitmix64: the same keys and maps on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// 10 000 keys memcached accepts: every length from 1 to 250 (40 keys each), bytes from
/// 0x21..=0x7e and 0x80..=0xff (every other key ASCII only, the rest about half high bytes).
fn keys() -> Vec<Vec<u8>> {
    let mut rng = Rng(0x5eed_0fb0_c4e7);
    let byte = |rng: &mut Rng, high: bool| -> u8 {
        if high && rng.next() & 1 == 1 {
            0x80 + rng.below(0x80) as u8
        } else {
            0x21 + rng.below(0x7f - 0x21) as u8
        }
    };
    let keys: Vec<Vec<u8>> = (0..10_000)
        .map(|i| {
            let len = 1 + i % 250;
            (0..len).map(|_| byte(&mut rng, i % 2 == 1)).collect()
        })
        .collect();
    assert!(keys.iter().any(|k| k.iter().any(|&b| b >= 0x80)));
    for key in &keys {
        libmcshm::key::check_key(key).unwrap();
    }
    keys
}

/// A lopsided host map: each bucket's owner the lower of two pseudo-random positions (server 0
/// owns about (2n − 1)/n² of the buckets, the last 1/n²), every server owning some bucket.
fn lopsided_map(rng: &mut Rng, buckets: usize, servers: usize) -> Vec<u16> {
    let mut owners: Vec<u16> = (0..buckets)
        .map(|_| rng.below(servers).min(rng.below(servers)) as u16)
        .collect();
    for s in 0..servers.min(buckets) {
        if !owners.contains(&(s as u16)) {
            let b = rng.below(buckets);
            owners[b] = s as u16;
        }
    }
    owners
}

/// Each libhashkit hash × 1, 3 and 7 servers × 16, 1 024 and 8 192 buckets, 10 000 keys each:
/// mcshm's router picks the server libmemcached picks, for every key.
#[test]
fn every_hash_and_shape_agrees_with_libmemcached() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = oracle(tmp.path());
    let keys = keys();
    let all: Vec<Address> = (0..7)
        .map(|i| Address::parse(&format!("127.0.0.{}:{}", 1 + i % 2, 21211 + i)).unwrap())
        .collect();
    let now = libmcshm::clock::now_ms();
    let mut rng = Rng(42);
    let mut failures = Vec::new();
    for hash in KeyHash::ALL {
        for count in [1, 3, 7] {
            let servers = &all[..count];
            for buckets in [16, 1024, 8192] {
                let owners = lopsided_map(&mut rng, buckets, count);
                let expected = ask_oracle(&exe, hash, &owners, servers, &keys);
                let mut router = router(hash, &owners, servers);
                let mut differ = 0;
                let mut first = None;
                for (key, want) in keys.iter().zip(&expected) {
                    let owner = router.owner(key, now).unwrap();
                    let got = host_port(router.address(owner));
                    if &got != want {
                        differ += 1;
                        first.get_or_insert_with(|| {
                            format!("key {key:x?}: mcshm {got}, libmemcached {want}")
                        });
                    }
                }
                if differ > 0 {
                    failures.push(format!(
                        "{} / {count} servers / {buckets} buckets: {differ} of {} keys differ \
                         (first: {})",
                        hash.as_str(),
                        keys.len(),
                        first.unwrap()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// libmemcached's own vectors (tests/libmemcached-1.0/virtual_buckets.cc): crc, 4 buckets,
/// map {0, 1, 2, 1}, servers localhost:11211, localhost1:11210, localhost2:11211. The router
/// and the real library both answer them.
#[test]
fn libmemcached_s_virtual_bucket_vectors_hold_end_to_end() {
    let servers: Vec<Address> = ["localhost:11211", "localhost1:11210", "localhost2:11211"]
        .iter()
        .map(|a| Address::parse(a).unwrap())
        .collect();
    let owners = [0, 1, 2, 1];
    let vectors = [
        ("hello", 0),
        ("doctor", 0),
        ("name", 1),
        ("continue", 1),
        ("yesterday", 0),
        ("tomorrow", 1),
        ("another key", 2),
    ];
    let mut router = router(KeyHash::Crc, &owners, &servers);
    let now = libmcshm::clock::now_ms();
    for (key, server) in vectors {
        // "another key" has a space, which memcached's text protocol refuses: the router
        // refuses it too (libmemcached only with MEMCACHED_BEHAVIOR_VERIFY_KEY), so that
        // vector is checked on the placement the router builds for the table.
        let owner = match router.owner(key.as_bytes(), now) {
            Ok(owner) => owner,
            Err(_) => {
                assert!(key.contains(' '), "{key:?} refused");
                placement_owner(&servers, &owners, key)
            }
        };
        assert_eq!(owner, server, "{key:?}: the router");
    }
    let tmp = tempfile::tempdir().unwrap();
    let keys: Vec<Vec<u8>> = vectors.iter().map(|(k, _)| k.as_bytes().to_vec()).collect();
    let answers = ask_oracle(&oracle(tmp.path()), KeyHash::Crc, &owners, &servers, &keys);
    for ((key, server), answer) in vectors.iter().zip(&answers) {
        assert_eq!(
            answer,
            &host_port(&servers[*server]),
            "{key:?}: libmemcached"
        );
    }
}

/// The owner of `key` on the placement the router builds for this table
/// (`Locator::build_with` over every server), for a key the router itself refuses.
fn placement_owner(servers: &[Address], owners: &[u16], key: &str) -> usize {
    let map = BucketMap::new(
        Shape::new(owners.len(), 0).unwrap(),
        owners.to_vec(),
        None,
        servers.len(),
    )
    .unwrap();
    let members: Vec<Member<'_>> = servers
        .iter()
        .enumerate()
        .map(|(position, address)| Member {
            position,
            address,
            weight: 1,
        })
        .collect();
    Locator::build_with(
        Distribution::VBucket(KeyHash::Crc),
        &members,
        Some(&Arc::new(map)),
        servers.len(),
    )
    .owner(key.as_bytes())
    .unwrap()
}
