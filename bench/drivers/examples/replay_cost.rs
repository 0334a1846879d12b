//! What the `replay` rejoin policy costs and keeps, for bench/replay.sh, side by side in one
//! run on a domain of the given memcached servers (the first one is the one that goes away):
//!
//! 1. sets/s of the libmcshm client: `flush` with every server up (the cost before the log
//!    existed), `replay` with every server up (must be the same), and `replay` with the first
//!    server down (rehash: its share goes to interim owners and each of those writes logs its
//!    key), interleaved over five rounds;
//! 2. the rejoin of a server that missed 10 000 and 100 000 keys: the replay's time (pipelined
//!    deletes) against a flush's, and the log's bytes for the server;
//! 3. the blip table: of KEYS keys, how many of the server's untouched keys it still serves
//!    after an outage with W writes to its keys, under `flush` and under `replay`.
//!
//!   replay_cost DIR N HOST:PORT HOST:PORT...    N sets per round and case

use std::time::{Duration, Instant};

use libmcshm::lifecycle;
use libmcshm::registry::Invalidations;
use libmcshm::table::{Failover, Rejoin};
use libmcshm::{Address, Client, Domain, Registry, Server, State, Timeouts};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: replay_cost DIR N HOST:PORT HOST:PORT...");
        std::process::exit(2);
    }
    let dir = std::path::PathBuf::from(&args[1]);
    let n: usize = args[2].parse().expect("a count");
    let addresses: Vec<Address> = args[3..]
        .iter()
        .map(|a| Address::parse(a).unwrap())
        .collect();
    write_cost(&dir, n, &addresses);
    replay_time(&dir, &addresses);
    blips(&dir, &addresses);
}

/// A domain `name` of `addresses` under `rejoin` and rehash, and its writer.
fn domain(dir: &std::path::Path, name: &str, addresses: &[Address], rejoin: Rejoin) -> Registry {
    let domain = Domain::new(name).unwrap();
    let mut writer = Registry::open_writer(dir, &domain, true).unwrap();
    writer
        .transact(|t| {
            t.servers = addresses.iter().map(|a| Server::new(a.clone())).collect();
            t.policy.rejoin = rejoin;
            t.policy.failover = Failover::Rehash;
            Ok(())
        })
        .unwrap();
    writer
}

fn set_state(writer: &mut Registry, i: usize, state: State) {
    writer
        .transact(|t| {
            t.servers[i].state = state;
            t.servers[i].since_ms = libmcshm::clock::now_ms();
            t.servers[i].retry_interval = -1;
            Ok(())
        })
        .unwrap();
}

fn client(dir: &std::path::Path, name: &str) -> Client {
    Client::for_domain(dir, &Domain::new(name).unwrap(), Timeouts::default()).unwrap()
}

fn write_cost(dir: &std::path::Path, n: usize, addresses: &[Address]) {
    let mut flush = domain(dir, "cost-flush", addresses, Rejoin::Flush);
    let mut replay = domain(dir, "cost-replay", addresses, Rejoin::Replay);
    let mut down = domain(dir, "cost-down", addresses, Rejoin::Replay);
    let _ = (&mut flush, &mut replay);
    let mut clients = [
        client(dir, "cost-flush"),
        client(dir, "cost-replay"),
        client(dir, "cost-down"),
    ];
    // The router opens the log when it first sees the policy; the server goes down after.
    clients[2].set(b"warm", b"0", 0, 0).unwrap();
    set_state(&mut down, 0, State::Down);
    let keys: Vec<String> = (0..n).map(|i| format!("user:{i:08}")).collect();
    let mut rates = [Vec::new(), Vec::new(), Vec::new()];
    for _round in 0..5 {
        for (case, client) in clients.iter_mut().enumerate() {
            let start = Instant::now();
            for key in &keys {
                client.set(key.as_bytes(), b"0123456789", 0, 0).unwrap();
            }
            rates[case].push(n as f64 / start.elapsed().as_secs_f64());
        }
        // The down server's log starts again each round (bounded: a round logs its share).
        let log = Invalidations::open(dir, &Domain::new("cost-down").unwrap())
            .unwrap()
            .unwrap();
        let id = down.current_snapshot().unwrap().servers[0].id;
        let logged = log.read(id);
        let _ = log.clear(&logged);
    }
    println!("sets/s of one client, {} servers, rehash:", addresses.len());
    for (case, label) in ["flush, all up", "replay, all up", "replay, one server down"]
        .iter()
        .enumerate()
    {
        let mut r = rates[case].clone();
        r.sort_by(f64::total_cmp);
        println!(
            "  {label:<26} {:>9.0} sets/s (median of {})",
            r[r.len() / 2],
            r.len()
        );
    }
}

fn replay_time(dir: &std::path::Path, addresses: &[Address]) {
    println!("rejoin of a server that missed K keys (log bytes for it; replay vs flush):");
    for k in [10_000usize, 100_000] {
        let name = format!("rejoin-{k}");
        let mut writer = domain(dir, &name, addresses, Rejoin::Replay);
        let domain_name = Domain::new(&name).unwrap();
        let log = Invalidations::open_or_create(dir, &domain_name, Default::default()).unwrap();
        std::thread::sleep(Duration::from_millis(2)); // the server goes down after the log began
        set_state(&mut writer, 0, State::Down);
        let id = writer.current_snapshot().unwrap().servers[0].id;
        for i in 0..k {
            log.append(id, format!("user:{i:08}").as_bytes());
        }
        let bytes = log.stats(id).bytes;
        let start = Instant::now();
        let replayed = lifecycle::rejoin(&mut writer, id, Timeouts::default(), false, "bench");
        let replay = start.elapsed();
        set_state(&mut writer, 0, State::Down);
        let address = &addresses[0];
        let start = Instant::now();
        lifecycle::flush(address, Timeouts::default(), &Default::default()).unwrap();
        let flush = start.elapsed();
        println!(
            "  {k:>7} keys: log {:>6} KiB, replay {:>7.1} ms ({replayed:?}), flush {:>5.1} ms",
            bytes / 1024,
            replay.as_secs_f64() * 1e3,
            flush.as_secs_f64() * 1e3
        );
    }
}

fn blips(dir: &std::path::Path, addresses: &[Address]) {
    const KEYS: usize = 20_000;
    println!("keys of the server that went away still served after it came back ({KEYS} keys):");
    for (label, writes) in [
        ("a 3 s blip, 300 writes", 300usize),
        ("a 60 s outage, 6 000 writes", 6_000),
    ] {
        let mut row = Vec::new();
        for rejoin in [Rejoin::Flush, Rejoin::Replay] {
            let name = format!("blip-{}-{writes}", rejoin.as_str());
            let mut writer = domain(dir, &name, addresses, rejoin);
            let mut c = client(dir, &name);
            let keys: Vec<String> = (0..KEYS).map(|i| format!("{name}:{i}")).collect();
            for key in &keys {
                c.set(key.as_bytes(), b"v", 0, 0).unwrap();
            }
            let first = addresses[0].to_string();
            let on_first: Vec<&String> = keys
                .iter()
                .filter(|k| c.server_for(k.as_bytes()).unwrap().to_string() == first)
                .collect();
            set_state(&mut writer, 0, State::Down);
            let touched = writes.min(on_first.len());
            for key in &on_first[..touched] {
                c.set(key.as_bytes(), b"newer", 0, 0).unwrap();
            }
            let id = writer.current_snapshot().unwrap().servers[0].id;
            lifecycle::rejoin(&mut writer, id, Timeouts::default(), false, "bench").unwrap();
            let kept = on_first[touched..]
                .iter()
                .filter(|k| c.get(k.as_bytes()).ok().flatten().is_some())
                .count();
            row.push(format!(
                "{}: {kept} of {} untouched",
                rejoin.as_str(),
                on_first.len() - touched
            ));
        }
        println!("  {label:<28} {}", row.join(", "));
    }
}
