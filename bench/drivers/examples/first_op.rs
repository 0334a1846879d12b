//! The first operation after a table change, at 100, 1 000 and 10 000 servers: what a client
//! pays once per change (new snapshot and its validation; the ring is the file's, computed by
//! the writer, whose commit of the change is timed too).
//! Run by bench/first_op.sh; prints figures, asserts nothing.
//!
//! cargo run --release -p mcshm-bench --example first_op

use std::time::{Duration, Instant};

use libmcshm::table::State;
use libmcshm::{Client, Domain, Timeouts};

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
    let _ = std::fs::remove_dir_all(&dir);
}
