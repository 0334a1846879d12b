//! The registry file format (version 4): what every byte of `<dir>/<domain>.mcshm` means.
//!
//! All integers are little-endian (mcshm does not build on big-endian targets). The file is a
//! header followed by two slots of equal size; each slot holds one complete version of the table.
//! Readers copy the file out through 64-bit atomic loads only (see the `shm` module) and validate
//! every copy before using it.
//!
//! ```text
//! Header (256 bytes)
//! offset size field
//!      0    8 magic               89 4D 43 53 48 4D 0D 0A  ("\x89MCSHM\r\n")
//!      8    4 format_version      format of the writer that wrote the file (4)
//!     12    4 min_reader_version  oldest reader format that may read it (3); a reader whose
//!                                 format is lower refuses the file with "upgrade mcshm"
//!     16    4 header_len          256
//!     20    4 capacity            servers per slot (default 256)
//!     24    4 slot_header_len     128 (format 1 and 2: 64, without the fields from 64 on)
//!     28    4 entry_len           512
//!     32    8 slot_len            slot_header_len + capacity * entry_len
//!     40    8 created_ms          creation time, ms since the Unix epoch
//!     48   16 reserved            zero
//!     64   64 domain              domain name, NUL-padded
//!    128    4 header_crc          CRC32 (IEEE) of bytes 0..128
//!    132    4 reserved            zero
//!    136    8 committed           bits 0..48 the published version; bits 48..63 CRC-15/CAN
//!                                 (polynomial 0x4599) of the version's 6 low bytes (a word
//!                                 that fails it is damage); bit 63 (MOVED) = file replaced
//!                                 by a larger one, re-open the path. Slot = version % 2.
//!                                 (Format 1: the whole word is the version, plus MOVED.)
//!    144    4 wake                futex word, incremented after every publish
//!    148    4 reserved            zero
//!    152    8 agent               the fleet agent (`mcadmin sync`) that mirrors this domain:
//!                                 (process start time in clock ticks << 32 | pid); 0 = none
//!    160    8 agent_link          bit 63: the agent reaches etcd; bits 0..62: since when
//!                                 (ms since the Unix epoch). Not versioned, not checksummed:
//!                                 status for `mcadmin list`, never routing input
//!    168    8 locker              the writer holding the writer lock (process start time in
//!                                 clock ticks << 32 | pid), 0 when none: for the message of a
//!                                 writer that gives up waiting. The lock itself is an open-
//!                                 file-description fcntl write lock on the whole file; a
//!                                 reader's read lock in its way makes the writer move the
//!                                 table to a new file, writers taking turns on DOMAIN.lock
//!    176    4 fenced_answers      answers of this domain's servers that a fence judged behind
//!                                 this host's table, counted by every client on the host
//!                                 (wraps at 2^32). Not versioned, not checksummed: status
//!    180   76 reserved            zero
//!
//! Slot k (at header_len + k * slot_len)
//!      0    8 seq                 seqlock sequence: odd while a writer fills the slot
//!      8    8 generation          the version this slot holds
//!     16    4 crc                 CRC32 of slot header bytes 8..128 with this field taken as
//!                                 zero; each entry has its own (format 1 and 2: one CRC32 of
//!                                 slot bytes 8..(64 + count * entry_len))
//!     20    4 count               servers in this version (<= capacity)
//!     24    8 changed_ms          commit time of this version, ms since the Unix epoch
//!     32    4 writer_pid          process that committed it
//!     36    4 writer_uid          user that committed it
//!     40    1 failover            domain policy: 0 none, 1 rehash
//!     41    1 failure_limit       consecutive failures that mark a server down (0 = 2)
//!     42    2 policy_flags        bits 0-1 fence: 0 auto, 1 on, 2 off (format 3 readers before
//!                                 fencing ignore it: they neither raise nor read fences)
//!     44    4 next_id             id the next added server gets (ids start at 1)
//!     48    1 rejoin              how a down server comes back: 0 flush, 1 warm, 2 trust, 3 replay
//!     49    1 replicas            servers each write goes to (0 = 1)
//!     50    2 map_shape           format 4: the bucket map after the entries (0: none; a
//!                                 `vbucket` version has one): bits 0..5 log2 of the bucket
//!                                 count (0..=16), bits 5..8 the row width (1 + replicas,
//!                                 1..=5), bit 8 forward rows follow the rows, bit 15 set
//!     52    4 warm_window_s       seconds of warm-up after a rejoin (0 = 600)
//!     56    8 fleet_revision      etcd revision of the fleet table this version mirrors
//!                                 (`mcadmin sync`); 0 = a host-local table
//!     64    8 ring                generation of the shared ring this version routes with
//!                                 (the version that wrote it); 0 = none, readers build it
//!     72    4 ring_slot           ring region (0 or 1) that holds it
//!     76    4 ring_points         its number of points
//!     80    8 delta_base          a version whose entries this one repeats, byte for byte and
//!                                 at the same positions, outside delta_first..delta_end (the
//!                                 previous version; 0 = none): a reader holding it copies
//!                                 only those entries
//!     88    4 delta_first         first entry that differs from delta_base's
//!     92    4 delta_end           entries from here to count are delta_base's (<= count)
//!     96    1 distribution        how keys map to servers: 0 ketama (weighted, MD5), 1 modula,
//!                                 2 ketama-spy (weighted, points of "/host:port-i"),
//!                                 3 pecl-memcache (PHP's PECL memcache, consistent),
//!                                 4 ketama-unweighted (100 points per server, key_hash),
//!                                 5 vbucket (format 4: key_hash masked to the map's
//!                                 buckets; readers of format 3 refuse the code);
//!                                 plus 0x80 when prefix is set (so that readers older than
//!                                 prefixes refuse the version rather than ignore the prefix)
//!     97    1 key_hash            modula's, ketama-unweighted's and vbucket's hash:
//!                                 0 one-at-a-time, 1 md5, 2 crc, 3 fnv1a_32, 4 murmur,
//!                                 5 fnv1_64, 6 fnv1a_64, 7 fnv1_32, 8 jenkins, 9 murmur3
//!                                 (libhashkit's); pecl-memcache's: 0 crc32, 1 fnv; 0 with
//!                                 ketama, ketama-spy
//!     98   30 prefix              key prefix, NUL-padded (none: all zero): sent before every
//!                                 key, never hashed; bytes 0x21..=0xff except 0x7f
//!    128    * entries             count entries of entry_len bytes, in the order servers
//!                                 were added
//!      *    * bucket map          format 4, when map_shape says: right after the entries
//!                                 (and inside the slot: a writer grows the file so that the
//!                                 entries and the map fit), padded to 8 bytes
//!
//! Bucket map (format 4)
//!      0    4 crc                 CRC32 of the map's bytes 4.. (padding included)
//!      4    4 reserved            zero
//!      8    * rows                buckets × width u16: each bucket's owner then its replicas,
//!                                 as positions in the slot's entries; 0xffff = none
//!      *    * forward rows        (bit 8 of map_shape) the same shape: where a move under
//!                                 way sends each bucket (libvbucket's vBucketMapForward)
//!
//! Entry (512 bytes)
//!      0    2 addr_len            bytes used of address (1..=255)
//!      2    2 port                TCP port (1..=65535); 0 for a unix socket
//!      4    2 weight              1..=65535
//!      6    1 state               0 up, 1 down, 2 draining
//!      7    1 kind                1 hostname, 2 IPv4, 3 IPv6 (no brackets), 4 unix socket path
//!      8    4 retry_interval      seconds, signed; -1 = never retried automatically
//!     12    2 reason_len          bytes used of reason (0..=192)
//!     14    2 flags               bit 0: held (down by an operator: no automatic retry);
//!                                 bit 1: sweeping (a sweep of its strays is under way:
//!                                 writers set strays_since anew when it loses keys again);
//!                                 other bits zero
//!     16    8 since_ms            when the state last changed, ms since the Unix epoch
//!     24    4 changed_by_pid      process that last changed the state
//!     28    4 changed_by_uid      user that last changed the state
//!     32    4 id                  server id, unique in the domain, never reused
//!     36    4 live                index of this server's record in the live region
//!     40    8 warm_until_ms       warm-up after a rejoin lasts until then (0: none)
//!     48    4 crc                 format 3: CRC32 of the entry's 512 bytes, this field as zero
//!     52    8 strays_since        version at which the server was marked: it lost keys to
//!                                 others (0: none since it was flushed or swept; kept when
//!                                 it loses keys again, unless sweeping); writes delete
//!                                 their key there while it is set
//!     60    4 reserved            zero
//!     64  256 address             host text or socket path, zero-padded
//!    320  192 reason              UTF-8, zero-padded
//!
//! Live region (at header_len + 2 * slot_len): capacity records of 32 bytes, updated by any
//! client with atomic compare-and-swap, without the writer lock (not versioned)
//!      0    8 owner_failures      (id << 32) | consecutive failures; a CAS names the id, so a
//!                                 stale client cannot count against a server re-using the record
//!      8    8 last_failure_ms     time of the last failure counted, ms since the Unix epoch
//!     16    8 probe_lease_ms      when a process on this host last took the right to probe
//!                                 this down server (CAS): one probe per retry_interval per host
//!     24    8 reserved            zero
//!
//! Clients region (after the live region): 256 records of 64 bytes, one per process that has
//! the domain open for writing, claimed with a CAS on pid (not versioned)
//!      0    8 pid_start           (process start time in clock ticks << 32 | pid); 0 = free
//!      8    8 version             table version the process last used
//!     16    8 last_used_ms        when it last used the domain
//!     24   16 comm                process name (from /proc/self/comm), NUL-padded
//!     40   24 reserved            zero
//!
//! Ring regions (format 3, after the clients region): two of ring_len bytes, each holding one
//! ketama continuum (see `shared_ring`), written under the writer lock into the region the
//! committed version does not use, inside that version's seqlock window
//!      0    8 generation          the version that wrote this ring
//!      8    4 points              number of points (<= point capacity, 160 * capacity + 4096)
//!     12    4 bits                index bits: 2^bits buckets (1..=16, from the point count)
//!     16   48 reserved            zero
//!     64    * index               2^bits + 1 u32: index[b] = first point whose value's top
//!                                 bits are >= b (space for 2^max_bits + 1, padded to 8 bytes)
//!      *    * points              8 bytes each, sorted by (value, server): bits 0..32 the
//!                                 value, 32..48 the server (its position in the slot's
//!                                 entries), 48..64 a check of the other 48 bits and the
//!                                 generation (a damaged or left-over point fails it)
//! ```
//!
//! The magic's first byte has its high bit set and it ends in CR LF, so a file mangled by 7-bit
//! or newline-translating copies is caught at once. Format evolution: a writer of a newer format
//! rewrites an older file into a new one on its first write (the same rename path as growth), and
//! sets `min_reader_version` to the oldest format that can still read the result correctly.

use bytemuck::{Pod, Zeroable};

use crate::address::Address;
use crate::prefix::{KeyPrefix, MAX_PREFIX_LEN};
use crate::seqlock::{Geometry, Seal};
use std::collections::HashSet;

use crate::placement::{BucketMap, Distribution, Shape};
use crate::table::{
    CommitInfo, DEFAULT_WARM_WINDOW_S, Failover, Fence, MAX_REASON_LEN, Policy, Rejoin, Server,
    Snapshot, State, Table, first_duplicate,
};

#[cfg(not(target_endian = "little"))]
compile_error!("the mcshm file format is little-endian; big-endian targets are not supported");

pub const MAGIC: [u8; 8] = *b"\x89MCSHM\r\n";
/// The format this build writes (and the newest it reads). 2: the committed word checks itself
/// (see [`crate::seqlock::Seal`]). 3: the ring is in the file (see `shared_ring`). 4: a slot may
/// hold a bucket map after its entries (`vbucket` domains). Files of older formats are read,
/// and rewritten in format 4 on their next write.
pub const FORMAT_VERSION: u32 = 4;
/// The oldest reader format that reads a format-4 file: format 3 reads every version but a
/// `vbucket` one, which it refuses by its distribution code ("upgrade mcshm").
pub const MIN_READER_VERSION: u32 = 3;
pub const HEADER_LEN: usize = 256;
/// Slot header of format 3; formats 1 and 2 have the first [`SLOT_HEADER_LEN_V2`] bytes.
pub const SLOT_HEADER_LEN: usize = 128;
pub const SLOT_HEADER_LEN_V2: usize = 64;
pub const ENTRY_LEN: usize = 512;
/// Servers per slot of a new file.
pub const DEFAULT_CAPACITY: u32 = 256;
/// Most servers a domain can hold (a 32 MiB slot).
pub const MAX_CAPACITY: u32 = 65536;

const STATIC_LEN: usize = 128;
const HEADER_CRC_OFFSET: usize = 128;
/// Word index of `committed`.
pub const COMMITTED_WORD: usize = 136 / 8;
/// Byte offset of the futex word `wake`.
pub const WAKE_OFFSET: usize = 144;
/// Byte offset of `fenced_answers` (a 32-bit counter).
pub const FENCED_OFFSET: usize = 176;
/// Word indexes of `agent` and `agent_link`.
pub const AGENT_WORD: usize = 152 / 8;
pub const AGENT_LINK_WORD: usize = 160 / 8;
/// Word index of `locker`.
pub const LOCKER_WORD: usize = 168 / 8;
/// Bytes of a ring region's header, and the point capacity beyond 160 per server (the f32
/// arithmetic of the point counts may round a few servers up).
pub const RING_HEADER_LEN: usize = 64;
const RING_POINT_SLACK: usize = 4096;
/// Bytes of one live record.
pub const LIVE_LEN: usize = 32;
/// Records of the clients region, and bytes of each.
pub const CLIENT_SLOTS: usize = 256;
pub const CLIENT_LEN: usize = 64;
/// Words of one entry.
pub const ENTRY_WORDS: usize = ENTRY_LEN / 8;
const ADDR_FIELD: usize = 256;

/// Bytes 0..128 of the header: written once when the file is created, covered by `header_crc`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct StaticHeader {
    pub magic: [u8; 8],
    pub format_version: u32,
    pub min_reader_version: u32,
    pub header_len: u32,
    pub capacity: u32,
    pub slot_header_len: u32,
    pub entry_len: u32,
    pub slot_len: u64,
    pub created_ms: u64,
    pub reserved: [u8; 16],
    pub domain: [u8; 64],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SlotHeader {
    seq: u64,
    generation: u64,
    crc: u32,
    count: u32,
    changed_ms: u64,
    writer_pid: u32,
    writer_uid: u32,
    failover: u8,
    failure_limit: u8,
    policy_flags: u16,
    next_id: u32,
    rejoin: u8,
    replicas: u8,
    map_shape: u16,
    warm_window_s: u32,
    fleet_revision: u64,
}

/// Bytes 64..128 of a format-3 slot header.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SlotRingFields {
    ring: u64,
    ring_slot: u32,
    ring_points: u32,
    delta_base: u64,
    delta_first: u32,
    delta_end: u32,
    /// The distribution's code, with [`PREFIXED`] set when the domain has a key prefix.
    distribution: u8,
    key_hash: u8,
    prefix: [u8; MAX_PREFIX_LEN],
}

/// Set in the distribution byte of a version with a key prefix: readers that predate prefixes
/// refuse the code ("upgrade mcshm") instead of sending keys without it.
const PREFIXED: u8 = 0x80;

/// Entry flag: the server is down by an operator's decision (no automatic retry).
const ENTRY_HELD: u16 = 0x1;
/// Entry flag: a sweep of the server's strays is under way (see `Server::sweeping`).
const ENTRY_SWEEPING: u16 = 0x2;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Entry {
    addr_len: u16,
    port: u16,
    weight: u16,
    state: u8,
    kind: u8,
    retry_interval: i32,
    reason_len: u16,
    flags: u16,
    since_ms: u64,
    changed_by_pid: u32,
    changed_by_uid: u32,
    id: u32,
    live: u32,
    warm_until_ms: u64,
    /// Format 3: CRC32 of the entry with this field taken as zero.
    crc: u32,
    /// Little-endian u64 (at offset 52, not 8-aligned).
    strays_since: [u8; 8],
    reserved1: [u8; 4],
    address: [u8; ADDR_FIELD],
    reason: [u8; MAX_REASON_LEN],
}

const _: () = assert!(size_of::<StaticHeader>() == STATIC_LEN);
const _: () = assert!(size_of::<SlotHeader>() == SLOT_HEADER_LEN_V2);
const _: () = assert!(size_of::<SlotRingFields>() == SLOT_HEADER_LEN - SLOT_HEADER_LEN_V2);
const _: () = assert!(size_of::<Entry>() == ENTRY_LEN);

/// The sizes of one file, from its validated header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub capacity: u32,
    pub created_ms: u64,
    /// The format the file was written in (older ones are rewritten on the next write).
    pub format_version: u32,
}

impl Layout {
    pub fn new(capacity: u32, created_ms: u64) -> Layout {
        Layout {
            capacity,
            created_ms,
            format_version: FORMAT_VERSION,
        }
    }

    /// Bytes of a slot header in this file's format.
    pub fn slot_header_len(&self) -> usize {
        match self.format_version {
            0..=2 => SLOT_HEADER_LEN_V2,
            _ => SLOT_HEADER_LEN,
        }
    }

    fn slot_len(&self) -> usize {
        self.slot_header_len() + self.capacity as usize * ENTRY_LEN
    }

    /// Whether the file has ring regions (format 3 on).
    pub fn has_rings(&self) -> bool {
        self.format_version >= 3
    }

    /// Total file length in bytes.
    pub fn file_len(&self) -> usize {
        let rings = if self.has_rings() {
            2 * self.ring_len()
        } else {
            0
        };
        self.rings_offset() + rings
    }

    /// Byte offset of the ring regions (the end of the file before format 3).
    fn rings_offset(&self) -> usize {
        self.clients_offset() + CLIENT_SLOTS * CLIENT_LEN
    }

    /// Points a ring region holds: 160 per server of the capacity, and some slack.
    pub fn ring_point_capacity(&self) -> usize {
        self.capacity as usize * 160 + RING_POINT_SLACK
    }

    /// Words reserved for a ring's index (the largest index of this capacity).
    fn ring_index_words(&self) -> usize {
        let entries = (1usize << crate::placement::index_bits(self.ring_point_capacity())) + 1;
        entries.div_ceil(2)
    }

    fn ring_len(&self) -> usize {
        RING_HEADER_LEN + self.ring_index_words() * 8 + self.ring_point_capacity() * 8
    }

    /// Where ring region `slot` (0 or 1) lies, in words; `None` before format 3.
    pub fn ring_words(&self, slot: u32) -> Option<RingWords> {
        if !self.has_rings() || slot > 1 {
            return None;
        }
        let header = (self.rings_offset() + slot as usize * self.ring_len()) / 8;
        let index = header + RING_HEADER_LEN / 8;
        Some(RingWords {
            header,
            index,
            points: index + self.ring_index_words(),
            point_capacity: self.ring_point_capacity(),
        })
    }

    /// Byte offset of the clients region.
    pub fn clients_offset(&self) -> usize {
        self.live_offset() + self.capacity as usize * LIVE_LEN
    }

    /// Word index of the first word of client record `index`.
    pub fn client_word(&self, index: usize) -> Option<usize> {
        (index < CLIENT_SLOTS).then(|| (self.clients_offset() + index * CLIENT_LEN) / 8)
    }

    /// Byte offset of the live region.
    pub fn live_offset(&self) -> usize {
        HEADER_LEN + 2 * self.slot_len()
    }

    /// Word index of the first word of live record `index`.
    pub fn live_word(&self, index: u32) -> Option<usize> {
        (index < self.capacity).then(|| (self.live_offset() + index as usize * LIVE_LEN) / 8)
    }

    /// Where the seqlock protocol finds its words in this file.
    pub fn geometry(&self) -> Geometry {
        let slot_words = self.slot_len() / 8;
        Geometry {
            committed: COMMITTED_WORD,
            seal: match self.format_version {
                0 | 1 => Seal::Plain,
                _ => Seal::Checked,
            },
            slots: [HEADER_LEN / 8, HEADER_LEN / 8 + slot_words],
            slot_words,
            slot_header_words: self.slot_header_len() / 8,
        }
    }

    /// Total words of a slot image, read from its header words (`None` if the count is absurd;
    /// the seqlock bounds it by the slot size as well).
    pub fn slot_image_words(&self, header: &[u64]) -> Option<usize> {
        let count = (*header.get(2)? >> 32) as usize;
        let map = match self.has_rings() {
            true => map_words(header_map_shape(header)?)?,
            false => 0,
        };
        count
            .checked_mul(ENTRY_WORDS)?
            .checked_add(self.slot_header_len() / 8)?
            .checked_add(map)
    }

    /// The header of a new file for `domain`.
    fn static_header(&self, domain: &str) -> StaticHeader {
        let mut header = StaticHeader::zeroed();
        header.magic = MAGIC;
        header.format_version = FORMAT_VERSION;
        header.min_reader_version = MIN_READER_VERSION;
        header.header_len = HEADER_LEN as u32;
        header.capacity = self.capacity;
        header.slot_header_len = SLOT_HEADER_LEN as u32;
        header.entry_len = ENTRY_LEN as u32;
        header.slot_len = self.slot_len() as u64;
        header.created_ms = self.created_ms;
        header.domain[..domain.len()].copy_from_slice(domain.as_bytes());
        header
    }

    /// A whole new file: header, `slot_image` (version `version`) in slot `version % 2`, and
    /// the live records of `servers` (their ids, no failures).
    pub fn file_image(
        &self,
        domain: &str,
        version: u64,
        slot_image: &[u64],
        servers: &[Server],
    ) -> Vec<u64> {
        let mut words = vec![0u64; self.file_len() / 8];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        let header = self.static_header(domain);
        bytes[..STATIC_LEN].copy_from_slice(bytemuck::bytes_of(&header));
        let crc = crc32fast::hash(&bytes[..STATIC_LEN]);
        bytes[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        words[COMMITTED_WORD] = self.geometry().seal.encode(version, false);
        let base = self.geometry().slots[(version & 1) as usize];
        words[base..base + slot_image.len()].copy_from_slice(slot_image);
        words[base] = 2; // even: complete
        for server in servers {
            if let Some(at) = self.live_word(server.live) {
                words[at] = live_owner(server.id);
            }
        }
        words
    }
}

/// Why a header was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Not a registry file, or damaged.
    Invalid(String),
    /// A newer format this build cannot read.
    Newer { found: u32, needs: u32 },
}

/// Validates the first [`HEADER_LEN`] bytes of a file of `file_len` bytes that should hold
/// `domain`, and returns its layout.
pub fn parse_header(words: &[u64], file_len: u64, domain: &str) -> Result<Layout, HeaderError> {
    let bad = |why: String| Err(HeaderError::Invalid(why));
    if words.len() * 8 < HEADER_LEN || file_len < HEADER_LEN as u64 {
        return bad(format!("file is {file_len} bytes, shorter than a header"));
    }
    let bytes: &[u8] = bytemuck::cast_slice(words);
    let header: StaticHeader = bytemuck::pod_read_unaligned(&bytes[..STATIC_LEN]);
    if header.magic != MAGIC {
        return bad("not an mcshm registry file (bad magic)".into());
    }
    let stored_crc = u32::from_le_bytes(bytes[HEADER_CRC_OFFSET..][..4].try_into().unwrap());
    if crc32fast::hash(&bytes[..STATIC_LEN]) != stored_crc {
        return bad("header checksum mismatch".into());
    }
    if header.min_reader_version > FORMAT_VERSION {
        return Err(HeaderError::Newer {
            found: header.format_version,
            needs: header.min_reader_version,
        });
    }
    let slot_header_len = match header.format_version {
        0..=2 => SLOT_HEADER_LEN_V2,
        _ => SLOT_HEADER_LEN,
    };
    if header.header_len as usize != HEADER_LEN
        || header.slot_header_len as usize != slot_header_len
        || header.entry_len as usize != ENTRY_LEN
    {
        return bad("unexpected header, slot or entry size".into());
    }
    if !(1..=MAX_CAPACITY).contains(&header.capacity) {
        return bad(format!("capacity {} out of range", header.capacity));
    }
    let layout = Layout {
        format_version: header.format_version,
        ..Layout::new(header.capacity, header.created_ms)
    };
    if header.slot_len != layout.slot_len() as u64 {
        return bad("slot length does not match capacity".into());
    }
    if file_len < layout.file_len() as u64 {
        return bad(format!(
            "file is {file_len} bytes, its header needs {} (truncated?)",
            layout.file_len()
        ));
    }
    let name_len = header.domain.iter().position(|&b| b == 0).unwrap_or(64);
    if &header.domain[..name_len] != domain.as_bytes()
        || header.domain[name_len..].iter().any(|&b| b != 0)
    {
        return bad(format!(
            "header names domain '{}', expected '{domain}'",
            String::from_utf8_lossy(&header.domain[..name_len])
        ));
    }
    Ok(layout)
}

/// Word 0 of a live record owned by server `id`, with no failures.
pub fn live_owner(id: u32) -> u64 {
    u64::from(id) << 32
}

/// Where a ring region lies in the file, in 64-bit words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingWords {
    /// The region's header: generation, then (points, bits).
    pub header: usize,
    /// The index, two u32 entries per word.
    pub index: usize,
    /// The points, one per word.
    pub points: usize,
    pub point_capacity: usize,
}

/// The shared ring a version routes with (format 3): which region, written by which version,
/// with how many points. It is in the slot header, covered by the slot's CRC, so a reader can
/// check the ring region's own header against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingRef {
    pub generation: u64,
    pub slot: u32,
    pub points: u32,
}

/// The slot image (format 3) of `table` as version `version`, routing with `ring`: sequence
/// word (0, set by the publisher), slot header with CRC, entries with theirs. `previous` is
/// the slot image of version `version - 1` (format 3) when the writer has it: the header then
/// says which entries differ from it.
pub fn encode_slot(
    version: u64,
    info: CommitInfo,
    table: &Table,
    next_id: u32,
    ring: Option<RingRef>,
    previous: Option<&[u64]>,
) -> Vec<u64> {
    let servers = &table.servers;
    let shape = table.buckets.as_deref().map_or(0, map_shape);
    let map = table.buckets.as_deref().map(encode_map).unwrap_or_default();
    let mut words = vec![0u64; SLOT_HEADER_LEN / 8 + servers.len() * ENTRY_WORDS + map.len()];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    let entries = &mut bytes[SLOT_HEADER_LEN..];
    for (server, chunk) in servers.iter().zip(entries.chunks_exact_mut(ENTRY_LEN)) {
        chunk.copy_from_slice(bytemuck::bytes_of(&encode_entry(server)));
        let crc = crc32fast::hash(chunk);
        chunk[ENTRY_CRC_OFFSET..ENTRY_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    }
    let header = SlotHeader {
        seq: 0,
        generation: version,
        crc: 0,
        count: servers.len() as u32,
        changed_ms: info.changed_ms,
        writer_pid: info.pid,
        writer_uid: info.uid,
        failover: table.policy.failover.code(),
        failure_limit: table.policy.failure_limit,
        policy_flags: table.policy.fence.code(),
        next_id,
        rejoin: table.policy.rejoin.code(),
        replicas: table.policy.replicas,
        map_shape: shape,
        warm_window_s: table.policy.warm_window_s,
        fleet_revision: table.fleet_revision,
    };
    let entries_end = words.len() - map.len();
    words[entries_end..].copy_from_slice(&map);
    let delta = previous.and_then(|old| {
        // A reader of a delta keeps its map: only when the map is the previous version's.
        let old_count = (*old.get(2)? >> 32) as usize;
        let old_end = SLOT_HEADER_LEN / 8 + old_count * ENTRY_WORDS;
        (header_map_shape(old)? == shape && old.get(old_end..)? == &map[..])
            .then(|| delta(&old[..old_end], &words[SLOT_HEADER_LEN / 8..entries_end]))?
    });
    let ring_fields = SlotRingFields {
        ring: ring.map_or(0, |r| r.generation),
        ring_slot: ring.map_or(0, |r| r.slot),
        ring_points: ring.map_or(0, |r| r.points),
        delta_base: delta.map_or(0, |_| version - 1),
        delta_first: delta.map_or(0, |d| d.0),
        delta_end: delta.map_or(0, |d| d.1),
        distribution: table.policy.distribution.codes().0
            | if table.policy.prefix.is_empty() {
                0
            } else {
                PREFIXED
            },
        key_hash: table.policy.distribution.codes().1,
        prefix: table.policy.prefix.field(),
    };
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    let head = &mut bytes[..SLOT_HEADER_LEN];
    head[..SLOT_HEADER_LEN_V2].copy_from_slice(bytemuck::bytes_of(&header));
    head[SLOT_HEADER_LEN_V2..].copy_from_slice(bytemuck::bytes_of(&ring_fields));
    let crc = slot_crc(head);
    head[16..20].copy_from_slice(&crc.to_le_bytes());
    words
}

/// The entries `first..end` of a new slot that differ from the `old` slot image (format 3):
/// every other entry below the new count is the old one at the same position.
fn delta(old: &[u64], new_entries: &[u64]) -> Option<(u32, u32)> {
    let old_entries = old.get(SLOT_HEADER_LEN / 8..)?;
    let old_n = old_entries.len() / ENTRY_WORDS;
    let new_n = new_entries.len() / ENTRY_WORDS;
    let same = |i: usize| {
        old_entries[i * ENTRY_WORDS..][..ENTRY_WORDS]
            == new_entries[i * ENTRY_WORDS..][..ENTRY_WORDS]
    };
    let common = old_n.min(new_n);
    let first = (0..common).find(|&i| !same(i)).unwrap_or(common);
    let end = if new_n > old_n {
        new_n
    } else {
        (first..common)
            .rev()
            .find(|&i| !same(i))
            .map_or(first, |i| i + 1)
    };
    Some((first as u32, end as u32))
}

/// `map_shape` bits (format 4): the map is there; forward rows follow the rows.
const MAP_PRESENT: u16 = 0x8000;
const MAP_FORWARD: u16 = 0x0100;
/// Bytes of a bucket map's header (its CRC, and 4 reserved).
const MAP_HEADER_LEN: usize = 8;

/// The `map_shape` field (slot-header bytes 50..52) of a slot's header words.
fn header_map_shape(header: &[u64]) -> Option<u16> {
    Some((*header.get(6)? >> 16) as u16)
}

/// The `map_shape` field (bytes 50..52) of a slot's bytes, at least a slot header long.
fn slot_map_shape(bytes: &[u8]) -> u16 {
    u16::from_le_bytes([bytes[50], bytes[51]])
}

/// The `map_shape` of a slot holding `map`.
fn map_shape(map: &BucketMap) -> u16 {
    let shape = map.shape();
    MAP_PRESENT
        | shape.buckets.trailing_zeros() as u16
        | (shape.width() as u16) << 5
        | if map.forward_cells().is_some() {
            MAP_FORWARD
        } else {
            0
        }
}

/// The map's shape and whether forward rows follow, from a `map_shape` (`None`: no map);
/// `Err` for a shape no writer makes.
fn decode_shape(code: u16) -> Result<Option<(Shape, bool)>, String> {
    if code == 0 {
        return Ok(None);
    }
    let (log2, width) = (code & 0x1f, (code >> 5) & 0x7);
    if code & MAP_PRESENT == 0 || code & 0x7e00 != 0 || log2 > 16 || width == 0 {
        return Err(format!("bucket map shape {code:#06x}"));
    }
    let shape = Shape::new(1 << log2, width as usize - 1)?;
    Ok(Some((shape, code & MAP_FORWARD != 0)))
}

/// Words of the bucket map a `map_shape` announces (0 for none; `None` for a shape no writer
/// makes).
fn map_words(code: u16) -> Option<usize> {
    let Some((shape, forward)) = decode_shape(code).ok()? else {
        return Some(0);
    };
    let tables = 1 + usize::from(forward);
    Some((MAP_HEADER_LEN + shape.cells() * 2 * tables).div_ceil(8))
}

/// Entries' worth of slot space the bucket map of `table` takes (a writer grows a file whose
/// slot cannot hold the servers and the map).
pub fn map_entries(table: &Table) -> usize {
    let words = map_words(table.buckets.as_deref().map_or(0, map_shape)).unwrap_or(0);
    (words * 8).div_ceil(ENTRY_LEN)
}

/// The bucket map section: CRC, reserved, rows, forward rows, padding.
fn encode_map(map: &BucketMap) -> Vec<u64> {
    let mut words = vec![0u64; map_words(map_shape(map)).unwrap_or(0)];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    let cells = map.cells().iter().chain(map.forward_cells().unwrap_or(&[]));
    for (chunk, cell) in bytes[MAP_HEADER_LEN..].chunks_exact_mut(2).zip(cells) {
        chunk.copy_from_slice(&cell.to_le_bytes());
    }
    let crc = crc32fast::hash(&bytes[4..]);
    bytes[..4].copy_from_slice(&crc.to_le_bytes());
    words
}

/// A bucket map section (as [`encode_map`] wrote it for `shape`), checked: its CRC, and every
/// cell against the slot's `servers`.
fn decode_map(shape: u16, bytes: &[u8], servers: usize) -> Result<BucketMap, String> {
    let (sizes, forward) = decode_shape(shape)?.ok_or("no bucket map")?;
    if bytes.len() < MAP_HEADER_LEN
        || u32::from_le_bytes(bytes[..4].try_into().unwrap()) != crc32fast::hash(&bytes[4..])
    {
        return Err("fails its checksum".into());
    }
    let mut cells = bytes[MAP_HEADER_LEN..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]));
    let rows: Vec<u16> = cells.by_ref().take(sizes.cells()).collect();
    let forward = forward.then(|| cells.by_ref().take(sizes.cells()).collect());
    BucketMap::new(sizes, rows, forward, servers)
}

/// Byte offset of an entry's CRC (format 3).
const ENTRY_CRC_OFFSET: usize = 48;

/// CRC32 of slot bytes 8.. with the crc field (bytes 16..20) taken as zero.
fn slot_crc(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[8..16]);
    hasher.update(&[0; 4]);
    hasher.update(&bytes[20..]);
    hasher.finalize()
}

/// Whether a format-3 entry matches its CRC.
fn entry_crc_ok(chunk: &[u8]) -> bool {
    let stored = u32::from_le_bytes(chunk[ENTRY_CRC_OFFSET..][..4].try_into().unwrap());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&chunk[..ENTRY_CRC_OFFSET]);
    hasher.update(&[0; 4]);
    hasher.update(&chunk[ENTRY_CRC_OFFSET + 4..]);
    hasher.finalize() == stored
}

/// Validates a consistent copy of a slot (as [`Geometry::read`] returns it) of a file laid out
/// as `layout` and decodes it: the version's table, and where its shared ring lies (format 3;
/// `None`: readers build the ring).
pub fn decode_slot(
    image: &[u64],
    domain: &str,
    layout: &Layout,
) -> Result<(Snapshot, Option<RingRef>), String> {
    let bytes: &[u8] = bytemuck::cast_slice(image);
    let header_len = layout.slot_header_len();
    if bytes.len() < header_len {
        return Err("slot shorter than its header".into());
    }
    let expected_len = layout
        .slot_image_words(image)
        .ok_or("slot count overflows")?
        * 8;
    if expected_len != bytes.len() {
        return Err("slot length does not match its count".into());
    }
    let checked = if layout.has_rings() {
        &bytes[..header_len]
    } else {
        bytes
    };
    let (mut snapshot, ring, _) = decode_header(checked, domain, layout)?;
    let shape = match layout.has_rings() {
        true => slot_map_shape(bytes),
        false => 0,
    };
    let entries_end = bytes.len() - map_words(shape).ok_or("a bucket map of no shape")? * 8;
    snapshot.servers =
        decode_entries(&bytes[header_len..entries_end], 0, snapshot.version, layout)?;
    if shape != 0 {
        let map = decode_map(shape, &bytes[entries_end..], snapshot.servers.len())
            .map_err(|why| format!("bucket map of version {}: {why}", snapshot.version))?;
        snapshot.buckets = Some(std::sync::Arc::new(map));
    }
    if snapshot.policy.distribution.has_buckets() != snapshot.buckets.is_some() {
        return Err(format!(
            "version {}: a bucket map goes with the vbucket distribution, and only with it",
            snapshot.version
        ));
    }
    if let Some(server) = first_duplicate(&snapshot.servers) {
        return Err(format!("server {} listed twice", server.address));
    }
    check_ids(&snapshot.servers, snapshot.next_id)?;
    let mut lives = HashSet::with_capacity(snapshot.servers.len());
    if let Some(s) = snapshot.servers.iter().find(|s| !lives.insert(s.live)) {
        return Err(format!("server {} shares its live record", s.address));
    }
    Ok((snapshot, ring))
}

/// Which entries of a format-3 slot differ from an older version's (read from the first
/// `SLOT_HEADER_LEN` bytes of a slot copy, before its CRC is checked): the version they
/// repeat and the range that differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotDelta {
    pub base: u64,
    pub first: usize,
    pub end: usize,
    pub count: usize,
}

/// The delta a format-3 slot header announces, if any (unchecked: [`apply_delta`] checks it).
pub fn slot_delta(header: &[u64]) -> Option<SlotDelta> {
    let range = *header.get(88 / 8)?;
    SlotDelta::new(
        *header.get(80 / 8)?,
        range as u32,
        (range >> 32) as u32,
        (*header.get(2)? >> 32) as u32,
    )
}

impl SlotDelta {
    /// A delta as a slot header states it, if it states one that fits the slot's count.
    fn new(base: u64, first: u32, end: u32, count: u32) -> Option<SlotDelta> {
        (base != 0 && first <= end && end <= count).then_some(SlotDelta {
            base,
            first: first as usize,
            end: end as usize,
            count: count as usize,
        })
    }
}

/// Makes `snapshot` (version `delta.base`) the version whose slot header is `header` (its
/// first [`SLOT_HEADER_LEN`] bytes, as words) and whose entries `delta.first..delta.end` are
/// `entries`: checks the header's CRC and each entry's, and the ids of the new entries. The
/// other entries are the snapshot's own (byte for byte what the writer kept). On error the
/// snapshot is unchanged. Returns where the new version's shared ring lies.
pub fn apply_delta(
    snapshot: &mut Snapshot,
    header: &[u64],
    delta: SlotDelta,
    entries: &[u64],
    layout: &Layout,
) -> Result<Option<RingRef>, String> {
    let bytes: &[u8] = bytemuck::cast_slice(header);
    let (head, ring, announced) = decode_header(bytes, &snapshot.domain, layout)?;
    if announced != Some(delta) || delta.base != snapshot.version {
        return Err("slot delta does not match its header".into());
    }
    if entries.len() != (delta.end - delta.first) * ENTRY_WORDS
        || (delta.end < delta.count && snapshot.servers.len() < delta.count)
        || snapshot.servers.len() < delta.first
    {
        return Err("slot delta does not fit the table it changes".into());
    }
    let fresh = decode_entries(
        bytemuck::cast_slice(entries),
        delta.first,
        head.version,
        layout,
    )?;
    check_ids(&fresh, head.next_id)?;
    // The map is the cached version's (the writer announces a delta only then): its shape,
    // and that it still fits the new list and distribution, are checked before anything is
    // changed.
    if snapshot.buckets.as_deref().map_or(0, map_shape) != slot_map_shape(bytes)
        || head.policy.distribution.has_buckets() != snapshot.buckets.is_some()
        // Checked against the cached list already: only a shorter list can leave a cell
        // naming no server.
        || snapshot
            .buckets
            .as_ref()
            .is_some_and(|map| {
                delta.count < snapshot.servers.len() && map.check(delta.count).is_err()
            })
    {
        return Err("slot delta does not keep the bucket map".into());
    }
    let mut servers = std::mem::take(&mut snapshot.servers);
    // In place: the entries outside first..end keep their positions.
    servers.truncate(delta.count);
    for (position, server) in (delta.first..).zip(fresh) {
        match servers.get_mut(position) {
            Some(slot) => *slot = server,
            None => servers.push(server),
        }
    }
    let buckets = snapshot.buckets.take();
    *snapshot = Snapshot {
        servers,
        buckets,
        ..head
    };
    Ok(ring)
}

/// The snapshot fields of a slot header (no servers), its shared ring and the delta it
/// announces. `bytes` is the header (format 3: its CRC is checked) or, before format 3, the
/// whole slot.
fn decode_header(
    bytes: &[u8],
    domain: &str,
    layout: &Layout,
) -> Result<(Snapshot, Option<RingRef>, Option<SlotDelta>), String> {
    let header: SlotHeader = bytemuck::pod_read_unaligned(&bytes[..SLOT_HEADER_LEN_V2]);
    if slot_crc(bytes) != header.crc {
        return Err(format!(
            "slot of version {} fails its checksum",
            header.generation
        ));
    }
    let (shared_ring, delta, distribution, prefix) = if layout.has_rings() {
        let fields: SlotRingFields =
            bytemuck::pod_read_unaligned(&bytes[SLOT_HEADER_LEN_V2..SLOT_HEADER_LEN]);
        let code = fields.distribution & !PREFIXED;
        let distribution = Distribution::from_codes(code, fields.key_hash).ok_or_else(|| {
            format!(
                "distribution code {}/{} (a newer mcshm's? upgrade mcshm)",
                fields.distribution, fields.key_hash
            )
        })?;
        let prefix = KeyPrefix::from_field(&fields.prefix)
            .filter(|p| p.is_empty() == (fields.distribution & PREFIXED == 0))
            .ok_or("a key prefix that is not one")?;
        let ring = (fields.ring != 0).then_some(RingRef {
            generation: fields.ring,
            slot: fields.ring_slot,
            points: fields.ring_points,
        });
        let delta = SlotDelta::new(
            fields.delta_base,
            fields.delta_first,
            fields.delta_end,
            header.count,
        );
        (ring, delta, distribution, prefix)
    } else {
        (None, None, Distribution::Ketama, KeyPrefix::NONE)
    };
    let failover = Failover::from_code(header.failover)
        .ok_or_else(|| format!("failover code {}", header.failover))?;
    let rejoin =
        Rejoin::from_code(header.rejoin).ok_or_else(|| format!("rejoin code {}", header.rejoin))?;
    // Bits above the fence's are for later policies: ignored, as reserved bytes are.
    let fence = Fence::from_code(header.policy_flags & 0b11)
        .ok_or_else(|| format!("fence code {}", header.policy_flags & 0b11))?;
    if header.failure_limit == 0 {
        return Err("failure limit 0".into());
    }
    let snapshot = Snapshot {
        domain: domain.to_string(),
        version: header.generation,
        changed_ms: header.changed_ms,
        writer_pid: header.writer_pid,
        writer_uid: header.writer_uid,
        servers: Vec::new(),
        policy: Policy {
            failover,
            failure_limit: header.failure_limit,
            rejoin,
            replicas: header.replicas.max(1),
            warm_window_s: if header.warm_window_s == 0 {
                DEFAULT_WARM_WINDOW_S
            } else {
                header.warm_window_s
            },
            distribution,
            prefix,
            fence,
        },
        next_id: header.next_id,
        fleet_revision: header.fleet_revision,
        buckets: None,
    };
    Ok((snapshot, shared_ring, delta))
}

/// Decodes entries (each checked against its CRC from format 3 on); `first` is the position
/// of the first, for messages.
fn decode_entries(
    bytes: &[u8],
    first: usize,
    version: u64,
    layout: &Layout,
) -> Result<Vec<Server>, String> {
    bytes
        .chunks_exact(ENTRY_LEN)
        .enumerate()
        .map(|(i, chunk)| {
            let why =
                |why: String| format!("server #{} of version {version}: {why}", first + i + 1);
            if layout.has_rings() && !entry_crc_ok(chunk) {
                return Err(why("fails its checksum".into()));
            }
            decode_entry(&bytemuck::pod_read_unaligned(chunk)).map_err(why)
        })
        .collect()
}

fn check_ids(servers: &[Server], next_id: u32) -> Result<(), String> {
    match servers.iter().find(|s| s.id == 0 || s.id >= next_id) {
        Some(s) => Err(format!(
            "server {} has id {} (next id {next_id})",
            s.address, s.id
        )),
        None => Ok(()),
    }
}

/// Whether `server` fits an entry: every variable field within its bytes, every number within
/// what readers accept (what [`decode_entry`] refuses must never be written). The writer checks
/// each table with it before encoding, so no value, whoever made it, can make
/// [`encode_entry`] slice past a field.
pub(crate) fn check_entry(server: &Server) -> Result<(), String> {
    let host = server.address.host();
    if host.is_empty() || host.len() >= ADDR_FIELD {
        return Err(format!(
            "address of {} bytes (the table holds 1 to {})",
            host.len(),
            ADDR_FIELD - 1
        ));
    }
    if server.reason.len() > MAX_REASON_LEN {
        return Err(format!(
            "reason of {} bytes (the table holds {MAX_REASON_LEN})",
            server.reason.len()
        ));
    }
    if server.weight == 0 {
        return Err("weight 0 (weights start at 1)".into());
    }
    if server.retry_interval < -1 {
        return Err(format!(
            "retry interval {} (-1 or more)",
            server.retry_interval
        ));
    }
    Ok(())
}

fn encode_entry(server: &Server) -> Entry {
    let mut entry = Entry::zeroed();
    let host = server.address.host();
    entry.addr_len = host.len() as u16;
    entry.address[..host.len()].copy_from_slice(host.as_bytes());
    entry.port = server.address.port().unwrap_or(0);
    entry.kind = server.address.kind_code();
    entry.weight = server.weight;
    entry.state = server.state.code();
    entry.retry_interval = server.retry_interval;
    entry.since_ms = server.since_ms;
    entry.changed_by_pid = server.changed_by_pid;
    entry.changed_by_uid = server.changed_by_uid;
    entry.id = server.id;
    entry.live = server.live;
    entry.warm_until_ms = server.warm_until_ms;
    entry.flags =
        if server.held { ENTRY_HELD } else { 0 } | if server.sweeping { ENTRY_SWEEPING } else { 0 };
    entry.strays_since = server.strays_since.to_le_bytes();
    entry.reason_len = server.reason.len() as u16;
    entry.reason[..server.reason.len()].copy_from_slice(server.reason.as_bytes());
    entry
}

fn decode_entry(entry: &Entry) -> Result<Server, String> {
    let addr_len = entry.addr_len as usize;
    if addr_len == 0 || addr_len >= ADDR_FIELD {
        return Err(format!("address length {addr_len} out of range"));
    }
    let text =
        std::str::from_utf8(&entry.address[..addr_len]).map_err(|_| "address is not UTF-8")?;
    let address = Address::from_stored(entry.kind, text, entry.port)?;
    let reason_len = entry.reason_len as usize;
    if reason_len > MAX_REASON_LEN {
        return Err(format!("reason length {reason_len} out of range"));
    }
    let reason =
        std::str::from_utf8(&entry.reason[..reason_len]).map_err(|_| "reason is not UTF-8")?;
    if entry.weight == 0 {
        return Err("weight 0".into());
    }
    if entry.retry_interval < -1 {
        return Err(format!("retry interval {}", entry.retry_interval));
    }
    let state =
        State::from_code(entry.state).ok_or_else(|| format!("state code {}", entry.state))?;
    Ok(Server {
        address,
        weight: entry.weight,
        state,
        retry_interval: entry.retry_interval,
        since_ms: entry.since_ms,
        changed_by_pid: entry.changed_by_pid,
        changed_by_uid: entry.changed_by_uid,
        reason: reason.to_string(),
        id: entry.id,
        live: entry.live,
        warm_until_ms: entry.warm_until_ms,
        // Unknown flag bits are a newer writer's: ignored, as the reserved bytes are.
        held: entry.flags & ENTRY_HELD != 0,
        sweeping: entry.flags & ENTRY_SWEEPING != 0,
        strays_since: u64::from_le_bytes(entry.strays_since),
    })
}

#[cfg(test)]
mod prop_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let servers = ["a:1", "10.0.0.2", "[::1]:3", "/tmp/mc.sock"]
            .iter()
            .enumerate()
            .map(|(i, a)| Server {
                reason: "why not".into(),
                id: i as u32 + 1,
                live: i as u32,
                ..Server::new(Address::parse(a).unwrap())
            })
            .collect();
        Table {
            servers,
            policy: Policy {
                failover: Failover::Rehash,
                failure_limit: 3,
                ..Policy::default()
            },
            fleet_revision: 77,
            buckets: None,
        }
    }

    const INFO: CommitInfo = CommitInfo {
        changed_ms: 5,
        pid: 6,
        uid: 7,
    };

    #[test]
    fn an_entry_out_of_the_formats_limits_is_refused_before_encoding() {
        let server = table().servers[0].clone();
        assert_eq!(check_entry(&server), Ok(()));
        let long = Server {
            reason: "r".repeat(MAX_REASON_LEN + 1),
            ..server.clone()
        };
        assert!(
            check_entry(&long)
                .unwrap_err()
                .contains("reason of 193 bytes")
        );
        let fits = Server {
            reason: "r".repeat(MAX_REASON_LEN),
            ..server.clone()
        };
        assert_eq!(check_entry(&fits), Ok(()), "exactly the field");
        let weightless = Server {
            weight: 0,
            ..server.clone()
        };
        assert!(check_entry(&weightless).unwrap_err().contains("weight 0"));
        let retry = Server {
            retry_interval: -2,
            ..server
        };
        assert!(
            check_entry(&retry)
                .unwrap_err()
                .contains("retry interval -2")
        );
    }

    #[test]
    fn slot_round_trips() {
        let image = encode_slot(9, INFO, &table(), 5, None, None);
        let snap = decode_slot(&image, "d", &Layout::new(4, 0)).unwrap().0;
        assert_eq!(snap.version, 9);
        assert_eq!(snap.table(), table());
        assert_eq!(snap.next_id, 5);
        assert_eq!(
            (snap.changed_ms, snap.writer_pid, snap.writer_uid),
            (5, 6, 7)
        );
    }

    /// A version read as a change of the one before it equals the version read whole, for
    /// every kind of edit; a damaged changed entry or header is refused and changes nothing.
    /// A prefix is stored at 98 and flagged in the distribution byte; a reader that knew no
    /// prefixes sees an unknown distribution (it refuses the version), and a prefix without its
    /// flag, or the flag without a prefix, is damage.
    #[test]
    fn a_prefix_round_trips_and_is_flagged() {
        let mut t = table();
        t.policy.prefix = crate::prefix::KeyPrefix::parse("ns:").unwrap();
        let image = encode_slot(9, INFO, &t, 5, None, None);
        let layout = Layout::new(4, 0);
        assert_eq!(
            decode_slot(&image, "d", &layout).unwrap().0.policy,
            t.policy
        );
        let bytes: Vec<u8> = bytemuck::cast_slice(&image).to_vec();
        assert_eq!(bytes[96], PREFIXED);
        assert_eq!(&bytes[98..101], b"ns:");
        assert_eq!(Distribution::from_codes(bytes[96], bytes[97]), None);
        for (at, value) in [(96, 0), (98, 0)] {
            let mut damaged = bytes.clone();
            damaged[at] = value;
            let crc = slot_crc(&damaged[..SLOT_HEADER_LEN]);
            damaged[16..20].copy_from_slice(&crc.to_le_bytes());
            let words: Vec<u64> = damaged
                .chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
                .collect();
            assert!(decode_slot(&words, "d", &layout).is_err(), "byte {at}");
        }
    }

    /// The fence policy sits in byte 42 (0 auto, as every older file reads); a code no mcshm
    /// writes is refused, and the bits above it are ignored (for later policies).
    #[test]
    fn the_fence_policy_round_trips_in_the_policy_flags() {
        let layout = Layout::new(4, 0);
        for fence in [Fence::Auto, Fence::On, Fence::Off] {
            let mut t = table();
            t.policy.fence = fence;
            let image = encode_slot(9, INFO, &t, 5, None, None);
            assert_eq!(
                decode_slot(&image, "d", &layout).unwrap().0.policy,
                t.policy
            );
            let bytes: Vec<u8> = bytemuck::cast_slice(&image).to_vec();
            assert_eq!(u16::from_le_bytes([bytes[42], bytes[43]]), fence.code());
        }
        let image = encode_slot(9, INFO, &table(), 5, None, None);
        let bytes: Vec<u8> = bytemuck::cast_slice(&image).to_vec();
        for (flags, expect) in [
            (3u16, None),
            (1 | 0x100, Some(Fence::On)),
            (0x8000, Some(Fence::Auto)),
        ] {
            let mut changed = bytes.clone();
            changed[42..44].copy_from_slice(&flags.to_le_bytes());
            let crc = slot_crc(&changed[..SLOT_HEADER_LEN]);
            changed[16..20].copy_from_slice(&crc.to_le_bytes());
            let words: Vec<u64> = changed
                .chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
                .collect();
            let decoded = decode_slot(&words, "d", &layout)
                .ok()
                .map(|d| d.0.policy.fence);
            assert_eq!(decoded, expect, "flags {flags:#x}");
        }
    }

    #[test]
    fn a_delta_applied_to_the_previous_version_gives_the_version_read_whole() {
        let layout = Layout::new(16, 0);
        let base = table();
        let mut edits: Vec<Table> = Vec::new();
        let mut t = base.clone();
        t.servers[1].reason = "changed".into();
        edits.push(t);
        let mut t = base.clone();
        t.servers.push(Server {
            id: 9,
            live: 9,
            ..Server::new(Address::parse("e:5").unwrap())
        });
        edits.push(t);
        let mut t = base.clone();
        t.servers.pop();
        edits.push(t);
        let mut t = base.clone();
        t.servers.remove(1);
        edits.push(t);
        let mut t = base.clone();
        t.policy.replicas = 2;
        edits.push(t);
        let old_image = encode_slot(4, INFO, &base, 10, None, None);
        let old = decode_slot(&old_image, "d", &layout).unwrap().0;
        for (n, edit) in edits.iter().enumerate() {
            let image = encode_slot(5, INFO, edit, 10, None, Some(&old_image));
            let whole = decode_slot(&image, "d", &layout).unwrap().0;
            let header = &image[..SLOT_HEADER_LEN / 8];
            let delta = slot_delta(header).expect("a delta");
            assert_eq!(delta.base, 4);
            let start = SLOT_HEADER_LEN / 8 + delta.first * ENTRY_WORDS;
            let entries = &image[start..start + (delta.end - delta.first) * ENTRY_WORDS];
            let mut changed = old.clone();
            apply_delta(&mut changed, header, delta, entries, &layout).unwrap();
            assert_eq!(changed, whole, "edit {n}");
            for flip in (0..entries.len() * 8).step_by(61) {
                let mut damaged = entries.to_vec();
                bytemuck::cast_slice_mut::<u64, u8>(&mut damaged)[flip] ^= 4;
                let mut copy = old.clone();
                assert!(apply_delta(&mut copy, header, delta, &damaged, &layout).is_err());
                assert_eq!(copy, old, "edit {n}: a refused delta changed nothing");
            }
            let mut damaged = header.to_vec();
            damaged[7] ^= 1 << 9; // fleet_revision, covered by the header CRC
            let mut copy = old.clone();
            assert!(apply_delta(&mut copy, &damaged, delta, entries, &layout).is_err());
            // A delta against another version is not applied.
            let mut other = old.clone();
            other.version = 3;
            assert!(apply_delta(&mut other, header, delta, entries, &layout).is_err());
        }
    }

    #[test]
    fn every_flipped_bit_of_a_slot_is_caught() {
        let image = encode_slot(3, INFO, &table(), 5, None, None);
        let bytes: Vec<u8> = bytemuck::cast_slice(&image).to_vec();
        for i in 8..bytes.len() {
            let mut copy = bytes.clone();
            copy[i] ^= 0x10;
            let words: Vec<u64> = copy
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert!(
                decode_slot(&words, "d", &Layout::new(4, 0)).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn header_round_trips_and_refuses_damage() {
        let layout = Layout::new(4, 1);
        let file = layout.file_image(
            "dom",
            0,
            &encode_slot(0, INFO, &Table::default(), 1, None, None),
            &[],
        );
        let len = (file.len() * 8) as u64;
        assert_eq!(parse_header(&file, len, "dom"), Ok(layout));
        assert!(parse_header(&file, len, "other").is_err());
        assert!(parse_header(&file, len - 8, "dom").is_err());
        for byte in 0..HEADER_CRC_OFFSET + 4 {
            let mut copy = file.clone();
            bytemuck::cast_slice_mut::<u64, u8>(&mut copy)[byte] ^= 1;
            assert!(parse_header(&copy, len, "dom").is_err(), "byte {byte}");
        }
    }
}
