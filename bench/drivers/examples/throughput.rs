//! Throughput of the libmcshm client against one memcached, for bench/compare.sh:
//!
//!   throughput HOST:PORT reqresp N     N request/response round trips (alternating set, get)
//!                                      on one connection; prints ops/s
//!   throughput HOST:PORT multiget K R  R pipelined multi-gets of K keys; prints keys/s

use std::time::Instant;

use libmcshm::{Address, Client, StoreItem, StoreVerb, Timeouts};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: throughput HOST:PORT reqresp N | multiget K R");
        std::process::exit(2);
    }
    let address = Address::parse(&args[1]).expect("server address");
    let mut client = Client::for_servers(&[address], Timeouts::default()).expect("client");
    let number = |i: usize| {
        args.get(i)
            .and_then(|s| s.parse::<usize>().ok())
            .expect("a count")
    };
    match args[2].as_str() {
        "reqresp" => {
            let n = number(3);
            client.set(b"warm", b"x", 0, 0).unwrap();
            let start = Instant::now();
            for i in 0..n {
                if i % 2 == 0 {
                    client.set(b"bench:key", b"0123456789abcdef", 0, 0).unwrap();
                } else {
                    client.get(b"bench:key").unwrap();
                }
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{:.0} ops/s ({n} request/response round trips in {secs:.3} s)",
                n as f64 / secs
            );
        }
        "multiget" => {
            let (k, rounds) = (number(3), number(4));
            let keys: Vec<String> = (0..k).map(|i| format!("mg:{i}")).collect();
            let items: Vec<StoreItem> = keys
                .iter()
                .map(|key| StoreItem {
                    key: key.as_bytes(),
                    value: b"0123456789abcdef",
                    flags: 0,
                    ttl: 0,
                })
                .collect();
            client.store_many(StoreVerb::Set, &items).unwrap();
            let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
            let start = Instant::now();
            let mut hits = 0;
            for _ in 0..rounds {
                hits += client.get_many(&refs, false).unwrap().items.len();
            }
            let secs = start.elapsed().as_secs_f64();
            assert_eq!(hits, k * rounds);
            println!(
                "{:.0} keys/s ({rounds} multi-gets of {k} keys in {secs:.3} s)",
                hits as f64 / secs
            );
        }
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    }
}
