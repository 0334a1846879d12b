//! What no-stale-read costs a write, for bench/coherence.sh: sets/s of the libmcshm client on a
//! domain of the given memcached servers, side by side in one run, with no server marked as
//! holding strays (the cost before marks existed) and with all but one marked (after an `add`,
//! until `mcadmin settle`: each write also deletes its key from the marked servers it does not
//! go to), interleaved over several rounds. A third case bounds what any "keys a marked server
//! may still hold" filter could save: the marked write planned as the library plans it, its
//! deletes skipped (a filter that answers "not held" for every key), the set sent through a
//! client of a twin domain of the same servers that is never marked. This lives here, in the
//! bench driver only: the library's writes always delete.
//!
//!   write_cost DIR N HOST:PORT...      N sets per round and case; prints sets/s per case
//!   write_cost mark DIR DOMAIN COUNT   marks the first COUNT servers of DOMAIN (for bench/bulk.sh)

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use libmcshm::client::Router;
use libmcshm::{Address, Client, Domain, Registry, Server, Timeouts};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 5 && args[1] == "mark" {
        let domain = Domain::new(&args[3]).unwrap();
        let count: usize = args[4].parse().expect("a count");
        let mut writer = Registry::open_writer(&args[2], &domain, false).unwrap();
        mark(&mut writer, count);
        return;
    }
    if args.len() < 5 {
        eprintln!(
            "usage: write_cost DIR N HOST:PORT HOST:PORT...\n       write_cost mark DIR DOMAIN COUNT"
        );
        std::process::exit(2);
    }
    let dir = std::path::PathBuf::from(&args[1]);
    let n: usize = args[2].parse().expect("a count");
    let addresses = &args[3..];
    let (domain, twin) = (Domain::new("cost").unwrap(), Domain::new("twin").unwrap());
    let mut writer = create(&dir, &domain, addresses);
    create(&dir, &twin, addresses);
    let mut client = Client::for_domain(&dir, &domain, Timeouts::default()).unwrap();
    let mut twin_client = Client::for_domain(&dir, &twin, Timeouts::default()).unwrap();
    let mut router = Router::for_domain(&dir, &domain).unwrap();
    let keys: Vec<String> = (0..n).map(|i| format!("user:{i:08}")).collect();
    let servers = addresses.len();
    let labels = [
        "no server marked",
        "all but one marked",
        "marked, deletes skipped",
    ];
    let mut rates = [Vec::new(), Vec::new(), Vec::new()];
    for _round in 0..5 {
        for (case, rate) in rates.iter_mut().enumerate() {
            mark(&mut writer, if case == 0 { 0 } else { servers - 1 });
            let start = Instant::now();
            for key in &keys {
                if case == 2 {
                    // The plan a filter would be asked about (its deletes then skipped).
                    let plan = router.plan_write(key.as_bytes(), false, now_ms()).unwrap();
                    std::hint::black_box(plan);
                    twin_client
                        .set(key.as_bytes(), b"0123456789", 0, 0)
                        .unwrap();
                } else {
                    client.set(key.as_bytes(), b"0123456789", 0, 0).unwrap();
                }
            }
            rate.push(n as f64 / start.elapsed().as_secs_f64());
        }
    }
    for (label, rate) in labels.iter().zip(&mut rates) {
        rate.sort_by(f64::total_cmp);
        println!(
            "{label:<24} {:>9.0} sets/s (median of {}, range {:.0}-{:.0}; {servers} servers)",
            rate[rate.len() / 2],
            rate.len(),
            rate[0],
            rate[rate.len() - 1]
        );
    }
}

/// A domain of `addresses`, none marked; its writer.
fn create(dir: &std::path::Path, domain: &Domain, addresses: &[String]) -> Registry {
    let mut writer = Registry::open_writer(dir, domain, true).unwrap();
    writer
        .transact(|t| {
            for a in addresses {
                t.servers.push(Server::new(Address::parse(a).unwrap()));
            }
            Ok(())
        })
        .unwrap();
    writer
}

/// Marks the first `count` servers as holding strays (and clears the others' marks).
fn mark(writer: &mut Registry, count: usize) {
    writer
        .transact(|t| {
            for (i, s) in t.servers.iter_mut().enumerate() {
                s.strays_since = if i < count { 1 } else { 0 };
            }
            Ok(())
        })
        .unwrap();
}

fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    since.as_millis() as u64
}
