//! What one table change costs a host with many client processes: 200 reader processes on a
//! domain of N servers (failover rehash), each answering one key per change; the total CPU
//! they spend per change (one that changes the ring: a server down/up; one that keeps it: a
//! reason), and each reader's private memory. Run by bench/readers.sh; prints figures only.
//!
//! cargo run --release -p mcshm-bench --example readers -- 10000 200

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use libmcshm::table::State;
use libmcshm::{Client, Domain, Registry, Timeouts};

fn reader(dir: &str) {
    let domain = Domain::new("readers").unwrap();
    let mut client = Client::for_domain(dir, &domain, Timeouts::default()).unwrap();
    let mut watch = Registry::open(dir, &domain).unwrap();
    let mut seen = watch.version();
    client.server_for(b"user:00000001:profile").unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "ready {seen}").unwrap();
    out.flush().unwrap();
    loop {
        let Some(version) = watch.wait_for_change(seen, Duration::from_secs(60)) else {
            return;
        };
        seen = version;
        if client.snapshot().unwrap().servers[0].reason == "stop" {
            return;
        }
        client.server_for(b"user:00000001:profile").unwrap();
        writeln!(out, "seen {seen}").unwrap();
        out.flush().unwrap();
    }
}

/// CPU time of a process's threads, in ns (schedstat is exact; tick-sampled utime misses the
/// millisecond bursts of small domains).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn private_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("reader") {
        return reader(&args[2]);
    }
    let servers: usize = args.get(1).map_or(10_000, |n| n.parse().unwrap());
    let readers: usize = args.get(2).map_or(200, |n| n.parse().unwrap());
    let dir = std::env::temp_dir().join(format!("mcshm-readers-{}", std::process::id()));
    let domain = Domain::new("readers").unwrap();
    let mut writer = mcshm_bench::rehash_table(&dir, &domain, servers);
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..readers)
        .map(|_| {
            Command::new(&exe)
                .args(["reader", dir.to_str().unwrap()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut lines: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().unwrap()).lines())
        .collect();
    for l in &mut lines {
        l.next().unwrap().unwrap();
    }
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let mut measure = |writer: &mut Registry,
                       change: &dyn Fn(&mut libmcshm::table::Table, usize)| {
        let before: u64 = pids.iter().map(|&p| cpu_ns(p)).sum();
        let rounds = 5;
        for round in 0..rounds {
            writer
                .transact(|t| {
                    change(t, round);
                    Ok(())
                })
                .unwrap();
            for l in &mut lines {
                l.next().unwrap().unwrap();
            }
        }
        let after: u64 = pids.iter().map(|&p| cpu_ns(p)).sum();
        (after - before) as f64 / 1e9 / rounds as f64
    };
    let changed = measure(&mut writer, &|t, _| {
        t.servers[1].state = match t.servers[1].state {
            State::Up => State::Down,
            _ => State::Up,
        }
    });
    let kept = measure(&mut writer, &|t, round| {
        t.servers[0].reason = format!("round {round}")
    });
    let private: Vec<u64> = pids.iter().map(|&p| private_kib(p)).collect();
    let median_private = {
        let mut sorted = private.clone();
        sorted.sort();
        sorted[sorted.len() / 2]
    };
    println!(
        "{servers} servers, {readers} reader processes: CPU per change, all readers: {changed:.3} s (new ring), {kept:.3} s (ring kept); private memory per reader (median): {:.1} MB",
        median_private as f64 / 1024.0
    );
    writer
        .transact(|t| {
            t.servers[0].reason = "stop".into();
            Ok(())
        })
        .unwrap();
    for mut child in children {
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
