//! The reader: lock-free snapshots of the committed version (whole, or as a change of the
//! cached one when the slot says which entries differ), and lookups in the shared ring of the
//! version read. Readers take no lock and are never blocked by a writer, live or dead (see
//! [`crate::seqlock`]).

use std::sync::Arc;

use super::Registry;
use crate::error::{Error, Result};
use crate::format::{self, RingRef, RingWords};
use crate::seqlock::ReadError;
use crate::shared_ring::RingView;
use crate::table::Snapshot;

/// A reader's copy buffer larger than this (a slot of ~120 servers) is let go after a full read.
const SCRATCH_KEPT: usize = 8192;
/// Attempts at copying a slot before a reader lapped by writers gives up (and keeps serving its
/// last good snapshot).
const READ_ATTEMPTS: u32 = 100;

/// One version as read from the file: its table, where its shared ring lies, and a view of
/// that ring when it is intact.
pub(super) struct Read {
    pub(super) snapshot: Snapshot,
    pub(super) ring: Option<RingRef>,
    pub(super) view: Option<RingView>,
}

impl Registry {
    /// The current table. Returns the cached snapshot without copying when the version has not
    /// moved; otherwise copies and validates the committed slot. If that fails (writers lapping
    /// us, a damaged slot, a file truncated under us) a handle that has a good snapshot keeps
    /// serving it; a fresh handle gets the error.
    pub fn snapshot(&mut self) -> Result<Arc<Snapshot>> {
        self.current_snapshot()
            .or_else(|err| self.cache.clone().ok_or(err))
    }

    /// Like [`Registry::snapshot`], but a failed copy is an error even when an older snapshot
    /// is cached: the snapshot returned is always the one of [`Registry::version`]. While the
    /// file is truncated under this handle (see `shm`), the error says so.
    pub fn current_snapshot(&mut self) -> Result<Arc<Snapshot>> {
        let version = self.version();
        if self.damage {
            return Err(self.damage_error());
        }
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
        let read = read?;
        let snapshot = Arc::new(read.snapshot);
        self.cache = Some(snapshot.clone());
        self.work.shared_rings += u64::from(read.view.is_some());
        self.cache_ring = read.view;
        self.cache_ring_ref = read.ring;
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
    pub(super) fn read_delta(&mut self) -> Option<Arc<Snapshot>> {
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
        self.work.bytes_copied += ((header.len() + entries.len()) * 8) as u64;
        let cache = self.cache.as_mut()?;
        if Arc::strong_count(cache) > 1 {
            // Someone still holds the cached version: it is copied whole before the change.
            self.work.servers_cloned += cache.servers.len() as u64;
        }
        let snapshot = Arc::make_mut(cache);
        let ring = format::apply_delta(snapshot, &header, delta, &entries, &layout).ok()?;
        self.work.delta_reads += 1;
        self.work.entries_decoded += (delta.end - delta.first) as u64;
        self.cache_delta = Some(delta);
        self.cache_ring_ref = ring;
        let seq = (self.geometry.slots[(version & 1) as usize], header[0]);
        self.cache_ring = ring.and_then(|r| {
            RingView::open(
                &self.map,
                &layout,
                r,
                snapshot.servers.len(),
                seq,
                self.file_id,
            )
        });
        self.work.shared_rings += u64::from(self.cache_ring.is_some());
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
    pub(super) fn read_table(&mut self) -> Result<Snapshot> {
        self.read_table_and_ring().map(|read| read.snapshot)
    }

    /// Where the current snapshot's shared ring lies in the file (format 3, ketama
    /// distributions; `None`: readers build the ring): its reference and its region's words,
    /// for tools and checks of the format.
    pub fn ring_location(&self) -> Option<(RingRef, RingWords)> {
        let reference = self.cache_ring_ref?;
        Some((reference, self.layout.ring_words(reference.slot)?))
    }

    /// [`Registry::read_table`], with where the version's shared ring lies and a view of it
    /// when it is intact.
    pub(super) fn read_table_and_ring(&mut self) -> Result<Read> {
        let layout = self.layout;
        for attempt in 0..READ_ATTEMPTS {
            match self.geometry.read(&self.map, &mut self.scratch, |header| {
                layout.slot_image_words(header)
            }) {
                Ok(version) => {
                    let (snapshot, ring) =
                        format::decode_slot(&self.scratch, self.domain.as_str(), &layout)
                            .map_err(|why| self.corrupt(why))?;
                    self.work.whole_reads += 1;
                    self.work.entries_decoded += snapshot.servers.len() as u64;
                    self.work.bytes_copied += (self.scratch.len() * 8) as u64;
                    let seq_word = self.geometry.slots[(version & 1) as usize];
                    let view = ring.and_then(|r| {
                        RingView::open(
                            &self.map,
                            &layout,
                            r,
                            snapshot.servers.len(),
                            (seq_word, self.scratch[0]),
                            self.file_id,
                        )
                    });
                    return Ok(Read {
                        snapshot,
                        ring,
                        view,
                    });
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

    /// The file fails a check for `why`; when it is shorter than its table needs, or a
    /// truncation faulted on our mapping, that is the cause to name (what was read were the
    /// zeros it left).
    pub(super) fn corrupt(&self, why: String) -> Error {
        if self.short() {
            return self.truncated();
        }
        Error::Corrupt {
            path: self.path.clone(),
            why,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::OpenOptionsExt;

    use super::super::files::new_file;
    use crate::address::Address;
    use crate::domain::Domain;
    use crate::error::Error;
    use crate::format::{ENTRY_LEN, Layout, SLOT_HEADER_LEN};
    use crate::registry::Registry;
    use crate::table::{Server, Table};

    /// A file image made here, byte for byte: version 7 of a three-server table.
    fn image(domain: &Domain) -> (Vec<u8>, Table) {
        let mut table = Table::default();
        for (i, host) in ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"]
            .iter()
            .enumerate()
        {
            table.servers.push(Server {
                id: i as u32 + 1,
                live: i as u32,
                ..Server::new(Address::parse(host).unwrap())
            });
        }
        let words = new_file(&Layout::new(4, 1), domain, 7, &table, 4);
        (bytemuck::cast_slice(&words).to_vec(), table)
    }

    fn write(dir: &std::path::Path, domain: &Domain, bytes: &[u8]) {
        let path = domain.path_in(dir);
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
            .unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
    }

    #[test]
    fn a_reader_reads_the_table_a_file_image_holds() {
        let dir = tempfile::tempdir().unwrap();
        let domain = Domain::new("r").unwrap();
        let (bytes, table) = image(&domain);
        write(dir.path(), &domain, &bytes);
        let mut reader = Registry::open(dir.path(), &domain).unwrap();
        let snapshot = reader.snapshot().unwrap();
        assert_eq!((snapshot.version, snapshot.next_id), (7, 4));
        assert_eq!(snapshot.table().servers, table.servers);
        assert!(reader.ring_location().is_some(), "the image holds its ring");
    }

    /// A flipped byte in the committed slot is never read as another table: the reader says
    /// the file is damaged (sampled over the slot's header and entries).
    #[test]
    fn a_reader_refuses_a_damaged_slot() {
        let dir = tempfile::tempdir().unwrap();
        let domain = Domain::new("d").unwrap();
        let (bytes, table) = image(&domain);
        let geometry = Layout::new(4, 1).geometry();
        let slot = geometry.slots[(7 & 1) as usize] * 8;
        // The slot's sequence word (8 bytes) is the seqlock's, not the table's: skip it.
        let mut refused = 0;
        let end = slot + 8 + SLOT_HEADER_LEN + 3 * ENTRY_LEN;
        for offset in (slot + 8..end).step_by(7) {
            let mut damaged = bytes.clone();
            damaged[offset] ^= 0x40;
            write(dir.path(), &domain, &damaged);
            match Registry::open(dir.path(), &domain).and_then(|mut r| r.snapshot()) {
                Ok(snapshot) => assert_eq!(
                    snapshot.table().servers,
                    table.servers,
                    "byte {offset} flipped, and a different table was read"
                ),
                Err(Error::Corrupt { .. }) => refused += 1,
                Err(other) => panic!("byte {offset}: {other}"),
            }
        }
        assert!(refused > 100, "only {refused} damaged bytes were noticed");
    }
}
