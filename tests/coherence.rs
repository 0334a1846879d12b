//! No stale read across any sequence of changes (see `libmcshm::coherence`): the cases that
//! served old values before, each on its own, then a randomized history checker that drives
//! real memcached servers, mcadmin, mclient, the library and pymemcache through mcproxy through
//! random sequences of changes, and checks every read against a model of the last
//! acknowledged writes.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::memcached::Memcached;
use common::proxy::Proxy;
use common::{Reg, wait_until};

const MCLIENT: &str = env!("CARGO_BIN_EXE_mclient");

/// `mclient --dir DIR --domain D ARGS…`: (exit code, stdout).
fn mclient(reg: &Reg, domain: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(MCLIENT)
        .arg("--dir")
        .arg(reg.dir())
        .args([
            "--domain",
            domain,
            "--timeout",
            "0.5",
            "--connect-timeout",
            "0.5",
        ])
        .args(args)
        .env_remove("MEMCACHED_SERVERS")
        .stdin(Stdio::null())
        .output()
        .expect("run mclient");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn set(reg: &Reg, domain: &str, key: &str, value: &str) {
    let (code, _) = mclient(reg, domain, &["set", "--", key, value]);
    assert_eq!(code, 0, "mclient set {key} {value}");
}

/// `mclient get`: the value, or `None` on a miss.
fn get(reg: &Reg, domain: &str, key: &str) -> Option<String> {
    match mclient(reg, domain, &["get", "--", key]) {
        (0, value) => Some(value),
        (1, _) => None,
        (code, _) => panic!("mclient get {key}: exit {code}"),
    }
}

/// The server `mclient which` names for `key`.
fn owner(reg: &Reg, domain: &str, key: &str) -> String {
    let (code, out) = mclient(reg, domain, &["which", "--", key]);
    assert_eq!(code, 0);
    out.split_whitespace().last().unwrap().to_string()
}

/// A key that routes to `server` in `domain` now.
fn key_on(reg: &Reg, domain: &str, server: &Memcached) -> String {
    let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    let mut args = vec!["which", "--"];
    args.extend(keys.iter().map(String::as_str));
    let (_, out) = mclient(reg, domain, &args);
    out.lines()
        .find(|l| l.ends_with(&server.address()))
        .and_then(|l| l.split_whitespace().next())
        .expect("a key on the server")
        .to_string()
}

fn version(reg: &Reg, domain: &str) -> u64 {
    reg.list_json(domain)["version"].as_u64().unwrap()
}

/// Case 1: `add B` moves keys from A, which keeps its copies; a write goes to B; `delete B`
/// gives the keys back to A, whose copy must not be served.
#[test]
fn an_orphan_left_by_add_is_not_served_after_the_new_server_is_deleted() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok("d", &["add", &a.address()]);
    reg.ok("d", &["add", &b.address()]);
    let k = key_on(&reg, "d", &b);
    reg.ok("d", &["delete", &b.address()]);
    set(&reg, "d", &k, "v1"); // on A
    reg.ok("d", &["add", &b.address()]);
    assert_eq!(owner(&reg, "d", &k), b.address());
    set(&reg, "d", &k, "v2"); // on B
    reg.ok("d", &["delete", &b.address()]);
    assert_eq!(get(&reg, "d", &k), None, "A's v1 was superseded by v2");
}

/// Case 2: a drain after a re-add must not take the old copy on the new owner for a newer
/// write.
#[test]
fn a_drain_after_a_re_add_keeps_the_newest_write() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok("d", &["add", &a.address(), &b.address()]);
    let k = key_on(&reg, "d", &b);
    set(&reg, "d", &k, "v1");
    reg.ok("d", &["drain", &b.address(), "--rate", "0"]);
    assert_eq!(a.raw_get(&k).as_deref(), Some("v1"), "moved to A");
    reg.ok("d", &["add", &b.address()]);
    set(&reg, "d", &k, "v2");
    let out = reg.ok("d", &["--json", "drain", &b.address(), "--rate", "0"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["moved"], 1, "{out}");
    assert_eq!(get(&reg, "d", &k).as_deref(), Some("v2"));
}

/// Case 3: a delete acknowledged through mcproxy stays deleted when the key's owner changes
/// back.
#[test]
fn a_key_deleted_through_mcproxy_does_not_come_back() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok("d", &["add", &a.address(), &b.address()]);
    let k = key_on(&reg, "d", &b);
    reg.ok("d", &["delete", &b.address()]);
    let proxy = Proxy::start(&reg, "d", &[]);
    let mut w = proxy.connect();
    assert_eq!(w.ask(&format!("set {k} 0 0 2\r\nv1\r\n")), "STORED\r\n");
    reg.ok("d", &["add", &b.address()]);
    assert_eq!(
        w.ask(&format!("delete {k}\r\n")),
        "NOT_FOUND\r\n",
        "B has none"
    );
    reg.ok("d", &["delete", &b.address()]);
    assert_eq!(w.ask(&format!("get {k}\r\n")), "END\r\n", "A's v1 is gone");
}

/// Case 4: `load` of a list that has a down server up flushes it first, as `up` does; and
/// `load --initial` (the watch unit's boot-time replay) keeps the changes made since.
#[test]
fn load_brings_a_server_back_through_its_flush() {
    let (s, t) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok("d", &["add", &s.address(), &t.address()]);
    let k = key_on(&reg, "d", &s);
    set(&reg, "d", &k, "v1");
    let list = reg.ok("d", &["dump"]);
    reg.ok("d", &["down", &s.address()]);
    assert_eq!(
        s.raw_get(&k).as_deref(),
        Some("v1"),
        "S keeps its old value"
    );
    let file = reg.dir().join("d.list");
    std::fs::write(&file, &list).unwrap();
    reg.ok("d", &["load", file.to_str().unwrap()]);
    assert_eq!(s.raw_get(&k), None, "flushed before it came back up");
    assert_eq!(reg.list_json("d")["servers"][0]["state"], "up");

    reg.ok("d", &["down", &t.address()]);
    let before = version(&reg, "d");
    reg.ok("d", &["load", "--initial", file.to_str().unwrap()]);
    assert_eq!(
        version(&reg, "d"),
        before,
        "an existing domain is left as it is"
    );
    assert_eq!(reg.list_json("d")["servers"][1]["state"], "down");
}

/// Case 5: an operator's down holds until an operator's up; a down after failures is retried.
#[test]
fn an_operators_down_is_not_undone_by_the_retry_probe() {
    let s = Memcached::start();
    let reg = Reg::new();
    reg.ok("d", &["add", &s.address(), "--retry-interval", "1"]);
    let run = reg.run("d", &["down", &s.address(), "--reason", "maintenance"]);
    assert_eq!(run.code(), 0);
    assert!(
        run.stderr().contains("held down until `mcadmin up`"),
        "{}",
        run.stderr()
    );
    s.raw_set("kept", "x");
    // Clients read on, past two retry intervals: no probe brings it back or flushes it.
    let until = Instant::now() + Duration::from_millis(2_500);
    while Instant::now() < until {
        assert_eq!(get(&reg, "d", "kept"), None);
    }
    let list = reg.list_json("d");
    assert_eq!(list["servers"][0]["state"], "down");
    assert_eq!(list["servers"][0]["down_by"], "operator");
    assert_eq!(s.raw_get("kept").as_deref(), Some("x"), "not flushed");
    assert!(reg.ok("d", &["list"]).contains("down (operator)"));

    // The same server marked down after failures (as a list says it) is retried and flushed.
    let file = reg.dir().join("d.list");
    std::fs::write(
        &file,
        format!(
            "{} retry-interval=1 state=down down-by=failures\n",
            s.address()
        ),
    )
    .unwrap();
    reg.ok("d", &["load", file.to_str().unwrap()]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let _ = get(&reg, "d", "kept");
            reg.list_json("d")["servers"][0]["state"] == "up"
        }),
        "a failure down is retried"
    );
    assert_eq!(s.raw_get("kept"), None, "flushed by its rejoin");
}

/// Case 6: `up A B` brings both back in one version.
#[test]
fn up_of_several_servers_commits_one_version() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok("d", &["add", &a.address(), &b.address()]);
    reg.ok("d", &["down", &a.address(), &b.address()]);
    let before = version(&reg, "d");
    reg.ok("d", &["up", &a.address(), &b.address()]);
    assert_eq!(version(&reg, "d"), before + 1);
    let list = reg.list_json("d");
    assert_eq!(list["servers"][0]["state"], "up");
    assert_eq!(list["servers"][1]["state"], "up");
}

/// A server that cannot be flushed is not added; `--no-flush` and `--down` say why.
#[test]
fn add_flushes_a_new_server_or_changes_nothing() {
    let s = Memcached::start();
    let reg = Reg::new();
    s.raw_set("old", "x");
    reg.ok("d", &["add", &s.address()]);
    assert_eq!(s.raw_get("old"), None, "flushed before it joined");
    let run = reg.run("d", &["add", "127.0.0.1:1"]);
    assert_eq!(run.code(), 5, "{}", run.stderr());
    assert!(run.stderr().contains("nothing changed"), "{}", run.stderr());
    assert_eq!(reg.list_json("d")["servers"].as_array().unwrap().len(), 1);
    reg.ok("d", &["add", "127.0.0.1:1", "--down"]);
}
