//! What waiting costs: the CPU that N idle `wait_for_change` callers burn, and the time a
//! commit takes with 0 and with N waiters (the writer's call must not pay for waking them).
//! Run by bench/waiters.sh; prints figures, asserts nothing.
//!
//! cargo run --release -p mcshm-bench --example waiters -- 200

use std::time::{Duration, Instant};

use libmcshm::{Address, Domain, Registry, Server};

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn median_commit(writer: &mut Registry, rounds: usize) -> Duration {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|n| {
            let started = Instant::now();
            writer
                .transact(|t| {
                    t.servers[0].reason = format!("round {n}");
                    Ok(())
                })
                .unwrap();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[rounds / 2]
}

fn main() {
    let waiters: usize = std::env::args().nth(1).map_or(200, |n| n.parse().unwrap());
    let dir = std::env::temp_dir().join(format!("mcshm-waiters-{}", std::process::id()));
    let domain = Domain::new("w").unwrap();
    let mut writer = Registry::open_writer(&dir, &domain, true).unwrap();
    writer
        .transact(|t| {
            t.servers.push(Server::new(Address::parse("a:1").unwrap()));
            Ok(())
        })
        .unwrap();
    let alone = median_commit(&mut writer, 200);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..waiters)
        .map(|_| {
            let (dir, domain, stop) = (dir.clone(), domain.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reader = Registry::open(&dir, &domain).unwrap();
                let mut seen = reader.version();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some(v) = reader.wait_for_change(seen, Duration::from_secs(3600)) {
                        seen = v;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds();
    std::thread::sleep(Duration::from_secs(5));
    let idle = cpu_seconds() - before;
    let with_waiters = median_commit(&mut writer, 200);
    println!(
        "{waiters} idle waiters: {:.2} % of a core; commit median {:.1} µs alone, {:.1} µs with {waiters} waiters",
        idle / 5.0 * 100.0,
        alone.as_secs_f64() * 1e6,
        with_waiters.as_secs_f64() * 1e6
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer
        .transact(|t| {
            t.servers[0].reason = "stop".into();
            Ok(())
        })
        .unwrap();
    for thread in threads {
        let _ = thread.join();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
