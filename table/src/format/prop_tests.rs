//! Property tests of the functions that validate a file image (the input every other process
//! can write): arbitrary and mutated images never panic and never decode to something other
//! than what was encoded; arbitrary valid tables round-trip.

use proptest::prelude::*;

use crate::Address;
use crate::format::{self, Layout};
use crate::table::{CommitInfo, Server, State, Table};

const INFO: CommitInfo = CommitInfo {
    changed_ms: 1,
    pid: 2,
    uid: 3,
};

fn to_words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect()
}

fn address() -> impl Strategy<Value = Address> {
    prop_oneof![
        (
            "[a-z]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,10}){0,3}",
            1..=65535u16
        )
            .prop_map(|(h, p)| Address::parse(&format!("{h}:{p}")).unwrap()),
        (any::<[u8; 4]>(), 1..=65535u16).prop_map(|(ip, p)| Address::Ipv4 {
            ip: ip.into(),
            port: p
        }),
        (any::<[u16; 8]>(), 1..=65535u16).prop_map(|(ip, p)| {
            let ip: std::net::Ipv6Addr = ip.into();
            Address::Ipv6 {
                ip,
                port: p,
                text: ip.to_string(),
            }
        }),
        "(/[a-z0-9._]{1,20}){1,4}".prop_map(|p| Address::Unix { path: p }),
    ]
}

fn server() -> impl Strategy<Value = Server> {
    (
        address(),
        1..=u16::MAX,
        any::<bool>(),
        -1..1000i32,
        any::<u64>(),
        "[ -~]{0,40}",
    )
        .prop_map(
            |(address, weight, down, retry_interval, since_ms, reason)| Server {
                weight,
                state: if down { State::Down } else { State::Up },
                retry_interval,
                since_ms,
                reason,
                ..Server::new(address)
            },
        )
}

/// A valid table: unique addresses, ids 1.., live records 0..
fn unique(servers: Vec<Server>) -> Table {
    let mut out: Vec<Server> = Vec::new();
    for s in servers {
        if !out.iter().any(|o| o.address.same_server(&s.address)) {
            let n = out.len() as u32;
            out.push(Server {
                id: n + 1,
                live: n,
                ..s
            });
        }
    }
    Table {
        servers: out,
        policy: Default::default(),
        fleet_revision: 0,
        buckets: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), len in 0u64..1_000_000) {
        let words = to_words(&bytes);
        let _ = format::parse_header(&words, len, "d");
        for format_version in [2, 3] {
            let layout = Layout { format_version, ..Layout::new(256, 0) };
            let _ = format::decode_slot(&words, "d", &layout);
            let _ = layout.slot_image_words(&words);
        }
    }

    #[test]
    fn tables_round_trip(servers in proptest::collection::vec(server(), 0..20), version in any::<u64>()) {
        let table = unique(servers);
        let image = format::encode_slot(version, INFO, &table, 1000, None, None);
        let snap = format::decode_slot(&image, "d", &Layout::new(256, 0)).unwrap().0;
        prop_assert_eq!(snap.version, version);
        prop_assert_eq!(snap.table(), table);
    }

    #[test]
    fn mutated_images_are_refused_or_unchanged(
        servers in proptest::collection::vec(server(), 1..6),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..4),
    ) {
        let table = unique(servers);
        let image = format::encode_slot(7, INFO, &table, 1000, None, None);
        let mut bytes: Vec<u8> = image.iter().flat_map(|w| w.to_le_bytes()).collect();
        for (at, mask) in &flips {
            let i = 8 + at.index(bytes.len() - 8); // word 0 is the sequence, not covered by the CRC
            bytes[i] ^= mask;
        }
        if let Ok((snap, _)) = format::decode_slot(&to_words(&bytes), "d", &Layout::new(256, 0)) {
            prop_assert_eq!(snap.table(), table);
        }
    }

    #[test]
    fn mutated_headers_are_refused_or_unchanged(at in 0usize..136, mask in 1..=255u8) {
        let layout = Layout::new(4, 9);
        let mut file = layout.file_image("dom", 0, &format::encode_slot(0, INFO, &Table::default(), 1, None, None), &[]);
        let len = (file.len() * 8) as u64;
        let mut bytes: Vec<u8> = file.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes[at] ^= mask;
        file = to_words(&bytes);
        if let Ok(parsed) = format::parse_header(&file, len, "dom") {
            prop_assert_eq!(parsed, layout);
        }
    }
}
