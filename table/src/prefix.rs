//! A domain's key prefix (`mcadmin policy --prefix P`): prepended to every key sent to a server,
//! never hashed, as PHP memcached's `OPT_PREFIX_KEY` and libmemcached's `NAMESPACE` do (with
//! `MEMCACHED_BEHAVIOR_HASH_WITH_PREFIX_KEY` off, their default). Applications that share
//! servers keep their keys apart by it, and an mcshm process and a libmemcached process with the
//! same prefix read each other's keys on the same server.
//!
//! The prefix is part of the versioned policy, so every process switches to a new prefix with
//! the same table version. It is stored inline in the slot header (see
//! `format`, drawn in `mcshm(5)`), which bounds it to [`MAX_PREFIX_LEN`] bytes and keeps
//! [`KeyPrefix`] a plain `Copy` value.

use std::fmt;

use crate::error::{Error, Result};
use crate::key::MAX_KEY_LEN;

/// Longest key prefix, in bytes (the slot header's field).
pub const MAX_PREFIX_LEN: usize = 30;

/// A key prefix: 0 (none) to [`MAX_PREFIX_LEN`] bytes, none of them whitespace or control.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct KeyPrefix {
    len: u8,
    bytes: [u8; MAX_PREFIX_LEN],
}

impl KeyPrefix {
    /// No prefix.
    pub const NONE: KeyPrefix = KeyPrefix {
        len: 0,
        bytes: [0; MAX_PREFIX_LEN],
    };

    /// Checks a prefix given by a user (`""` is none).
    pub fn parse(text: &str) -> Result<KeyPrefix> {
        if text.len() > MAX_PREFIX_LEN {
            return Err(Error::invalid(
                "key prefix",
                text,
                format!("longer than {MAX_PREFIX_LEN} bytes"),
            ));
        }
        if let Some(at) = text.bytes().position(|b| b <= b' ' || b == 0x7f) {
            return Err(Error::invalid(
                "key prefix",
                text,
                format!(
                    "byte 0x{:02x} at offset {at}: a prefix is part of every key, which may not hold whitespace or control characters",
                    text.as_bytes()[at]
                ),
            ));
        }
        Ok(KeyPrefix::from_field(text.as_bytes()).expect("checked above"))
    }

    /// From the stored field: the prefix, NUL-padded (`None` if it is not a valid prefix).
    pub(crate) fn from_field(field: &[u8]) -> Option<KeyPrefix> {
        let len = field.iter().position(|&b| b == 0).unwrap_or(field.len());
        if len > MAX_PREFIX_LEN
            || field[len..].iter().any(|&b| b != 0)
            || field[..len].iter().any(|&b| b <= b' ' || b == 0x7f)
        {
            return None;
        }
        let mut bytes = [0; MAX_PREFIX_LEN];
        bytes[..len].copy_from_slice(&field[..len]);
        Some(KeyPrefix {
            len: len as u8,
            bytes,
        })
    }

    /// The stored field: the prefix, NUL-padded to [`MAX_PREFIX_LEN`] bytes.
    pub(crate) fn field(&self) -> [u8; MAX_PREFIX_LEN] {
        self.bytes
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Text for display (the bytes are checked UTF-8 when typed; lossy otherwise).
    pub fn as_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }

    /// Checks that `key` still fits memcached's key length once prefixed.
    pub fn check_fits(&self, key: &[u8]) -> Result<()> {
        let total = usize::from(self.len) + key.len();
        if total > MAX_KEY_LEN {
            return Err(Error::bad_key(
                key,
                format!(
                    "with the domain's key prefix '{}' it is {total} bytes, longer than {MAX_KEY_LEN}",
                    self.as_text()
                ),
            ));
        }
        Ok(())
    }

    /// `key` without the prefix, when it has it (a key a server names in a reply).
    pub fn strip<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        key.strip_prefix(self.as_bytes())
    }
}

impl fmt::Debug for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPrefix({:?})", self.as_text())
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked_and_round_trip_through_the_field() {
        let p = KeyPrefix::parse("app1:").unwrap();
        assert_eq!(p.as_bytes(), b"app1:");
        assert_eq!(KeyPrefix::from_field(&p.field()), Some(p));
        assert_eq!(KeyPrefix::parse("").unwrap(), KeyPrefix::NONE);
        assert!(KeyPrefix::parse(&"p".repeat(MAX_PREFIX_LEN)).is_ok());
        assert!(KeyPrefix::parse(&"p".repeat(MAX_PREFIX_LEN + 1)).is_err());
        assert!(KeyPrefix::parse("a b").is_err());
        assert!(KeyPrefix::parse("a\r\n").is_err());
        let mut field = [0u8; MAX_PREFIX_LEN];
        field[0] = b'a';
        field[2] = b'b';
        assert_eq!(KeyPrefix::from_field(&field), None, "bytes after the NUL");
        field[2] = 0;
        field[1] = b'\n';
        assert_eq!(KeyPrefix::from_field(&field), None, "a control byte");
    }

    #[test]
    fn a_key_must_fit_with_its_prefix() {
        let p = KeyPrefix::parse("ns:").unwrap();
        assert!(p.check_fits(&[b'k'; MAX_KEY_LEN - 3]).is_ok());
        assert!(p.check_fits(&[b'k'; MAX_KEY_LEN - 2]).is_err());
        assert_eq!(p.strip(b"ns:key"), Some(&b"key"[..]));
        assert_eq!(p.strip(b"other"), None);
    }
}
