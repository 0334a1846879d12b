//! Fencing through mcproxy (issue 34): the plain case of `fleet_fence.rs`, with host C's
//! clients talking to an mcproxy on C. C's agent is paused, so C's table (and so its proxy's)
//! lags; an add through etcd moves key k; host A writes k anew. Through C's proxy, on the text,
//! meta and binary protocols, a read of k is the new value or a miss, never the old one; a
//! write of k answers `SERVER_ERROR table behind` and is undone on the old owner (or lands where
//! A reads it); the fenced answers are counted and logged, and the servers are not marked down.
//! Once the agent runs again, C's proxy reads and writes where A does.

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
