//! Clients nobody here wrote, through mcproxy, used as they are: PHP's PECL memcache (the seed
//! threads' own extension, Debian `php-memcache`), php-memcached (libmemcached underneath,
//! `php-memcached`) and Python's pymemcache (`python3-pymemcache`). Each knows one server —
//! the proxy — and nothing of failover; the proxy gives them the shared table's.

use std::io::{BufRead, BufReader};
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

/// Runs a client program to completion (bounded by the clients' own timeouts), returning
/// stdout; fails the test with its stderr when it exits non-zero.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): apt-get install -y php-cli php-memcache php-memcached python3-pymemcache")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Debian's python3, where python3-pymemcache is installed (a python3 earlier on PATH, e.g.
/// pyenv's, would not see it).
const PYTHON: &str = "/usr/bin/python3";

/// PECL memcache code run against the proxy at `port`, with `$m` connected.
fn pecl(port: u16, code: &str) -> String {
    let program = format!("$m = new Memcache(); $m->addServer('127.0.0.1', {port}); {code}");
    run("php", &["-r", &program])
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn php_memcache_php_memcached_and_pymemcache_work_through_the_proxy() {
    let servers = [Memcached::start(), Memcached::start(), Memcached::start()];
    let reg = Reg::new();
    let addresses: Vec<String> = servers.iter().map(Memcached::address).collect();
    let mut add = vec!["add"];
    add.extend(addresses.iter().map(String::as_str));
    reg.ok("app", &add);
    let proxy = Proxy::start(&reg, "app", &[]);
    let port = port_of(&proxy.address);
    let port_text = port.to_string();
    let pecl_script = script("pecl_memcache.php");
    let memcached_script = script("php_memcached.php");
    let python_script = script("pymemcache_basic.py");
    assert_eq!(
        run("php", &[pecl_script.to_str().unwrap(), &port_text]),
        "ok\n"
    );
    assert_eq!(
        run("php", &[memcached_script.to_str().unwrap(), &port_text]),
        "ok\n"
    );
    assert_eq!(
        run(PYTHON, &[python_script.to_str().unwrap(), &port_text]),
        "ok\n"
    );
    // What they stored is where every libmcshm process on the host looks for it.
    for (key, value) in [
        ("php:a", "gamma"),
        ("pmd:a", "gamma"),
        ("py:b", "beta"),
        ("php:n", "12"),
    ] {
        let owner = owner_port(&reg, key);
        for server in &servers {
            let want = (server.port == owner).then(|| value.to_string());
            assert_eq!(server.raw_get(key), want, "{key} on {}", server.address());
        }
    }
}

/// Seed 000: a server fails, its keys are written elsewhere meanwhile, and it comes back with
/// its old values. PHP pages (PECL memcache, one server configured: the proxy) never read
/// the old value: the server is flushed before it rejoins.
#[test]
fn seed_000_a_server_fails_and_returns_without_stale_reads_for_php() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok(
        "app",
        &["add", &a.address(), &b.address(), "--retry-interval", "1"],
    );
    reg.ok(
        "app",
        &["policy", "--failover", "rehash", "--failure-limit", "1"],
    );
    let proxy = Proxy::start(&reg, "app", &["--timeout", "300"]);
    let port = port_of(&proxy.address);
    let key = (0..100)
        .map(|n| format!("session:{n}"))
        .find(|k| owner_port(&reg, k) == a.port)
        .unwrap();

    assert_eq!(
        pecl(port, &format!("var_export($m->set('{key}', 'v1', 0, 0));")),
        "true"
    );
    a.freeze();
    // The page that hits the frozen server gets a miss (the proxy's SERVER_ERROR), once.
    assert_eq!(
        pecl(port, &format!("var_export($m->get('{key}'));")),
        "false"
    );
    let down = wait_until(Duration::from_secs(10), || {
        reg.ok("app", &["list"])
            .lines()
            .any(|l| l.contains(&a.address()) && l.contains("down"))
    });
    assert!(
        down,
        "the proxy marked {} down for every process",
        a.address()
    );
    // Written while a is away: rehash sends it to b.
    assert_eq!(
        pecl(port, &format!("var_export($m->set('{key}', 'v2', 0, 0));")),
        "true"
    );
    assert_eq!(b.raw_get(&key).as_deref(), Some("v2"));
    a.signal(libc::SIGCONT);
    assert_eq!(
        a.raw_get(&key).as_deref(),
        Some("v1"),
        "a came back with the old value"
    );

    // Pages keep reading while the proxy's retry probe brings a back (flush first).
    let reader = format!(
        "for ($i = 0; $i < 200; $i++) {{ if ($m->get('{key}') === 'v1') {{ echo 'STALE'; exit(1); }} }} echo 'ok';"
    );
    let rejoined = wait_until(Duration::from_secs(20), || {
        assert_eq!(pecl(port, &reader), "ok");
        reg.ok("app", &["list"]).lines().any(|l| {
            l.contains(&a.address()) && l.contains(" up") && l.contains("rejoined after flush_all")
        })
    });
    assert!(rejoined, "a rejoined: {}", reg.ok("app", &["list"]));
    assert_eq!(a.raw_get(&key), None, "flushed before it rejoined");
    assert_eq!(
        pecl(port, &format!("var_export($m->get('{key}'));")),
        "false"
    );
}

/// pymemcache writing and reading 50 keys in a loop while one of two servers is SIGKILLed:
/// no stale read, a handful of errors at the kill, none once the server is marked down, and
/// the client never hangs.
#[test]
fn a_server_killed_under_pymemcache_load() {
    let (mut a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok("app", &["add", &a.address(), &b.address()]);
    reg.ok(
        "app",
        &["policy", "--failover", "rehash", "--failure-limit", "1"],
    );
    let proxy = Proxy::start(&reg, "app", &["--timeout", "500"]);
    let port = port_of(&proxy.address).to_string();
    let load = script("pymemcache_load.py");
    let mut child = Command::new(PYTHON)
        .args([load.to_str().unwrap(), &port, "4000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3 (apt-get install -y python3-pymemcache)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "started");
    a.kill();
    let report = lines.next().expect("a report").unwrap();
    assert!(child.wait().unwrap().success());
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["stale"], 0, "{report}");
    assert_eq!(report["late_errors"], 0, "{report}");
    assert!(report["errors"].as_u64().unwrap() <= 10, "{report}");
    let list = reg.ok("app", &["list"]);
    assert!(
        list.lines()
            .any(|l| l.contains(&a.address()) && l.contains("down")),
        "{list}"
    );
    drop(b);
}
