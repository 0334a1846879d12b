//! The shared failure view, as data the front end acts on. A failed request is counted in the
//! registry's live record; at the domain's limit its [`Failure`] asks for a [`MarkDown`]. The
//! front end carries it out with [`Router::carry_out`] (the one adapter every front end uses:
//! commit it for every process, try again later when another writer holds the lock, else treat
//! the server as down in this process alone) when it chooses, then tells its user
//! ([`Failure::event`]). The router reads no clock: every call is given the time.

use mcshm_table::edit;
use mcshm_table::error::{Error, ErrorKind};
use mcshm_table::table::CommitInfo;

use crate::report::{Failure, MarkDown, MarkedDown};
use crate::router::{Router, Source};

impl Router {
    /// A request to server `i` succeeded: its failure count starts again (front ends report
    /// through [`Router::report`]).
    pub(crate) fn succeeded(&mut self, i: usize) {
        let server = &self.snapshot().servers[i];
        if let Source::Registry(registry) = &self.source {
            registry.live().record_success(server);
        }
        if !self.local_failures.is_empty() {
            let address = server.address.clone();
            self.local_failures.remove(&address);
        }
    }

    /// A request to server `index` failed at `now_ms` (connect, timeout, I/O): counted in the
    /// shared live record (in this process for a private list); at the domain's limit the
    /// failure asks for a mark-down.
    pub(crate) fn failed(&mut self, index: usize, error: &str, errno: i32, now_ms: u64) -> Failure {
        let snapshot = self.snapshot().clone();
        let server = &snapshot.servers[index];
        let shared = match &self.source {
            Source::Registry(registry) => registry.live().record_failure(server, now_ms),
            Source::Servers(_) => None,
        };
        let failures = shared.unwrap_or_else(|| {
            let count = self
                .local_failures
                .entry(server.address.clone())
                .or_insert(0);
            *count += 1;
            *count
        });
        let limit = u32::from(snapshot.policy.failure_limit);
        let mark_down = edit::down_after(failures, limit, server.state).then(|| MarkDown {
            id: server.id,
            reason: edit::failure_reason(
                failures,
                "consecutive failures",
                error,
                CommitInfo::at(now_ms),
            ),
        });
        Failure {
            server: server.address.clone(),
            error: error.to_owned(),
            errno,
            failures,
            mark_down,
        }
    }

    /// Carries out `failure` at `now_ms`: its mark-down, if any, committed for every process
    /// (never waiting for another writer: one holding the lock gets it tried again on a later
    /// operation), or, when this process cannot write the registry, taken for this process
    /// alone. Returns what it did, for the front end to tell its user; `None` when there is
    /// nothing new to tell (a server this process took down on its own is told once).
    pub fn carry_out(&mut self, failure: &Failure, now_ms: u64) -> Option<MarkedDown> {
        let Some(down) = &failure.mark_down else {
            return Some(MarkedDown::No);
        };
        match self.publish_down(down, now_ms) {
            Ok(()) => Some(MarkedDown::ForEveryone),
            Err(err) => {
                debug_assert!(err.kind() != ErrorKind::BadInput);
                if matches!(err, Error::Locked { .. }) {
                    self.pending_down.push(down.clone());
                }
                self.local_down.insert(failure.server.clone());
                self.local_epoch += 1;
                self.reported
                    .insert(failure.server.clone())
                    .then_some(MarkedDown::LocallyOnly)
            }
        }
    }

    /// Marks server `down.id` down in the table, if it is still up there, through the router's
    /// own handle (opened for writing when the process may write the registry, and never
    /// waiting for the writer lock: when another writer holds it, this fails at once with
    /// [`Error::Locked`]).
    fn publish_down(&mut self, down: &MarkDown, now_ms: u64) -> Result<(), Error> {
        let Source::Registry(registry) = &mut self.source else {
            return Err(Error::NoServers {
                what: String::new(),
            });
        };
        registry.transact(|t| {
            let change = edit::Transition::FailureDown {
                reason: &down.reason,
            };
            edit::transition(&mut t.servers, down.id, change, CommitInfo::at(now_ms));
            Ok(())
        })?;
        Ok(())
    }

    /// Retries the mark-downs that found the writer lock taken (from the periodic work of
    /// later operations); one that succeeds, or whose server is no longer up, is done.
    pub(crate) fn retry_pending_down(&mut self) {
        let pending = std::mem::take(&mut self.pending_down);
        for down in pending {
            if let Err(Error::Locked { .. }) = self.publish_down(&down, self.now_ms) {
                self.pending_down.push(down);
            }
        }
    }
}
