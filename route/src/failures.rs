//! The shared failure view: count failures in the registry's live records, reset them on
//! success, mark a server down for every process at the domain's limit (or for this process
//! alone when it cannot write the registry), and tell the failure callback.

use mcshm_table::edit;
use mcshm_table::error::{Error, ErrorKind};
use mcshm_table::table::{CommitInfo, Server};

use crate::report::{FailureEvent, MarkedDown};
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

    /// A request to server `index` failed (connect, timeout, I/O): counted in the shared live
    /// record; at the domain's limit the server is marked down for every process.
    pub(crate) fn failed(&mut self, index: usize, error: &str, errno: i32) {
        let snapshot = self.snapshot().clone();
        let server = &snapshot.servers[index];
        let shared = match &self.source {
            Source::Registry(registry) => registry.live().record_failure(server),
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
        let mut marked_down = MarkedDown::No;
        let limit = u32::from(snapshot.policy.failure_limit);
        if edit::down_after(failures, limit, server.state) {
            marked_down = self.mark_down(server, error, failures);
        }
        let report = match marked_down {
            MarkedDown::LocallyOnly => self.reported.insert(server.address.clone()),
            _ => true,
        };
        if report && let Some(callback) = &mut self.on_failure {
            callback(&FailureEvent {
                server: &server.address,
                error,
                errno,
                failures,
                marked_down,
            });
        }
    }

    fn mark_down(&mut self, server: &Server, error: &str, failures: u32) -> MarkedDown {
        let reason =
            edit::failure_reason(failures, "consecutive failures", error, CommitInfo::now());
        match self.publish_down(server.id, &reason) {
            Ok(()) => MarkedDown::ForEveryone,
            Err(err) => {
                debug_assert!(err.kind() != ErrorKind::BadInput);
                if matches!(err, Error::Locked { .. }) {
                    // Another writer is at work: try again on a later operation.
                    self.pending_down.push((server.id, reason));
                }
                self.local_down.insert(server.address.clone());
                self.local_epoch += 1;
                MarkedDown::LocallyOnly
            }
        }
    }

    /// Marks server `id` down in the table, if it is still up there, through the router's own
    /// handle (opened for writing when the process may write the registry, and never waiting for
    /// the writer lock: when another writer holds it, this fails at once with
    /// [`Error::Locked`]).
    fn publish_down(&mut self, id: u32, reason: &str) -> Result<(), Error> {
        let Source::Registry(registry) = &mut self.source else {
            return Err(Error::NoServers {
                what: String::new(),
            });
        };
        registry.transact(|t| {
            let change = edit::Transition::FailureDown { reason };
            edit::transition(&mut t.servers, id, change, CommitInfo::now());
            Ok(())
        })?;
        Ok(())
    }

    /// Retries the mark-downs that found the writer lock taken (from the periodic work of
    /// later operations); one that succeeds, or whose server is no longer up, is done.
    pub(crate) fn retry_pending_down(&mut self) {
        let pending = std::mem::take(&mut self.pending_down);
        for (id, reason) in pending {
            if let Err(Error::Locked { .. }) = self.publish_down(id, &reason) {
                self.pending_down.push((id, reason));
            }
        }
    }
}
