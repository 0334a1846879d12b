//! A domain's registry file: opening it safely, lock-free snapshots, writer transactions,
//! growth, and change notification.
//!
//! Readers map the file and copy the committed slot out (see `seqlock`); they take no
//! lock and are never blocked by a writer, live or dead. Writers serialize on the writer lock
//! (see `lock`: an open-file-description `fcntl` write lock on the whole file, and no reader's
//! lock can keep them out), waiting at most [`Registry::set_lock_wait`]; they re-read the
//! current table under the lock, apply their change and publish it as one new version.
//!
//! Growth never truncates a mapped file (that would SIGBUS every reader): the writer builds a
//! larger file beside it, sets the MOVED bit in the old file's committed word, renames the new
//! file into place and wakes waiters. A reader that sees MOVED re-opens the path; if the path
//! still names the same file, the grower died before its rename and the old table is still the
//! current one (the next writer clears the bit). Writers waiting on the old file's lock notice
//! the path now names another file and re-open it.
//!
//! A file that someone else truncates under us is damage, not death (see `shm`: the fault is
//! served with zero pages and the mapping marked poisoned). A handle whose mapping is poisoned
//! keeps its last good snapshot and version, answers [`Registry::current_snapshot`] with an
//! error saying the file was truncated, and maps the file anew (on the descriptor it has, so a
//! writer keeps its lock) as soon as `fstat` says it is whole again; a writer refuses to change a
//! truncated table, and [`Registry::replace`] repairs it with a new file.
//!
//! One handle, [`Registry`], one file per concept: this module opens the file and follows it
//! when it moves, reads the committed word and carries change notification; `files` (safe
//! opening, creation, temporaries), `reader` (snapshots, deltas, the shared ring's lookups),
//! `writer` (transactions, publication, growth, repair), `lock` (the writer lock),
//! `relocate` (replacing the file by a new one beside it, for growth, upgrade, repair and
//! escaping a reader's lock), `live` (the shared failure view: failure counts and retry
//! leases), `agent` (the fleet agent's status) and `process_slots` (which processes use the
//! domain). Beside the table, in a file of its own: `invalidations`, each server's log of the
//! keys it missed while down ([`Invalidations`]).

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::format::{self, Layout};
use crate::seqlock::{Geometry, VERSION_MASK, Words};
use crate::shm::SharedMap;
use crate::table::Snapshot;
use crate::work::WorkCounters;

mod agent;
mod files;
mod invalidations;
mod live;
mod lock;
mod process_slots;
mod reader;
mod relocate;
mod writer;

#[cfg(test)]
mod bucket_tests;
#[cfg(test)]
mod check_tests;
#[cfg(test)]
mod truncation_tests;

pub use agent::AgentLink;
pub use files::{FileOwnership, check_trusted, open_trusted};
pub use invalidations::{
    Appended, Cleared, Invalidations, LogCapacity, LogStats, Logged, log_path,
};
pub use live::LiveRecords;
pub use lock::LockWait;
pub use writer::Commit;

/// How many faults on truncated registry files this process survived: each one a mapping read
/// as damaged until its file was whole again (for tests and diagnostics).
pub use crate::shm::truncation_faults;

// What the registry's API hands out of the file's layout, by name (the layout itself is private
// to this crate).
pub use crate::format::{RingRef, RingWords, SlotDelta};
pub use crate::shared_ring::RingView;

/// Most servers a domain can hold.
pub const MAX_SERVERS: u32 = format::MAX_CAPACITY;
/// Processes a domain's file keeps a record of at once (`mcadmin clients`).
pub const PROCESS_SLOTS: usize = format::CLIENT_SLOTS;

use files::{create_empty, open_checked, remove_orphan_temps};

/// Longest single futex sleep in [`Registry::wait_for_change`]: waiters sleep until a commit
/// wakes them; this only bounds the delay when a wake-up is lost (a writer killed between
/// publishing and waking, or a waiter killed while passing the wake-up on).
const MAX_WAIT_SLICE: Duration = Duration::from_secs(5);
/// How long [`Registry::wait_for_change`] sleeps at a time while its file is truncated (a futex
/// in the zero pages a truncation left would never be woken): how soon it notices the file
/// whole again.
const DAMAGED_POLL: Duration = Duration::from_millis(10);
/// Waiters a commit wakes itself: one. Each woken waiter wakes [`WAKE_FANOUT`] more before it
/// looks at the table, so a commit costs the writer one wake-up however many processes wait,
/// and 200 waiters all know after about eight hops.
const WAKE_FIRST: i32 = 1;
const WAKE_FANOUT: i32 = 2;

/// An open domain: a shared mapping of its file plus this handle's last snapshot.
///
/// Methods take `&mut self` because they refresh the cached snapshot and follow the file when a
/// writer replaces it; use one handle per thread (they are cheap: one mapping each).
pub struct Registry {
    domain: Domain,
    path: PathBuf,
    writable: bool,
    file: File,
    file_id: (u64, u64),
    map: SharedMap,
    layout: Layout,
    geometry: Geometry,
    cache: Option<Arc<Snapshot>>,
    /// The shared ring of the cached snapshot's version, when the file has an intact one.
    cache_ring: Option<RingView>,
    /// Where the cached version's ring lies in the file (what `cache_ring` was opened from).
    cache_ring_ref: Option<RingRef>,
    /// How the cached snapshot differs from the version before it, when it was read so.
    cache_delta: Option<format::SlotDelta>,
    scratch: Vec<u64>,
    /// The last committed word read and its version, so that `version()` checks a sealed word
    /// only when it changes (one load and one compare otherwise).
    seen: Option<(u64, u64)>,
    /// [`Registry::version`] found the file damaged: it answered the last version seen, and
    /// [`Registry::current_snapshot`] answers what is wrong.
    damage: bool,
    lock_wait: LockWait,
    /// What reading versions cost this handle (see [`Registry::work`]).
    work: WorkCounters,
}

impl Registry {
    /// Opens a domain for reading (read permission is enough).
    pub fn open(dir: impl AsRef<Path>, domain: &Domain) -> Result<Registry> {
        Registry::open_path(domain.path_in(dir.as_ref()), domain.clone(), false)
    }

    /// Opens a domain for reading and writing; with `create`, creates the directory (0755) and
    /// an empty table (version 0, file 0644) when they do not exist.
    pub fn open_writer(dir: impl AsRef<Path>, domain: &Domain, create: bool) -> Result<Registry> {
        Registry::open_writer_with(dir, domain, create, FileOwnership::default())
    }

    /// [`Registry::open_writer`], creating a missing file with `ownership` (mode, group).
    pub fn open_writer_with(
        dir: impl AsRef<Path>,
        domain: &Domain,
        create: bool,
        ownership: FileOwnership,
    ) -> Result<Registry> {
        let dir = dir.as_ref();
        let path = domain.path_in(dir);
        // A writer trusts the domain's lock file before anything else (see `lock`): one that
        // another user planted would let them stall every writer.
        lock::check_lock_file(&path)?;
        if create && fs::symlink_metadata(&path).is_err() {
            create_empty(dir, domain, ownership)?;
            // The writers' lock file (see `lock`), made with the table while we may.
            let _ = lock::open_lock_file(&path, ownership);
        }
        let registry = Registry::open_path(path, domain.clone(), true)?;
        remove_orphan_temps(dir, domain);
        Ok(registry)
    }

    fn open_path(path: PathBuf, domain: Domain, writable: bool) -> Result<Registry> {
        let file = open_checked(&path, &domain, writable)?;
        Registry::from_file(path, domain, file, writable)
    }

    /// A handle on `file`, opened (and checked) from `path`.
    fn from_file(path: PathBuf, domain: Domain, file: File, writable: bool) -> Result<Registry> {
        let meta = file
            .metadata()
            .map_err(|e| Error::io("inspect", &path, e))?;
        let corrupt = |why: String| Error::Corrupt {
            path: path.clone(),
            why,
        };
        let len = usize::try_from(meta.len()).map_err(|_| corrupt("file too large".into()))?;
        if len < format::HEADER_LEN || !len.is_multiple_of(8) {
            return Err(corrupt(format!("file is {len} bytes, not a registry file")));
        }
        let map = SharedMap::map(&file, len, writable).map_err(|e| Error::io("map", &path, e))?;
        let mut header = vec![0u64; format::HEADER_LEN / 8];
        map.copy_out(0, &mut header[..format::COMMITTED_WORD])
            .ok_or_else(|| corrupt("header outside the file".into()))?;
        let layout = match format::parse_header(&header, meta.len(), domain.as_str()) {
            Ok(layout) => layout,
            Err(format::HeaderError::Invalid(why)) => return Err(corrupt(why)),
            Err(format::HeaderError::Newer { found, needs }) => {
                return Err(Error::NewerFormat {
                    path,
                    found,
                    needs,
                    supported: format::FORMAT_VERSION,
                });
            }
        };
        Ok(Registry {
            domain,
            writable,
            file_id: (meta.dev(), meta.ino()),
            geometry: layout.geometry(),
            seen: None,
            damage: false,
            lock_wait: LockWait::default(),
            path,
            file,
            map,
            layout,
            cache: None,
            cache_ring: None,
            cache_ring_ref: None,
            cache_delta: None,
            scratch: Vec::new(),
            work: WorkCounters::default(),
        })
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Servers the current file holds before it must grow.
    pub fn capacity(&self) -> u32 {
        self.layout.capacity
    }

    /// The published table version: one atomic load (plus a re-open after the file was
    /// replaced by a larger one). When the file is damaged (a committed word that fails its
    /// check, a file truncated under us) it is the last version seen, and
    /// [`Registry::current_snapshot`] says what is wrong.
    pub fn version(&mut self) -> u64 {
        let word = match self.committed_word() {
            Some(word) => word,
            // A truncation faulted on our mapping, now or before: map the file anew if it is
            // whole again.
            None => match self.recovered_word() {
                Some(word) => word,
                None => return self.damaged(),
            },
        };
        if let Some((seen, version)) = self.seen
            && seen == word
        {
            self.damage = false;
            return version;
        }
        match self.geometry.seal.decode(word) {
            // A file's version never goes back; one that does in a file shorter than its table
            // needs is the zeros a truncation left in a page it cut (which does not fault).
            Some((version, false))
                if self.seen.is_some_and(|(_, v)| version < v) && self.short() =>
            {
                self.damaged()
            }
            Some((version, false)) => {
                self.seen = Some((word, version));
                self.damage = false;
                version
            }
            Some((version, true)) => {
                self.damage = false;
                self.follow_move();
                self.committed_word()
                    .and_then(|word| self.geometry.seal.decode(word))
                    .map_or(version, |(v, _)| v)
            }
            // A damaged word: keep the last version seen.
            None => self.damaged(),
        }
    }

    /// Notes that the file is damaged and answers the last version seen.
    fn damaged(&mut self) -> u64 {
        self.damage = true;
        self.seen.map_or(0, |(_, version)| version)
    }

    /// What is wrong with a file [`Registry::version`] found damaged.
    fn damage_error(&self) -> Error {
        // A word that reads and checks is one that went back in a truncated file.
        self.committed().err().unwrap_or_else(|| self.truncated())
    }

    /// The committed word of our file mapped anew, when a truncation poisoned our mapping and
    /// the file is whole again (see [`Registry::recover`]).
    fn recovered_word(&mut self) -> Option<u64> {
        if !self.map.is_poisoned() || !self.recover() {
            return None;
        }
        self.committed_word()
    }

    /// The committed word as stored (see [`crate::seqlock::Seal`]); `None` when the mapping
    /// cannot be read (a truncation).
    fn committed_word(&self) -> Option<u64> {
        self.map.load(format::COMMITTED_WORD, Ordering::Acquire)
    }

    /// The committed version and MOVED bit; a damaged word is a corrupt file.
    fn committed(&self) -> Result<(u64, bool)> {
        self.committed_word()
            .and_then(|word| self.geometry.seal.decode(word))
            .ok_or_else(|| self.corrupt("the committed version word fails its check".into()))
    }

    /// The version to continue from when the table cannot be read (a repair): the highest of
    /// the committed word's version bits and the two slots' generations, so that no version
    /// number is published twice even when the committed word itself was damaged.
    fn salvaged_version(&self) -> u64 {
        self.salvaged_version_in(&self.map)
    }

    /// [`Registry::salvaged_version`] as `map` (a mapping of our file) has it: words it does
    /// not hold count as 0.
    fn salvaged_version_in(&self, map: &SharedMap) -> u64 {
        let word = |index: usize| map.load(index, Ordering::Acquire).unwrap_or(0);
        let bits = word(format::COMMITTED_WORD) & VERSION_MASK;
        bits.max(word(self.geometry.slots[0] + 1))
            .max(word(self.geometry.slots[1] + 1))
            .min(VERSION_MASK - 1)
    }

    fn store_committed(&self, version: u64, moved: bool) {
        let word = self.geometry.seal.encode(version, moved);
        self.map
            .store(format::COMMITTED_WORD, word, Ordering::Release);
    }

    /// If the path names another file than ours, switch to it (keeping our cache: versions
    /// continue across files). Failures leave us on the old file, which still holds its last
    /// table.
    fn follow_move(&mut self) {
        let moved = fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) != self.file_id)
            .unwrap_or(false);
        if moved {
            let _ = self.reopen();
        }
    }

    fn reopen(&mut self) -> Result<()> {
        let fresh = Registry::open_path(self.path.clone(), self.domain.clone(), self.writable)?;
        self.adopt(fresh);
        Ok(())
    }

    /// Becomes `fresh` (a handle on the file the path names now), keeping our cache (versions
    /// continue across files) and our lock wait.
    fn adopt(&mut self, fresh: Registry) {
        let cache = self.cache.take();
        *self = Registry {
            cache,
            lock_wait: self.lock_wait,
            work: self.work,
            ..fresh
        };
    }

    /// After a truncation faulted on our mapping (see `shm`): if the path names another file now
    /// (replaced meanwhile, MOVED unreadable in ours), opens it; else, once `fstat` says our file
    /// is as long as its table needs again, maps it anew through a duplicate of our descriptor
    /// (the same open file description, so a writer's lock stays held), keeping our cache.
    /// False while it cannot (the file is still short, or its header does not read yet).
    fn recover(&mut self) -> bool {
        let replaced =
            fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) != self.file_id);
        if replaced {
            return self.reopen().is_ok() && !self.map.is_poisoned();
        }
        let whole = self
            .file
            .metadata()
            .is_ok_and(|m| m.len() >= self.layout.file_len() as u64);
        if !whole {
            return false;
        }
        let Ok(file) = self.file.try_clone() else {
            return false;
        };
        match Registry::from_file(self.path.clone(), self.domain.clone(), file, self.writable) {
            Ok(fresh) if !fresh.map.is_poisoned() => {
                // The same file: its version cannot have gone back since we saw it.
                let seen = self.seen;
                self.adopt(fresh);
                self.seen = seen;
                true
            }
            _ => false,
        }
    }

    /// The error a handle whose mapping a truncation poisoned answers with: what the file's
    /// length is now against what its table needs.
    pub(super) fn truncated(&self) -> Error {
        let needs = self.layout.file_len();
        let why = match self.file.metadata().map(|m| m.len()) {
            Ok(len) if len < needs as u64 => format!(
                "another process truncated it under this one (to {len} bytes; its table needs \
                 {needs}): the last good table is used until the file is whole again"
            ),
            _ => "another process truncated it under this one (it is whole again, but not yet \
                  readable): the last good table is used until it is"
                .to_string(),
        };
        Error::Corrupt {
            path: self.path.clone(),
            why,
        }
    }

    /// Blocks until the version is greater than `since` or `timeout` passes; returns the new
    /// version, or `None` on timeout. Sleeps on a futex in the file, so a commit in any process
    /// wakes it at once.
    pub fn wait_for_change(&mut self, since: u64, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            // The wake count before the version: a commit after the look still wakes us.
            let wake = self.map.load_u32(format::WAKE_OFFSET).unwrap_or(0);
            let version = self.version();
            if version > since {
                return Some(version);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if self.map.is_poisoned() {
                // Truncated: no commit can wake us through these pages; look again soon.
                std::thread::sleep(left.min(DAMAGED_POLL));
                continue;
            }
            self.map
                .futex_wait(format::WAKE_OFFSET, wake, left.min(MAX_WAIT_SLICE));
            if self.map.load_u32(format::WAKE_OFFSET) != Some(wake) {
                // A commit (not a time-out): pass the wake-up on.
                self.map.futex_wake(format::WAKE_OFFSET, WAKE_FANOUT);
            }
        }
    }

    /// Whether the file is shorter than its table needs (another process truncated it), or was
    /// truncated under our mapping since it was mapped (see `shm`); `fstat` says which.
    pub(super) fn short(&self) -> bool {
        self.map.is_poisoned()
            || self
                .file
                .metadata()
                .is_ok_and(|m| m.len() < self.layout.file_len() as u64)
    }

    /// What reading and writing versions cost this handle since it was opened: entries decoded,
    /// bytes copied, versions read whole or as a change, shared rings opened, rings derived
    /// (plain counters, for tests and diagnostics).
    pub fn work(&self) -> WorkCounters {
        self.work
    }

    /// Whether this handle maps the file writable (can count failures and publish).
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    fn wake(&self) {
        wake_waiters(&self.map);
    }
}

/// Wakes the waiters on the file `map` maps (see [`Registry::wait_for_change`]): a commit, or
/// the file replaced (see `relocate`).
fn wake_waiters(map: &SharedMap) {
    map.fetch_add_u32(format::WAKE_OFFSET, 1);
    map.futex_wake(format::WAKE_OFFSET, WAKE_FIRST);
}
