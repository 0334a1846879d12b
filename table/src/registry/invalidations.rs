//! The invalidation log: per server, the keys of the writes it should have received and did not
//! (it was down), so that it can be brought back by deleting exactly those keys instead of
//! `flush_all` (issue 31). This module is the storage only: a file beside the domain's table,
//! `DIR/DOMAIN.ilog`, mapped shared by every process on the host, that any of them appends to
//! without a lock and that whoever brings a server back reads and clears. It is created with
//! the mode and group of the domain's table: those who may write the table may append.
//!
//! # Guarantees
//!
//! - **Never misread.** A key read back is a key some process appended to that server's log,
//!   byte for byte. A record is committed by its first word, written last (Release), which
//!   names the section's epoch when the record was reserved (every claim of a section starts a
//!   new one) and carries a CRC32 of the server's id, that epoch, the key's length and its
//!   words. A record that does not check out, whether not committed after 200 ms (a process
//!   killed, or stopped, between reserving its place and committing it), damaged, or left
//!   from an earlier owner or epoch of the section, makes the whole log read as *overflowed*:
//!   never skipped, never taken for a key. (As for the table's entries, damage is caught by
//!   the CRC32: one damaged record in 2³² would pass.)
//! - **Overflowed means flush.** A log that overflowed (its section full, a key it cannot hold,
//!   a torn record, or any append that could not be recorded at all) no longer says what the
//!   server missed: whoever brings the server back must flush it. Once a section has
//!   overflowed, appends to it record nothing more.
//! - **Bounded.** A fixed number of sections of a fixed size, chosen when the file is created
//!   ([`LogCapacity`]); the file never grows.
//! - **Nothing is lost by clearing.** [`Invalidations::clear`] releases a log only if nothing was
//!   appended since it was read (one compare-and-swap on the section's tail); otherwise the
//!   caller reads again and replays the new keys.
//!
//! # Appending
//!
//! A server's first missed key claims a free section for it (a compare-and-swap of the
//! section's owner word from 0 to the server's id; the claims, and the releases by `clear` and
//! `forget`, take turns on a lock word in the header so that a server never gets two
//! sections: held for a few loads and stores, and taken over when its holder is dead). Every
//! append then reserves its record's words with a compare-and-swap on the section's tail word
//! (which holds the words used, the records reserved, the overflow and closed flags and the
//! epoch together, so that one CAS reserves, checks the bound, and fails when the section was
//! cleared or changed hands meanwhile), writes the key's words, then the commit word. Past
//! the claim, no step of an append waits for another process.
//!
//! When every section is taken, the append sets the header's `unlogged` word: some server
//! missed a key that no log holds, and it is not known which, so every log reads as
//! overflowed until [`Invalidations::reset_unlogged`] (to be called when no server of the
//! domain is down, each having been flushed since) and no section is claimed meanwhile.
//!
//! # Capacity and its cost
//!
//! A record is one word plus the key in words: 8 + 8 × ⌈len / 8⌉ bytes (16 bytes for a key of
//! up to 8 bytes, 40 for 32 bytes, 264 for 250). The default, 32 sections of 8 MiB, holds per
//! server 524 288 keys of up to 8 bytes, 209 715 of 32 bytes, or 31 775 of 250 bytes, for up
//! to 32 servers missing writes at once. One fixed size per section rather than a shared budget
//! keeps an append to one CAS and makes a cleared section reusable at once; the file is sparse
//! (tmpfs allocates a page when it is first written), so a section costs memory only as its
//! server misses keys: 32 bytes of header per server, plus its records, up to `section_bytes`.
//! Pages once written stay allocated (a later log reuses them) until the file is removed. Every
//! process maps the whole file (256 MiB of address space by default, not of memory).
//!
//! # Layout (format 1)
//!
//! All integers are little-endian; every access to the mapping is a bounds-checked atomic
//! access of one 64-bit word (see `shm`); everything read from it is treated as hostile.
//!
//! ```text
//! Header (256 bytes)
//! offset size field
//!      0    8 magic               89 4D 43 49 4C 4F 47 0A ("\x89MCILOG\n")
//!      8    4 format_version      format of the writer that made the file (1)
//!     12    4 min_reader_version  oldest reader format that may use it (1)
//!     16    4 sections            sections in the file (1..=256)
//!     20    4 section_record_len  32
//!     24    8 section_bytes       bytes of each section's data (a multiple of 4096,
//!                                 4096..=32 MiB)
//!     32    8 data_offset         where section 0's data starts: 256 + 32 * sections,
//!                                 rounded up to a multiple of 4096
//!     40    8 created_ms          creation time, ms since the Unix epoch
//!     48   64 domain              domain name, NUL-padded
//!    112    4 header_crc          CRC32 (IEEE) of bytes 0..112
//!    116    4 reserved            zero
//!    120    8 claim_lock          process claiming or releasing a section now (process start
//!                                 time in clock ticks << 32 | pid), 0 = none
//!    128    8 unlogged_ms         0, or when an append first found no section to claim: every
//!                                 log reads as overflowed until reset
//!    136  120 reserved            zero
//!
//! Section record k (at 256 + 32 * k)
//!      0    8 owner               id of the server whose log this is (ids start at 1);
//!                                 0 = free
//!      8    8 tail                bits 0..23: words of data reserved; bits 23..46: records
//!                                 reserved; bit 46: overflowed; bit 47: closed (cleared or
//!                                 forgotten: being released); bits 48..64: epoch, + 1 at
//!                                 every claim
//!     16    8 claimed_ms          when the server claimed it (its first missed key)
//!     24    8 reserved            zero
//!
//! Section k's data (at data_offset + k * section_bytes): records, one after the other
//!      0    8 commit              bits 0..32: CRC32 (IEEE) of the server's id (4 bytes), the
//!                                 epoch (2 bytes), the key's length (2 bytes) and the key's
//!                                 words; bits 32..48: key length (1..=250); bits 48..64: the
//!                                 section's epoch when it was reserved. Written last, with
//!                                 Release ordering
//!      8    * key                 the key's bytes, zero-padded to a multiple of 8
//!
//! File length: data_offset + sections * section_bytes.
//! ```

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::files::{FileOwnership, create_beside, open_checked, open_trusted};
use crate::clock::now_ms;
use crate::domain::{Domain, MAX_DOMAIN_LEN};
use crate::error::{Error, Result};
use crate::key::MAX_KEY_LEN;
use crate::processes::ProcessId;
use crate::shm::{SharedMap, Words};

/// The format this build writes and reads.
const FORMAT_VERSION: u32 = 1;
/// How long a read waits for a reserved record to be committed before it calls it torn (an
/// append takes well under a microsecond, unless its process is descheduled or killed
/// in the middle).
const COMMIT_WAIT: Duration = Duration::from_millis(200);
/// How long a claim (or a release) waits for the claim lock held by a live process.
const CLAIM_WAIT: Duration = Duration::from_millis(100);

const EXTENSION: &str = "ilog";
const MAGIC: [u8; 8] = *b"\x89MCILOG\n";
const PAGE: u64 = 4096;
const HEADER_LEN: usize = 256;
const HEADER_CRC_OFFSET: usize = 112;
const SECTION_RECORD_LEN: usize = 32;
const CREATED_WORD: usize = 40 / 8;
const CLAIM_LOCK_WORD: usize = 120 / 8;
const UNLOGGED_WORD: usize = 128 / 8;
/// Words of the longest record: the commit word and 250 bytes of key.
const MAX_RECORD_WORDS: usize = 1 + MAX_KEY_LEN.div_ceil(8);
/// Compare-and-swap attempts on a tail before an append gives up (each failure is another
/// process's progress: this is a bound for hostile memory, never reached otherwise).
const CAS_ATTEMPTS: u32 = 1 << 20;
/// Times an append looks for its server's section again after it changed hands or was
/// cleared under it.
const FIND_ATTEMPTS: u32 = 16;

/// How many sections a domain's log has and how large each is, fixed when the file is
/// created (a file that exists keeps its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogCapacity {
    /// Servers that can have a log at once (1..=256).
    pub sections: u32,
    /// Bytes of records per server: a multiple of 4096, 4096..=32 MiB.
    pub section_bytes: u64,
}

impl Default for LogCapacity {
    /// 32 sections of 8 MiB (see the module's documentation for what they hold).
    fn default() -> LogCapacity {
        LogCapacity {
            sections: 32,
            section_bytes: 8 << 20,
        }
    }
}

impl LogCapacity {
    /// Most sections a log may have.
    pub const MAX_SECTIONS: u32 = 256;
    /// Smallest section (one page).
    pub const MIN_SECTION_BYTES: u64 = PAGE;
    /// Largest section.
    pub const MAX_SECTION_BYTES: u64 = 32 << 20;

    /// Refuses a capacity the format cannot hold.
    pub fn check(self) -> Result<LogCapacity> {
        if !(1..=LogCapacity::MAX_SECTIONS).contains(&self.sections) {
            return Err(Error::invalid(
                "invalidation log sections",
                &self.sections.to_string(),
                format!("between 1 and {}", LogCapacity::MAX_SECTIONS),
            ));
        }
        if !(LogCapacity::MIN_SECTION_BYTES..=LogCapacity::MAX_SECTION_BYTES)
            .contains(&self.section_bytes)
            || !self.section_bytes.is_multiple_of(PAGE)
        {
            return Err(Error::invalid(
                "invalidation log section size",
                &self.section_bytes.to_string(),
                format!(
                    "a multiple of {PAGE} bytes between {} and {}",
                    LogCapacity::MIN_SECTION_BYTES,
                    LogCapacity::MAX_SECTION_BYTES
                ),
            ));
        }
        Ok(self)
    }

    /// Keys of `key_len` bytes one section holds.
    pub fn keys_per_section(self, key_len: usize) -> u64 {
        self.section_bytes / (record_words(key_len.max(1)) as u64 * 8)
    }

    fn data_offset(self) -> u64 {
        (HEADER_LEN as u64 + SECTION_RECORD_LEN as u64 * u64::from(self.sections))
            .next_multiple_of(PAGE)
    }

    fn file_len(self) -> u64 {
        self.data_offset() + u64::from(self.sections) * self.section_bytes
    }
}

/// What became of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// The key is in the server's log.
    Logged,
    /// The server's log is overflowed (now or already): it no longer says what the server
    /// missed, and the server must be flushed when it comes back.
    Overflowed,
    /// Nothing could be recorded: this handle may not write the log (the file is read-only to
    /// this user) or its mapping failed, or the server id is 0. The log knows nothing of this
    /// miss: a caller that relies on the log must not acknowledge the write as replayable.
    Unavailable,
}

/// A server's log as [`Invalidations::read`] found it, and the mark that
/// [`Invalidations::clear`] compares with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    server: u32,
    /// The keys the server missed, each once, in the order they were first logged; `None`
    /// when the log overflowed (or cannot be trusted): the server must be flushed instead.
    pub keys: Option<Vec<Vec<u8>>>,
    /// The section and the tail word read, if the server had a section.
    mark: Option<(usize, u64)>,
}

impl Logged {
    /// The server whose log this is.
    pub fn server(&self) -> u32 {
        self.server
    }

    /// Whether the log overflowed: the keys it missed are not known.
    pub fn overflowed(&self) -> bool {
        self.keys.is_none()
    }
}

/// What [`Invalidations::clear`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleared {
    /// The log as read is gone and its section free.
    Done,
    /// Keys were appended (or the log overflowed) since it was read: nothing was cleared.
    /// Read it again, replay what is new, and clear that.
    Grew,
}

/// A server's log in numbers (for `mcadmin list`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogStats {
    /// Records appended (a key appended twice counts twice).
    pub keys: u64,
    /// Bytes of the section they take.
    pub bytes: u64,
    /// Whether the log overflowed (its flag, or no log could be kept). A torn record is only
    /// found by [`Invalidations::read`].
    pub overflowed: bool,
    /// When the server's first missed key claimed the section (ms since the Unix epoch);
    /// `None` without a section.
    pub since_ms: Option<u64>,
}

/// A section's tail word, decoded (see the layout in the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tail {
    /// Words of data reserved.
    used: u64,
    /// Records reserved.
    keys: u64,
    overflowed: bool,
    closed: bool,
    epoch: u16,
}

impl Tail {
    const FIELD: u64 = (1 << 23) - 1;
    const OVERFLOWED: u64 = 1 << 46;
    const CLOSED: u64 = 1 << 47;

    fn decode(word: u64) -> Tail {
        Tail {
            used: word & Tail::FIELD,
            keys: (word >> 23) & Tail::FIELD,
            overflowed: word & Tail::OVERFLOWED != 0,
            closed: word & Tail::CLOSED != 0,
            epoch: (word >> 48) as u16,
        }
    }

    fn encode(self) -> u64 {
        debug_assert!(self.used <= Tail::FIELD && self.keys <= Tail::FIELD);
        (self.used & Tail::FIELD)
            | (self.keys & Tail::FIELD) << 23
            | if self.overflowed { Tail::OVERFLOWED } else { 0 }
            | if self.closed { Tail::CLOSED } else { 0 }
            | u64::from(self.epoch) << 48
    }
}

/// Where things are in a validated file, in words.
#[derive(Clone, Copy, Debug)]
struct Layout {
    capacity: LogCapacity,
    data: usize,
    section_words: usize,
}

impl Layout {
    fn new(capacity: LogCapacity) -> Layout {
        Layout {
            capacity,
            data: (capacity.data_offset() / 8) as usize,
            section_words: (capacity.section_bytes / 8) as usize,
        }
    }

    fn sections(&self) -> std::ops::Range<usize> {
        0..self.capacity.sections as usize
    }

    fn owner_word(&self, section: usize) -> usize {
        (HEADER_LEN + section * SECTION_RECORD_LEN) / 8
    }

    fn tail_word(&self, section: usize) -> usize {
        self.owner_word(section) + 1
    }

    fn claimed_word(&self, section: usize) -> usize {
        self.owner_word(section) + 2
    }

    fn data_word(&self, section: usize) -> usize {
        self.data + section * self.section_words
    }
}

/// Where a record was reserved, or why none was.
enum Reserved {
    At {
        offset: usize,
        epoch: u16,
    },
    Overflowed,
    /// The section was cleared, forgotten or changed hands: find the server's section again.
    Moved,
    /// The mapping refused an access.
    Failed,
}

/// A domain's invalidation log, mapped (one handle per process is enough: every method takes
/// `&self`, and threads may share it).
pub struct Invalidations {
    path: PathBuf,
    map: SharedMap,
    layout: Layout,
    writable: bool,
    /// See [`COMMIT_WAIT`] (shorter in tests).
    commit_wait: Duration,
}

/// The log file of `domain` in `dir`: `DIR/DOMAIN.ilog`.
pub fn log_path(dir: &Path, domain: &Domain) -> PathBuf {
    dir.join(format!("{}.{EXTENSION}", domain.as_str()))
}

impl Invalidations {
    /// Opens the domain's log for appending, creating it with `capacity` when it does not exist
    /// (with the mode and group of the domain's table, which must exist). A user who may not
    /// write an existing log gets it read-only ([`Invalidations::is_writable`]); an existing
    /// log keeps the capacity it was made with.
    pub fn open_or_create(
        dir: impl AsRef<Path>,
        domain: &Domain,
        capacity: LogCapacity,
    ) -> Result<Invalidations> {
        let dir = dir.as_ref();
        let capacity = capacity.check()?;
        let path = log_path(dir, domain);
        let table = open_checked(&domain.path_in(dir), domain, false)?;
        for _ in 0..2 {
            match open_trusted(&path, true) {
                Ok(file) => return Invalidations::from_file(path, domain, &file, true),
                Err(Error::PermissionDenied { .. }) => {
                    let file = open_trusted(&path, false)?;
                    return Invalidations::from_file(path, domain, &file, false);
                }
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    let header = header_image(domain, capacity, now_ms());
                    let ownership = FileOwnership::of(&table);
                    create_beside(
                        dir,
                        domain,
                        EXTENSION,
                        &header,
                        capacity.file_len(),
                        ownership,
                    )?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Io {
            op: "open",
            path,
            source: std::io::Error::other("the file was removed as soon as it was created"),
        })
    }

    /// When the log was created (ms since the Unix epoch, from its header): it says what a
    /// server missed only if the server went down after that.
    pub fn created_ms(&self) -> u64 {
        self.map
            .load(CREATED_WORD, Ordering::Acquire)
            .unwrap_or(u64::MAX)
    }

    /// Opens the domain's log read-only (for `read` and `stats`); `None` when it has none.
    pub fn open(dir: impl AsRef<Path>, domain: &Domain) -> Result<Option<Invalidations>> {
        let path = log_path(dir.as_ref(), domain);
        match open_trusted(&path, false) {
            Ok(file) => Invalidations::from_file(path, domain, &file, false).map(Some),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A handle on `file`, opened (and checked) from `path`: its header validated before
    /// anything is mapped, then exactly the length the header describes mapped.
    fn from_file(
        path: PathBuf,
        domain: &Domain,
        file: &File,
        writable: bool,
    ) -> Result<Invalidations> {
        let corrupt = |why: String| Error::Unusable {
            path: path.clone(),
            why: format!(
                "{why}; remove it when no server of the domain is down (the logs it held are lost)"
            ),
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io("inspect", &path, e))?
            .len();
        let mut header = [0u8; HEADER_LEN];
        if len < HEADER_LEN as u64 {
            return Err(corrupt(format!(
                "file is {len} bytes, not an invalidation log"
            )));
        }
        file.read_exact_at(&mut header, 0)
            .map_err(|e| Error::io("read", &path, e))?;
        let capacity = match parse_header(&header, len, domain) {
            Ok(capacity) => capacity,
            Err(HeaderError::Invalid(why)) => return Err(corrupt(why)),
            Err(HeaderError::Newer { found, needs }) => {
                return Err(Error::NewerFormat {
                    path,
                    found,
                    needs,
                    supported: FORMAT_VERSION,
                });
            }
        };
        let map =
            SharedMap::map(file, len as usize, writable).map_err(|e| Error::io("map", &path, e))?;
        Ok(Invalidations {
            path,
            map,
            layout: Layout::new(capacity),
            writable,
            commit_wait: COMMIT_WAIT,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The capacity the file was made with.
    pub fn capacity(&self) -> LogCapacity {
        self.layout.capacity
    }

    /// Whether this handle may append, clear and forget.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Logs that `server` missed a write (or delete, touch, incr/decr, append/prepend, cas…) of
    /// `key` (1 to 250 bytes, as sent to the server). Lock-free, except when this is the
    /// server's first missed key, which claims a section for it. A key the log cannot hold (empty
    /// or longer than 250 bytes) makes the log overflowed.
    pub fn append(&self, server: u32, key: &[u8]) -> Appended {
        if !self.writable || server == 0 {
            return Appended::Unavailable;
        }
        let record = (1..=MAX_KEY_LEN)
            .contains(&key.len())
            .then(|| key_words(key));
        let size = record.as_ref().map(|(_, words)| 1 + words);
        for _ in 0..FIND_ATTEMPTS {
            let Some(section) = self.find_open(server).or_else(|| self.claim(server)) else {
                return Appended::Overflowed;
            };
            match self.reserve(section, server, size) {
                Reserved::At { offset, epoch } => {
                    return match &record {
                        Some((words, count)) => {
                            self.write_record(section, offset, server, epoch, key, &words[..*count])
                        }
                        // Never: a key the log cannot hold reserves nothing.
                        None => Appended::Overflowed,
                    };
                }
                Reserved::Overflowed => return Appended::Overflowed,
                Reserved::Failed => return Appended::Unavailable,
                Reserved::Moved => {}
            }
        }
        // The section kept changing hands under us (clears and forgets racing this append):
        // nothing was recorded, so no log may be trusted.
        self.set_unlogged();
        Appended::Overflowed
    }

    /// Reserves `size` words (`None`: a key the log cannot hold, which overflows it) at the
    /// tail of `section` if it is `server`'s and open, with one compare-and-swap.
    fn reserve(&self, section: usize, server: u32, size: Option<usize>) -> Reserved {
        let word = self.layout.tail_word(section);
        let Some(mut seen) = self.map.load(word, Ordering::Acquire) else {
            return Reserved::Failed;
        };
        for _ in 0..CAS_ATTEMPTS {
            let tail = Tail::decode(seen);
            // The owner is checked after the tail was loaded: every change of owner follows a
            // change of the tail (closed, or a new epoch), so if the swap below succeeds, the
            // section was the server's all along.
            if tail.closed || self.owner(section) != Some(u64::from(server)) {
                return Reserved::Moved;
            }
            if tail.overflowed {
                return Reserved::Overflowed;
            }
            let fits = size
                .and_then(|size| tail.used.checked_add(size as u64))
                .filter(|&used| {
                    used <= self.layout.section_words as u64 && tail.keys < Tail::FIELD
                });
            let new = match fits {
                Some(used) => Tail {
                    used,
                    keys: tail.keys + 1,
                    ..tail
                },
                None => Tail {
                    overflowed: true,
                    ..tail
                },
            };
            match self.map.compare_exchange(word, seen, new.encode()) {
                Some(Ok(_)) if new.overflowed => return Reserved::Overflowed,
                Some(Ok(_)) => {
                    return Reserved::At {
                        offset: tail.used as usize,
                        epoch: tail.epoch,
                    };
                }
                Some(Err(now)) => seen = now,
                None => return Reserved::Failed,
            }
        }
        Reserved::Failed
    }

    /// Writes a reserved record: the key's words, then its commit word (Release), which makes
    /// it readable.
    fn write_record(
        &self,
        section: usize,
        offset: usize,
        server: u32,
        epoch: u16,
        key: &[u8],
        words: &[u64],
    ) -> Appended {
        let at = self.layout.data_word(section) + offset;
        let len = key.len() as u16;
        let commit = commit_word(record_crc(server, epoch, len, words), len, epoch);
        let written = self
            .map
            .copy_in(at + 1, words)
            .and_then(|()| self.map.store(at, commit, Ordering::Release));
        match written {
            Some(()) => Appended::Logged,
            // Reserved and never committed: the log reads as overflowed.
            None => Appended::Overflowed,
        }
    }

    /// What `server` missed, or `None` in [`Logged::keys`] when that is not known (the server
    /// must then be flushed). A server without a section missed nothing (unless the header's
    /// `unlogged` is set). A record not yet committed is waited for up to 200 ms (once
    /// for the whole read), then counts as torn.
    pub fn read(&self, server: u32) -> Logged {
        let unlogged = self.unlogged();
        let mut owned = self
            .layout
            .sections()
            .filter(|&s| self.is_open_for(s, server));
        let (Some(section), duplicate) = (owned.next(), owned.next()) else {
            return Logged {
                server,
                keys: (!unlogged).then(Vec::new),
                mark: None,
            };
        };
        let Some(seen) = self
            .map
            .load(self.layout.tail_word(section), Ordering::Acquire)
        else {
            return Logged {
                server,
                keys: None,
                mark: None,
            };
        };
        let keys = if unlogged || duplicate.is_some() {
            None
        } else {
            self.read_section(section, server, Tail::decode(seen))
        };
        Logged {
            server,
            keys,
            mark: Some((section, seen)),
        }
    }

    /// The keys of `section` (`server`'s) up to `tail`, each once; `None` at the first record
    /// that does not check out, or if the section overflowed or was closed meanwhile.
    fn read_section(&self, section: usize, server: u32, tail: Tail) -> Option<Vec<Vec<u8>>> {
        if tail.overflowed || tail.closed || tail.used > self.layout.section_words as u64 {
            return None;
        }
        let base = self.layout.data_word(section);
        let used = tail.used as usize;
        let deadline = Instant::now() + self.commit_wait;
        let mut backoff = Backoff::default();
        let mut words = [0u64; MAX_RECORD_WORDS - 1];
        let mut keys = Vec::new();
        let mut offset = 0;
        while offset < used {
            let len = loop {
                let at = base + offset;
                let record =
                    self.commit_at(at, used - offset, tail.epoch)
                        .and_then(|(commit, len)| {
                            let count = len.div_ceil(8);
                            self.map.copy_out(at + 1, &mut words[..count])?;
                            let crc = record_crc(server, tail.epoch, len as u16, &words[..count]);
                            (commit == commit_word(crc, len as u16, tail.epoch)).then_some(len)
                        });
                if let Some(len) = record {
                    break len;
                }
                if Instant::now() >= deadline {
                    return None;
                }
                backoff.pause();
            };
            let count = len.div_ceil(8);
            let mut key: Vec<u8> = words[..count]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            key.truncate(len);
            keys.push(key);
            offset += 1 + count;
        }
        if keys.len() as u64 != tail.keys {
            return None;
        }
        Some(dedup(keys))
    }

    /// The commit word at word `at` and its key's length, if it is a commit of `epoch` (loaded
    /// with Acquire: the key's words, read after it, are those its writer wrote before it) of
    /// a key the log can hold, in a record of at most `room` words.
    fn commit_at(&self, at: usize, room: usize, epoch: u16) -> Option<(u64, usize)> {
        let commit = self.map.load(at, Ordering::Acquire)?;
        let len = ((commit >> 32) & 0xffff) as usize;
        let ours = (commit >> 48) as u16 == epoch
            && (1..=MAX_KEY_LEN).contains(&len)
            && record_words(len) <= room;
        ours.then_some((commit, len))
    }

    /// Releases `server`'s log as `logged` read it, if nothing was appended to it since
    /// (see [`Cleared`]). Whoever replays the log calls this after the replay, under the
    /// domain's writer lock. Errors: a read-only handle, or the claim lock held by a live
    /// process for longer than 100 ms.
    pub fn clear(&self, logged: &Logged) -> Result<Cleared> {
        self.check_writable("clear the invalidation log")?;
        let _lock = self.claim_lock().ok_or_else(|| self.locked())?;
        let server = logged.server;
        let current = self
            .layout
            .sections()
            .find(|&s| self.is_open_for(s, server));
        let Some(section) = current else {
            // Nothing to clear: the server has no log (any more).
            return Ok(Cleared::Done);
        };
        let Some((marked, seen)) = logged.mark else {
            return Ok(Cleared::Grew);
        };
        if marked != section {
            return Ok(Cleared::Grew);
        }
        let closed = Tail {
            closed: true,
            ..Tail::decode(seen)
        };
        match self
            .map
            .compare_exchange(self.layout.tail_word(section), seen, closed.encode())
        {
            Some(Ok(_)) => {
                self.release(section, server);
                Ok(Cleared::Done)
            }
            Some(Err(_)) => Ok(Cleared::Grew),
            None => Err(self.unmapped()),
        }
    }

    /// Drops `server`'s log whatever it holds (the server was deleted from the domain). A
    /// process still routing with an older table may append for it afterwards and claim a
    /// section again: whoever forgets deleted servers should also forget those
    /// [`Invalidations::servers`] lists that the table no longer has.
    pub fn forget(&self, server: u32) -> Result<()> {
        self.check_writable("forget a server's invalidation log")?;
        let _lock = self.claim_lock().ok_or_else(|| self.locked())?;
        for section in self.layout.sections() {
            if self.owner(section) == Some(u64::from(server)) && server != 0 {
                self.close(section).ok_or_else(|| self.unmapped())?;
                self.release(section, server);
            }
        }
        Ok(())
    }

    /// Lets logs be trusted again after an append found no section (see the module's
    /// documentation): call it only when every server that could have missed a write since
    /// then has been flushed, e.g. under the domain's writer lock when no server is down.
    pub fn reset_unlogged(&self) -> Result<()> {
        self.check_writable("reset the invalidation log")?;
        self.map
            .store(UNLOGGED_WORD, 0, Ordering::Release)
            .ok_or_else(|| self.unmapped())
    }

    /// Whether an append found no section since the last [`Invalidations::reset_unlogged`]:
    /// every log reads as overflowed meanwhile.
    pub fn unlogged(&self) -> bool {
        self.map
            .load(UNLOGGED_WORD, Ordering::Acquire)
            .is_none_or(|w| w != 0)
    }

    /// `server`'s log in numbers: one load of its tail (after finding its section).
    pub fn stats(&self, server: u32) -> LogStats {
        let unlogged = self.unlogged();
        let section = self
            .layout
            .sections()
            .find(|&s| self.is_open_for(s, server));
        let found = section.and_then(|s| {
            let tail = Tail::decode(self.map.load(self.layout.tail_word(s), Ordering::Acquire)?);
            let since = self
                .map
                .load(self.layout.claimed_word(s), Ordering::Relaxed)?;
            Some((tail, since))
        });
        match found {
            None => LogStats {
                keys: 0,
                bytes: 0,
                overflowed: unlogged || section.is_some(),
                since_ms: None,
            },
            Some((tail, since)) => LogStats {
                keys: tail.keys,
                bytes: tail.used * 8,
                overflowed: unlogged
                    || tail.overflowed
                    || tail.used > self.layout.section_words as u64,
                since_ms: Some(since),
            },
        }
    }

    /// The servers that have a log now, in section order.
    pub fn servers(&self) -> Vec<u32> {
        self.layout
            .sections()
            .filter_map(|s| {
                let owner = u32::try_from(self.owner(s)?).ok()?;
                (owner != 0 && self.is_open_for(s, owner)).then_some(owner)
            })
            .collect()
    }

    /// The owner word of `section`.
    fn owner(&self, section: usize) -> Option<u64> {
        self.map
            .load(self.layout.owner_word(section), Ordering::Acquire)
    }

    /// Whether `section` is `server`'s and not closed.
    fn is_open_for(&self, section: usize, server: u32) -> bool {
        server != 0
            && self.owner(section) == Some(u64::from(server))
            && self
                .map
                .load(self.layout.tail_word(section), Ordering::Acquire)
                .is_some_and(|w| !Tail::decode(w).closed)
    }

    /// The first open section of `server`.
    fn find_open(&self, server: u32) -> Option<usize> {
        self.layout
            .sections()
            .find(|&s| self.is_open_for(s, server))
    }

    /// Claims a free section for `server` (under the claim lock, after looking again whether
    /// another process claimed one for it meanwhile). `None` when every section is taken, the
    /// lock cannot be had, or no log can be trusted anyway (`unlogged`): `unlogged` is then set.
    fn claim(&self, server: u32) -> Option<usize> {
        if self.unlogged() {
            return None;
        }
        let Some(_lock) = self.claim_lock() else {
            self.set_unlogged();
            return None;
        };
        // A clear or forget killed between closing and releasing left the section closed:
        // release it now.
        for section in self.layout.sections() {
            if self.owner(section) == Some(u64::from(server)) && !self.is_open_for(section, server)
            {
                self.release(section, server);
            }
        }
        if let Some(section) = self.find_open(server) {
            return Some(section);
        }
        for section in self.layout.sections() {
            if self.owner(section) != Some(0) {
                continue;
            }
            let word = self.layout.tail_word(section);
            let Some(seen) = self.map.load(word, Ordering::Acquire) else {
                continue;
            };
            // A new epoch first, owner last: an append still holding the section's previous
            // tail fails its swap, and one that finds the new owner finds the new tail.
            let fresh = Tail {
                used: 0,
                keys: 0,
                overflowed: false,
                closed: false,
                epoch: Tail::decode(seen).epoch.wrapping_add(1),
            };
            if !matches!(
                self.map.compare_exchange(word, seen, fresh.encode()),
                Some(Ok(_))
            ) {
                continue;
            }
            self.map.store(
                self.layout.claimed_word(section),
                now_ms(),
                Ordering::Relaxed,
            );
            let owner = self.layout.owner_word(section);
            if matches!(
                self.map.compare_exchange(owner, 0, u64::from(server)),
                Some(Ok(_))
            ) {
                return Some(section);
            }
        }
        self.set_unlogged();
        None
    }

    /// Sets the closed bit of `section`'s tail (appends to it then fail and look again).
    fn close(&self, section: usize) -> Option<()> {
        let word = self.layout.tail_word(section);
        let mut seen = self.map.load(word, Ordering::Acquire)?;
        for _ in 0..CAS_ATTEMPTS {
            let closed = Tail {
                closed: true,
                ..Tail::decode(seen)
            };
            match self.map.compare_exchange(word, seen, closed.encode())? {
                Ok(_) => return Some(()),
                Err(now) => seen = now,
            }
        }
        None
    }

    /// Frees closed `section` of `server` (under the claim lock).
    fn release(&self, section: usize, server: u32) {
        let _ = self
            .map
            .compare_exchange(self.layout.owner_word(section), u64::from(server), 0);
    }

    /// Notes that an append found no section to claim (keeping the time it first did).
    fn set_unlogged(&self) {
        let _ = self.map.compare_exchange(UNLOGGED_WORD, 0, now_ms().max(1));
    }

    /// Takes the claim lock, waiting up to [`CLAIM_WAIT`] for a live holder and taking it over
    /// from a dead one (a claim or release is a few stores that any later one completes or
    /// undoes: nothing to repair).
    fn claim_lock(&self) -> Option<ClaimLock<'_>> {
        let me = ProcessId::current()?.to_word();
        let started = Instant::now();
        let mut backoff = Backoff::default();
        loop {
            match self.map.compare_exchange(CLAIM_LOCK_WORD, 0, me)? {
                Ok(_) => return Some(ClaimLock { log: self, me }),
                Err(holder) if holder != me && !ProcessId::from_word(holder).is_alive() => {
                    if self
                        .map
                        .compare_exchange(CLAIM_LOCK_WORD, holder, me)?
                        .is_ok()
                    {
                        return Some(ClaimLock { log: self, me });
                    }
                }
                Err(_) => {}
            }
            if started.elapsed() >= CLAIM_WAIT {
                return None;
            }
            backoff.pause();
        }
    }

    fn check_writable(&self, op: &'static str) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::PermissionDenied {
                op,
                path: self.path.clone(),
            })
        }
    }

    fn locked(&self) -> Error {
        let holder = self
            .map
            .load(CLAIM_LOCK_WORD, Ordering::Acquire)
            .filter(|&w| w != 0)
            .map(|w| format!("pid {}", ProcessId::from_word(w).pid));
        Error::Locked {
            path: self.path.clone(),
            holder,
            waited: CLAIM_WAIT,
        }
    }

    fn unmapped(&self) -> Error {
        Error::Unusable {
            path: self.path.clone(),
            why: "its mapping refused an access (the file was cut short?)".into(),
        }
    }
}

/// The claim lock, held (released when dropped).
struct ClaimLock<'a> {
    log: &'a Invalidations,
    me: u64,
}

impl Drop for ClaimLock<'_> {
    fn drop(&mut self) {
        let _ = self.log.map.compare_exchange(CLAIM_LOCK_WORD, self.me, 0);
    }
}

/// Waiting for another process: a few spins, then yields, then 200 µs sleeps.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    fn pause(&mut self) {
        self.0 = self.0.saturating_add(1);
        match self.0 {
            0..8 => std::hint::spin_loop(),
            8..32 => std::thread::yield_now(),
            _ => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

/// Words of the record of a key of `len` bytes.
fn record_words(len: usize) -> usize {
    1 + len.div_ceil(8)
}

/// `key` as zero-padded little-endian words, and how many there are.
fn key_words(key: &[u8]) -> ([u64; MAX_RECORD_WORDS - 1], usize) {
    let mut words = [0u64; MAX_RECORD_WORDS - 1];
    for (word, chunk) in words.iter_mut().zip(key.chunks(8)) {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        *word = u64::from_le_bytes(bytes);
    }
    (words, key.len().div_ceil(8))
}

/// The CRC a record of `server`'s log in `epoch` carries.
fn record_crc(server: u32, epoch: u16, len: u16, words: &[u64]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&server.to_le_bytes());
    hasher.update(&epoch.to_le_bytes());
    hasher.update(&len.to_le_bytes());
    for word in words {
        hasher.update(&word.to_le_bytes());
    }
    hasher.finalize()
}

fn commit_word(crc: u32, len: u16, epoch: u16) -> u64 {
    u64::from(crc) | u64::from(len) << 32 | u64::from(epoch) << 48
}

/// `keys` with each key once, where it first came.
fn dedup(keys: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut seen = HashSet::with_capacity(keys.len());
    let first: Vec<bool> = keys.iter().map(|k| seen.insert(k.as_slice())).collect();
    drop(seen);
    keys.into_iter()
        .zip(first)
        .filter_map(|(key, first)| first.then_some(key))
        .collect()
}

/// The header of a new log.
fn header_image(domain: &Domain, capacity: LogCapacity, created_ms: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; HEADER_LEN];
    bytes[0..8].copy_from_slice(&MAGIC);
    bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes[12..16].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes[16..20].copy_from_slice(&capacity.sections.to_le_bytes());
    bytes[20..24].copy_from_slice(&(SECTION_RECORD_LEN as u32).to_le_bytes());
    bytes[24..32].copy_from_slice(&capacity.section_bytes.to_le_bytes());
    bytes[32..40].copy_from_slice(&capacity.data_offset().to_le_bytes());
    bytes[40..48].copy_from_slice(&created_ms.to_le_bytes());
    let name = domain.as_str().as_bytes();
    bytes[48..48 + name.len()].copy_from_slice(name);
    let crc = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
    bytes[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Why a header was refused.
#[derive(Debug, PartialEq, Eq)]
enum HeaderError {
    Invalid(String),
    Newer { found: u32, needs: u32 },
}

/// The capacity a header describes, checked against the file's length and domain.
fn parse_header(
    bytes: &[u8; HEADER_LEN],
    file_len: u64,
    domain: &Domain,
) -> Result<LogCapacity, HeaderError> {
    let invalid = |why: &str| Err(HeaderError::Invalid(why.to_string()));
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    if bytes[0..8] != MAGIC {
        return invalid("bad magic: not an invalidation log");
    }
    if crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]) != u32_at(HEADER_CRC_OFFSET) {
        return invalid("header checksum mismatch");
    }
    let (found, needs) = (u32_at(8), u32_at(12));
    if needs > FORMAT_VERSION {
        return Err(HeaderError::Newer { found, needs });
    }
    if found < 1 || needs < 1 {
        return invalid("format version 0");
    }
    let capacity = LogCapacity {
        sections: u32_at(16),
        section_bytes: u64_at(24),
    };
    if capacity.check().is_err() || u32_at(20) != SECTION_RECORD_LEN as u32 {
        return invalid("sections out of range");
    }
    if u64_at(32) != capacity.data_offset() {
        return invalid("data offset does not follow from the sections");
    }
    if file_len != capacity.file_len() {
        return Err(HeaderError::Invalid(format!(
            "file is {file_len} bytes, its header says {}",
            capacity.file_len()
        )));
    }
    let name = &bytes[48..48 + MAX_DOMAIN_LEN];
    let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
    if name != domain.as_str().as_bytes() {
        return Err(HeaderError::Invalid(format!(
            "it is the log of domain '{}'",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(capacity)
}

#[cfg(test)]
mod tests;
