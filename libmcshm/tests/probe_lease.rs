//! The retry probe's lease, the one routing rule that lives in the shared file (the live
//! records): at most one process per host probes a down server per retry interval, a server an
//! operator holds down is never probed, and none is probed before its interval has passed since
//! it went down. Routers on a table in a temporary directory, given the time (they read no
//! clock); no socket, no sleep.

use libmcshm::client::Router;
use libmcshm::{Address, Domain, Registry, Server, State};

/// The time the routers are given (ms since the Unix epoch).
const NOW: u64 = 1_780_000_000_000;
/// The down servers' retry interval, in ms.
const INTERVAL_MS: u64 = 3_600_000;

/// A domain of one up and one down server (down since `since_ms`), `held` when an operator
/// holds it down; a key the down server owns; and how many probes the first router that read
/// that key (this function's) was given.
fn table(dir: &std::path::Path, held: bool, since_ms: u64) -> (Domain, Vec<u8>, usize) {
    let domain = Domain::new("lease").unwrap();
    let mut writer = Registry::open_writer(dir, &domain, true).unwrap();
    writer
        .transact(|t| {
            for (i, state) in [State::Up, State::Down].into_iter().enumerate() {
                t.servers.push(Server {
                    state,
                    held: held && state == State::Down,
                    since_ms,
                    retry_interval: 3600,
                    ..Server::new(Address::parse(&format!("10.9.0.{}:11211", i + 1)).unwrap())
                });
            }
            Ok(())
        })
        .unwrap();
    let mut router = Router::for_domain(dir, &domain).unwrap();
    let key = (0..1000)
        .map(|n| format!("k{n}").into_bytes())
        .find(|k| router.plan_read(k, NOW).unwrap().owner.index == 1)
        .unwrap();
    let probes = router.take_probes().len();
    (domain, key, probes)
}

#[test]
fn one_process_per_host_probes_a_down_server_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (domain, key, probes) = table(dir.path(), false, 0);
    assert_eq!(probes, 1, "the first reader probes");
    // It took the lease: no other process probes within the interval.
    let mut others: Vec<Router> = (0..5)
        .map(|_| Router::for_domain(dir.path(), &domain).unwrap())
        .collect();
    for router in &mut others {
        let plan = router.plan_read(&key, NOW + INTERVAL_MS - 1).unwrap();
        assert!(plan.replicas.is_empty(), "a down owner is not asked");
        assert!(router.take_probes().is_empty(), "the lease is taken");
    }
    // Once the interval has passed, exactly one of them takes the lease again.
    let later = NOW + INTERVAL_MS;
    let probes: usize = others
        .iter_mut()
        .map(|router| {
            router.plan_read(&key, later).unwrap();
            router.take_probes().len()
        })
        .sum();
    assert_eq!(probes, 1, "one probe per interval");
}

#[test]
fn the_first_reader_after_the_interval_takes_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let domain = Domain::new("lease").unwrap();
    let mut writer = Registry::open_writer(dir.path(), &domain, true).unwrap();
    writer
        .transact(|t| {
            t.servers.push(Server {
                state: State::Down,
                retry_interval: 3600,
                ..Server::new(Address::parse("10.9.0.1:11211").unwrap())
            });
            Ok(())
        })
        .unwrap();
    let mut first = Router::for_domain(dir.path(), &domain).unwrap();
    let mut second = Router::for_domain(dir.path(), &domain).unwrap();
    first.plan_read(b"k", NOW).unwrap();
    second.plan_read(b"k", NOW).unwrap();
    let leases = first.take_probes().len() + second.take_probes().len();
    assert_eq!(leases, 1, "exactly one of two processes probes");
}

#[test]
fn a_server_held_down_or_down_too_recently_is_not_probed() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, probes) = table(dir.path(), true, 0);
    assert_eq!(probes, 0, "held by an operator");

    let dir = tempfile::tempdir().unwrap();
    let (_, _, probes) = table(dir.path(), false, NOW - INTERVAL_MS + 1);
    assert_eq!(probes, 0, "down for less than its interval");
}
