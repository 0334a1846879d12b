//! mcshm-bench: the drivers the `bench/` scripts run (examples/), and their shared set-up:
//! tables that time table changes.

use libmcshm::table::Failover;
use libmcshm::{Address, Domain, Registry, Server};

/// A writer on `domain` in `dir`, whose table is `servers` servers 10.a.b.c:11211 under failover
/// rehash. Never probed (retry interval -1): these addresses are looked up, never connected to.
pub fn rehash_table(dir: &std::path::Path, domain: &Domain, servers: usize) -> Registry {
    let mut writer = Registry::open_writer(dir, domain, true).unwrap();
    writer
        .transact(|t| {
            t.policy.failover = Failover::Rehash;
            for i in 0..servers {
                let address = format!("10.{}.{}.{}:11211", i >> 16, (i >> 8) & 255, i & 255);
                t.servers.push(Server {
                    retry_interval: -1,
                    ..Server::new(Address::parse(&address).unwrap())
                });
            }
            Ok(())
        })
        .unwrap();
    writer
}
