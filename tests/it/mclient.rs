//! mclient as scripts run it: real processes against real memcached servers.

use crate::common;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::common::Reg;
use crate::common::memcached::Memcached;

const MCLIENT: &str = env!("CARGO_BIN_EXE_mclient");

/// `mclient --servers LIST ARGS…` with `stdin` as input.
fn run(servers: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(MCLIENT)
        .arg("--servers")
        .arg(servers)
        .args(args)
        .env_remove("MEMCACHED_SERVERS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_verb_with_its_exit_code() {
    let mc = Memcached::start();
    let s = mc.address();
    let s = s.as_str();
    let ok = |args: &[&str]| {
        let out = run(s, args, b"");
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let no = |args: &[&str]| assert_eq!(code(&run(s, args, b"")), 1, "{args:?} should be exit 1");
    no(&["get", "k"]);
    ok(&["set", "k", "v1", "--flags", "7", "--ttl", "100"]);
    assert_eq!(ok(&["get", "k"]), "v1");
    no(&["add", "k", "x"]);
    ok(&["add", "k2", "x"]);
    no(&["replace", "nope", "x"]);
    ok(&["replace", "k2", "y"]);
    ok(&["append", "k2", "z"]);
    ok(&["prepend", "k2", "<"]);
    assert_eq!(ok(&["get", "k2"]), "<yz");
    let gets = ok(&["gets", "k"]);
    let cas = gets
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .nth(3)
        .unwrap()
        .to_string();
    assert!(gets.starts_with("k 7 2 "), "{gets}");
    let stale = (cas.parse::<u64>().unwrap() + 1000).to_string();
    no(&["cas", "k", &stale, "v2"]);
    ok(&["cas", "k", &cas, "v2"]);
    assert_eq!(ok(&["get", "k"]), "v2");
    ok(&["set", "n", "10"]);
    assert_eq!(ok(&["incr", "n", "5"]), "15\n");
    assert_eq!(ok(&["decr", "n"]), "14\n");
    no(&["incr", "missing"]);
    ok(&["touch", "n", "50"]);
    no(&["touch", "missing", "50"]);
    ok(&["delete", "n"]);
    no(&["delete", "n"]);
    assert_eq!(
        ok(&["get", "k", "k2"]),
        "k 0 2\nv2\nk2 0 3\n<yz\n",
        "cas stored flags 0"
    );
    no(&["get", "k", "missing"]);
    assert!(ok(&["version"]).starts_with(&format!("{s} 1.")));
    let stats = ok(&["stats"]);
    assert!(
        stats.starts_with(&format!("server {s}\nSTAT pid ")),
        "{stats}"
    );
    assert!(ok(&["stats", "settings"]).contains("STAT maxbytes"));
    assert_eq!(ok(&["which", "a", "b"]), format!("a {s}\nb {s}\n"));
    let json: serde_json::Value = serde_json::from_str(&ok(&["--json", "get", "k", "k2"])).unwrap();
    assert_eq!(json[0]["value"], "v2");
    assert_eq!(ok(&["flush"]), format!("{s} OK\n"));
    no(&["get", "k"]);
}

#[test]
fn values_from_stdin_are_byte_exact() {
    let mc = Memcached::start();
    let s = mc.address();
    let out = run(&s, &["set", "foo"], b"x\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(run(&s, &["get", "foo"], b"").stdout, b"x\n");
    let binary = b"\0\r\nEND\r\n\0\xff\n".to_vec();
    assert_eq!(code(&run(&s, &["set", "bin"], &binary)), 0);
    assert_eq!(run(&s, &["get", "bin"], b"").stdout, binary);
    let json: serde_json::Value =
        serde_json::from_slice(&run(&s, &["--json", "get", "bin"], b"").stdout).unwrap();
    assert_eq!(json[0]["value_base64"], "AA0KRU5EDQoA/wo=");
    let big: Vec<u8> = (0..900 * 1024).map(|i| (i % 256) as u8).collect();
    assert_eq!(code(&run(&s, &["set", "big"], &big)), 0);
    assert_eq!(run(&s, &["get", "big"], b"").stdout, big);
    let huge = vec![b'h'; 2 * 1024 * 1024];
    let out = run(&s, &["set", "huge"], &huge);
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("SERVER_ERROR object too large"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_input_is_exit_2_and_nothing_is_sent() {
    let mc = Memcached::start();
    let s = mc.address();
    let before = mc.stats();
    for args in [
        &["get", "a b"][..],
        &["set", "a\r\nflush_all", "v"],
        &["get", "ok", "bad key"],
        &["delete", ""],
        &["incr", "k", "x"],
        &["frobnicate"],
    ] {
        let out = run(&s, args, b"");
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).trim_end().lines().count().min(1), 1);
    }
    let out = run("127.0.0.1:0", &["get", "k"], b"");
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("port"), "{}", stderr(&out));
    let after = mc.stats();
    for counter in ["cmd_get", "cmd_set", "cmd_flush", "delete_misses"] {
        assert_eq!(before[counter], after[counter], "{counter}");
    }
}

/// 100 000 keys through bulk-set and back through bulk-get over three servers, byte-exact
/// (values with newlines, CR, NUL and high bytes); with `--json`, one array of every key's row
/// in input order, misses included.
#[test]
fn bulk_mode_round_trips_100_000_keys_over_three_servers() {
    let servers = [Memcached::start(), Memcached::start(), Memcached::start()];
    let list: Vec<String> = servers.iter().map(Memcached::address).collect();
    let list = list.join(",");
    let mut records = Vec::new();
    let mut keys = String::new();
    for i in 0..100_000u32 {
        let mut value = format!("value\n{i}\r\n").into_bytes();
        value.extend_from_slice(&[0, 0xff, (i % 251) as u8]);
        records.extend_from_slice(format!("key{i} {} {}\n", i % 3, value.len()).as_bytes());
        records.extend_from_slice(&value);
        records.push(b'\n');
        keys.push_str(&format!("key{i}\n"));
    }
    let out = run(&list, &["bulk-set"], &records);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "stored 100000, failed 0\n");
    let out = run(&list, &["bulk-get"], keys.as_bytes());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(out.stdout == records, "bulk-get writes what bulk-set reads");
    for server in &servers {
        assert!(
            server.stat("curr_items") > 20_000,
            "each server holds its share"
        );
    }
    // JSON: every key in input order, a miss as a miss (exit 1: not every key was found).
    let out = run(
        &list,
        &["--json", "bulk-get"],
        b"key7\nnot-there\nkey99999\n",
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["key"], "key7");
    assert_eq!(rows[0]["flags"], 1);
    assert_eq!(
        rows[1],
        serde_json::json!({"key": "not-there", "miss": true})
    );
    assert_eq!(rows[2]["key"], "key99999");
    // A malformed record stops the load; the records before it are stored.
    let out = run(
        &list,
        &["bulk-set"],
        b"new1 0 1\nx\nnew2 0 1\ny\nnew3 0 5\nz\n",
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("record 3: ")
            && stderr(&out).contains("the 2 records before it are stored"),
        "{}",
        stderr(&out)
    );
    let out = run(&list, &["bulk-get"], b"new1\nnew2\nnew3\n");
    assert_eq!(stdout(&out), "new1 0 1\nx\nnew2 0 1\ny\n");
}

/// bulk-set runs two batches at once, on two connections per server (mclient/src/bulk.rs,
/// `Lanes`): still, a key written in several batches keeps the value of its last record (a
/// batch sharing a key with the one in flight waits for it; the race this guards against
/// did not show here without that wait, so this checks the order, not the wait itself); a
/// malformed record after several batches stops the load with every record before it stored;
/// a key the library refuses fails its batch and nothing after that batch is sent.
#[test]
fn bulk_set_keeps_the_input_order_across_batches() {
    let servers = [Memcached::start(), Memcached::start()];
    let list: Vec<String> = servers.iter().map(Memcached::address).collect();
    let list = list.join(",");
    let record = |key: &str, value: &str| format!("{key} 0 {}\n{value}\n", value.len());
    // 100 000 records of 4 000 keys: every key written in several batches (values long
    // enough that a batch is still on the wire when the next one is ready to go).
    let value = |i: u32| format!("{i:>400}");
    let records: String = (0..100_000u32)
        .map(|i| record(&format!("k{}", i % 4_000), &value(i)))
        .collect();
    let out = run(&list, &["bulk-set"], records.as_bytes());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "stored 100000, failed 0\n");
    let keys: String = (0..4_000).map(|k| format!("k{k}\n")).collect();
    let out = run(&list, &["bulk-get"], keys.as_bytes());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let last: String = (0..4_000u32)
        .map(|k| record(&format!("k{k}"), &value(k + 4_000 * ((99_999 - k) / 4_000))))
        .collect();
    assert!(
        stdout(&out) == last,
        "each key holds its last record's value"
    );
    // A malformed record after 25 000 good ones: all 25 000 stored.
    let mut input: String = (0..25_000u32)
        .map(|i| record(&format!("m{i}"), "v"))
        .collect();
    input.push_str("m-bad 0 9\nshort\n");
    let out = run(&list, &["bulk-set"], input.as_bytes());
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("record 25001: ")
            && stderr(&out).contains("the 25000 records before it are stored"),
        "{}",
        stderr(&out)
    );
    let out = run(&list, &["bulk-get"], b"m0\nm24999\n");
    assert_eq!(stdout(&out), "m0 0 1\nv\nm24999 0 1\nv\n");
    // A key too long at record 25 001 of 50 000: its batch fails, the records 20 000 after it
    // are never sent.
    let long = "l".repeat(251);
    let input: String = (0..50_000u32)
        .map(|i| match i {
            25_000 => record(&long, "v"),
            _ => record(&format!("n{i}"), "v"),
        })
        .collect();
    let out = run(&list, &["bulk-set"], input.as_bytes());
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("longer than 250"), "{}", stderr(&out));
    let out = run(&list, &["bulk-get"], b"n0\nn45000\nn49999\n");
    assert_eq!(stdout(&out), "n0 0 1\nv\n");
}

#[test]
fn a_killed_server_is_marked_down_for_every_process() {
    let reg = Reg::new();
    let (a, mut dead) = (Memcached::start(), Memcached::start());
    reg.ok("app", &["add", &a.address(), &dead.address()]);
    let mclient = |args: &[&str]| {
        Command::new(MCLIENT)
            .arg("--dir")
            .arg(reg.dir())
            .args(["--domain", "app"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let key = (0..1000)
        .map(|i| format!("k{i}"))
        .find(|k| {
            stdout(&mclient(&["which", k]))
                .trim_end()
                .ends_with(&dead.address())
        })
        .unwrap();
    assert_eq!(code(&mclient(&["set", &key, "v"])), 0);
    dead.kill();
    let first = mclient(&["get", &key]);
    assert_eq!(code(&first), 3, "{}", stderr(&first));
    let second = mclient(&["get", &key]);
    assert_eq!(code(&second), 3);
    assert!(
        stderr(&second).contains("marked down for every process"),
        "{}",
        stderr(&second)
    );
    let list = reg.list_json("app");
    assert_eq!(list["servers"][1]["state"], "down");
    assert!(
        list["servers"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("consecutive failures")
    );
    // Another process: an immediate miss (failover none) that says why, a clear error on
    // write.
    let third = mclient(&["get", &key]);
    assert_eq!(code(&third), 1);
    assert!(
        stderr(&third).contains(&format!("a miss: {} is down", dead.address())),
        "{}",
        stderr(&third)
    );
    let write = mclient(&["set", &key, "v"]);
    assert_eq!(code(&write), 3);
    assert!(stderr(&write).contains("is down"), "{}", stderr(&write));
}

#[test]
#[ignore = "needs root to run mclient as another user: ./test.sh runs it when root"]
fn a_process_that_cannot_write_the_registry_treats_the_server_as_down_itself() {
    assert!(
        common::is_root(),
        "needs root to run mclient as another user"
    );
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let reg = Reg::new();
    std::fs::set_permissions(reg.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (a, mut dead) = (Memcached::start(), Memcached::start());
    reg.ok("ro", &["add", &a.address(), &dead.address()]);
    reg.ok("ro", &["policy", "--failure-limit", "1"]);
    let before = reg.bytes("ro");
    let (_bin, mclient) = common::runnable_by_anyone(MCLIENT);
    let as_nobody = |args: &[&str]| {
        common::output_of_fresh_binary(
            Command::new(&mclient)
                .arg("--dir")
                .arg(reg.dir())
                .args(["--domain", "ro"])
                .args(args)
                .stdin(Stdio::null())
                .uid(65534)
                .gid(65534),
        )
    };
    let key = (0..1000)
        .map(|i| format!("k{i}"))
        .find(|k| {
            stdout(&as_nobody(&["which", k]))
                .trim_end()
                .ends_with(&dead.address())
        })
        .unwrap();
    dead.kill();
    let out = as_nobody(&["get", &key]);
    assert_eq!(code(&out), 3);
    let err = stderr(&out);
    assert_eq!(
        err.matches("treated as down by this process only").count(),
        1,
        "{err}"
    );
    assert_eq!(
        reg.bytes("ro"),
        before,
        "a read-only process changed the registry"
    );
    assert_eq!(reg.list_json("ro")["servers"][1]["state"], "up");
}

/// Negative expiration times are memcached's "expired at once", written as scripts write them
/// (`--ttl -1`, `touch k -5`), not only `--ttl=-1`.
#[test]
fn negative_ttls_expire_at_once() {
    let mc = Memcached::start();
    let s = mc.address();
    let s = s.as_str();
    let out = run(s, &["set", "gone", "v", "--ttl", "-1"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        code(&run(s, &["get", "gone"], b"")),
        1,
        "a negative TTL expires at once"
    );
    assert_eq!(code(&run(s, &["set", "k", "v"], b"")), 0);
    assert_eq!(stdout(&run(s, &["get", "k"], b"")), "v");
    let out = run(s, &["touch", "k", "-5"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        code(&run(s, &["get", "k"], b"")),
        1,
        "touched with -5: expired"
    );
    let out = run(s, &["bulk-set", "--ttl", "-1"], b"b 0 1\nx\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(code(&run(s, &["get", "b"], b"")), 1);
}

/// `--timeout` bounds the whole request: a server that drips its reply one byte every 0.3 s
/// (each read well within 1 s; the whole 41-byte reply takes 12 s) fails it as a timeout, for
/// mclient and for the library alike.
#[test]
fn the_timeout_bounds_the_whole_request_not_each_read() {
    use common::drip::Drip;
    use std::time::Duration;
    let drip = Drip::start(20, Duration::from_millis(300));
    let started = std::time::Instant::now();
    let out = run(drip.address(), &["get", "k", "--timeout", "1"], b"");
    let took = started.elapsed();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    // The timeout is the command's (the bound: 1.3 s for --timeout 1): the diagnosis
    // of a server that never answered adds at most 0.15 s, not two more timeouts.
    assert!(took < Duration::from_millis(1300), "took {took:?}");
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
    assert!(
        !drip.finished(),
        "mclient waited for the whole dripped reply"
    );

    let address = libmcshm::Address::parse(drip.address()).unwrap();
    let timeouts = libmcshm::Timeouts {
        io: Duration::from_secs(1),
        ..Default::default()
    };
    let mut client = libmcshm::Client::for_servers(&[address], timeouts).unwrap();
    let err = client.get(b"k").unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(
        !drip.finished(),
        "the library waited for the whole dripped reply"
    );
}

/// One exit-code contract: 2 only when nothing was sent; once a server has answered (or failed),
/// 3 with a message that names what happened.
#[test]
fn errors_after_sending_exit_3_and_say_what_happened() {
    let mc = Memcached::start();
    let s = mc.address();
    let s = s.as_str();
    assert_eq!(code(&run(s, &["set", "word", "abc"], b"")), 0);
    let out = run(s, &["incr", "word", "1"], b"");
    assert_eq!(
        code(&out),
        3,
        "CLIENT_ERROR after sending: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("CLIENT_ERROR"), "{}", stderr(&out));

    // memcached -C keeps no CAS values: said so, not a silent "exists".
    let no_cas = Memcached::start_with(&["-C"]);
    let n = no_cas.address();
    assert_eq!(code(&run(&n, &["set", "k", "v"], b"")), 0);
    let out = run(&n, &["cas", "k", "0", "v2"], b"");
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("keeps no CAS values"),
        "{}",
        stderr(&out)
    );

    // A binary-protocol-only server is named, not a bare timeout.
    let binary = Memcached::start_with(&["-B", "binary"]);
    let out = run(&binary.address(), &["get", "k"], b"");
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("speaks only the binary protocol"),
        "{}",
        stderr(&out)
    );

    // A SASL server (memcached -S, binary protocol only) is named as requiring SASL. Its
    // SASL set-up lives in a directory of the test's: a password file and a config that
    // allows PLAIN.
    let sasl = tempfile::tempdir().unwrap();
    std::fs::write(sasl.path().join("memcached.conf"), "mech_list: plain\n").unwrap();
    std::fs::write(sasl.path().join("users"), "app:secret\n").unwrap();
    let users = sasl.path().join("users");
    let sasl_server = Memcached::start_with_env(
        &["-S"],
        &[
            ("SASL_CONF_PATH", sasl.path()),
            ("MEMCACHED_SASL_PWDB", users.as_path()),
        ],
    );
    let out = run(&sasl_server.address(), &["get", "k"], b"");
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("requires SASL authentication"),
        "{}",
        stderr(&out)
    );

    // A server over its connection limit refuses, and is reported as refusing.
    let full = Memcached::start_with(&["-c", "30"]);
    let held: Vec<std::net::TcpStream> = (0..40)
        .filter_map(|_| std::net::TcpStream::connect(full.address()).ok())
        .collect();
    assert!(held.len() >= 30);
    let out = run(&full.address(), &["get", "k"], b"");
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("refused the connection: Too many open connections"),
        "{}",
        stderr(&out)
    );
    drop(held);
}

/// bulk-get reports a bad key on its line and answers the rest of the batch.
#[test]
fn bulk_get_reports_a_bad_key_and_goes_on() {
    let mc = Memcached::start();
    let s = mc.address();
    let s = s.as_str();
    assert_eq!(code(&run(s, &["set", "a", "1"], b"")), 0);
    assert_eq!(code(&run(s, &["set", "c", "3"], b"")), 0);
    let out = run(s, &["bulk-get"], b"a\nbad key\nc\n");
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line 2: invalid key 'bad key'"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "a 0 1\n1\nc 0 1\n3\n");
    // A key in mcshm's reserved namespace (a fence) is a bad key like any other.
    let out = run(s, &["bulk-get"], b"a\nmcshm.fence.app\nc\n");
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "line 2: invalid key 'mcshm.fence.app': keys starting with mcshm.fence. are reserved"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "a 0 1\n1\nc 0 1\n3\n");
}

/// `which` names every server that holds a key: its owner, then its other replicas, as the
/// library routes them.
#[test]
fn which_names_a_keys_replicas_in_the_order_reads_try_them() {
    let reg = Reg::new();
    // Looked up, never connected to.
    reg.ok(
        "rep",
        &["add", "--no-flush", "10.0.0.1", "10.0.0.2", "10.0.0.3"],
    );
    reg.ok("rep", &["policy", "--replicas", "2"]);
    let out = Command::new(MCLIENT)
        .arg("--dir")
        .arg(reg.dir())
        .args(["--domain", "rep", "--json", "which", "a", "b"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut client = libmcshm::Client::for_domain(
        reg.dir(),
        &libmcshm::Domain::new("rep").unwrap(),
        libmcshm::Timeouts::default(),
    )
    .unwrap();
    for (row, key) in rows.as_array().unwrap().iter().zip(["a", "b"]) {
        let expected: Vec<String> = client
            .replicas_for(key.as_bytes())
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(expected.len(), 2);
        assert_eq!(row["replicas"], serde_json::json!(expected), "{key}");
        assert_eq!(row["server"], expected[0].as_str());
    }
}

/// A read of a key whose server is down is a miss (by design: a down server never delays a
/// reader), and mclient says why on stderr, as a write would.
#[test]
fn a_miss_on_a_down_server_says_why() {
    let reg = Reg::new();
    let closed = common::closed_port_address();
    reg.ok("down", &["add", "--no-flush", &closed]);
    reg.ok("down", &["down", &closed, "--reason", "disk replaced"]);
    let out = Command::new(MCLIENT)
        .arg("--dir")
        .arg(reg.dir())
        .args(["--domain", "down", "get", "k"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "mclient: k: a miss: {closed} is down (disk replaced)"
        )),
        "{stderr}"
    );
}

/// `mclient keys` lists the domain's keys each server holds (memcdump's job), without the
/// domain's key prefix and without keys outside it; `--server` one server; `--json` per server.
#[test]
fn keys_lists_what_each_server_holds() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok("k", &["add", &a.address(), &b.address()]);
    reg.ok("k", &["policy", "--prefix", "app:"]);
    let mclient = |args: &[&str]| {
        Command::new(MCLIENT)
            .arg("--dir")
            .arg(reg.dir())
            .args(["--domain", "k"])
            .args(args)
            .output()
            .unwrap()
    };
    let mut keys: Vec<String> = (0..50).map(|n| format!("user:{n}")).collect();
    for key in &keys {
        assert_eq!(code(&mclient(&["set", key, "v"])), 0);
    }
    a.raw_set("other-app:1", "not ours");
    let listed = mclient(&["keys"]);
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    let mut got: Vec<String> = stdout(&listed).lines().map(str::to_string).collect();
    got.sort();
    keys.sort();
    assert_eq!(got, keys);
    let on_a = mclient(&["--json", "keys", "--server", &a.address()]);
    let json: serde_json::Value = serde_json::from_slice(&on_a.stdout).unwrap();
    let names = json[a.address()].as_array().unwrap();
    assert!(!names.is_empty() && names.len() < 50, "{json}");
    for name in names {
        let key = format!("app:{}", name.as_str().unwrap());
        assert!(a.raw_get(&key).is_some(), "{key} is on a");
    }
}
