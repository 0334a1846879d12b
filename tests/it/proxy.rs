//! mcproxy as a real process in front of real memcached servers, driven over raw protocol
//! connections: every command, routing by the shared table (the same servers a libmcshm
//! client picks), pipelining, shared server connections, table changes without reload,
//! auto-discovery, stats and metrics, bad input, faults, and a clean shutdown.

use crate::common;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::memcached::Memcached;
use crate::common::proxy::{Proxy, Wire, owner_port};
use crate::common::{Reg, wait_until};

/// A domain `app` of `servers`, with extra `mcadmin policy` arguments.
fn domain(reg: &Reg, servers: &[&Memcached], policy: &[&str]) {
    let mut args = vec!["add"];
    let addresses: Vec<String> = servers.iter().map(|m| m.address()).collect();
    args.extend(addresses.iter().map(String::as_str));
    reg.ok("app", &args);
    if !policy.is_empty() {
        let mut args = vec!["policy"];
        args.extend(policy);
        reg.ok("app", &args);
    }
}

/// Three servers in a domain `app` (with `policy`), and a proxy for it.
fn three_servers_behind_a_proxy(policy: &[&str]) -> ([Memcached; 3], Reg, Proxy) {
    let three = [Memcached::start(), Memcached::start(), Memcached::start()];
    let reg = Reg::new();
    domain(&reg, &three.iter().collect::<Vec<_>>(), policy);
    let proxy = Proxy::start(&reg, "app", &[]);
    (three, reg, proxy)
}

fn by_port<'a>(servers: &[&'a Memcached], port: u16) -> &'a Memcached {
    servers.iter().find(|m| m.port == port).unwrap()
}

#[test]
fn every_command_routed_as_a_libmcshm_client_routes_it() {
    let (three, reg, proxy) = three_servers_behind_a_proxy(&[]);
    let servers: Vec<&Memcached> = three.iter().collect();
    let mut w = proxy.connect();

    // 30 keys, each on the server libmcshm picks, set through the proxy (some noreply).
    let keys: Vec<String> = (0..30).map(|n| format!("user:{n}:profile")).collect();
    for (n, key) in keys.iter().enumerate() {
        let value = format!("v{n}");
        if n % 3 == 0 {
            w.send(format!("set {key} {n} 0 {} noreply\r\n{value}\r\n", value.len()).as_bytes());
        } else {
            let reply = w.ask(&format!("set {key} {n} 0 {}\r\n{value}\r\n", value.len()));
            assert_eq!(reply, "STORED\r\n");
        }
    }
    assert_eq!(w.ask("mn\r\n"), "MN\r\n", "noreply sets answered nothing");
    for (n, key) in keys.iter().enumerate() {
        let owner = by_port(&servers, owner_port(&reg, key));
        assert_eq!(
            owner.raw_get(key),
            Some(format!("v{n}")),
            "{key} on its owner"
        );
        for other in servers.iter().filter(|m| m.port != owner.port) {
            assert_eq!(other.raw_get(key), None, "{key} only on its owner");
        }
    }
    // One multi-get over all three servers, with misses and a repeat: hits in key order.
    let request = format!(
        "get {} nothing {} {}\r\n",
        keys[..15].join(" "),
        keys[15..].join(" "),
        keys[0]
    );
    let reply = w.ask(&request);
    let expected: String = keys
        .iter()
        .chain([&keys[0]])
        .map(|key| {
            let n: usize = key.split(':').nth(1).unwrap().parse().unwrap();
            let value = format!("v{n}");
            format!("VALUE {key} {n} {}\r\n{value}\r\n", value.len())
        })
        .collect::<String>()
        + "END\r\n";
    assert_eq!(reply, expected);

    // gets / cas, incr / decr, append / prepend, add / replace, touch / gat, delete.
    let gets = w.ask("gets user:1:profile\r\n");
    let unique = gets
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .nth(4)
        .unwrap()
        .to_string();
    assert_eq!(
        w.ask(&format!("cas user:1:profile 7 0 2 {unique}\r\nv9\r\n")),
        "STORED\r\n"
    );
    assert_eq!(
        w.ask(&format!("cas user:1:profile 7 0 2 {unique}\r\nvX\r\n")),
        "EXISTS\r\n"
    );
    assert_eq!(w.ask("cas nothing 0 0 1 1\r\nx\r\n"), "NOT_FOUND\r\n");
    assert_eq!(w.ask("set n 0 0 2\r\n10\r\n"), "STORED\r\n");
    assert_eq!(w.ask("incr n 5\r\n"), "15\r\n");
    assert_eq!(w.ask("decr n 20\r\n"), "0\r\n");
    assert_eq!(w.ask("incr missing 1\r\n"), "NOT_FOUND\r\n");
    // (memcached pads a shrunk counter with spaces: start append/prepend from a fresh value.)
    assert_eq!(w.ask("set n 0 0 1\r\n0\r\n"), "STORED\r\n");
    assert_eq!(w.ask("append n 0 0 1\r\n7\r\n"), "STORED\r\n");
    assert_eq!(w.ask("prepend n 0 0 1\r\n3\r\n"), "STORED\r\n");
    assert_eq!(w.ask("get n\r\n"), "VALUE n 0 3\r\n307\r\nEND\r\n");
    assert_eq!(w.ask("add n 0 0 1\r\nx\r\n"), "NOT_STORED\r\n");
    assert_eq!(w.ask("replace gone 0 0 1\r\nx\r\n"), "NOT_STORED\r\n");
    assert_eq!(w.ask("touch n 100\r\n"), "TOUCHED\r\n");
    assert_eq!(w.ask("gat 100 n\r\n"), "VALUE n 0 3\r\n307\r\nEND\r\n");
    assert!(w.ask("gats 100 n\r\n").starts_with("VALUE n 0 3 "));
    assert_eq!(w.ask("delete n\r\n"), "DELETED\r\n");
    assert_eq!(w.ask("delete n\r\n"), "NOT_FOUND\r\n");
    // Meta commands, quiet mode, opaque and base flags passed through.
    assert_eq!(w.ask("ms meta 2 T0 F5\r\nhi\r\n"), "HD\r\n");
    assert_eq!(w.ask("mg meta v f O42\r\n"), "VA 2 f5 O42\r\nhi\r\n");
    w.send(b"ms meta 3 q\r\nbye\r\nmg nothing v q\r\nmd nothing q\r\nmg meta v q k\r\nmn\r\n");
    assert_eq!(w.reply(), "VA 3 kmeta\r\nbye\r\n");
    assert_eq!(w.reply(), "MN\r\n");
    assert_eq!(w.ask("ma counter\r\n"), "NF\r\n");
    assert_eq!(w.ask("ms counter 1\r\n1\r\n"), "HD\r\n");
    assert_eq!(w.ask("ma counter MI D4 v\r\n"), "VA 1\r\n5\r\n");
    assert!(w.ask("me meta\r\n").starts_with("ME meta "));
    assert_eq!(w.ask("md meta\r\n"), "HD\r\n");
    assert_eq!(w.ask("mg meta v\r\n"), "EN\r\n");
    // Answered by the proxy itself.
    assert!(w.ask("version\r\n").starts_with("VERSION 1.6.0 mcproxy-"));
    assert_eq!(w.ask("verbosity 1\r\n"), "OK\r\n");
    assert_eq!(w.ask("flush_all\r\n"), "OK\r\n");
    for server in servers {
        assert_eq!(server.raw_get("user:2:profile"), None, "flushed everywhere");
    }
    w.send(b"quit\r\n");
    assert!(
        w.closed_within(Duration::from_secs(5)),
        "quit closes the connection"
    );
}

#[test]
fn pipelined_commands_are_answered_in_order_over_few_server_connections() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    domain(&reg, &[&a, &b], &[]);
    let proxy = Proxy::start(
        &reg,
        "app",
        &["--server-connections", "2", "--threads", "2"],
    );

    // 2 000 commands in one write: each set is read back by the get right after it.
    let mut w = proxy.connect();
    let mut burst = Vec::new();
    for n in 0..1000 {
        burst.extend_from_slice(
            format!(
                "set k{n} 0 0 {}\r\n{n}\r\nget k{n}\r\n",
                n.to_string().len()
            )
            .as_bytes(),
        );
    }
    w.send(&burst);
    for n in 0..1000 {
        assert_eq!(w.reply(), "STORED\r\n", "set {n}");
        assert_eq!(
            w.reply(),
            format!("VALUE k{n} 0 {}\r\n{n}\r\nEND\r\n", n.to_string().len())
        );
    }

    // 200 client connections, each with a request in flight: the servers see a few.
    let mut clients: Vec<Wire> = (0..200).map(|_| proxy.connect()).collect();
    for (n, c) in clients.iter_mut().enumerate() {
        c.send(format!("get k{n}\r\n").as_bytes());
    }
    for (n, c) in clients.iter_mut().enumerate() {
        assert!(c.reply().starts_with(&format!("VALUE k{n} ")));
    }
    for server in [&a, &b] {
        // Our own stats connection, and at most the proxy's two.
        let connections = server.stat("curr_connections");
        assert!(
            connections <= 3 + 1,
            "{connections} connections on {}",
            server.address()
        );
    }
    let stats = proxy.connect().ask("stats\r\n");
    // The first connection, the 200, and the one asking.
    assert!(stats.contains("STAT curr_connections 202\r\n"), "{stats}");
}

#[test]
fn table_changes_are_used_by_the_next_request_and_published_for_discovery() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    domain(&reg, &[&a], &[]);
    let proxy = Proxy::start(&reg, "app", &[]);
    let mut w = proxy.connect();
    let config = w.ask("config get cluster\r\n");
    let body = format!("1\n127.0.0.1|127.0.0.1|{}\n", a.port);
    assert_eq!(
        config,
        format!("CONFIG cluster 0 {}\r\n{body}\r\nEND\r\n", body.len())
    );

    reg.ok("app", &["add", "--no-flush", &b.address()]);
    // Keys libmcshm now sends to b: the proxy sends them there on the very next request.
    let moved: Vec<String> = (0..200)
        .map(|n| format!("key{n}"))
        .filter(|k| owner_port(&reg, k) == b.port)
        .take(10)
        .collect();
    assert!(!moved.is_empty());
    for key in &moved {
        assert_eq!(w.ask(&format!("set {key} 0 0 1\r\nx\r\n")), "STORED\r\n");
        assert_eq!(
            b.raw_get(key).as_deref(),
            Some("x"),
            "{key} went to the new server"
        );
    }
    reg.ok("app", &["down", &a.address(), "--reason", "maintenance"]);
    let config = w.ask("config get cluster\r\n");
    let body = format!("3\n127.0.0.1|127.0.0.1|{}\n", b.port);
    assert_eq!(
        config,
        format!("CONFIG cluster 0 {}\r\n{body}\r\nEND\r\n", body.len())
    );
    // failover none: a's keys are an error on write, a miss on read; no stale copy elsewhere.
    let on_a = (0..200)
        .map(|n| format!("key{n}"))
        .find(|k| owner_port(&reg, k) == a.port)
        .unwrap();
    let reply = w.ask(&format!("set {on_a} 0 0 1\r\nx\r\n"));
    assert!(
        reply.starts_with("SERVER_ERROR server 127.0.0.1:") && reply.contains("maintenance"),
        "{reply}"
    );
    assert_eq!(w.ask(&format!("get {on_a}\r\n")), "END\r\n");
}

#[test]
fn stats_and_prometheus_metrics() {
    let a = Memcached::start();
    let reg = Reg::new();
    domain(&reg, &[&a], &[]);
    let proxy = Proxy::start(&reg, "app", &["--metrics", "127.0.0.1:0"]);
    let mut w = proxy.connect();
    for n in 0..5 {
        w.ask(&format!("set s{n} 0 0 1\r\nx\r\n"));
    }
    w.ask("get s0 s1 nothing\r\n");
    let stats = w.ask("stats\r\n");
    for line in [
        "STAT domain app\r\n",
        "STAT curr_connections 1\r\n",
        "STAT cmd_total 7\r\n",
        "STAT get_keys 3\r\n",
        "STAT get_hits 2\r\n",
        &format!("STAT server:{}:requests 6\r\n", a.address()),
        &format!("STAT server:{}:errors 0\r\n", a.address()),
    ] {
        assert!(stats.contains(line), "{line:?} in {stats}");
    }
    let mut http = std::net::TcpStream::connect(proxy.metrics.as_ref().unwrap()).unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    http.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    for line in [
        "# TYPE mcproxy_commands_total counter\n",
        "mcproxy_commands_total{domain=\"app\"} 7\n",
        "# TYPE mcproxy_uptime_seconds gauge\n",
        "# TYPE mcproxy_connections gauge\n",
        "# TYPE mcproxy_get_hits_total counter\n",
        &format!(
            "mcproxy_server_requests_total{{domain=\"app\",server=\"{}\"}} 6\n",
            a.address()
        ),
        &format!(
            "mcproxy_server_latency_seconds_count{{domain=\"app\",server=\"{}\"}} 6\n",
            a.address()
        ),
    ] {
        assert!(page.contains(line), "{line:?} in {page}");
    }
    // Prometheus' conventions: every family has HELP and TYPE, once (`promtool check metrics`
    // refuses a second HELP line for a name), counters end in _total, no unit-less time.
    let helps: Vec<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let mut unique = helps.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), helps.len(), "a family named twice: {helps:?}");
    for line in page.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split(' ').skip(2);
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        assert!(
            page.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
        assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        assert!(
            !name.contains("uptime") || name.ends_with("_seconds"),
            "{line}"
        );
    }
    // And the whole page, line by line, as Prometheus reads it (tests/common/prometheus.rs).
    let body = page.split_once("\r\n\r\n").unwrap().1;
    if let Err(why) = crate::common::prometheus::parse(body) {
        panic!("{why}\n{body}");
    }
}

#[test]
fn bad_input_gets_memcached_answers_and_bounded_memory() {
    let a = Memcached::start();
    let reg = Reg::new();
    domain(&reg, &[&a], &[]);
    let proxy = Proxy::start(
        &reg,
        "app",
        &[
            "--max-item-size",
            "1k",
            "--client-timeout",
            "1",
            "--max-connections",
            "3",
            "--threads",
            "1",
        ],
    );
    let mut w = proxy.connect();
    assert_eq!(w.ask("bogus command\r\n"), "ERROR\r\n");
    assert_eq!(w.ask("\r\n"), "ERROR\r\n");
    let long_key = "k".repeat(251);
    assert_eq!(
        w.ask(&format!("get {long_key}\r\n")),
        "CLIENT_ERROR bad command line format\r\n"
    );
    assert_eq!(
        w.ask("set k 0 0 abc\r\n"),
        "CLIENT_ERROR bad command line format\r\n"
    );
    assert_eq!(
        w.ask("incr k nope\r\n"),
        "CLIENT_ERROR invalid numeric delta argument\r\n"
    );
    // A value over the item limit: refused, its bytes skipped, the connection goes on.
    let big = "x".repeat(2000);
    assert_eq!(
        w.ask(&format!("set big 0 0 2000\r\n{big}\r\n")),
        "SERVER_ERROR object too large for cache\r\n"
    );
    assert_eq!(w.ask("set k 0 0 2\r\nok\r\n"), "STORED\r\n");
    // A data block longer than announced: refused; the bytes after the announced length are
    // read as the next command, as memcached does (here an empty line).
    assert_eq!(
        w.ask("set k 0 0 2\r\nokXX\r\n"),
        "CLIENT_ERROR bad data chunk\r\n"
    );
    assert_eq!(w.reply(), "ERROR\r\n");
    assert_eq!(w.ask("get k\r\n"), "VALUE k 0 2\r\nok\r\nEND\r\n");
    // Binary garbage: answered, never a panic.
    let garbage: Vec<u8> = (0..4000u32)
        .map(|n| (n * 7919 % 251) as u8)
        .filter(|b| *b != b'\n')
        .collect();
    w.send(&garbage);
    w.send(b"\r\n");
    assert_eq!(w.reply(), "ERROR\r\n");
    assert_eq!(w.ask("get k\r\n"), "VALUE k 0 2\r\nok\r\nEND\r\n");
    // A line longer than the limit (64 KiB) without its end: refused, and the connection
    // closed (it cannot be put back in step); the proxy never buffers more.
    w.send(&vec![b'a'; 70_000]);
    assert_eq!(w.reply(), "CLIENT_ERROR line too long\r\n");
    assert!(
        w.closed_within(Duration::from_secs(5)),
        "a line over the limit closes"
    );

    // A client that sends half a command and stalls is let go after --client-timeout.
    let mut stalled = proxy.connect();
    stalled.send(b"set half 0 0 10\r\nabc");
    let started = Instant::now();
    assert!(
        stalled.closed_within(Duration::from_secs(10)),
        "stalled client kept"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    // An idle client with nothing pending is kept (no --idle-timeout).
    let mut idle = proxy.connect();
    assert!(!idle.closed_within(Duration::from_millis(1500)));
    assert_eq!(idle.ask("get k\r\n"), "VALUE k 0 2\r\nok\r\nEND\r\n");

    // At --max-connections the connection idle longest makes room for a new one; when none
    // is idle, a new one is refused with memcached's words, the others unharmed. (First the
    // sessions closed above must be gone: only `idle` is open.)
    assert!(wait_until(Duration::from_secs(5), || {
        idle.ask("stats\r\n")
            .contains("STAT curr_connections 1\r\n")
    }));
    let mut more: Vec<Wire> = (0..3).map(|_| proxy.connect()).collect();
    for w in &mut more {
        assert!(w.ask("version\r\n").starts_with("VERSION "));
    }
    assert!(
        idle.closed_within(Duration::from_secs(5)),
        "the connection idle longest is closed for the third"
    );
    // All three busy (each in the middle of a command): the next is refused.
    for w in &mut more {
        w.send(b"get k");
    }
    let mut refused = proxy.connect();
    let _ = std::io::Write::write_all(&mut refused.stream, b"version\r\n");
    assert_eq!(refused.line(), "ERROR Too many open connections\r\n");
    assert!(refused.closed_within(Duration::from_secs(5)));
    for w in &mut more {
        w.send(b"\r\n");
        assert_eq!(
            w.reply(),
            "VALUE k 0 2\r\nok\r\nEND\r\n",
            "the others unharmed"
        );
    }
    let stats = more[0].ask("stats\r\n");
    assert!(stats.contains("STAT rejected_connections 1\r\n"), "{stats}");
    assert!(stats.contains("STAT evicted_connections 1\r\n"), "{stats}");
    // The log says who holds them: the user of each local peer (this test's).
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    let mut log = Vec::new();
    let told = wait_until(Duration::from_secs(5), || {
        log.extend(proxy.log.try_iter());
        log.iter().any(|l| l.contains("a connection refused"))
    });
    assert!(told, "{log:?}");
    let refused = log
        .iter()
        .find(|l| l.contains("a connection refused"))
        .unwrap();
    assert!(
        refused.contains(&format!("held by uid {}: 3", uid.unwrap())),
        "{refused}"
    );
}

#[test]
fn frozen_and_killed_servers_fail_only_their_requests() {
    let (mut a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    domain(&reg, &[&a, &b], &["--failure-limit", "255"]);
    let proxy = Proxy::start(&reg, "app", &["--timeout", "300"]);
    let keys: Vec<String> = (0..100).map(|n| format!("f{n}")).collect();
    let on_a: Vec<&String> = keys
        .iter()
        .filter(|k| owner_port(&reg, k) == a.port)
        .collect();
    let on_b: Vec<&String> = keys
        .iter()
        .filter(|k| owner_port(&reg, k) == b.port)
        .collect();
    let mut w = proxy.connect();
    for key in &keys {
        assert_eq!(w.ask(&format!("set {key} 0 0 1\r\nx\r\n")), "STORED\r\n");
    }

    // Frozen: a's requests time out with SERVER_ERROR; b's go on, on the same connection.
    a.freeze();
    let started = Instant::now();
    let reply = w.ask(&format!("get {}\r\n", on_a[0]));
    assert!(
        reply.starts_with("SERVER_ERROR ") && reply.contains("no reply within"),
        "{reply}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        w.ask(&format!("get {}\r\n", on_b[0])),
        format!("VALUE {} 0 1\r\nx\r\nEND\r\n", on_b[0])
    );
    a.signal(libc::SIGCONT);

    // Killed with 400 gets in flight (queued while it is frozen, so they are in flight for
    // sure): each of a's gets SERVER_ERROR, every one of b's hits, the connection goes on.
    a.freeze();
    let mut burst = String::new();
    for n in 0..200 {
        burst += &format!(
            "get {}\r\nget {}\r\n",
            on_a[n % on_a.len()],
            on_b[n % on_b.len()]
        );
    }
    w.send(burst.as_bytes());
    assert!(wait_until(Duration::from_secs(5), || {
        Wire::connect(&proxy.address)
            .ask("stats\r\n")
            .contains("STAT get_keys 402\r\n")
    }));
    a.kill();
    for n in 0..200 {
        let reply = w.reply();
        assert!(reply.starts_with("SERVER_ERROR "), "a's key {n}: {reply:?}");
        assert_eq!(
            w.reply(),
            format!("VALUE {} 0 1\r\nx\r\nEND\r\n", on_b[n % on_b.len()])
        );
    }
    let reply = w.ask(&format!("get {}\r\n", on_a[0]));
    assert!(
        reply.starts_with("SERVER_ERROR ") && reply.contains("connect"),
        "{reply}"
    );
    a.restart();
    let reply = w.ask(&format!("set {} 0 0 1\r\ny\r\n", on_a[0]));
    assert_eq!(reply, "STORED\r\n", "a new connection after the restart");
}

/// A server that answers every request with the first half of a value and then dies: the
/// proxy's client gets SERVER_ERROR for that request and keeps its connection.
#[test]
fn a_server_dying_mid_reply_fails_that_request_only() {
    let b = Memcached::start();
    let half = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let half_port = half.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in half.incoming().take(20).flatten() {
            let mut stream = stream;
            let mut request = [0u8; 1024];
            if stream.read(&mut request).unwrap_or(0) > 0 {
                let _ = stream.write_all(b"VALUE k 0 10\r\nabc");
            }
        }
    });
    let reg = Reg::new();
    reg.ok(
        "app",
        &[
            "add",
            "--no-flush",
            &format!("127.0.0.1:{half_port}"),
            &b.address(),
        ],
    );
    reg.ok("app", &["policy", "--failure-limit", "255"]);
    let proxy = Proxy::start(&reg, "app", &[]);
    let keys: Vec<String> = (0..100).map(|n| format!("h{n}")).collect();
    let on_half = keys
        .iter()
        .find(|k| owner_port(&reg, k) == half_port)
        .unwrap();
    let on_b = keys.iter().find(|k| owner_port(&reg, k) == b.port).unwrap();
    let mut w = proxy.connect();
    assert_eq!(w.ask(&format!("set {on_b} 0 0 1\r\nx\r\n")), "STORED\r\n");
    w.send(format!("get {on_half}\r\nget {on_b}\r\n").as_bytes());
    let reply = w.reply();
    assert!(
        reply.starts_with("SERVER_ERROR 127.0.0.1:") && reply.contains("closed"),
        "{reply}"
    );
    assert_eq!(w.reply(), format!("VALUE {on_b} 0 1\r\nx\r\nEND\r\n"));
}

#[test]
fn sigterm_answers_requests_in_flight_then_exits() {
    let a = Memcached::start();
    let reg = Reg::new();
    domain(&reg, &[&a], &[]);
    let mut proxy = Proxy::start(&reg, "app", &["--timeout", "10000"]);
    let mut w = proxy.connect();
    assert_eq!(w.ask("set k 0 0 2\r\nhi\r\n"), "STORED\r\n");
    a.freeze();
    w.send(b"get k\r\nget k\r\n");
    // Both gets are read (queued for the frozen server) before the signal.
    assert!(wait_until(Duration::from_secs(5), || {
        Wire::connect(&proxy.address)
            .ask("stats\r\n")
            .contains("STAT get_keys 2\r\n")
    }));
    proxy.signal(libc::SIGTERM);
    assert!(
        proxy.wait_exit(Duration::from_millis(300)).is_none(),
        "waits for requests in flight"
    );
    a.signal(libc::SIGCONT);
    assert_eq!(w.reply(), "VALUE k 0 2\r\nhi\r\nEND\r\n");
    assert_eq!(w.reply(), "VALUE k 0 2\r\nhi\r\nEND\r\n");
    assert!(w.closed_within(Duration::from_secs(5)));
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("mcproxy exits");
    assert!(status.success(), "{status:?}");
    // Every log line says when (RFC 3339 UTC to the millisecond); the stop is logged.
    let lines = proxy.log_to_end(Duration::from_secs(5));
    for line in &lines {
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(
            time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{line}"
        );
        assert!(rest.starts_with("mcproxy: "), "{line}");
    }
    let said = |what: &str| lines.iter().any(|l| l.contains(what));
    assert!(said("mcproxy: SIGTERM: stopping"), "{lines:?}");
    assert!(said("mcproxy: stopped"), "{lines:?}");
}

#[test]
fn start_errors_have_documented_exit_codes() {
    let reg = Reg::new();
    let run = |args: &[&str]| {
        std::process::Command::new(common::proxy::MCPROXY)
            .arg("--dir")
            .arg(reg.dir())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["--domain", "app", "--listen", "127.0.0.1:0"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for bad in [
        vec!["--listen", "10.0.0.1"],
        vec!["--listen", "unix:relative.sock"],
        vec!["--domain", "bad/name"],
        vec!["--max-item-size", "2g"],
        vec!["--metrics", "nowhere"],
    ] {
        let out = run(&bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    let a = Memcached::start();
    domain(&reg, &[&a], &[]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = run(&["--domain", "app", "--listen", &address]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn replicas_writes_reach_both_and_reads_fall_back() {
    let servers = [Memcached::start(), Memcached::start(), Memcached::start()];
    let refs: Vec<&Memcached> = servers.iter().collect();
    let reg = Reg::new();
    domain(&reg, &refs, &["--replicas", "2"]);
    let proxy = Proxy::start(&reg, "app", &[]);
    let mut w = proxy.connect();
    for n in 0..20 {
        assert_eq!(w.ask(&format!("set r{n} 0 0 1\r\nx\r\n")), "STORED\r\n");
        let copies = servers
            .iter()
            .filter(|m| m.raw_get(&format!("r{n}")).is_some())
            .count();
        assert_eq!(copies, 2, "r{n} on two replicas");
    }
    // The owner of r0 goes down: reads are served by the other replica.
    let owner = owner_port(&reg, "r0");
    reg.ok("app", &["down", &format!("127.0.0.1:{owner}")]);
    assert_eq!(w.ask("get r0\r\n"), "VALUE r0 0 1\r\nx\r\nEND\r\n");
    assert_eq!(w.ask("mg r0 v\r\n"), "VA 1\r\nx\r\n");
}

#[test]
fn warm_up_fills_a_miss_from_the_interim_owner() {
    let (a, b, s) = (Memcached::start(), Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok(
        "app",
        &[
            "add",
            "--no-flush",
            &a.address(),
            &b.address(),
            &s.address(),
            "--retry-interval",
            "-1",
        ],
    );
    reg.ok(
        "app",
        &[
            "policy",
            "--failover",
            "rehash",
            "--rejoin",
            "warm",
            "--warm-window",
            "600",
        ],
    );
    let key = (0..200)
        .map(|n| format!("w{n}"))
        .find(|k| owner_port(&reg, k) == s.port)
        .unwrap();
    let proxy = Proxy::start(&reg, "app", &[]);
    let mut w = proxy.connect();
    reg.ok("app", &["down", &s.address()]);
    assert_eq!(
        w.ask(&format!("set {key} 5 0 5\r\naway!\r\n")),
        "STORED\r\n"
    );
    reg.ok("app", &["up", &s.address()]);
    assert_eq!(s.raw_get(&key), None, "flushed on rejoin");
    assert_eq!(
        w.ask(&format!("get {key}\r\n")),
        format!("VALUE {key} 5 5\r\naway!\r\nEND\r\n")
    );
    assert_eq!(
        s.raw_get(&key).as_deref(),
        Some("away!"),
        "copied back to the rejoined server"
    );
}

#[test]
fn a_draining_server_s_keys_are_found_and_moved() {
    let (a, d) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    domain(&reg, &[&a, &d], &[]);
    let proxy = Proxy::start(&reg, "app", &[]);
    let mut w = proxy.connect();
    let on_d: Vec<String> = (0..200)
        .map(|n| format!("d{n}"))
        .filter(|k| owner_port(&reg, k) == d.port)
        .collect();
    for key in &on_d {
        assert_eq!(w.ask(&format!("set {key} 3 0 1\r\nv\r\n")), "STORED\r\n");
    }
    // A drain at one key a second, interrupted once the server is draining: most keys stay.
    let mut drain = reg
        .cmd("app", &["drain", &d.address(), "--rate", "1"])
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        reg.list_json("app")["servers"][1]["state"] == "draining"
    }));
    // kill(1) with SIGINT, as an operator's Ctrl-C.
    let _ = std::process::Command::new("kill")
        .arg("-INT")
        .arg(drain.id().to_string())
        .status();
    let _ = drain.wait();
    let left: Vec<&String> = on_d.iter().filter(|k| d.raw_get(k).is_some()).collect();
    assert!(left.len() >= 2, "the interrupted drain left keys");
    // A read finds the key on the draining server and moves it to the new owner.
    assert_eq!(
        w.ask(&format!("get {}\r\n", left[0])),
        format!("VALUE {} 3 1\r\nv\r\nEND\r\n", left[0])
    );
    assert_eq!(d.raw_get(left[0]), None, "deleted from the draining server");
    assert_eq!(
        a.raw_get(left[0]).as_deref(),
        Some("v"),
        "moved to the new owner"
    );
    // A write goes to the new owner and removes the draining server's copy.
    assert_eq!(
        w.ask(&format!("set {} 0 0 1\r\nn\r\n", left[1])),
        "STORED\r\n"
    );
    assert_eq!(d.raw_get(left[1]), None);
    assert_eq!(a.raw_get(left[1]).as_deref(), Some("n"));
}

/// A server deleted from the table loses its proxy connections (once what they carry is
/// answered); one added back gets new ones.
#[test]
fn connections_to_a_deleted_server_are_closed() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    domain(&reg, &[&a, &b], &[]);
    let base = b.stat("curr_connections");
    let proxy = Proxy::start(&reg, "app", &[]);
    let mut w = proxy.connect();
    let on_b = (0..200)
        .map(|n| format!("del{n}"))
        .find(|k| owner_port(&reg, k) == b.port)
        .unwrap();
    assert_eq!(w.ask(&format!("set {on_b} 0 0 1\r\nx\r\n")), "STORED\r\n");
    assert!(
        b.stat("curr_connections") > base,
        "the proxy connected to b"
    );
    reg.ok("app", &["delete", &b.address()]);
    assert_eq!(
        w.ask(&format!("get {on_b}\r\n")),
        "END\r\n",
        "now a's key, a miss"
    );
    assert!(
        wait_until(Duration::from_secs(10), || b.stat("curr_connections")
            == base),
        "the proxy kept its connections to a deleted server"
    );
    reg.ok("app", &["add", "--no-flush", &b.address()]);
    assert_eq!(
        w.ask(&format!("get {on_b}\r\n")),
        format!("VALUE {on_b} 0 1\r\nx\r\nEND\r\n")
    );
}

/// A domain with a key prefix (`policy --prefix`): the proxy's clients send bare keys, the
/// servers hold them under the prefix (on the server a libmcshm client picks, hashing the bare
/// key), and every reply names the key bare: multi-get items, a meta get's `k` flag, `me`.
/// A base64 meta key cannot take the prefix and is refused; a key too long once prefixed is
/// the client's error.
#[test]
fn a_prefixed_domain_is_served_under_its_prefix() {
    let (three, reg, proxy) = three_servers_behind_a_proxy(&["--prefix", "p1:"]);
    let servers: Vec<&Memcached> = three.iter().collect();
    let mut w = proxy.connect();
    let keys: Vec<String> = (0..30).map(|n| format!("item:{n}")).collect();
    for (n, key) in keys.iter().enumerate() {
        let reply = w.ask(&format!("set {key} {n} 0 2\r\nv{}\r\n", n % 10));
        assert_eq!(reply, "STORED\r\n");
        let owner = by_port(&servers, owner_port(&reg, key));
        assert_eq!(
            owner.raw_get(&format!("p1:{key}")),
            Some(format!("v{}", n % 10))
        );
        assert_eq!(owner.raw_get(key), None, "{key} stored bare");
    }
    let reply = w.ask(&format!("get {} missing\r\n", keys.join(" ")));
    let expected: String = keys
        .iter()
        .enumerate()
        .map(|(n, key)| format!("VALUE {key} {n} 2\r\nv{}\r\n", n % 10))
        .collect::<String>()
        + "END\r\n";
    assert_eq!(reply, expected);
    assert_eq!(w.ask("set count 0 0 1\r\n5\r\n"), "STORED\r\n");
    assert_eq!(w.ask("incr count 3\r\n"), "8\r\n");
    assert_eq!(w.ask("touch count 100\r\n"), "TOUCHED\r\n");
    assert_eq!(w.ask("mg count k v\r\n"), "VA 1 kcount\r\n8\r\n");
    assert!(w.ask("me count\r\n").starts_with("ME count "));
    assert_eq!(w.ask("ms fresh 2 T0\r\nhi\r\n"), "HD\r\n");
    let owner = by_port(&servers, owner_port(&reg, "fresh"));
    assert_eq!(owner.raw_get("p1:fresh").as_deref(), Some("hi"));
    assert_eq!(w.ask("delete count\r\n"), "DELETED\r\n");
    assert_eq!(w.ask("get count\r\n"), "END\r\n");
    assert!(
        w.ask("mg Zm9v b v\r\n")
            .starts_with("CLIENT_ERROR base64 keys (b) are not supported"),
    );
    let long = "k".repeat(248);
    let reply = w.ask(&format!("set {long} 0 0 1\r\nx\r\n"));
    assert!(reply.starts_with("CLIENT_ERROR "), "{reply}");
    assert!(reply.contains("key prefix 'p1:'"), "{reply}");
    assert_eq!(w.ask("mn\r\n"), "MN\r\n", "the connection goes on");
}

/// The proxy places keys by the domain's distribution, as a libmcshm client does, for each
/// distribution (switched while it runs): 60 keys set through it lie on the server the
/// library names and on no other.
#[test]
fn every_distribution_routes_as_a_libmcshm_client_routes_it() {
    let (three, reg, proxy) = three_servers_behind_a_proxy(&[]);
    let servers: Vec<&Memcached> = three.iter().collect();
    let mut w = proxy.connect();
    let distributions: [&[&str]; 6] = [
        &["ketama"],
        &["ketama-spy"],
        &["ketama-unweighted"],
        &["ketama-unweighted", "--hash", "fnv1a_32"],
        &["modula", "--hash", "crc"],
        &["pecl-memcache", "--hash", "fnv"],
    ];
    for distribution in distributions {
        let mut policy = vec!["policy", "--distribution"];
        policy.extend(distribution);
        reg.ok("app", &policy);
        assert_eq!(w.ask("flush_all\r\n"), "OK\r\n");
        let keys: Vec<String> = (0..60).map(|n| format!("d:{n}")).collect();
        for key in &keys {
            assert_eq!(w.ask(&format!("set {key} 0 0 1\r\nx\r\n")), "STORED\r\n");
        }
        for key in &keys {
            let owner = owner_port(&reg, key);
            for server in &servers {
                let there = server.raw_get(key).is_some();
                assert_eq!(there, server.port == owner, "{distribution:?}: {key}");
            }
        }
    }
}

/// Servers behind unix sockets are served as TCP ones are; one whose socket is not there fails
/// its requests at once with the reason (no connection is left half made), and the proxy goes
/// on serving the others.
#[test]
fn unix_socket_servers_and_a_missing_socket() {
    let (_mc, socket) = Memcached::start_unix();
    let reg = Reg::new();
    let missing = reg.dir().join("no-such.sock");
    std::fs::create_dir_all(reg.dir()).unwrap();
    let (socket, missing) = (socket.to_str().unwrap(), missing.to_str().unwrap());
    reg.ok("app", &["add", "--no-flush", socket, missing]);
    reg.ok(
        "app",
        &["policy", "--failover", "none", "--failure-limit", "255"],
    );
    let proxy = Proxy::start(&reg, "app", &[]);
    let mut client = libmcshm::Client::for_domain(
        reg.dir(),
        &libmcshm::Domain::new("app").unwrap(),
        libmcshm::Timeouts::default(),
    )
    .unwrap();
    let mut on = |want: &str| {
        (0..1000)
            .map(|n| format!("u{n}"))
            .find(|k| {
                client
                    .server_for(k.as_bytes())
                    .unwrap()
                    .to_string()
                    .contains(want)
            })
            .unwrap()
    };
    let (there, gone) = (on(socket), on(missing));
    let mut w = proxy.connect();
    assert_eq!(w.ask(&format!("set {there} 0 0 1\r\nx\r\n")), "STORED\r\n");
    assert_eq!(
        w.ask(&format!("get {there}\r\n")),
        format!("VALUE {there} 0 1\r\nx\r\nEND\r\n")
    );
    let started = Instant::now();
    let refused = w.ask(&format!("get {gone}\r\n"));
    assert!(
        refused.starts_with("SERVER_ERROR ")
            && refused.contains("no-such.sock")
            && refused.contains("connect"),
        "{refused}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "at once, not after a timeout"
    );
    assert_eq!(
        w.ask(&format!("get {there}\r\n")),
        format!("VALUE {there} 0 1\r\nx\r\nEND\r\n")
    );
}

/// --max-connections-per-uid: a user at its share gets a new connection only in place of one of
/// its own idle ones; when all of its connections are busy the new one is refused, named in the
/// log. Over TCP (the local peer's socket owner) and over a unix socket (the kernel's record
/// of the peer).
#[test]
fn a_user_at_its_share_of_connections_is_refused_unless_one_of_its_own_is_idle() {
    let a = Memcached::start();
    let reg = Reg::new();
    domain(&reg, &[&a], &[]);
    let socket = reg.dir().join("mcproxy.sock");
    let unix = format!("unix:{}", socket.display());
    let proxy = Proxy::start(
        &reg,
        "app",
        &[
            "--max-connections-per-uid",
            "2",
            "--threads",
            "1",
            "--listen",
            &unix,
        ],
    );
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    // Two busy connections (each in the middle of a command): the third is refused.
    let mut first = proxy.connect();
    let mut second = proxy.connect();
    assert!(first.ask("version\r\n").starts_with("VERSION "));
    assert!(second.ask("version\r\n").starts_with("VERSION "));
    first.send(b"get k");
    second.send(b"get k");
    let mut third = proxy.connect();
    let _ = std::io::Write::write_all(&mut third.stream, b"version\r\n");
    assert_eq!(third.line(), "ERROR Too many open connections\r\n");
    let mut log = Vec::new();
    assert!(wait_until(Duration::from_secs(5), || {
        log.extend(proxy.log.try_iter());
        log.iter()
            .any(|l| l.contains(&format!("uid {uid} holds 2 busy connections")))
    }));
    // One of them idle again: a new one takes its place (over the unix socket this time).
    first.send(b"\r\n");
    assert_eq!(first.reply(), "END\r\n");
    let mut over_unix = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    over_unix
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    std::io::Write::write_all(&mut over_unix, b"version\r\n").unwrap();
    let mut answer = [0u8; 64];
    let n = std::io::Read::read(&mut over_unix, &mut answer).unwrap();
    assert!(
        answer[..n].starts_with(b"VERSION "),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert!(
        first.closed_within(Duration::from_secs(5)),
        "the idle one made room"
    );
    second.send(b"\r\n");
    assert_eq!(second.reply(), "END\r\n", "the busy one is untouched");
}

/// A bare number under 100 for a millisecond option is warned about (mclient's `--timeout 1`
/// is a second; mcproxy's, a millisecond).
#[test]
fn a_bare_millisecond_timeout_is_warned_about() {
    let reg = Reg::new();
    let run = std::process::Command::new(common::proxy::MCPROXY)
        .arg("--dir")
        .arg(reg.dir())
        .args([
            "--domain",
            "missing",
            "--timeout",
            "1",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("warning: --timeout 1 is 1 ms") && stderr.contains("write 1s"),
        "{stderr}"
    );
}
