//! Fenced answers (see [`crate::fence`]): in a domain that fences, every batch of requests to a
//! server ends with a read of the domain's fence, in the same write, and the batch's answers
//! count only if the fence is at or below the fleet revision the batch was routed on.
//!
//! The rules, for a host whose table lags the fleet's (its agent paused or cut off):
//! - an answer judged behind is [`Error::TableBehind`], reported to the router as answered
//!   (the server is healthy: it must not count toward a mark-down);
//! - the operation then waits, at most [`Client::set_fence_wait`] (200 ms by default), for this
//!   host's table to reach the fence (the agent mirrors the newer table), and runs once more on
//!   it;
//! - if the table does not catch up, a read is a miss and a write fails with
//!   [`Error::TableBehind`]; a write that reached a fenced server is undone there first (a
//!   delete without a fence read: a delete cannot leave a stale copy).
//!
//! memcached answers a connection's requests in order, so a fence read sent after a batch
//! sees every fence raised before the batch ran: a batch judged current ran before any host
//! could use a table that moved its keys off that server.

use std::time::{Duration, Instant};

use super::Client;
use crate::address::Address;
use crate::clock::now_ms;
use crate::conn::{Conn, ConnError};
use crate::error::{Error, Result};
use crate::fence::{Verdict, parse_value, verdict};
use crate::proto::{Encoded, Expect, Reply, Request};
use crate::table::Snapshot;

/// How long an operation waits for the table to reach a fence, by default.
pub(super) const DEFAULT_FENCE_WAIT: Duration = Duration::from_millis(200);

/// Appends the read of fence `key` (a plain `get`, never prefixed: every memcached answers it).
pub(super) fn push_fence_read(encoded: &mut Encoded, key: &[u8]) {
    let keys = [key];
    let request = Request::Get {
        keys: &keys,
        cas: false,
        touch: None,
    };
    encoded.push(&request, b"");
}

/// Reads the answer to a fence read sent after a batch routed on fleet revision `fence`
/// (`None`: none was sent, the batch stands).
pub(super) fn read_fence(conn: &mut Conn, fence: Option<u64>) -> Result<Verdict, ConnError> {
    let Some(table) = fence else {
        return Ok(Verdict::Current);
    };
    match conn.receive(Expect::Values)? {
        Reply::Values(items) => {
            let epoch = items.first().and_then(|item| parse_value(&item.value));
            Ok(verdict(epoch, table))
        }
        // An error reply (the server refused the read): nothing says the answers are current.
        _ => Ok(Verdict::Missing),
    }
}

impl Client {
    /// Sets how long an operation whose answer was fenced waits for this host's table to
    /// catch up before it gives a miss (a read) or [`Error::TableBehind`] (a write). Zero: no
    /// wait.
    pub fn set_fence_wait(&mut self, wait: Duration) {
        self.fence_wait = wait;
    }

    /// Runs `work` without fence reads (see [`Client::call_plain`]).
    pub(super) fn plain<T>(&mut self, work: impl FnOnce(&mut Client) -> T) -> T {
        let was = std::mem::replace(&mut self.plain, true);
        let result = work(self);
        self.plain = was;
        result
    }

    /// The fleet revision a batch on `snapshot` is judged against, when the domain fences.
    pub(super) fn fence_of(&self, snapshot: &Snapshot) -> Option<u64> {
        if self.plain {
            return None;
        }
        self.fence_key.as_ref()?;
        (snapshot.policy.fence.is_on() && snapshot.fleet_revision != 0)
            .then_some(snapshot.fleet_revision)
    }

    /// Appends the fence read to `encoded` when `fence` says the domain fences.
    pub(super) fn push_fence(&self, encoded: &mut Encoded, fence: Option<u64>) {
        if let (Some(_), Some(key)) = (fence, &self.fence_key) {
            push_fence_read(encoded, key);
        }
    }

    /// A batch's outcome, its answers judged by the fence: counted for or against the server
    /// as any outcome ([`Client::outcome`]); a fenced batch counts as answered and becomes
    /// [`Error::TableBehind`].
    pub(super) fn judged<T>(
        &mut self,
        server: usize,
        address: &Address,
        received: Result<(T, Verdict), ConnError>,
        fence: Option<u64>,
    ) -> Result<T> {
        let (answer, verdict) = self.outcome(server, address, received)?;
        if verdict != Verdict::Current {
            self.router.count_fenced();
        }
        match verdict {
            Verdict::Current => Ok(answer),
            behind => Err(Error::TableBehind {
                server: address.to_string(),
                fence: behind.wants(),
                table: fence.unwrap_or(0),
            }),
        }
    }

    /// After a fenced answer: waits (at most the fence wait) until this host's table has
    /// reached `wanted` (the fence's revision); whether it did. A missing fence waits for
    /// nothing: no revision will do until a fleet commit writes one.
    pub(super) fn catch_up(&mut self, wanted: u64) -> bool {
        if wanted == u64::MAX {
            return false;
        }
        let deadline = Instant::now() + self.fence_wait;
        loop {
            if self.router.refresh(now_ms()).is_err() {
                return false;
            }
            let snapshot = self.router.snapshot();
            if snapshot.fleet_revision >= wanted {
                return true;
            }
            let version = snapshot.version;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // A commit of any process wakes it; a table without a registry never catches up.
            if self.router.wait_for_change(version, left).is_none() {
                return false;
            }
        }
    }
}

/// The fence revision a fenced error asks for (`None`: not a fenced answer).
pub(super) fn fenced_at(err: &Error) -> Option<u64> {
    match err {
        Error::TableBehind { fence, .. } => Some(*fence),
        _ => None,
    }
}
