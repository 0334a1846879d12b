//! A daemon on a libmcshm domain, as small as it gets: it opens the domain, uses the client,
//! and follows the table as operators change it, with no restart and no polling.
//!
//!   cargo run -p libmcshm --example daemon -- DIR DOMAIN [SECONDS]
//!
//! (`mcadmin --dir DIR --domain DOMAIN add 127.0.0.1:11211` first; then change the table with
//! mcadmin while it runs and watch it notice.)
//!
//! Two handles, because they do two jobs: a `Client` routes and talks to memcached (it reads
//! the table itself before every operation, so it never needs telling about a change), and a
//! `Registry` reader is how a daemon *waits* for a change, to log it or to rebuild something of
//! its own. Both are per thread (`&mut self`).

use std::time::{Duration, Instant};

use libmcshm::{Client, Domain, Registry, Timeouts};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (dir, domain) = match (args.get(1), args.get(2)) {
        (Some(dir), Some(domain)) => (dir.into(), Domain::new(domain)?),
        _ => (libmcshm::default_dir()?, Domain::new("default")?),
    };
    let seconds: u64 = args.get(3).map_or(Ok(10), |s| s.parse())?;

    // Reading needs only read permission on the table; a missing domain is a clear error.
    let mut reader = Registry::open(&dir, &domain)?;
    let mut table = reader.snapshot()?;
    println!("domain '{domain}' version {}", table.version);
    for server in &table.servers {
        println!(
            "  {} weight {} {}",
            server.address, server.weight, server.state
        );
    }

    let mut client = Client::for_domain(&dir, &domain, Timeouts::default())?;
    // Failures are counted in the shared table: every process on the host sees them.
    client.on_failure(|e| eprintln!("{} failed: {} ({:?})", e.server, e.error, e.marked_down));

    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut beats = 0u64;
    while Instant::now() < stop {
        beats += 1;
        let key = b"daemon:heartbeat";
        match client.set(key, beats.to_string().as_bytes(), 0, 60) {
            Ok(_) => {
                let server = client.server_for(key)?.to_string();
                let back = client
                    .get(key)?
                    .map(|item| String::from_utf8_lossy(&item.value).into_owned());
                println!("heartbeat {beats} on {server}: read back {back:?}");
            }
            // A down server is an answer, not a crash: the next table may route elsewhere.
            Err(err) => eprintln!("heartbeat {beats}: {err}"),
        }
        // Sleeps on a futex in the file: a commit by any process wakes it at once.
        if let Some(version) = reader.wait_for_change(table.version, Duration::from_secs(1)) {
            table = reader.snapshot()?;
            println!(
                "the table changed: version {version}, {} servers",
                table.servers.len()
            );
        }
    }
    Ok(())
}
