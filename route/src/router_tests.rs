//! The router's position lists (down servers to probe, draining servers, servers that may hold
//! strays) and how they follow a table change: rebuilt by a scan of every server, or, when the
//! registry read the new version as a change of the old one (a slot delta), by keeping the old
//! positions outside the changed range and scanning only that range. Both must give the same
//! answer; a wrong merge would silently stop retry probes or drain fills.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use mcshm_table::address::Address;
use mcshm_table::domain::Domain;
use mcshm_table::registry::{Registry, SlotDelta};
use mcshm_table::table::{Server, State};

use crate::Router;
use crate::router::positions;

fn server(n: usize, state: State) -> Server {
    Server {
        id: n as u32 + 1,
        live: n as u32,
        state,
        ..Server::new(Address::parse(&format!("10.0.0.{}:11211", n + 1)).unwrap())
    }
}

fn servers(states: &[State]) -> Vec<Server> {
    states
        .iter()
        .enumerate()
        .map(|(n, s)| server(n, *s))
        .collect()
}

fn down(s: &Server) -> bool {
    s.state == State::Down
}

fn delta(first: usize, end: usize, count: usize) -> SlotDelta {
    SlotDelta {
        base: 1,
        first,
        end,
        count,
    }
}

use State::{Down, Draining, Up};

#[test]
fn without_a_delta_every_server_is_scanned() {
    let table = servers(&[Down, Up, Down, Draining, Down]);
    // What the previous version had does not matter: it is not trusted without a delta.
    assert_eq!(positions(&table, None, vec![1, 3], down), [0, 2, 4]);
    assert_eq!(
        positions(&table, None, vec![], |s| s.state == Draining),
        [3]
    );
    assert!(positions(&[], None, vec![0], down).is_empty());
}

#[test]
fn a_delta_keeps_the_positions_outside_its_range_and_rescans_inside_it() {
    // Version 1: servers 0 and 3 down. Version 2 changes only server 2 (now down too).
    let table = servers(&[Down, Up, Down, Down, Up]);
    assert_eq!(
        positions(&table, Some(delta(2, 3, 5)), vec![0, 3], down),
        [0, 2, 3]
    );
    // Server 3 came back: the range 3..4 is rescanned, the old 3 is dropped.
    let table = servers(&[Down, Up, Up, Up, Up]);
    assert_eq!(
        positions(&table, Some(delta(3, 4, 5)), vec![0, 3], down),
        [0]
    );
    // An empty range (a change of the policy only) keeps every position.
    assert_eq!(positions(&table, Some(delta(2, 2, 5)), vec![0], down), [0]);
}

#[test]
fn a_delta_trusts_old_positions_outside_its_range_as_the_writer_promised() {
    // The delta says only 1..2 changed, so position 0 is taken from before without a look at
    // the server (this is what makes a change of a few servers of 10 000 cheap).
    let table = servers(&[Up, Down, Up]);
    assert_eq!(
        positions(&table, Some(delta(1, 2, 3)), vec![0], down),
        [0, 1]
    );
}

#[test]
fn a_delta_that_shortens_the_table_drops_positions_past_its_end() {
    // Five servers, then the last two removed: count 3, nothing rewritten.
    let table = servers(&[Down, Up, Up]);
    assert_eq!(
        positions(&table, Some(delta(3, 3, 3)), vec![0, 3, 4], down),
        [0]
    );
    // Server 1 removed: 2.. moved down one place, so 1..3 is the changed range.
    let table = servers(&[Down, Up, Down]);
    assert_eq!(
        positions(&table, Some(delta(1, 3, 3)), vec![0, 2, 3], down),
        [0, 2]
    );
}

#[test]
fn a_delta_that_appends_servers_scans_only_the_new_ones() {
    let table = servers(&[Down, Up, Up, Down, Draining]);
    assert_eq!(
        positions(&table, Some(delta(3, 5, 5)), vec![0], down),
        [0, 3]
    );
    let draining = |s: &Server| s.state == Draining;
    assert_eq!(
        positions(&table, Some(delta(3, 5, 5)), vec![], draining),
        [4]
    );
}

/// A small deterministic generator (no dependency for a test of 2 000 cases).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }

    fn state(&mut self) -> State {
        [Up, Down, Draining][self.below(3)]
    }
}

#[test]
fn a_delta_update_gives_what_a_full_scan_gives_for_every_change_a_slot_delta_can_state() {
    let mut rng = Lcg(29);
    for case in 0..2_000 {
        let old_len = rng.below(12);
        let old: Vec<State> = (0..old_len).map(|_| rng.state()).collect();
        // A delta as the reader applies it (format::apply_delta): the table is cut to
        // `count`, entries first..end are replaced or appended, and the others are kept; when
        // end < count the old table had count entries at least, and first <= old length.
        let count = rng.below(12);
        let end = match count <= old_len {
            true => rng.below(count + 1),
            false => count,
        };
        let first = rng.below(end.min(old_len) + 1);
        let mut new = old.clone();
        new.truncate(count);
        for position in first..end {
            let state = rng.state();
            match new.get_mut(position) {
                Some(slot) => *slot = state,
                None => new.push(state),
            }
        }
        assert_eq!(new.len(), count);
        let (old, new) = (servers(&old), servers(&new));
        let d = delta(first, end, count);
        for keep in [
            down as fn(&Server) -> bool,
            |s: &Server| s.state == Draining,
            |s: &Server| s.state != Up,
        ] {
            let before = positions(&old, None, vec![], keep);
            let scanned = positions(&new, None, vec![], keep);
            let updated = positions(&new, Some(d), before.clone(), keep);
            assert_eq!(
                updated,
                scanned,
                "case {case}: {d:?}, before {before:?}, old {:?}, new {:?}",
                old.iter().map(|s| s.state).collect::<Vec<_>>(),
                new.iter().map(|s| s.state).collect::<Vec<_>>(),
            );
        }
    }
}

/// A registry directory of this test, removed at the end.
pub(crate) struct Dir(pub(crate) PathBuf);

impl Dir {
    pub(crate) fn new(name: &str) -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("mcshm-route-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sets the state and retry interval of the servers at `changes` in one version.
fn change(writer: &mut Registry, changes: &[(usize, State, i32)]) {
    let commit = writer
        .transact(|t| {
            for &(i, state, retry_interval) in changes {
                let s = &mut t.servers[i];
                s.state = state;
                s.retry_interval = retry_interval;
                s.since_ms = 1;
            }
            Ok(())
        })
        .unwrap();
    assert!(commit.changed);
}

fn probed(router: &mut Router) -> Vec<u32> {
    let mut ids: Vec<u32> = router.take_probes().iter().map(|p| p.server_id()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[test]
fn a_router_follows_table_changes_read_as_deltas_for_its_probes_and_drains() {
    let dir = Dir::new("delta");
    let domain = Domain::new("delta").unwrap();
    let mut writer = Registry::open_writer(&dir.0, &domain, true).unwrap();
    writer
        .transact(|t| {
            t.servers = (0..5).map(|n| Server::new(server(n, Up).address)).collect();
            Ok(())
        })
        .unwrap();
    // Server 1 down, retried at once (interval 0): every new version gives it a probe.
    change(&mut writer, &[(1, Down, 0)]);
    let ids: Vec<u32> = writer
        .current_snapshot()
        .unwrap()
        .servers
        .iter()
        .map(|s| s.id)
        .collect();
    let mut router = Router::for_domain(&dir.0, &domain).unwrap();
    // A reader beside the router shows which versions the file hands out as deltas.
    let mut reader = Registry::open(&dir.0, &domain).unwrap();
    let read = |reader: &mut Registry| {
        reader.current_snapshot().unwrap();
        reader.last_delta().map(|d| (d.first, d.end))
    };
    read(&mut reader);
    router.refresh(mcshm_table::clock::now_ms()).unwrap();
    assert_eq!(probed(&mut router), [ids[1]]);

    // Server 3 down for good (never retried): a change of 3 only; 1 stays a probe.
    change(&mut writer, &[(3, Down, -1)]);
    assert_eq!(read(&mut reader), Some((3, 4)), "a delta that leaves 1 out");
    router.refresh(mcshm_table::clock::now_ms()).unwrap();
    assert_eq!(probed(&mut router), [ids[1]]);

    // Server 3 retried now: both are probed.
    change(&mut writer, &[(3, Down, 0)]);
    assert_eq!(read(&mut reader), Some((3, 4)));
    router.refresh(mcshm_table::clock::now_ms()).unwrap();
    assert_eq!(probed(&mut router), [ids[1], ids[3]]);

    // Server 1 back up: only 3 is.
    change(&mut writer, &[(1, Up, 0)]);
    assert_eq!(read(&mut reader), Some((1, 2)));
    router.refresh(mcshm_table::clock::now_ms()).unwrap();
    assert_eq!(probed(&mut router), [ids[3]]);

    // Server 4 drains: its keys' draining owner is 4.
    change(&mut writer, &[(4, Draining, 0)]);
    router.refresh(mcshm_table::clock::now_ms()).unwrap();
    let keys: Vec<Vec<u8>> = (0..300).map(|n| format!("k{n}").into_bytes()).collect();
    let owners: Vec<Option<usize>> = keys.iter().map(|k| router.draining_owner(k)).collect();
    assert!(owners.contains(&Some(4)), "some keys were on 4");
    assert!(owners.iter().all(|o| matches!(o, None | Some(4))));
    assert_eq!(
        probed(&mut router),
        [ids[3]],
        "the drain left 3's probe alone"
    );

    // The drain is over (4 removed): no fills, no draining owner, 3 still probed.
    writer
        .transact(|t| {
            t.servers.truncate(4);
            Ok(())
        })
        .unwrap();
    router.refresh(mcshm_table::clock::now_ms()).unwrap();
    assert!(keys.iter().all(|k| router.draining_owner(k).is_none()));
    assert_eq!(probed(&mut router), [ids[3]]);
}

/// Under the `replay` policy a write records its key for each down server that should have
/// had it: its down replica under `none`, the down server of the placement that still has it
/// under `rehash` (the write itself goes to the interim owner), and a down server marked as
/// holding keys it no longer owns (the write's delete of its stale copy misses it).
#[test]
fn a_write_records_its_key_for_the_down_servers_that_miss_it() {
    use mcshm_table::registry::Invalidations;
    use mcshm_table::table::{Failover, Rejoin};
    for failover in [Failover::None, Failover::Rehash] {
        let dir = Dir::new("missed");
        let domain = Domain::new("missed").unwrap();
        let mut writer = Registry::open_writer(&dir.0, &domain, true).unwrap();
        writer
            .transact(|t| {
                for n in 0..3 {
                    t.servers.push(Server::new(
                        Address::parse(&format!("10.0.0.{}:11211", n + 1)).unwrap(),
                    ));
                }
                t.policy.rejoin = Rejoin::Replay;
                t.policy.failover = failover;
                Ok(())
            })
            .unwrap();
        let mut router = Router::for_domain(&dir.0, &domain).unwrap();
        let now = mcshm_table::clock::now_ms();
        // A key of server 1, and a key of server 0, before server 1 goes down.
        let keys: Vec<Vec<u8>> = (0..200).map(|n| format!("k{n}").into_bytes()).collect();
        let of = |router: &mut Router, i: usize| {
            keys.iter()
                .find(|k| router.owner(k, now).unwrap() == i)
                .unwrap()
                .clone()
        };
        let (on_1, on_0) = (of(&mut router, 1), of(&mut router, 0));
        change(&mut writer, &[(1, Down, 0)]);
        let id_1 = writer.current_snapshot().unwrap().servers[1].id;
        let _ = router.plan_write(&on_1, false, now);
        let _ = router.plan_write(&on_0, false, now);
        let log = Invalidations::open(&dir.0, &domain)
            .unwrap()
            .expect("created");
        let logged = log.read(id_1).keys.expect("not overflowed");
        let marked = writer.current_snapshot().unwrap().servers[1].strays_since != 0;
        match marked {
            // Marked as holding keys it no longer owns: every write's delete of its stale
            // copy misses it too.
            true => assert_eq!(logged, [on_1.clone(), on_0.clone()], "{failover:?}"),
            false => assert_eq!(
                logged,
                std::slice::from_ref(&on_1),
                "{failover:?}: only what it owns"
            ),
        }
    }
}

/// `placement` answers what `owner` answers, on the ring the router routes with: every
/// server's under `none` (a down owner stays the owner), the up ones under `rehash` (the
/// interim owner).
#[test]
fn placement_names_the_owner_the_router_routes_to() {
    use mcshm_table::hash::KeyHash;
    use mcshm_table::placement::{Distribution, Via};
    use mcshm_table::table::{Failover, Policy, Snapshot};
    for distribution in [
        Distribution::Ketama,
        Distribution::Modula(KeyHash::OneAtATime),
    ] {
        for failover in [Failover::None, Failover::Rehash] {
            let snapshot = Snapshot {
                domain: "d".into(),
                version: 3,
                changed_ms: 0,
                writer_pid: 0,
                writer_uid: 0,
                next_id: 5,
                servers: servers(&[Up, Down, Up, Up]),
                policy: Policy {
                    failover,
                    distribution,
                    ..Policy::default()
                },
                fleet_revision: 0,
                buckets: None,
            };
            let mut router = Router::for_snapshot(snapshot);
            let mut owned_by_down = 0;
            for n in 0..400 {
                let key = format!("user:{n}");
                let placed = router.placement(key.as_bytes(), 1).unwrap();
                assert_eq!(
                    placed.owner,
                    router.owner(key.as_bytes(), 1).unwrap(),
                    "{key}"
                );
                owned_by_down += usize::from(placed.owner == 1);
                match (placed.via, distribution) {
                    (Via::Point { point, .. }, Distribution::Ketama) => {
                        assert_eq!(point.server, placed.owner);
                        assert_eq!(placed.hash, mcshm_table::hash::ketama_md5(key.as_bytes()));
                    }
                    (Via::Modula { members, slot }, Distribution::Modula(hash)) => {
                        let routed = if failover == Failover::None { 4 } else { 3 };
                        assert_eq!(members, routed);
                        assert_eq!(placed.hash, hash.hash(key.as_bytes()));
                        assert_eq!(slot, placed.hash as usize % members);
                    }
                    other => panic!("{other:?}"),
                }
            }
            match failover {
                Failover::None => assert!(owned_by_down > 50, "the down server keeps its keys"),
                Failover::Rehash => assert_eq!(owned_by_down, 0, "its keys have interim owners"),
            }
        }
    }
    let mut router = Router::for_snapshot(Snapshot {
        domain: "d".into(),
        version: 1,
        changed_ms: 0,
        writer_pid: 0,
        writer_uid: 0,
        next_id: 2,
        servers: servers(&[Up]),
        policy: Policy::default(),
        fleet_revision: 0,
        buckets: None,
    });
    assert!(
        router.placement(b"a b", 1).is_err(),
        "a key memcached refuses"
    );
    assert!(router.placement(&[b'k'; 251], 1).is_err());
}

/// mcshm's reserved namespace (the fences, `mcshm.fence.`) is refused on every routing call,
/// on the key's wire form: the key itself without a prefix, the prefix and the key together
/// with one. A key that only comes near it is routed.
#[test]
fn keys_in_the_reserved_namespace_are_refused_on_their_wire_form() {
    use mcshm_table::Error;
    use mcshm_table::prefix::KeyPrefix;
    use mcshm_table::table::{Policy, Snapshot};
    let router = |prefix: &str| {
        Router::for_snapshot(Snapshot {
            domain: "d".into(),
            version: 1,
            changed_ms: 0,
            writer_pid: 0,
            writer_uid: 0,
            next_id: 3,
            servers: servers(&[Up, Up]),
            policy: Policy {
                prefix: KeyPrefix::parse(prefix).unwrap(),
                ..Policy::default()
            },
            fleet_revision: 0,
            buckets: None,
        })
    };
    let refused = |router: &mut Router, key: &[u8]| {
        let calls = [
            router.owner(key, 1).map(drop),
            router.placement(key, 1).map(drop),
            router.chain(key, 1).map(drop),
            router.plan_read(key, 1).map(drop),
            router.plan_write(key, false, 1).map(drop),
        ];
        let checked = router.check_key(key, 1);
        for call in calls.into_iter().chain([checked]) {
            match call {
                Err(Error::BadKey { why, .. }) => {
                    assert!(why.contains("mcshm.fence. are reserved by mcshm"), "{why}")
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(key)),
            }
        }
    };
    let routed = |router: &mut Router, key: &[u8]| {
        assert!(router.check_key(key, 1).is_ok());
        assert!(router.owner(key, 1).is_ok());
        assert!(router.placement(key, 1).is_ok());
        assert!(router.plan_read(key, 1).is_ok());
        assert!(router.plan_write(key, false, 1).is_ok());
    };
    let mut plain = router("");
    refused(&mut plain, b"mcshm.fence.x");
    refused(&mut plain, b"mcshm.fence.");
    routed(&mut plain, b"mcshm.fenc");
    routed(&mut plain, b"mcshm.fencex");
    routed(&mut plain, b"fence.x");
    routed(&mut plain, b"x.mcshm.fence.x");
    let mut prefixed = router("mcshm.");
    refused(&mut prefixed, b"fence.x");
    routed(&mut prefixed, b"mcshm.fence.x");
    routed(&mut prefixed, b"fenc");
    match prefixed.owner(b"fence.x", 1) {
        Err(err) => assert!(err.to_string().contains("prefix 'mcshm.'"), "{err}"),
        Ok(_) => unreachable!(),
    }
    // A prefix that is itself in the namespace reserves every key.
    let mut inside = router("mcshm.fence.app.");
    refused(&mut inside, b"k");
}

/// A bucket moving off a server is drained from it (its draining owner) unless that server
/// stays one of the key's replicas, as when a loaded map's forward row keeps the old owner as
/// one (Couchbase's rebalances): then no client deletes its copy.
#[test]
fn a_moving_bucket_drains_its_old_owner_unless_it_stays_a_replica() {
    use mcshm_table::hash::KeyHash;
    use mcshm_table::placement::{BucketMap, Distribution, Shape};
    use mcshm_table::table::{Policy, Snapshot};
    let shape = Shape::new(1, 1).unwrap();
    let map = BucketMap::new(shape, vec![0, 1], Some(vec![1, 0]), 2).unwrap();
    let router_with = |replicas: u8| {
        let snapshot = Snapshot {
            domain: "vb".into(),
            version: 1,
            changed_ms: 0,
            writer_pid: 0,
            writer_uid: 0,
            servers: servers(&[State::Up, State::Up]),
            policy: Policy {
                distribution: Distribution::VBucket(KeyHash::Crc),
                replicas,
                ..Policy::default()
            },
            next_id: 3,
            fleet_revision: 0,
            buckets: Some(std::sync::Arc::new(map.clone())),
        };
        let mut router = Router::for_snapshot(snapshot);
        router.refresh(0).unwrap();
        router
    };
    let one = router_with(1);
    assert_eq!(one.bucket_source(b"k"), Some(0));
    assert_eq!(one.moving_owner(b"k"), Some(0), "drained: not a replica");
    assert_eq!(one.draining_owner(b"k"), Some(0));
    let two = router_with(2);
    assert_eq!(
        two.bucket_source(b"k"),
        Some(0),
        "the mover still copies from it"
    );
    assert_eq!(two.moving_owner(b"k"), None, "a replica of the key: kept");
}
