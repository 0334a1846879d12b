//! What no-stale-read costs a write, for bench/coherence.sh: sets/s of the libmcshm client on a
//! domain of the given memcached servers, side by side in one run, with no server marked as
//! holding strays (the cost before marks existed) and with all but one marked (after an `add`,
//! until `mcadmin settle`: each write also deletes its key from the marked servers it does not
//! go to), interleaved over several rounds.
//!
//!   write_cost DIR N HOST:PORT...      N sets per round and case; prints sets/s per case

use std::time::Instant;

use libmcshm::{Address, Client, Domain, Registry, Server, Timeouts};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: write_cost DIR N HOST:PORT HOST:PORT...");
        std::process::exit(2);
    }
    let dir = std::path::PathBuf::from(&args[1]);
    let n: usize = args[2].parse().expect("a count");
    let domain = Domain::new("cost").unwrap();
    let mut writer = Registry::open_writer(&dir, &domain, true).unwrap();
    writer
        .transact(|t| {
            for a in &args[3..] {
                t.servers.push(Server::new(Address::parse(a).unwrap()));
            }
            Ok(())
        })
        .unwrap();
    let mut client = Client::for_domain(&dir, &domain, Timeouts::default()).unwrap();
    let keys: Vec<String> = (0..n).map(|i| format!("user:{i:08}")).collect();
    let servers = args.len() - 3;
    let mut rates = [Vec::new(), Vec::new()];
    for _round in 0..5 {
        for (case, marked) in [0, servers - 1].into_iter().enumerate() {
            writer
                .transact(|t| {
                    for (i, s) in t.servers.iter_mut().enumerate() {
                        s.strays_since = if i < marked { 1 } else { 0 };
                    }
                    Ok(())
                })
                .unwrap();
            let start = Instant::now();
            for key in &keys {
                client.set(key.as_bytes(), b"0123456789", 0, 0).unwrap();
            }
            rates[case].push(n as f64 / start.elapsed().as_secs_f64());
        }
    }
    for (case, label) in ["no server marked", "all but one marked"]
        .iter()
        .enumerate()
    {
        let mut r = rates[case].clone();
        r.sort_by(f64::total_cmp);
        println!(
            "{label:<20} {:>9.0} sets/s (median of {}; {servers} servers)",
            r[r.len() / 2],
            r.len()
        );
    }
}
