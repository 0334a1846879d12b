//! Every key hash mcshm computes, and nothing else: a leaf of the crate (it uses no other
//! module), so the placements built on the hashes (`ring`, `pecl`, the table's
//! `Distribution`) depend on it and never the other way round.
//!
//! - [`ketama_md5`]: a key's position on a ketama continuum (the first four bytes of its MD5).
//! - [`KeyHash`]: the hashes of libmemcached's libhashkit that a `modula`, `ketama-unweighted` or
//!   `vbucket` domain can use, bit for bit as libhashkit computes them (the tests compare each
//!   with the real library on 10 000 keys, and with libhashkit's own vectors), so that a
//!   libmemcached client configured with the same `MEMCACHED_BEHAVIOR_HASH` sends every key to
//!   the same server. Every libhashkit hash is here except `hsieh`: libmemcached builds leave it
//!   out by default (Debian's among them: `MEMCACHED_BEHAVIOR_HASH` refuses it), so no client
//!   could be configured to agree with it.
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
    /// FNV-1, 64 bits, its low 32 bits (`HASHKIT_HASH_FNV1_64`).
    Fnv164,
    /// FNV-1a, 64 bits, its low 32 bits (`HASHKIT_HASH_FNV1A_64`).
    Fnv1a64,
    /// FNV-1, 32 bits (`HASHKIT_HASH_FNV1_32`).
    Fnv132,
    /// Bob Jenkins' lookup3 `hashlittle`, initval 13 (`HASHKIT_HASH_JENKINS`).
    Jenkins,
    /// MurmurHash3 x86_32 seeded with `0xdeadbeef * length` (`HASHKIT_HASH_MURMUR3`).
    Murmur3,
}

impl KeyHash {
    /// In code order (the code is what a table file stores: new hashes take new codes, so that
    /// an older mcshm refuses a version it cannot place rather than misplace its keys).
    pub const ALL: [KeyHash; 10] = [
        KeyHash::OneAtATime,
        KeyHash::Md5,
        KeyHash::Crc,
        KeyHash::Fnv1a32,
        KeyHash::Murmur,
        KeyHash::Fnv164,
        KeyHash::Fnv1a64,
        KeyHash::Fnv132,
        KeyHash::Jenkins,
        KeyHash::Murmur3,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyHash::OneAtATime => "one-at-a-time",
            KeyHash::Md5 => "md5",
            KeyHash::Crc => "crc",
            KeyHash::Fnv1a32 => "fnv1a_32",
            KeyHash::Murmur => "murmur",
            KeyHash::Fnv164 => "fnv1_64",
            KeyHash::Fnv1a64 => "fnv1a_64",
            KeyHash::Fnv132 => "fnv1_32",
            KeyHash::Jenkins => "jenkins",
            KeyHash::Murmur3 => "murmur3",
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
            KeyHash::Fnv164 => 5,
            KeyHash::Fnv1a64 => 6,
            KeyHash::Fnv132 => 7,
            KeyHash::Jenkins => 8,
            KeyHash::Murmur3 => 9,
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
            KeyHash::Fnv164 => fnv1_64(key),
            KeyHash::Fnv1a64 => fnv1a_64(key),
            KeyHash::Fnv132 => fnv1_32(key),
            KeyHash::Jenkins => jenkins(key),
            KeyHash::Murmur3 => murmur3(key),
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

/// FNV-1 on 32 bits, each byte XOR-ed in as a (signed) C `char`.
fn fnv1_32(key: &[u8]) -> u32 {
    key.iter().fold(0x811c_9dc5u32, |hash, &byte| {
        hash.wrapping_mul(0x0100_0193) ^ byte as i8 as u32
    })
}

/// FNV-1 on 64 bits, its low 32 bits (libhashkit returns `(uint32_t) hash`); each byte is
/// XOR-ed in as a C `char` sign-extended to 64 bits.
fn fnv1_64(key: &[u8]) -> u32 {
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        hash.wrapping_mul(0x0100_0000_01b3) ^ byte as i8 as u64
    });
    hash as u32
}

/// FNV-1a on 64 bits, its low 32 bits. libhashkit computes it on 32 bits, with the offset basis
/// and prime truncated to `uint32_t` (0x84222325, 0x1b3): the same bits, since the low 32 bits
/// of a product and of a XOR depend only on the low 32 bits of their operands. Bytes go in as
/// (signed) C `char`s.
fn fnv1a_64(key: &[u8]) -> u32 {
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        (hash ^ byte as i8 as u64).wrapping_mul(0x0100_0000_01b3)
    });
    hash as u32
}

/// Bob Jenkins' lookup3 `hashlittle` with initval 13, as libhashkit's `hashkit_jenkins`: bytes
/// unsigned, little-endian words (its aligned, half-aligned and byte-wise paths all read the
/// key so on x86), a 1..=12-byte last block zero-padded and mixed by `final`; the empty key
/// hashes to the initial state.
fn jenkins(key: &[u8]) -> u32 {
    fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(4);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(6);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(8);
        *b = b.wrapping_add(*a);
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(16);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(19);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(4);
        *b = b.wrapping_add(*a);
    }
    fn word(bytes: &[u8]) -> u32 {
        let mut padded = [0u8; 4];
        padded[..bytes.len()].copy_from_slice(bytes);
        u32::from_le_bytes(padded)
    }
    let init = 0xdead_beef_u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(13);
    let (mut a, mut b, mut c) = (init, init, init);
    if key.is_empty() {
        return c;
    }
    let mut rest = key;
    while rest.len() > 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    let mut last = [0u8; 12];
    last[..rest.len()].copy_from_slice(rest);
    a = a.wrapping_add(word(&last[0..4]));
    b = b.wrapping_add(word(&last[4..8]));
    c = c.wrapping_add(word(&last[8..12]));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

/// MurmurHash3 x86_32 as libhashkit has it: seed `0xdeadbeef * length`, bytes unsigned.
fn murmur3(key: &[u8]) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let len = key.len() as u32;
    let mut h = 0xdead_beef_u32.wrapping_mul(len);
    let mut chunks = key.chunks_exact(4);
    for chunk in &mut chunks {
        let k = u32::from_le_bytes(chunk.try_into().unwrap())
            .wrapping_mul(C1)
            .rotate_left(15)
            .wrapping_mul(C2);
        h = (h ^ k)
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }
    // libhashkit mixes the tail in even when it is empty (k = 0 leaves h unchanged).
    let tail = chunks.remainder();
    let mut padded = [0u8; 4];
    padded[..tail.len()].copy_from_slice(tail);
    h ^= u32::from_le_bytes(padded)
        .wrapping_mul(C1)
        .rotate_left(15)
        .wrapping_mul(C2);
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
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
        assert_eq!(
            KeyHash::parse("hsieh"),
            None,
            "compiled out of libmemcached builds"
        );
        let codes: Vec<u8> = KeyHash::ALL.iter().map(|h| h.code()).collect();
        assert_eq!(
            codes,
            (0..10).collect::<Vec<u8>>(),
            "codes are stable, in order"
        );
        assert_eq!(KeyHash::from_code(10), None);
    }

    /// libhashkit's own vectors (libmemcached-awesome's test/fixtures/hashes.hpp: `input` and
    /// `output`, one row per `HASHKIT_HASH_*`; hsieh's row left out).
    const INPUT: [&str; 26] = [
        "apple",
        "beat",
        "carrot",
        "daikon",
        "eggplant",
        "flower",
        "green",
        "hide",
        "ick",
        "jack",
        "kick",
        "lime",
        "mushrooms",
        "nectarine",
        "orange",
        "peach",
        "quant",
        "ripen",
        "strawberry",
        "tang",
        "up",
        "volumne",
        "when",
        "yellow",
        "zip",
        "The quick brown fox jumps over the lazy dog",
    ];

    #[rustfmt::skip]
    const OUTPUT: [(KeyHash, [u32; 26]); 10] = [
        (KeyHash::OneAtATime, [
            2297466611, 3902465932, 469785835, 1937308741, 261917617, 3785641677, 1439605128,
            1649152283, 1493851484, 1246520657, 2221159044, 1973511823, 384136800, 214358653,
            2379473940, 4269788650, 2864377005, 2638630052, 427683330, 990491717, 1747111141,
            792127364, 2599214128, 2553037199, 2509838425, 1369346549,
        ]),
        (KeyHash::Md5, [
            3195025439, 2556848621, 3724893440, 3332385401, 245758794, 2550894432, 121710495,
            3053817768, 1250994555, 1862072655, 2631955953, 2951528551, 1451250070, 2820856945,
            2060845566, 3646985608, 2138080750, 217675895, 2230934345, 1234361223, 3968582726,
            2455685270, 1293568479, 199067604, 2042482093, 2642219166,
        ]),
        (KeyHash::Crc, [
            10542, 22009, 14526, 19510, 19432, 10199, 20634, 9369, 11511, 10362, 7893, 31289,
            11313, 9354, 7621, 30628, 15218, 25967, 2695, 9380, 17300, 28156, 9192, 20484,
            16925, 16719,
        ]),
        (KeyHash::Fnv164, [
            473199127, 4148981457, 3971873300, 3257986707, 1722477987, 2991193800, 4147007314,
            3633179701, 1805162104, 3503289120, 3395702895, 3325073042, 2345265314, 3340346032,
            2722964135, 1173398992, 2815549194, 2562818319, 224996066, 2680194749, 3035305390,
            246890365, 2395624193, 4145193337, 1801941682, 2112060110,
        ]),
        (KeyHash::Fnv1a64, [
            1488911807, 2500855813, 1510099634, 1390325195, 3647689787, 3241528582, 1669328060,
            2604311949, 734810122, 1516407546, 560948863, 1767346780, 561034892, 4156330026,
            3716417003, 3475297030, 1518272172, 227211583, 3938128828, 126112909, 3043416448,
            3131561933, 1328739897, 2455664041, 2272238452, 3890508048,
        ]),
        (KeyHash::Fnv132, [
            67176023, 1190179409, 2043204404, 3221866419, 2567703427, 3787535528, 4147287986,
            3500475733, 344481048, 3865235296, 2181839183, 119581266, 510234242, 4248244304,
            1362796839, 103389328, 1449620010, 182962511, 3554262370, 3206747549, 1551306158,
            4127558461, 1889140833, 2774173721, 1180552018, 3922226286,
        ]),
        (KeyHash::Fnv1a32, [
            280767167, 2421315013, 3072375666, 855001899, 459261019, 3521085446, 18738364,
            1625305005, 2162232970, 777243802, 3323728671, 132336572, 3654473228, 260679466,
            1169454059, 2698319462, 1062177260, 235516991, 2218399068, 405302637, 1128467232,
            3579622413, 2138539289, 96429129, 2877453236, 76545936,
        ]),
        (KeyHash::Murmur, [
            4142305122, 734504955, 3802834688, 4076891445, 387802650, 560515427, 3274673488,
            3150339524, 1527441970, 2728642900, 3613992239, 2938419259, 2321988328, 1145154116,
            4038540960, 2224541613, 264013145, 3995512858, 2400956718, 2346666219, 926327338,
            442757446, 1770805201, 560483147, 3902279934, 818385189,
        ]),
        (KeyHash::Jenkins, [
            1442444624, 4253821186, 1885058256, 2120131735, 3261968576, 3515188778, 4232909173,
            4288625128, 1812047395, 3689182164, 2502979932, 1214050606, 2415988847, 1494268927,
            1025545760, 3920481083, 4153263658, 3824871822, 3072759809, 798622255, 3065432577,
            1453328165, 2691550971, 3408888387, 2629893356, 314054204,
        ]),
        (KeyHash::Murmur3, [
            1120212521, 1448785489, 4186307405, 2686268514, 444808887, 221750260, 3074673162,
            1946933257, 2826416675, 2430719166, 3200429559, 297894347, 732888124, 4050076964,
            3298336176, 1336207361, 810553576, 3748182674, 3860119212, 3439537197, 3044240981,
            1464271804, 3896193724, 2915115798, 1702843840, 2603515018,
        ]),
    ];

    #[test]
    fn libhashkit_s_vectors() {
        for (hash, expected) in OUTPUT {
            for (key, want) in INPUT.iter().zip(expected) {
                assert_eq!(
                    hash.hash(key.as_bytes()),
                    want,
                    "{} of {key:?}",
                    hash.as_str()
                );
            }
        }
        let covered: Vec<KeyHash> = OUTPUT.iter().map(|(h, _)| *h).collect();
        for hash in KeyHash::ALL {
            assert!(covered.contains(&hash), "{} has vectors", hash.as_str());
        }
    }

    /// The edges the vectors above miss, against values the system libhashkit
    /// (`libhashkit_digest`) gives: the empty key, bytes over 0x7f (signed chars for the FNVs,
    /// unsigned for jenkins and murmur3), and jenkins' exact 12- and 24-byte blocks.
    #[test]
    fn edges_match_libhashkit() {
        // fnv1_64, fnv1a_64, fnv1_32, jenkins, murmur3
        let cases: [(&[u8], [u32; 5]); 4] = [
            (b"", [2216829733, 2216829733, 2166136261, 3735928572, 0]),
            (
                b"\xff\x80abc\xe9",
                [718785001, 904906037, 178595561, 2908979171, 2674421621],
            ),
            (
                b"abcdefghijkl",
                [3665453173, 3764018357, 1705886421, 4220209635, 35528508],
            ),
            (
                b"abcdefghijklmnopqrstuvwx",
                [640824341, 1628417501, 2650752053, 192687062, 1416338466],
            ),
        ];
        for (key, expected) in cases {
            let hashes = [
                KeyHash::Fnv164,
                KeyHash::Fnv1a64,
                KeyHash::Fnv132,
                KeyHash::Jenkins,
                KeyHash::Murmur3,
            ];
            for (hash, want) in hashes.into_iter().zip(expected) {
                assert_eq!(hash.hash(key), want, "{} of {key:x?}", hash.as_str());
            }
        }
    }
}
