//! The writer: transactions under the writer lock (re-read the current table, apply a change,
//! publish it as one new version with its shared ring), whole-table replacement and repair,
//! and growth (a larger file built beside the old one and put in place by `relocate`).

use std::path::Path;
use std::sync::atomic::Ordering;

use super::Registry;
use super::files::{FileOwnership, new_file, open_checked};
use super::lock::{LockWait, acquire_lock};
use super::reader::Read;
use super::relocate::{Leaving, Temp};
use crate::clock::now_ms;
use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::format::{self, Layout, RingRef};
use crate::placement::buckets;
use crate::seqlock::{Seal, VERSION_MASK, Words};
use crate::shared_ring;
use crate::shm::{SharedMap, monotonic_ns};
use crate::table::{CommitInfo, Server, State, Table, first_duplicate};

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

impl Commit {
    pub fn unchanged(version: u64) -> Commit {
        Commit {
            version,
            changed: false,
            published_ns: 0,
        }
    }
}

impl Registry {
    /// Runs `change` on the current table (servers and policy) under the writer lock and
    /// publishes the result as one new version (none if `change` left the table as it was). If
    /// `change` fails, nothing is written.
    /// A file another process truncated is not changed in place: an error says so (repair it
    /// with [`Registry::replace`], as `mcadmin load` does).
    pub fn transact(&mut self, change: impl FnOnce(&mut Table) -> Result<()>) -> Result<Commit> {
        self.locked(|reg| {
            if reg.short() {
                return Err(reg.truncated());
            }
            let current = reg.read_table_and_ring()?;
            let mut table = current.snapshot.table();
            change(&mut table)?;
            if table == current.snapshot.table() {
                return Ok(Commit::unchanged(current.snapshot.version));
            }
            let (version, next_id) = (current.snapshot.version, current.snapshot.next_id);
            reg.publish_locked(version, next_id, table, Some(&current))
        })
    }

    /// Replaces the whole table in one version, even if the current one is damaged (the way to
    /// repair a file short of deleting it). A file another process truncated is replaced by a
    /// new one (see `relocate`), its version continuing from the last this handle knew.
    pub fn replace(&mut self, table: &Table) -> Result<Commit> {
        self.locked(|reg| {
            if reg.short() {
                let (version, next_id) = reg.salvaged_from_short(table);
                return reg.publish_locked(version, next_id, table.clone(), None);
            }
            match reg.read_table_and_ring() {
                Ok(current) if current.snapshot.table() == *table => {
                    Ok(Commit::unchanged(current.snapshot.version))
                }
                Ok(current) => {
                    let (version, next_id) = (current.snapshot.version, current.snapshot.next_id);
                    reg.publish_locked(version, next_id, table.clone(), Some(&current))
                }
                Err(_) => {
                    let version = reg.salvaged_version();
                    reg.publish_locked(version, 1, table.clone(), None)
                }
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
        let committed = old
            .as_ref()
            .and_then(|m| m.load(format::COMMITTED_WORD, Ordering::Acquire));
        // The header is unusable, so its format is unknown: the version bits of either seal.
        let last = committed.map_or(0, |c| (c & VERSION_MASK).min(VERSION_MASK - 1));
        let version = last + 1;
        let capacity = (slot_entries(&table) as u32).max(format::DEFAULT_CAPACITY);
        let next_id = assign_ids(&mut table.servers, 1, capacity);
        let layout = Layout::new(capacity, now_ms());
        let words = new_file(&layout, domain, version, &table, next_id);
        let temp = Temp::write(dir, domain, &words, FileOwnership::of(&file))?;
        let leaving = Leaving {
            map: old.as_ref(),
            // MOVED with a valid check: readers of either format follow the move.
            moved: Seal::Checked.encode(last, true),
            restored: committed.unwrap_or(0),
        };
        let placed = temp.put_in_place(&path, leaving)?;
        let _ = crate::shm::write_unlock(&file);
        Ok(Commit {
            version,
            changed: true,
            published_ns: placed.renamed_ns,
        })
    }

    /// Publishes `table` as version `current + 1`; the caller holds the lock. `previous` is the
    /// table it replaces (and that version's shared ring), when it could be read. New servers get
    /// ids and live records; servers that are new or come back up start with no failures.
    pub(super) fn publish_locked(
        &mut self,
        current: u64,
        next_id: u32,
        mut table: Table,
        previous: Option<&Read>,
    ) -> Result<Commit> {
        check_table(&table, &self.domain)?;
        if let Some(old) = previous.map(|p| &p.snapshot) {
            let buckets = old.buckets.as_ref();
            crate::coherence::mark_strays(
                &old.servers,
                &old.policy,
                buckets,
                &mut table,
                current + 1,
            );
        }
        let needed = slot_entries(&table);
        // A truncated file (see `replace`) is written anew too: its pages may not be ours to
        // write any more.
        let rewrite = needed > self.layout.capacity as usize
            || self.layout.format_version < format::FORMAT_VERSION
            || self.short();
        let capacity = if needed > self.layout.capacity as usize {
            needed
                .max(self.layout.capacity as usize * 2)
                .min(format::MAX_CAPACITY as usize) as u32
        } else {
            self.layout.capacity
        };
        let next_id = assign_ids(&mut table.servers, next_id, capacity);
        let old_servers = previous.map_or(&[][..], |p| &p.snapshot.servers[..]);
        let version = if rewrite {
            // A full file grows; a file of an older format is rewritten in ours (same path).
            self.rewrite_locked(current, capacity, &table, next_id)?
        } else {
            let (ring, pending) = self.ring_for(current + 1, &table, previous);
            // The scratch buffer holds the slot of `previous`, just read under the lock.
            let previous_image = previous.map(|_| &self.scratch[..]);
            let image = format::encode_slot(
                current + 1,
                CommitInfo::now(),
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
    pub(super) fn ring_for(
        &mut self,
        version: u64,
        table: &Table,
        previous: Option<&Read>,
    ) -> (Option<RingRef>, Option<shared_ring::RingToWrite>) {
        let distribution = table.policy.distribution;
        if !distribution.has_ring() {
            return (None, None); // modula and PECL memcache domains have no shared ring
        }
        let members = crate::table::routed(&table.servers, table.policy.failover);
        if let Some(Read {
            snapshot: old,
            ring: Some(old_ref),
            view: Some(view),
        }) = previous
            && old.policy.distribution == distribution
            && shared_ring::same_members(
                &old.servers,
                &crate::table::routed(&old.servers, old.policy.failover),
                &table.servers,
                &members,
            )
            && view.verify(&self.map)
        {
            return (Some(*old_ref), None);
        }
        let slot = previous
            .and_then(|p| p.ring)
            .map_or(0, |r| 1 - r.slot.min(1));
        let Some(at) = self.layout.ring_words(slot) else {
            return (None, None);
        };
        // Derived from the previous ring when that was of the same distribution.
        let derived = previous.and_then(
            |Read {
                 snapshot: old,
                 view,
                 ..
             }| {
                let old_members = crate::table::routed(&old.servers, old.policy.failover);
                let old_ring = (&old.servers[..], &old_members[..]);
                if old.policy.distribution != distribution {
                    return None;
                }
                let new_ring = (&table.servers[..], &members[..]);
                shared_ring::derive(&self.map, view.as_ref()?, distribution, old_ring, new_ring)
            },
        );
        let ring = match derived {
            Some(ring) => {
                self.work.rings_derived += 1;
                ring
            }
            None => {
                let ring = distribution.ring(&crate::table::members(&table.servers, &members));
                self.work.rings_built += 1;
                self.work.ring_points_built += ring.len() as u64;
                ring
            }
        };
        match shared_ring::RingToWrite::new(ring, members, version, at, slot) {
            Some(pending) => (Some(pending.reference()), Some(pending)),
            None => (None, None),
        }
    }

    /// Where a repair of a truncated file continues (version, next server id): past what this
    /// handle knew, what the words the file still has say, and the ids `table` holds. (A later
    /// version than both, lost with the truncated words, may be published again, as with
    /// [`Registry::recreate`].)
    fn salvaged_from_short(&self, table: &Table) -> (u64, u32) {
        let (known, next_id) = self
            .cache
            .as_ref()
            .map_or((0, 1), |c| (c.version, c.next_id));
        let known = known.max(self.seen.map_or(0, |(_, version)| version));
        // Our mapping may be poisoned: map what is left of the file, read-only, to look.
        let left = self.file.metadata().map_or(0, |m| m.len()) as usize & !7;
        let remaining = (left > 0)
            .then(|| SharedMap::map(&self.file, left, false).ok())
            .flatten();
        let salvaged = remaining.map_or(0, |map| self.salvaged_version_in(&map));
        let next_id = table
            .servers
            .iter()
            .map(|s| s.id + 1)
            .fold(next_id, u32::max);
        (salvaged.max(known), next_id)
    }

    /// Gives servers that are new (not yet owning their record) or up again a fresh live record.
    pub(super) fn reset_live_records(&self, servers: &[Server], previous: &[Server]) {
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

    /// Writes a new file of `capacity` (in the current format) holding `table` as version
    /// `current + 1` and puts it in place of ours (see `relocate`).
    pub(super) fn rewrite_locked(
        &mut self,
        current: u64,
        capacity: u32,
        table: &Table,
        next_id: u32,
    ) -> Result<u64> {
        let layout = Layout::new(capacity, self.layout.created_ms);
        let mut words = new_file(&layout, &self.domain, current + 1, table, next_id);
        self.carry_shared_records(&layout, &mut words, &table.servers);
        self.replace_file(&words, current)?;
        Ok(current + 1)
    }

    /// Copies into a new file's image what is shared outside the slots: each server's live
    /// record (failure count, probe lease) where it is still its own, and the clients records.
    pub(super) fn carry_shared_records(
        &self,
        layout: &Layout,
        words: &mut [u64],
        servers: &[Server],
    ) {
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
}

/// Entries' worth of slot space `table` needs: its servers, and its bucket map after them.
pub(super) fn slot_entries(table: &Table) -> usize {
    table.servers.len() + format::map_entries(table)
}

pub(super) fn check_table(table: &Table, domain: &Domain) -> Result<()> {
    check_buckets(table)?;
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
    if slot_entries(table) > format::MAX_CAPACITY as usize {
        return Err(Error::BadBuckets {
            why: format!(
                "{count} servers and this map do not fit a slot of {} entries: use fewer buckets or replicas",
                format::MAX_CAPACITY
            ),
        });
    }
    for server in &table.servers {
        if let Err(why) = format::check_entry(server) {
            return Err(Error::invalid("server", &server.address.to_string(), why));
        }
    }
    match first_duplicate(&table.servers) {
        Some(server) => Err(Error::ServerExists {
            server: server.address.to_string(),
            domain: domain.to_string(),
        }),
        None => Ok(()),
    }
}

/// A `vbucket` domain has a bucket map that names its servers; no other has one.
fn check_buckets(table: &Table) -> Result<()> {
    let distribution = table.policy.distribution;
    match (&table.buckets, distribution.has_buckets()) {
        (None, false) => Ok(()),
        (Some(_), true) if table.servers.len() > buckets::MAX_SERVERS => Err(Error::BadBuckets {
            why: format!(
                "a vbucket domain has at most {} servers (a map names them in 16 bits)",
                buckets::MAX_SERVERS
            ),
        }),
        (Some(map), true) => map
            .check(table.servers.len())
            .map_err(|why| Error::BadBuckets { why }),
        (None, true) => Err(Error::BadBuckets {
            why: "a vbucket domain needs one: `mcadmin buckets balance` or `buckets load`".into(),
        }),
        (Some(_), false) => Err(Error::BadBuckets {
            why: format!(
                "a {} domain has none (a map goes with the vbucket distribution)",
                distribution.as_str()
            ),
        }),
    }
}

/// Gives servers without an id (new ones) the next ids and the lowest free live records below
/// `capacity`; returns the next id after them.
pub(super) fn assign_ids(servers: &mut [Server], mut next_id: u32, capacity: u32) -> u32 {
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

#[cfg(test)]
mod tests;
