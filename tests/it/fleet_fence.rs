//! Fencing, the commit side (issue 34): in a domain with fencing on, a fleet commit that moves
//! keys raises the domain's fence on the servers it moves them off, to the revision it read
//! plus one, before it puts the document; one that cannot fence such a server changes
//! nothing. Real etcd, real
//! memcached, mcadmin as a process; the fences are read back over raw connections.

use std::time::Duration;

use crate::common::Run;
use crate::common::closed_port_address;
use crate::common::etcd::{EtcdCluster, fleet_cmd};
use crate::common::memcached::Memcached;
use libmcshm::access::Access;
use libmcshm::fence;
use libmcshm::{Address, Timeouts};

const KEY: &str = "mcshm.fence.app";

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

/// Each server's fence, as a number (`None`: no fence item).
fn fences(servers: &[&Memcached]) -> Vec<Option<u64>> {
    servers
        .iter()
        .map(|m| m.raw_get(KEY).map(|v| v.parse().unwrap()))
        .collect()
}

#[test]
fn a_commit_that_moves_keys_fences_the_servers_it_moves_them_off_before_it_is_written() {
    let cluster = EtcdCluster::start(1);
    let (a, b, c) = (Memcached::start(), Memcached::start(), Memcached::start());
    let (aa, ba, ca) = (a.address(), b.address(), c.address());

    // A domain created with --etcd fences: its servers' fences are written (their add
    // emptied them), at 1: no host routes on anything older.
    let first = commit(&cluster, &["add", &aa, &ba]);
    assert_eq!(first["fenced"], 2, "{first}");
    assert_eq!(fences(&[&a, &b, &c]), [Some(1), Some(1), None]);
    let at = 1;
    let policy = commit(&cluster, &["policy"]);
    assert_eq!(policy["fence"], "on", "{policy}");
    let text = mcadmin(&cluster, &["set", &aa, "--retry-interval", "45s"]);
    assert_eq!(text.code(), 0, "{}", text.stderr());
    assert!(
        !text.stdout().contains("fenced"),
        "a retry interval moves no key: {}",
        text.stdout()
    );
    assert_eq!(fences(&[&a, &b]), [Some(at), Some(at)], "no fence for it");

    // An add under ketama moves keys off every server: all three fenced at the revision read
    // plus one, which the commit's own revision is at least (here exactly: one writer).
    let before = revision(&commit(&cluster, &["list"]));
    let run = mcadmin(&cluster, &["add", &ca]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(
        run.stdout().contains("(fenced 3 servers)"),
        "{}",
        run.stdout()
    );
    let added = revision(&commit(&cluster, &["list"]));
    assert_eq!(fences(&[&a, &b, &c]), [Some(before + 1); 3]);
    assert!(before < added);

    // A heavier c: a and b lose keys, c only gains: its fence stays as it was.
    let weighted = commit(&cluster, &["set", &ca, "--weight", "3"]);
    assert_eq!(weighted["fenced"], 2, "{weighted}");
    assert_eq!(
        fences(&[&a, &b, &c]),
        [Some(added + 1), Some(added + 1), Some(before + 1)]
    );
}

/// A domain from before fencing (fence auto, which is off) raises no fence; turned on, every
/// server it routes gets its first fence in the same commit, before any host reads one.
#[test]
fn a_domain_from_before_fencing_is_fenced_when_turned_on() {
    let cluster = EtcdCluster::start(1);
    let (a, b) = (Memcached::start(), Memcached::start());
    crate::common::etcd::create_unfenced(&cluster.endpoints(), "app");
    let policy = |value: &str| {
        let list = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(list.path(), format!("policy: fence={value}\n")).unwrap();
        commit(
            &cluster,
            &[
                "load",
                "--partial",
                "--allow-empty",
                list.path().to_str().unwrap(),
            ],
        )
    };
    policy("auto");
    let added = commit(&cluster, &["add", &a.address(), &b.address()]);
    assert_eq!(added["fenced"], 0, "{added}");
    assert_eq!(commit(&cluster, &["policy"])["fence"], "auto");
    assert_eq!(fences(&[&a, &b]), [None, None]);
    let on = commit(&cluster, &["policy", "--fence", "on"]);
    assert_eq!(on["fenced"], 2, "{on}");
    let at = revision(&added) + 1;
    assert_eq!(fences(&[&a, &b]), [Some(at), Some(at)]);
}

#[test]
fn a_server_that_cannot_be_fenced_refuses_the_commit_unless_the_commit_takes_it_out() {
    let cluster = EtcdCluster::start(1);
    let a = Memcached::start();
    let (aa, dead) = (a.address(), closed_port_address());
    commit(&cluster, &["add", &aa]);
    // Added without a flush while it answers nobody: new, so no host has used it; counted
    // not fenced (every host takes a server without a fence as behind until a commit writes
    // one: the agents' repair, once it answers).
    let run = mcadmin(&cluster, &["add", "--no-flush", &dead]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(run.stdout().contains("1 not reached"), "{}", run.stdout());
    let listed = commit(&cluster, &["list"]);
    assert_eq!(
        crate::common::addresses(&listed),
        [aa.as_str(), dead.as_str()]
    );

    // In the table and up, a weight change moves keys off it: refused with one line that
    // names it, the fleet's table as it was.
    let at = revision(&listed);
    let run = mcadmin(&cluster, &["set", &aa, "--weight", "5"]);
    assert_eq!(run.code(), 5, "{}", run.stderr());
    assert_eq!(run.stderr().trim().lines().count(), 1, "{}", run.stderr());
    assert!(
        run.stderr()
            .contains(&format!("could not raise the fence on {dead}")),
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("nothing was changed"),
        "{}",
        run.stderr()
    );
    assert_eq!(revision(&commit(&cluster, &["list"])), at, "etcd unchanged");

    // Marking it down takes it out of service: it goes through, counted as not fenced.
    let run = mcadmin(&cluster, &["down", &dead, "--reason", "dead"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(run.stdout().contains("1 not reached"), "{}", run.stdout());
    let down = commit(&cluster, &["list"]);
    assert!(revision(&down) > at);
    // Down in the table read and in the change (under failover none it stays on the ring,
    // but no host sends it anything): not a target. A heavier a only gains keys: nothing to
    // fence, and the commit goes through.
    let weighted = commit(&cluster, &["set", &aa, "--weight", "5"]);
    assert_eq!(
        (&weighted["fenced"], &weighted["unfenced"]),
        (&0.into(), &0.into())
    );
    assert!(revision(&weighted) > revision(&down));
}

#[test]
fn a_raise_only_ever_raises_and_overwrites_what_no_mcshm_wrote() {
    let m = Memcached::start();
    let address = Address::parse(&m.address()).unwrap();
    let key = KEY.as_bytes();
    let t = Timeouts {
        connect: Duration::from_secs(2),
        io: Duration::from_secs(2),
    };
    let access = Access::default();
    assert_eq!(fence::read(&address, key, t, &access), Ok(None));
    let raised = fence::raise(&address, key, 10, t, &access).unwrap();
    assert_eq!((raised.before, raised.wrote), (None, true));
    let lower = fence::raise(&address, key, 5, t, &access).unwrap();
    assert_eq!((lower.before, lower.wrote), (Some(10), false));
    assert_eq!(m.raw_get(KEY).as_deref(), Some("10"));
    let higher = fence::raise(&address, key, 12, t, &access).unwrap();
    assert_eq!((higher.before, higher.wrote), (Some(10), true));
    m.raw_set(KEY, "not a number");
    let over = fence::raise(&address, key, 3, t, &access).unwrap();
    assert_eq!((over.before, over.wrote), (None, true));
    assert_eq!(fence::read(&address, key, t, &access), Ok(Some(3)));

    // Many raises at once, from threads of several processes' worth: the highest stays.
    let addresses = vec![address.clone(); 16];
    std::thread::scope(|s| {
        for epoch in 100..108 {
            let addresses = &addresses;
            let access = &access;
            s.spawn(move || {
                for (_, raised) in fence::raise_all(addresses, key, epoch, t, access) {
                    raised.unwrap();
                }
            });
        }
    });
    assert_eq!(fence::read(&address, key, t, &access), Ok(Some(107)));

    // An unreachable server is an error of its own; the others are raised.
    let dead = Address::parse(&closed_port_address()).unwrap();
    let results = fence::raise_all(&[dead.clone(), address.clone()], key, 200, t, &access);
    assert!(results[0].1.is_err(), "{results:?}");
    assert!(results[1].1.is_ok(), "{results:?}");
    assert_eq!(m.raw_get(KEY).as_deref(), Some("200"));
}

/// A key that `before` routes to one of its servers and `after` (the same servers plus one)
/// routes to the added one: a key the add moves.
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

/// The plain case: host C's agent is paused, so C's table lags; an add through etcd
/// moves key k; the new value is written through host A. On C, through the library and
/// mclient, a read of k is the new value or a miss, never the old one; a write of k on C fails
/// (undone where it landed) or lands where A reads it. Once the agent runs again, C converges.
#[test]
fn a_host_whose_table_lags_reads_no_superseded_value_and_writes_nowhere_unread() {
    let cluster = EtcdCluster::start(1);
    let servers = [Memcached::start(), Memcached::start(), Memcached::start()];
    let addresses: Vec<String> = servers.iter().map(|m| m.address()).collect();
    let mut a_host = crate::common::etcd::Host::start("host-a", &cluster.endpoints());
    let c_host = crate::common::etcd::Host::start("host-c", &cluster.endpoints());
    let _ = &mut a_host;
    commit(&cluster, &["add", &addresses[0], &addresses[1]]);
    let on = revision(&commit(&cluster, &["policy", "--fence", "on"]));
    let mirrored = |host: &crate::common::etcd::Host, at: u64| {
        crate::common::wait_until(Duration::from_secs(20), || {
            host.revision("app") >= at as i64
        })
    };
    assert!(mirrored(&a_host, on) && mirrored(&c_host, on));
    let (key, old_owner) = key_moved(&addresses[..2], &addresses[2]);
    let t = Timeouts::default();
    let domain = libmcshm::Domain::new("app").unwrap();
    let client = |host: &crate::common::etcd::Host| {
        libmcshm::Client::for_domain(host.reg.dir(), &domain, t).unwrap()
    };
    let (mut on_a, mut on_c) = (client(&a_host), client(&c_host));
    on_c.set(key.as_bytes(), b"old", 0, 0).unwrap();
    assert_eq!(
        on_a.get(key.as_bytes()).unwrap().map(|i| i.value),
        Some(b"old".to_vec())
    );

    // C's agent hangs; the add moves the key (to the new server) and A writes it there.
    c_host.signal_agent(libc::SIGSTOP);
    let added = commit(&cluster, &["add", &addresses[2]]);
    assert!(added["fenced"].as_u64().unwrap() >= 2, "{added}");
    assert!(mirrored(&a_host, revision(&added)));
    on_a.set(key.as_bytes(), b"new", 0, 0).unwrap();
    let old_server = servers.iter().find(|m| m.address() == old_owner).unwrap();
    // The old owner's copy is gone (A's write deletes it there: the add marked it), so what a
    // lagging host could break is a write: acknowledged on the old owner, where no host on
    // the new table reads, or read back there after A wrote the key anew.

    // C still routes the key to its old owner, which holds "old": never served.
    assert!(c_host.revision("app") < revision(&added) as i64, "C lags");
    let read = on_c.get(key.as_bytes()).unwrap().map(|i| i.value);
    assert!(read.is_none() || read == Some(b"new".to_vec()), "{read:?}");
    let many = on_c.get_many(&[key.as_bytes()], false).unwrap();
    assert!(
        many.items.iter().all(|i| i.value == b"new"),
        "{:?}",
        many.items
    );
    let out = c_host.reg.mclient("app", &["get", &key]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("old"),
        "{out:?}"
    );
    // A write on C fails (and is undone on the old owner), or lands where A reads it.
    match on_c.set(key.as_bytes(), b"from-c", 0, 0) {
        Err(err @ libmcshm::Error::TableBehind { .. }) => {
            let text = err.to_string();
            assert!(text.contains("is fenced at fleet revision"), "{text}");
            assert_ne!(
                old_server.raw_get(&key).as_deref(),
                Some("from-c"),
                "undone"
            );
        }
        other => panic!("a write on a table that lags: {other:?}"),
    }
    let out = c_host.reg.mclient("app", &["set", &key, "from-mclient"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fenced") && stderr.lines().count() == 1,
        "{stderr}"
    );
    // Counted for the host (`mcadmin list`, the metrics page).
    let fenced = c_host.local("app").unwrap()["fleet"]["fenced_answers"].as_u64();
    assert!(fenced.is_some_and(|n| n >= 2), "{fenced:?}");
    assert_eq!(
        on_a.get(key.as_bytes()).unwrap().map(|i| i.value),
        Some(b"new".to_vec()),
        "A reads the last acknowledged write"
    );

    // The agent runs again: C mirrors the add and reads and writes where A does.
    c_host.signal_agent(libc::SIGCONT);
    assert!(mirrored(&c_host, revision(&added)), "{}", c_host.log_text());
    assert_eq!(
        on_c.get(key.as_bytes()).unwrap().map(|i| i.value),
        Some(b"new".to_vec())
    );
    on_c.set(key.as_bytes(), b"from-c", 0, 0).unwrap();
    assert_eq!(
        on_a.get(key.as_bytes()).unwrap().map(|i| i.value),
        Some(b"from-c".to_vec())
    );
}

/// A domain of `servers` with fencing on, mirrored by one host's agent: the host, and the
/// fleet revision it mirrors.
fn fenced_domain(
    cluster: &EtcdCluster,
    servers: &[&Memcached],
) -> (crate::common::etcd::Host, u64) {
    // Looks at the fences every second (every refresh, 2 s), not every 10 s.
    let host = crate::common::etcd::Host::start_with(
        "host-a",
        &cluster.endpoints(),
        &["--fence-interval", "1"],
    );
    let addresses: Vec<String> = servers.iter().map(|m| m.address()).collect();
    let args: Vec<&str> = ["add"]
        .into_iter()
        .chain(addresses.iter().map(String::as_str))
        .collect();
    commit(cluster, &args);
    let on = revision(&commit(cluster, &["policy", "--fence", "on"]));
    assert!(crate::common::wait_until(Duration::from_secs(20), || {
        host.revision("app") >= on as i64
    }));
    (host, on)
}

/// A key the host's table routes to `server`.
fn key_on(client: &mut libmcshm::Client, server: &str) -> String {
    (0..100_000)
        .map(|i| format!("k{i}"))
        .find(|k| client.server_for(k.as_bytes()).unwrap().to_string() == server)
        .unwrap()
}

#[test]
fn a_fence_lost_with_a_restart_is_repaired_by_an_agent_and_the_server_serves_again() {
    let cluster = EtcdCluster::start(1);
    let (a, mut b) = (Memcached::start(), Memcached::start());
    let (host, on) = fenced_domain(&cluster, &[&a, &b]);
    let domain = libmcshm::Domain::new("app").unwrap();
    let mut client =
        libmcshm::Client::for_domain(host.reg.dir(), &domain, Timeouts::default()).unwrap();
    let key = key_on(&mut client, &b.address());
    client.set(key.as_bytes(), b"v1", 0, 0).unwrap();
    // Restarted: the fence is gone with every item; until a commit writes it anew, b's
    // answers are not used (a miss; a write fails) and b is not marked down for it.
    b.restart();
    assert_eq!(b.raw_get(KEY), None);
    let started = std::time::Instant::now();
    let repaired = crate::common::wait_until(Duration::from_secs(20), || {
        b.raw_get(KEY).is_some() && host.revision("app") > on as i64
    });
    assert!(repaired, "no repair: {}", host.log_text());
    let took = started.elapsed();
    // The agent logs it once its look returns (the new revision may arrive first).
    assert!(
        crate::common::wait_until(Duration::from_secs(10), || host
            .log_text()
            .contains("repaired the missing fence of")),
        "{}",
        host.log_text()
    );
    let fence: u64 = b.raw_get(KEY).unwrap().parse().unwrap();
    assert!(fence > on, "raised above the revision read ({on}): {fence}");
    // The restart closed the client's connection: one failure, as after any restart.
    let _ = client.get(key.as_bytes());
    client.set(key.as_bytes(), b"v2", 0, 0).unwrap();
    assert_eq!(
        client.get(key.as_bytes()).unwrap().map(|i| i.value),
        Some(b"v2".to_vec())
    );
    assert_eq!(host.state("app", &b.address()).as_deref(), Some("up"));
    eprintln!("repaired in {took:?}");
}

#[test]
fn a_fence_a_failed_commit_left_above_the_fleet_is_healed_by_an_agent() {
    let cluster = EtcdCluster::start(1);
    let (a, b) = (Memcached::start(), Memcached::start());
    let (host, on) = fenced_domain(&cluster, &[&a, &b]);
    // What a commit that fenced and then failed before its put leaves: a fence at the
    // revision read plus one, and no such revision.
    let address = Address::parse(&b.address()).unwrap();
    let t = Timeouts::default();
    fence::raise(&address, KEY.as_bytes(), on + 1, t, &Access::default()).unwrap();
    let domain = libmcshm::Domain::new("app").unwrap();
    let mut client = libmcshm::Client::for_domain(host.reg.dir(), &domain, t).unwrap();
    let key = key_on(&mut client, &b.address());
    let healed =
        crate::common::wait_until(Duration::from_secs(20), || host.revision("app") > on as i64);
    assert!(healed, "no heal: {}", host.log_text());
    assert!(
        crate::common::wait_until(Duration::from_secs(10), || host
            .log_text()
            .contains("healed a fence at")),
        "{}",
        host.log_text()
    );
    client.set(key.as_bytes(), b"after", 0, 0).unwrap();
    assert_eq!(
        client.get(key.as_bytes()).unwrap().map(|i| i.value),
        Some(b"after".to_vec())
    );
}

/// A sweep on a host whose table lags judges keys by an older placement: it must not clear
/// the mark of a server a newer commit moved keys off (and fenced), or a stray it kept would
/// be left unmarked once the agent pushes the clear.
#[test]
fn a_sweep_on_a_table_that_lags_keeps_the_mark() {
    let cluster = EtcdCluster::start(1);
    let (a, b, c) = (Memcached::start(), Memcached::start(), Memcached::start());
    let (host, _) = fenced_domain(&cluster, &[&a, &b]);
    // A heavier b: a loses keys and is marked, on the host too.
    let heavier = revision(&commit(&cluster, &["set", &b.address(), "--weight", "3"]));
    assert!(crate::common::wait_until(Duration::from_secs(20), || {
        host.revision("app") >= heavier as i64
    }));
    let marked = |host: &crate::common::etcd::Host| {
        let list = host.local("app").unwrap();
        list["servers"][0]["strays_since"].as_u64().unwrap()
    };
    assert_ne!(marked(&host), 0, "a is marked");
    // The agent hangs; an add moves keys off a again (and fences it above the host's table).
    host.signal_agent(libc::SIGSTOP);
    commit(&cluster, &["add", &c.address()]);
    let run = host.reg.run("app", &["--json", "settle", &a.address()]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let swept: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(
        swept[0]["cleared"], false,
        "swept on a lagging table: {swept}"
    );
    assert_ne!(marked(&host), 0, "the mark stays: {swept}");
    host.signal_agent(libc::SIGCONT);
}

/// A drain on a host whose table lags moves keys by an older placement: every copy to a
/// server a newer commit fenced is refused and undone, and the drained server stays in the
/// table (its keys are still there for the next pass).
#[test]
fn a_drain_on_a_table_that_lags_moves_nothing_where_no_host_reads() {
    let cluster = EtcdCluster::start(1);
    let (a, b, c) = (Memcached::start(), Memcached::start(), Memcached::start());
    let (host, _) = fenced_domain(&cluster, &[&a, &b]);
    let domain = libmcshm::Domain::new("app").unwrap();
    let mut client =
        libmcshm::Client::for_domain(host.reg.dir(), &domain, Timeouts::default()).unwrap();
    let keys: Vec<String> = (0..200)
        .map(|i| format!("d{i}"))
        .filter(|k| client.server_for(k.as_bytes()).unwrap().to_string() == b.address())
        .take(20)
        .collect();
    for k in &keys {
        client.set(k.as_bytes(), b"v", 0, 0).unwrap();
    }
    host.signal_agent(libc::SIGSTOP);
    commit(&cluster, &["add", &c.address()]);
    let run = host
        .reg
        .run("app", &["--json", "drain", &b.address(), "--rate", "0"]);
    host.signal_agent(libc::SIGCONT);
    assert_ne!(
        run.code(),
        0,
        "a drain on a lagging table: {}",
        run.stdout()
    );
    for k in &keys {
        assert_eq!(
            a.raw_get(k),
            None,
            "{k} copied where no host on the fleet's table reads"
        );
        assert_eq!(
            b.raw_get(k).as_deref(),
            Some("v"),
            "{k} left on the drained server"
        );
    }
    let list = host.local("app").unwrap();
    assert!(
        crate::common::addresses(&list).contains(&b.address()),
        "{list}"
    );
}
