//! The reply parser against hostile servers: arbitrary bytes never panic, never claim more
//! bytes than were given, and a complete reply split anywhere parses the same.

use libmcshm::proto::{Expect, parse_reply};
use proptest::prelude::*;

const EXPECTS: [Expect; 9] = [
    Expect::Values,
    Expect::Store,
    Expect::Delete,
    Expect::Number,
    Expect::Touch,
    Expect::Ok,
    Expect::Version,
    Expect::Stats,
    Expect::Meta,
];

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_or_overrun(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for expect in EXPECTS {
            if let Ok(Some((_, used))) = parse_reply(expect, &bytes) {
                prop_assert!(used <= bytes.len());
            }
        }
    }

    #[test]
    fn protocol_shaped_garbage_never_panics(
        lines in proptest::collection::vec(
            prop_oneof![
                Just("VALUE k 0 3".to_string()),
                Just("VALUE k 4294967296 1".to_string()),
                Just("VALUE k 1 18446744073709551615".to_string()),
                Just("VA 3 t-1 f7".to_string()),
                Just("VA 99999999999 t1".to_string()),
                Just("STAT a b".to_string()),
                Just("END".to_string()),
                Just("SERVER_ERROR x".to_string()),
                "[ -~]{0,12}",
            ],
            0..8,
        ),
    ) {
        let text = lines.join("\r\n") + "\r\n";
        for expect in EXPECTS {
            if let Ok(Some((_, used))) = parse_reply(expect, text.as_bytes()) {
                prop_assert!(used <= text.len());
            }
        }
    }

    #[test]
    fn values_parse_the_same_from_any_split(value in proptest::collection::vec(any::<u8>(), 0..300), cut in any::<prop::sample::Index>()) {
        let mut reply = format!("VALUE key 9 {}\r\n", value.len()).into_bytes();
        reply.extend_from_slice(&value);
        reply.extend_from_slice(b"\r\nEND\r\n");
        let whole = parse_reply(Expect::Values, &reply).unwrap().unwrap();
        prop_assert_eq!(whole.1, reply.len());
        let at = cut.index(reply.len());
        prop_assert_eq!(parse_reply(Expect::Values, &reply[..at]).unwrap(), None);
    }
}
