//! What a memcached key may be: 1 to 250 bytes, none of them whitespace or control. Every
//! layer checks keys with this one rule (the table's key prefix must leave room for it, the
//! router refuses a key before routing it, the wire encodes only keys that passed it).

use std::fmt;

/// Longest key memcached accepts.
pub const MAX_KEY_LEN: usize = 250;
/// Why a key is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    TooLong(usize),
    /// Whitespace or a control byte at this offset.
    BadByte(usize, u8),
    /// A valid memcached key in mcshm's own namespace (its wire form, the domain's key prefix
    /// included, starts with [`crate::fence::FENCE_PREFIX`]): refused to applications by the
    /// router, mcproxy's parsers and the listings (`check_key` itself never answers it: mcshm
    /// sends these keys).
    Reserved,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Empty => f.write_str("empty key"),
            KeyError::TooLong(n) => write!(f, "key is {n} bytes, longer than {MAX_KEY_LEN}"),
            KeyError::BadByte(at, b) => {
                write!(
                    f,
                    "key contains byte 0x{b:02x} at offset {at} (no whitespace or control characters)"
                )
            }
            KeyError::Reserved => {
                f.write_str("keys starting with mcshm.fence. are reserved by mcshm (fencing)")
            }
        }
    }
}

/// Checks a key: 1–250 bytes, none of them whitespace or control (<= 0x20, 0x7f).
pub fn check_key(key: &[u8]) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(key.len()));
    }
    // Every byte looked at without an early exit (which the compiler turns into a few
    // vector instructions: a bulk load checks each key three times); the offending byte
    // found only for a key that has one.
    let bad = |b: u8| b <= b' ' || b == 0x7f;
    if !key.iter().fold(false, |found, &b| found | bad(b)) {
        return Ok(());
    }
    let at = key.iter().position(|&b| bad(b)).expect("a bad byte");
    Err(KeyError::BadByte(at, key[at]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert_eq!(check_key(b""), Err(KeyError::Empty));
        assert_eq!(check_key(&[b'k'; 251]), Err(KeyError::TooLong(251)));
        assert!(check_key(&[b'k'; 250]).is_ok());
        assert_eq!(
            check_key(b"a\r\nflush_all"),
            Err(KeyError::BadByte(1, b'\r'))
        );
        assert_eq!(check_key(b"a b"), Err(KeyError::BadByte(1, b' ')));
        assert_eq!(check_key(b"a\x7f"), Err(KeyError::BadByte(1, 0x7f)));
        assert!(check_key("ключ".as_bytes()).is_ok());
    }

    #[test]
    fn the_reserved_namespace_is_named_as_it_is() {
        let prefix = std::str::from_utf8(crate::fence::FENCE_PREFIX).unwrap();
        let shown = KeyError::Reserved.to_string();
        assert!(shown.contains(&format!(" {prefix} ")), "{shown}");
        // mcshm's own keys pass the memcached rule: the reservation is checked apart.
        assert!(check_key(b"mcshm.fence.app").is_ok());
    }
}
