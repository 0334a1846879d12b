//! Every key hash mcshm computes, and nothing else: a leaf of the crate (it uses no other
//! module), so the placements built on the hashes (`ring`, `pecl`, the table's
//! `Distribution`) depend on it and never the other way round.
//!
//! - [`ketama_md5`]: a key's position on a ketama continuum (the first four bytes of its MD5).
//! - [`KeyHash`]: the hashes of libmemcached's libhashkit that a `modula` or `ketama-unweighted`
//!   domain can use, bit for bit as libhashkit computes them (the tests compare each with the
//!   real library on 10 000 keys), so that a libmemcached client configured with the same
//!   `MEMCACHED_BEHAVIOR_HASH` sends every key to the same server.
//! - [`PeclHash`]: PHP's PECL memcache `memcache.hash_function` (crc32 or fnv).

use md5::{Digest, Md5};

/// A key's position on a ketama continuum: the first four bytes of its MD5, little-endian.
pub fn ketama_md5(key: &[u8]) -> u32 {
    let digest = Md5::digest(key);
    u32::from_le_bytes(digest[..4].try_into().expect("an MD5 has 16 bytes"))
}

/// A key hash (`mcadmin policy --hash`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KeyHash {
    /// Bob Jenkins' one-at-a-time: libmemcached's default (`HASHKIT_HASH_DEFAULT`).
    #[default]
    OneAtATime,
    /// The first four bytes of the MD5, little-endian (`HASHKIT_HASH_MD5`).
    Md5,
    /// Bits 16..31 of the CRC-32, 15 of them (`HASHKIT_HASH_CRC`).
    Crc,
    /// FNV-1a, 32 bits (`HASHKIT_HASH_FNV1A_32`).
    Fnv1a32,
    /// MurmurHash2 seeded with the key length (`HASHKIT_HASH_MURMUR`).
    Murmur,
}

impl KeyHash {
    pub const ALL: [KeyHash; 5] = [
        KeyHash::OneAtATime,
        KeyHash::Md5,
        KeyHash::Crc,
        KeyHash::Fnv1a32,
        KeyHash::Murmur,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyHash::OneAtATime => "one-at-a-time",
            KeyHash::Md5 => "md5",
            KeyHash::Crc => "crc",
            KeyHash::Fnv1a32 => "fnv1a_32",
            KeyHash::Murmur => "murmur",
        }
    }

    pub fn parse(text: &str) -> Option<KeyHash> {
        KeyHash::ALL.into_iter().find(|h| h.as_str() == text)
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            KeyHash::OneAtATime => 0,
            KeyHash::Md5 => 1,
            KeyHash::Crc => 2,
            KeyHash::Fnv1a32 => 3,
            KeyHash::Murmur => 4,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<KeyHash> {
        KeyHash::ALL.into_iter().find(|h| h.code() == code)
    }

    /// The hash of `key`.
    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            KeyHash::OneAtATime => one_at_a_time(key),
            KeyHash::Md5 => ketama_md5(key),
            KeyHash::Crc => (crc32fast::hash(key) >> 16) & 0x7fff,
            KeyHash::Fnv1a32 => fnv1a_32(key),
            KeyHash::Murmur => murmur2(key),
        }
    }
}

/// libhashkit adds each byte as a C `char` (signed on x86): bytes of 0x80 and up are added
/// sign-extended.
fn one_at_a_time(key: &[u8]) -> u32 {
    let mut value: u32 = 0;
    for &byte in key {
        value = value.wrapping_add(byte as i8 as u32);
        value = value.wrapping_add(value << 10);
        value ^= value >> 6;
    }
    value = value.wrapping_add(value << 3);
    value ^= value >> 11;
    value.wrapping_add(value << 15)
}

/// As libhashkit: each byte XOR-ed in as a (signed) C `char`.
fn fnv1a_32(key: &[u8]) -> u32 {
    key.iter().fold(0x811c_9dc5u32, |hash, &byte| {
        (hash ^ byte as i8 as u32).wrapping_mul(0x0100_0193)
    })
}

/// MurmurHash2 as libhashkit has it: seed `0xdeadbeef * length`.
fn murmur2(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let len = key.len() as u32;
    let seed = 0xdead_beef_u32.wrapping_mul(len);
    let mut h = seed ^ len;
    let mut chunks = key.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().unwrap());
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// `memcache.hash_function`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PeclHash {
    #[default]
    Crc32,
    Fnv,
}

impl PeclHash {
    pub fn as_str(self) -> &'static str {
        match self {
            PeclHash::Crc32 => "crc32",
            PeclHash::Fnv => "fnv",
        }
    }

    pub fn parse(text: &str) -> Option<PeclHash> {
        [PeclHash::Crc32, PeclHash::Fnv]
            .into_iter()
            .find(|h| h.as_str() == text)
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            PeclHash::Crc32 => 0,
            PeclHash::Fnv => 1,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<PeclHash> {
        [PeclHash::Crc32, PeclHash::Fnv]
            .into_iter()
            .find(|h| h.code() == code)
    }

    pub fn hash(self, bytes: &[u8]) -> u32 {
        match self {
            PeclHash::Crc32 => crc32fast::hash(bytes),
            // FNV-1a over signed chars, as the extension computes it: libhashkit's fnv1a_32.
            PeclHash::Fnv => KeyHash::Fnv1a32.hash(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for hash in KeyHash::ALL {
            assert_eq!(KeyHash::parse(hash.as_str()), Some(hash));
            assert_eq!(KeyHash::from_code(hash.code()), Some(hash));
        }
        assert_eq!(KeyHash::parse("sha1"), None);
    }
}
