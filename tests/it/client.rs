//! The libmcshm client against real memcached processes: every verb, binary values, limits,
//! bad keys, routing through a registry domain, and the shared failure view.

use crate::common;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::memcached::Memcached;
use crate::common::{Reg, addresses};
use libmcshm::{
    Address, Client, Domain, Error, MarkedDown, StoreItem, StoreVerb, Stored, Timeouts,
};

fn client_for(servers: &[&Memcached]) -> Client {
    let list: Vec<Address> = servers
        .iter()
        .map(|m| Address::parse(&m.address()).unwrap())
        .collect();
    Client::for_servers(&list, Timeouts::default()).unwrap()
}

#[test]
fn every_verb_against_a_real_memcached() {
    let mc = Memcached::start();
    let mut c = client_for(&[&mc]);
    assert_eq!(c.get(b"k").unwrap(), None);
    assert_eq!(c.set(b"k", b"v1", 42, 0).unwrap(), Stored::Stored);
    let item = c.get(b"k").unwrap().unwrap();
    assert_eq!((item.value.as_slice(), item.flags), (&b"v1"[..], 42));
    assert_eq!(
        c.store(StoreVerb::Add, b"k", b"x", 0, 0).unwrap(),
        Stored::NotStored
    );
    assert_eq!(
        c.store(StoreVerb::Add, b"k2", b"x", 0, 0).unwrap(),
        Stored::Stored
    );
    assert_eq!(
        c.store(StoreVerb::Replace, b"nope", b"x", 0, 0).unwrap(),
        Stored::NotStored
    );
    assert_eq!(
        c.store(StoreVerb::Replace, b"k2", b"y", 0, 0).unwrap(),
        Stored::Stored
    );
    assert_eq!(
        c.store(StoreVerb::Append, b"k2", b"z", 0, 0).unwrap(),
        Stored::Stored
    );
    assert_eq!(
        c.store(StoreVerb::Prepend, b"k2", b"<", 0, 0).unwrap(),
        Stored::Stored
    );
    assert_eq!(c.get(b"k2").unwrap().unwrap().value, b"<yz");
    let cas = c.gets(b"k").unwrap().unwrap().cas.unwrap();
    assert_eq!(
        c.store(StoreVerb::Cas(cas + 1), b"k", b"v2", 0, 0).unwrap(),
        Stored::Exists
    );
    assert_eq!(
        c.store(StoreVerb::Cas(cas), b"k", b"v2", 0, 0).unwrap(),
        Stored::Stored
    );
    assert_eq!(
        c.store(StoreVerb::Cas(1), b"gone", b"v", 0, 0).unwrap(),
        Stored::NotFound
    );
    assert_eq!(c.get(b"k").unwrap().unwrap().value, b"v2");
    c.set(b"n", b"10", 0, 0).unwrap();
    assert_eq!(c.incr(b"n", 5).unwrap(), Some(15));
    assert_eq!(c.decr(b"n", 20).unwrap(), Some(0));
    assert_eq!(c.incr(b"missing", 1).unwrap(), None);
    assert!(c.touch(b"n", 100).unwrap());
    assert!(!c.touch(b"missing", 100).unwrap());
    let gat = c.gat(b"n", 200, true).unwrap().unwrap();
    assert!(gat.cas.is_some());
    assert_eq!(c.gat(b"missing", 1, false).unwrap(), None);
    assert!(c.delete(b"n").unwrap());
    assert!(!c.delete(b"n").unwrap());
    let many = c.get_many(&[b"k", b"k2", b"missing"], false).unwrap();
    assert!(many.errors.is_empty());
    let mut keys: Vec<_> = many.items.iter().map(|i| i.key.clone()).collect();
    keys.sort();
    assert_eq!(keys, [b"k".to_vec(), b"k2".to_vec()]);
    let versions = c.versions(None).unwrap();
    assert!(versions[0].1.as_ref().unwrap().starts_with("1."));
    let stats = c.stats(None, None).unwrap();
    assert!(
        stats[0]
            .1
            .as_ref()
            .unwrap()
            .iter()
            .any(|(k, _)| k == "curr_items")
    );
    let slabs = c.stats(Some("slabs"), None).unwrap();
    assert!(slabs[0].1.is_ok());
    c.flush_all(None, None).unwrap()[0].1.as_ref().unwrap();
    assert_eq!(c.get(b"k").unwrap(), None);
    c.flush_all(None, Some(0)).unwrap()[0].1.as_ref().unwrap();
}

#[test]
fn binary_and_large_values_round_trip_and_oversize_is_a_clear_error() {
    let mc = Memcached::start();
    let mut c = client_for(&[&mc]);
    let binary = b"\0\r\nEND\r\n\xff\x00VALUE x 0 1\r\n".to_vec();
    c.set(b"bin", &binary, 0, 0).unwrap();
    assert_eq!(c.get(b"bin").unwrap().unwrap().value, binary);
    let big: Vec<u8> = (0..900 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    c.set(b"big", &big, 0, 0).unwrap();
    assert_eq!(c.get(b"big").unwrap().unwrap().value, big);
    let huge = vec![b'x'; 2 * 1024 * 1024];
    let err = c.set(b"huge", &huge, 0, 0).unwrap_err();
    assert!(matches!(err, Error::ServerError { .. }), "{err}");
    assert!(err.to_string().contains("too large"), "{err}");
    // The connection is still in step after the refusal.
    assert_eq!(c.get(b"bin").unwrap().unwrap().value, binary);
}

#[test]
fn bad_keys_are_refused_before_anything_is_sent() {
    let mc = Memcached::start();
    let mut c = client_for(&[&mc]);
    c.set(b"victim", b"still here", 0, 0).unwrap();
    let before = mc.stats();
    let long = vec![b'k'; 251];
    for key in [
        &b"a\r\nflush_all"[..],
        b"has space",
        b"",
        &long,
        b"tab\tkey",
        b"nul\0",
        // mcshm's own namespace (the fences): a valid memcached key, no application's.
        b"mcshm.fence.app",
    ] {
        assert!(
            matches!(c.check_key(key), Err(Error::BadKey { .. })),
            "{key:?}"
        );
        assert!(matches!(c.get(key), Err(Error::BadKey { .. })), "{key:?}");
        assert!(
            matches!(c.set(key, b"v", 0, 0), Err(Error::BadKey { .. })),
            "{key:?}"
        );
        assert!(matches!(c.delete(key), Err(Error::BadKey { .. })));
        assert!(matches!(
            c.get_many(&[b"ok", key], false),
            Err(Error::BadKey { .. })
        ));
        let items = [
            libmcshm::StoreItem {
                key: b"ok",
                value: b"v",
                flags: 0,
                ttl: 0,
            },
            libmcshm::StoreItem {
                key,
                value: b"v",
                flags: 0,
                ttl: 0,
            },
        ];
        assert!(matches!(
            c.store_many(libmcshm::StoreVerb::Set, &items),
            Err(Error::BadKey { .. })
        ));
    }
    let after = mc.stats();
    for counter in [
        "cmd_get",
        "cmd_set",
        "cmd_flush",
        "delete_misses",
        "delete_hits",
    ] {
        assert_eq!(
            before[counter], after[counter],
            "{counter} moved: something was sent"
        );
    }
    assert_eq!(c.get(b"victim").unwrap().unwrap().value, b"still here");
    assert!(c.check_key(b"victim").is_ok() && c.check_key(b"mcshm.fenc").is_ok());
}

#[test]
fn pipelined_multi_get_and_bulk_store_across_three_servers() {
    let servers = [Memcached::start(), Memcached::start(), Memcached::start()];
    let mut c = client_for(&[&servers[0], &servers[1], &servers[2]]);
    let keys: Vec<String> = (0..3000).map(|i| format!("key:{i}")).collect();
    let values: Vec<String> = (0..3000).map(|i| format!("value {i}\r\n")).collect();
    let items: Vec<StoreItem> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| StoreItem {
            key: k.as_bytes(),
            value: v.as_bytes(),
            flags: 3,
            ttl: 0,
        })
        .collect();
    let written =
        |servers: &[Memcached]| -> u64 { servers.iter().map(|s| s.stat("bytes_written")).sum() };
    let before = written(&servers);
    let results = c.store_many(StoreVerb::Set, &items).unwrap();
    assert!(results.iter().all(|r| matches!(r, Ok(Stored::Stored))));
    // Sent as quiet meta sets: the servers wrote no reply per record (3000 STORED would be
    // 24 000 bytes), only an MN per window, the answers to the meta probes and the stats
    // replies that `written` itself reads (a few KB).
    let replies = written(&servers) - before;
    assert!(replies < 12_000, "{replies} bytes of replies");
    // A failure still comes back, on its record: one value too large among good ones (an
    // error reply names no record, so its server's share is sent again, a reply each).
    // memcached drops the record's old value then; it is stored again after.
    let huge = vec![b'h'; 2 * 1024 * 1024];
    let mut mixed = items[..30].to_vec();
    mixed[7].value = &huge;
    let results = c.store_many(StoreVerb::Set, &mixed).unwrap();
    for (n, result) in results.iter().enumerate() {
        match n {
            7 => assert!(
                matches!(result, Err(e) if e.to_string().contains("too large")),
                "{result:?}"
            ),
            _ => assert!(matches!(result, Ok(Stored::Stored)), "{n}: {result:?}"),
        }
    }
    c.set(items[7].key, items[7].value, 3, 0).unwrap();
    // Not stored is a record's own outcome too (add: the keys exist).
    let results = c.store_many(StoreVerb::Add, &items[..10]).unwrap();
    assert!(results.iter().all(|r| matches!(r, Ok(Stored::NotStored))));
    let gets_before: u64 = servers.iter().map(|s| s.stat("cmd_get")).sum();
    let key_refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let got = c.get_many(&key_refs, false).unwrap();
    assert_eq!(got.items.len(), 3000);
    for item in &got.items {
        let i: usize = std::str::from_utf8(&item.key).unwrap()[4..]
            .parse()
            .unwrap();
        assert_eq!(item.value, values[i].as_bytes());
    }
    // Each server got its share: the keys were grouped, not all sent to one.
    for s in &servers {
        assert!(s.stat("curr_items") > 500, "uneven spread");
    }
    // memcached counts keys in cmd_get, so this shows every key was asked for exactly once.
    let gets_after: u64 = servers.iter().map(|s| s.stat("cmd_get")).sum();
    assert_eq!(gets_after - gets_before, 3000);
}

/// A domain of three servers in a registry, with the given failover policy.
fn domain(reg: &Reg, servers: &[&Memcached], failover: &str) -> Client {
    let mut args = vec!["add".to_string(), "--no-flush".to_string()];
    args.extend(servers.iter().map(|m| m.address()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    reg.ok("app", &args);
    reg.ok(
        "app",
        &["policy", "--failover", failover, "--failure-limit", "2"],
    );
    Client::for_domain(reg.dir(), &Domain::new("app").unwrap(), Timeouts::default()).unwrap()
}

/// Keys owned by server `owner` (by address).
fn keys_owned_by(c: &mut Client, owner: &str, n: usize) -> Vec<String> {
    (0..100_000)
        .map(|i| format!("k{i}"))
        .filter(|k| c.server_for(k.as_bytes()).unwrap().to_string() == owner)
        .take(n)
        .collect()
}

#[test]
fn a_dead_server_is_counted_marked_down_and_with_failover_none_its_keys_miss() {
    let reg = Reg::new();
    let (a, b, mut dead) = (Memcached::start(), Memcached::start(), Memcached::start());
    let mut c = domain(&reg, &[&a, &b, &dead], "none");
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    c.on_failure(move |e| {
        sink.lock()
            .unwrap()
            .push((e.server.to_string(), e.failures, e.marked_down))
    });
    let keys = keys_owned_by(&mut c, &dead.address(), 5);
    for k in &keys {
        c.set(k.as_bytes(), b"v", 0, 0).unwrap();
    }
    dead.kill();

    assert!(matches!(
        c.get(keys[0].as_bytes()),
        Err(Error::Network { .. })
    ));
    let list = reg.list_json("app");
    assert_eq!(
        list["servers"][2]["failures"], 1,
        "the failure is counted in the shared table"
    );
    assert_eq!(list["servers"][2]["state"], "up");
    assert!(matches!(
        c.set(keys[1].as_bytes(), b"v", 0, 0),
        Err(Error::Network { .. })
    ));
    let list = reg.list_json("app");
    assert_eq!(
        list["servers"][2]["state"], "down",
        "marked down at the limit"
    );
    let reason = list["servers"][2]["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("2 consecutive failures")
            && reason.ends_with(&format!(
                "(pid {} on {})",
                std::process::id(),
                libmcshm::processes::host_name()
            )),
        "{reason}"
    );
    let text = reg.ok("app", &["list"]);
    assert!(text.contains("consecutive failures"), "{text}");
    assert_eq!(
        *events.lock().unwrap(),
        [
            (dead.address(), 1, MarkedDown::No),
            (dead.address(), 2, MarkedDown::ForEveryone)
        ]
    );

    // Now its keys miss at once and writes fail, with no connection attempt (no new events).
    for k in &keys {
        assert_eq!(c.get(k.as_bytes()).unwrap(), None);
        assert!(matches!(
            c.set(k.as_bytes(), b"v", 0, 0),
            Err(Error::ServerDown { .. })
        ));
    }
    assert_eq!(
        events.lock().unwrap().len(),
        2,
        "a down server got connection attempts"
    );
    // The other servers keep working, and a new client (another process would do the same)
    // routes the same way.
    let other = keys_owned_by(&mut c, &a.address(), 1);
    c.set(other[0].as_bytes(), b"fine", 0, 0).unwrap();
    let mut fresh =
        Client::for_domain(reg.dir(), &Domain::new("app").unwrap(), Timeouts::default()).unwrap();
    assert_eq!(fresh.get(keys[0].as_bytes()).unwrap(), None);
    assert_eq!(
        fresh.get(other[0].as_bytes()).unwrap().unwrap().value,
        b"fine"
    );
    assert_eq!(
        addresses(&reg.list_json("app")).len(),
        3,
        "none keeps every configured server"
    );
}

#[test]
fn with_failover_rehash_the_keys_of_a_dead_server_are_served_by_the_others() {
    let reg = Reg::new();
    let (a, b, mut dead) = (Memcached::start(), Memcached::start(), Memcached::start());
    let mut c = domain(&reg, &[&a, &b, &dead], "rehash");
    let keys = keys_owned_by(&mut c, &dead.address(), 20);
    dead.kill();
    let _ = c.get(keys[0].as_bytes());
    let _ = c.get(keys[0].as_bytes());
    assert_eq!(reg.list_json("app")["servers"][2]["state"], "down");
    for k in &keys {
        let owner = c.server_for(k.as_bytes()).unwrap().to_string();
        assert_ne!(owner, dead.address());
        assert_eq!(c.set(k.as_bytes(), b"moved", 0, 0).unwrap(), Stored::Stored);
        assert_eq!(c.get(k.as_bytes()).unwrap().unwrap().value, b"moved");
    }
}

#[test]
fn an_mcadmin_change_is_used_by_the_next_operation() {
    let reg = Reg::new();
    let (a, b) = (Memcached::start(), Memcached::start());
    reg.ok("app", &["add", &a.address()]);
    let mut c =
        Client::for_domain(reg.dir(), &Domain::new("app").unwrap(), Timeouts::default()).unwrap();
    assert_eq!(c.server_for(b"key").unwrap().to_string(), a.address());
    reg.ok("app", &["delete", &a.address()]);
    reg.ok("app", &["add", &b.address()]);
    assert_eq!(c.server_for(b"key").unwrap().to_string(), b.address());
    c.set(b"key", b"on b", 0, 0).unwrap();
    assert_eq!(b.stat("curr_items"), 1);
    assert_eq!(a.stat("curr_items"), 0);
}

#[test]
fn unix_socket_servers_work() {
    let (_mc, socket) = Memcached::start_unix();
    let address = Address::parse(socket.to_str().unwrap()).unwrap();
    let mut c = Client::for_servers(&[address], Timeouts::default()).unwrap();
    c.set(b"over-unix", b"yes", 0, 0).unwrap();
    assert_eq!(c.get(b"over-unix").unwrap().unwrap().value, b"yes");
}

/// A relay in front of a memcached that holds every reply until `released` says so: it counts
/// the connections on which a request arrived (`asked`).
fn holding_relay(
    target: u16,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    released: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> u16 {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let server = std::net::TcpStream::connect(("127.0.0.1", target)).unwrap();
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let asked = asked.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let mut counted = false;
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    if !counted {
                        counted = true;
                        asked.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
            let (mut s_in, mut c_out) = (server, client);
            let released = released.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = s_in.read(&mut buf) {
                    // Bounded: a client that reads one server at a time never releases them.
                    let deadline = Instant::now() + Duration::from_secs(3);
                    while !released.load(Ordering::SeqCst) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    if n == 0 || c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A multi-get sends every server its share before it reads any reply (as libmemcached's mget
/// does), so servers that each take a while answer together: here no server answers until all
/// three were asked, which a client that asks one server after another never gets to.
#[test]
fn a_multi_get_asks_every_server_before_reading_any_reply() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let servers = [Memcached::start(), Memcached::start(), Memcached::start()];
    let asked = Arc::new(AtomicUsize::new(0));
    let released = Arc::new(AtomicBool::new(false));
    let relays: Vec<String> = servers
        .iter()
        .map(|s| {
            format!(
                "127.0.0.1:{}",
                holding_relay(s.port, asked.clone(), released.clone())
            )
        })
        .collect();
    let reg = Reg::new();
    let mut add = vec!["add", "--no-flush"];
    add.extend(relays.iter().map(String::as_str));
    reg.ok("fan", &add);
    let keys: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        servers[i % 3].raw_set(key, "v"); // wherever: the multi-get asks all three
    }
    let mut client = Client::for_domain(
        reg.dir(),
        &Domain::new("fan").unwrap(),
        Timeouts {
            connect: Duration::from_secs(5),
            io: Duration::from_secs(5),
        },
    )
    .unwrap();
    let owners: std::collections::HashSet<String> = keys
        .iter()
        .map(|k| client.server_for(k.as_bytes()).unwrap().to_string())
        .collect();
    assert_eq!(
        owners.len(),
        3,
        "the keys are spread over the three servers"
    );
    let watcher = {
        let (asked, released) = (asked.clone(), released.clone());
        std::thread::spawn(move || {
            // Shorter than the relays hold replies: a client that waits for one server before
            // asking the next has asked only one by then.
            let all =
                common::wait_until(Duration::from_secs(2), || asked.load(Ordering::SeqCst) >= 3);
            released.store(true, Ordering::SeqCst);
            all
        })
    };
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let result = client.get_many(&refs, false).unwrap();
    assert!(
        watcher.join().unwrap(),
        "every server was asked before any answered"
    );
    assert!(result.errors.is_empty(), "{:?}", result.errors);
}

/// The fanned-out multi-get (every server's share pipelined at once, in windows) answers as
/// one get per key does: the same value for every key, over many windows per server; and with
/// one server frozen, the same keys missing, that server named once as the error, and the
/// others' keys all there, after about one timeout (not one per key or per window).
#[test]
fn a_fanned_out_multi_get_answers_as_serial_gets_do_even_with_a_server_frozen() {
    let servers = [Memcached::start(), Memcached::start(), Memcached::start()];
    let reg = Reg::new();
    let mut add = vec!["add".to_string(), "--no-flush".to_string()];
    add.extend(servers.iter().map(Memcached::address));
    let add: Vec<&str> = add.iter().map(String::as_str).collect();
    reg.ok("fan", &add);
    // Failures do not mark the frozen server down: both reads see the same table.
    reg.ok(
        "fan",
        &["policy", "--failover", "none", "--failure-limit", "255"],
    );
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        io: Duration::from_millis(400),
    };
    let mut c = Client::for_domain(reg.dir(), &Domain::new("fan").unwrap(), timeouts).unwrap();
    // The load and the check that fanned and serial gets agree use the default timeouts (one
    // 400 ms stall of a busy machine in 20 000 gets is not what the test is about); the short
    // ones are for the frozen server.
    let mut loader =
        Client::for_domain(reg.dir(), &Domain::new("fan").unwrap(), Timeouts::default()).unwrap();
    // 20 000 keys: each server's share of gets is several pipeline windows.
    let keys: Vec<String> = (0..20_000).map(|i| format!("fan:{i}")).collect();
    let values: Vec<Vec<u8>> = (0..20_000)
        .map(|i| format!("v{i}").repeat(5).into_bytes())
        .collect();
    // Every third key is never stored: misses are part of the answer too.
    let items: Vec<StoreItem> = keys
        .iter()
        .zip(&values)
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, (k, v))| StoreItem {
            key: k.as_bytes(),
            value: v,
            flags: 7,
            ttl: 0,
        })
        .collect();
    assert!(
        loader
            .store_many(StoreVerb::Set, &items)
            .unwrap()
            .iter()
            .all(|r| matches!(r, Ok(Stored::Stored)))
    );
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let fanned = loader.get_many(&refs, false).unwrap();
    assert!(fanned.errors.is_empty(), "{:?}", fanned.errors);
    let by_key: std::collections::HashMap<&[u8], &libmcshm::Item> =
        fanned.items.iter().map(|i| (i.key.as_slice(), i)).collect();
    assert_eq!(fanned.items.len(), by_key.len(), "no key twice");
    for key in &refs {
        let serial = loader.get(key).unwrap();
        assert_eq!(
            serial.as_ref().map(|i| (&i.value, i.flags)),
            by_key.get(key).map(|i| (&i.value, i.flags))
        );
    }

    let frozen = &servers[1];
    let frozen_addr = Address::parse(&frozen.address()).unwrap();
    frozen.freeze();
    let started = Instant::now();
    let fanned = c.get_many(&refs, false).unwrap();
    let took = started.elapsed();
    frozen.signal(libc::SIGCONT);
    assert_eq!(fanned.errors.len(), 1, "{:?}", fanned.errors);
    assert_eq!(fanned.errors[0].0, frozen_addr);
    assert!(
        took < Duration::from_secs(3),
        "one timeout, not one per window: {took:?}"
    );
    let by_key: std::collections::HashMap<&[u8], &libmcshm::Item> =
        fanned.items.iter().map(|i| (i.key.as_slice(), i)).collect();
    let mut frozen_keys = 0;
    for (i, key) in refs.iter().enumerate() {
        let owner = c.server_for(key).unwrap();
        if *owner == frozen_addr {
            frozen_keys += 1;
            assert!(
                !by_key.contains_key(key),
                "a frozen server's key is not answered"
            );
        } else {
            let expected = (i % 3 != 0).then(|| values[i].as_slice());
            assert_eq!(by_key.get(key).map(|i| i.value.as_slice()), expected);
        }
    }
    assert!(frozen_keys > 1000, "the frozen server owned its share");
    // A get of one of its keys fails as the multi-get said.
    let key = refs
        .iter()
        .find(|k| *c.server_for(k).unwrap() == frozen_addr)
        .unwrap();
    frozen.freeze();
    let serial = c.get(key);
    frozen.signal(libc::SIGCONT);
    assert!(
        matches!(serial, Err(Error::Network { ref server, .. }) if *server == frozen_addr.to_string()),
        "{serial:?}"
    );
}

/// A bulk store deletes every key where its write plan says a stale copy could later be
/// served (under `rehash`, the next server along the ring), as a single set does: the deletes
/// go quiet and pipelined to every server at once after the stores.
#[test]
fn a_bulk_store_deletes_each_key_where_a_stale_copy_could_be_served() {
    let servers = [Memcached::start(), Memcached::start(), Memcached::start()];
    let reg = Reg::new();
    let mut c = domain(&reg, &[&servers[0], &servers[1], &servers[2]], "rehash");
    let keys: Vec<String> = (0..600).map(|i| format!("k{i}")).collect();
    for s in &servers {
        let mut one = client_for(&[s]);
        for key in &keys {
            one.set(key.as_bytes(), b"stale", 0, 0).unwrap();
        }
    }
    let items: Vec<StoreItem> = keys
        .iter()
        .map(|k| StoreItem {
            key: k.as_bytes(),
            value: b"new",
            flags: 0,
            ttl: 0,
        })
        .collect();
    let results = c.store_many(StoreVerb::Set, &items).unwrap();
    assert!(results.iter().all(|r| matches!(r, Ok(Stored::Stored))));
    let mut singles: Vec<Client> = servers.iter().map(|s| client_for(&[s])).collect();
    for key in &keys {
        let held: Vec<Option<Vec<u8>>> = singles
            .iter_mut()
            .map(|one| one.get(key.as_bytes()).unwrap().map(|i| i.value))
            .collect();
        // The owner has the new value, the next server none, the third its stale copy.
        let count = |v: Option<&[u8]>| held.iter().filter(|h| h.as_deref() == v).count();
        assert_eq!(
            (count(Some(b"new")), count(None), count(Some(b"stale"))),
            (1, 1, 1),
            "{key}: {held:?}"
        );
    }
}
