//! Property tests of the binary protocol's decoder: arbitrary bytes never panic, never claim
//! more bytes than they have, and never ask the session to buffer more than one frame (a
//! frame's header and body, bounded by the item limit); a valid frame split anywhere decodes
//! the same once whole.

use mcshm_proxy::binary::{HEADER, Parsed, parse};
use mcshm_proxy::command::Limits;
use proptest::prelude::*;

const LIMITS: Limits = Limits {
    max_line: 512,
    max_item: 1024,
    max_get_line: 4096,
};

/// A request frame: opcode, extras, key, value (lengths as they say).
fn frame(opcode: u8, extras: &[u8], key: &[u8], value: &[u8], opaque: u32) -> Vec<u8> {
    let mut out = vec![0x80, opcode];
    out.extend((key.len() as u16).to_be_bytes());
    out.extend([extras.len() as u8, 0, 0, 0]);
    out.extend(((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
    out.extend(opaque.to_be_bytes());
    out.extend([0u8; 8]);
    out.extend(extras);
    out.extend(key);
    out.extend(value);
    out
}

fn frames() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just(0x00u8),
            Just(0x01),
            Just(0x04),
            Just(0x05),
            Just(0x0d),
            Just(0x1c),
            any::<u8>()
        ],
        proptest::collection::vec(any::<u8>(), 0..24),
        "[a-z0-9:_]{0,40}",
        proptest::collection::vec(any::<u8>(), 0..200),
        any::<u32>(),
    )
        .prop_map(|(op, extras, key, value, opaque)| {
            frame(op, &extras, key.as_bytes(), &value, opaque)
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_nor_overrun(mut bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Some(first) = bytes.first_mut() {
            *first = 0x80; // past the magic, into the lengths and the body
        }
        match parse(&bytes, LIMITS) {
            Parsed::Request(_, _, used) => prop_assert!(used <= bytes.len()),
            Parsed::Swallow { used, skip, .. } => {
                prop_assert!(used <= bytes.len());
                // What is buffered is the header; the body is skipped, not held.
                prop_assert!(used - HEADER + skip > LIMITS.max_item);
            }
            Parsed::Incomplete => {
                // More bytes are wanted only while they fit one frame within the limit.
                if bytes.len() >= HEADER {
                    let body = u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
                    prop_assert!(body <= LIMITS.max_item + 512);
                    prop_assert!(bytes.len() < HEADER + body);
                }
            }
            Parsed::Close(_) => {}
        }
    }

    #[test]
    fn a_frame_split_anywhere_decodes_the_same(frame in frames(), split in any::<prop::sample::Index>()) {
        let whole = parse(&frame, LIMITS);
        let at = split.index(frame.len());
        match parse(&frame[..at], LIMITS) {
            Parsed::Incomplete => {}
            partial => prop_assert_eq!(partial, parse(&frame, LIMITS), "a prefix decided early"),
        }
        // Followed by more bytes, the frame decodes the same and uses only its own.
        let mut more = frame.clone();
        more.extend_from_slice(&frame);
        prop_assert_eq!(parse(&more, LIMITS), whole);
    }
}
