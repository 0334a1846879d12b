//! The short-freeze race of issue 31, in a test binary of its own (its freezes are timed, and
//! its front ends run side by side): one writer per front end sets a key to increasing numbers
//! and reads it back after each acknowledged set, while the key's server is frozen 30 times
//! for 1.05–1.9 s (longer than the 1 s timeout, shorter than the two timeouts that mark it
//! down). A set that timed out waits in the frozen server's socket; were the next one sent on
//! a new connection, memcached could run it first when it thaws and then the older one over
//! it (`read 1540 after set 1541 was acknowledged`). No read may return a number older than
//! the last acknowledged set.
//!
//! Front ends: the library, the C API (a C program built against the installed library, as a
//! user builds one: tests/c/freeze_writer.c), mclient (a process per command: a process
//! started after one whose set timed out must not overtake it), and mcproxy.
//! `MCSHM_FREEZES=N` changes the number of freezes (30).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Reg;
use common::memcached::Memcached;
use common::proxy::Proxy;

fn freezes() -> usize {
    std::env::var("MCSHM_FREEZES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

/// Freezes `server` `count` times for 1.05–1.9 s, 0.2–0.5 s apart (a fixed sequence, so a
/// failure can be replayed), then raises `done`.
fn freezer(
    server: Arc<Memcached>,
    count: usize,
    seed: u64,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut state = seed;
        let mut next = |low: u64, high: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            low + (state >> 33) % (high - low)
        };
        for _ in 0..count {
            std::thread::sleep(Duration::from_millis(next(200, 500)));
            server.freeze();
            std::thread::sleep(Duration::from_millis(next(1050, 1900)));
            server.signal(libc::SIGCONT);
        }
        done.store(true, Ordering::Relaxed);
    })
}

/// One front end's writer: `set` (true when acknowledged), and after each acknowledged set
/// `get` (the number read, if any), until `done`. The stale reads, and the acknowledged sets.
fn writer(
    done: &AtomicBool,
    mut set: impl FnMut(u64) -> bool,
    mut get: impl FnMut() -> Option<u64>,
) -> (Vec<String>, u64) {
    let (mut stale, mut acknowledged) = (Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut n = 0;
    while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
        n += 1;
        // Read back only after an acknowledged set: after one that timed out, the next set
        // goes at once, while the first may still wait in the frozen server.
        if !set(n) {
            continue;
        }
        acknowledged += 1;
        if let Some(read) = get()
            && read < n
        {
            stale.push(format!("read {read} after set {n} was acknowledged"));
        }
    }
    (stale, acknowledged)
}

/// tests/c/freeze_writer.c built against the library installed into `prefix` (`make install
/// PROFILE=debug`) through pkg-config, as a user builds a C program.
fn c_writer(prefix: &Path) -> PathBuf {
    common::cbuild::install(prefix);
    common::cbuild::compile(prefix, "freeze_writer.c", &["-O1"], prefix)
}

/// A domain of `server` alone, in a registry of its own.
fn domain_of(server: &Memcached) -> Reg {
    let reg = Reg::new();
    reg.ok("app", &["add", &server.address()]);
    reg
}

#[test]
fn a_write_that_timed_out_never_lands_after_a_later_acknowledged_one() {
    let count = freezes();
    // memcached's own default of 4 threads: connections run on threads of their own, in any
    // order (with one thread they run in the order their bytes came).
    let prefix = tempfile::tempdir().unwrap();
    let c_writer = c_writer(prefix.path());
    let servers: Vec<Arc<Memcached>> = (0..4)
        .map(|_| Arc::new(Memcached::start_with(&["-t", "4"])))
        .collect();
    let regs: Vec<Reg> = servers.iter().map(|s| domain_of(s)).collect();
    let done: Vec<Arc<AtomicBool>> = (0..4).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let freezers: Vec<_> = (0..4)
        .map(|i| freezer(servers[i].clone(), count, 7 + i as u64, done[i].clone()))
        .collect();

    // The library.
    let library = {
        let (dir, done) = (regs[0].dir().to_path_buf(), done[0].clone());
        std::thread::spawn(move || {
            let domain = libmcshm::Domain::new("app").unwrap();
            let mut client =
                libmcshm::Client::for_domain(&dir, &domain, libmcshm::Timeouts::default()).unwrap();
            let client = std::cell::RefCell::new(&mut client);
            writer(
                &done,
                |n| {
                    let value = n.to_string();
                    client
                        .borrow_mut()
                        .set(b"k", value.as_bytes(), 0, 0)
                        .is_ok()
                },
                || {
                    let item = client.borrow_mut().get(b"k").ok()??;
                    std::str::from_utf8(&item.value).ok()?.parse().ok()
                },
            )
        })
    };
    // mclient, a process per command.
    let mclient = {
        let (dir, done) = (regs[1].dir().to_path_buf(), done[1].clone());
        std::thread::spawn(move || {
            let run = |args: &[&str]| {
                Command::new(env!("CARGO_BIN_EXE_mclient"))
                    .arg("--dir")
                    .arg(&dir)
                    .args(["--domain", "app"])
                    .args(args)
                    .output()
                    .expect("run mclient")
            };
            writer(
                &done,
                |n| run(&["set", "k", &n.to_string()]).status.success(),
                || {
                    let out = run(&["get", "k"]);
                    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
                },
            )
        })
    };
    // mcproxy.
    let proxy = Proxy::start(&regs[2], "app", &[]);
    let through_proxy = {
        let (address, done) = (proxy.address.clone(), done[2].clone());
        std::thread::spawn(move || {
            let wire = std::cell::RefCell::new(common::proxy::Wire::connect(&address));
            writer(
                &done,
                |n| {
                    let value = n.to_string();
                    let set = format!("set k 0 0 {}\r\n{value}\r\n", value.len());
                    wire.borrow_mut().ask(&set) == "STORED\r\n"
                },
                || {
                    let reply = wire.borrow_mut().ask("get k\r\n");
                    reply.lines().nth(1)?.trim().parse().ok()
                },
            )
        })
    };
    // The C API: its writer runs until the stop file appears (its freezes' end).
    let stop = regs[3].dir().join("stop");
    let c_api = Command::new(&c_writer)
        .arg(regs[3].dir())
        .arg("app")
        .arg(&stop)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the C writer");
    for f in freezers {
        f.join().unwrap();
    }
    std::fs::write(&stop, b"").unwrap();
    let out = c_api.wait_with_output().unwrap();
    assert!(out.status.success(), "the C writer failed");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = report.lines();
    let counts: Vec<u64> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(counts.len(), 2, "the C writer's report: {report}");
    let c_stale: Vec<String> = lines.map(str::to_string).collect();
    eprintln!(
        "C API: {} sets acknowledged over {count} freezes, {} stale reads",
        counts[0], counts[1]
    );
    assert!(counts[0] > 10, "C API: the writer hardly ran");
    let mut failures = Vec::new();
    if counts[1] > 0 {
        failures.push(format!("C API: {c_stale:?}"));
    }
    for (name, handle) in [
        ("library", library),
        ("mclient", mclient),
        ("mcproxy", through_proxy),
    ] {
        let (stale, acknowledged) = handle.join().unwrap();
        eprintln!(
            "{name}: {acknowledged} sets acknowledged over {count} freezes, {} stale reads",
            stale.len()
        );
        assert!(acknowledged > 10, "{name}: the writer hardly ran");
        if !stale.is_empty() {
            failures.push(format!("{name}: {stale:?}"));
        }
    }
    assert!(failures.is_empty(), "stale reads: {failures:#?}");
}
