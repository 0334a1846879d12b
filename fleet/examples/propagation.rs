//! The fleet's propagation time, run by `bench/fleet.sh` (which starts etcd and one
//! `mcadmin sync` agent per host directory):
//!
//! 1. from an acknowledged fleet edit (the transaction `mcadmin --etcd … add` runs) to the
//!    change being visible in the local table of every host;
//! 2. from a mark-down in one host's table (what a client does at its failure limit) to the
//!    other hosts' tables showing it (their clients route around the server from then on).
//!
//! `propagation ENDPOINTS ROUNDS DIR…`. Servers are closed loopback ports with retry interval
//! -1: nothing here ever connects to them.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use libmcshm::table::{CommitInfo, State};
use libmcshm::{Address, Domain, Registry, Server, edit};
use mcshm_fleet::{Etcd, EtcdConfig, Fleet};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoints, rounds, dirs @ ..] = args.as_slice() else {
        eprintln!("usage: propagation ENDPOINTS ROUNDS DIR...");
        std::process::exit(2);
    };
    let rounds: usize = rounds.parse().expect("ROUNDS");
    let dirs: Vec<PathBuf> = dirs.iter().map(PathBuf::from).collect();
    let etcd = Etcd::new(EtcdConfig {
        endpoints: EtcdConfig::parse_endpoints(endpoints).unwrap(),
        timeout: Duration::from_secs(5),
        ..EtcdConfig::default()
    })
    .unwrap();
    let fleet = Fleet::new(etcd, "/mcshm/").unwrap();
    let domain = Domain::new("bench").unwrap();

    let mut add = Vec::new();
    for i in 0..rounds {
        let server = Server {
            retry_interval: -1,
            ..Server::new(Address::parse(&format!("127.0.0.1:{}", 2000 + i)).unwrap())
        };
        let commit = fleet
            .transact(&domain, true, "bench", |t| {
                edit::add(
                    &mut t.servers,
                    std::slice::from_ref(&server),
                    true,
                    CommitInfo::now(),
                    "bench",
                )
            })
            .unwrap();
        let acknowledged = Instant::now();
        let revision = commit.revision as u64;
        let seen = wait_all(&dirs, &domain, |s| s.fleet_revision >= revision);
        add.push(seen.duration_since(acknowledged));
    }
    report(
        &format!("acknowledged add -> visible on all {} hosts", dirs.len()),
        &mut add,
    );

    let mut down = Vec::new();
    let (first, others) = dirs.split_first().expect("two or more hosts");
    let mut writer = Registry::open_writer(first, &domain, false).unwrap();
    for i in 0..rounds {
        let address = Address::parse(&format!("127.0.0.1:{}", 2000 + i)).unwrap();
        let marked = Instant::now();
        writer
            .transact(|t| {
                edit::set_down(
                    &mut t.servers,
                    std::slice::from_ref(&address),
                    "bench: failure limit",
                    true,
                    CommitInfo::now(),
                    "bench",
                )
            })
            .unwrap();
        let seen = wait_all(others, &domain, |s| {
            s.find(&address).is_some_and(|x| x.state == State::Down)
        });
        down.push(seen.duration_since(marked));
    }
    report(
        &format!(
            "mark-down on one host -> seen on the other {}",
            others.len()
        ),
        &mut down,
    );
    println!(
        "anchors: mcrouter config reload settles in ~1 s; ElastiCache auto-discovery polls every 60 s"
    );
}

/// When the last of `dirs` shows a table for which `done` holds (each host waits on its
/// table's futex in a thread of its own).
fn wait_all(
    dirs: &[PathBuf],
    domain: &Domain,
    done: impl Fn(&libmcshm::Snapshot) -> bool + Sync,
) -> Instant {
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        for dir in dirs {
            let tx = tx.clone();
            let done = &done;
            scope.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if let Ok(mut r) = Registry::open(dir, domain) {
                        let mut since = 0;
                        while Instant::now() < deadline {
                            if let Ok(s) = r.snapshot() {
                                if done(&s) {
                                    tx.send(Instant::now()).unwrap();
                                    return;
                                }
                                since = s.version;
                            }
                            r.wait_for_change(since, Duration::from_millis(100));
                        }
                        panic!("{} never saw the change", dir.display());
                    }
                    assert!(Instant::now() < deadline, "no table in {}", dir.display());
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
    });
    drop(tx);
    rx.iter().max().unwrap()
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{what}: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3
    );
}
