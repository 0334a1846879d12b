//! What clients and servers send the proxy, as hostile input: arbitrary bytes never panic the
//! command parser or the reply framer, never make them claim bytes they were not given, and
//! never make the parser buffer past its limits; a complete command or reply split at any
//! point parses the same.

use libmcshm::proto::frame::{Frame, frame_len};
use mcshm_proxy::command::{BAD_CHUNK, Limits, Parsed, parse};
use proptest::prelude::*;

const LIMITS: Limits = Limits {
    max_line: 512,
    max_item: 1024,
    max_get_line: 4096,
};

fn used(parsed: &Parsed) -> Option<usize> {
    match parsed {
        Parsed::Command(_, used) | Parsed::Reply(_, used) => Some(*used),
        Parsed::Swallow { used, .. } => Some(*used),
        Parsed::Incomplete | Parsed::Close(_) => None,
    }
}

fn command_shaped() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just("get a b c".to_string()),
            Just("gat 10 a".to_string()),
            Just("set k 0 0 3".to_string()),
            Just("set k 0 0 99999999999999999999".to_string()),
            Just("cas k 1 2 3 4 noreply".to_string()),
            Just("ms k 3 T10 q".to_string()),
            Just("mg k v f q k O1".to_string()),
            Just("incr k 18446744073709551616".to_string()),
            Just("delete k 0 noreply".to_string()),
            Just("abc".to_string()),
            Just("".to_string()),
            "[ -~]{0,40}",
        ],
        0..12,
    )
    .prop_map(|lines| lines.join("\r\n").into_bytes())
}

/// The bytes a parse looked at: a bad data chunk is only known once the whole announced
/// block has arrived, though the parse then consumes just the line (the rest is swallowed).
fn looked_at(parsed: &Parsed) -> Option<usize> {
    match parsed {
        Parsed::Swallow { reply, used, skip } if *reply == BAD_CHUNK => Some(used + skip),
        other => used(other),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_client_bytes_never_panic_overrun_or_exceed_the_limits(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096)
    ) {
        let parsed = parse(&bytes, LIMITS);
        if let Some(used) = used(&parsed) {
            prop_assert!(used <= bytes.len());
        }
        if parsed == Parsed::Incomplete {
            // Read more only while one line and one item could still fit.
            prop_assert!(bytes.len() < LIMITS.max_line + LIMITS.max_item + 2);
        }
    }

    #[test]
    fn command_shaped_input_parses_the_same_when_split(bytes in command_shaped(), cut in 0usize..4096) {
        let whole = parse(&bytes, LIMITS);
        let cut = cut.min(bytes.len());
        let prefix = parse(&bytes[..cut], LIMITS);
        match looked_at(&whole) {
            // A prefix that holds everything the first command's parse looked at parses the same.
            Some(n) if n <= cut => prop_assert_eq!(prefix, whole),
            _ => prop_assert!(matches!(prefix, Parsed::Incomplete | Parsed::Close(_)) || used(&prefix).is_some()),
        }
    }

    #[test]
    fn arbitrary_server_bytes_never_panic_or_overrun(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096)
    ) {
        for frame in [Frame::Line, Frame::Values, Frame::Meta] {
            if let Ok(Some(len)) = frame_len(frame, &bytes) {
                prop_assert!(len <= bytes.len());
                if frame == Frame::Values {
                    let _ = libmcshm::proto::frame::items(&bytes[..len]);
                }
            }
        }
    }
}
