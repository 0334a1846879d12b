//! The memcached client: routes each key through the domain's ketama ring, talks to servers over
//! persistent connections, and shares what it learns about failing servers with every process on
//! the host through the registry.
//!
//! Routing is rebuilt only when the table version moves (one atomic load per operation
//! otherwise), so an `mcadmin` change is used by the next operation of every process.
//!
//! Failover follows the domain's policy (see [`Failover`](crate::table::Failover)):
//! - `none`: the ring keeps every configured server. A key whose server is down is a miss on read
//!   and an error on write; no other server is tried, so no other server can hold a copy that
//!   goes stale.
//! - `rehash`: the ring is built over up servers only; a down server's keys move to the others.
//!
//! A connect, timeout or I/O failure counts against the server in the shared live record (a CAS,
//! no lock); a success resets it. After the domain's `failure_limit` consecutive failures the
//! client marks the server down in the registry, with a reason naming the error and the pid, for
//! every process on the host. A process that may read but not write the registry treats the
//! server as down itself and reports that once through the failure callback. A down server gets
//! no connection attempts, except the retry probe: once per `retry_interval` per host (a lease
//! in the shared live record) one process probes it and, if it answers, brings it back through
//! the domain's rejoin policy (flush first; see [`crate::lifecycle`]).
//!
//! Replication (`replicas` N): writes go to the first N distinct servers along the ring (the
//! up ones); reads try them in order and fall back to the next on a miss or an error. What is
//! and is not consistent: a set/add/replace/append/prepend/delete/touch is sent to every
//! replica, one after the other, so a reader may see the old value on one replica and the new
//! one on another until the last write lands, and a replica that was unreachable during a write
//! keeps its old value (it is skipped only while it is down; a rejoin flushes it). `incr`/`decr`
//! run on each replica independently: counters agree only if every replica saw every change.
//! `cas` runs on the first up replica only (cas uniques are per server); the other replicas get
//! no write, so follow a cas with a set if replicas must agree. `add` reports the first
//! replica's outcome.
//!
//! With `rehash`, a write also deletes the key from the next server along the ring after its
//! replicas: that is where the key goes if one of them fails, so a copy written there during an
//! earlier outage can never be served once the key has been written again (a double fault: the
//! first server fails, then the one that took its keys fails too).
//!
//! Warm-up (rejoin `warm`): for the warm window after a rejoin, a miss on the rejoined server is
//! looked up on the server that owned the key while it was away; a hit is copied back with
//! `add` (never over a newer write, keeping flags and remaining TTL) and returned.
//!
//! Draining (`mcadmin drain`): a draining server is left out of the ring; a miss on a key's new
//! owner falls back to the draining server, and a hit there is moved: added to the new owner,
//! then deleted from the draining server only when the new owner holds a value (a value it
//! refuses, say over its item size, stays where it is). Writes also delete the key from the
//! draining server.
//!
//! The client's files: this one (the handle, its constructors, the routing it asks the
//! [`Router`] for), `reads.rs`, `writes.rs`, `servers.rs` (flush_all, version, stats),
//! `requests.rs` (one connection per server, pipelines), `fenced.rs` (answers judged by the
//! servers' fences, in a fleet domain that fences) and `handover.rs` (warm-up and drain fills,
//! moving a key).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::address::Address;
use crate::clock::now_ms;
use crate::conn::{Conn, ConnError, Timeouts};
use crate::domain::Domain;

use crate::error::{Error, Result};
use crate::proto::{Encoded, Item};
use crate::table::Snapshot;

mod fenced;
mod handover;
mod reads;
mod requests;
mod servers;
mod writes;

pub use handover::Moved;

pub use mcshm_route::{
    Failure, FailureEvent, Fill, FillKind, MarkedDown, Outcome, ReadPlan, RetryProbe, Router,
    ServerRef, WritePlan, io_errno,
};

/// Keys per `get` command when a multi-get is pipelined.
const KEYS_PER_GET: usize = 100;
/// Request bytes a pipeline keeps in flight before it reads replies (below the kernel's socket
/// buffers, so neither side ever blocks on a full buffer).
const PIPELINE_WINDOW: usize = 64 * 1024;
/// Windows of quiet commands a server has in flight at once ([`Client::quiet_pipelines`]): the
/// next one is already sent while the server runs one, so it does not sit idle until this
/// client has read that one's `MN` (with one window, a bulk set's servers waited so while the
/// client read the others'). Only for quiet windows: their reply is their failures alone, not a
/// reply per request, so two of them unread fit the socket buffers as one window's replies do.
const QUIET_WINDOWS: usize = 2;

/// The outcome of a storage command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    Stored,
    /// add: key exists; replace/append/prepend: key missing.
    NotStored,
    /// cas: the item changed since it was read.
    Exists,
    /// cas: the item does not exist.
    NotFound,
}

/// One record of [`Client::store_many`].
#[derive(Clone, Debug)]
pub struct StoreItem<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub flags: u32,
    pub ttl: i64,
}

/// The result of a multi-key get: the hits, and the servers that failed (their keys are neither
/// hits nor misses).
#[derive(Debug, Default)]
pub struct MultiGet {
    pub items: Vec<Item>,
    pub errors: Vec<(Address, Error)>,
}

/// `stats` lines of one server: (name, value).
pub type Stats = Vec<(String, String)>;

/// A memcached client over a registry domain or a private server list. Use one per thread.
/// Its decisions are the [`Router`]'s; it adds blocking connections.
pub struct Client {
    router: Router,
    timeouts: Timeouts,
    conns: HashMap<Address, Conn>,
    scratch: Encoded,
    /// The domain whose TLS settings and credentials (see [`crate::access`]) every new
    /// connection uses; read at each connect, so that a change applies without a restart.
    access_domain: Option<(PathBuf, Domain)>,
    /// Told of every failure the router counted, once carried out (to log or alert).
    on_failure: Option<FailureCallback>,
    /// The domain's fence key (`None`: a private server list, never fenced).
    fence_key: Option<Vec<u8>>,
    /// How long a fenced operation waits for the table to catch up.
    fence_wait: std::time::Duration,
    /// Set while requests go without fence reads (see `fenced.rs`).
    plain: bool,
}

/// What [`Client::on_failure`] registers.
type FailureCallback = Box<dyn FnMut(&FailureEvent<'_>) + Send>;

/// A client going away waits (up to the I/O timeout per connection) for the replies owed to
/// writes that timed out: until they are answered the server may still run them, and a
/// process started after this one (mclient run again) must find them run, not overtaking
/// its own writes. A server still silent then is given up on. (Reads given up on are not
/// waited for: they change nothing.)
impl Drop for Client {
    fn drop(&mut self) {
        for conn in self.conns.values_mut().filter(|c| c.owes_orphan_writes()) {
            let _ = conn.settle();
        }
    }
}

impl Client {
    /// A client of a registry domain. Counting failures needs write access to the registry
    /// file; without it the client still works and keeps its failure view to itself.
    pub fn for_domain(
        dir: impl AsRef<Path>,
        domain: &Domain,
        timeouts: Timeouts,
    ) -> Result<Client> {
        let mut client = Client::new(Router::for_domain(dir.as_ref(), domain)?, timeouts);
        client.access_domain = Some((dir.as_ref().to_path_buf(), domain.clone()));
        client.fence_key = Some(crate::fence::fence_key(domain));
        Ok(client)
    }

    /// What a new connection uses (nothing for a private server list).
    pub(super) fn access(&self) -> std::result::Result<crate::access::Access, ConnError> {
        match &self.access_domain {
            Some((dir, domain)) => {
                crate::access::Access::load(dir, domain).map_err(|e| ConnError::Auth(e.to_string()))
            }
            None => Ok(crate::access::Access::default()),
        }
    }

    /// A client of a private server list (weights 1, failover none), for use without a
    /// registry.
    pub fn for_servers(servers: &[Address], timeouts: Timeouts) -> Result<Client> {
        Ok(Client::new(Router::for_servers(servers)?, timeouts))
    }

    /// A client of a private server list with weights (`host:port weight`, as
    /// [`Address::parse_weighted_list`] reads `MEMCACHED_SERVERS`).
    pub fn for_weighted_servers(servers: &[(Address, u16)], timeouts: Timeouts) -> Result<Client> {
        Ok(Client::new(
            Router::for_weighted_servers(servers)?,
            timeouts,
        ))
    }

    pub(super) fn new(router: Router, timeouts: Timeouts) -> Client {
        Client {
            router,
            timeouts,
            conns: HashMap::new(),
            scratch: Encoded::new(),
            access_domain: None,
            on_failure: None,
            fence_key: None,
            fence_wait: fenced::DEFAULT_FENCE_WAIT,
            plain: false,
        }
    }

    /// Calls `callback` on every failed operation (to log or alert).
    pub fn on_failure(&mut self, callback: impl FnMut(&FailureEvent<'_>) + Send + 'static) {
        self.on_failure = Some(Box::new(callback));
    }

    /// Carries out what the router asked of a failure it counted (its mark-down), then tells
    /// the failure callback.
    pub(super) fn carry_out(&mut self, failure: &Failure) {
        if let Some(marked_down) = self.router.carry_out(failure, now_ms())
            && let Some(callback) = &mut self.on_failure
        {
            callback(&failure.event(marked_down));
        }
    }

    /// Refreshes the routing and runs any retry probe it found due.
    pub(super) fn refresh(&mut self) -> Result<()> {
        let refreshed = self.router.refresh(now_ms());
        self.run_probes();
        refreshed
    }

    pub(super) fn run_probes(&mut self) {
        for probe in self.router.take_probes() {
            crate::lifecycle::run_probe(probe, self.timeouts);
        }
    }

    /// The key's replicas (see [`Router::chain`]), probes run.
    pub(super) fn chain(&mut self, key: &[u8]) -> Result<Vec<usize>> {
        let chain = self.router.chain(key, now_ms());
        self.run_probes();
        chain
    }

    pub(super) fn is_down(&self, i: usize) -> bool {
        self.router.is_down(i)
    }

    pub(super) fn address(&self, i: usize) -> Address {
        self.router.address(i).clone()
    }

    /// The table the client routes with now.
    pub fn snapshot(&mut self) -> Result<Arc<Snapshot>> {
        self.refresh()?;
        Ok(self.router.snapshot().clone())
    }

    /// What routing cost this client since it was made: entries decoded, bytes copied, rings
    /// built here or read in the file (see [`crate::work`]; [`mcshm_route::Router::work`]).
    pub fn work(&self) -> crate::WorkCounters {
        self.router.work()
    }

    /// Whether `key` may be used in this domain, as every request checks it: memcached's rule
    /// (1 to 250 bytes, no whitespace or control bytes), the length with the domain's key
    /// prefix, and outside mcshm's reserved namespace (`mcshm.fence.`, the fences). A bulk
    /// front end reports a key this refuses and goes on with the rest, where the request itself
    /// would fail the whole batch ([`Error::BadKey`]).
    pub fn check_key(&mut self, key: &[u8]) -> Result<()> {
        self.router.check_key(key, now_ms())
    }

    /// The server `key` maps to (up or down).
    pub fn server_for(&mut self, key: &[u8]) -> Result<&Address> {
        let i = self.router.owner(key, now_ms())?;
        self.run_probes();
        Ok(self.router.address(i))
    }

    /// The servers that hold `key`: its owner, then its other replicas in the order reads try
    /// them (the domain's `replicas`; up or down).
    pub fn replicas_for(&mut self, key: &[u8]) -> Result<Vec<Address>> {
        let chain = self.chain(key)?;
        Ok(chain.into_iter().map(|i| self.address(i)).collect())
    }
}
