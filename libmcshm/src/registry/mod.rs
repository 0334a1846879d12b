//! A domain's registry file: opening it safely, lock-free snapshots, writer transactions,
//! growth, and change notification.
//!
//! Readers map the file and copy the committed slot out (see [`crate::seqlock`]); they take no
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

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::format::{self, CommitInfo, Layout, RingRef};
use crate::seqlock::{Geometry, ReadError, Seal, VERSION_MASK, Words};
use crate::shared_ring::{self, RingView};
use crate::shm::{SharedMap, effective_uid, monotonic_ns};
use crate::table::{Server, Snapshot, State, Table, first_duplicate};

mod lock;
pub use lock::LockWait;
use lock::acquire_lock;

/// A reader's copy buffer larger than this (a slot of ~120 servers) is let go after a full read.
const SCRATCH_KEPT: usize = 8192;
/// Attempts at copying a slot before a reader lapped by writers gives up (and keeps serving its
/// last good snapshot).
const READ_ATTEMPTS: u32 = 100;
/// Longest single futex sleep in [`Registry::wait_for_change`]: waiters sleep until a commit
/// wakes them; this only bounds the delay when a wake-up is lost (a writer killed between
/// publishing and waking, or a waiter killed while passing the wake-up on).
const MAX_WAIT_SLICE: Duration = Duration::from_secs(5);
/// Waiters a commit wakes itself: one. Each woken waiter wakes [`WAKE_FANOUT`] more before it
/// looks at the table, so a commit costs the writer one wake-up however many processes wait,
/// and 200 waiters all know after about eight hops.
const WAKE_FIRST: i32 = 1;
const WAKE_FANOUT: i32 = 2;
/// Mode of new registry files and directories.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

impl Commit {
    pub fn unchanged(version: u64) -> Commit {
        Commit {
            version,
            changed: false,
            published_ns: 0,
        }
    }
}

/// Mode and group of a new registry file (default 0644, the creator's group). A file that is
/// rewritten (growth, format migration, repair) keeps the mode and group it had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOwnership {
    pub mode: u32,
    pub gid: Option<u32>,
}

impl Default for FileOwnership {
    fn default() -> FileOwnership {
        FileOwnership {
            mode: FILE_MODE,
            gid: None,
        }
    }
}

impl FileOwnership {
    /// The mode and group of an existing file.
    fn of(file: &File) -> FileOwnership {
        file.metadata().map_or_else(
            |_| FileOwnership::default(),
            |m| FileOwnership {
                mode: m.mode() & 0o7777,
                gid: Some(m.gid()),
            },
        )
    }
}

/// The result of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The version now published.
    pub version: u64,
    /// False when the change left the table as it was (no version was published).
    pub changed: bool,
    /// [`crate::monotonic_ns`] right after the version became visible to readers (0 when
    /// unchanged): for measuring how soon other processes see a change.
    pub published_ns: u64,
}

/// The fleet agent (`mcadmin sync`) that mirrors a domain into this host's table, as recorded
/// in the file's header (status only: nothing routes by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentLink {
    /// The agent process, if one ever recorded itself (it may have died since: see
    /// [`crate::processes::ProcessId::is_alive`]).
    pub agent: Option<crate::processes::ProcessId>,
    /// Whether the agent reached etcd at its last attempt.
    pub connected: bool,
    /// Since when it is connected, or cut off (ms since the Unix epoch).
    pub since_ms: u64,
}

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
    /// How the cached snapshot differs from the version before it, when it was read so.
    cache_delta: Option<format::SlotDelta>,
    scratch: Vec<u64>,
    /// The last committed word read and its version, so that `version()` checks a sealed word
    /// only when it changes (one load and one compare otherwise).
    seen: Option<(u64, u64)>,
    lock_wait: LockWait,
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
            lock_wait: LockWait::default(),
            path,
            file,
            map,
            layout,
            cache: None,
            cache_ring: None,
            cache_delta: None,
            scratch: Vec::new(),
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
    /// replaced by a larger one).
    pub fn version(&mut self) -> u64 {
        let word = self.committed_word();
        if let Some((seen, version)) = self.seen
            && seen == word
        {
            return version;
        }
        match self.geometry.seal.decode(word) {
            Some((version, false)) => {
                self.seen = Some((word, version));
                version
            }
            Some((version, true)) => {
                self.follow_move();
                let word = self.committed_word();
                self.geometry.seal.decode(word).map_or(version, |(v, _)| v)
            }
            // A damaged word: keep the last version seen; the next read reports the damage.
            None => self.seen.map_or(0, |(_, version)| version),
        }
    }

    /// The committed word as stored (see [`crate::seqlock::Seal`]).
    fn committed_word(&self) -> u64 {
        self.map
            .load(format::COMMITTED_WORD, Ordering::Acquire)
            .unwrap_or(0)
    }

    /// The committed version and MOVED bit; a damaged word is a corrupt file.
    fn committed(&self) -> Result<(u64, bool)> {
        self.geometry
            .seal
            .decode(self.committed_word())
            .ok_or_else(|| self.corrupt("the committed version word fails its check".into()))
    }

    /// The version to continue from when the table cannot be read (a repair): the highest of
    /// the committed word's version bits and the two slots' generations, so that no version
    /// number is published twice even when the committed word itself was damaged.
    fn salvaged_version(&self) -> u64 {
        let generation = |slot: usize| {
            self.map
                .load(self.geometry.slots[slot] + 1, Ordering::Acquire)
                .unwrap_or(0)
        };
        let bits = self.committed_word() & VERSION_MASK;
        bits.max(generation(0))
            .max(generation(1))
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
            ..fresh
        };
    }

    /// The current table. Returns the cached snapshot without copying when the version has not
    /// moved; otherwise copies and validates the committed slot. If that fails (writers lapping
    /// us, or a damaged slot) a handle that has a good snapshot keeps serving it; a fresh handle
    /// gets the error.
    pub fn snapshot(&mut self) -> Result<Arc<Snapshot>> {
        self.current_snapshot()
            .or_else(|err| self.cache.clone().ok_or(err))
    }

    /// Like [`Registry::snapshot`], but a failed copy is an error even when an older snapshot
    /// is cached: the snapshot returned is always the one of [`Registry::version`].
    pub fn current_snapshot(&mut self) -> Result<Arc<Snapshot>> {
        let version = self.version();
        if let Some(cached) = &self.cache
            && cached.version == version
        {
            return Ok(cached.clone());
        }
        if let Some(changed) = self.read_delta() {
            return Ok(changed);
        }
        let read = self.read_table_and_ring();
        if self.scratch.capacity() > SCRATCH_KEPT {
            self.scratch = Vec::new(); // a reader keeps no copy of a large table's slot
        }
        let (snapshot, ring) = read?;
        let snapshot = Arc::new(snapshot);
        self.cache = Some(snapshot.clone());
        self.cache_ring = ring;
        self.cache_delta = None;
        Ok(snapshot)
    }

    /// Which servers (positions) of the current snapshot differ from the version before it,
    /// when it was read as a change of that version (a front end then updates what it derives
    /// from the table for those positions only); `None` when it was read whole.
    pub fn last_delta(&self) -> Option<format::SlotDelta> {
        self.cache_delta
    }

    /// The committed version as a change of the cached one, when its slot says which entries
    /// differ from the cached version's: only those are copied and decoded, and the cached
    /// snapshot is updated in place (when no one else holds it). `None`: read the whole slot.
    fn read_delta(&mut self) -> Option<Arc<Snapshot>> {
        if !self.layout.has_rings() {
            return None;
        }
        let base = self.cache.as_ref()?.version;
        let layout = self.layout;
        let mut header = Vec::with_capacity(format::SLOT_HEADER_LEN / 8);
        let read = self
            .geometry
            .read_part(&self.map, &mut header, |header, copy| {
                let delta = format::slot_delta(header).filter(|d| d.base == base)?;
                let mut entries = vec![0u64; (delta.end - delta.first) * format::ENTRY_WORDS];
                let offset = layout.slot_header_len() / 8 + delta.first * format::ENTRY_WORDS;
                copy(offset, &mut entries)?;
                Some((delta, entries))
            });
        let Ok(Some((version, (delta, entries)))) = read else {
            return None;
        };
        let cache = self.cache.as_mut()?;
        let snapshot = Arc::make_mut(cache);
        format::apply_delta(snapshot, &header, delta, &entries, &layout).ok()?;
        self.cache_delta = Some(delta);
        let seq = (self.geometry.slots[(version & 1) as usize], header[0]);
        self.cache_ring = snapshot.shared_ring.and_then(|r| {
            RingView::open(
                &self.map,
                &layout,
                r,
                snapshot.servers.len(),
                seq,
                self.file_id,
            )
        });
        Some(cache.clone())
    }

    /// [`Registry::snapshot`], with the shared ring its version routes with when the file has
    /// an intact one (format 3; look keys up in it with [`Registry::ring_owner`] and
    /// [`Registry::ring_servers_from`]). `None`: build the ring from the snapshot.
    pub fn snapshot_and_ring(&mut self) -> Result<(Arc<Snapshot>, Option<RingView>)> {
        let snapshot = self.snapshot()?;
        let ring = self.cache_ring.filter(|_| {
            self.cache
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, &snapshot))
        });
        Ok((snapshot, ring))
    }

    /// The owner of a key hash in a shared ring this handle gave out; `None` when that ring can
    /// no longer be used (the file was replaced, writers have moved on twice, or it is damaged).
    pub fn ring_owner(&self, ring: &RingView, hash: u32) -> Option<Option<usize>> {
        if ring.file_id != self.file_id {
            return None;
        }
        let owner = ring.owner(&self.map, hash)?;
        ring.still_valid(&self.map).then_some(owner)
    }

    /// The first `n` distinct servers along a shared ring from a key hash (see
    /// [`Registry::ring_owner`]).
    pub fn ring_servers_from(&self, ring: &RingView, hash: u32, n: usize) -> Option<Vec<usize>> {
        if ring.file_id != self.file_id {
            return None;
        }
        let servers = ring.servers_from(&self.map, hash, n)?;
        ring.still_valid(&self.map).then_some(servers)
    }

    /// Every point of a shared ring this handle gave out, as (value, server position), in ring
    /// order (for checks and tools); `None` when it cannot be used.
    pub fn ring_points(&self, ring: &RingView) -> Option<Vec<(u32, usize)>> {
        if ring.file_id != self.file_id {
            return None;
        }
        let points = ring.points(&self.map)?;
        ring.still_valid(&self.map).then_some(points)
    }

    /// Copies and validates the committed table now, whatever is cached (for tools that check a
    /// file, and to measure the cost of a copy).
    pub fn read_uncached(&mut self) -> Result<Snapshot> {
        self.version();
        self.read_table()
    }

    /// Copies and validates the committed table, retrying a bounded number of times when
    /// writers overwrite it during the copy.
    fn read_table(&mut self) -> Result<Snapshot> {
        self.read_table_and_ring().map(|(snapshot, _)| snapshot)
    }

    /// [`Registry::read_table`], with the shared ring of the version read when it is intact.
    fn read_table_and_ring(&mut self) -> Result<(Snapshot, Option<RingView>)> {
        let layout = self.layout;
        for attempt in 0..READ_ATTEMPTS {
            match self.geometry.read(&self.map, &mut self.scratch, |header| {
                layout.slot_image_words(header)
            }) {
                Ok(version) => {
                    let snapshot =
                        format::decode_slot(&self.scratch, self.domain.as_str(), &layout)
                            .map_err(|why| self.corrupt(why))?;
                    let seq_word = self.geometry.slots[(version & 1) as usize];
                    let ring = snapshot.shared_ring.and_then(|r| {
                        RingView::open(
                            &self.map,
                            &layout,
                            r,
                            snapshot.servers.len(),
                            (seq_word, self.scratch[0]),
                            self.file_id,
                        )
                    });
                    return Ok((snapshot, ring));
                }
                Err(ReadError::Lapped) if attempt < 8 => std::hint::spin_loop(),
                Err(ReadError::Lapped) => std::thread::yield_now(),
                Err(ReadError::Corrupt(why)) => return Err(self.corrupt(why)),
            }
        }
        Err(Error::Io {
            op: "read",
            path: self.path.clone(),
            source: std::io::Error::other(
                "writers replaced the table faster than it could be copied",
            ),
        })
    }

    fn corrupt(&self, why: String) -> Error {
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
            let wake = self.map.load_u32(format::WAKE_OFFSET).unwrap_or(0);
            let version = self.version();
            if version > since {
                return Some(version);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.map
                .futex_wait(format::WAKE_OFFSET, wake, left.min(MAX_WAIT_SLICE));
            if self.map.load_u32(format::WAKE_OFFSET) != Some(wake) {
                // A commit (not a time-out): pass the wake-up on.
                self.map.futex_wake(format::WAKE_OFFSET, WAKE_FANOUT);
            }
        }
    }

    /// Runs `change` on the current table (servers and policy) under the writer lock and
    /// publishes the result as one new version (none if `change` left the table as it was). If
    /// `change` fails, nothing is written.
    pub fn transact(&mut self, change: impl FnOnce(&mut Table) -> Result<()>) -> Result<Commit> {
        self.locked(|reg| {
            let (current, ring) = reg.read_table_and_ring()?;
            let mut table = current.table();
            change(&mut table)?;
            if table == current.table() {
                return Ok(Commit::unchanged(current.version));
            }
            reg.publish_locked(
                current.version,
                current.next_id,
                table,
                Some((&current, ring)),
            )
        })
    }

    /// Replaces the whole table in one version, even if the current one is damaged (the way to
    /// repair a file short of deleting it).
    pub fn replace(&mut self, table: &Table) -> Result<Commit> {
        self.locked(|reg| match reg.read_table_and_ring() {
            Ok((current, _)) if current.table() == *table => Ok(Commit::unchanged(current.version)),
            Ok((current, ring)) => reg.publish_locked(
                current.version,
                current.next_id,
                table.clone(),
                Some((&current, ring)),
            ),
            Err(_) => {
                let version = reg.salvaged_version();
                reg.publish_locked(version, 1, table.clone(), None)
            }
        })
    }

    /// Replaces a file whose header is unusable (damaged, truncated) by a new one holding
    /// `table`, under the file's lock. The version continues from the old committed word when
    /// that is still readable. Readers of the old file are told to re-open the path.
    pub fn recreate(dir: impl AsRef<Path>, domain: &Domain, table: &Table) -> Result<Commit> {
        let dir = dir.as_ref();
        let path = domain.path_in(dir);
        let mut table = table.clone();
        check_table(&table, domain)?;
        let file = open_checked(&path, domain, true)?;
        acquire_lock(&file, &path, LockWait::default(), false, |_| None)?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("inspect", &path, e))?
            .len();
        let old = (len >= format::HEADER_LEN as u64)
            .then(|| SharedMap::map(&file, format::HEADER_LEN, true).ok())
            .flatten();
        // The header is unusable, so its format is unknown: the version bits of either seal.
        let last = old
            .as_ref()
            .and_then(|m| m.load(format::COMMITTED_WORD, Ordering::Acquire))
            .map_or(0, |c| (c & VERSION_MASK).min(VERSION_MASK - 1));
        let version = last + 1;
        let capacity = (table.servers.len() as u32).max(format::DEFAULT_CAPACITY);
        let next_id = assign_ids(&mut table.servers, 1, capacity);
        let layout = Layout::new(capacity, now_ms());
        let words = new_file(&layout, domain, version, &table, next_id);
        let tmp = write_temp(dir, domain, &words, FileOwnership::of(&file))?;
        if let Some(old) = &old {
            // MOVED with a valid check: readers of either format follow the move.
            let moved = Seal::Checked.encode(last, true);
            old.store(format::COMMITTED_WORD, moved, Ordering::Release);
        }
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("replace", &path, e)
        })?;
        let published_ns = monotonic_ns();
        if let Some(old) = &old {
            old.fetch_add_u32(format::WAKE_OFFSET, 1);
            old.futex_wake(format::WAKE_OFFSET, WAKE_FIRST);
        }
        let _ = crate::shm::write_unlock(&file);
        Ok(Commit {
            version,
            changed: true,
            published_ns,
        })
    }

    /// Publishes `table` as version `current + 1`; the caller holds the lock. `previous` is the
    /// table it replaces (and that version's shared ring), when it could be read. New servers get
    /// ids and live records; servers that are new or come back up start with no failures.
    fn publish_locked(
        &mut self,
        current: u64,
        next_id: u32,
        mut table: Table,
        previous: Option<(&Snapshot, Option<RingView>)>,
    ) -> Result<Commit> {
        check_table(&table, &self.domain)?;
        if let Some((old, _)) = previous {
            crate::coherence::mark_strays(&old.servers, &old.policy, &mut table, current + 1);
        }
        let needed = table.servers.len();
        let rewrite = needed > self.layout.capacity as usize
            || self.layout.format_version < format::FORMAT_VERSION;
        let capacity = if needed > self.layout.capacity as usize {
            needed
                .max(self.layout.capacity as usize * 2)
                .min(format::MAX_CAPACITY as usize) as u32
        } else {
            self.layout.capacity
        };
        let next_id = assign_ids(&mut table.servers, next_id, capacity);
        let old_servers = previous.map_or(&[][..], |(p, _)| &p.servers[..]);
        let version = if rewrite {
            // A full file grows; a file of an older format is rewritten in ours (same path).
            self.rewrite_locked(current, capacity, &table, next_id)?
        } else {
            let (ring, pending) = self.ring_for(current + 1, &table, previous);
            // The scratch buffer holds the slot of `previous`, just read under the lock.
            let previous_image = previous.map(|_| &self.scratch[..]);
            let image = format::encode_slot(
                current + 1,
                commit_info(),
                &table,
                next_id,
                ring,
                previous_image,
            );
            self.reset_live_records(&table.servers, old_servers);
            let write_ring = || match &pending {
                Some(pending) => pending.write(|at, words| self.map.copy_in(at, words)),
                None => Some(()),
            };
            self.geometry
                .publish_with(&self.map, current, &image, write_ring)
                .ok_or_else(|| self.corrupt("slot outside the file".into()))?
        };
        let published_ns = monotonic_ns();
        self.wake();
        Ok(Commit {
            version,
            changed: true,
            published_ns,
        })
    }

    /// The shared ring version `version` (of `table`) routes with: the previous version's when
    /// its routed servers are the same and its ring is intact (nothing to write), else a new
    /// one for the region the previous version does not use (returned to be written inside the
    /// new slot's seqlock window), derived from the previous ring when it can be. `None` when
    /// it does not fit the region.
    fn ring_for(
        &self,
        version: u64,
        table: &Table,
        previous: Option<(&Snapshot, Option<RingView>)>,
    ) -> (Option<RingRef>, Option<shared_ring::Pending>) {
        let distribution = table.policy.distribution;
        if !distribution.has_ring() {
            return (None, None); // modula and PECL memcache domains have no shared ring
        }
        let members = shared_ring::routed(&table.servers, table.policy.failover);
        if let Some((old, Some(view))) = previous
            && old.policy.distribution == distribution
            && let Some(old_ref) = old.shared_ring
            && shared_ring::same_members(
                &old.servers,
                &shared_ring::routed(&old.servers, old.policy.failover),
                &table.servers,
                &members,
            )
            && view.verify(&self.map)
        {
            return (Some(old_ref), None);
        }
        let slot = previous
            .and_then(|(old, _)| old.shared_ring)
            .map_or(0, |r| 1 - r.slot.min(1));
        let Some(at) = self.layout.ring_words(slot) else {
            return (None, None);
        };
        // Derived from the previous ring when that was of the same distribution.
        let derived = previous.and_then(|(old, view)| {
            let old_members = shared_ring::routed(&old.servers, old.policy.failover);
            let old_ring = (&old.servers[..], &old_members[..]);
            if old.policy.distribution != distribution {
                return None;
            }
            let new_ring = (&table.servers[..], &members[..]);
            shared_ring::derive(&self.map, &view?, distribution, old_ring, new_ring)
        });
        let ring = derived
            .unwrap_or_else(|| distribution.ring(&crate::table::members(&table.servers, &members)));
        match shared_ring::Pending::new(ring, members, version, at, slot) {
            Some(pending) => (Some(pending.reference()), Some(pending)),
            None => (None, None),
        }
    }

    /// Gives servers that are new (not yet owning their record) or up again a fresh live record.
    fn reset_live_records(&self, servers: &[Server], previous: &[Server]) {
        let was_down: std::collections::HashSet<u32> = previous
            .iter()
            .filter(|s| s.state == State::Down)
            .map(|s| s.id)
            .collect();
        for server in servers {
            let Some(word) = self.layout.live_word(server.live) else {
                continue;
            };
            let owned = self
                .map
                .load(word, Ordering::Acquire)
                .is_some_and(|w| w >> 32 == u64::from(server.id));
            if !owned || (was_down.contains(&server.id) && server.state == State::Up) {
                self.map
                    .store(word, format::live_owner(server.id), Ordering::Release);
            }
        }
    }

    /// Writes a new file of `capacity` (in the current format) holding `image` as version
    /// `current + 1` and renames it into place.
    fn rewrite_locked(
        &mut self,
        current: u64,
        capacity: u32,
        table: &Table,
        next_id: u32,
    ) -> Result<u64> {
        let layout = Layout::new(capacity, self.layout.created_ms);
        let mut words = new_file(&layout, &self.domain, current + 1, table, next_id);
        self.carry_shared_records(&layout, &mut words, &table.servers);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = write_temp(dir, &self.domain, &words, FileOwnership::of(&self.file))?;
        self.rename_into_place(&tmp, current)?;
        self.reopen()?;
        Ok(current + 1)
    }

    /// Puts the new file `tmp` in place of ours (whose committed version is `current`): MOVED
    /// set first, so that readers re-open the path, and waiters woken after.
    fn rename_into_place(&self, tmp: &Path, current: u64) -> Result<()> {
        self.store_committed(current, true);
        if let Err(e) = fs::rename(tmp, &self.path) {
            let _ = fs::remove_file(tmp);
            self.store_committed(current, false);
            return Err(Error::io("replace", &self.path, e));
        }
        self.wake();
        Ok(())
    }

    /// Copies into a new file's image what is shared outside the slots: each server's live
    /// record (failure count, probe lease) where it is still its own, and the clients records.
    fn carry_shared_records(&self, layout: &Layout, words: &mut [u64], servers: &[Server]) {
        for server in servers {
            let (Some(from), Some(to)) = (
                self.layout.live_word(server.live),
                layout.live_word(server.live),
            ) else {
                continue;
            };
            let mut record = [0u64; 3];
            let owned = self.map.copy_out(from, &mut record).is_some()
                && record[0] & !0xffff_ffff == format::live_owner(server.id);
            if owned && let Some(slot) = words.get_mut(to..to + 3) {
                slot.copy_from_slice(&record);
            }
        }
        for slot in 0..format::CLIENT_SLOTS {
            let (Some(from), Some(to)) = (self.layout.client_word(slot), layout.client_word(slot))
            else {
                break;
            };
            let mut record = [0u64; format::CLIENT_LEN / 8];
            if self.map.copy_out(from, &mut record).is_some()
                && let Some(target) = words.get_mut(to..to + record.len())
            {
                target.copy_from_slice(&record);
            }
        }
    }

    /// Counts a failed operation against `server` (of a current snapshot) in the shared live
    /// record, and returns the consecutive failures now counted. `None` when this handle cannot
    /// write the mapping (read-only access) or the record belongs to another server (the table
    /// changed since `server` was read).
    pub fn record_failure(&self, server: &Server) -> Option<u32> {
        let word = self.layout.live_word(server.live)?;
        let owner = format::live_owner(server.id);
        let mut seen = self.map.load(word, Ordering::Acquire)?;
        for _ in 0..64 {
            if seen & !0xffff_ffff != owner {
                return None;
            }
            let failures = (seen as u32).saturating_add(1);
            match self
                .map
                .compare_exchange(word, seen, owner | u64::from(failures))?
            {
                Ok(_) => {
                    self.map.store(word + 1, now_ms(), Ordering::Relaxed);
                    return Some(failures);
                }
                Err(now) => seen = now,
            }
        }
        None
    }

    /// Resets `server`'s consecutive failures after a success (one load when already zero, so
    /// the common path does not write shared memory).
    pub fn record_success(&self, server: &Server) {
        let Some(word) = self.layout.live_word(server.live) else {
            return;
        };
        let owner = format::live_owner(server.id);
        if let Some(seen) = self.map.load(word, Ordering::Relaxed)
            && seen != owner
            && seen & !0xffff_ffff == owner
        {
            let _ = self.map.compare_exchange(word, seen, owner);
        }
    }

    /// The consecutive failures counted for `server` (0 if its record is not its own).
    pub fn failures(&self, server: &Server) -> u32 {
        self.layout
            .live_word(server.live)
            .and_then(|word| self.map.load(word, Ordering::Acquire))
            .filter(|w| w & !0xffff_ffff == format::live_owner(server.id))
            .map_or(0, |w| w as u32)
    }

    /// Takes the right to probe down `server` now, for every process on the host: succeeds for
    /// one caller per `interval_s` (a CAS on the lease word of the server's live record), and
    /// not before `interval_s` after the server went down. `false` for read-only handles.
    pub fn try_probe_lease(&self, server: &Server, interval_s: u32) -> bool {
        let Some(word) = self.owned_live_word(server) else {
            return false;
        };
        let now = now_ms();
        let interval_ms = u64::from(interval_s) * 1000;
        if now < server.since_ms.saturating_add(interval_ms) {
            return false;
        }
        let Some(last) = self.map.load(word + 2, Ordering::Acquire) else {
            return false;
        };
        if now < last.saturating_add(interval_ms) {
            return false;
        }
        matches!(self.map.compare_exchange(word + 2, last, now), Some(Ok(_)))
    }

    /// Holds the probe lease of down `server` as if taken at `at_ms` (a later time than now
    /// keeps every process on the host from probing it until `at_ms` plus its interval). The
    /// fleet agent does this: across hosts it decides in etcd who probes. Never moves the lease
    /// back; `false` for read-only handles or a record that is not the server's.
    pub fn hold_probe_lease(&self, server: &Server, at_ms: u64) -> bool {
        let Some(word) = self.owned_live_word(server) else {
            return false;
        };
        for _ in 0..64 {
            let Some(last) = self.map.load(word + 2, Ordering::Acquire) else {
                return false;
            };
            if last >= at_ms {
                return true;
            }
            if matches!(
                self.map.compare_exchange(word + 2, last, at_ms),
                Some(Ok(_))
            ) {
                return true;
            }
        }
        false
    }

    /// The first word of `server`'s live record, if the record is (still) the server's.
    fn owned_live_word(&self, server: &Server) -> Option<usize> {
        let word = self.layout.live_word(server.live)?;
        self.map
            .load(word, Ordering::Acquire)
            .filter(|w| w & !0xffff_ffff == format::live_owner(server.id))
            .map(|_| word)
    }

    /// The fleet agent of this domain and whether it reaches etcd (see [`AgentLink`]).
    pub fn agent_link(&self) -> AgentLink {
        let agent = self
            .map
            .load(format::AGENT_WORD, Ordering::Acquire)
            .filter(|&w| w != 0)
            .map(crate::processes::ProcessId::from_word);
        let link = self
            .map
            .load(format::AGENT_LINK_WORD, Ordering::Acquire)
            .unwrap_or(0);
        AgentLink {
            agent,
            connected: link >> 63 == 1,
            since_ms: link & !(1 << 63),
        }
    }

    /// Records this process as the domain's fleet agent, reaching etcd or not since `since_ms`
    /// (the agent calls it on every change of its link and after the file was replaced).
    pub fn set_agent_link(&self, connected: bool, since_ms: u64) {
        if let Some(me) = crate::processes::ProcessId::current() {
            self.map
                .store(format::AGENT_WORD, me.to_word(), Ordering::Release);
        }
        let link = (u64::from(connected) << 63) | (since_ms & !(1 << 63));
        self.map
            .store(format::AGENT_LINK_WORD, link, Ordering::Release);
    }

    /// Forgets the fleet agent (it stopped cleanly).
    pub fn clear_agent_link(&self) {
        self.map.store(format::AGENT_WORD, 0, Ordering::Release);
        self.map
            .store(format::AGENT_LINK_WORD, 0, Ordering::Release);
    }

    /// Claims a record in the clients region for this process (see `mcadmin clients`); `None`
    /// when read-only or all records are taken by live processes.
    pub fn register_client(&self) -> Option<usize> {
        let me = crate::processes::ProcessId::current()?;
        for slot in 0..format::CLIENT_SLOTS {
            let word = self.layout.client_word(slot)?;
            let seen = self.map.load(word, Ordering::Acquire)?;
            let free = seen == 0 || !crate::processes::ProcessId::from_word(seen).is_alive();
            if free
                && matches!(
                    self.map.compare_exchange(word, seen, me.to_word()),
                    Some(Ok(_))
                )
            {
                self.map
                    .copy_in(word + 3, &crate::processes::comm_words())?;
                return Some(slot);
            }
        }
        None
    }

    /// Records that this process used table `version` now (its clients record `slot`).
    pub fn touch_client(&self, slot: usize, version: u64) {
        if let Some(word) = self.layout.client_word(slot) {
            self.map.store(word + 1, version, Ordering::Relaxed);
            self.map.store(word + 2, now_ms(), Ordering::Relaxed);
        }
    }

    /// Releases a clients record claimed by [`Registry::register_client`].
    pub fn release_client(&self, slot: usize) {
        if let (Some(word), Some(me)) = (
            self.layout.client_word(slot),
            crate::processes::ProcessId::current(),
        ) {
            let _ = self.map.compare_exchange(word, me.to_word(), 0);
        }
    }

    /// The processes that have the domain open; records of dead processes are freed (when this
    /// handle may write) and left out.
    pub fn process_records(&self) -> Vec<crate::processes::ProcessRecord> {
        let mut out = Vec::new();
        for slot in 0..format::CLIENT_SLOTS {
            let Some(word) = self.layout.client_word(slot) else {
                break;
            };
            let mut record = [0u64; 8];
            if self.map.copy_out(word, &mut record).is_none() || record[0] == 0 {
                continue;
            }
            let id = crate::processes::ProcessId::from_word(record[0]);
            if !id.is_alive() {
                let _ = self.map.compare_exchange(word, record[0], 0);
                continue;
            }
            out.push(crate::processes::ProcessRecord::from_record(id, &record));
        }
        out
    }

    /// Whether this handle maps the file writable (can count failures and publish).
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    fn wake(&self) {
        self.map.fetch_add_u32(format::WAKE_OFFSET, 1);
        self.map.futex_wake(format::WAKE_OFFSET, WAKE_FIRST);
    }
}

fn check_table(table: &Table, domain: &Domain) -> Result<()> {
    if table.policy.failure_limit == 0 {
        return Err(Error::invalid(
            "failure limit",
            "0",
            "must be from 1 to 255",
        ));
    }
    let count = table.servers.len();
    if count > format::MAX_CAPACITY as usize {
        let max = format::MAX_CAPACITY as usize;
        return Err(Error::TooManyServers { count, max });
    }
    match first_duplicate(&table.servers) {
        Some(server) => Err(Error::ServerExists {
            server: server.address.to_string(),
            domain: domain.to_string(),
        }),
        None => Ok(()),
    }
}

/// Gives servers without an id (new ones) the next ids and the lowest free live records below
/// `capacity`; returns the next id after them.
fn assign_ids(servers: &mut [Server], mut next_id: u32, capacity: u32) -> u32 {
    let mut used: Vec<bool> = vec![false; capacity as usize];
    for server in servers.iter().filter(|s| s.id != 0) {
        if let Some(slot) = used.get_mut(server.live as usize) {
            *slot = true;
        }
    }
    let mut free = (0..capacity).filter(|&i| !used[i as usize]);
    for server in servers.iter_mut().filter(|s| s.id == 0) {
        server.id = next_id;
        next_id += 1;
        server.live = free.next().unwrap_or(0);
    }
    next_id
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This process as a writer: now, pid, effective uid.
pub fn commit_info() -> CommitInfo {
    CommitInfo {
        changed_ms: now_ms(),
        pid: std::process::id(),
        uid: effective_uid(),
    }
}

/// Opens a registry file without following symlinks, refusing anything but a regular file, and
/// in a world-writable directory anything not owned by us or root.
fn open_checked(path: &Path, domain: &Domain, writable: bool) -> Result<File> {
    // O_NONBLOCK: opening a FIFO planted at the path must not wait for a writer (it is then
    // refused below as not a regular file); on a regular file the flag changes nothing.
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => Error::NoDomain {
                domain: domain.to_string(),
                path: path.to_path_buf(),
            },
            Some(libc::ELOOP) => Error::UnsafeFile {
                path: path.to_path_buf(),
                why: "it is a symbolic link".into(),
            },
            _ if writable => Error::io("open for writing", path, e),
            _ => Error::io("open for reading", path, e),
        })?;
    let meta = file.metadata().map_err(|e| Error::io("inspect", path, e))?;
    let unsafe_file = |why: String| Error::UnsafeFile {
        path: path.to_path_buf(),
        why,
    };
    if !meta.file_type().is_file() {
        return Err(unsafe_file("not a regular file".into()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir_meta = fs::metadata(dir).map_err(|e| Error::io("inspect", dir, e))?;
    let me = effective_uid();
    if dir_meta.mode() & 0o002 != 0 && meta.uid() != me && meta.uid() != 0 {
        return Err(unsafe_file(format!(
            "owned by uid {} in the world-writable directory {} (only files of uid {me} or root are trusted there)",
            meta.uid(),
            dir.display()
        )));
    }
    Ok(file)
}

/// Creates `dir` if needed and an empty table for `domain` in it; losing a creation race to
/// another process is fine (the file is complete before it gets its name).
fn create_empty(dir: &Path, domain: &Domain, ownership: FileOwnership) -> Result<()> {
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| Error::io("create directory", dir, e))?;
    }
    let layout = Layout::new(format::DEFAULT_CAPACITY, now_ms());
    let words = new_file(&layout, domain, 0, &Table::default(), 1);
    let tmp = write_temp(dir, domain, &words, ownership)?;
    let path = domain.path_in(dir);
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(Error::io("create", &path, e))
        }
        _ => Ok(()),
    }
}

/// The words of a new file laid out as `layout` holding `table` as version `version`, with its
/// shared ring in region 0.
fn new_file(
    layout: &Layout,
    domain: &Domain,
    version: u64,
    table: &Table,
    next_id: u32,
) -> Vec<u64> {
    // A modula domain has no ring.
    let distribution = table.policy.distribution;
    let ringed = distribution.has_ring();
    let pending = layout.ring_words(0).filter(|_| ringed).and_then(|at| {
        let members = shared_ring::routed(&table.servers, table.policy.failover);
        let ring = distribution.ring(&crate::table::members(&table.servers, &members));
        shared_ring::Pending::new(ring, members, version, at, 0)
    });
    let reference = pending.as_ref().map(shared_ring::Pending::reference);
    let image = format::encode_slot(version, commit_info(), table, next_id, reference, None);
    let mut words = layout.file_image(domain.as_str(), version, &image, &table.servers);
    if let Some(pending) = pending {
        let written = pending.write(|at, chunk| {
            words.get_mut(at..at + chunk.len())?.copy_from_slice(chunk);
            Some(())
        });
        debug_assert!(written.is_some(), "the layout holds its rings");
    }
    words
}

/// Removes the temporary files (see [`write_temp`]) of `domain` left by writers that were killed
/// while writing one: those whose process is gone. A live process's file is its own business
/// (it is writing it now); a reused pid only delays the removal. Best effort: errors are
/// ignored (the files are garbage, never read).
fn remove_orphan_temps(dir: &Path, domain: &Domain) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{}.", domain.as_str());
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Writes a complete registry file under a temporary name in `dir` (leading '.', which no domain
/// name has) and returns that name.
fn write_temp(
    dir: &Path,
    domain: &Domain,
    words: &[u64],
    ownership: FileOwnership,
) -> Result<PathBuf> {
    let tmp = dir.join(format!(".{}.{}.tmp", domain.as_str(), std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(|e| Error::io("create a registry file in", dir, e))?;
    let written = file
        .set_permissions(fs::Permissions::from_mode(ownership.mode))
        .and_then(|()| match ownership.gid {
            Some(gid) => std::os::unix::fs::fchown(&file, None, Some(gid)),
            None => Ok(()),
        })
        .and_then(|()| {
            // The rings' unused point space is zeros: leave it a hole.
            let used = words.iter().rposition(|&w| w != 0).map_or(0, |i| i + 1);
            file.write_all(bytemuck::cast_slice(&words[..used]))?;
            file.set_len(words.len() as u64 * 8)
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("write", &tmp, e));
    }
    Ok(tmp)
}
