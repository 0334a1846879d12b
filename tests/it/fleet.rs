//! The fleet on a real 3-member etcd cluster: "hosts" are registry directories, each with its
//! own `mcadmin sync` agent process; clients are real processes on those hosts, servers real
//! memcached processes.

use crate::common;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::etcd::{EtcdCluster, Host, create_unfenced, fleet_cmd};
use crate::common::memcached::Memcached;
use crate::common::{Run, wait_until};
use libmcshm::{Client, Domain, Timeouts};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn fleet(cluster: &EtcdCluster, domain: &str, args: &[&str]) -> Run {
    Run(fleet_cmd(&cluster.endpoints(), domain, args)
        .output()
        .unwrap())
}

fn fleet_ok(cluster: &EtcdCluster, domain: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let run = fleet(cluster, domain, &all);
    assert_eq!(run.code(), 0, "mcadmin --etcd {args:?}: {}", run.stderr());
    serde_json::from_str(&run.stdout()).unwrap()
}

fn fleet_list(cluster: &EtcdCluster, domain: &str) -> serde_json::Value {
    fleet_ok(cluster, domain, &["list"])
}

fn addresses(list: &serde_json::Value) -> Vec<String> {
    common::addresses(list)
}

fn short_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(300),
        io: Duration::from_millis(300),
    }
}

/// A key that the client routes to `server` now.
fn key_on(c: &mut Client, server: &str, prefix: &str) -> String {
    (0..100_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| c.server_for(k.as_bytes()).unwrap().to_string() == server)
        .expect("a key for the server")
}

#[test]
fn an_add_through_one_host_reaches_every_host_and_hosts_lists_every_agent() {
    let cluster = EtcdCluster::start(3);
    let hosts: Vec<Host> = ["web1", "web2", "web3"]
        .iter()
        .map(|n| Host::start(n, &cluster.endpoints()))
        .collect();
    // Real servers: a fleet commit fences the servers it adds, takes down or moves keys off.
    let servers = [Memcached::start(), Memcached::start()];
    let (one, two) = (servers[0].address(), servers[1].address());
    let commit = fleet_ok(&cluster, "myapp", &["add", "--no-flush", &one, &two]);
    let revision = commit["revision"].as_i64().unwrap();
    assert!(revision > 0);
    for host in &hosts {
        assert!(
            wait_until(WAIT, || host.revision("myapp") >= revision),
            "{} did not mirror revision {revision}: {}",
            host.name,
            host.log_text()
        );
        let local = host.local("myapp").unwrap();
        assert_eq!(
            addresses(&local),
            [one.as_str(), two.as_str()],
            "{}",
            host.name
        );
        assert_eq!(local["fleet"]["connected"], true);
        assert_eq!(local["fleet"]["agent_running"], true);
    }
    // The fleet's own view, and the text form that says which revision it is.
    let listed = fleet_list(&cluster, "myapp");
    assert_eq!(listed["revision"], revision);
    let text = fleet(&cluster, "myapp", &["list"]).stdout();
    assert!(
        text.contains(&format!("fleet revision {revision}")),
        "{text}"
    );
    // A second edit, then every agent shows up in `hosts` with it.
    let commit = fleet_ok(&cluster, "myapp", &["down", &two, "--reason", "disk"]);
    let revision = commit["revision"].as_i64().unwrap();
    assert!(wait_until(WAIT, || {
        let hosts = fleet_ok(&cluster, "myapp", &["hosts"]);
        let rows = hosts["hosts"].as_array().unwrap().clone();
        rows.len() == 3
            && rows.iter().all(|h| {
                h["domains"]["myapp"]["revision"].as_i64() == Some(revision)
                    && h["lag"]["myapp"] == json!({"fleet_revision": revision, "current": true})
            })
    }));
    for host in &hosts {
        assert_eq!(host.state("myapp", &two).as_deref(), Some("down"));
    }
    let text = fleet(&cluster, "myapp", &["hosts"]).stdout();
    for name in ["web1", "web2", "web3"] {
        assert!(text.contains(name), "{text}");
    }
    assert_eq!(text.matches(" current ").count(), 3, "{text}");
    // A clean stop takes the host out of `hosts` at once and says so in its tables.
    let mut hosts = hosts;
    assert!(hosts[2].stop_agent().success());
    let left = fleet_ok(&cluster, "myapp", &["hosts"]);
    assert_eq!(left["hosts"].as_array().unwrap().len(), 2, "{left}");
    assert_eq!(
        hosts[2].local("myapp").unwrap()["fleet"]["agent_pid"],
        serde_json::Value::Null
    );
}

#[test]
fn fleet_edits_refuse_bad_input_and_report_what_is_missing() {
    let cluster = EtcdCluster::start(1);
    // No such domain yet: reads say so (exit 3), a delete too.
    assert_eq!(fleet(&cluster, "nope", &["list"]).code(), 3);
    assert_eq!(fleet(&cluster, "nope", &["delete", "a"]).code(), 3);
    create_unfenced(&cluster.endpoints(), "d");
    fleet_ok(&cluster, "d", &["add", "--no-flush", "a:1"]);
    let run = fleet(&cluster, "d", &["add", "--no-flush", "a:1"]);
    assert_eq!(run.code(), 3, "{}", run.stderr());
    assert!(run.stderr().contains("a:1"), "{}", run.stderr());
    let run = fleet(&cluster, "d", &["add", "--no-flush", "bad address"]);
    assert_eq!(run.code(), 2);
    // Unreachable etcd: exit 6 and a message naming it; a bad endpoint: exit 2.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let run = Run(fleet_cmd(
        &format!("http://127.0.0.1:{port}"),
        "d",
        &["list", "--etcd-timeout", "1"],
    )
    .output()
    .unwrap());
    assert_eq!(run.code(), 6, "{}", run.stderr());
    assert!(
        run.stderr().contains("etcd unreachable"),
        "{}",
        run.stderr()
    );
    // Said once: the endpoint once, no part of the message twice.
    let message = run.stderr();
    assert_eq!(
        message.matches(&format!("127.0.0.1:{port}")).count(),
        1,
        "{message}"
    );
    let parts: Vec<&str> = message.trim().split(": ").collect();
    for (n, part) in parts.iter().enumerate() {
        assert!(!parts[n + 1..].contains(part), "{message}");
    }
    let run = Run(fleet_cmd("127.0.0.1:2379", "d", &["list"])
        .output()
        .unwrap());
    assert_eq!(run.code(), 2, "{}", run.stderr());
    // A list cut short, empty or edited is refused before etcd is asked; the whole dump loads.
    let revision = fleet_list(&cluster, "d")["revision"].clone();
    let dump = fleet(&cluster, "d", &["dump"]).stdout();
    assert!(dump.contains("\n# end: 1 server, crc32 0x"), "{dump}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.list");
    let edited = dump.replace("a:1", "a:2");
    for (text, needle) in [
        (&dump[..dump.rfind("# end").unwrap() + 5], "no end line"),
        ("", "pass --allow-empty --partial"),
        (&edited, "does not match"),
    ] {
        std::fs::write(&file, text).unwrap();
        let run = fleet(
            &cluster,
            "d",
            &["load", "--no-flush", file.to_str().unwrap()],
        );
        assert_eq!(run.code(), 2, "{text:?}: {}", run.stderr());
        assert!(run.stderr().contains(needle), "{}", run.stderr());
        assert_eq!(fleet_list(&cluster, "d")["revision"], revision, "{text:?}");
    }
    std::fs::write(&file, &dump).unwrap();
    fleet_ok(
        &cluster,
        "d",
        &["load", "--no-flush", file.to_str().unwrap()],
    );
    // The table is as the one good edit left it.
    assert_eq!(addresses(&fleet_list(&cluster, "d")), ["a:1"]);
}

/// Not a test on its own: a writer process on one host (`MCSHM_FLEET_WRITER=dir|key|file|secs`)
/// sets key to 1, 2, 3, … and records each acknowledged value in `file`.
#[test]
fn fleet_writer_child() {
    let Ok(spec) = std::env::var("MCSHM_FLEET_WRITER") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let mut c =
        Client::for_domain(parts[0], &Domain::new("app").unwrap(), short_timeouts()).unwrap();
    let end = Instant::now() + Duration::from_secs_f64(parts[3].parse().unwrap());
    let mut i = 0u64;
    while Instant::now() < end && i < 1_000_000 {
        i += 1;
        if c.set(parts[1].as_bytes(), i.to_string().as_bytes(), 0, 0)
            .is_ok()
        {
            let tmp = format!("{}.tmp", parts[2]);
            std::fs::write(&tmp, i.to_string()).unwrap();
            std::fs::rename(&tmp, parts[2]).unwrap();
        }
    }
}

/// Not a test on its own: a reader process on another host (`MCSHM_FLEET_READER=dir|key|file|
/// secs`): every value read must be at least the last value acknowledged before the read.
/// While `file.pause` exists it reads nothing (and says so in `file.paused`). Exits non-zero
/// on a stale read; prints how many reads it made, hits, and operations that failed.
#[test]
fn fleet_reader_child() {
    let Ok(spec) = std::env::var("MCSHM_FLEET_READER") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let mut c =
        Client::for_domain(parts[0], &Domain::new("app").unwrap(), short_timeouts()).unwrap();
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = failures.clone();
    c.on_failure(move |_| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let end = Instant::now() + Duration::from_secs_f64(parts[3].parse().unwrap());
    let (mut reads, mut hits) = (0u64, 0u64);
    let (pause, paused) = (
        format!("{}.pause", parts[2]),
        format!("{}.paused", parts[2]),
    );
    while Instant::now() < end && reads < 10_000_000 {
        if std::path::Path::new(&pause).exists() {
            std::fs::write(&paused, "").unwrap();
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let acknowledged: u64 = std::fs::read_to_string(parts[2])
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        reads += 1;
        if let Ok(Some(item)) = c.get(parts[1].as_bytes()) {
            hits += 1;
            let v: u64 = String::from_utf8(item.value).unwrap().parse().unwrap();
            assert!(
                v >= acknowledged,
                "stale read: {v} < acknowledged {acknowledged}"
            );
        }
    }
    println!(
        "reads={reads} hits={hits} failures={}",
        failures.load(std::sync::atomic::Ordering::Relaxed)
    );
}

fn child(var: &str, spec: String, name: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &format!("fleet::{name}"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(var, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Seed 001 across hosts: web host A fails against a frozen cache server and marks it down;
/// host B stops using it without failing once; it comes back flushed; no reader on any host
/// reads a value older than the last acknowledged write.
#[test]
fn a_failure_seen_on_one_host_is_seen_on_all_and_the_server_returns_flushed() {
    let cluster = EtcdCluster::start(3);
    let (s, other) = (Memcached::start(), Memcached::start());
    fleet_ok(
        &cluster,
        "app",
        &[
            "add",
            "--no-flush",
            &other.address(),
            &s.address(),
            "--retry-interval",
            "1",
        ],
    );
    let a = Host::start("a", &cluster.endpoints());
    let b = Host::start("b", &cluster.endpoints());
    for h in [&a, &b] {
        assert!(wait_until(WAIT, || h.state("app", &s.address()).is_some()));
    }
    let mut ca =
        Client::for_domain(a.reg.dir(), &Domain::new("app").unwrap(), short_timeouts()).unwrap();
    let key = key_on(&mut ca, &s.address(), "profile:");
    // The writer on host A and the reader on host B run through the whole episode.
    let acked = a.reg.dir().join("acked");
    let spec = |h: &Host| format!("{}|{key}|{}|8", h.reg.dir().display(), acked.display());
    let writer = child("MCSHM_FLEET_WRITER", spec(&a), "fleet_writer_child");
    assert!(wait_until(WAIT, || acked.exists()));
    let reader = child("MCSHM_FLEET_READER", spec(&b), "fleet_reader_child");
    std::thread::sleep(Duration::from_millis(500)); // some reads and writes before the fault

    // B's reader holds still while the server freezes, so that the only process that meets the
    // frozen server is A's writer (B's reader must learn of it from the fleet alone).
    let pause = a.reg.dir().join("acked.pause");
    let paused = a.reg.dir().join("acked.paused");
    std::fs::write(&pause, "").unwrap();
    assert!(wait_until(WAIT, || paused.exists()));
    s.signal(libc::SIGSTOP);
    // A's writer fails against the frozen server until the failure limit marks it down; B sees
    // it down through the fleet.
    assert!(
        wait_until(WAIT, || b.state("app", &s.address()).as_deref()
            == Some("down")),
        "host B never heard of the failure: {}",
        a.log_text()
    );
    let reason = b.local("app").unwrap()["servers"][1]["reason"].clone();
    assert!(reason.as_str().unwrap().contains("failures"), "{reason}");
    let fleet_state = fleet_list(&cluster, "app")["servers"][1]["state"].clone();
    assert_eq!(fleet_state, "down");
    std::fs::remove_file(&pause).unwrap();
    std::thread::sleep(Duration::from_millis(1000)); // B reads while it is down: misses
    s.signal(libc::SIGCONT);
    // A retry probe (one host, for the fleet) flushes it and brings it back everywhere.
    for h in [&a, &b] {
        assert!(
            wait_until(WAIT, || h.state("app", &s.address()).as_deref()
                == Some("up")),
            "{} never saw it back: {}",
            h.name,
            a.log_text() + &b.log_text()
        );
    }
    let back = fleet_list(&cluster, "app")["servers"][1]["reason"].clone();
    assert!(back.as_str().unwrap().contains("flush_all"), "{back}");

    let w = writer.wait_with_output().unwrap();
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stdout));
    let r = reader.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(r.status.success(), "reader on host B: {out}");
    let failures: u64 = out
        .split("failures=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("reader output: {out}"));
    assert_eq!(
        failures, 0,
        "host B's client met the frozen server itself: {out}"
    );
    let hits: u64 = out
        .split("hits=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap();
    assert!(hits > 0, "{out}");
}

/// Not a test on its own: a client process hammering one key (`MCSHM_FLEET_HAMMER=dir|key|secs`).
#[test]
fn fleet_hammer_child() {
    let Ok(spec) = std::env::var("MCSHM_FLEET_HAMMER") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let mut c =
        Client::for_domain(parts[0], &Domain::new("h").unwrap(), Timeouts::default()).unwrap();
    let end = Instant::now() + Duration::from_secs_f64(parts[2].parse().unwrap());
    let mut ops = 0u64;
    while Instant::now() < end && ops < 50_000_000 {
        let _ = c.get(parts[1].as_bytes());
        ops += 1;
    }
}

#[test]
fn twenty_clients_on_each_of_three_hosts_probe_a_down_server_once_per_interval_fleet_wide() {
    let cluster = EtcdCluster::start(3);
    let (a, mut s) = (Memcached::start(), Memcached::start());
    fleet_ok(
        &cluster,
        "h",
        &[
            "add",
            "--no-flush",
            &a.address(),
            &s.address(),
            "--retry-interval",
            "1",
        ],
    );
    let hosts: Vec<Host> = ["p1", "p2", "p3"]
        .iter()
        .map(|n| Host::start(n, &cluster.endpoints()))
        .collect();
    for h in &hosts {
        assert!(wait_until(WAIT, || h.state("h", &s.address()).is_some()));
    }
    let mut c = Client::for_domain(
        hosts[0].reg.dir(),
        &Domain::new("h").unwrap(),
        Timeouts::default(),
    )
    .unwrap();
    let key = key_on(&mut c, &s.address(), "hot:");
    fleet_ok(&cluster, "h", &["down", &s.address(), "--retry"]);
    for h in &hosts {
        assert!(wait_until(WAIT, || h.state("h", &s.address()).as_deref()
            == Some("down")));
    }
    // It answers but refuses flush_all: every probe fails to rejoin it, so it stays down and
    // every connection it sees is a probe.
    s.restart_with(&["-F"]);
    let before = s.stat("total_connections");
    let started = Instant::now();
    let children: Vec<Child> = hosts
        .iter()
        .flat_map(|h| {
            let spec = format!("{}|{key}|3.5", h.reg.dir().display());
            (0..20).map(move |_| {
                Command::new(std::env::current_exe().unwrap())
                    .args(["--exact", "fleet::fleet_hammer_child", "--test-threads=1"])
                    .env("MCSHM_FLEET_HAMMER", &spec)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let probes = s.stat("total_connections") - before - 1; // minus this stats connection
    println!("{probes} probe connections in {elapsed:.1} s from 60 processes on 3 hosts");
    assert!(probes >= 1, "nobody probed the down server");
    assert!(
        probes as f64 <= elapsed.ceil() + 1.0,
        "{probes} probes in {elapsed:.1} s: more than one per interval for the fleet"
    );
    assert_eq!(fleet_list(&cluster, "h")["servers"][1]["state"], "down");
}

#[test]
fn the_leader_killed_during_200_edits_from_two_hosts_loses_no_acknowledged_edit() {
    let mut cluster = EtcdCluster::start(3);
    create_unfenced(&cluster.endpoints(), "e");
    fleet_ok(&cluster, "e", &["add", "--no-flush", "10.9.0.1"]);
    let h1 = Host::start("e1", &cluster.endpoints());
    let h2 = Host::start("e2", &cluster.endpoints());
    let endpoints = cluster.endpoints();
    let editors: Vec<_> = (0..2)
        .map(|who| {
            let endpoints = endpoints.clone();
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                for i in 0..100 {
                    let address = format!("10.{}.{}.{}:11211", 20 + who, i / 250, i % 250 + 1);
                    let run = Run(fleet_cmd(&endpoints, "e", &["add", "--no-flush", &address])
                        .output()
                        .unwrap());
                    if run.code() == 0 {
                        acknowledged.push(address);
                    } else {
                        eprintln!("edit {address}: {}", run.stderr());
                    }
                }
                acknowledged
            })
        })
        .collect();
    // Kill the leader once the edits are under way.
    assert!(wait_until(WAIT, || addresses(&fleet_list(&cluster, "e"))
        .len()
        > 40));
    let leader = cluster.leader().expect("a leader");
    cluster.kill(leader);
    let acknowledged: Vec<String> = editors
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(
        acknowledged.len(),
        200,
        "every edit must succeed despite the election"
    );
    let fleet = fleet_list(&cluster, "e");
    let present = addresses(&fleet);
    for address in &acknowledged {
        assert!(present.contains(address), "{address} acknowledged but lost");
    }
    let revision = fleet["revision"].as_i64().unwrap();
    for h in [&h1, &h2] {
        assert!(
            wait_until(WAIT, || h.revision("e") == revision),
            "{} did not converge: {}",
            h.name,
            h.log_text()
        );
        assert_eq!(addresses(&h.local("e").unwrap()), present);
    }
}

#[test]
fn cut_off_hosts_keep_serving_push_their_marks_later_and_agents_catch_up() {
    let mut cluster = EtcdCluster::start(3);
    create_unfenced(&cluster.endpoints(), "c");
    fleet_ok(
        &cluster,
        "c",
        &["add", "--no-flush", "10.5.0.1", "10.5.0.2", "10.5.0.3"],
    );
    let a = Host::start("ca", &cluster.endpoints());
    let mut b = Host::start("cb", &cluster.endpoints());
    let revision = fleet_list(&cluster, "c")["revision"].as_i64().unwrap();
    for h in [&a, &b] {
        assert!(wait_until(WAIT, || h.revision("c") == revision));
    }

    // Every member stopped: the hosts keep serving their tables and say they are cut off.
    for i in 0..3 {
        cluster.kill(i);
    }
    assert!(wait_until(
        WAIT,
        || a.local("c").unwrap()["fleet"]["connected"] == false
    ));
    let text = a.reg.ok("c", &["list"]);
    assert!(text.contains("CUT OFF from etcd"), "{text}");
    // A mark made on host A meanwhile (as a client's mark-down would be) applies locally…
    a.reg
        .ok("c", &["down", "10.5.0.2", "--reason", "seen failing on ca"]);
    assert_eq!(b.state("c", "10.5.0.2:11211").as_deref(), Some("up"));
    // …and reaches the fleet and host B when etcd is back.
    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.wait_ready();
    assert!(
        wait_until(WAIT, || b.state("c", "10.5.0.2:11211").as_deref()
            == Some("down")),
        "{}",
        a.log_text()
    );
    assert_eq!(fleet_list(&cluster, "c")["servers"][1]["state"], "down");
    assert!(wait_until(
        WAIT,
        || a.local("c").unwrap()["fleet"]["connected"] == true
    ));

    // An agent SIGKILLed and restarted catches up with what it missed.
    b.kill_agent();
    fleet_ok(&cluster, "c", &["add", "--no-flush", "10.5.0.4"]);
    b.start_agent();
    assert!(wait_until(WAIT, || addresses(&b.local("c").unwrap()).len() == 4));

    // A mark made on B while its agent is down, whose base revision is then compacted away:
    // the restarted agent cannot tell it from the fleet's table, says so, and resyncs.
    b.kill_agent();
    b.reg.ok("c", &["down", "10.5.0.1"]);
    fleet_ok(&cluster, "c", &["set", "10.5.0.3", "--weight", "7"]);
    let latest = fleet_list(&cluster, "c")["revision"].as_i64().unwrap();
    cluster.compact(latest);
    b.start_agent();
    assert!(
        wait_until(WAIT, || b.revision("c") == latest),
        "{}",
        b.log_text()
    );
    assert!(b.log_text().contains("resync"), "{}", b.log_text());
    let local = b.local("c").unwrap();
    assert_eq!(local["servers"][2]["weight"], 7);
    assert_eq!(
        local["servers"][0]["state"], "up",
        "the fleet's table wins a resync"
    );
}

#[test]
fn hostile_values_under_the_prefix_are_refused_and_leave_the_tables_as_they_were() {
    let cluster = EtcdCluster::start(3);
    create_unfenced(&cluster.endpoints(), "d");
    fleet_ok(
        &cluster,
        "d",
        &["add", "--no-flush", "10.7.0.1", "10.7.0.2"],
    );
    let host = Host::start("hx", &cluster.endpoints());
    let revision = fleet_list(&cluster, "d")["revision"].as_i64().unwrap();
    assert!(wait_until(WAIT, || host.revision("d") == revision));
    let before = host.local("d").unwrap();
    let etcd = cluster.client();
    let oversized = format!(
        r#"{{"servers":[{{"address":"10.7.0.1","reason":"{}"}}]}}"#,
        "x".repeat(5 << 20)
    );
    let hostile: Vec<(&str, String)> = vec![
        ("bad JSON", "{not json".into()),
        (
            "bad address",
            r#"{"servers":[{"address":"10.7.0.1 rm -rf"}]}"#.into(),
        ),
        (
            "bad weight",
            r#"{"servers":[{"address":"10.7.0.1","weight":70000}]}"#.into(),
        ),
        (
            "control characters",
            r#"{"servers":[{"address":"a","reason":"x\r\ny"}]}"#.into(),
        ),
        (
            "duplicate",
            r#"{"servers":[{"address":"a"},{"address":"a:11211"}]}"#.into(),
        ),
        ("oversized", oversized),
    ];
    for (what, value) in &hostile {
        etcd.put("/mcshm/domains/d", value.as_bytes(), None)
            .unwrap();
        assert!(
            wait_until(WAIT, || host
                .log_text()
                .matches(r#""event":"refused""#)
                .count()
                > hostile.iter().position(|h| h.0 == *what).unwrap()),
            "{what} was not refused: {}",
            host.log_text()
        );
        let now = host.local("d").unwrap();
        assert_eq!(
            now["servers"], before["servers"],
            "{what} changed the table"
        );
        assert_eq!(
            now["version"], before["version"],
            "{what} changed the table"
        );
        let run = fleet(&cluster, "d", &["list"]);
        assert_eq!(run.code(), 6, "{what}: {}", run.stderr());
        assert!(
            run.stderr().contains("/mcshm/domains/d"),
            "{}",
            run.stderr()
        );
    }
    assert!(host.log_text().contains("/mcshm/domains/d"));
    // A hostile value for a new domain creates nothing; a key that is no domain name is ignored.
    etcd.put("/mcshm/domains/evil", b"[]", None).unwrap();
    etcd.put("/mcshm/domains/../etc", b"{}", None).unwrap();
    create_unfenced(&cluster.endpoints(), "ok");
    fleet_ok(&cluster, "ok", &["add", "--no-flush", "10.7.0.9"]);
    assert!(wait_until(WAIT, || host.local("ok").is_some()));
    assert!(host.local("evil").is_none());
    assert!(!host.reg.dir().join("evil.mcshm").exists());
    // `load` repairs it (as it repairs a damaged local file), and the agent mirrors it again.
    fleet_ok(
        &cluster,
        "d",
        &["load", "--partial", "--allow-empty", "/dev/null"],
    );
    let after = fleet_list(&cluster, "d")["revision"].as_i64().unwrap();
    assert!(wait_until(WAIT, || host.revision("d") == after));
}
