//! Who holds the proxy's client connections, for the log line of a refused connection: the
//! user of each local TCP peer, from the kernel's socket tables (`/proc/net/tcp` and `tcp6`,
//! whose `uid` column is the owner of each socket, the peer's included when it is on this
//! host). Read when a connection is refused (at most once a second, for the log) and, with
//! `--max-connections-per-uid`, when one is accepted; never on the path of a request.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// "uid 1000: 4 090, uid 33: 6" for the connections from `peers` (the proxy's client
/// connections' remote addresses), the most first; peers not found (not local, or gone) are
/// counted as "another host or gone", unix-socket clients as "unix socket".
pub fn holders(peers: &[Option<SocketAddr>]) -> String {
    let mut table = String::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        table += &std::fs::read_to_string(path).unwrap_or_default();
    }
    count(&owners(&table), peers)
}

/// The user of the local process at the other end of the TCP connection from `peer` (its
/// socket's owner in the kernel's tables); `None` when it is not on this host or is gone.
pub fn tcp_peer_uid(peer: SocketAddr) -> Option<u32> {
    let path = match peer {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let table = std::fs::read_to_string(path).ok()?;
    owners(&table).get(&peer).copied()
}

fn count(owners: &HashMap<SocketAddr, u32>, peers: &[Option<SocketAddr>]) -> String {
    let mut by: HashMap<String, usize> = HashMap::new();
    for peer in peers {
        let who = match peer {
            None => "unix socket".to_string(),
            Some(addr) => match owners.get(addr) {
                Some(uid) => format!("uid {uid}"),
                None => "another host or gone".to_string(),
            },
        };
        *by.entry(who).or_default() += 1;
    }
    let mut rows: Vec<(String, usize)> = by.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    rows.iter()
        .map(|(who, n)| format!("{who}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The owner of each socket of a `/proc/net/tcp` table, by its local address.
fn owners(table: &str) -> HashMap<SocketAddr, u32> {
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = address(fields.get(1)?)?;
            let uid = fields.get(7)?.parse().ok()?;
            Some((local, uid))
        })
        .collect()
}

/// `0100007F:1F90` (IPv4: the address as a little-endian hex word) or 32 hex digits (IPv6:
/// four such words), then the port.
fn address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_le_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (n, chunk) in bytes.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(ip.get(n * 8..n * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2B67 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:C350 0100007F:2B67 01 00000000:00000000 00:00000000 00000000  1000        0 2 1
   2: 0100007F:C351 0100007F:2B67 01 00000000:00000000 00:00000000 00000000  1000        0 3 1
   3: 0100007F:C352 0100007F:2B67 01 00000000:00000000 00:00000000 00000000    33        0 4 1
   0: 00000000000000000000000001000000:C353 00000000000000000000000000000000:0000 01 0:0 0:0 0 1000 0 5 1
";

    #[test]
    fn each_local_peer_is_counted_under_the_user_that_owns_its_socket() {
        let owners = owners(TABLE);
        let v4 = |port| Some(SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(owners.get(&v4(50000).unwrap()), Some(&1000));
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 50003);
        assert_eq!(
            owners.get(&v6),
            Some(&1000),
            "::1 in four little-endian words"
        );
        let peers = [v4(50000), v4(50001), v4(50002), Some(v6), None, v4(1)];
        assert_eq!(
            count(&owners, &peers),
            "uid 1000: 3, another host or gone: 1, uid 33: 1, unix socket: 1"
        );
        assert_eq!(address("nonsense"), None);
        assert_eq!(address("0100007F:zz"), None);
    }
}
