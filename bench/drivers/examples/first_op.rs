//! The first operation after a table change, at 100, 1 000 and 10 000 servers: what a client
//! pays once per change (new snapshot and its validation; the ring is the file's, computed by
//! the writer, whose commit of the change is timed too). Then, at 10 000 servers under the
//! default policy (failover none), the first lookup after each kind of change an operator
//! makes (`mcadmin set --weight`, `set --retry-interval`, `down`/`up`): worst of 6 and median,
//! through `Client::server_for`, the path of the C API's `mcshm_server_for_key` (issue 33).
//! Run by bench/first_op.sh; prints figures, asserts nothing.
//!
//! cargo run --release -p mcshm-bench --example first_op

use std::time::{Duration, Instant};

use libmcshm::table::{Server, State, Table};
use libmcshm::{Address, Client, Domain, Registry, Timeouts};

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let dir = std::env::temp_dir().join(format!("mcshm-first-op-{}", std::process::id()));
    println!(
        "| servers | reason changed (ring kept) | one server down under rehash (new ring) | writer's commit of that change |"
    );
    println!("|---|---|---|---|");
    for n in [100usize, 1_000, 10_000] {
        let domain = Domain::new(&format!("first{n}")).unwrap();
        let mut writer = mcshm_bench::rehash_table(&dir, &domain, n);
        let mut client = Client::for_domain(&dir, &domain, Timeouts::default()).unwrap();
        client.server_for(b"warm:up").unwrap();
        let rounds = if n >= 10_000 { 15 } else { 41 };
        let mut kept = Vec::new();
        let mut rebuilt = Vec::new();
        let mut commits = Vec::new();
        for round in 0..rounds {
            writer
                .transact(|t| {
                    t.servers[0].reason = format!("round {round}");
                    Ok(())
                })
                .unwrap();
            let started = Instant::now();
            client.server_for(b"user:00000001:profile").unwrap();
            kept.push(started.elapsed());
            let started = Instant::now();
            writer
                .transact(|t| {
                    t.servers[1].state = match t.servers[1].state {
                        State::Up => State::Down,
                        _ => State::Up,
                    };
                    Ok(())
                })
                .unwrap();
            commits.push(started.elapsed());
            let started = Instant::now();
            client.server_for(b"user:00000001:profile").unwrap();
            rebuilt.push(started.elapsed());
        }
        println!(
            "| {n} | {:.0} µs | {:.0} µs | {:.1} ms |",
            median(kept).as_secs_f64() * 1e6,
            median(rebuilt).as_secs_f64() * 1e6,
            median(commits).as_secs_f64() * 1e3
        );
    }
    operator_changes(&dir, 10_000);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first lookup after each kind of operator change of one server, at `n` servers under the
/// default policy: worst of 6 and median (and the first change that moves keys off every
/// server, once: it marks each of them, see `mcshm_table::coherence`).
fn operator_changes(dir: &std::path::Path, n: usize) {
    let domain = Domain::new("operator").unwrap();
    let mut writer = Registry::open_writer(dir, &domain, true).unwrap();
    writer
        .transact(|t| {
            t.servers.extend((0..n).map(|i| {
                let address = format!("10.{}.{}.{}:11211", i >> 16, (i >> 8) & 255, i & 255);
                Server {
                    retry_interval: -1,
                    ..Server::new(Address::parse(&address).unwrap())
                }
            }));
            Ok(())
        })
        .unwrap();
    let mut client = Client::for_domain(dir, &domain, Timeouts::default()).unwrap();
    client.server_for(b"warm:up").unwrap();
    let mut first_lookup = |change: &mut dyn FnMut(&mut Table)| {
        writer
            .transact(|t| {
                change(t);
                Ok(())
            })
            .unwrap();
        let started = Instant::now();
        client.server_for(b"user:00000001:profile").unwrap();
        started.elapsed()
    };
    let marking = first_lookup(&mut |t| t.servers[n / 2].weight = 2);
    let weight: Vec<Duration> = (0..6u16)
        .map(|r| first_lookup(&mut |t| t.servers[n / 2].weight = 3 + r))
        .collect();
    let retry: Vec<Duration> = (0..6)
        .map(|r| first_lookup(&mut |t| t.servers[n / 3].retry_interval = 10 + r))
        .collect();
    let mut down_up = Vec::new();
    for _ in 0..3 {
        down_up.push(first_lookup(&mut |t| t.servers[n / 4].state = State::Down));
        down_up.push(first_lookup(&mut |t| t.servers[n / 4].state = State::Up));
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!();
    println!("| first lookup after, {n} servers (failover none) | worst of 6 | median |");
    println!("|---|---|---|");
    for (what, times) in [
        ("a weight change (`set --weight`)", weight),
        ("a retry interval change (`set --retry-interval`)", retry),
        ("a down or an up", down_up),
    ] {
        let worst = times.iter().max().copied().unwrap_or_default();
        println!(
            "| {what} | {:.0} µs | {:.0} µs |",
            us(worst),
            us(median(times))
        );
    }
    println!(
        "| the first weight change after every mark was cleared (marks every server once) | {:.0} µs | |",
        us(marking)
    );
}
