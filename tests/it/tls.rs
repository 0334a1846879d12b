//! TLS to memcached: real `memcached -Z` servers (with and without `ssl_verify_mode=2`, which
//! requires client certificates), certificates made here by openssl (a CA, a server certificate
//! for 127.0.0.1, one for another name, a client certificate, an expired one, another CA).
//! `mcadmin tls` stores a domain's settings; mclient, the library (a pipelined bulk store,
//! which hangs memcached 1.6.18 when TLS records are cut anywhere but at a value's end),
//! `mcadmin up`'s flush, `watch`'s probes, `drain` and mcproxy (pymemcache in clear in front)
//! all speak TLS; each mistake is named, and clear text to a TLS server (and the reverse) fails
//! at once, not at the timeout.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::certs::{Certs, expired_certificate};
use crate::common::memcached::Memcached;
use crate::common::proxy::Proxy;
use crate::common::{Reg, wait_until};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `mclient get KEY`'s failure: its exit status, its message, and how long it took.
fn failed_get(reg: &Reg, domain: &str) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let out = reg.mclient(domain, &["--timeout", "10s", "get", "k"]);
    (out.status.code(), stderr(&out), started.elapsed())
}

/// `mclient --timeout 10s get` fails as a server failure (exit 3) whose message holds each of
/// `says`, well before its timeout (a server that is not what the domain says is not waited
/// for).
fn refused_at_once(reg: &Reg, domain: &str, says: &[&str]) {
    let (code, message, took) = failed_get(reg, domain);
    assert_eq!(code, Some(3), "{message}");
    assert!(says.iter().all(|s| message.contains(s)), "{message}");
    assert!(
        took < Duration::from_secs(5),
        "waited {took:?} for the timeout"
    );
}

/// The arguments of `mcadmin tls` with the CA and the client certificate.
const CLIENT: [&str; 6] = [
    "--ca",
    "ca.crt",
    "--cert",
    "client.crt",
    "--key",
    "client.key",
];

/// Domain `domain` of two TLS servers, the second requiring client certificates.
fn two_servers(certs: &Certs, reg: &Reg, domain: &str) -> (Memcached, Memcached) {
    let (a, b) = (
        certs.memcached("server", ""),
        certs.memcached_requiring_clients(),
    );
    reg.ok(domain, &["add", "--no-flush", &a.address(), &b.address()]);
    (a, b)
}

/// `mcadmin tls ARGS…` in the certificates' directory.
fn tls(reg: &Reg, certs: &Certs, domain: &str, args: &[&str]) -> crate::common::Run {
    let mut cmd = reg.cmd(domain, &[&["tls"], args].concat());
    cmd.current_dir(certs.dir.path());
    crate::common::Run(cmd.output().unwrap())
}

fn set_and_get(reg: &Reg, domain: &str) {
    let out = reg.mclient(domain, &["set", "k", "secret"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_get(reg, domain, "k", "secret");
}

/// `mclient get KEY` prints `value`.
fn assert_get(reg: &Reg, domain: &str, key: &str, value: &str) {
    let out = reg.mclient(domain, &["get", key]);
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), value.as_bytes()),
        "{key}: {}",
        stderr(&out)
    );
}

#[test]
fn mclient_speaks_tls_and_each_mistake_is_named_at_once() {
    let certs = Certs::new();
    let reg = Reg::new();
    let (plain_tls, named, strict, clear) = (
        certs.memcached("server", ""),
        certs.memcached("named", ""),
        certs.memcached_requiring_clients(),
        Memcached::start(),
    );
    for (domain, server) in [
        ("a", &plain_tls),
        ("named", &named),
        ("strict", &strict),
        ("clear", &clear),
    ] {
        reg.ok(domain, &["add", "--no-flush", &server.address()]);
    }

    // Clear text to a TLS server: named at once, with the fix.
    refused_at_once(
        &reg,
        "a",
        &["the server speaks TLS (memcached -Z)", "mcadmin tls"],
    );

    // The settings: stored 0640, shown, used.
    let run = tls(&reg, &certs, "a", &["--ca", "ca.crt"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(
        run.stdout().contains("TLS, verify full, 1 CA certificate"),
        "{}",
        run.stdout()
    );
    let file = reg.dir().join("a.tls");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "readable by the table's group only");
    let shown: serde_json::Value = serde_json::from_str(&reg.ok("a", &["--json", "tls"])).unwrap();
    assert_eq!(
        (
            &shown["tls"],
            &shown["verify"],
            &shown["client_certificate"]
        ),
        (
            &serde_json::json!(true),
            &serde_json::json!("full"),
            &serde_json::json!(false)
        )
    );
    set_and_get(&reg, "a");

    // Another CA.
    assert_eq!(tls(&reg, &certs, "a", &["--ca", "other-ca.crt"]).code(), 0);
    refused_at_once(
        &reg,
        "a",
        &["TLS: the server's certificate is not signed by the domain's CA"],
    );
    reg.ok("a", &["up", &plain_tls.address()]);
    assert_eq!(tls(&reg, &certs, "a", &["--ca", "ca.crt"]).code(), 0);
    reg.ok("a", &["up", &plain_tls.address()]);

    // A certificate for another name: refused, then accepted by name or by CA alone.
    assert_eq!(tls(&reg, &certs, "named", &["--ca", "ca.crt"]).code(), 0);
    refused_at_once(
        &reg,
        "named",
        &["does not name the server", "--server-name"],
    );
    reg.ok("named", &["up", &named.address()]);
    let by_name = ["--ca", "ca.crt", "--server-name", "cache.example"];
    assert_eq!(tls(&reg, &certs, "named", &by_name).code(), 0);
    set_and_get(&reg, "named");
    assert_eq!(
        tls(&reg, &certs, "named", &["--ca", "ca.crt", "--verify", "ca"]).code(),
        0
    );
    set_and_get(&reg, "named");

    // A server that requires a client certificate.
    assert_eq!(tls(&reg, &certs, "strict", &["--ca", "ca.crt"]).code(), 0);
    refused_at_once(&reg, "strict", &["wants a client certificate"]);
    reg.ok("strict", &["up", &strict.address()]);
    let run = tls(&reg, &certs, "strict", &CLIENT);
    assert!(
        run.stdout().contains("a client certificate"),
        "{}",
        run.stdout()
    );
    set_and_get(&reg, "strict");

    // TLS to a server in clear.
    assert_eq!(tls(&reg, &certs, "clear", &["--ca", "ca.crt"]).code(), 0);
    refused_at_once(&reg, "clear", &["the server does not speak TLS"]);
}

#[test]
fn an_expired_server_certificate_is_named() {
    let certs = Certs::new();
    let d = certs.dir.path();
    expired_certificate(d, "expired", "ca", "server");
    std::fs::set_permissions(
        d.join("expired.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let server = certs.memcached("expired", "");
    let reg = Reg::new();
    reg.ok("x", &["add", "--no-flush", &server.address()]);
    assert_eq!(tls(&reg, &certs, "x", &["--ca", "ca.crt"]).code(), 0);
    // Valid for the second it was made in: expired from the next one on.
    let mut message = String::new();
    let named = wait_until(Duration::from_secs(5), || {
        let _ = reg.run("x", &["up", &server.address()]);
        message = failed_get(&reg, "x").1;
        message.contains("TLS: the server's certificate has expired")
    });
    assert!(named, "{message}");
}

#[test]
fn bad_tls_settings_are_refused_and_leave_the_stored_ones_as_they_were() {
    let certs = Certs::new();
    let reg = Reg::new();
    reg.ok("b", &["add", "--no-flush", "127.0.0.1:11311"]);
    assert_eq!(tls(&reg, &certs, "b", &["--ca", "ca.crt"]).code(), 0);
    let file = reg.dir().join("b.tls");
    let before = std::fs::read(&file).unwrap();
    std::fs::write(certs.dir.path().join("junk.pem"), "not a certificate\n").unwrap();
    for (args, says) in [
        (&["--ca", "missing.crt"][..], "cannot read missing.crt"),
        (
            &["--ca", "junk.pem"][..],
            "--ca junk.pem: no certificate in it",
        ),
        (
            &[
                "--ca",
                "ca.crt",
                "--cert",
                "client.crt",
                "--key",
                "server.key",
            ][..],
            "--key server.key: it is not the key of the client certificate; nothing changed",
        ),
        (
            &[
                "--ca",
                "ca.crt",
                "--cert",
                "client.crt",
                "--key",
                "client.crt",
            ][..],
            "--key client.crt: no private key in it",
        ),
        (&["--ca", "ca.crt", "--cert", "client.crt"][..], "--key"),
        (
            &["--ca", "ca.crt", "--server-name", "not a name"][..],
            "is not a DNS name or an IP address",
        ),
        (
            &["--ca", "ca.crt", "--verify", "some"][..],
            "expected full or ca",
        ),
    ] {
        let run = tls(&reg, &certs, "b", args);
        assert_eq!(run.code(), 2, "{args:?}: {}", run.stderr());
        assert!(run.stderr().contains(says), "{args:?}: {}", run.stderr());
        assert_eq!(
            std::fs::read(&file).unwrap(),
            before,
            "{args:?} changed the file"
        );
    }
    // A file damaged by hand is named, with the fix, when a connection needs it.
    std::fs::write(&file, "verify full\n[ca]\ngarbage\n").unwrap();
    let out = reg.mclient("b", &["get", "k"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("b.tls cannot be used") && stderr(&out).contains("mcadmin tls"),
        "{}",
        stderr(&out)
    );
    // Cleared: the servers are spoken to in clear again.
    assert_eq!(reg.run("b", &["tls", "--clear"]).code(), 0);
    assert!(!file.exists());
    let run = reg.run("b", &["tls"]);
    assert_eq!(run.code(), 1, "no settings: exit 1");
    assert!(run.stdout().contains("no TLS"), "{}", run.stdout());
}

/// The library's own client: a pipelined bulk store and multi-get over TLS (200 values of
/// 2 kB: records that ran past a value's end would hang memcached 1.6.18 here).
#[test]
fn the_library_pipelines_over_tls() {
    let (certs, reg) = (Certs::new(), Reg::new());
    let (_a, _b) = two_servers(&certs, &reg, "lib");
    assert_eq!(tls(&reg, &certs, "lib", &CLIENT).code(), 0);
    let domain = libmcshm::Domain::new("lib").unwrap();
    let mut client =
        libmcshm::Client::for_domain(reg.dir(), &domain, libmcshm::Timeouts::default()).unwrap();
    let keys: Vec<String> = (0..200).map(|i| format!("key{i}")).collect();
    let values: Vec<Vec<u8>> = (0..200)
        .map(|i| vec![b'a' + (i % 26) as u8; 2000])
        .collect();
    let items: Vec<libmcshm::StoreItem<'_>> = keys
        .iter()
        .zip(&values)
        .map(|(key, value)| libmcshm::StoreItem {
            key: key.as_bytes(),
            value,
            flags: 0,
            ttl: 0,
        })
        .collect();
    let stored = client.store_many(libmcshm::StoreVerb::Set, &items).unwrap();
    assert!(
        stored
            .iter()
            .all(|s| matches!(s, Ok(libmcshm::Stored::Stored)))
    );
    let wanted: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let got = client.get_many(&wanted, false).unwrap();
    assert!(got.errors.is_empty(), "{:?}", got.errors);
    assert_eq!(got.items.len(), 200);
    for item in &got.items {
        let n: usize = String::from_utf8_lossy(&item.key[3..]).parse().unwrap();
        assert_eq!(item.value, values[n]);
    }
}

/// `up`'s flush, `watch`'s probes and `drain` open their own connections: over TLS too.
#[test]
fn up_watch_and_drain_speak_tls() {
    let certs = Certs::new();
    let (a, b) = (certs.memcached("server", ""), certs.memcached("server", ""));
    let reg = Reg::new();
    reg.ok("ops", &["add", "--no-flush", &a.address(), &b.address()]);
    assert_eq!(tls(&reg, &certs, "ops", &["--ca", "ca.crt"]).code(), 0);
    for i in 0..20 {
        let out = reg.mclient("ops", &["set", &format!("k{i}"), "v"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    // up flushes a (through TLS) before it serves again: what it held is gone.
    let on_a: Vec<String> = (0..20)
        .map(|i| format!("k{i}"))
        .filter(|k| {
            let out = reg.mclient("ops", &["which", k]);
            String::from_utf8_lossy(&out.stdout).contains(&a.address())
        })
        .collect();
    assert!(!on_a.is_empty(), "some key lives on a");
    reg.ok("ops", &["down", &a.address()]);
    reg.ok("ops", &["up", &a.address()]);
    let out = reg.mclient("ops", &["get", &on_a[0]]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "flushed: a miss ({})",
        stderr(&out)
    );

    // watch probes over TLS: a CA that did not sign the servers' certificates marks them down
    // with the reason; the right one brings them back (flushed first).
    let mut watcher = reg
        .cmd(
            "ops",
            &[
                "watch",
                "--interval",
                "0.2",
                "--failures",
                "1",
                "--timeout",
                "1",
            ],
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(
        tls(&reg, &certs, "ops", &["--ca", "other-ca.crt"]).code(),
        0
    );
    let state = |i: usize| reg.list_json("ops")["servers"][i].clone();
    let down = wait_until(Duration::from_secs(10), || state(0)["state"] == "down");
    let reason = state(0)["reason"].to_string();
    assert_eq!(tls(&reg, &certs, "ops", &["--ca", "ca.crt"]).code(), 0);
    let up = wait_until(Duration::from_secs(10), || {
        state(0)["state"] == "up" && state(1)["state"] == "up"
    });
    watcher.kill().unwrap();
    watcher.wait().unwrap();
    assert!(down, "watch did not mark the server down");
    assert!(reason.contains("not signed by the domain's CA"), "{reason}");
    assert!(
        up,
        "watch did not bring the servers back: {}",
        reg.ok("ops", &["list"])
    );

    // drain lists b's keys (lru_crawler metadump) and moves them, all over TLS.
    for i in 0..20 {
        let out = reg.mclient("ops", &["set", &format!("d{i}"), "w"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let run = reg.run("ops", &["--json", "drain", &b.address(), "--rate", "0"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    for i in 0..20 {
        assert_get(&reg, "ops", &format!("d{i}"), "w");
    }
}

/// mcproxy in front of TLS servers: pymemcache speaks to it in clear on loopback, the proxy
/// to the servers over TLS (one of them requiring the client certificate).
#[test]
fn mcproxy_serves_clients_in_clear_from_tls_servers() {
    let (certs, reg) = (Certs::new(), Reg::new());
    let (_a, _b) = two_servers(&certs, &reg, "px");
    // Started before the domain has TLS settings: they are read when a connection opens.
    let proxy = Proxy::start(&reg, "px", &[]);
    assert_eq!(tls(&reg, &certs, "px", &CLIENT).code(), 0);
    let script = r#"
import sys
from pymemcache.client.base import Client
c = Client(sys.argv[1], timeout=5)
values = {"k%d" % i: ("v%d" % i) * (300 * (1 + i % 5)) for i in range(300)}
for key, value in values.items():
    c.set(key, value)  # noreply: pipelined, as pymemcache sends them
got = c.get_many(list(values))
assert len(got) == 300, len(got)
assert all(got[k] == v.encode() for k, v in values.items())
big = "x" * (900 * 1024)
assert c.set("big", big, noreply=False)
assert c.get("big") == big.encode()
print("ok")
"#;
    let out = Command::new(PYTHON)
        .args(["-c", script, &proxy.address])
        .stdin(Stdio::null())
        .output()
        .expect("run python3 (apt-get install -y python3-pymemcache)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        stderr(&out)
    );
    // The values are on the servers, which speak only TLS: read back by mclient.
    let out = reg.mclient("px", &["get", "k7"]);
    assert_eq!(
        out.stdout,
        "v7".repeat(300 * 3).as_bytes(),
        "{}",
        stderr(&out)
    );

    // A domain without TLS settings in front of a TLS server: the request fails, and the
    // proxy's log says why (the diagnosis runs on a thread of its own).
    let lone = certs.memcached("server", "");
    reg.ok("pxc", &["add", "--no-flush", &lone.address()]);
    let clear = Proxy::start(&reg, "pxc", &[]);
    let mut wire = clear.connect();
    wire.send(b"get k\r\n");
    let reply = wire.line();
    assert!(reply.starts_with("SERVER_ERROR"), "{reply}");
    let mut seen = Vec::new();
    let said = wait_until(Duration::from_secs(5), || {
        seen.extend(clear.log.try_iter());
        seen.iter()
            .any(|l| l.contains("the server speaks TLS (memcached -Z)"))
    });
    assert!(said, "{seen:?}");
}

/// Debian's python3, where python3-pymemcache is installed.
const PYTHON: &str = "/usr/bin/python3";

/// A certificate for another name fails with an explanation longer than a table's reason
/// (about 220 bytes): whoever marks the server down (watch's probes, mclient's router,
/// mcproxy's) writes it cut to the table's 192 bytes, with who did it kept whole, and goes on.
/// watch used to panic inside its transaction here.
#[test]
fn a_name_mismatch_marks_a_server_down_with_a_fitted_reason_from_every_front_end() {
    let certs = Certs::new();
    let reg = Reg::new();
    let named = certs.memcached("named", "");
    let reason_of = |domain: &str| -> Option<String> {
        let server = reg.list_json(domain)["servers"][0].clone();
        (server["state"] == "down").then(|| server["reason"].as_str().unwrap().to_string())
    };
    let fitted = |reason: &str, counted: &str| {
        assert!(reason.len() <= 192, "{} bytes: {reason}", reason.len());
        assert!(reason.contains(counted), "{reason}");
        assert!(reason.contains("does not name the server"), "{reason}");
        assert!(reason.contains("(pid "), "who did it, whole: {reason}");
    };
    for domain in ["w", "c", "p"] {
        reg.ok(domain, &["add", "--no-flush", &named.address()]);
        reg.ok(domain, &["policy", "--failure-limit", "1"]);
        assert_eq!(tls(&reg, &certs, domain, &["--ca", "ca.crt"]).code(), 0);
    }

    let mut watcher = reg
        .cmd("w", &["watch", "--interval", "200ms", "--failures", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let down = wait_until(Duration::from_secs(10), || reason_of("w").is_some());
    let alive = watcher.try_wait().unwrap().is_none();
    let _ = watcher.kill();
    let log = watcher.wait_with_output().unwrap();
    assert!(
        alive,
        "watch died: {}",
        String::from_utf8_lossy(&log.stderr)
    );
    assert!(down, "watch did not mark the server down");
    fitted(&reason_of("w").unwrap(), "1 failed probes (mcadmin watch)");

    let out = reg.mclient("c", &["get", "k"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    fitted(
        &reason_of("c").expect("mclient marked it down"),
        "1 consecutive failures",
    );

    let proxy = Proxy::start(&reg, "p", &[]);
    let reply = proxy.connect().ask("get k\r\n");
    assert!(reply.starts_with("SERVER_ERROR"), "{reply}");
    fitted(
        &reason_of("p").expect("mcproxy marked it down"),
        "1 consecutive failures",
    );
}
