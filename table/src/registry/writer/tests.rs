//! `assign_ids`: new servers get the next ids and the lowest free live records, and servers
//! that have theirs keep them (a live record is a server's failure count and probe lease,
//! shared by every process: two servers on one record would share both).

use super::assign_ids;
use crate::address::Address;
use crate::table::Server;

/// A server that has an id and live record already (`id` 0: a new one).
fn server(n: u32, id: u32, live: u32) -> Server {
    Server {
        id,
        live,
        ..Server::new(Address::parse(&format!("10.0.0.{n}:11211")).unwrap())
    }
}

fn ids(servers: &[Server]) -> Vec<(u32, u32)> {
    servers.iter().map(|s| (s.id, s.live)).collect()
}

#[test]
fn new_servers_get_the_next_ids_in_table_order_and_the_first_live_records() {
    let mut servers = vec![server(1, 0, 0), server(2, 0, 0), server(3, 0, 0)];
    assert_eq!(assign_ids(&mut servers, 1, 8), 4);
    assert_eq!(ids(&servers), [(1, 0), (2, 1), (3, 2)]);
}

#[test]
fn servers_with_an_id_keep_it_and_their_live_record() {
    let mut servers = vec![server(1, 7, 3), server(2, 9, 0)];
    let before = servers.clone();
    assert_eq!(
        assign_ids(&mut servers, 10, 8),
        10,
        "no new server, no id used"
    );
    assert_eq!(servers, before);
}

#[test]
fn new_servers_take_the_lowest_live_records_nobody_holds() {
    // Records 0 and 2 are held; a removed server left record 1 free.
    let mut servers = vec![
        server(1, 4, 2),
        server(2, 0, 0),
        server(3, 5, 0),
        server(4, 0, 0),
        server(5, 0, 0),
    ];
    assert_eq!(assign_ids(&mut servers, 6, 8), 9);
    assert_eq!(ids(&servers), [(4, 2), (6, 1), (5, 0), (7, 3), (8, 4)]);
}

#[test]
fn live_records_stay_distinct_and_below_the_capacity_when_it_fits_everyone() {
    for capacity in [5u32, 6, 16] {
        for held in 0..5u32 {
            // `held` servers hold the top records, the others are new.
            let mut servers: Vec<Server> = (0..5)
                .map(|n| match n < held {
                    true => server(n + 1, 100 + n, capacity - 1 - n),
                    false => server(n + 1, 0, 0),
                })
                .collect();
            let next = assign_ids(&mut servers, 200, capacity);
            assert_eq!(next, 200 + (5 - held), "{capacity}/{held}");
            let mut lives: Vec<u32> = servers.iter().map(|s| s.live).collect();
            assert!(lives.iter().all(|&l| l < capacity), "{lives:?}");
            lives.sort_unstable();
            lives.dedup();
            assert_eq!(lives.len(), 5, "{capacity}/{held}: {:?}", ids(&servers));
            let mut all: Vec<u32> = servers.iter().map(|s| s.id).collect();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), 5, "ids distinct");
        }
    }
}

#[test]
fn a_held_record_beyond_the_capacity_is_ignored_without_a_panic() {
    // A server read from a larger file whose record lies past this capacity: it keeps it, and
    // it frees nothing below the capacity.
    let mut servers = vec![server(1, 3, 40), server(2, 0, 0)];
    assert_eq!(assign_ids(&mut servers, 4, 4), 5);
    assert_eq!(ids(&servers), [(3, 40), (4, 0)]);
}
