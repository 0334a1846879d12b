//! The cost of opening a connection to a domain's first server as the library opens it (TCP,
//! the TLS handshake when the domain has TLS settings, then one `version` round trip), for
//! bench/tls.sh:
//!
//!   handshake DIR DOMAIN N     N connections one after the other; prints µs per connection
//!
//! The domain's settings are read once, as a long-lived client reads them (the rustls client
//! is built once per version of the settings file, so later handshakes may resume a session).

use std::time::Instant;

use libmcshm::access::Access;
use libmcshm::conn::Conn;
use libmcshm::proto::{Reply, Request};
use libmcshm::{Domain, Registry, Timeouts};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: handshake DIR DOMAIN N");
        std::process::exit(2);
    }
    let dir = std::path::Path::new(&args[1]);
    let domain = Domain::new(&args[2]).expect("domain name");
    let n: u32 = args[3].parse().expect("a count");
    let snapshot = Registry::open(dir, &domain)
        .and_then(|mut r| r.snapshot())
        .expect("open the domain");
    let address = &snapshot.servers.first().expect("a server").address;
    let access = Access::load(dir, &domain).expect("the domain's TLS settings and credentials");
    let start = Instant::now();
    for _ in 0..n {
        let mut conn = Conn::connect_as(address, Timeouts::default(), &access).expect("connect");
        match conn.ask(&Request::Version).expect("version") {
            Reply::Version(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let per = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!(
        "{per:.0} µs per connection ({n} connections, TLS: {})",
        access.tls.is_some()
    );
}
