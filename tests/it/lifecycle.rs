//! Server lifecycle with real memcached processes killed and restarted on the same port: no
//! stale reads after a server comes back (both failover policies, and the double fault), one
//! retry probe per host per interval, the watch daemon, replication, warm-up, drain, clients.

use crate::common;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::memcached::Memcached;
use crate::common::{MCADMIN, Reg, wait_until};
use libmcshm::{Client, Domain, Error, Timeouts};

fn client(reg: &Reg, domain: &str) -> Client {
    Client::for_domain(
        reg.dir(),
        &Domain::new(domain).unwrap(),
        Timeouts::default(),
    )
    .unwrap()
}

/// A key that `domain` routes to `server` now.
fn key_on(c: &mut Client, server: &Memcached, prefix: &str) -> String {
    (0..100_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| c.server_for(k.as_bytes()).unwrap().to_string() == server.address())
        .expect("a key for the server")
}

fn value(c: &mut Client, key: &str) -> Option<String> {
    c.get(key.as_bytes())
        .unwrap()
        .map(|i| String::from_utf8(i.value).unwrap())
}

#[test]
fn up_flushes_a_down_server_before_marking_it_up() {
    let reg = Reg::new();
    let mut s = Memcached::start();
    reg.ok("d", &["add", &s.address()]);
    reg.ok("d", &["down", &s.address()]);
    s.raw_set("stale", "v1");
    reg.ok("d", &["up", &s.address()]);
    assert_eq!(s.raw_get("stale"), None, "flushed before up");
    let list = reg.list_json("d");
    assert_eq!(list["servers"][0]["state"], "up");
    assert!(
        list["servers"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("flush_all")
    );

    // A server that refuses flush_all stays down, and mcadmin says so (exit 5).
    reg.ok("d", &["down", &s.address()]);
    s.restart_with(&["-F"]);
    s.raw_set("stale", "v1");
    let run = reg.run("d", &["up", &s.address()]);
    assert_eq!(run.code(), 5, "{}", run.stderr());
    assert!(run.stderr().contains("stays down"), "{}", run.stderr());
    assert_eq!(reg.list_json("d")["servers"][0]["state"], "down");
    // The operator can insist.
    reg.ok("d", &["up", &s.address(), "--no-flush"]);
    assert_eq!(s.raw_get("stale").as_deref(), Some("v1"));
}

/// The stale read PECL users reported: key = v1 on S; S goes down; the key is written v2; S comes back
/// still holding v1. No read may return v1 afterwards.
#[test]
fn no_stale_read_after_a_rejoin_with_failover_none() {
    let reg = Reg::new();
    let (a, s) = (Memcached::start(), Memcached::start());
    reg.ok(
        "n",
        &["add", &a.address(), &s.address(), "--retry-interval", "1"],
    );
    let mut c = client(&reg, "n");
    let key = key_on(&mut c, &s, "user:");
    c.set(key.as_bytes(), b"v1", 0, 0).unwrap();
    reg.ok(
        "n",
        &[
            "down",
            &s.address(),
            "--reason",
            "network partition",
            "--retry",
        ],
    );
    // Under none the key is a miss while S is down, and a write is an error (the application
    // writes v2 to its database only).
    assert_eq!(value(&mut c, &key), None);
    assert!(matches!(
        c.set(key.as_bytes(), b"v2", 0, 0),
        Err(Error::ServerDown { .. })
    ));
    // S still holds v1. The client's retry probe brings it back after the interval: flushed.
    let back = wait_until(Duration::from_secs(10), || {
        let _ = c.get(key.as_bytes());
        reg.list_json("n")["servers"][1]["state"] == "up"
    });
    assert!(back, "the retry probe did not bring S back");
    assert_eq!(value(&mut c, &key), None, "v1 was served after S came back");
    assert!(
        reg.list_json("n")["servers"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("retry probe")
    );
}

#[test]
fn no_stale_read_after_a_rejoin_with_failover_rehash_nor_after_a_second_fault() {
    let reg = Reg::new();
    let (a, b, s) = (Memcached::start(), Memcached::start(), Memcached::start());
    reg.ok(
        "r",
        &[
            "add",
            &a.address(),
            &b.address(),
            &s.address(),
            "--retry-interval",
            "-1",
        ],
    );
    reg.ok("r", &["policy", "--failover", "rehash"]);
    let mut c = client(&reg, "r");
    let key = key_on(&mut c, &s, "item:");
    c.set(key.as_bytes(), b"v1", 0, 0).unwrap();
    reg.ok("r", &["down", &s.address()]);
    c.set(key.as_bytes(), b"v2", 0, 0).unwrap(); // to the interim owner
    let interim = c.server_for(key.as_bytes()).unwrap().to_string();
    assert_eq!(value(&mut c, &key).as_deref(), Some("v2"));
    reg.ok("r", &["up", &s.address()]); // flush, then up
    let read = value(&mut c, &key);
    assert_ne!(
        read.as_deref(),
        Some("v1"),
        "stale v1 served after the rejoin"
    );
    // The double fault: v3 is written to S; S fails again; the interim owner must not serve v2.
    c.set(key.as_bytes(), b"v3", 0, 0).unwrap();
    assert_eq!(value(&mut c, &key).as_deref(), Some("v3"));
    reg.ok("r", &["down", &s.address()]);
    assert_eq!(c.server_for(key.as_bytes()).unwrap().to_string(), interim);
    let read = value(&mut c, &key);
    assert_ne!(
        read.as_deref(),
        Some("v2"),
        "the interim owner's old copy was served"
    );
    assert_eq!(read, None);
}

/// Not a test on its own: the body of the hammering processes below (a real process each).
#[test]
fn hammer_child() {
    let Ok(spec) = std::env::var("MCSHM_HAMMER") else {
        return;
    };
    let mut parts = spec.splitn(3, '|');
    let (dir, key, secs) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let mut c = Client::for_domain(dir, &Domain::new("h").unwrap(), Timeouts::default()).unwrap();
    let end = Instant::now() + Duration::from_secs_f64(secs.parse().unwrap());
    let mut ops = 0u64;
    while Instant::now() < end && ops < 50_000_000 {
        let _ = c.get(key.as_bytes());
        ops += 1;
    }
}

fn hammer(reg: &Reg, key: &str, secs: f64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lifecycle::hammer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "MCSHM_HAMMER",
            format!("{}|{key}|{secs}", reg.dir().display()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn twenty_processes_probe_a_down_server_at_most_once_per_interval() {
    let reg = Reg::new();
    let (a, mut s) = (Memcached::start(), Memcached::start());
    reg.ok(
        "h",
        &["add", &a.address(), &s.address(), "--retry-interval", "1"],
    );
    let mut c = client(&reg, "h");
    let key = key_on(&mut c, &s, "hot:");
    reg.ok("h", &["down", &s.address(), "--retry"]);
    // Restarted so that it answers but refuses flush_all: every probe fails to rejoin it and it
    // stays down, so every connection it sees is a probe.
    s.restart_with(&["-F"]);
    let before = s.stat("total_connections");
    let started = Instant::now();
    let children: Vec<Child> = (0..20).map(|_| hammer(&reg, &key, 3.5)).collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let probes = s.stat("total_connections") - before - 1; // minus this stats connection
    println!("{probes} probe connections in {elapsed:.1} s from 20 processes");
    assert!(probes >= 1, "nobody probed the down server");
    assert!(
        probes as f64 <= elapsed.ceil() + 1.0,
        "{probes} probes in {elapsed:.1} s: more than one per interval"
    );
    assert_eq!(
        reg.list_json("h")["servers"][1]["state"],
        "down",
        "a failed flush must keep it down"
    );
}

fn spawn_watch(reg: &Reg, domain: &str, exec_log: &std::path::Path) -> Child {
    Command::new(MCADMIN)
        .arg("--dir")
        .arg(reg.dir())
        .args([
            "--domain",
            domain,
            "--json",
            "watch",
            "--interval",
            "0.2",
            "--failures",
            "2",
            "--timeout",
            "0.5",
        ])
        .arg("--exec")
        .arg(format!(
            "echo \"$MCSHM_EVENT $MCSHM_SERVER\" >> {}",
            exec_log.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[test]
fn watch_marks_a_killed_server_down_and_flushes_a_restarted_one_before_up() {
    let reg = Reg::new();
    let (a, mut s) = (Memcached::start(), Memcached::start());
    reg.ok(
        "w",
        &["add", &a.address(), &s.address(), "--retry-interval", "-1"],
    );
    let log = reg.dir().join("exec.log");
    let mut watcher = spawn_watch(&reg, "w", &log);
    let killed = Instant::now();
    s.kill();
    assert!(
        wait_until(Duration::from_secs(10), || reg.list_json("w")["servers"][1]
            ["state"]
            == "down"),
        "the watcher did not mark the killed server down"
    );
    let took = killed.elapsed();
    println!("marked down {took:?} after the kill (interval 0.2 s x 2 failures)");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let reason = reg.list_json("w")["servers"][1]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("failed probes"), "{reason}");
    // The watcher is stopped while the server restarts and gets its stale key: a probe in
    // between would flush it before the key is there, and the check below would prove nothing.
    common::stop(watcher.id());
    s.restart();
    s.raw_set("stale", "old");
    common::signal(watcher.id(), libc::SIGCONT);
    assert!(
        wait_until(Duration::from_secs(10), || reg.list_json("w")["servers"][1]
            ["state"]
            == "up"),
        "the watcher did not bring the restarted server back"
    );
    assert_eq!(s.raw_get("stale"), None, "marked up without a flush");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(watcher.id().to_string())
        .status();
    let status = watcher.wait().unwrap();
    assert!(
        status.success(),
        "watch did not stop cleanly on SIGTERM: {status}"
    );
    let mut out = String::new();
    std::io::Read::read_to_string(&mut watcher.stdout.take().unwrap(), &mut out).unwrap();
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["active", "down", "up"], "{out}");
    let exec = std::fs::read_to_string(&log).unwrap();
    assert!(
        exec.contains(&format!("down {}", s.address()))
            && exec.contains(&format!("up {}", s.address())),
        "{exec}"
    );
}

#[test]
fn a_standby_watcher_takes_over_when_the_active_one_is_killed() {
    let reg = Reg::new();
    let (a, mut s) = (Memcached::start(), Memcached::start());
    reg.ok("sb", &["add", &a.address(), &s.address()]);
    let log = reg.dir().join("exec.log");
    let mut first = spawn_watch(&reg, "sb", &log);
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("active")
    }));
    let mut second = spawn_watch(&reg, "sb", &log);
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("standby")
    }));
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("active")
            .count()
            == 2),
        "the standby did not take over"
    );
    s.kill();
    assert!(
        wait_until(Duration::from_secs(10), || reg.list_json("sb")["servers"]
            [1]["state"]
            == "down"),
        "the new active watcher does not act"
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

#[test]
fn with_two_replicas_a_killed_primary_is_served_by_the_replica() {
    let reg = Reg::new();
    let (a, b, c3) = (Memcached::start(), Memcached::start(), Memcached::start());
    let mut servers = [a, b, c3];
    let addresses: Vec<String> = servers.iter().map(Memcached::address).collect();
    let mut args = vec!["add"];
    args.extend(addresses.iter().map(String::as_str));
    reg.ok("rep", &args);
    // A high failure limit keeps the killed primary "up", so every read has to fall back.
    reg.ok(
        "rep",
        &["policy", "--replicas", "2", "--failure-limit", "255"],
    );
    let mut c = client(&reg, "rep");
    let keys: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
    for k in &keys {
        c.set(k.as_bytes(), k.as_bytes(), 0, 0).unwrap();
    }
    let total: u64 = servers.iter().map(|s| s.stat("curr_items")).sum();
    assert_eq!(total, 100, "every key on two servers");
    let primary = c.server_for(keys[0].as_bytes()).unwrap().to_string();
    let dead = addresses.iter().position(|a| *a == primary).unwrap();
    servers[dead].kill();
    for k in &keys {
        let got = c.get(k.as_bytes()).unwrap_or_else(|e| panic!("{k}: {e}"));
        assert_eq!(got.unwrap().value, k.as_bytes());
    }
    // A multi-get too: every key from one replica or the other, and no error reported.
    let mut fresh = client(&reg, "rep");
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let many = fresh.get_many(&refs, false).unwrap();
    assert_eq!(many.items.len(), keys.len());
    assert!(many.errors.is_empty(), "{:?}", many.errors);
}

#[test]
fn warm_up_copies_from_the_interim_owner_and_never_over_a_newer_write() {
    let reg = Reg::new();
    let (a, b, s) = (Memcached::start(), Memcached::start(), Memcached::start());
    reg.ok(
        "warm",
        &[
            "add",
            &a.address(),
            &b.address(),
            &s.address(),
            "--retry-interval",
            "-1",
        ],
    );
    reg.ok(
        "warm",
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
    let mut c = client(&reg, "warm");
    let old_key = key_on(&mut c, &s, "old:");
    let new_key = key_on(&mut c, &s, "new:");
    reg.ok("warm", &["down", &s.address()]);
    c.set(old_key.as_bytes(), b"written while away", 5, 0)
        .unwrap();
    c.set(new_key.as_bytes(), b"old value", 0, 0).unwrap();
    let interim_addr = c.server_for(old_key.as_bytes()).unwrap().to_string();
    reg.ok("warm", &["up", &s.address()]);
    // A key written after the rejoin: the write goes to S (and removes the interim copy).
    c.set(new_key.as_bytes(), b"new value", 0, 0).unwrap();
    let item = c
        .get(old_key.as_bytes())
        .unwrap()
        .expect("served from the interim owner");
    assert_eq!(
        (item.value.as_slice(), item.flags),
        (&b"written while away"[..], 5)
    );
    assert_eq!(
        s.raw_get(&old_key).as_deref(),
        Some("written while away"),
        "copied back to S"
    );
    assert_eq!(value(&mut c, &new_key).as_deref(), Some("new value"));
    assert_eq!(
        s.raw_get(&new_key).as_deref(),
        Some("new value"),
        "warm-up overwrote a newer write"
    );
    let interim = [&a, &b]
        .into_iter()
        .find(|m| m.address() == interim_addr)
        .unwrap();
    // Even an old copy left on the interim owner never overwrites S's newer value.
    interim.raw_set(&new_key, "stale");
    assert_eq!(value(&mut c, &new_key).as_deref(), Some("new value"));
}

#[test]
fn drain_moves_every_key_with_its_flags_and_ttl_then_removes_the_server() {
    let reg = Reg::new();
    let (a, d) = (Memcached::start(), Memcached::start());
    reg.ok("dr", &["add", &a.address(), &d.address()]);
    let mut c = client(&reg, "dr");
    let keys: Vec<String> = (0..300).map(|i| format!("d{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        c.set(
            k.as_bytes(),
            format!("value {i}").as_bytes(),
            i as u32,
            if i % 2 == 0 { 0 } else { 3000 },
        )
        .unwrap();
    }
    let on_d = d.stat("curr_items");
    assert!(on_d > 50);
    let run = reg.run("dr", &["--json", "drain", &d.address(), "--rate", "0"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let summary: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(summary["moved"], on_d);
    assert_eq!(d.stat("curr_items"), 0, "keys left on the drained server");
    assert_eq!(common::addresses(&reg.list_json("dr")), [a.address()]);
    for (i, k) in keys.iter().enumerate() {
        let item = c
            .get(k.as_bytes())
            .unwrap()
            .unwrap_or_else(|| panic!("{k} lost"));
        assert_eq!(
            (item.value, item.flags),
            (format!("value {i}").into_bytes(), i as u32)
        );
    }
    // TTLs survived the move: a key set with 3000 s still expires, one set with 0 never does.
    let mut reader = Client::for_servers(
        &[libmcshm::Address::parse(&a.address()).unwrap()],
        Timeouts::default(),
    )
    .unwrap();
    assert!(reader.get(b"d1").unwrap().is_some());
    let ttl_of = |key: &str| {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", a.port)).unwrap();
        write!(s, "mg {key} t\r\n").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    };
    let odd = ttl_of("d1");
    let ttl: i64 = odd
        .split(' ')
        .find_map(|f| f.trim().strip_prefix('t'))
        .unwrap()
        .parse()
        .unwrap();
    assert!((2900..=3000).contains(&ttl), "{odd}");
    assert!(ttl_of("d0").contains("t-1"), "{}", ttl_of("d0"));
}

#[test]
fn clients_lists_processes_using_the_domain_and_drops_dead_ones() {
    let reg = Reg::new();
    let a = Memcached::start();
    reg.ok("cl", &["add", &a.address()]);
    let mut c = client(&reg, "cl");
    c.set(b"k", b"v", 0, 0).unwrap();
    let listed: serde_json::Value =
        serde_json::from_str(&reg.ok("cl", &["--json", "clients"])).unwrap();
    let me = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pid"] == std::process::id())
        .expect("this process is listed");
    assert_eq!(me["version"], 1);
    assert!(me["last_used_ms"].as_u64().unwrap() > 0);
    // A process that routes on several threads (three clients here, mcproxy's workers) is
    // listed once.
    let (mut c2, c3) = (client(&reg, "cl"), client(&reg, "cl"));
    c2.set(b"k2", b"v", 0, 0).unwrap();
    let listed: serde_json::Value =
        serde_json::from_str(&reg.ok("cl", &["--json", "clients"])).unwrap();
    let mine = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["pid"] == std::process::id())
        .count();
    assert_eq!(mine, 1, "{listed}");
    drop((c2, c3));
    // A process killed with its domain open is dropped from the list.
    let mut child = hammer_h(&reg);
    let pid = child.id();
    assert!(wait_until(Duration::from_secs(10), || reg
        .ok("h", &["--json", "clients"])
        .contains(&format!("\"pid\":{pid}"))));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !reg.ok("h", &["--json", "clients"])
            .contains(&format!("\"pid\":{pid}"))
    );
    drop(c);
    let listed = reg.ok("cl", &["--json", "clients"]);
    assert!(
        !listed.contains(&format!("\"pid\":{}", std::process::id())),
        "{listed}"
    );
}

/// A hammering process on domain `h` (created here) that runs until killed.
fn hammer_h(reg: &Reg) -> Child {
    reg.ok(
        "h",
        &["add", "127.0.0.1:1", "--down", "--retry-interval", "-1"],
    );
    hammer(reg, "somekey", 60.0)
}

#[test]
fn an_interrupted_drain_leaves_the_server_draining_clients_move_keys_and_up_cancels() {
    let reg = Reg::new();
    let (a, d) = (Memcached::start(), Memcached::start());
    reg.ok("di", &["add", &a.address(), &d.address()]);
    let mut c = client(&reg, "di");
    for i in 0..400 {
        c.set(format!("x{i}").as_bytes(), b"v", 0, 0).unwrap();
    }
    let on_d = d.stat("curr_items");
    let drain = reg
        .cmd("di", &["drain", &d.address(), "--rate", "20"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || d.stat("curr_items") < on_d),
        "the drain moved nothing"
    );
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(drain.id().to_string())
        .status();
    let out = drain.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("still draining"));
    assert_eq!(reg.list_json("di")["servers"][1]["state"], "draining");
    // While draining, a client reading a key still on D gets it, and moves it to A.
    let left = (0..400)
        .map(|i| format!("x{i}"))
        .find(|k| d.raw_get(k).is_some())
        .unwrap();
    assert_eq!(value(&mut c, &left).as_deref(), Some("v"));
    assert_eq!(
        d.raw_get(&left),
        None,
        "not deleted from the draining server"
    );
    assert_eq!(
        a.raw_get(&left).as_deref(),
        Some("v"),
        "not moved to the new owner"
    );
    // `mcadmin up` cancels the drain.
    reg.ok("di", &["up", &d.address()]);
    assert_eq!(reg.list_json("di")["servers"][1]["state"], "up");
}

#[test]
fn one_watcher_watches_several_domains() {
    let reg = Reg::new();
    let (mut x, mut y) = (Memcached::start(), Memcached::start());
    reg.ok("one", &["add", &x.address()]);
    reg.ok("two", &["add", &y.address()]);
    let mut watcher = Command::new(MCADMIN)
        .arg("--dir")
        .arg(reg.dir())
        .args([
            "--domain",
            "one",
            "--domain",
            "two",
            "watch",
            "--interval",
            "0.2",
            "--failures",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    x.kill();
    y.kill();
    let both = wait_until(Duration::from_secs(10), || {
        reg.list_json("one")["servers"][0]["state"] == "down"
            && reg.list_json("two")["servers"][0]["state"] == "down"
    });
    watcher.kill().unwrap();
    watcher.wait().unwrap();
    assert!(both, "a domain was not watched");
}

/// Not a test on its own: a process that opens domain `many` as a client and holds it until
/// its stdin closes.
#[test]
fn holder_child() {
    let Ok(dir) = std::env::var("MCSHM_HOLD") else {
        return;
    };
    let mut c =
        Client::for_domain(&dir, &Domain::new("many").unwrap(), Timeouts::default()).unwrap();
    let _ = c.snapshot().unwrap();
    println!("ready");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest);
}

/// 300 client processes: the file has 256 records, and `clients` still lists all 300 (the
/// others found by their mapping of the file), saying how many have no record.
#[test]
fn clients_lists_all_of_300_processes() {
    use std::io::BufRead;
    let reg = Reg::new();
    reg.ok("many", &["add", "--no-flush", "127.0.0.1:1"]);
    let mut holders: Vec<Child> = (0..300)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "lifecycle::holder_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("MCSHM_HOLD", reg.dir())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for holder in &mut holders {
        let out = holder.stdout.as_mut().unwrap();
        let ready = std::io::BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            // (libtest prints "test holder_child ... " before the test's own output.)
            .any(|line| line.ends_with("ready"));
        assert!(ready, "a holder did not open the domain");
    }
    let listed: serde_json::Value =
        serde_json::from_str(&reg.ok("many", &["--json", "clients"])).unwrap();
    let listed = listed.as_array().unwrap();
    let pids: std::collections::HashSet<u64> =
        listed.iter().map(|c| c["pid"].as_u64().unwrap()).collect();
    for holder in &holders {
        assert!(
            pids.contains(&u64::from(holder.id())),
            "holder {} missing",
            holder.id()
        );
    }
    let recorded = listed.iter().filter(|c| c["recorded"] == true).count();
    assert_eq!(recorded, 256, "every record in use");
    let text = reg.ok("many", &["clients"]);
    assert!(
        text.contains("(44 without a clients record"),
        "{}",
        text.lines().last().unwrap()
    );
    for mut holder in holders {
        drop(holder.stdin.take());
        let _ = holder.wait();
    }
}
