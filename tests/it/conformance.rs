//! One scenario, every front end: what the library's blocking client does and what mcproxy
//! does must end in the same server contents and the same table, since both only execute the
//! routing core's sequences. Each test here is a place where the two once drifted apart (or
//! where a writer could be made to panic), driven through real processes.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::liar::Liar;
use crate::common::memcached::Memcached;
use crate::common::proxy::Proxy;
use crate::common::{MCADMIN, Reg, wait_until};

const MCLIENT: &str = env!("CARGO_BIN_EXE_mclient");

fn watch(reg: &Reg, domain: &str) -> Child {
    Command::new(MCADMIN)
        .arg("--dir")
        .arg(reg.dir())
        .args(["--domain", domain, "watch", "--interval", "200ms"])
        .args(["--failures", "2", "--timeout", "500ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A server whose every answer is a 300-byte error: `watch` marks it down with a reason cut to
/// the table's 192 bytes (who did it kept whole) and goes on watching; it used to panic inside
/// its transaction and, under systemd, crash-loop with the server never marked down.
#[test]
fn watch_survives_an_error_longer_than_a_reason() {
    let reg = Reg::new();
    let good = Memcached::start();
    let liar = Liar::start(format!("SERVER_ERROR {}\r\n", "e".repeat(300)));
    reg.ok(
        "long",
        &["add", "--no-flush", &good.address(), liar.address()],
    );
    let mut watcher = watch(&reg, "long");
    let state = |i: usize| reg.list_json("long")["servers"][i].clone();
    let down = wait_until(Duration::from_secs(10), || state(1)["state"] == "down");
    let alive = watcher.try_wait().unwrap().is_none();
    let _ = watcher.kill();
    let out = watcher.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(alive, "watch died: {log}");
    assert!(down, "watch did not mark the server down: {log}");
    let reason = state(1)["reason"].as_str().unwrap().to_string();
    assert!(reason.len() <= 192, "{} bytes: {reason}", reason.len());
    assert!(reason.starts_with("2 failed probes"), "{reason}");
    assert!(reason.contains("eeee"), "the error's text, cut: {reason}");
    assert!(
        reason.ends_with(')') && reason.contains("(pid "),
        "{reason}"
    );
    assert_eq!(state(0)["state"], "up", "the good server stays up");
}

/// The two front ends, as real processes: mclient (the library's blocking client) and a
/// client of mcproxy (a raw connection).
#[derive(Clone, Copy, Debug)]
enum Front {
    Library,
    Proxy,
}

/// One front end of domain `domain`: runs text commands and answers as memcached would.
struct Runner<'a> {
    front: Front,
    reg: &'a Reg,
    domain: &'a str,
    proxy: Option<Proxy>,
}

impl<'a> Runner<'a> {
    fn start(front: Front, reg: &'a Reg, domain: &'a str) -> Runner<'a> {
        let proxy = match front {
            Front::Library => None,
            Front::Proxy => Some(Proxy::start(reg, domain, &["--timeout", "10s"])),
        };
        Runner {
            front,
            reg,
            domain,
            proxy,
        }
    }

    fn mclient(&self, args: &[&str]) -> std::process::Output {
        Command::new(MCLIENT)
            .arg("--dir")
            .arg(self.reg.dir())
            .args(["--domain", self.domain, "--timeout", "10s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `get KEY`: the value, or `None` on a miss.
    fn get(&self, key: &str) -> Option<String> {
        match (self.front, &self.proxy) {
            (Front::Library, _) => {
                let out = self.mclient(&["get", key]);
                eprintln!(
                    "mclient get {key}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                (out.status.code() == Some(0))
                    .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            }
            (Front::Proxy, Some(proxy)) => {
                let reply = proxy.connect().ask(&format!("get {key}\r\n"));
                let mut lines = reply.split("\r\n");
                let head = lines.next().unwrap_or_default();
                head.starts_with("VALUE ")
                    .then(|| lines.next().unwrap_or_default().to_string())
            }
            (Front::Proxy, None) => unreachable!(),
        }
    }

    /// `set KEY VALUE`, started in the background: wait for it with [`Write::done`].
    fn start_set(&self, key: &str, value: &str) -> Write {
        match (self.front, &self.proxy) {
            (Front::Library, _) => {
                let child = Command::new(MCLIENT)
                    .arg("--dir")
                    .arg(self.reg.dir())
                    .args(["--domain", self.domain, "--timeout", "10s"])
                    .args(["set", key, value])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                Write::Process(child)
            }
            (Front::Proxy, Some(proxy)) => {
                let mut wire = proxy.connect();
                let request = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
                Write::Thread(std::thread::spawn(move || wire.ask(&request)))
            }
            (Front::Proxy, None) => unreachable!(),
        }
    }
}

enum Write {
    Process(Child),
    Thread(std::thread::JoinHandle<String>),
}

impl Write {
    /// Whether the write succeeded (mclient's exit 0, the proxy's STORED).
    fn done(self) -> Result<(), String> {
        match self {
            Write::Process(child) => {
                let out = child.wait_with_output().unwrap();
                match out.status.success() {
                    true => Ok(()),
                    false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
                }
            }
            Write::Thread(thread) => match thread.join().unwrap() {
                reply if reply == "STORED\r\n" => Ok(()),
                reply => Err(reply),
            },
        }
    }
}

/// Marks `server` draining (as `mcadmin drain` starts) without moving any of its keys: reads
/// are then the only thing that moves them.
fn start_draining(reg: &Reg, domain: &str, server: &str) {
    let domain = libmcshm::Domain::new(domain).unwrap();
    let writer = libmcshm::Registry::open_writer(reg.dir(), &domain, false).unwrap();
    let address = libmcshm::Address::parse(server).unwrap();
    let timeouts = libmcshm::Timeouts::default();
    libmcshm::drain::Drain::start(reg.dir(), &domain, writer, &address, timeouts).unwrap();
}

/// The state of every server of `domain`, in table order.
fn states(reg: &Reg, domain: &str) -> Vec<String> {
    let list = reg.list_json(domain);
    let servers = list["servers"].as_array().unwrap();
    servers.iter().map(|s| s["state"].to_string()).collect()
}

/// A read of a draining server's key copies it to the new owner with `add`, then deletes it
/// from the draining server only if the new owner holds a value: a new owner that refuses it
/// (a value over its item size) must not cost the only copy. mcproxy deleted it after any
/// reply, `SERVER_ERROR` included. Both front ends answer the value and leave the servers alike.
#[test]
fn a_drain_keeps_the_only_copy_of_a_value_the_new_owner_refuses() {
    let big = "b".repeat(2000);
    let mut ends = Vec::new();
    for front in [Front::Library, Front::Proxy] {
        let reg = Reg::new();
        let draining = Memcached::start();
        // The new owner stores items of at most 1 kB.
        let owner = Memcached::start_with(&["-I", "1k", "-o", "slab_chunk_max=512"]);
        reg.ok(
            "dr",
            &["add", "--no-flush", &draining.address(), &owner.address()],
        );
        // Two keys the draining server owned (a drain looks there for them).
        let keys: Vec<String> = (0..200)
            .map(|n| format!("k{n}"))
            .filter(|k| crate::common::proxy::owner_port_in(&reg, "dr", k) == draining.port)
            .take(2)
            .collect();
        let (big_key, small_key) = (keys[0].as_str(), keys[1].as_str());
        draining.raw_set(big_key, &big);
        draining.raw_set(small_key, "s");
        start_draining(&reg, "dr", &draining.address());
        let runner = Runner::start(front, &reg, "dr");
        let read_big = runner.get(big_key);
        let read_small = runner.get(small_key);
        assert_eq!(
            read_big.as_deref(),
            Some(big.as_str()),
            "{front:?}: the value is read"
        );
        assert_eq!(read_small.as_deref(), Some("s"), "{front:?}");
        assert_eq!(
            draining.raw_get(big_key).as_deref(),
            Some(big.as_str()),
            "{front:?}: the only copy is kept"
        );
        assert_eq!(owner.raw_get(big_key), None, "{front:?}: refused");
        assert_eq!(draining.raw_get(small_key), None, "{front:?}: moved");
        assert_eq!(owner.raw_get(small_key).as_deref(), Some("s"), "{front:?}");
        ends.push(states(&reg, "dr"));
    }
    assert_eq!(ends[0], ends[1], "the same table through both front ends");
}

/// Whether some connection to loopback port `port` has bytes queued that its (frozen) server
/// has not read: a request has been sent to it.
fn request_queued_at(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields
            .get(1)
            .and_then(|a| a.split(':').nth(1))
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        let rx_queue = fields
            .get(4)
            .and_then(|q| q.split(':').nth(1))
            .and_then(|q| u64::from_str_radix(q, 16).ok());
        local_port == Some(port) && rx_queue.is_some_and(|n| n > 0)
    })
}

/// A set sent on one table that changes before its reply comes (its server frozen meanwhile)
/// follows the new table: deleted from the server where the key no longer belongs, and sent
/// again to the key's new owner, so the value is where readers look. mcproxy only deleted it
/// (the value was lost); the library followed. Both now end with the same servers' contents.
#[test]
fn a_set_whose_table_changed_in_flight_ends_on_the_new_owner() {
    let mut ends = Vec::new();
    for front in [Front::Library, Front::Proxy] {
        let reg = Reg::new();
        let (interim, owner) = (Memcached::start(), Memcached::start());
        reg.ok(
            "tc",
            &["add", "--no-flush", &interim.address(), &owner.address()],
        );
        reg.ok("tc", &["policy", "--failover", "rehash"]);
        let key = (0..200)
            .map(|n| format!("k{n}"))
            .find(|k| crate::common::proxy::owner_port_in(&reg, "tc", k) == owner.port)
            .expect("a key of the second server");
        // The owner is down: the set goes to the interim server, frozen before it answers.
        reg.ok("tc", &["down", &owner.address()]);
        let runner = Runner::start(front, &reg, "tc");
        interim.freeze();
        let write = runner.start_set(&key, "new");
        let queued = wait_until(Duration::from_secs(10), || request_queued_at(interim.port));
        // The table changes while the set is in flight: the owner is back.
        reg.ok("tc", &["up", &owner.address()]);
        interim.signal(libc::SIGCONT);
        assert!(
            queued,
            "{front:?}: the set never reached the interim server"
        );
        write
            .done()
            .unwrap_or_else(|e| panic!("{front:?}: the set failed: {e}"));
        let contents = (interim.raw_get(&key), owner.raw_get(&key));
        assert_eq!(
            contents,
            (None, Some("new".to_string())),
            "{front:?}: (interim, owner)"
        );
        assert_eq!(runner.get(&key).as_deref(), Some("new"), "{front:?}");
        ends.push((contents, states(&reg, "tc")));
    }
    assert_eq!(ends[0], ends[1], "the same end through both front ends");
}
