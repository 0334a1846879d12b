//! Careless and hostile local clients of mcproxy (issue 30), in a test binary of its own: they
//! measure the proxy's memory and a well-behaved client's latency beside them, so no other
//! test runs beside them (and the tests here run one at a time).
//!
//! Sizes are the issue's. Each abuse phase lasts `MCSHM_ABUSE_SECS` seconds (6 by default, to
//! keep the suite short; the issue measured 30: `MCSHM_ABUSE_SECS=30 cargo test --test abuse`).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Reg;
use common::memcached::Memcached;
use common::proxy::{Proxy, Wire};

/// The tests here share the machine's two cores: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn abuse_secs() -> u64 {
    std::env::var("MCSHM_ABUSE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6)
}

/// mcproxy's resident memory, in MiB.
fn rss_mib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// Two servers that take 1 MB values, a domain `app` of them, and ten keys of 1 MB each.
fn big_values(proxy_args: &[&str]) -> (Vec<Memcached>, Reg, Proxy, String) {
    let servers: Vec<Memcached> = (0..2)
        .map(|_| Memcached::start_with(&["-I", "2m", "-m", "256"]))
        .collect();
    let reg = Reg::new();
    reg.ok(
        "app",
        &["add", &servers[0].address(), &servers[1].address()],
    );
    let proxy = Proxy::start(&reg, "app", proxy_args);
    let mut w = proxy.connect();
    let value = vec![b'v'; 1 << 20];
    let mut keys = Vec::new();
    for n in 0..10 {
        let key = format!("big:{n}");
        w.send(format!("set {key} 0 0 {}\r\n", value.len()).as_bytes());
        w.send(&value);
        w.send(b"\r\n");
        assert_eq!(w.line(), "STORED\r\n");
        keys.push(key);
    }
    assert_eq!(w.ask("set small 0 0 5\r\nhello\r\n"), "STORED\r\n");
    (servers, reg, proxy, format!("get {}\r\n", keys.join(" ")))
}

/// A client that sends `request` over and over and never reads a reply, until `stop`.
fn non_reader(
    address: String,
    request: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(&address).expect("connect");
        stream
            .set_write_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let bytes = request.repeat(16).into_bytes();
        while !stop.load(Ordering::Relaxed) {
            match stream.write(&bytes) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return, // closed by the proxy
            }
        }
    })
}

/// The p99 of `get small` round trips over `window`.
fn p99_of_gets(w: &mut Wire, window: Duration) -> Duration {
    let mut took = Vec::new();
    let end = Instant::now() + window;
    while Instant::now() < end && took.len() < 1_000_000 {
        let t = Instant::now();
        let reply = w.ask("get small\r\n");
        took.push(t.elapsed());
        assert_eq!(
            reply, "VALUE small 0 5\r\nhello\r\nEND\r\n",
            "the normal client's answer"
        );
    }
    took.sort_unstable();
    took[took.len() * 99 / 100]
}

/// Every server of `app` is still up.
fn all_up(reg: &Reg) -> bool {
    let list = reg.list_json("app");
    list["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .all(|s| s["state"] == "up")
}

/// One, two and eight clients sending 10-key multi-gets of 1 MB values and reading nothing,
/// beside a normal client: no server is marked down, mcproxy's memory stays within the bound
/// per client plus a constant, the normal client's p99 stays within 2× of its p99 alone, and
/// the memory comes back once they are gone.
#[test]
fn clients_that_never_read_their_replies_cost_their_bound_and_harm_no_server() {
    let _one = one_at_a_time();
    const LIMIT_MIB: u64 = 16;
    let (_servers, reg, proxy, request) =
        big_values(&["--threads", "1", "--client-reply-limit", "16m"]);
    let pid = proxy.pid();
    let mut normal = proxy.connect();
    let window = Duration::from_secs(abuse_secs());
    for clients in [1usize, 2, 8] {
        let solo = p99_of_gets(&mut normal, Duration::from_secs(2));
        let start = rss_mib(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let abusers: Vec<_> = (0..clients)
            .map(|_| non_reader(proxy.address.clone(), request.clone(), stop.clone()))
            .collect();
        // Their first bursts settle (each held back at its bound), then the normal client is
        // timed beside them for the window while the memory is watched.
        let mut peak = start;
        let mut last = (start, Instant::now());
        let settled = common::wait_until(Duration::from_secs(10), || {
            let now = rss_mib(pid);
            peak = peak.max(now);
            if now.abs_diff(last.0) > 2 {
                last = (now, Instant::now());
            }
            last.1.elapsed() > Duration::from_millis(500)
        });
        assert!(settled, "mcproxy's memory kept changing for 10 s");
        let sampler_stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = sampler_stop.clone();
            std::thread::spawn(move || {
                let mut peak = 0;
                while !stop.load(Ordering::Relaxed) {
                    peak = peak.max(rss_mib(pid));
                    std::thread::sleep(Duration::from_millis(20));
                }
                peak
            })
        };
        let beside = p99_of_gets(&mut normal, window);
        sampler_stop.store(true, Ordering::Relaxed);
        peak = peak.max(sampler.join().unwrap());
        stop.store(true, Ordering::Relaxed);
        for a in abusers {
            a.join().unwrap();
        }
        let back = common::wait_until(Duration::from_secs(15), || rss_mib(pid) <= start + 16);
        let after = rss_mib(pid);
        eprintln!(
            "{clients} non-reading clients: RSS {start} MiB at the start, peak {peak} MiB, \
             {after} MiB after they closed; normal client's p99 {solo:?} alone, {beside:?} beside them"
        );
        // Each is owed at most its bound and one reply more (10 MiB), the replies in the
        // proxy's buffers on their way; plus a constant for the allocator.
        let bound = start + clients as u64 * (LIMIT_MIB + 2 * 10) + 64;
        assert!(
            peak <= bound,
            "{clients} clients: peak {peak} MiB over {bound} MiB"
        );
        assert!(
            back,
            "{clients} clients: RSS {after} MiB, not back near {start} MiB"
        );
        assert!(
            beside <= solo * 2 + Duration::from_micros(200),
            "{clients} clients: the normal client's p99 went from {solo:?} to {beside:?}"
        );
        assert!(
            all_up(&reg),
            "{clients} clients: a healthy server was marked down"
        );
    }
    let log: Vec<String> = proxy.log.try_iter().collect();
    assert!(
        !log.iter().any(|l| l.contains("marked down")),
        "no server marked down: {log:?}"
    );
}

/// A client that does read, pipelining 128 of those multi-gets: every reply arrives whole and
/// no server is marked down (each reply takes the server milliseconds; the last ones wait
/// behind the first for far longer than the timeout, and that is not the server's).
#[test]
fn a_reading_client_pipelining_128_big_multi_gets_marks_no_server_down() {
    let _one = one_at_a_time();
    let (_servers, reg, proxy, request) = big_values(&["--threads", "1"]);
    let mut w = proxy.connect();
    w.stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let writer = {
        let mut stream = w.stream.try_clone().unwrap();
        let bytes = request.repeat(128).into_bytes();
        std::thread::spawn(move || stream.write_all(&bytes).unwrap())
    };
    // Counted as the bytes stream in: a window never straddles more than the bytes kept.
    let mut chunk = vec![0u8; 1 << 16];
    let (mut ends, mut failed) = (0, false);
    let mut kept: Vec<u8> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while ends < 128 && Instant::now() < deadline {
        let n = w.stream.read(&mut chunk).expect("replies");
        assert!(n > 0, "mcproxy closed the connection");
        kept.extend_from_slice(&chunk[..n]);
        ends += kept.windows(5).filter(|w| *w == b"END\r\n").count();
        failed |= kept.windows(12).any(|w| w == b"SERVER_ERROR");
        // Keep the last 4 bytes: an END split across reads is counted once, whole.
        let keep = kept.len().saturating_sub(4);
        kept.drain(..keep);
    }
    assert!(!failed, "a request failed");
    writer.join().unwrap();
    assert_eq!(ends, 128, "every multi-get answered");
    assert!(all_up(&reg), "a healthy server was marked down");
}

/// A client that takes none of its replies for --client-timeout is closed and its replies
/// dropped (counted in `stats` as clients_not_reading); a client that reads is not.
#[test]
fn a_client_that_takes_no_reply_for_the_client_timeout_is_closed() {
    let _one = one_at_a_time();
    let (_servers, _reg, proxy, request) = big_values(&["--threads", "1", "--client-timeout", "2"]);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let abuser = non_reader(proxy.address.clone(), request, stop.clone());
    let mut normal = proxy.connect();
    let closed = common::wait_until(Duration::from_secs(20), || {
        let stats = normal.ask("stats\r\n");
        stats.contains("STAT clients_not_reading 1\r\n")
    });
    assert!(
        closed,
        "the client that reads nothing is still open after 20 s"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed before its timeout"
    );
    stop.store(true, Ordering::Relaxed);
    abuser.join().unwrap();
    assert_eq!(
        normal.ask("get small\r\n"),
        "VALUE small 0 5\r\nhello\r\nEND\r\n"
    );
}

/// The kernel's count of connections dropped because a listen queue was full.
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Twelve bursts of 2 000 connections, each pipelining 50 sets of 10 kB: the listen queue
/// (--backlog, 4 096 by default) takes them; no connection is reset and every set is answered.
#[test]
fn bursts_of_two_thousand_connections_are_all_accepted_and_answered() {
    let _one = one_at_a_time();
    const BURSTS: usize = 12;
    const CONNECTIONS: usize = 2_000;
    const SETS: usize = 50;
    const THREADS: usize = 8;
    let open_files = common::raise_open_files();
    assert!(
        open_files >= 2 * CONNECTIONS as u64 + 200,
        "the open-file limit ({open_files}) is too low for {CONNECTIONS} connections"
    );
    let server = Memcached::start_with(&["-c", "8192", "-m", "256"]);
    let reg = Reg::new();
    reg.ok("app", &["add", &server.address()]);
    let proxy = Proxy::start(&reg, "app", &["--threads", "1"]);
    let value = "x".repeat(10_000);
    let before = listen_overflows();
    let mut failures = Vec::new();
    for burst in 0..BURSTS {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (address, value) = (proxy.address.clone(), value.clone());
                std::thread::spawn(move || -> Result<usize, String> {
                    let mut conns = Vec::new();
                    for _ in 0..CONNECTIONS / THREADS {
                        let c =
                            TcpStream::connect(&address).map_err(|e| format!("connect: {e}"))?;
                        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        conns.push(c);
                    }
                    let mut sets = String::new();
                    for n in 0..SETS {
                        sets += &format!(
                            "set burst:{burst}:{t}:{n} 0 0 {}\r\n{value}\r\n",
                            value.len()
                        );
                    }
                    for c in &mut conns {
                        c.write_all(sets.as_bytes())
                            .map_err(|e| format!("send: {e}"))?;
                    }
                    let mut stored = 0;
                    for c in &mut conns {
                        let mut got = Vec::new();
                        let mut chunk = [0u8; 4096];
                        while got.len() < SETS * 8 {
                            let n = c.read(&mut chunk).map_err(|e| format!("reply: {e}"))?;
                            if n == 0 {
                                return Err("closed before every set was answered".into());
                            }
                            got.extend_from_slice(&chunk[..n]);
                        }
                        if got != b"STORED\r\n".repeat(SETS) {
                            return Err(format!(
                                "unexpected reply: {:?}",
                                String::from_utf8_lossy(&got[..64.min(got.len())])
                            ));
                        }
                        stored += SETS;
                    }
                    Ok(stored)
                })
            })
            .collect();
        let mut stored = 0;
        for t in threads {
            match t.join().unwrap() {
                Ok(n) => stored += n,
                Err(e) => failures.push(format!("burst {burst}: {e}")),
            }
        }
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(
            stored,
            CONNECTIONS * SETS,
            "burst {burst}: every set answered"
        );
    }
    let overflows = listen_overflows() - before;
    eprintln!("{BURSTS} bursts of {CONNECTIONS} connections: {overflows} listen overflows");
    assert_eq!(overflows, 0, "connections dropped by a full listen queue");
}

/// 4 200 idle connections from one process (more than --max-connections' 4 096): a new
/// client is still served, each new one taking the place of the connection idle longest.
#[test]
fn idle_connections_from_one_process_do_not_lock_other_clients_out() {
    let _one = one_at_a_time();
    let open_files = common::raise_open_files();
    assert!(
        open_files >= 9_000,
        "the open-file limit ({open_files}) is too low for 4 200 connections"
    );
    let server = Memcached::start();
    let reg = Reg::new();
    reg.ok("app", &["add", &server.address()]);
    let proxy = Proxy::start(&reg, "app", &["--threads", "1"]);
    let idle: Vec<TcpStream> = (0..4_200)
        .map(|_| TcpStream::connect(&proxy.address).expect("connect"))
        .collect();
    let mut client = proxy.connect();
    assert_eq!(client.ask("set k 0 0 2\r\nok\r\n"), "STORED\r\n");
    assert_eq!(client.ask("get k\r\n"), "VALUE k 0 2\r\nok\r\nEND\r\n");
    let stats = client.ask("stats\r\n");
    let stat = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(stat("curr_connections") <= 4_096, "{stats}");
    assert_eq!(stat("rejected_connections"), 0, "{stats}");
    assert!(stat("evicted_connections") >= 105, "{stats}");
    drop(idle);
}
