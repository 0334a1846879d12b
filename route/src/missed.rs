//! What down servers missed, for the `replay` rejoin policy: every write records its key in the
//! domain's invalidation log ([`mcshm_table::registry::Invalidations`]) for each down server
//! that should have had it (the router decides which: [`crate::Router`]'s plan of the write),
//! and whoever brings the server back deletes those keys on it instead of flushing it
//! (`libmcshm::lifecycle`). The log is shared memory beside the table: an append is a few
//! atomic stores, no lock, no system call, as the failure counts are.
//!
//! A process that cannot write the log (it may read the registry only) records nothing: the
//! log then cannot vouch for what the server missed (see docs/DESIGN.md).

use mcshm_table::registry::{Appended, Invalidations, LogCapacity, Registry};

/// The router's handle on the log: opened (created when missing) once the domain's policy is
/// `replay`.
#[derive(Default)]
pub(crate) struct MissedLog {
    log: Option<Invalidations>,
    /// An open failed: not tried again on every refresh.
    failed: bool,
}

impl MissedLog {
    /// Opens the domain's log for appending, creating it when missing, unless open already
    /// (or an earlier attempt failed: a process that cannot write the registry keeps no log).
    pub(crate) fn open(&mut self, registry: &Registry) {
        if self.log.is_some() || self.failed || !registry.is_writable() {
            return;
        }
        let dir = registry
            .path()
            .parent()
            .unwrap_or(std::path::Path::new("."));
        match Invalidations::open_or_create(dir, registry.domain(), LogCapacity::default()) {
            Ok(log) if log.is_writable() => self.log = Some(log),
            _ => self.failed = true,
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.log.is_some()
    }

    /// Records `key` (as the servers store it: after the domain's `prefix`) for each server of
    /// `ids`.
    pub(crate) fn record(&mut self, prefix: &[u8], key: &[u8], ids: &[u32]) {
        let Some(log) = &self.log else {
            return;
        };
        let mut stored = Vec::with_capacity(prefix.len() + key.len());
        stored.extend_from_slice(prefix);
        stored.extend_from_slice(key);
        for &id in ids {
            // An overflowed log makes the rejoin flush: nothing more to do here.
            let _: Appended = log.append(id, &stored);
        }
    }
}
