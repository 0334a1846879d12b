//! mcshm's reserved namespace, `mcshm.fence.` (the fencing epochs of issue 34, one item per
//! domain on every server): no application reads, writes, lists, drains or sweeps one. Real
//! mclient, mcadmin and mcproxy processes against real memcached servers, the fences written
//! on the servers directly as a fleet commit would.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::Reg;
use crate::common::memcached::Memcached;
use crate::common::proxy::Proxy;

/// What every refusal names.
const RESERVED: &str = "keys starting with mcshm.fence. are reserved by mcshm (fencing)";

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `mg KEY v` over a raw connection to `server`: the value, `None` on a miss.
fn raw_mg(server: &Memcached, key: &str) -> Option<String> {
    let stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (&stream)
        .write_all(format!("mg {key} v\r\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    if line == "EN\r\n" {
        return None;
    }
    assert!(line.starts_with("VA "), "mg {key}: {line:?}");
    let mut value = String::new();
    reader.read_line(&mut value).unwrap();
    Some(value.trim_end_matches("\r\n").to_string())
}

/// A binary protocol get of `key` on `stream`: the whole response, header first.
fn binary_get(stream: &mut TcpStream, key: &str) -> Vec<u8> {
    use std::io::Read;
    let mut frame = vec![0x80, 0x00];
    frame.extend((key.len() as u16).to_be_bytes());
    frame.extend([0, 0, 0, 0]);
    frame.extend((key.len() as u32).to_be_bytes());
    frame.extend([0u8; 12]);
    frame.extend(key.as_bytes());
    stream.write_all(&frame).unwrap();
    let mut head = [0u8; 24];
    stream.read_exact(&mut head).unwrap();
    let body = u32::from_be_bytes(head[8..12].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; body];
    stream.read_exact(&mut rest).unwrap();
    [head.to_vec(), rest].concat()
}

/// `mclient get` and `set` of a fence, or of a key the domain's prefix puts in the namespace,
/// fail before anything is sent: one line naming the reservation, exit 2 (bad input). A key
/// that only comes near the namespace is stored as any other.
#[test]
fn mclient_refuses_a_reserved_key_as_bad_input() {
    let a = Memcached::start();
    let reg = Reg::new();
    reg.ok("app", &["add", &a.address()]);
    a.raw_set("mcshm.fence.app", "7");
    let refused = |domain: &str, args: &[&str], key: &str| {
        let out = reg.mclient(domain, args);
        let err = stderr(&out);
        assert_eq!(code(&out), 2, "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.starts_with(&format!("mclient: invalid key '{key}': {RESERVED}")),
            "{args:?}: {err}"
        );
    };
    let gets_before = a.stat("cmd_get");
    refused("app", &["get", "mcshm.fence.app"], "mcshm.fence.app");
    refused("app", &["get", "k", "mcshm.fence.x"], "mcshm.fence.x");
    refused("app", &["set", "mcshm.fence.app", "9"], "mcshm.fence.app");
    refused("app", &["set", "mcshm.fence.x", "9"], "mcshm.fence.x");
    refused("app", &["delete", "mcshm.fence.app"], "mcshm.fence.app");
    assert_eq!(a.stat("cmd_get"), gets_before, "nothing was sent");
    assert_eq!(raw_mg(&a, "mcshm.fence.app").as_deref(), Some("7"));
    assert_eq!(raw_mg(&a, "mcshm.fence.x"), None);

    let near = reg.mclient("app", &["set", "mcshm.fenc", "v"]);
    assert_eq!(code(&near), 0, "{}", stderr(&near));
    assert_eq!(raw_mg(&a, "mcshm.fenc").as_deref(), Some("v"));

    // With the key prefix `mcshm.`, `fence.x` is `mcshm.fence.x` on the wire.
    reg.ok("pre", &["add", "--no-flush", &a.address()]);
    reg.ok("pre", &["policy", "--prefix", "mcshm."]);
    refused("pre", &["set", "fence.x", "9"], "fence.x");
    refused("pre", &["get", "fence.app"], "fence.app");
    assert_eq!(raw_mg(&a, "mcshm.fence.x"), None);
    let ours = reg.mclient("pre", &["set", "mcshm.fence.x", "v"]);
    assert_eq!(code(&ours), 0, "mcshm.mcshm.fence.x: {}", stderr(&ours));

    // `mcadmin watch --check-key` writes its key raw: a fence is refused before it starts.
    let run = reg.run("app", &["watch", "--check-key", "mcshm.fence.app"]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(
        run.stderr().contains("reserved by mcshm"),
        "{}",
        run.stderr()
    );
    assert_eq!(raw_mg(&a, "mcshm.fence.app").as_deref(), Some("7"));
}

/// The listings skip fences: `mclient keys` does not show one, `mcadmin settle` does not sweep
/// one as a stray, `mcadmin drain` does not move one (it stays on the drained server, and its
/// new owner gets none).
#[test]
fn listings_settle_and_drain_leave_fences_where_they_are() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok("app", &["add", &a.address()]);
    // 32 keys, so that some stay on a once b joins: with 6, all moved to b in about one run of
    // 30 (the ring's split is by the ephemeral ports), and the drain below had nothing to move.
    let keys: Vec<String> = (0..32).map(|n| format!("user:{n:02}")).collect();
    for key in &keys {
        let out = reg.mclient("app", &["set", key, "v"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    // Twenty fences: under a ring of a and b, some would be b's keys, and strays on a.
    let fences: Vec<String> = (0..20).map(|n| format!("mcshm.fence.d{n}")).collect();
    for (n, fence) in fences.iter().enumerate() {
        a.raw_set(fence, &(100 + n).to_string());
    }
    let listed = reg.mclient("app", &["keys"]);
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    let mut got: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    got.sort();
    assert_eq!(got, keys, "the application's keys, no fence");

    // b takes about half of a's keys: a is marked, and settle sweeps it.
    reg.ok("app", &["add", &b.address()]);
    let out = reg.ok("app", &["--json", "settle"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report[0]["server"], a.address().as_str(), "{out}");
    assert_eq!(report[0]["cleared"], true, "{out}");
    let swept = report[0]["deleted"].as_u64().unwrap();
    let left = keys.iter().filter(|k| raw_mg(&a, k).is_some()).count() as u64;
    assert_eq!(
        swept + left,
        keys.len() as u64,
        "only application keys swept: {out}"
    );
    for (n, fence) in fences.iter().enumerate() {
        assert_eq!(
            raw_mg(&a, fence),
            Some((100 + n).to_string()),
            "{fence} kept"
        );
    }

    // Draining a moves every key left on a to b, the one server left, but no fence.
    let on_a: Vec<&String> = keys.iter().filter(|k| raw_mg(&a, k).is_some()).collect();
    assert!(!on_a.is_empty(), "no key left on a to drain: {out}");
    reg.ok("app", &["drain", &a.address(), "--rate", "0"]);
    for key in on_a {
        assert!(raw_mg(&b, key).is_some(), "{key} moved to b");
    }
    for (n, fence) in fences.iter().enumerate() {
        assert_eq!(raw_mg(&a, fence), Some((100 + n).to_string()), "{fence}");
        assert_eq!(raw_mg(&b, fence), None, "{fence} not moved");
    }
}

/// mcproxy answers CLIENT_ERROR to a client that names a fence, in text, meta (a base64 key
/// too) and storage commands (the data skipped), and goes on serving the same connection; with
/// a key prefix that puts the key in the namespace, the router's refusal is the answer.
#[test]
fn mcproxy_refuses_fences_and_serves_the_connection_on() {
    let a = Memcached::start();
    let reg = Reg::new();
    reg.ok("app", &["add", &a.address()]);
    a.raw_set("mcshm.fence.app", "7");
    let proxy = Proxy::start(&reg, "app", &[]);
    let mut w = proxy.connect();
    let refused = format!("CLIENT_ERROR {RESERVED}\r\n");
    assert_eq!(w.ask("get mcshm.fence.app\r\n"), refused);
    assert_eq!(w.ask("gets k mcshm.fence.app\r\n"), refused);
    assert_eq!(w.ask("mg mcshm.fence.app v\r\n"), refused);
    assert_eq!(w.ask("mg bWNzaG0uZmVuY2UuYXBw b v\r\n"), refused);
    assert_eq!(w.ask("set mcshm.fence.app 0 0 1\r\n9\r\n"), refused);
    assert_eq!(w.ask("ms mcshm.fence.app 1 T0\r\n9\r\n"), refused);
    assert_eq!(w.ask("delete mcshm.fence.app\r\n"), refused);
    assert_eq!(raw_mg(&a, "mcshm.fence.app").as_deref(), Some("7"));
    // The same connection, in step: an ordinary key is served.
    assert_eq!(w.ask("set k 0 0 1\r\nv\r\n"), "STORED\r\n");
    assert_eq!(w.ask("get k\r\n"), "VALUE k 0 1\r\nv\r\nEND\r\n");
    assert_eq!(w.ask("mg k v\r\n"), "VA 1\r\nv\r\n");

    // The binary protocol: "invalid arguments" with the reason, and the connection goes on.
    let mut s = TcpStream::connect(&proxy.address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let refused = binary_get(&mut s, "mcshm.fence.app");
    assert_eq!(u16::from_be_bytes([refused[6], refused[7]]), 0x0004);
    assert!(
        String::from_utf8_lossy(&refused[24..]).contains(RESERVED),
        "{refused:?}"
    );
    let hit = binary_get(&mut s, "k");
    assert_eq!(u16::from_be_bytes([hit[6], hit[7]]), 0, "{hit:?}");
    assert!(hit.ends_with(b"v"), "{hit:?}");

    reg.ok("pre", &["add", "--no-flush", &a.address()]);
    reg.ok("pre", &["policy", "--prefix", "mcshm."]);
    let prefixed = Proxy::start(&reg, "pre", &[]);
    let mut w = prefixed.connect();
    for request in [
        "get fence.app\r\n",
        "mg fence.app v\r\n",
        "set fence.app 0 0 1\r\n9\r\n",
    ] {
        let reply = w.ask(request);
        assert!(
            reply.starts_with("CLIENT_ERROR invalid key 'fence.app': ") && reply.contains(RESERVED),
            "{request:?}: {reply:?}"
        );
    }
    assert_eq!(raw_mg(&a, "mcshm.fence.app").as_deref(), Some("7"));
    assert_eq!(w.ask("set k 0 0 1\r\nw\r\n"), "STORED\r\n");
    assert_eq!(w.ask("get k\r\n"), "VALUE k 0 1\r\nw\r\nEND\r\n");
    assert_eq!(raw_mg(&a, "mcshm.k").as_deref(), Some("w"));
}
