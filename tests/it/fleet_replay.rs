//! The `replay` rejoin policy across a fleet (issue 31): two hosts on a 3-member etcd, each
//! with its own agent, registry and invalidation log; writes through the library, mclient and
//! mcproxy. A server down for the fleet comes back
//! keeping its cache only once both hosts deleted on it what their clients wrote while it was
//! away; when one host does not answer in time the server is flushed instead.

use std::time::Duration;

use crate::common::etcd::{EtcdCluster, Host, fleet_cmd};
use crate::common::memcached::Memcached;
use crate::common::proxy::Proxy;
use crate::common::{Run, wait_until};
use libmcshm::registry::Invalidations;
use libmcshm::{Client, Domain, Timeouts};

const WAIT: Duration = Duration::from_secs(20);
const KEYS: usize = 2_000;

fn fleet_ok(cluster: &EtcdCluster, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let run = Run(fleet_cmd(&cluster.endpoints(), "app", &all)
        .output()
        .unwrap());
    assert_eq!(run.code(), 0, "mcadmin --etcd {args:?}: {}", run.stderr());
    serde_json::from_str(&run.stdout()).unwrap()
}

/// The fleet's reason for `server`.
fn fleet_reason(cluster: &EtcdCluster, server: &str) -> String {
    let list = fleet_ok(cluster, &["list"]);
    let servers = list["servers"].as_array().unwrap();
    let found = servers.iter().find(|s| s["address"] == server).unwrap();
    found["reason"].as_str().unwrap_or("").to_string()
}

fn client(host: &Host) -> Client {
    let timeouts = Timeouts {
        connect: Duration::from_millis(300),
        io: Duration::from_millis(300),
    };
    Client::for_domain(host.reg.dir(), &Domain::new("app").unwrap(), timeouts).unwrap()
}

/// A fleet of hosts a and b (agents with a 3 s replay deadline) over servers `s` and `other`
/// under `replay` and `rehash`; KEYS keys set through host a. Returns the hosts, a client on
/// each (both routed once, so that each host's log exists before `s` goes down) and the keys
/// `s` holds.
struct Blip {
    cluster: EtcdCluster,
    s: Memcached,
    _other: Memcached,
    a: Host,
    b: Host,
    ca: Client,
    cb: Client,
    on_s: Vec<String>,
}

impl Blip {
    fn start() -> Blip {
        let cluster = EtcdCluster::start(3);
        let (s, other) = (Memcached::start(), Memcached::start());
        let servers = [other.address(), s.address()];
        fleet_ok(&cluster, &["add", "--no-flush", &servers[0], &servers[1]]);
        fleet_ok(&cluster, &["set", &servers[1], "--retry-interval", "1"]);
        fleet_ok(
            &cluster,
            &["policy", "--rejoin", "replay", "--failover", "rehash"],
        );
        let deadline = ["--replay-deadline", "3"];
        let a = Host::start_with("a", &cluster.endpoints(), &deadline);
        let b = Host::start_with("b", &cluster.endpoints(), &deadline);
        for h in [&a, &b] {
            let ready = wait_until(WAIT, || {
                h.local("app")
                    .is_some_and(|l| l["policy"]["rejoin"] == "replay")
                    && h.state("app", &s.address()).as_deref() == Some("up")
            });
            assert!(
                ready,
                "host {} mirrors the domain: {}",
                h.name,
                h.log_text()
            );
        }
        let (mut ca, mut cb) = (client(&a), client(&b));
        let keys: Vec<String> = (0..KEYS).map(|n| format!("fleet-blip:{n}")).collect();
        // Loaded with the default timeouts: one 300 ms stall of a busy machine would fail a
        // set of the load, which is not what the test is about.
        let mut loader = Client::for_domain(
            a.reg.dir(),
            &Domain::new("app").unwrap(),
            Timeouts::default(),
        )
        .unwrap();
        for key in &keys {
            loader.set(key.as_bytes(), b"original", 0, 0).unwrap();
        }
        let on_s: Vec<String> = keys
            .into_iter()
            .filter(|k| ca.server_for(k.as_bytes()).unwrap().to_string() == s.address())
            .collect();
        assert!(on_s.len() > KEYS / 4, "s holds a share");
        ca.set(on_s[0].as_bytes(), b"original", 0, 0).unwrap();
        assert_eq!(
            cb.get(on_s[0].as_bytes()).unwrap().unwrap().value,
            b"original"
        );
        Blip {
            cluster,
            s,
            _other: other,
            a,
            b,
            ca,
            cb,
            on_s,
        }
    }

    /// Freezes `s` and takes it down for the fleet (as after failures: the fleet's retry
    /// probe brings it back once it answers); both hosts see it down.
    fn take_down(&self) {
        self.s.freeze();
        let s = self.s.address();
        fleet_ok(&self.cluster, &["down", "--retry", "--reason", "blip", &s]);
        for h in [&self.a, &self.b] {
            let down = wait_until(WAIT, || h.state("app", &s).as_deref() == Some("down"));
            assert!(down, "host {} sees s down: {}", h.name, h.log_text());
        }
    }

    /// Thaws `s` and waits until both hosts have it up again.
    fn bring_back(&self) {
        self.s.signal(libc::SIGCONT);
        let s = self.s.address();
        for h in [&self.a, &self.b] {
            let up = wait_until(WAIT, || h.state("app", &s).as_deref() == Some("up"));
            assert!(up, "host {} sees s up: {}", h.name, h.log_text());
        }
    }
}

/// The blip across a fleet: writes and deletes on host b and on host a while `s` is away, both
/// replayed before `s` serves either host again; every key nobody touched is still there.
#[test]
fn a_blip_in_the_fleet_is_replayed_by_every_host_and_costs_no_cache() {
    let mut blip = Blip::start();
    blip.take_down();
    let (by_b, deleted_by_b, by_a) = (
        &blip.on_s[..100],
        &blip.on_s[100..150],
        &blip.on_s[150..200],
    );
    for key in by_b {
        blip.cb.set(key.as_bytes(), b"newer-b", 0, 0).unwrap(); // to the interim owner
    }
    for key in deleted_by_b {
        blip.cb.delete(key.as_bytes()).unwrap();
    }
    for key in by_a {
        blip.ca.set(key.as_bytes(), b"newer-a", 0, 0).unwrap();
    }
    // The other front ends log too: mcproxy on host b, mclient on host a.
    let (by_proxy, by_mclient) = (&blip.on_s[200..220], &blip.on_s[220..240]);
    let proxy = Proxy::start(&blip.b.reg, "app", &["--timeout", "300"]);
    let mut wire = proxy.connect();
    for key in by_proxy {
        let stored = wire.ask(&format!("set {key} 0 0 7\r\nnewer-p\r\n"));
        assert_eq!(stored, "STORED\r\n", "{key} through mcproxy on host b");
    }
    for key in by_mclient {
        let set = std::process::Command::new(env!("CARGO_BIN_EXE_mclient"))
            .arg("--dir")
            .arg(blip.a.reg.dir())
            .args(["--domain", "app", "set", key, "newer-m"])
            .output()
            .unwrap();
        assert!(
            set.status.success(),
            "{}",
            String::from_utf8_lossy(&set.stderr)
        );
    }
    drop(wire);
    drop(proxy);
    blip.bring_back();
    let s = blip.s.address();
    let reason = fleet_reason(&blip.cluster, &s);
    assert!(
        reason.contains("2 hosts deleted the 240 keys it missed"),
        "replayed by both hosts: {reason}"
    );

    // Nothing touched during the pause was lost; nothing touched is served stale, on either host.
    let untouched = &blip.on_s[240..];
    let kept = untouched
        .iter()
        .filter(|k| blip.s.raw_get(k).as_deref() == Some("original"))
        .count();
    assert_eq!(kept, untouched.len(), "every untouched key of s kept");
    for c in [&mut blip.ca, &mut blip.cb] {
        let written = [
            (by_b, "newer-b"),
            (by_a, "newer-a"),
            (by_proxy, "newer-p"),
            (by_mclient, "newer-m"),
        ];
        for (keys, newer) in written {
            for key in keys {
                let value = c.get(key.as_bytes()).unwrap().map(|i| i.value);
                assert!(
                    value.is_none() || value.as_deref() == Some(newer.as_bytes()),
                    "{key}: {value:?} after {newer} was acknowledged during the pause"
                );
            }
        }
        for key in deleted_by_b {
            assert_eq!(c.get(key.as_bytes()).unwrap(), None, "{key} was deleted");
        }
    }
    // Each host deleted what its own clients logged: b its 100 sets, 50 deletes and 20 sets
    // through mcproxy, a its 50 and 20 through mclient.
    for (h, logged) in [(&blip.a, 70), (&blip.b, 170)] {
        let log = h.log_text();
        assert!(
            log.contains(&format!("deleted the {logged} keys this host logged")),
            "host {} replayed its own {logged} keys: {log}",
            h.name
        );
        // Once s is up there, the host's log of it is settled and cleared.
        let domain = Domain::new("app").unwrap();
        let log = Invalidations::open(h.reg.dir(), &domain).unwrap().unwrap();
        let cleared = wait_until(WAIT, || log.servers().is_empty());
        assert!(
            cleared,
            "host {}: the log still holds {:?}: {}",
            h.name,
            log.servers(),
            h.log_text()
        );
    }
    eprintln!(
        "fleet blip: {kept} of {} untouched keys of s kept; {reason}",
        untouched.len()
    );
}

/// A host whose agent hangs cannot vouch for what its clients wrote: the server is flushed
/// after the deadline, and the reason names the host.
#[test]
fn a_host_that_does_not_answer_in_time_gets_the_server_flushed() {
    let mut blip = Blip::start();
    blip.take_down();
    for key in &blip.on_s[..10] {
        blip.cb.set(key.as_bytes(), b"newer-b", 0, 0).unwrap(); // logged on host b
    }
    blip.b.signal_agent(libc::SIGSTOP);
    blip.s.signal(libc::SIGCONT);
    let s = blip.s.address();
    let mut reason = String::new();
    let up = wait_until(WAIT, || {
        reason = fleet_reason(&blip.cluster, &s);
        reason.starts_with("rejoined")
    });
    assert!(up, "the fleet has s up: {reason}: {}", blip.a.log_text());
    blip.b.signal_agent(libc::SIGCONT);
    assert!(
        reason.contains("flush_all") && reason.contains("host b did not answer within 3 s"),
        "{reason}"
    );
    let kept = blip
        .on_s
        .iter()
        .filter(|k| blip.s.raw_get(k).is_some())
        .count();
    assert_eq!(kept, 0, "flushed: nothing of what s held is served");
    let up_on_b = wait_until(WAIT, || blip.b.state("app", &s).as_deref() == Some("up"));
    assert!(up_on_b, "host b catches up: {}", blip.b.log_text());
    // Host b's agent, back, settles what its clients logged though it never answered.
    let log = Invalidations::open(blip.b.reg.dir(), &Domain::new("app").unwrap())
        .unwrap()
        .unwrap();
    assert!(
        wait_until(WAIT, || log.servers().is_empty()),
        "{:?}",
        log.servers()
    );
}

/// An operator's `mcadmin --etcd up` of a server held down: every host replays its log first,
/// and the server comes back with its cache.
#[test]
fn an_operators_fleet_up_replays_every_hosts_log() {
    let mut blip = Blip::start();
    let s = blip.s.address();
    fleet_ok(&blip.cluster, &["down", "--reason", "maintenance", &s]);
    for h in [&blip.a, &blip.b] {
        let down = wait_until(WAIT, || h.state("app", &s).as_deref() == Some("down"));
        assert!(down, "host {} sees s down", h.name);
    }
    let written = &blip.on_s[..20];
    for key in written {
        blip.cb.set(key.as_bytes(), b"newer-b", 0, 0).unwrap();
    }
    fleet_ok(&blip.cluster, &["up", &s]);
    let reason = fleet_reason(&blip.cluster, &s);
    assert!(
        reason.contains("2 hosts deleted the 20 keys it missed") && reason.contains("mcadmin up"),
        "{reason}"
    );
    for key in written {
        assert_eq!(
            blip.s.raw_get(key),
            None,
            "{key} deleted on s before it came back"
        );
    }
    let untouched = &blip.on_s[20..];
    let kept = untouched
        .iter()
        .filter(|k| blip.s.raw_get(k).is_some())
        .count();
    assert_eq!(kept, untouched.len(), "every untouched key of s kept");
    let up = wait_until(WAIT, || blip.b.state("app", &s).as_deref() == Some("up"));
    assert!(up);
    for key in written {
        let value = blip.cb.get(key.as_bytes()).unwrap().map(|i| i.value);
        assert!(value.is_none() || value.as_deref() == Some(b"newer-b".as_slice()));
    }
}
