//! What key → server costs on a `vbucket` domain against ketama, for bench/vbucket.sh: the
//! router of one table version (`Router::for_snapshot`, the path every front end takes after
//! the version check) over 100 and 10 000 servers, with the ketama continuum built in the
//! process and with a bucket map of 1 024 and 65 536 buckets (balanced, no replicas, hash
//! one-at-a-time: libmemcached's default). A virtual bucket lookup is a hash, a mask and one
//! read of the map, whatever the number of servers; ketama is an MD5 and a search of
//! 160 points per server. The same 100 000 distinct keys as bench/c/vbucket_lookup.c
//! (`user:%08d:profile`), ROUNDS rounds (7 unless given; bench/vbucket.sh gives 11), each
//! timing every configuration once, in an order shuffled from round to round so a drift of the
//! machine falls on all, each timed pass over the keys right after an untimed one: the
//! steady state. (In a fixed cyclic order the case after ketama at 10 000 servers, whose
//! continuum is 12 MB, paid ~8 ns more per lookup for what ketama had evicted.)
//! Prints figures, asserts nothing; the addresses are only named, never connected to.
//!
//!   vbucket_lookup [ROUNDS]
//!
//! The placement alone (`Locator::owner` of the locator the router builds, through
//! `Locator::build_with`) is timed too, in the same rounds: the rest of the router's lookup is
//! what every distribution pays (the key's check against memcached's rules and the reserved
//! namespace, the version check, the operation count).
//!
//! Prints one line per configuration: row mcshm|mcshm-locator DISTRIBUTION SERVERS MEDIAN_NS
//! MIN_NS MAX_NS (ns per lookup over the rounds).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use libmcshm::client::Router;
use libmcshm::hash::KeyHash;
use libmcshm::placement::buckets::{BucketMap, Shape};
use libmcshm::placement::{Distribution, Locator, Member};
use libmcshm::table::{Policy, Snapshot};
use libmcshm::{Address, Server};

const KEYS: usize = 100_000;

/// The table of `n` servers 10.a.b.c:11211 (as bench/c/vbucket_lookup.c names them), with
/// `buckets` buckets (a balanced map) or, without, the ketama continuum.
fn snapshot(n: usize, buckets: Option<usize>) -> Snapshot {
    let servers: Vec<Server> = (0..n)
        .map(|i| {
            let address = format!("10.{}.{}.{}:11211", i >> 16, (i >> 8) & 255, i & 255);
            Server {
                id: i as u32 + 1,
                live: i as u32,
                ..Server::new(Address::parse(&address).unwrap())
            }
        })
        .collect();
    let positions: Vec<usize> = (0..n).collect();
    let (distribution, map) = match buckets {
        Some(b) => (
            Distribution::VBucket(KeyHash::OneAtATime),
            Some(Arc::new(BucketMap::balanced(
                Shape::new(b, 0).unwrap(),
                &positions,
            ))),
        ),
        None => (Distribution::Ketama, None),
    };
    Snapshot {
        domain: "vbucket".into(),
        version: 1,
        changed_ms: 0,
        writer_pid: 0,
        writer_uid: 0,
        servers,
        policy: Policy {
            distribution,
            ..Policy::default()
        },
        next_id: n as u32 + 1,
        fleet_revision: 0,
        buckets: map,
    }
}

/// The placement the router builds for `snapshot` (every server routed).
fn locator(snapshot: &Snapshot) -> Locator {
    let members: Vec<Member<'_>> = snapshot
        .servers
        .iter()
        .enumerate()
        .map(|(position, s)| Member {
            position,
            address: &s.address,
            weight: s.weight,
        })
        .collect();
    Locator::build_with(
        snapshot.policy.distribution,
        &members,
        snapshot.buckets.as_ref(),
        snapshot.servers.len(),
    )
}

/// One configuration: the router's lookup or the placement's alone.
enum Lookup {
    Router(Box<Router>),
    Locator(Locator),
}

impl Lookup {
    fn owner(&mut self, key: &[u8], now: u64) -> usize {
        match self {
            Lookup::Router(r) => r.owner(key, now).unwrap(),
            Lookup::Locator(l) => l.owner(key).unwrap(),
        }
    }
}

/// Fisher–Yates with an xorshift64 generator: a new order each round, the same on every run.
fn shuffle(order: &mut [usize], seed: &mut u64) {
    for i in (1..order.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        order.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(7, |r| r.parse().expect("a count of rounds"));
    let keys: Vec<String> = (0..KEYS).map(|i| format!("user:{i:08}:profile")).collect();
    let now = libmcshm::clock::now_ms();
    let mut cases: Vec<(&str, String, usize, Lookup, Vec<f64>)> = Vec::new();
    for n in [100, 10_000] {
        for buckets in [None, Some(1024), Some(65_536)] {
            let name = buckets.map_or("ketama".to_string(), |b| format!("vbucket-{b}"));
            let table = snapshot(n, buckets);
            let placement = Lookup::Locator(locator(&table));
            let mut router = Lookup::Router(Box::new(Router::for_snapshot(table)));
            router.owner(b"warm:up", now); // builds the placement, not timed
            cases.push(("mcshm", name.clone(), n, router, Vec::new()));
            cases.push(("mcshm-locator", name, n, placement, Vec::new()));
        }
    }
    let mut sink = 0usize;
    let mut order: Vec<usize> = (0..cases.len()).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..rounds {
        shuffle(&mut order, &mut seed);
        for &case in &order {
            let (_, _, _, lookup, times) = &mut cases[case];
            let mut pass = |lookup: &mut Lookup| {
                let started = Instant::now();
                for key in &keys {
                    sink = sink.wrapping_add(lookup.owner(black_box(key.as_bytes()), now));
                }
                started.elapsed().as_secs_f64() * 1e9 / KEYS as f64
            };
            pass(lookup); // warms the caches for this case, not kept
            times.push(pass(lookup));
        }
    }
    for (who, name, n, _, mut times) in cases {
        times.sort_by(f64::total_cmp);
        println!(
            "row {who} {name} {n} {:.0} {:.0} {:.0}",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
    }
    black_box(sink);
}
