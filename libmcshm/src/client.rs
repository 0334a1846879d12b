//! The memcached client: routes each key through the domain's ketama ring, talks to servers over
//! persistent connections, and shares what it learns about failing servers with every process on
//! the host through the registry.
//!
//! Routing is rebuilt only when the table version moves (one atomic load per operation
//! otherwise), so an `mcadmin` change is used by the next operation of every process.
//!
//! Failover follows the domain's policy (see [`Failover`]):
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
//! earlier outage can never be served once the key has been written again (the double fault of
//! the seed threads).
//!
//! Warm-up (rejoin `warm`): for the warm window after a rejoin, a miss on the rejoined server is
//! looked up on the server that owned the key while it was away; a hit is copied back with
//! `add` (never over a newer write, keeping flags and remaining TTL) and returned.
//!
//! Draining (`mcadmin drain`): a draining server is left out of the ring; a miss on a key's new
//! owner falls back to the draining server, and a hit there is moved (added to the new owner,
//! deleted from the draining server). Writes also delete the key from the draining server.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::address::Address;
use crate::conn::{Conn, ConnError, Timeouts};
use crate::domain::Domain;
use crate::edit;
use crate::error::{Error, ErrorKind, Result};
use crate::proto::{self, Item, Reply, Request, StoreVerb};
use crate::registry::{Registry, commit_info};
use crate::ring::{Ring, point_name};
use crate::table::{Failover, Policy, Server, Snapshot, State};

/// Keys per `get` command when a multi-get is pipelined.
const KEYS_PER_GET: usize = 100;
/// Request bytes a pipeline keeps in flight before it reads replies (below the kernel's socket
/// buffers, so neither side ever blocks on a full buffer).
const PIPELINE_WINDOW: usize = 64 * 1024;

/// What a failure did, as the failure callback is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkedDown {
    /// Below the failure limit: nothing changed yet.
    No,
    /// Marked down in the registry, for every process on the host.
    ForEveryone,
    /// This process cannot write the registry (or uses a private server list): it treats the
    /// server as down itself. Reported once per server.
    LocallyOnly,
}

/// A failed operation, as the failure callback sees it.
#[derive(Debug)]
pub struct FailureEvent<'a> {
    pub server: &'a Address,
    /// What went wrong (connect refused, timed out, …).
    pub error: &'a str,
    /// The same as an errno value: the OS error (ECONNREFUSED, EPIPE, …), ETIMEDOUT for a
    /// timeout, ECONNRESET for a connection the server closed, EPROTO for a protocol error.
    pub errno: i32,
    /// Consecutive failures now counted for the server.
    pub failures: u32,
    pub marked_down: MarkedDown,
}

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

type FailureCallback = Box<dyn FnMut(&FailureEvent<'_>) + Send>;

enum Source {
    Registry(Registry),
    Servers(Arc<Snapshot>),
}

/// The routing of one table version.
struct Routing {
    snapshot: Arc<Snapshot>,
    local_epoch: u64,
    ring: Ring,
    /// Ring server number → index in `snapshot.servers`.
    members: Vec<usize>,
    /// With draining servers: the ring that still includes them (to find where a key was).
    with_draining: Option<(Ring, Vec<usize>)>,
    /// Down servers with a retry interval (candidates for the retry probe).
    probeable: Vec<usize>,
}

/// Where a key goes.
enum Target {
    Up(usize),
    Down(usize),
}

/// Operations between two periodic checks (retry probes of servers off the ring, and the
/// clients record's last-used time).
const PERIODIC_OPS: u64 = 64;

/// A memcached client over a registry domain or a private server list. Use one per thread.
pub struct Client {
    source: Source,
    routing: Option<Routing>,
    timeouts: Timeouts,
    conns: HashMap<Address, Conn>,
    local_failures: HashMap<Address, u32>,
    local_down: HashSet<Address>,
    local_epoch: u64,
    reported: HashSet<Address>,
    on_failure: Option<FailureCallback>,
    scratch: Vec<u8>,
    ops: u64,
    client_slot: Option<usize>,
}

impl Client {
    /// A client of a registry domain. Counting failures needs write access to the registry
    /// file; without it the client still works and keeps its failure view to itself.
    pub fn for_domain(
        dir: impl AsRef<Path>,
        domain: &Domain,
        timeouts: Timeouts,
    ) -> Result<Client> {
        let dir = dir.as_ref();
        let registry = match Registry::open_writer(dir, domain, false) {
            Err(Error::PermissionDenied { .. }) => Registry::open(dir, domain)?,
            other => other?,
        };
        let mut client = Client::new(Source::Registry(registry), timeouts);
        if let Source::Registry(registry) = &client.source {
            client.client_slot = registry.register_client();
        }
        Ok(client)
    }

    /// A client of a private server list (weights 1, failover none), for use without a
    /// registry.
    pub fn for_servers(servers: &[Address], timeouts: Timeouts) -> Result<Client> {
        let servers: Vec<Server> = servers
            .iter()
            .enumerate()
            .map(|(i, a)| Server {
                id: i as u32 + 1,
                live: i as u32,
                ..Server::new(a.clone())
            })
            .collect();
        if let Some(dup) = crate::table::first_duplicate(&servers) {
            return Err(Error::invalid(
                "server list",
                &dup.address.to_string(),
                "listed twice",
            ));
        }
        let snapshot = Snapshot {
            domain: String::new(),
            version: 0,
            changed_ms: 0,
            writer_pid: 0,
            writer_uid: 0,
            next_id: servers.len() as u32 + 1,
            servers,
            policy: Policy::default(),
        };
        Ok(Client::new(Source::Servers(Arc::new(snapshot)), timeouts))
    }

    fn new(source: Source, timeouts: Timeouts) -> Client {
        Client {
            source,
            routing: None,
            timeouts,
            conns: HashMap::new(),
            local_failures: HashMap::new(),
            local_down: HashSet::new(),
            local_epoch: 0,
            reported: HashSet::new(),
            on_failure: None,
            scratch: Vec::new(),
            ops: 0,
            client_slot: None,
        }
    }

    /// Calls `callback` on every failed operation (to log or alert).
    pub fn on_failure(&mut self, callback: impl FnMut(&FailureEvent<'_>) + Send + 'static) {
        self.on_failure = Some(Box::new(callback));
    }

    /// The table the client routes with now.
    pub fn snapshot(&mut self) -> Result<Arc<Snapshot>> {
        self.refresh()?;
        Ok(self.routing().snapshot.clone())
    }

    /// The server `key` maps to (up or down).
    pub fn server_for(&mut self, key: &[u8]) -> Result<&Address> {
        let (Target::Up(i) | Target::Down(i)) = self.target(key)?;
        Ok(&self.routing().snapshot.servers[i].address)
    }

    pub fn get(&mut self, key: &[u8]) -> Result<Option<Item>> {
        self.retrieve(key, false, None)
    }

    /// `get` with the cas unique.
    pub fn gets(&mut self, key: &[u8]) -> Result<Option<Item>> {
        self.retrieve(key, true, None)
    }

    /// Get and touch (`gat`; `gats` with `cas`).
    pub fn gat(&mut self, key: &[u8], ttl: i64, cas: bool) -> Result<Option<Item>> {
        self.retrieve(key, cas, Some(ttl))
    }

    /// Reads along the key's replicas: the first hit wins; a miss on all is a miss; an error
    /// only if no replica answered. Then warm-up and drain fallbacks.
    fn retrieve(&mut self, key: &[u8], cas: bool, touch: Option<i64>) -> Result<Option<Item>> {
        let chain = self.chain(key)?;
        let (mut answered, mut last_error) = (false, None);
        for (n, &server) in chain.iter().enumerate() {
            if self.is_down(&self.routing().snapshot.servers[server]) {
                self.maybe_probe(server);
                continue;
            }
            match self.get_one(server, key, cas, touch) {
                Ok(Some(item)) => return Ok(Some(item)),
                Ok(None) => {
                    answered = true;
                    if n == 0
                        && let Some(item) = self.warm_fill(server, key)
                    {
                        return Ok(Some(item));
                    }
                }
                Err(err) => last_error = Some(err),
            }
        }
        if let Some(&owner) = chain.first()
            && let Some(item) = self.drain_fill(owner, key)
        {
            return Ok(Some(item));
        }
        match (answered, last_error) {
            (false, Some(err)) => Err(err),
            _ => Ok(None),
        }
    }

    fn get_one(
        &mut self,
        server: usize,
        key: &[u8],
        cas: bool,
        touch: Option<i64>,
    ) -> Result<Option<Item>> {
        let keys = [key];
        let request = Request::Get {
            keys: &keys,
            cas,
            touch,
        };
        match self.call(server, &request)? {
            Reply::Values(mut items) => Ok(items.pop().filter(|i| i.key == key)),
            other => Err(self.unexpected(server, other)),
        }
    }

    /// `mg KEY t f v` on one server: value, flags, remaining TTL (0 = never, as `set` takes it).
    fn meta_get(&mut self, server: usize, key: &[u8]) -> Result<Option<(Vec<u8>, u32, i64)>> {
        match self.call(server, &Request::MetaGet { key })? {
            Reply::Meta { value, flags, ttl } => Ok(Some((value, flags, ttl.max(0)))),
            Reply::NotFound => Ok(None),
            other => Err(self.unexpected(server, other)),
        }
    }

    /// Warm-up: a miss on a server in its warm window is looked up on the server that owned the
    /// key while it was away, and a hit is copied back with `add`.
    fn warm_fill(&mut self, server: usize, key: &[u8]) -> Option<Item> {
        let snapshot = self.routing().snapshot.clone();
        let rejoined = &snapshot.servers[server];
        if rejoined.warm_until_ms == 0 || crate::registry::now_ms() >= rejoined.warm_until_ms {
            return None;
        }
        let interim = self
            .along_ring(key, 2)
            .into_iter()
            .find(|&i| i != server && !self.is_down(&snapshot.servers[i]))?;
        self.copy_key(interim, server, key)
            .ok()?
            .map(|(item, _)| item)
    }

    /// Copies `key` from server `from` to server `to` with `add` (never over a value `to`
    /// already has), keeping flags and remaining TTL: the item, and the add's outcome; `None`
    /// when `from` does not have it.
    fn copy_key(
        &mut self,
        from: usize,
        to: usize,
        key: &[u8],
    ) -> Result<Option<(Item, Result<Stored>)>> {
        let Some((value, flags, ttl)) = self.meta_get(from, key)? else {
            return Ok(None);
        };
        let request = Request::Store {
            verb: StoreVerb::Add,
            key,
            flags,
            exptime: ttl,
            value: &value,
        };
        let added = if self.is_down(&self.routing().snapshot.servers[to]) {
            Err(self.down_error(to))
        } else {
            self.stored_reply(to, &request)
        };
        let item = Item {
            key: key.to_vec(),
            flags,
            value,
            cas: None,
        };
        Ok(Some((item, added)))
    }

    /// Drain: a miss on the key's new owner falls back to the draining server that had it; a
    /// hit there is moved to the new owner.
    fn drain_fill(&mut self, owner: usize, key: &[u8]) -> Option<Item> {
        let draining = self.draining_owner(key)?;
        let (item, added) = self.copy_key(draining, owner, key).ok()??;
        if added.is_ok() {
            let _ = self.call(draining, &Request::Delete { key });
        }
        Some(item)
    }

    /// Moves one key off the draining server `draining` to its new owner (keeping flags and
    /// remaining TTL; never over a newer value there), then deletes it from `draining`.
    pub fn move_key(&mut self, draining: &Address, key: &[u8]) -> Result<crate::drain::Moved> {
        use crate::drain::Moved;
        let owner = self.writable_target(key)?;
        let snapshot = self.routing().snapshot.clone();
        let from = snapshot
            .servers
            .iter()
            .position(|s| s.address.same_server(draining) && s.state == State::Draining)
            .ok_or_else(|| Error::NoServer {
                server: draining.to_string(),
                domain: snapshot.domain.clone(),
            })?;
        let Some((_, added)) = self.copy_key(from, owner, key)? else {
            return Ok(Moved::Gone);
        };
        let moved = match added? {
            Stored::Stored => Moved::Moved,
            _ => Moved::Kept,
        };
        self.call(from, &Request::Delete { key })?;
        Ok(moved)
    }

    fn stored_reply(&mut self, server: usize, request: &Request<'_>) -> Result<Stored> {
        let reply = self.call(server, request)?;
        self.stored(server, reply)
    }

    /// The draining server that owned `key` before the drain, if any.
    fn draining_owner(&self, key: &[u8]) -> Option<usize> {
        let (ring, members) = self.routing().with_draining.as_ref()?;
        let i = members[ring.server_for(key)?];
        (self.routing().snapshot.servers[i].state == State::Draining).then_some(i)
    }

    /// Gets many keys: grouped per server, each group pipelined in `get` commands of up to 100
    /// keys; keys missed (or failed) on their first replica are asked of the next. Keys of down
    /// servers are misses; keys no replica answered for are reported in `errors`. Bad keys fail
    /// the whole call before anything is sent.
    pub fn get_many(&mut self, keys: &[&[u8]], cas: bool) -> Result<MultiGet> {
        let mut pending: Vec<(&[u8], Vec<usize>)> = Vec::with_capacity(keys.len());
        for key in keys {
            pending.push((key, self.chain(key)?));
        }
        let mut result = MultiGet::default();
        let mut failed: HashMap<usize, Error> = HashMap::new();
        let replicas = pending.iter().map(|p| p.1.len()).max().unwrap_or(0);
        for round in 0..replicas {
            let mut groups: HashMap<usize, Vec<&[u8]>> = HashMap::new();
            for (key, chain) in &pending {
                if let Some(&server) = chain.get(round)
                    && !self.is_down(&self.routing().snapshot.servers[server])
                {
                    groups.entry(server).or_default().push(key);
                }
            }
            // Which keys hit, for the next round; the last round (with one replica, the only
            // one) needs no bookkeeping.
            let last_round = round + 1 == replicas;
            let mut hits: HashSet<Vec<u8>> = HashSet::new();
            for (server, keys) in groups {
                let requests: Vec<Request> = keys
                    .chunks(KEYS_PER_GET)
                    .map(|chunk| Request::Get {
                        keys: chunk,
                        cas,
                        touch: None,
                    })
                    .collect();
                match self.pipeline(server, &requests) {
                    Ok(replies) => {
                        for reply in replies {
                            match reply {
                                Reply::Values(items) => {
                                    if !last_round {
                                        hits.extend(items.iter().map(|i| i.key.clone()));
                                    }
                                    result.items.extend(items);
                                }
                                other => {
                                    let err = self.unexpected(server, other);
                                    failed.insert(server, err);
                                }
                            }
                        }
                    }
                    Err(err) => {
                        failed.insert(server, err);
                    }
                }
            }
            if !last_round {
                pending.retain(|(key, _)| !hits.contains(*key));
            }
        }
        for (server, err) in failed {
            result.errors.push((self.address(server), err));
        }
        Ok(result)
    }

    /// set, add, replace, append, prepend or cas (`StoreVerb::Cas(unique)`), on every up replica
    /// (cas: the first only). Returns the first replica's outcome.
    pub fn store(
        &mut self,
        verb: StoreVerb,
        key: &[u8],
        value: &[u8],
        flags: u32,
        ttl: i64,
    ) -> Result<Stored> {
        let request = Request::Store {
            verb,
            key,
            flags,
            exptime: ttl,
            value,
        };
        let only_first = matches!(verb, StoreVerb::Cas(_));
        let (server, reply) = self.write(key, &request, only_first)?;
        self.stored(server, reply)
    }

    pub fn set(&mut self, key: &[u8], value: &[u8], flags: u32, ttl: i64) -> Result<Stored> {
        self.store(StoreVerb::Set, key, value, flags, ttl)
    }

    /// Sends a write to the key's up replicas; returns the first one's reply. Then the
    /// invalidations of the module doc (rehash: next server along the ring; a draining owner).
    fn write(
        &mut self,
        key: &[u8],
        request: &Request<'_>,
        only_first: bool,
    ) -> Result<(usize, Reply)> {
        let chain = self.chain(key)?;
        let up: Vec<usize> = chain
            .iter()
            .copied()
            .filter(|&i| !self.is_down(&self.routing().snapshot.servers[i]))
            .collect();
        let Some(&first) = up.first() else {
            if let Some(&primary) = chain.first() {
                self.maybe_probe(primary);
                return Err(self.down_error(primary));
            }
            return Err(Error::NoServers { what: self.what() });
        };
        let (mut answer, mut last_error) = (None, None);
        for &server in if only_first { &up[..1] } else { &up[..] } {
            match self.call(server, request) {
                Ok(reply) if answer.is_none() => answer = Some((server, reply)),
                Ok(_) => {}
                Err(err) => last_error = Some(err),
            }
        }
        self.invalidate_elsewhere(key, chain.len());
        match (answer, last_error) {
            (Some(answer), _) => Ok(answer),
            (None, Some(err)) => Err(err),
            (None, None) => Err(self.down_error(first)),
        }
    }

    /// After a write: delete the key where a stale copy could later be served from.
    fn invalidate_elsewhere(&mut self, key: &[u8], replicas: usize) {
        let mut stale = Vec::new();
        if self.routing().snapshot.policy.failover == Failover::Rehash
            && let Some(next) = self.along_ring(key, replicas + 1).get(replicas).copied()
            && !self.is_down(&self.routing().snapshot.servers[next])
        {
            stale.push(next);
        }
        stale.extend(self.draining_owner(key));
        for server in stale {
            let _ = self.call(server, &Request::Delete { key });
        }
    }

    /// Stores many items: grouped per server and pipelined (first replica; with replicas > 1
    /// each item is stored on every replica). One result per item, in order.
    pub fn store_many(
        &mut self,
        verb: StoreVerb,
        items: &[StoreItem<'_>],
    ) -> Result<Vec<Result<Stored>>> {
        let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut results: Vec<Option<Result<Stored>>> = Vec::new();
        for (n, item) in items.iter().enumerate() {
            results.push(None);
            proto::check_key(item.key).map_err(|why| Error::bad_key(item.key, why))?;
            let chain = self.chain(item.key)?;
            let mut any = false;
            for server in chain {
                if !self.is_down(&self.routing().snapshot.servers[server]) {
                    groups.entry(server).or_default().push(n);
                    any = true;
                }
            }
            if !any {
                results[n] = Some(self.writable_target(item.key).map(|_| Stored::NotStored));
            }
        }
        for (server, members) in groups {
            let requests: Vec<Request> = members
                .iter()
                .map(|&n| Request::Store {
                    verb,
                    key: items[n].key,
                    flags: items[n].flags,
                    exptime: items[n].ttl,
                    value: items[n].value,
                })
                .collect();
            match self.pipeline(server, &requests) {
                Ok(replies) => {
                    for (n, reply) in members.into_iter().zip(replies) {
                        let outcome = self.stored(server, reply);
                        if !matches!(results[n], Some(Ok(_))) {
                            results[n] = Some(outcome);
                        }
                    }
                }
                Err(err) => {
                    let text = err.to_string();
                    for n in members {
                        if results[n].is_none() {
                            results[n] = Some(Err(Error::Network {
                                server: self.address(server).to_string(),
                                error: text.clone(),
                            }));
                        }
                    }
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Error::NoServers {
                        what: "the table".into(),
                    })
                })
            })
            .collect())
    }

    /// Deletes a key (on every replica); `false` if it did not exist.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        match self.write(key, &Request::Delete { key }, false)? {
            (_, Reply::Deleted) => Ok(true),
            (_, Reply::NotFound) => Ok(false),
            (server, other) => Err(self.unexpected(server, other)),
        }
    }

    /// Increments a counter; `None` if the key does not exist.
    pub fn incr(&mut self, key: &[u8], delta: u64) -> Result<Option<u64>> {
        self.arith(key, Request::Incr { key, delta })
    }

    /// Decrements a counter (memcached stops at 0); `None` if the key does not exist.
    pub fn decr(&mut self, key: &[u8], delta: u64) -> Result<Option<u64>> {
        self.arith(key, Request::Decr { key, delta })
    }

    fn arith(&mut self, key: &[u8], request: Request<'_>) -> Result<Option<u64>> {
        match self.write(key, &request, false)? {
            (_, Reply::Number(n)) => Ok(Some(n)),
            (_, Reply::NotFound) => Ok(None),
            (server, other) => Err(self.unexpected(server, other)),
        }
    }

    /// Sets a new expiration time (on every replica); `false` if the key does not exist.
    pub fn touch(&mut self, key: &[u8], ttl: i64) -> Result<bool> {
        match self.write(key, &Request::Touch { key, exptime: ttl }, false)? {
            (_, Reply::Touched) => Ok(true),
            (_, Reply::NotFound) => Ok(false),
            (server, other) => Err(self.unexpected(server, other)),
        }
    }

    /// `flush_all [delay]` on every up server, or on `only`. One result per server.
    pub fn flush_all(
        &mut self,
        only: Option<&Address>,
        delay: Option<u32>,
    ) -> Result<Vec<(Address, Result<()>)>> {
        self.each_server(only, &Request::FlushAll { delay }, |reply| match reply {
            Reply::Ok => Ok(()),
            other => Err(other),
        })
    }

    /// `version` of every up server (or `only`).
    pub fn versions(&mut self, only: Option<&Address>) -> Result<Vec<(Address, Result<String>)>> {
        self.each_server(only, &Request::Version, |reply| match reply {
            Reply::Version(v) => Ok(v),
            other => Err(other),
        })
    }

    /// `stats [group]` of every up server (or `only`).
    pub fn stats(
        &mut self,
        group: Option<&str>,
        only: Option<&Address>,
    ) -> Result<Vec<(Address, Result<Stats>)>> {
        self.each_server(only, &Request::Stats { group }, |reply| match reply {
            Reply::Stats(s) => Ok(s),
            other => Err(other),
        })
    }

    fn each_server<T>(
        &mut self,
        only: Option<&Address>,
        request: &Request<'_>,
        accept: impl Fn(Reply) -> std::result::Result<T, Reply>,
    ) -> Result<Vec<(Address, Result<T>)>> {
        self.refresh()?;
        let snapshot = self.routing().snapshot.clone();
        let chosen: Vec<usize> = match only {
            Some(address) => {
                let i = snapshot
                    .servers
                    .iter()
                    .position(|s| s.address.same_server(address))
                    .ok_or_else(|| Error::NoServer {
                        server: address.to_string(),
                        domain: snapshot.domain.clone(),
                    })?;
                vec![i]
            }
            None => (0..snapshot.servers.len()).collect(),
        };
        let mut results = Vec::new();
        for i in chosen {
            let address = snapshot.servers[i].address.clone();
            let result = if self.is_down(&snapshot.servers[i]) {
                Err(self.down_error(i))
            } else {
                self.call(i, request)
                    .and_then(|reply| accept(reply).map_err(|other| self.unexpected(i, other)))
            };
            results.push((address, result));
        }
        Ok(results)
    }

    // --- routing ---------------------------------------------------------------------------

    fn routing(&self) -> &Routing {
        self.routing
            .as_ref()
            .expect("refresh() builds the routing first")
    }

    /// Rebuilds the routing when the table version (or the local failure view) changed.
    fn refresh(&mut self) -> Result<()> {
        let version = match &mut self.source {
            Source::Registry(registry) => registry.version(),
            Source::Servers(_) => 0,
        };
        self.ops += 1;
        if let Some(r) = &self.routing
            && r.snapshot.version == version
            && r.local_epoch == self.local_epoch
        {
            if self.ops.is_multiple_of(PERIODIC_OPS) {
                self.periodic();
            }
            return Ok(());
        }
        let snapshot = match &mut self.source {
            Source::Registry(registry) => registry.snapshot()?,
            Source::Servers(s) => s.clone(),
        };
        if self
            .routing
            .as_ref()
            .is_some_and(|r| r.snapshot.version != snapshot.version)
        {
            // The operator changed the table: our private view of it starts again.
            self.local_down.clear();
        }
        let servers = &snapshot.servers;
        let on_ring = |i: &usize| match snapshot.policy.failover {
            Failover::None => servers[*i].state != State::Draining,
            Failover::Rehash => {
                servers[*i].state == State::Up && !self.local_down.contains(&servers[*i].address)
            }
        };
        let members: Vec<usize> = (0..servers.len()).filter(on_ring).collect();
        let ring = build_ring(servers, &members);
        let with_draining = servers.iter().any(|s| s.state == State::Draining).then(|| {
            let all: Vec<usize> = (0..servers.len())
                .filter(|i| on_ring(i) || servers[*i].state == State::Draining)
                .collect();
            (build_ring(servers, &all), all)
        });
        let probeable = (0..servers.len())
            .filter(|&i| servers[i].state == State::Down && servers[i].retry_interval >= 0)
            .collect();
        self.routing = Some(Routing {
            snapshot,
            local_epoch: self.local_epoch,
            ring,
            members,
            with_draining,
            probeable,
        });
        self.periodic();
        Ok(())
    }

    /// Every [`PERIODIC_OPS`] operations (and on every new version): note in the clients record
    /// that we use this version, and give down servers off the ring their retry probe.
    fn periodic(&mut self) {
        if let (Source::Registry(registry), Some(slot)) = (&self.source, self.client_slot) {
            registry.touch_client(slot, self.routing().snapshot.version);
        }
        for server in self.routing().probeable.clone() {
            self.maybe_probe(server);
        }
    }

    fn is_down(&self, server: &Server) -> bool {
        server.state == State::Down
            || (!self.local_down.is_empty() && self.local_down.contains(&server.address))
    }

    fn target(&mut self, key: &[u8]) -> Result<Target> {
        proto::check_key(key).map_err(|why| Error::bad_key(key, why))?;
        self.refresh()?;
        let routing = self.routing();
        let member = routing
            .ring
            .server_for(key)
            .ok_or_else(|| Error::NoServers { what: self.what() })?;
        let i = routing.members[member];
        Ok(if self.is_down(&routing.snapshot.servers[i]) {
            Target::Down(i)
        } else {
            Target::Up(i)
        })
    }

    /// The key's replicas: the first `replicas` distinct servers along the ring, owner first.
    fn chain(&mut self, key: &[u8]) -> Result<Vec<usize>> {
        proto::check_key(key).map_err(|why| Error::bad_key(key, why))?;
        self.refresh()?;
        let replicas = usize::from(self.routing().snapshot.policy.replicas.max(1));
        let chain = self.along_ring(key, replicas);
        if chain.is_empty() {
            return Err(Error::NoServers { what: self.what() });
        }
        Ok(chain)
    }

    /// The first `n` distinct servers along the ring from the key, in ring order (the key was
    /// checked). Stops as soon as it has them: a full walk would visit every point.
    fn along_ring(&self, key: &[u8], n: usize) -> Vec<usize> {
        let routing = self.routing();
        routing
            .ring
            .servers_from(key)
            .take(n)
            .map(|m| routing.members[m])
            .collect()
    }

    /// The retry probe of a down server: at most one process per host per retry interval (the
    /// lease), and only processes that can write the registry. A server that answers comes back
    /// through the rejoin policy.
    fn maybe_probe(&mut self, server: usize) {
        let Source::Registry(registry) = &self.source else {
            return;
        };
        let candidate = self.routing().snapshot.servers[server].clone();
        let Ok(interval) = u32::try_from(candidate.retry_interval) else {
            return;
        };
        if candidate.state != State::Down
            || !registry.is_writable()
            || !registry.try_probe_lease(&candidate, interval)
        {
            return;
        }
        // The rejoin's flush (or version round trip) is the probe: one connection per lease.
        let dir = registry
            .path()
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let domain = registry.domain().clone();
        if let Ok(mut writer) = Registry::open_writer(dir, &domain, false) {
            let _ = crate::lifecycle::rejoin(
                &mut writer,
                candidate.id,
                self.timeouts,
                false,
                "retry probe",
            );
        }
    }

    fn writable_target(&mut self, key: &[u8]) -> Result<usize> {
        match self.target(key)? {
            Target::Up(i) => Ok(i),
            Target::Down(i) => Err(self.down_error(i)),
        }
    }

    fn what(&self) -> String {
        match &self.source {
            Source::Registry(r) => format!("domain '{}'", r.domain()),
            Source::Servers(_) => "the server list".into(),
        }
    }

    fn address(&self, i: usize) -> Address {
        self.routing().snapshot.servers[i].address.clone()
    }

    fn down_error(&self, i: usize) -> Error {
        let server = &self.routing().snapshot.servers[i];
        let reason = match (server.state, server.reason.is_empty()) {
            (State::Down, false) => format!(" ({})", server.reason),
            (State::Down | State::Draining, true) => String::new(),
            (State::Draining, false) => format!(" (draining: {})", server.reason),
            (State::Up, _) => " (for this process: it cannot write the registry)".into(),
        };
        Error::ServerDown {
            server: server.address.to_string(),
            reason,
        }
    }

    // --- requests --------------------------------------------------------------------------

    fn call(&mut self, server: usize, request: &Request<'_>) -> Result<Reply> {
        let mut replies = self.pipeline(server, std::slice::from_ref(request))?;
        Ok(replies.pop().expect("one reply per request"))
    }

    /// Sends `requests` to one server, keeping at most [`PIPELINE_WINDOW`] request bytes in
    /// flight, and reads their replies in order. A connection failure counts against the
    /// server and fails the whole pipeline.
    fn pipeline(&mut self, server: usize, requests: &[Request<'_>]) -> Result<Vec<Reply>> {
        let address = self.address(server);
        let result = self.exchange(&address, requests);
        match result {
            Ok(replies) => {
                self.succeeded(server);
                Ok(replies)
            }
            Err(err) => {
                self.conns.remove(&address);
                let text = err.to_string();
                self.failed(server, &text, errno(&err));
                Err(Error::Network {
                    server: address.to_string(),
                    error: text,
                })
            }
        }
    }

    fn exchange(
        &mut self,
        address: &Address,
        requests: &[Request<'_>],
    ) -> Result<Vec<Reply>, ConnError> {
        if !self.conns.contains_key(address) {
            let conn = Conn::connect(address, self.timeouts)?;
            self.conns.insert(address.clone(), conn);
        }
        let conn = self.conns.get_mut(address).expect("inserted above");
        let mut replies = Vec::with_capacity(requests.len());
        let (mut sent, mut in_flight) = (0, std::collections::VecDeque::new());
        let mut in_flight_bytes = 0;
        while replies.len() < requests.len() {
            // Fill the window (always at least one request in flight).
            self.scratch.clear();
            while sent < requests.len()
                && (in_flight.is_empty() || in_flight_bytes + self.scratch.len() < PIPELINE_WINDOW)
            {
                let before = self.scratch.len();
                requests[sent].encode(&mut self.scratch);
                in_flight.push_back((requests[sent].expects(), self.scratch.len() - before));
                sent += 1;
            }
            if !self.scratch.is_empty() {
                conn.send(&self.scratch)?;
                in_flight_bytes += self.scratch.len();
            }
            let (expect, len) = in_flight.pop_front().expect("a request is in flight");
            replies.push(conn.receive(expect)?);
            in_flight_bytes -= len;
        }
        Ok(replies)
    }

    fn stored(&self, server: usize, reply: Reply) -> Result<Stored> {
        match reply {
            Reply::Stored => Ok(Stored::Stored),
            Reply::NotStored => Ok(Stored::NotStored),
            Reply::Exists => Ok(Stored::Exists),
            Reply::NotFound => Ok(Stored::NotFound),
            other => Err(self.unexpected(server, other)),
        }
    }

    /// A reply that is an error from the server, or not the kind the request expects.
    fn unexpected(&self, server: usize, reply: Reply) -> Error {
        let server = self.address(server).to_string();
        match reply {
            Reply::ServerError(message) => Error::ServerError { server, message },
            Reply::ClientError(message) => Error::ClientError { server, message },
            Reply::Error => Error::UnknownCommand { server },
            other => Error::Network {
                server,
                error: format!("unexpected reply {other:?}"),
            },
        }
    }

    // --- the shared failure view -------------------------------------------------------------

    fn succeeded(&mut self, server: usize) {
        let snapshot = self.routing().snapshot.clone();
        let server = &snapshot.servers[server];
        if let Source::Registry(registry) = &self.source {
            registry.record_success(server);
        }
        if !self.local_failures.is_empty() {
            self.local_failures.remove(&server.address);
        }
    }

    fn failed(&mut self, index: usize, error: &str, errno: i32) {
        let snapshot = self.routing().snapshot.clone();
        let server = &snapshot.servers[index];
        let shared = match &self.source {
            Source::Registry(registry) => registry.record_failure(server),
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
        if failures >= u32::from(snapshot.policy.failure_limit) && server.state == State::Up {
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
        let reason = format!(
            "{failures} consecutive failures, last: {error} (pid {})",
            std::process::id()
        );
        let reason: String = reason
            .chars()
            .take(crate::table::MAX_REASON_LEN / 2)
            .collect();
        let published = match &self.source {
            Source::Registry(registry) => {
                let dir = registry.path().parent().unwrap_or(Path::new("."));
                Registry::open_writer(dir, registry.domain(), false).and_then(|mut writer| {
                    writer.transact(|t| {
                        edit::mark_down(&mut t.servers, server.id, &reason, commit_info());
                        Ok(())
                    })
                })
            }
            Source::Servers(_) => Err(Error::NoServers {
                what: String::new(),
            }),
        };
        match published {
            Ok(_) => MarkedDown::ForEveryone,
            Err(err) => {
                debug_assert!(err.kind() != ErrorKind::BadInput);
                self.local_down.insert(server.address.clone());
                self.local_epoch += 1;
                MarkedDown::LocallyOnly
            }
        }
    }
}

/// A connection failure as an errno value (see [`FailureEvent::errno`]).
fn errno(err: &ConnError) -> i32 {
    match err {
        ConnError::Io(e) => match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => libc::ETIMEDOUT,
            std::io::ErrorKind::UnexpectedEof => libc::ECONNRESET,
            _ => e.raw_os_error().unwrap_or(libc::EIO),
        },
        ConnError::Protocol(_) => libc::EPROTO,
    }
}

fn build_ring(servers: &[Server], members: &[usize]) -> Ring {
    let names: Vec<String> = members
        .iter()
        .map(|&i| point_name(&servers[i].address))
        .collect();
    Ring::build(
        names
            .iter()
            .map(String::as_str)
            .zip(members.iter().map(|&i| servers[i].weight)),
    )
}

impl Drop for Client {
    fn drop(&mut self) {
        if let (Source::Registry(registry), Some(slot)) = (&self.source, self.client_slot) {
            registry.release_client(slot);
        }
    }
}
