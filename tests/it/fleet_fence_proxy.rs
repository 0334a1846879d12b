//! Fencing through mcproxy (issue 34): the plain case of `fleet_fence.rs`, with host C's
//! clients talking to an mcproxy on C. C's agent is paused, so C's table (and so its proxy's)
//! lags; an add through etcd moves key k; host A writes k anew. Through C's proxy, on the text,
//! meta and binary protocols, a read of k is the new value or a miss, never the old one; a
//! write of k answers `SERVER_ERROR table behind` and is undone on the old owner (or lands where
//! A reads it); the fenced answers are counted and logged, and the servers are not marked down.
//! Once the agent runs again, C's proxy reads and writes where A does.
//!
//! And on the wire, against a stand-in server that records what it is sent: a domain that does
//! not fence sends exactly what it did before; one that fences ends each connection's batch of
//! a loop turn with one `get mcshm.fence.<domain>`, and undoes a fenced write with a delete sent
//! without one.

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::Run;
use crate::common::etcd::{EtcdCluster, Host, fleet_cmd};
use crate::common::memcached::Memcached;
use crate::common::proxy::Proxy;
use libmcshm::{Address, Timeouts};

fn mcadmin(cluster: &EtcdCluster, args: &[&str]) -> Run {
    Run(fleet_cmd(&cluster.endpoints(), "app", args)
        .output()
        .unwrap())
}

/// `mcadmin --etcd … --json ARGS`, which must succeed: its JSON.
fn commit(cluster: &EtcdCluster, args: &[&str]) -> serde_json::Value {
    let run = mcadmin(cluster, &[&["--json"], args].concat());
    assert_eq!(run.code(), 0, "mcadmin {args:?}: {}", run.stderr());
    serde_json::from_str(&run.stdout()).unwrap()
}

fn revision(value: &serde_json::Value) -> u64 {
    value["revision"].as_u64().unwrap()
}

/// A key that `before` routes to one of its servers and `after` (the same servers plus one)
/// routes to the added one, and the server it was on.
fn key_moved(before: &[String], added: &str) -> (String, String) {
    let t = Timeouts::default();
    let parse = |list: &[String]| -> Vec<Address> {
        list.iter().map(|a| Address::parse(a).unwrap()).collect()
    };
    let mut all = before.to_vec();
    all.push(added.to_string());
    let mut old = libmcshm::Client::for_servers(&parse(before), t).unwrap();
    let mut new = libmcshm::Client::for_servers(&parse(&all), t).unwrap();
    (0..100_000)
        .map(|i| format!("moved{i}"))
        .find_map(|k| {
            let was = old.server_for(k.as_bytes()).unwrap().to_string();
            let now = new.server_for(k.as_bytes()).unwrap().to_string();
            (now == added).then_some((k, was))
        })
        .expect("a key the add moves")
}

/// A binary get of `key` over `stream`: its status and value.
fn binary_get(stream: &mut std::net::TcpStream, key: &str) -> (u16, Vec<u8>) {
    let mut frame = vec![0x80, 0x00];
    frame.extend_from_slice(&(key.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&(key.len() as u32).to_be_bytes());
    frame.extend_from_slice(&[0; 12]);
    frame.extend_from_slice(key.as_bytes());
    stream.write_all(&frame).unwrap();
    let mut header = [0u8; 24];
    stream.read_exact(&mut header).unwrap();
    let status = u16::from_be_bytes([header[6], header[7]]);
    let body = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
    let extras = header[4] as usize;
    let mut rest = vec![0u8; body];
    stream.read_exact(&mut rest).unwrap();
    (status, rest[extras..].to_vec())
}

/// The value a text `get` reply holds, if any.
fn value_of(reply: &str) -> Option<&str> {
    reply.lines().nth(1).filter(|_| reply.starts_with("VALUE "))
}

#[test]
fn a_proxy_whose_table_lags_serves_no_superseded_value_and_acknowledges_no_write_unread() {
    let cluster = EtcdCluster::start(1);
    let servers = [Memcached::start(), Memcached::start(), Memcached::start()];
    let addresses: Vec<String> = servers.iter().map(|m| m.address()).collect();
    let a_host = Host::start("host-a", &cluster.endpoints());
    let c_host = Host::start("host-c", &cluster.endpoints());
    commit(&cluster, &["add", &addresses[0], &addresses[1]]);
    let on = revision(&commit(&cluster, &["policy", "--fence", "on"]));
    let mirrored = |host: &Host, at: u64| {
        crate::common::wait_until(Duration::from_secs(20), || {
            host.revision("app") >= at as i64
        })
    };
    assert!(mirrored(&a_host, on) && mirrored(&c_host, on));
    let (key, old_owner) = key_moved(&addresses[..2], &addresses[2]);
    let domain = libmcshm::Domain::new("app").unwrap();
    let mut on_a =
        libmcshm::Client::for_domain(a_host.reg.dir(), &domain, Timeouts::default()).unwrap();
    let read_on_a = |client: &mut libmcshm::Client| {
        client
            .get(key.as_bytes())
            .unwrap()
            .map(|i| String::from_utf8(i.value).unwrap())
    };
    let proxy = Proxy::start_in(c_host.reg.dir(), "app", &[]);
    let mut w = proxy.connect();
    assert_eq!(w.ask(&format!("set {key} 0 0 3\r\nold\r\n")), "STORED\r\n");
    assert_eq!(read_on_a(&mut on_a).as_deref(), Some("old"));
    // A fencing domain's answers pass while the tables agree.
    assert_eq!(value_of(&w.ask(&format!("get {key}\r\n"))), Some("old"));

    // C's agent hangs; the add moves the key (to the new server) and A writes it there.
    c_host.signal_agent(libc::SIGSTOP);
    let added = commit(&cluster, &["add", &addresses[2]]);
    assert!(added["fenced"].as_u64().unwrap() >= 2, "{added}");
    assert!(mirrored(&a_host, revision(&added)));
    on_a.set(key.as_bytes(), b"new", 0, 0).unwrap();
    let old_server = servers.iter().find(|m| m.address() == old_owner).unwrap();
    // What a lagging proxy could break: read the old owner's copy ("old", if A's write did not
    // delete it there), or acknowledge a write on the old owner, where no host on the new table
    // reads. Put "old" back on the old owner, as a host that lags more could have left it.
    old_server.raw_set(&key, "old");
    assert!(c_host.revision("app") < revision(&added) as i64, "C lags");

    // Reads through C's proxy: the new value or a miss, never the old one, on every protocol.
    let text = w.ask(&format!("get {key}\r\n"));
    assert!(
        text == "END\r\n" || value_of(&text) == Some("new"),
        "text get: {text:?}"
    );
    let meta = w.ask(&format!("mg {key} v\r\n"));
    assert!(
        meta == "EN\r\n" || meta == "VA 3\r\nnew\r\n",
        "meta get: {meta:?}"
    );
    let multi = w.ask(&format!("get {key} other-key\r\n"));
    assert!(!multi.contains("old"), "multi-get: {multi:?}");
    let mut binary = std::net::TcpStream::connect(&proxy.address).unwrap();
    binary
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (status, value) = binary_get(&mut binary, &key);
    assert!(
        status == 0x0001 || (status == 0 && value == b"new"),
        "binary get: status {status:#x}, {:?}",
        String::from_utf8_lossy(&value)
    );

    // Writes through C's proxy fail, undone on the old owner (or land where A reads them).
    let set = w.ask(&format!("set {key} 0 0 6\r\nfrom-c\r\n"));
    match set.as_str() {
        "STORED\r\n" => assert_eq!(read_on_a(&mut on_a).as_deref(), Some("from-c")),
        _ => {
            assert!(
                set.starts_with("SERVER_ERROR table behind (server ")
                    && set.contains("is fenced at fleet revision"),
                "{set:?}"
            );
            assert_eq!(old_server.raw_get(&key), None, "undone on the old owner");
        }
    }
    let meta_set = w.ask(&format!("ms {key} 6\r\nmeta-c\r\n"));
    assert!(
        meta_set.starts_with("SERVER_ERROR table behind")
            || (meta_set == "HD\r\n" && read_on_a(&mut on_a).as_deref() == Some("meta-c")),
        "{meta_set:?}"
    );
    // noreply: nothing said, nothing left where no host reads.
    w.send(format!("set {key} 0 0 7 noreply\r\nquiet-c\r\n").as_bytes());
    assert_eq!(w.ask("mn\r\n"), "MN\r\n", "nothing for the noreply set");
    assert_ne!(old_server.raw_get(&key).as_deref(), Some("quiet-c"));
    let on_new = read_on_a(&mut on_a);
    assert!(
        matches!(on_new.as_deref(), Some("new" | "from-c" | "meta-c")),
        "A reads the last acknowledged write: {on_new:?}"
    );

    // Counted, logged once, and no server marked down.
    let stats = w.ask("stats\r\n");
    let fenced: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("STAT fenced_answers "))
        .expect("a fenced_answers stat")
        .parse()
        .unwrap();
    assert!(fenced >= 4, "{stats}");
    let log = proxy.log_to_end(Duration::from_millis(300)).join("\n");
    assert!(
        log.contains(&format!("server {old_owner} is fenced at fleet revision")),
        "{log}"
    );
    assert!(!log.contains("marked down"), "{log}");

    // The agent runs again while a write waits for C's table to reach the fence: it runs once
    // more on the new table (when the agent mirrors it within the wait), or fails as above.
    w.send(format!("set {key} 0 0 6\r\nrepeat\r\n").as_bytes());
    std::thread::sleep(Duration::from_millis(20));
    c_host.signal_agent(libc::SIGCONT);
    match w.reply().as_str() {
        "STORED\r\n" => assert_eq!(read_on_a(&mut on_a).as_deref(), Some("repeat")),
        other => {
            assert!(other.starts_with("SERVER_ERROR table behind"), "{other:?}");
            eprintln!("the agent did not mirror the add within the fence wait: {other:?}");
        }
    }

    // C's proxy reads and writes where A does.
    assert!(mirrored(&c_host, revision(&added)), "{}", c_host.log_text());
    let expected = read_on_a(&mut on_a).unwrap();
    assert_eq!(
        value_of(&w.ask(&format!("get {key}\r\n"))),
        Some(expected.as_str())
    );
    assert_eq!(
        w.ask(&format!("set {key} 0 0 7\r\nafter-c\r\n")),
        "STORED\r\n"
    );
    assert_eq!(read_on_a(&mut on_a).as_deref(), Some("after-c"));
}

/// A stand-in memcached that records every byte it is sent and answers `get` (every key holds
/// "old"; the fence key holds what `fence` says, or nothing), `set`, `delete` and `mg`.
struct Recorder {
    address: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    fence: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Recorder {
    fn start() -> Recorder {
        use std::io::BufRead;
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let fence = Arc::new(Mutex::new(None::<String>));
        let (seen, said) = (received.clone(), fence.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (seen, said) = (seen.clone(), said.clone());
                std::thread::spawn(move || {
                    let mut out = stream.try_clone().unwrap();
                    let mut input = std::io::BufReader::new(stream);
                    loop {
                        let mut line = Vec::new();
                        if input.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        seen.lock().unwrap().extend_from_slice(&line);
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        let words: Vec<&str> = text.split(' ').collect();
                        let reply = match words[0] {
                            "get" => {
                                let mut reply = String::new();
                                for key in &words[1..] {
                                    let value = match key.starts_with("mcshm.fence.") {
                                        true => said.lock().unwrap().clone(),
                                        false => Some("old".to_string()),
                                    };
                                    if let Some(v) = value {
                                        reply += &format!("VALUE {key} 0 {}\r\n{v}\r\n", v.len());
                                    }
                                }
                                reply + "END\r\n"
                            }
                            "set" => {
                                let len: usize = words[4].parse().unwrap();
                                let mut data = vec![0u8; len + 2];
                                input.read_exact(&mut data).unwrap();
                                seen.lock().unwrap().extend_from_slice(&data);
                                "STORED\r\n".to_string()
                            }
                            "delete" => "DELETED\r\n".to_string(),
                            "mg" => "VA 3\r\nold\r\n".to_string(),
                            _ => "ERROR\r\n".to_string(),
                        };
                        if out.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Recorder {
            address,
            received,
            fence,
        }
    }

    /// What it was sent since the last call.
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.received.lock().unwrap())).unwrap()
    }

    /// What it was sent since the last call, once it ends with `end` (waiting at most 5 s).
    fn take_when(&self, end: &str) -> String {
        crate::common::wait_until(Duration::from_secs(5), || {
            String::from_utf8_lossy(&self.received.lock().unwrap()).ends_with(end)
        });
        self.take()
    }

    fn set_fence(&self, fence: Option<&str>) {
        *self.fence.lock().unwrap() = fence.map(str::to_string);
    }
}

/// Domain `app` of `reg` on `server` alone, its table a mirror of fleet revision `revision`
/// with fencing `fence`.
fn mirrored_domain(reg: &crate::common::Reg, server: &str, revision: u64, fence: &str) {
    reg.ok("app", &["add", "--no-flush", server]);
    let domain = libmcshm::Domain::new("app").unwrap();
    let mut writer = libmcshm::Registry::open_writer(reg.dir(), &domain, false).unwrap();
    let fence: libmcshm::table::Fence = fence.parse().unwrap();
    writer
        .transact(|t| {
            t.fleet_revision = revision;
            t.policy.fence = fence;
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_domain_that_does_not_fence_is_unchanged_on_the_wire() {
    for (revision, fence) in [(7, "off"), (7, "auto"), (0, "on")] {
        let server = Recorder::start();
        let reg = crate::common::Reg::new();
        mirrored_domain(&reg, &server.address, revision, fence);
        server.set_fence(Some("9"));
        let proxy = Proxy::start(&reg, "app", &[]);
        let mut w = proxy.connect();
        w.send(b"get a\r\nget b\r\nset c 0 0 1\r\nx\r\n");
        assert_eq!(w.reply(), "VALUE a 0 3\r\nold\r\nEND\r\n");
        assert_eq!(w.reply(), "VALUE b 0 3\r\nold\r\nEND\r\n");
        assert_eq!(w.reply(), "STORED\r\n");
        assert_eq!(
            server.take(),
            "get a\r\nget b\r\nset c 0 0 1\r\nx\r\n",
            "fleet revision {revision}, fence {fence}: no fence read"
        );
    }
}

#[test]
fn a_fenced_batch_ends_with_one_fence_read_and_each_answer_is_judged_by_it() {
    let server = Recorder::start();
    let reg = crate::common::Reg::new();
    mirrored_domain(&reg, &server.address, 7, "on");
    let proxy = Proxy::start(&reg, "app", &[]);
    let mut w = proxy.connect();
    const FENCE: &str = "get mcshm.fence.app\r\n";

    // At the table's revision: each request is followed by a fence read, the answers used.
    server.set_fence(Some("7"));
    for _ in 0..10 {
        // (A new client's first pipeline is short: these make room for the one below.)
        assert_eq!(w.ask("get a\r\n"), "VALUE a 0 3\r\nold\r\nEND\r\n");
    }
    assert_eq!(server.take(), format!("get a\r\n{FENCE}").repeat(10));
    // Three pipelined requests: one fence read after them, in the same write.
    w.send(b"get a\r\nmg b v\r\nset c 0 0 1\r\nx\r\n");
    assert_eq!(w.reply(), "VALUE a 0 3\r\nold\r\nEND\r\n");
    assert_eq!(w.reply(), "VA 3\r\nold\r\n");
    assert_eq!(w.reply(), "STORED\r\n");
    assert_eq!(
        server.take(),
        format!("get a\r\nmg b v\r\nset c 0 0 1\r\nx\r\n{FENCE}")
    );

    // Fenced above it (and the table never catches up): reads are misses, a write is undone
    // where it landed (a delete with no fence read) and fails; nothing under noreply.
    server.set_fence(Some("8"));
    assert_eq!(w.ask("get a\r\n"), "END\r\n");
    assert_eq!(server.take(), format!("get a\r\n{FENCE}"));
    assert_eq!(w.ask("mg a v\r\n"), "EN\r\n");
    server.take();
    let set = w.ask("set c 0 0 1\r\nx\r\n");
    assert!(
        set.starts_with(&format!(
            "SERVER_ERROR table behind (server {} is fenced at fleet revision 8, this host's \
             table is at 7",
            server.address
        )),
        "{set}"
    );
    assert_eq!(
        server.take_when("delete c\r\n"),
        format!("set c 0 0 1\r\nx\r\n{FENCE}delete c\r\n")
    );
    w.send(b"set c 0 0 1 noreply\r\nx\r\n");
    assert_eq!(w.ask("mn\r\n"), "MN\r\n", "nothing for the noreply set");
    assert_eq!(
        server.take_when("delete c\r\n"),
        // (sent with its reply asked for, as every noreply the proxy forwards)
        format!("set c 0 0 1\r\nx\r\n{FENCE}delete c\r\n")
    );
    // No fence at all (the server restarted since the commit): the same.
    server.set_fence(None);
    assert_eq!(w.ask("get a b\r\n"), "END\r\n");
    assert!(
        w.ask("set c 0 0 1\r\nx\r\n")
            .starts_with("SERVER_ERROR table behind (server ")
    );

    // Counted, and the server is not marked down however many there were.
    for _ in 0..10 {
        assert_eq!(w.ask("get a\r\n"), "END\r\n");
    }
    let stats = w.ask("stats\r\n");
    assert!(stats.contains("STAT fenced_answers 16\r\n"), "{stats}");
    assert!(stats.contains("STAT server_errors 0\r\n"), "{stats}");
    assert_eq!(reg.list_json("app")["servers"][0]["state"], "up");
    server.set_fence(Some("7"));
    assert_eq!(w.ask("get a\r\n"), "VALUE a 0 3\r\nold\r\nEND\r\n");
}
