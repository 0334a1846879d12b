//! What one change of a 10 000-server domain costs a reader's next lookup, counted (not timed):
//! the router must read the new version as a change of the one it holds (a few entries
//! decoded, nothing copied whole) and look keys up in the ring the writer put in the file
//! (no ring built here). A change that made every reader decode every entry, or rebuild the
//! ring, made the first lookup after `mcadmin set --weight` ~100x slower (issue 33): these
//! tests fail on such a change whatever the machine's speed.

use mcshm_table::address::Address;
use mcshm_table::domain::Domain;
use mcshm_table::registry::Registry;
use mcshm_table::table::{Failover, Server, State, Table};
use mcshm_table::work::WorkCounters;

use crate::Router;
use crate::router_tests::Dir;

const SERVERS: usize = 10_000;
/// Most entries a change of one server may cost a reader.
const FEW: u64 = 8;
const NOW: u64 = 1_700_000_000_000;

fn address(i: usize) -> Address {
    Address::parse(&format!(
        "10.{}.{}.{}:11211",
        i >> 16,
        (i >> 8) & 255,
        i & 255
    ))
    .unwrap()
}

/// A domain of [`SERVERS`] servers under `failover`, in a file with room for a few more (an
/// add does not grow it), its writer and a reader that has routed once.
fn domain(dir: &Dir, failover: Failover) -> (Registry, Router) {
    let domain = Domain::new("big").unwrap();
    let mut writer = Registry::open_writer(&dir.0, &domain, true).unwrap();
    writer
        .transact(|t| {
            t.policy.failover = failover;
            t.servers.extend((0..SERVERS + 64).map(|i| Server {
                retry_interval: -1,
                ..Server::new(address(i))
            }));
            Ok(())
        })
        .unwrap();
    writer
        .transact(|t| {
            t.servers.truncate(SERVERS);
            Ok(())
        })
        .unwrap();
    // As added servers (flushed) or swept ones: none may hold strays yet.
    writer
        .transact(|t| {
            t.servers.iter_mut().for_each(|s| s.strays_since = 0);
            Ok(())
        })
        .unwrap();
    let mut router = Router::for_domain(&dir.0, &domain).unwrap();
    router.owner(b"warm:up", NOW).unwrap();
    (writer, router)
}

/// What `change`, committed by `writer`, cost `router`'s next lookup.
fn cost(
    writer: &mut Registry,
    router: &mut Router,
    change: impl FnOnce(&mut Table),
) -> WorkCounters {
    let commit = writer
        .transact(|t| {
            change(t);
            Ok(())
        })
        .unwrap();
    assert!(commit.changed);
    let before = router.work();
    router.owner(b"user:00000001:profile", NOW).unwrap();
    assert_eq!(router.snapshot().version, commit.version);
    router.work().since(&before)
}

/// What is wrong with `work` for a change of one server (none: it was read as a delta of a
/// few entries, in place, and the lookup used the file's ring).
fn too_costly(what: &str, work: WorkCounters) -> Option<String> {
    let cheap = work.whole_reads == 0
        && work.delta_reads == 1
        && work.entries_decoded <= FEW
        && work.servers_cloned == 0
        && work.rings_built == 0
        && work.shared_rings == 1
        && work.servers_scanned == 0;
    (!cheap).then(|| format!("{what}: {work:?}"))
}

/// Servers whose mark `version` set.
fn marked_at(router: &Router, version: u64) -> u64 {
    let servers = &router.snapshot().servers;
    servers.iter().filter(|s| s.strays_since == version).count() as u64
}

#[test]
fn one_change_of_10_000_servers_costs_a_lookup_what_it_changes_and_no_ring() {
    for failover in [Failover::None, Failover::Rehash] {
        let dir = Dir::new("cost");
        let (mut writer, mut router) = domain(&dir, failover);
        let mut costly = Vec::new();
        let mut at = |what: &str, work| {
            costly.extend(too_costly(&format!("{what} ({failover:?})"), work));
        };
        // The first change that moves keys off every server (ketama's weights: one server's
        // weight changes every server's share of points) marks each of them as holding strays
        // (see mcshm_table::coherence): every entry changes once, and is read once.
        let work = cost(&mut writer, &mut router, |t| t.servers[5000].weight = 3);
        let version = router.snapshot().version;
        assert_eq!(
            marked_at(&router, version),
            SERVERS as u64 - 1,
            "all but the heavier"
        );
        assert_eq!(work.entries_decoded, SERVERS as u64, "{work:?}");
        assert_eq!((work.whole_reads, work.rings_built), (0, 0), "{work:?}");
        assert_eq!(work.shared_rings, 1, "{work:?}");
        // From then on a change costs what it changes: marks already set stay as they are.
        let work = cost(&mut writer, &mut router, |t| t.servers[5000].weight = 1);
        at("weight lowered", work);
        let work = cost(&mut writer, &mut router, |t| t.servers[5000].weight = 7);
        at("weight raised", work);
        let work = cost(&mut writer, &mut router, |t| {
            t.servers[42].retry_interval = 30
        });
        at("retry interval", work);
        let work = cost(&mut writer, &mut router, |t| {
            t.servers[42].reason = "maintenance".into()
        });
        at("reason", work);
        let work = cost(&mut writer, &mut router, |t| {
            t.servers[7000].state = State::Down
        });
        at("down", work);
        let work = cost(&mut writer, &mut router, |t| {
            t.servers[7000].state = State::Up
        });
        at("up", work);
        let work = cost(&mut writer, &mut router, |t| {
            t.servers[8000].state = State::Draining
        });
        at("drain", work);
        let work = cost(&mut writer, &mut router, |t| {
            t.servers[8000].state = State::Up
        });
        at("drain cancelled", work);
        let work = cost(&mut writer, &mut router, |t| {
            t.servers.push(Server::new(address(SERVERS)))
        });
        at("add", work);
        let work = cost(&mut writer, &mut router, |t| {
            t.servers.pop();
        });
        at("delete (the last server)", work);
        // A sweep under way: its server's mark is stamped anew, the others' are not. (Beside
        // the server changed: a version's delta is one range of positions, so a change of two
        // servers far apart costs the entries between them too.)
        let work = cost(&mut writer, &mut router, |t| {
            t.servers[5001].sweeping = true;
        });
        at("sweep begun", work);
        let work = cost(&mut writer, &mut router, |t| t.servers[5000].weight = 12);
        at("weight changed during a sweep", work);
        assert!(
            costly.is_empty(),
            "a change of one server cost a reader more than that server:\n{}",
            costly.join("\n")
        );
        assert_eq!(marked_at(&router, router.snapshot().version), 1);
    }
}

/// While a server drains, a write's plan asks where its key was before the drain: a placement
/// with the draining server, built here (the file's ring has it off). It is built once for the
/// drain, not once per version: a change that keeps the ring and the draining servers (a
/// reason, a retry interval) keeps it; one that changes the ring builds it again.
#[test]
fn a_drain_builds_its_placement_once_not_once_per_change() {
    let dir = Dir::new("drain");
    let (mut writer, mut router) = domain(&dir, Failover::None);
    let key = b"user:00000001:profile";
    let mut plan_after = |router: &mut Router, change: &dyn Fn(&mut Table)| {
        writer
            .transact(|t| {
                change(t);
                Ok(())
            })
            .unwrap();
        let before = router.work();
        router.plan_write(key, false, NOW).unwrap();
        router.work().since(&before)
    };
    let started = plan_after(&mut router, &|t| t.servers[8000].state = State::Draining);
    assert_eq!(started.rings_built, 1, "{started:?}");
    let reason = plan_after(&mut router, &|t| t.servers[8000].reason = "moving".into());
    assert_eq!(reason.rings_built, 0, "a reason: {reason:?}");
    let retry = plan_after(&mut router, &|t| t.servers[10].retry_interval = 5);
    assert_eq!(retry.rings_built, 0, "a retry interval: {retry:?}");
    // The placement kept plans every key as one built for this version does.
    let mut fresh = Router::for_domain(&dir.0, &Domain::new("big").unwrap()).unwrap();
    for n in 0..200 {
        let key = format!("key:{n}");
        let kept = router.plan_write(key.as_bytes(), false, NOW).unwrap();
        assert_eq!(kept, fresh.plan_write(key.as_bytes(), false, NOW).unwrap());
    }
    let drained = (0..2000).filter(|n| {
        let key = format!("key:{n}");
        router.draining_owner(key.as_bytes()) == Some(8000)
    });
    assert!(
        drained.count() > 0,
        "no key of the draining server was planned"
    );
    let weight = plan_after(&mut router, &|t| t.servers[8000].weight = 4);
    assert_eq!(
        weight.rings_built, 1,
        "the draining server's weight: {weight:?}"
    );
    let down = plan_after(&mut router, &|t| t.servers[10].state = State::Down);
    assert_eq!(
        down.rings_built, 0,
        "a down under none keeps the ring: {down:?}"
    );
    let weight = plan_after(&mut router, &|t| t.servers[11].weight = 2);
    assert_eq!(weight.rings_built, 1, "a new ring: {weight:?}");
}
