//! The binary protocol through mcproxy, with clients nobody here wrote: php-memcached's
//! session handler with its defaults (binary protocol, session locking), and the `Memcached`
//! class with `OPT_BINARY_PROTOCOL`; plus frames that lie about their lengths.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::memcached::Memcached;
use crate::common::proxy::{Proxy, owner_port};
use crate::common::{Reg, wait_until};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// Three servers behind a proxy.
fn setup() -> (Vec<Memcached>, Reg, Proxy) {
    let servers = vec![Memcached::start(), Memcached::start(), Memcached::start()];
    let reg = Reg::new();
    let mut add = vec!["add".to_string()];
    add.extend(servers.iter().map(Memcached::address));
    let add: Vec<&str> = add.iter().map(String::as_str).collect();
    reg.ok("app", &add);
    let proxy = Proxy::start(&reg, "app", &[]);
    (servers, reg, proxy)
}

#[test]
fn php_sessions_with_their_defaults_work_through_the_proxy() {
    let (_servers, reg, proxy) = setup();
    let port = port_of(&proxy.address).to_string();
    let session = script("php_session.php");
    // 50 sessions, 200 PHP requests (4 per session), 10 at a time.
    let mut waits = Vec::new();
    for batch in 0..20 {
        let children: Vec<_> = (0..10)
            .map(|i| {
                let id = format!("sess{:02}", (batch * 10 + i) % 50);
                Command::new("php")
                    .args([session.to_str().unwrap(), &port, &id])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("php (apt-get install -y php-cli php-memcached)")
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            waits.push(
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<f64>()
                    .unwrap(),
            );
        }
    }
    // Every counter counts every request: the session locks held through the proxy.
    for n in 0..50 {
        let id = format!("sess{n:02}");
        let program = format!(
            "ini_set('session.save_handler','memcached'); ini_set('session.save_path','127.0.0.1:{port}'); session_id('{id}'); session_start(); echo $_SESSION['n'];"
        );
        let out = Command::new("php").args(["-r", &program]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "4", "session {id}");
    }
    waits.sort_by(f64::total_cmp);
    let longest = waits.last().copied().unwrap_or(0.0);
    println!(
        "session_start waited at most {longest:.3} s (median {:.3} s)",
        waits[waits.len() / 2]
    );
    // Each batch's ten requests are on ten different sessions: no lock is contended, so none
    // waits for one (before: 30 s, the lock timeout, on every request).
    assert!(longest < 1.0, "a session_start waited {longest} s");
    let _ = reg;
}

#[test]
fn php_memcached_with_the_binary_protocol_serves_every_verb() {
    let (servers, reg, proxy) = setup();
    let port = port_of(&proxy.address).to_string();
    let out = Command::new("php")
        .args([script("php_memcached_binary.php").to_str().unwrap(), &port])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What it stored lies where libmcshm routes it.
    for key in ["a", "m1", "m2", "m3", "n2"] {
        let owner = owner_port(&reg, key);
        let server = servers.iter().find(|s| s.port == owner).unwrap();
        assert!(server.raw_get(key).is_some(), "{key} on its owner {owner}");
    }
}

/// A binary request header with `key_len`, `extras_len` and `body` as given.
fn header(opcode: u8, key_len: u16, extras_len: u8, body: u32) -> Vec<u8> {
    let mut h = vec![0x80, opcode];
    h.extend(key_len.to_be_bytes());
    h.extend([extras_len, 0, 0, 0]);
    h.extend(body.to_be_bytes());
    h.extend([0u8; 12]);
    h
}

#[test]
fn malformed_or_unknown_binary_requests_are_answered_at_once_and_lies_close() {
    let (_servers, _reg, proxy) = setup();
    let read_response = |s: &mut std::net::TcpStream| -> Vec<u8> {
        let mut head = [0u8; 24];
        s.read_exact(&mut head).unwrap();
        let body = u32::from_be_bytes(head[8..12].try_into().unwrap()) as usize;
        let mut rest = vec![0u8; body];
        s.read_exact(&mut rest).unwrap();
        [head.to_vec(), rest].concat()
    };
    let connect = || {
        let s = std::net::TcpStream::connect(&proxy.address).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s
    };
    let status = |r: &[u8]| u16::from_be_bytes([r[6], r[7]]);
    // An unknown opcode: "unknown command", and the connection goes on (a noop answers).
    let mut s = connect();
    s.write_all(&header(0x55, 0, 0, 0)).unwrap();
    assert_eq!(status(&read_response(&mut s)), 0x0081);
    s.write_all(&header(0x0a, 0, 0, 0)).unwrap();
    assert_eq!(status(&read_response(&mut s)), 0);
    // A value too large: answered at once, its bytes skipped, the connection goes on.
    let mut big = header(0x01, 1, 8, 9 + (2 << 20));
    big.extend([0u8; 8]);
    big.push(b'k');
    s.write_all(&big).unwrap();
    assert_eq!(status(&read_response(&mut s)), 0x0003);
    s.write_all(&vec![b'x'; 2 << 20]).unwrap();
    s.write_all(&header(0x0a, 0, 0, 0)).unwrap();
    assert_eq!(status(&read_response(&mut s)), 0);
    // A frame whose key is longer than its body: closed, never a hang.
    let mut s = connect();
    s.write_all(&header(0x00, 300, 0, 10)).unwrap();
    let mut rest = Vec::new();
    let closed = wait_until(std::time::Duration::from_secs(5), || {
        s.read_to_end(&mut rest).is_ok()
    });
    assert!(closed, "the proxy closes a connection whose frame lies");
}

/// --client-timeout bounds a whole command: a client that trickles one byte at a time into a
/// `get` line, or into a `set`'s value, is let go once it has been at it that long.
#[test]
fn a_command_trickled_a_byte_at_a_time_is_cut_off_at_the_client_timeout() {
    let a = Memcached::start();
    let reg = Reg::new();
    reg.ok("app", &["add", &a.address()]);
    let proxy = Proxy::start(&reg, "app", &["--client-timeout", "1"]);
    for (head, trickle) in [(&b"get "[..], b'k'), (&b"set k 0 0 1000\r\n"[..], b'v')] {
        let mut s = std::net::TcpStream::connect(&proxy.address).unwrap();
        s.write_all(head).unwrap();
        let started = std::time::Instant::now();
        // One byte every 100 ms: each read comes well within the timeout.
        let mut closed_after = None;
        while started.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if s.write_all(&[trickle]).is_err() {
                closed_after = Some(started.elapsed());
                break;
            }
            s.set_nonblocking(true).unwrap();
            let mut byte = [0u8; 64];
            let gone = matches!(s.read(&mut byte), Ok(0));
            s.set_nonblocking(false).unwrap();
            if gone {
                closed_after = Some(started.elapsed());
                break;
            }
        }
        let after = closed_after.expect("a trickling client is let go");
        assert!(after >= std::time::Duration::from_millis(900), "{after:?}");
    }
}

/// A get of 100 000 keys on one line (about 900 KB), as memcached answers it. (Each server's
/// share of the reply is 770 KB: the test gives the servers 10 s to send it, as a debug build
/// beside the other tests may need.)
#[test]
fn a_get_of_100_000_keys_on_one_line_is_answered() {
    let (_servers, reg, _) = setup();
    let proxy = Proxy::start(&reg, "app", &["--timeout", "10000"]);
    let keys: Vec<String> = (0..100_000).map(|i| format!("key{i:05}")).collect();
    let mut records = Vec::new();
    for k in &keys {
        records.extend_from_slice(format!("{k} 0 1\nv\n").as_bytes());
    }
    let mut load = Command::new(env!("CARGO_BIN_EXE_mclient"))
        .arg("--dir")
        .arg(reg.dir())
        .args(["--domain", "app", "bulk-set"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    load.stdin.take().unwrap().write_all(&records).unwrap();
    assert!(load.wait().unwrap().success());
    let mut w = proxy.connect();
    let reply = w.ask(&format!("get {}\r\n", keys.join(" ")));
    assert_eq!(reply.matches("VALUE ").count(), 100_000);
    assert!(reply.ends_with("END\r\n"));
}

/// `--client-auth FILE` (memcached's -Y format): binary clients authenticate with SASL PLAIN
/// (php-memcached's setSaslAuthData), text clients with memcached's ASCII authentication;
/// nothing else is served before.
#[test]
fn clients_authenticate_with_sasl_or_ascii_when_the_proxy_asks() {
    let a = Memcached::start();
    let reg = Reg::new();
    reg.ok("app", &["add", &a.address()]);
    let users = reg.dir().join("users");
    std::fs::write(&users, "app:s3cret\n").unwrap();
    let proxy = Proxy::start(&reg, "app", &["--client-auth", users.to_str().unwrap()]);
    let port = port_of(&proxy.address).to_string();
    let php = |user: &str, password: &str| {
        let out = Command::new("php")
            .args([
                script("php_memcached_sasl.php").to_str().unwrap(),
                &port,
                user,
                password,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(php("app", "s3cret"), "ok");
    assert_ne!(php("app", "wrong"), "ok");
    assert_eq!(a.raw_get("sasl-key").as_deref(), Some("v"));
    // Text: refused until a `set` carries `user password`.
    let mut w = proxy.connect();
    assert_eq!(
        w.ask("get sasl-key\r\n"),
        "CLIENT_ERROR unauthenticated\r\n"
    );
    assert_eq!(
        w.ask("set auth 0 0 9\r\napp wrong\r\n"),
        "CLIENT_ERROR authentication failure\r\n"
    );
    assert_eq!(w.ask("set auth 0 0 10\r\napp s3cret\r\n"), "STORED\r\n");
    assert_eq!(
        w.ask("get sasl-key\r\n"),
        "VALUE sasl-key 0 1\r\nv\r\nEND\r\n"
    );
    // Without --client-auth a SASL request is an auth error at once.
    let open = Proxy::start(&reg, "app", &[]);
    let mut s = std::net::TcpStream::connect(&open.address).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(&header(0x20, 0, 0, 0)).unwrap();
    let mut head = [0u8; 24];
    s.read_exact(&mut head).unwrap();
    assert_eq!(u16::from_be_bytes([head[6], head[7]]), 0x0020);
}

/// A second client nobody here wrote, speaking binary: pylibmc with `binary=True`.
#[test]
fn pylibmc_with_the_binary_protocol_works_through_the_proxy() {
    let (_servers, _reg, proxy) = setup();
    let out = Command::new("/usr/bin/python3")
        .args([
            script("pylibmc_binary.py").to_str().unwrap(),
            &port_of(&proxy.address).to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("python3 (apt-get install -y python3-pylibmc)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The proxy's resident memory, kB.
fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Bursts of connections give their memory back: 20 cycles of (open 2 000 connections, 500 of
/// them send `get a`, close them all); once a burst is over, the proxy's RSS after the 20th is
/// within 1.5x of its RSS after the 2nd (before: 5 MB to 229 MB, still growing).
#[test]
fn bursts_of_connections_give_their_memory_back() {
    let limit = crate::common::raise_open_files();
    // The test and the proxy each hold one descriptor per connection, plus their own.
    let connections = 2_000.min(limit.saturating_sub(100) as usize);
    assert!(
        connections >= 500,
        "open-file limit {limit} too low for the test"
    );
    let a = Memcached::start();
    let reg = Reg::new();
    reg.ok("app", &["add", &a.address()]);
    let proxy = Proxy::start(&reg, "app", &["--max-connections", "10000"]);
    let burst = || {
        let mut conns: Vec<std::net::TcpStream> = (0..connections)
            .map(|_| std::net::TcpStream::connect(&proxy.address).unwrap())
            .collect();
        for s in conns.iter_mut().take(500) {
            s.write_all(b"get a\r\n").unwrap();
        }
        for s in conns.iter_mut().take(500) {
            let mut end = [0u8; 5];
            s.read_exact(&mut end).unwrap();
            assert_eq!(&end, b"END\r\n");
        }
    };
    // The lowest RSS within 3 s of a burst: what the proxy keeps once it is over.
    let settled = |limit: Option<u64>| -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let mut low = u64::MAX;
        while std::time::Instant::now() < deadline {
            low = low.min(rss_kb(proxy.pid()));
            if limit.is_some_and(|l| low <= l) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        low
    };
    let at_start = rss_kb(proxy.pid());
    burst();
    burst();
    let after_two = settled(None);
    for _ in 2..20 {
        burst();
    }
    let bound = after_two * 3 / 2;
    let after_twenty = settled(Some(bound));
    println!(
        "RSS once bursts of {connections} connections are over: {at_start} kB before, {after_two} kB after 2, {after_twenty} kB after 20"
    );
    assert!(
        after_twenty <= bound,
        "{after_twenty} kB after 20 bursts, {after_two} kB after 2"
    );
    // And given back, not only bounded: near what the proxy held before the bursts.
    assert!(
        after_twenty <= at_start * 3,
        "{after_twenty} kB after 20 bursts, {at_start} kB before"
    );
}

/// 20 000 bad frames on one connection (unknown opcodes and requests with invalid arguments),
/// and a few on three more: the log names each kind at its first occurrence, then holds a
/// few lines per second and sums up the rest, instead of a line per frame.
#[test]
fn a_flood_of_bad_frames_leaves_a_few_log_lines_per_kind_and_a_count() {
    let a = Memcached::start();
    let reg = Reg::new();
    reg.ok("app", &["add", &a.address()]);
    let proxy = Proxy::start(&reg, "app", &[]);
    let unknown = header(0x55, 0, 0, 0);
    let invalid = header(0x00, 0, 0, 0); // a get without a key
    let flood: Vec<u8> = (0..10_000)
        .flat_map(|_| [unknown.clone(), invalid.clone()].concat())
        .collect();
    let send = |bytes: &[u8], frames: usize| {
        let mut s = std::net::TcpStream::connect(&proxy.address).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let writer = {
            let mut s = s.try_clone().unwrap();
            let bytes = bytes.to_vec();
            std::thread::spawn(move || s.write_all(&bytes).unwrap())
        };
        for _ in 0..frames {
            let mut head = [0u8; 24];
            s.read_exact(&mut head).expect("every frame answered");
            let body = u32::from_be_bytes(head[8..12].try_into().unwrap()) as usize;
            s.read_exact(&mut vec![0u8; body]).expect("a whole answer");
        }
        writer.join().unwrap();
    };
    send(&flood, 20_000);
    for _ in 0..3 {
        send(&unknown, 1);
    }
    // The summary comes with the next second's tick (two, when the flood spans a tick: the
    // counts held back then add up).
    let held_back = |log: &[String]| -> u64 {
        log.iter()
            .filter_map(|l| l.split_once(" more unsupported binary opcodes"))
            .filter_map(|(before, _)| before.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let mut log = Vec::new();
    let summed_up = wait_until(Duration::from_secs(5), || {
        log.extend(proxy.log.try_iter());
        held_back(&log) >= 9999
            && log
                .iter()
                .any(|l| l.contains("more binary requests with invalid arguments"))
    });
    assert!(summed_up, "no summary of what was held back: {log:?}");
    assert!(log.len() <= 12, "{} lines: {log:#?}", log.len());
    let count = |text: &str| log.iter().filter(|l| l.contains(text)).count();
    assert_eq!(
        count("binary opcode 0x55 is not supported"),
        4,
        "the first of each connection: {log:#?}"
    );
    assert_eq!(
        count("binary opcode 0x00 with invalid arguments"),
        1,
        "{log:#?}"
    );
    assert_eq!(
        held_back(&log),
        9999,
        "the count of what was held back: {log:#?}"
    );
}
