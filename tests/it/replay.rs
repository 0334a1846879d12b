//! The `replay` rejoin policy (issue 31): a server that blipped keeps its cache. Real
//! memcached servers, a real freeze (SIGSTOP) long enough to mark the server down, writes and
//! deletes during the pause, and the retry probe bringing it back: the keys nobody touched are
//! still served, every key written or deleted during the pause reads its newest value or a
//! miss.

use std::time::{Duration, Instant};

use crate::common::memcached::Memcached;
use crate::common::proxy::Proxy;
use crate::common::{Reg, wait_until};

/// Who writes during the pause.
#[derive(Clone, Copy, Debug)]
enum Writer {
    Library,
    Mclient,
    Mcproxy,
}
use libmcshm::{Client, Domain, State, Timeouts};

const KEYS: usize = 20_000;

fn state_of(reg: &Reg, address: &str) -> String {
    let list = reg.list_json("app");
    list["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["address"] == address)
        .map(|s| s["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// The blip under `failover`: 20 000 keys, the server of half of them frozen for 3 s while a
/// client reads (two timeouts mark it down), 300 of its keys written and 100 deleted during
/// the pause, then the retry probe brings it back.
fn blip(failover: &str, writer: Writer) {
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok(
        "app",
        &["add", &a.address(), &b.address(), "--retry-interval", "1"],
    );
    reg.ok(
        "app",
        &["policy", "--rejoin", "replay", "--failover", failover],
    );
    let domain = Domain::new("app").unwrap();
    let timeouts = Timeouts {
        connect: Duration::from_millis(300),
        io: Duration::from_millis(300),
    };
    let mut client = Client::for_domain(reg.dir(), &domain, timeouts).unwrap();
    let keys: Vec<String> = (0..KEYS).map(|n| format!("blip:{n}")).collect();
    // Loaded with the default timeouts: one 300 ms stall of a busy machine would fail a set of
    // the load (or mark b down before the pause), which is not what the test is about.
    let mut loader = Client::for_domain(reg.dir(), &domain, Timeouts::default()).unwrap();
    for key in &keys {
        loader.set(key.as_bytes(), b"original", 0, 0).unwrap();
    }
    let on_b: Vec<&String> = keys
        .iter()
        .filter(|k| client.server_for(k.as_bytes()).unwrap().to_string() == b.address())
        .collect();
    assert!(on_b.len() > KEYS / 4, "b holds a share");

    // The pause: reads until b is marked down, then the writes and deletes of the pause.
    b.freeze();
    let down = wait_until(Duration::from_secs(10), || {
        let _ = client.get(on_b[0].as_bytes());
        state_of(&reg, &b.address()) == "down"
    });
    assert!(down, "two timeouts mark b down");
    let (written, deleted) = (&on_b[..300], &on_b[300..400]);
    match writer {
        Writer::Library => {
            for key in written {
                let _ = client.set(key.as_bytes(), b"newer", 0, 0);
            }
            for key in deleted {
                let _ = client.delete(key.as_bytes());
            }
        }
        Writer::Mclient => {
            let mclient = |args: &[&str]| {
                std::process::Command::new(env!("CARGO_BIN_EXE_mclient"))
                    .arg("--dir")
                    .arg(reg.dir())
                    .args(["--domain", "app", "--timeout", "0.3"])
                    .args(args)
                    .output()
                    .expect("run mclient")
            };
            for key in written {
                mclient(&["set", key, "newer"]);
            }
            for key in deleted {
                mclient(&["delete", key]);
            }
        }
        Writer::Mcproxy => {
            let proxy = Proxy::start(&reg, "app", &["--timeout", "300"]);
            let mut w = proxy.connect();
            for key in written {
                w.ask(&format!("set {key} 0 0 5\r\nnewer\r\n"));
            }
            for key in deleted {
                w.ask(&format!("delete {key}\r\n"));
            }
        }
    }
    let paused = Instant::now();
    while paused.elapsed() < Duration::from_secs(3) {
        let _ = client.get(on_b[1].as_bytes());
        std::thread::sleep(Duration::from_millis(50));
    }
    b.signal(libc::SIGCONT);

    // The retry probe (interval 1 s) brings it back, through the replay.
    let back = wait_until(Duration::from_secs(15), || {
        let _ = client.get(on_b[0].as_bytes());
        state_of(&reg, &b.address()) == "up"
    });
    assert!(back, "the retry probe brings b back");
    let list = reg.list_json("app");
    let reason = list["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["address"] == b.address())
        .unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("keys it missed"),
        "replayed, not flushed: {reason}"
    );

    // Untouched keys of b: still there.
    let untouched = &on_b[400..];
    let hits = untouched
        .iter()
        .filter(|k| b.raw_get(k).as_deref() == Some("original"))
        .count();
    assert!(
        hits * 100 >= untouched.len() * 99,
        "{hits} of {} untouched keys kept on b",
        untouched.len()
    );
    // Touched keys: the newest value or a miss, through the client (which routes to b again).
    for key in written {
        let value = client.get(key.as_bytes()).unwrap().map(|i| i.value);
        assert!(
            value.is_none() || value.as_deref() == Some(b"newer".as_slice()),
            "{key}: {value:?} after it was written during the pause"
        );
    }
    for key in deleted {
        let value = client.get(key.as_bytes()).unwrap();
        assert!(value.is_none(), "{key} was deleted during the pause");
    }
    assert_eq!(
        client
            .snapshot()
            .unwrap()
            .servers
            .iter()
            .filter(|s| s.state == State::Up)
            .count(),
        2
    );
    eprintln!(
        "{failover}, writes through {writer:?}: {hits} of {} untouched keys of the paused \
         server kept; {reason}",
        untouched.len()
    );
}

#[test]
fn a_blip_under_rehash_costs_no_cache_and_serves_nothing_stale() {
    blip("rehash", Writer::Library);
}

#[test]
fn a_blip_under_none_costs_no_cache_and_serves_nothing_stale() {
    blip("none", Writer::Library);
}

#[test]
fn writes_through_mclient_during_a_blip_are_replayed() {
    blip("rehash", Writer::Mclient);
}

#[test]
fn writes_through_mcproxy_during_a_blip_are_replayed() {
    blip("none", Writer::Mcproxy);
}

/// A log that began after the server went down cannot say what it missed: the server is
/// flushed, as under `flush`.
#[test]
fn a_server_down_before_the_log_began_is_flushed() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok("app", &["add", &a.address(), &b.address()]);
    b.raw_set("kept", "old");
    reg.ok("app", &["down", &b.address(), "--retry"]);
    reg.ok("app", &["policy", "--rejoin", "replay"]);
    reg.ok("app", &["up", &b.address()]);
    assert_eq!(state_of(&reg, &b.address()), "up");
    assert_eq!(b.raw_get("kept"), None, "flushed");
    let list = reg.list_json("app");
    let reason = list["servers"][1]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("flush_all"), "{reason}");
}

/// A log that overflowed no longer says what the server missed: `list` says so, and the
/// server is flushed when it comes back.
#[test]
fn a_server_whose_log_overflowed_is_flushed() {
    use libmcshm::registry::{Invalidations, LogCapacity};
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok("app", &["add", &a.address(), &b.address()]);
    reg.ok(
        "app",
        &["policy", "--rejoin", "replay", "--failover", "rehash"],
    );
    let domain = Domain::new("app").unwrap();
    // A small log (one page per server: about 200 keys), made before anything else opens it.
    let small = LogCapacity {
        sections: 4,
        section_bytes: 4096,
    };
    Invalidations::open_or_create(reg.dir(), &domain, small).unwrap();
    b.raw_set("kept", "old");
    reg.ok("app", &["down", &b.address(), "--retry"]);
    let mut client = Client::for_domain(reg.dir(), &domain, Timeouts::default()).unwrap();
    for n in 0..2000 {
        client.set(format!("k{n}").as_bytes(), b"v", 0, 0).unwrap();
    }
    let list = reg.list_json("app");
    assert_eq!(list["servers"][1]["missed_overflowed"], true, "{list}");
    let text = reg.ok("app", &["list"]);
    assert!(text.contains("its log overflowed"), "{text}");
    reg.ok("app", &["up", &b.address()]);
    assert_eq!(b.raw_get("kept"), None, "flushed");
    let reason = reg.list_json("app")["servers"][1]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("flush_all"), "{reason}");
}

/// Servers `a` and `b` in domain `app` under `replay` and `rehash`, and 200 keys `k0`…
/// set through a client of it.
fn two_servers_under_replay(a: &Memcached, b: &Memcached) -> (Reg, Domain, Client, Vec<String>) {
    let reg = Reg::new();
    reg.ok("app", &["add", &a.address(), &b.address()]);
    reg.ok(
        "app",
        &["policy", "--rejoin", "replay", "--failover", "rehash"],
    );
    let domain = Domain::new("app").unwrap();
    let mut client = Client::for_domain(reg.dir(), &domain, Timeouts::default()).unwrap();
    let keys: Vec<String> = (0..200).map(|n| format!("k{n}")).collect();
    for key in &keys {
        client.set(key.as_bytes(), b"old", 0, 0).unwrap();
    }
    (reg, domain, client, keys)
}

/// `list` shows what a down server missed under `replay`, and `up` deletes exactly that.
#[test]
fn list_shows_what_a_down_server_missed_and_up_replays_it() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let (reg, _, mut client, keys) = two_servers_under_replay(&a, &b);
    reg.ok("app", &["down", &b.address(), "--retry"]);
    let on_b: Vec<&String> = keys.iter().filter(|k| b.raw_get(k).is_some()).collect();
    for key in &on_b[..10] {
        client.set(key.as_bytes(), b"new", 0, 0).unwrap();
    }
    let list = reg.list_json("app");
    assert_eq!(list["servers"][1]["missed_keys"], 10, "{list}");
    let text = reg.ok("app", &["list"]);
    assert!(text.contains("missed 10 writes"), "{text}");
    let up = reg.run("app", &["up", &b.address()]);
    assert_eq!(up.code(), 0, "{}", up.stderr());
    assert!(
        up.stderr()
            .contains("rejoined after deleting the 10 keys it missed"),
        "up says how it came back: {}",
        up.stderr()
    );
    for key in &on_b[..10] {
        assert_eq!(b.raw_get(key), None, "{key} missed: deleted");
    }
    for key in &on_b[10..] {
        assert_eq!(b.raw_get(key).as_deref(), Some("old"), "{key} kept");
    }
    let after = reg.list_json("app");
    assert!(
        after["servers"][1]["missed_keys"].is_null(),
        "up: no log shown"
    );
    assert!(
        after["servers"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("deleting the 10 keys it missed"),
        "{after}"
    );
}

/// A server that restarted while it was down holds nothing it missed: its rejoin sends no
/// deletes, and the reason says why (memcached's `stats`: it started after it went down).
#[test]
fn a_server_restarted_while_away_rejoins_without_its_deletes() {
    let (a, mut b) = (Memcached::start(), Memcached::start());
    let (reg, _, mut client, keys) = two_servers_under_replay(&a, &b);
    reg.ok("app", &["down", &b.address(), "--retry"]);
    let on_b: Vec<&String> = keys.iter().filter(|k| b.raw_get(k).is_some()).collect();
    for key in &on_b[..10] {
        client.set(key.as_bytes(), b"new", 0, 0).unwrap();
    }
    assert_eq!(reg.list_json("app")["servers"][1]["missed_keys"], 10);
    // Restarted well after it went down (memcached's clock has whole seconds).
    std::thread::sleep(Duration::from_millis(3_500));
    b.restart();
    let deletes_before = b.stat("delete_misses") + b.stat("delete_hits");
    reg.ok("app", &["up", &b.address()]);
    let reason = reg.list_json("app")["servers"][1]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("restarted while away"), "{reason}");
    assert_eq!(
        b.stat("delete_misses") + b.stat("delete_hits"),
        deletes_before,
        "no delete sent to an empty server"
    );
    // A server that did not restart still gets its deletes (the blip tests): here, a second
    // down and up without a restart deletes what it missed.
    reg.ok("app", &["down", &b.address(), "--retry"]);
    client.set(on_b[0].as_bytes(), b"newer", 0, 0).unwrap();
    reg.ok("app", &["up", &b.address()]);
    let reason = reg.list_json("app")["servers"][1]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("deleting the 1 keys"), "{reason}");
}

/// `load` of a list that has a down server up again replays what it missed, as `up` does: the
/// keys written meanwhile are deleted on it, the others kept.
#[test]
fn load_brings_a_server_back_with_the_keys_it_missed_deleted() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let (reg, domain, mut client, keys) = two_servers_under_replay(&a, &b);
    let list = reg.ok("app", &["dump"]);
    reg.ok("app", &["down", &b.address(), "--retry"]);
    let on_b: Vec<&String> = keys.iter().filter(|k| b.raw_get(k).is_some()).collect();
    for key in &on_b[..10] {
        client.set(key.as_bytes(), b"new", 0, 0).unwrap();
    }
    let file = reg.dir().join("app.list");
    std::fs::write(&file, list).unwrap();
    reg.ok("app", &["load", file.to_str().unwrap()]);
    assert_eq!(state_of(&reg, &b.address()), "up");
    let reason = reg.list_json("app")["servers"][1]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("deleting the 10 keys"), "{reason}");
    for key in &on_b[..10] {
        assert_eq!(b.raw_get(key), None, "{key} deleted on b");
    }
    let kept = on_b[10..].iter().filter(|k| b.raw_get(k).is_some()).count();
    assert_eq!(kept, on_b.len() - 10, "the untouched keys of b kept");
    let log = libmcshm::registry::Invalidations::open(reg.dir(), &domain)
        .unwrap()
        .unwrap();
    assert!(log.servers().is_empty(), "the log is cleared");
}

/// Not a test on its own: a process that has the domain's table open read-only (as a C
/// program that only looks servers up and writes through its own client) until `MCSHM_READER`
/// (`dir|file`) `file` is removed (at most 60 s).
#[test]
fn read_only_reader_child() {
    let Ok(spec) = std::env::var("MCSHM_READER") else {
        return;
    };
    let (dir, file) = spec.split_once('|').unwrap();
    let _reader = libmcshm::registry::Registry::open(dir, &Domain::new("app").unwrap()).unwrap();
    std::fs::write(file, "").unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while std::path::Path::new(file).exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process that maps the table read-only routes writes it cannot log: while one runs, the
/// log cannot vouch, and `up` flushes, naming it.
#[test]
fn a_process_that_cannot_log_makes_the_rejoin_flush() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let (reg, _, mut client, keys) = two_servers_under_replay(&a, &b);
    let on_b: Vec<&String> = keys.iter().filter(|k| b.raw_get(k).is_some()).collect();
    reg.ok("app", &["down", &b.address(), "--retry"]);
    client.set(on_b[0].as_bytes(), b"new", 0, 0).unwrap();
    let holding = reg.dir().join("reader.holding");
    let spec = format!("{}|{}", reg.dir().display(), holding.display());
    let mut reader = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "replay::read_only_reader_child",
            "--test-threads=1",
        ])
        .env("MCSHM_READER", spec)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || holding.exists()));
    reg.ok("app", &["up", &b.address()]);
    std::fs::remove_file(&holding).unwrap();
    reader.wait().unwrap();
    let reason = reg.list_json("app")["servers"][1]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("flush_all") && reason.contains("has the table open read-only"),
        "{reason}"
    );
    let kept = on_b.iter().filter(|k| b.raw_get(k).is_some()).count();
    assert_eq!(kept, 0, "flushed");
}

/// A server that never comes back and is deleted: what it missed goes with it.
#[test]
fn a_deleted_servers_log_goes_with_it() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let (reg, domain, mut client, keys) = two_servers_under_replay(&a, &b);
    reg.ok("app", &["down", &b.address(), "--retry"]);
    for key in &keys[..50] {
        client.set(key.as_bytes(), b"new", 0, 0).unwrap();
    }
    let log = libmcshm::registry::Invalidations::open(reg.dir(), &domain)
        .unwrap()
        .unwrap();
    assert_eq!(log.servers().len(), 1, "b's log holds what it missed");
    reg.ok("app", &["delete", &b.address()]);
    assert!(log.servers().is_empty(), "{:?}", log.servers());
}
