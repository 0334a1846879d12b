//! Registry benchmarks: version check, snapshots (cached and fresh copies) of 10/100/1000
//! servers, one write transaction, and cross-process visibility of a commit (a busy-polling
//! reader, and a reader sleeping in `wait_for_change`), measured with a second process.
//!
//! Run: cargo bench -p libmcshm --bench registry

use std::hint::black_box;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use libmcshm::table::Table;
use libmcshm::{Address, Domain, Registry, Server, monotonic_ns};

const OBSERVER_ENV: &str = "MCSHM_BENCH_OBSERVER";

fn domain_with(dir: &Path, name: &str, servers: usize) -> Registry {
    let domain = Domain::new(name).unwrap();
    let mut writer = Registry::open_writer(dir, &domain, true).unwrap();
    let list: Vec<Server> = (0..servers)
        .map(|i| Server::new(Address::parse(&format!("cache{i}.example.com:11211")).unwrap()))
        .collect();
    writer
        .replace(&Table {
            servers: list,
            ..Table::default()
        })
        .unwrap();
    writer
}

/// A one-server change; returns when it became visible (CLOCK_MONOTONIC ns).
fn toggle_weight(writer: &mut Registry) -> u64 {
    writer
        .transact(|table| {
            table.servers[0].weight = 3 - table.servers[0].weight.min(2);
            Ok(())
        })
        .unwrap()
        .published_ns
}

fn reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("read");
    for n in [10, 100, 1000] {
        domain_with(dir.path(), &format!("d{n}"), n);
        let mut reader =
            Registry::open(dir.path(), &Domain::new(&format!("d{n}")).unwrap()).unwrap();
        if n == 10 {
            group.bench_function("version", |b| b.iter(|| black_box(reader.version())));
        }
        group.bench_with_input(BenchmarkId::new("snapshot_unchanged", n), &n, |b, _| {
            b.iter(|| black_box(reader.snapshot().unwrap()))
        });
        group.bench_with_input(BenchmarkId::new("snapshot_fresh_copy", n), &n, |b, _| {
            b.iter(|| black_box(reader.read_uncached().unwrap()))
        });
    }
    group.finish();
}

fn writes(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = domain_with(dir.path(), "w", 10);
    c.bench_function("write/transaction_10_servers", |b| {
        b.iter(|| toggle_weight(&mut writer))
    });
}

/// Commit in this process, observe in another: the time from the publishing store (taken
/// right after it, so a few ns late) to the observer's first sight of the new version.
fn visibility(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = domain_with(dir.path(), "v", 10);
    let mut group = c.benchmark_group("cross_process");
    group.measurement_time(Duration::from_secs(3));
    for mode in ["busy_poll", "wait"] {
        let mut observer = spawn_observer(dir.path(), "v", mode);
        let mut out = observer.stdout.take().unwrap();
        let mut ready = [0u8; 8];
        out.read_exact(&mut ready).unwrap();
        group.bench_function(format!("commit_to_observed_{mode}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let published = toggle_weight(&mut writer);
                    let mut seen = [0u8; 8];
                    out.read_exact(&mut seen).unwrap();
                    total +=
                        Duration::from_nanos(u64::from_le_bytes(seen).saturating_sub(published));
                }
                total
            })
        });
        let _ = observer.kill();
        let _ = observer.wait();
    }
    group.bench_function("commit_alone", |b| b.iter(|| toggle_weight(&mut writer)));
    group.finish();
}

fn spawn_observer(dir: &Path, domain: &str, mode: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(OBSERVER_ENV, format!("{mode}:{domain}:{}", dir.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The second process: report (as 8 little-endian bytes of CLOCK_MONOTONIC ns) each time the
/// version moves, until killed.
fn observe(spec: &str) {
    let mut parts = spec.splitn(3, ':');
    let (mode, domain, dir) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let mut reader = Registry::open(dir, &Domain::new(domain).unwrap()).unwrap();
    let mut stdout = std::io::stdout().lock();
    let mut last = reader.version();
    stdout.write_all(&0u64.to_le_bytes()).unwrap();
    stdout.flush().unwrap();
    loop {
        let now = if mode == "wait" {
            match reader.wait_for_change(last, Duration::from_secs(60)) {
                Some(v) => v,
                None => return,
            }
        } else {
            let mut v = reader.version();
            while v == last {
                std::hint::spin_loop();
                v = reader.version();
            }
            v
        };
        let seen = monotonic_ns();
        last = now;
        if stdout
            .write_all(&seen.to_le_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return;
        }
    }
}

fn main() {
    if let Ok(spec) = std::env::var(OBSERVER_ENV) {
        observe(&spec);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    reads(&mut c);
    writes(&mut c);
    visibility(&mut c);
    c.final_summary();
}
