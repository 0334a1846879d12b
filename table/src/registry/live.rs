//! The live records: the host-wide failure view. Per server, a failure count (compare-and-swap,
//! outside the seqlock: failures are counted by every process without taking the writer lock)
//! and the retry-probe lease that lets one process per host probe a down server per interval.

use std::sync::atomic::Ordering;

use super::Registry;
use crate::format::{self, Layout};
use crate::seqlock::Words;
use crate::shm::SharedMap;
use crate::table::Server;

/// A domain's live records, as one handle maps them ([`Registry::live`]): the shared failure
/// view every process on the host counts into and reads.
pub struct LiveRecords<'a> {
    map: &'a SharedMap,
    layout: &'a Layout,
}

impl Registry {
    /// The live records of this handle's file: failure counts and probe leases.
    pub fn live(&self) -> LiveRecords<'_> {
        LiveRecords {
            map: &self.map,
            layout: &self.layout,
        }
    }
}

impl LiveRecords<'_> {
    /// Counts a failed operation against `server` (of a current snapshot) in the shared live
    /// record, and returns the consecutive failures now counted. `None` when this handle cannot
    /// write the mapping (read-only access) or the record belongs to another server (the table
    /// changed since `server` was read). `now_ms` is kept as the time of the last failure.
    pub fn record_failure(&self, server: &Server, now_ms: u64) -> Option<u32> {
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
                    self.map.store(word + 1, now_ms, Ordering::Relaxed);
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

    /// Takes the right to probe down `server` now, for every process on the host, when a probe
    /// is due ([`Server::probe_due`], the last probe being the lease word's time): one caller
    /// per retry interval wins (a CAS on the lease word of the server's live record). `false`
    /// for read-only handles, and for a server no probe may bring back. `now` is the time in
    /// ms since the Unix epoch.
    pub fn try_probe_lease(&self, server: &Server, now: u64) -> bool {
        let Some(word) = self.owned_live_word(server) else {
            return false;
        };
        let Some(last) = self.map.load(word + 2, Ordering::Acquire) else {
            return false;
        };
        if server.probe_due(now, last).is_none() {
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
}
