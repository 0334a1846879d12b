//! The ring in the shared file (format 3): readers route with the ring the writer computed, build
//! none of their own, get the answers a ring built from the table gives, and never use a
//! damaged or outdated one. Addresses outside loopback are only looked up, never connected to.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use crate::common::Reg;
use libmcshm::client::Router;
use libmcshm::clock::now_ms;
use libmcshm::placement::Ring;
use libmcshm::registry::{RingRef, RingWords};
use libmcshm::table::Failover;
use libmcshm::table::routed;
use libmcshm::{Domain, Registry, Snapshot};

fn domain(name: &str) -> Domain {
    Domain::new(name).unwrap()
}

fn snapshot(reg: &Reg, name: &str) -> Snapshot {
    snapshot_and_ring(reg, name).0
}

/// The current table, and where the writer put its ring in the file.
fn snapshot_and_ring(reg: &Reg, name: &str) -> (Snapshot, Option<(RingRef, RingWords)>) {
    let mut registry = Registry::open(reg.dir(), &domain(name)).unwrap();
    let snapshot = (*registry.current_snapshot().unwrap()).clone();
    (snapshot, registry.ring_location())
}

/// The ring a process would build from the table: what the shared one must answer.
fn built_here(snap: &Snapshot) -> (Ring, Vec<usize>) {
    let members = routed(&snap.servers, snap.policy.failover);
    let ring = snap
        .policy
        .distribution
        .ring(&libmcshm::table::members(&snap.servers, &members));
    (ring, members)
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user:{i:08}:profile")).collect()
}

/// `count` servers 10.a.b.c with weights 1..=3, some on other ports.
fn servers(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let port = if i % 7 == 3 { ":11311" } else { "" };
            format!("10.{}.{}.{}{port}", i / 65536, (i / 256) % 256, i % 256)
        })
        .collect()
}

fn add_weighted(reg: &Reg, name: &str, list: &[String]) {
    let lines: Vec<String> = list
        .iter()
        .enumerate()
        .map(|(i, server)| format!("{server} weight={}", 1 + i % 5 / 4 + i % 3 / 2))
        .collect();
    let file = reg.dir().join(format!("{name}.list"));
    std::fs::create_dir_all(reg.dir()).unwrap();
    std::fs::write(&file, lines.join("\n")).unwrap();
    reg.ok(name, &["load", "--partial", file.to_str().unwrap()]);
}

fn assert_routes_like_a_built_ring(router: &mut Router, snap: &Snapshot, keys: &[String]) {
    let (ring, members) = built_here(snap);
    for key in keys {
        let expected = ring.server_for(key.as_bytes()).map(|n| members[n]);
        assert_eq!(
            router.owner(key.as_bytes(), now_ms()).ok(),
            expected,
            "key {key}"
        );
        let along: Vec<usize> = ring
            .servers_from(key.as_bytes())
            .take(2)
            .map(|n| members[n])
            .collect();
        assert_eq!(router.along_ring(key.as_bytes(), 2), along, "key {key}");
    }
}

#[test]
fn readers_route_with_the_shared_ring_and_build_none() {
    let reg = Reg::new();
    // 2 000 servers: 320 000 points, several to a bucket of the ring's index.
    for (name, count) in [("one", 1), ("three", 3), ("many", 300), ("more", 2000)] {
        add_weighted(&reg, name, &servers(count));
        let mut router = Router::for_domain(reg.dir(), &domain(name)).unwrap();
        router.refresh(now_ms()).unwrap();
        let (snap, ring) = snapshot_and_ring(&reg, name);
        assert!(ring.is_some(), "{name}: the writer wrote a ring");
        assert_routes_like_a_built_ring(&mut router, &snap, &keys(5000));
        // Under rehash, down servers are off the shared ring too.
        reg.ok(name, &["policy", "--failover", "rehash"]);
        if count > 1 {
            reg.ok(name, &["down", "10.0.0.1:11211"]);
        }
        router.refresh(now_ms()).unwrap();
        let snap = snapshot(&reg, name);
        assert_routes_like_a_built_ring(&mut router, &snap, &keys(5000));
        assert_eq!(router.ring_builds(), 0, "{name}: a reader built a ring");
    }
}

/// A change that leaves the routed servers and weights alone (a reason, a retry interval, up/down
/// under failover none, a policy) names the same ring again; others write a new one.
#[test]
fn changes_that_keep_the_ring_do_not_rewrite_it() {
    let reg = Reg::new();
    reg.ok(
        "keep",
        &["add", "--no-flush", "10.0.0.1", "10.0.0.2", "10.0.0.3"],
    );
    let generation = |reg: &Reg| snapshot_and_ring(reg, "keep").1.unwrap().0.generation;
    let first = generation(&reg);
    for edit in [
        &["set", "10.0.0.2:11211", "--retry-interval", "60"][..],
        &["down", "10.0.0.2:11211", "--reason", "disk"],
        &["up", "10.0.0.2:11211", "--no-flush"],
        &["policy", "--failover", "rehash"],
    ] {
        reg.ok("keep", edit);
        assert_eq!(generation(&reg), first, "{edit:?} rewrote the ring");
    }
    let mut last = first;
    for edit in [
        &["set", "10.0.0.1:11211", "--weight", "2"][..],
        &["down", "10.0.0.3:11211"],
        &["add", "--no-flush", "10.0.0.4"],
        &["delete", "10.0.0.1:11211"],
    ] {
        reg.ok("keep", edit);
        let now = generation(&reg);
        assert!(now > last, "{edit:?} kept the old ring");
        last = now;
        let mut router = Router::for_domain(reg.dir(), &domain("keep")).unwrap();
        router.refresh(now_ms()).unwrap();
        assert_routes_like_a_built_ring(&mut router, &snapshot(&reg, "keep"), &keys(2000));
        assert_eq!(router.ring_builds(), 0);
    }
}

/// A router that keeps routing across changes (the same process, versions moving under it).
#[test]
fn a_long_lived_router_follows_every_ring() {
    let reg = Reg::new();
    let list = servers(40);
    add_weighted(&reg, "live", &list);
    reg.ok("live", &["policy", "--failover", "rehash"]);
    let mut router = Router::for_domain(reg.dir(), &domain("live")).unwrap();
    let keys = keys(500);
    for i in 0..20 {
        let server = match &list[i / 2 * 3] {
            s if s.contains(':') => s.clone(),
            s => format!("{s}:11211"),
        };
        if i % 2 == 0 {
            reg.ok("live", &["down", &server]);
        } else {
            reg.ok("live", &["up", &server, "--no-flush"]);
        }
        router.refresh(now_ms()).unwrap();
        let snap = snapshot(&reg, "live");
        assert_eq!(router.snapshot().version, snap.version);
        assert_routes_like_a_built_ring(&mut router, &snap, &keys);
    }
    assert_eq!(router.ring_builds(), 0);
}

/// Every byte of the committed ring region flipped in turn (sampled): a fresh reader still
/// routes every key as a ring built from the table does (damaged points and index entries are
/// refused, and it builds its own), and never panics.
#[test]
fn a_damaged_shared_ring_is_never_used() {
    let reg = Reg::new();
    add_weighted(&reg, "dmg", &servers(3));
    let (snap, ring) = snapshot_and_ring(&reg, "dmg");
    let (ring_ref, at) = ring.unwrap();
    let points = ring_ref.points as usize;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(reg.file("dmg"))
        .unwrap();
    let keys = keys(300);
    let (ring, members) = built_here(&snap);
    let expected: Vec<Option<usize>> = keys
        .iter()
        .map(|k| ring.server_for(k.as_bytes()).map(|n| members[n]))
        .collect();
    // The header, the index entries the keys use, and points all over the ring.
    let mut offsets: Vec<usize> = (at.header * 8..at.header * 8 + 16).collect();
    offsets.extend((at.index * 8..at.index * 8 + 16).step_by(3));
    offsets.extend((0..keys.len()).map(|i| {
        let bucket = (libmcshm::hash::ketama_md5(keys[i].as_bytes()) >> 17) as usize;
        at.index * 8 + bucket * 4 + i % 4
    }));
    offsets.extend((at.points * 8..(at.points + points) * 8).step_by(41));
    let mut builds = 0;
    for offset in offsets {
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, offset as u64).unwrap();
        file.write_all_at(&[byte[0] ^ 0x24], offset as u64).unwrap();
        let mut router = Router::for_domain(reg.dir(), &domain("dmg")).unwrap();
        for (key, expected) in keys.iter().zip(&expected) {
            assert_eq!(
                router.owner(key.as_bytes(), now_ms()).ok(),
                *expected,
                "byte {offset} flipped: key {key}"
            );
        }
        builds += router.ring_builds();
        file.write_all_at(&byte, offset as u64).unwrap();
    }
    assert!(builds > 0, "no damage was ever noticed");
}

/// A file of format 2 (no ring) routes with a ring built by the reader, and the next write
/// rewrites it in format 3 with its ring.
#[test]
fn a_format_2_file_routes_and_is_upgraded_by_the_next_write() {
    let reg = Reg::new();
    std::fs::create_dir_all(reg.dir()).unwrap();
    // Written by mcshm 0.x (format 2): a:1, b:2 (down, "flaky"), c:3 in domain "c".
    std::fs::copy("tests/data/format2-c.mcshm", reg.file("c")).unwrap();
    let (snap, ring_ref) = snapshot_and_ring(&reg, "c");
    assert_eq!((snap.version, ring_ref), (2, None));
    let mut router = Router::for_domain(reg.dir(), &domain("c")).unwrap();
    assert_routes_like_a_built_ring(&mut router, &snap, &keys(500));
    assert_eq!(router.ring_builds(), 1, "no shared ring: built here");

    reg.ok("c", &["add", "--no-flush", "d:4"]);
    let bytes = reg.bytes("c");
    assert_eq!(
        bytes[8..16],
        [4, 0, 0, 0, 3, 0, 0, 0],
        "rewritten as format 4, readable by format 3"
    );
    let (snap, ring_ref) = snapshot_and_ring(&reg, "c");
    assert!(ring_ref.is_some());
    assert_eq!(snap.policy.failover, Failover::None);
    let mut fresh = Router::for_domain(reg.dir(), &domain("c")).unwrap();
    assert_routes_like_a_built_ring(&mut fresh, &snap, &keys(500));
    assert_eq!(fresh.ring_builds(), 0);
}

/// The writer derives a new ring from the previous one when few servers change (their points
/// are copied, only the changed servers hashed): point for point, it must be the ring built
/// from scratch, through removals, additions, weight changes and a reordered list (1 500
/// servers: about five pairs of equal point values, whose order is by server), for each
/// distribution with a ring.
#[test]
fn derived_rings_equal_rings_built_from_scratch() {
    for distribution in [
        &["ketama"][..],
        &["ketama-spy"],
        &["ketama-unweighted", "--hash", "md5"],
        &["ketama-unweighted", "--hash", "one-at-a-time"],
    ] {
        derived_rings_equal_built_ones(distribution);
    }
}

fn derived_rings_equal_built_ones(distribution: &[&str]) {
    let reg = Reg::new();
    let list = servers(1500);
    add_weighted(&reg, "drv", &list);
    let mut policy = vec!["policy", "--failover", "rehash", "--distribution"];
    policy.extend(distribution);
    reg.ok("drv", &policy);
    let check = |what: &str| {
        let what = format!("{distribution:?}, {what}");
        let mut registry = Registry::open(reg.dir(), &domain("drv")).unwrap();
        let (snap, view) = registry.snapshot_and_ring().unwrap();
        let view = view.unwrap_or_else(|| panic!("{what}: no shared ring"));
        let shared = registry.ring_points(&view).unwrap();
        let (ring, members) = built_here(&snap);
        let (points, _, _) = ring.parts_for_tests();
        let built: Vec<(u32, usize)> = points
            .iter()
            .map(|&(v, m)| (v, members[m as usize]))
            .collect();
        assert!(shared == built, "{what}: the shared ring differs");
    };
    check("first");
    reg.ok("drv", &["down", "10.0.0.11:11211"]);
    check("one down");
    reg.ok("drv", &["up", "10.0.0.11:11211", "--no-flush"]);
    check("up again");
    reg.ok("drv", &["delete", "10.0.1.7:11211"]);
    check("one deleted");
    reg.ok("drv", &["add", "--no-flush", "10.9.9.9"]);
    check("one added");
    reg.ok("drv", &["set", "10.0.0.20:11211", "--weight", "3"]);
    check("a weight");
    let dump = reg.ok("drv", &["dump"]);
    let (head, body): (Vec<&str>, Vec<&str>) = dump
        .lines()
        .partition(|l| l.starts_with('#') || l.starts_with("policy"));
    let reordered: Vec<&str> = head.into_iter().chain(body.into_iter().rev()).collect();
    let file = reg.dir().join("reordered.list");
    std::fs::write(&file, reordered.join("\n")).unwrap();
    reg.ok("drv", &["load", "--partial", file.to_str().unwrap()]);
    check("the list reversed");
    reg.ok("drv", &["down", "10.0.2.1:11211"]);
    check("one down after the reversal");
}

/// A reader holding version v reads v+1 as a change (the entries that differ only) and gets
/// exactly the table a fresh reader copies whole, through every kind of edit.
#[test]
fn a_change_read_as_a_delta_is_the_table_read_whole() {
    let reg = Reg::new();
    add_weighted(&reg, "delta", &servers(50));
    let mut reader = Registry::open(reg.dir(), &domain("delta")).unwrap();
    reader.current_snapshot().unwrap();
    let edits: [&[&str]; 8] = [
        &["down", "10.0.0.5:11211", "--reason", "disk"],
        &["set", "10.0.0.6:11211", "--retry-interval", "60"],
        &["add", "--no-flush", "10.1.0.1", "10.1.0.2"],
        &["delete", "10.1.0.2:11211"],
        &["delete", "10.0.0.2:11211"],
        &["policy", "--failover", "rehash", "--replicas", "2"],
        &["set", "10.0.0.8:11211", "--weight", "2"],
        &["up", "10.0.0.5:11211", "--no-flush"],
    ];
    let mut deltas = 0;
    for edit in edits {
        reg.ok("delta", edit);
        let changed = reader.current_snapshot().unwrap();
        deltas += usize::from(reader.last_delta().is_some());
        assert_eq!(*changed, snapshot(&reg, "delta"), "after {edit:?}");
    }
    assert_eq!(deltas, edits.len(), "every change was read as a delta");
}
