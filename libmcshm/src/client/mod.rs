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
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::address::Address;
use crate::conn::{Conn, ConnError, Timeouts};
use crate::domain::Domain;

use crate::error::{Error, Result};
use crate::proto::{self, Item, Reply, Request, StoreVerb};
use crate::table::Snapshot;

mod handover;
mod requests;

pub use handover::Moved;

pub use mcshm_route::{
    FailureEvent, Fill, FillKind, MarkedDown, Outcome, ReadPlan, RetryProbe, Router, ServerRef,
    WritePlan, io_errno,
};

/// Keys per `get` command when a multi-get is pipelined.
const KEYS_PER_GET: usize = 100;
/// Request bytes a pipeline keeps in flight before it reads replies (below the kernel's socket
/// buffers, so neither side ever blocks on a full buffer).
const PIPELINE_WINDOW: usize = 64 * 1024;

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

/// A key of a batch and its replicas (positions in the table the batch was routed on).
type Routed<'k> = (&'k [u8], Vec<usize>);

/// A memcached client over a registry domain or a private server list. Use one per thread.
/// Its decisions are the [`Router`]'s; it adds blocking connections.
pub struct Client {
    router: Router,
    timeouts: Timeouts,
    conns: HashMap<Address, Conn>,
    scratch: Vec<u8>,
    /// The domain whose credentials (see [`crate::auth`]) every new connection presents; read
    /// at each connect, so that changed credentials are used without a restart.
    auth_domain: Option<(PathBuf, Domain)>,
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
        client.auth_domain = Some((dir.as_ref().to_path_buf(), domain.clone()));
        Ok(client)
    }

    /// The credentials a new connection presents (none for a private server list).
    fn credentials(&self) -> std::result::Result<Option<crate::auth::Credentials>, ConnError> {
        match &self.auth_domain {
            Some((dir, domain)) => {
                crate::auth::load(dir, domain).map_err(|e| ConnError::Auth(e.to_string()))
            }
            None => Ok(None),
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

    fn new(router: Router, timeouts: Timeouts) -> Client {
        Client {
            router,
            timeouts,
            conns: HashMap::new(),
            scratch: Vec::new(),
            auth_domain: None,
        }
    }

    /// Calls `callback` on every failed operation (to log or alert).
    pub fn on_failure(&mut self, callback: impl FnMut(&FailureEvent<'_>) + Send + 'static) {
        self.router.on_failure(callback);
    }

    /// Refreshes the routing and runs any retry probe it found due.
    fn refresh(&mut self) -> Result<()> {
        let refreshed = self.router.refresh();
        self.run_probes();
        refreshed
    }

    fn run_probes(&mut self) {
        for probe in self.router.take_probes() {
            crate::lifecycle::run_probe(probe, self.timeouts);
        }
    }

    /// The key's replicas (see [`Router::chain`]), probes run.
    fn chain(&mut self, key: &[u8]) -> Result<Vec<usize>> {
        let chain = self.router.chain(key);
        self.run_probes();
        chain
    }

    fn is_down(&self, i: usize) -> bool {
        self.router.is_down(i)
    }

    fn address(&self, i: usize) -> Address {
        self.router.address(i).clone()
    }

    /// The table the client routes with now.
    pub fn snapshot(&mut self) -> Result<Arc<Snapshot>> {
        self.refresh()?;
        Ok(self.router.snapshot().clone())
    }

    /// The server `key` maps to (up or down).
    pub fn server_for(&mut self, key: &[u8]) -> Result<&Address> {
        let i = self.router.owner(key)?;
        self.run_probes();
        Ok(self.router.address(i))
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

    /// Executes the router's read plan: the replicas in order, the first hit wins; a miss on
    /// all is a miss, then the plan's fills (warm-up, drain); an error only if no replica
    /// answered.
    fn retrieve(&mut self, key: &[u8], cas: bool, touch: Option<i64>) -> Result<Option<Item>> {
        let plan = self.router.plan_read(key, crate::registry::now_ms());
        self.run_probes();
        let plan = plan?;
        let (mut answered, mut last_error) = (false, None);
        for server in &plan.replicas {
            match self.get_one(server.index, key, cas, touch) {
                Ok(Some(item)) => return Ok(Some(item)),
                Ok(None) => answered = true,
                Err(err) => last_error = Some(err),
            }
        }
        for fill in &plan.fills {
            if let Some(item) = self.fill(fill, key, cas, touch) {
                return Ok(Some(item));
            }
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

    /// Gets many keys: grouped per server, each group pipelined in `get` commands of up to 100
    /// keys; keys missed (or failed) on their first replica are asked of the next; keys every
    /// replica missed get the single get's fallbacks (warm-up, drain) and their owner asked
    /// again if the table changed during the batch. Keys of down
    /// servers are misses; keys no replica answered for are reported in `errors`. Bad keys fail
    /// the whole call before anything is sent.
    pub fn get_many(&mut self, keys: &[&[u8]], cas: bool) -> Result<MultiGet> {
        let (mut pending, version) = self.route_batch(keys)?;
        // Where each key was asked first, in the table the batch is routed with.
        let owners: Vec<(&[u8], usize)> = pending.iter().map(|(k, chain)| (*k, chain[0])).collect();
        let mut result = MultiGet::default();
        // A failed server, and the keys it was asked for.
        let mut failed: HashMap<usize, (Error, Vec<&[u8]>)> = HashMap::new();
        let replicas = pending.iter().map(|p| p.1.len()).max().unwrap_or(0);
        // With replicas: keys some server answered (hit or miss), so that a failure another
        // replica made up for is not reported.
        let mut answered: HashSet<&[u8]> = HashSet::new();
        for round in 0..replicas {
            let mut groups: HashMap<usize, Vec<&[u8]>> = HashMap::new();
            for (key, chain) in &pending {
                if let Some(&server) = chain.get(round)
                    && !self.is_down(server)
                {
                    groups.entry(server).or_default().push(key);
                }
            }
            // Which keys hit, for the next round; the last round (with one replica, the only
            // one) needs no bookkeeping.
            let last_round = round + 1 == replicas;
            let mut hits: HashSet<Vec<u8>> = HashSet::new();
            // Every server gets its share before any reply is read (see `pipelines`).
            let groups: Vec<(usize, Vec<&[u8]>)> = groups.into_iter().collect();
            let requests: Vec<(usize, Vec<Request>)> = groups
                .iter()
                .map(|(server, keys)| {
                    let gets = keys
                        .chunks(KEYS_PER_GET)
                        .map(|chunk| Request::Get {
                            keys: chunk,
                            cas,
                            touch: None,
                        })
                        .collect();
                    (*server, gets)
                })
                .collect();
            let outcomes = self.pipelines(&requests);
            for ((server, keys), outcome) in groups.into_iter().zip(outcomes) {
                let mut error = None;
                match outcome {
                    Ok(replies) => {
                        for reply in replies {
                            match reply {
                                Reply::Values(items) => {
                                    if !last_round {
                                        hits.extend(items.iter().map(|i| i.key.clone()));
                                    }
                                    result.items.extend(items);
                                }
                                other => error = Some(self.unexpected(server, other)),
                            }
                        }
                    }
                    Err(err) => error = Some(err),
                }
                match error {
                    Some(err) => {
                        failed
                            .entry(server)
                            .or_insert((err, Vec::new()))
                            .1
                            .extend(&keys);
                    }
                    None if replicas > 1 => answered.extend(&keys),
                    None => {}
                }
            }
            if !last_round {
                pending.retain(|(key, _)| !hits.contains(*key));
            }
        }
        // Keys every replica missed get what a single get would do now (the router's plan of
        // a read): their owner asked again if the table changed during the batch (a drain may
        // have moved them there), then the plan's fills (warm-up, drain).
        let changed = self.router.refresh().is_ok() && self.router.snapshot().version != version;
        let now = crate::registry::now_ms();
        if changed || self.router.fills_possible(now) {
            let filled = self.fill_misses(&result.items, owners, &failed, version, cas, now);
            result.items.extend(filled);
        }
        for (server, (err, asked)) in failed {
            if asked.iter().any(|key| !answered.contains(key)) {
                result.errors.push((self.address(server), err));
            }
        }
        Ok(result)
    }

    /// The misses of a multi-get (keys not in `items`, whose first server did not fail),
    /// planned again one by one: the owner asked again if the table changed since the batch was
    /// routed on `version`, then the plan's fills. The items found.
    fn fill_misses(
        &mut self,
        items: &[Item],
        owners: Vec<(&[u8], usize)>,
        failed: &HashMap<usize, (Error, Vec<&[u8]>)>,
        version: u64,
        cas: bool,
        now: u64,
    ) -> Vec<Item> {
        let hit: HashSet<&[u8]> = items.iter().map(|i| i.key.as_slice()).collect();
        let mut filled = Vec::new();
        for (key, first) in owners {
            if hit.contains(key) || failed.contains_key(&first) {
                continue;
            }
            let Ok(plan) = self.router.plan_read(key, now) else {
                continue;
            };
            // Planning reads the table afresh: a drain that ended while the misses were being
            // filled leaves plans without fills, and the key on its new owner.
            let changed = self.router.snapshot().version != version;
            if plan.fills.is_empty() && !changed {
                continue;
            }
            let mut found = None;
            if changed && plan.replicas.first() == Some(&plan.owner) {
                found = self
                    .get_one(plan.owner.index, key, cas, None)
                    .ok()
                    .flatten();
            }
            for fill in &plan.fills {
                if found.is_none() {
                    found = self.fill(fill, key, cas, None);
                }
            }
            filled.extend(found);
        }
        filled
    }

    /// The replicas of each key, and the table version they were routed on. Routing a key
    /// reads the table, so a batch could straddle two versions (keys routed before a drain
    /// began to the server it drains, the rest to their new owner): a batch that did is routed
    /// again, up to three times. The version returned is the one read before routing, so that
    /// a change during routing still makes the batch ask the owners of its misses again.
    fn route_batch<'k>(&mut self, keys: &[&'k [u8]]) -> Result<(Vec<Routed<'k>>, u64)> {
        let mut attempt = 0;
        loop {
            self.refresh()?;
            let version = self.router.snapshot().version;
            let mut routed = Vec::with_capacity(keys.len());
            for &key in keys {
                routed.push((key, self.chain(key)?));
            }
            attempt += 1;
            if self.router.snapshot().version == version || attempt == 3 {
                return Ok((routed, version));
            }
        }
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
        self.write(key, &request, only_first, |c, server, reply| {
            c.stored(server, reply)
        })
    }

    pub fn set(&mut self, key: &[u8], value: &[u8], flags: u32, ttl: i64) -> Result<Stored> {
        self.store(StoreVerb::Set, key, value, flags, ttl)
    }

    /// Sends a write to the key's up replicas; returns the first one's reply. Then the
    /// invalidations of the module doc (rehash: next server along the ring; a draining owner).
    fn write<T>(
        &mut self,
        key: &[u8],
        request: &Request<'_>,
        only_first: bool,
        interpret: impl FnOnce(&Self, usize, Reply) -> Result<T>,
    ) -> Result<T> {
        let chain = self.chain(key)?;
        // The table the write is routed on (an Arc: the addresses of its positions, should the
        // table change while the write is in flight).
        let routed = self.router.snapshot().clone();
        let up = self.router.write_targets(&chain, only_first);
        self.run_probes();
        let up = up?;
        let stale = self.router.invalidations(key, chain.len());
        let (mut answer, mut last_error) = (None, None);
        let mut take = |server: usize, result: Result<Reply>| match result {
            Ok(reply) if answer.is_none() => answer = Some((server, reply)),
            Ok(_) => {}
            Err(err) => last_error = Some(err),
        };
        if stale.is_empty() && up.len() == 1 {
            take(up[0], self.call(up[0], request));
        } else {
            // The replicas and the invalidations in one fan-out: their round trips overlap.
            let delete = Request::Delete { key };
            let calls: Vec<(usize, &Request<'_>)> = up
                .iter()
                .map(|&i| (i, request))
                .chain(stale.iter().map(|&i| (i, &delete)))
                .collect();
            for (&server, result) in up.iter().zip(self.fan_out(&calls)) {
                take(server, result);
            }
        }
        // The reply is read while the positions are of the table the write was routed on.
        let outcome = match (answer, last_error) {
            (Some((server, reply)), _) => interpret(self, server, reply),
            (None, Some(err)) => Err(err),
            (None, None) => Err(self.router.down_error(up[0])),
        };
        self.follow_table_change(key, request, &routed, &up);
        outcome
    }

    /// A write routed on table `routed` (to its servers `up`), which changed while the write
    /// was in flight, may have landed where the key no longer belongs: it is deleted from those
    /// servers and the new version's invalidations are done; set and delete (which can be
    /// repeated) are sent again to the new replicas. Up to three changes are followed. One
    /// atomic load when the table did not change.
    fn follow_table_change(
        &mut self,
        key: &[u8],
        request: &Request<'_>,
        routed: &Snapshot,
        up: &[usize],
    ) {
        let mut version = routed.version;
        if self.router.version_now() == version {
            return;
        }
        let mut written: Vec<Address> = up
            .iter()
            .map(|&i| routed.servers[i].address.clone())
            .collect();
        let repeatable = matches!(
            request,
            Request::Delete { .. }
                | Request::Store {
                    verb: StoreVerb::Set,
                    ..
                }
        );
        for _ in 0..3 {
            if self.router.refresh().is_err() || self.router.snapshot().version == version {
                return;
            }
            version = self.router.snapshot().version;
            let Ok(chain) = self.router.chain(key) else {
                return;
            };
            let replicas: Vec<Address> = chain.iter().map(|&i| self.address(i)).collect();
            let servers = self.router.snapshot().servers.clone();
            for (i, server) in servers.iter().enumerate() {
                let was_written = written.iter().any(|a| a.same_server(&server.address));
                let replica = replicas.iter().any(|a| a.same_server(&server.address));
                if self.is_down(i) {
                    continue;
                }
                if was_written && !replica {
                    let _ = self.call(i, &Request::Delete { key });
                } else if replica && !was_written && repeatable {
                    let _ = self.call(i, request);
                    written.push(server.address.clone());
                }
            }
            self.invalidate_elsewhere(key, chain.len());
        }
    }

    /// After many writes: each key deleted where a stale copy of it could later be served
    /// from, pipelined per server.
    fn invalidate_many<'k>(&mut self, keys: impl Iterator<Item = &'k [u8]>) {
        let mut groups: HashMap<usize, Vec<&'k [u8]>> = HashMap::new();
        let replicas = usize::from(self.router.snapshot().policy.replicas.max(1));
        for key in keys {
            for server in self.router.invalidations(key, replicas) {
                groups.entry(server).or_default().push(key);
            }
        }
        for (server, keys) in groups {
            let requests: Vec<Request> = keys
                .into_iter()
                .map(|key| Request::Delete { key })
                .collect();
            let _ = self.pipeline(server, &requests);
        }
    }

    /// After a write: delete the key where a stale copy could later be served from.
    fn invalidate_elsewhere(&mut self, key: &[u8], replicas: usize) {
        for server in self.router.invalidations(key, replicas) {
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
                if !self.is_down(server) {
                    groups.entry(server).or_default().push(n);
                    any = true;
                }
            }
            if !any {
                let owner = self.router.owner(item.key)?;
                results[n] = Some(Err(self.router.down_error(owner)));
            }
        }
        // Every server's share is pipelined at once (see `pipelines`).
        let groups: Vec<(usize, Vec<usize>)> = groups.into_iter().collect();
        let requests: Vec<(usize, Vec<Request>)> = groups
            .iter()
            .map(|(server, members)| {
                let requests = members
                    .iter()
                    .map(|&n| Request::Store {
                        verb,
                        key: items[n].key,
                        flags: items[n].flags,
                        exptime: items[n].ttl,
                        value: items[n].value,
                    })
                    .collect();
                (*server, requests)
            })
            .collect();
        let outcomes = self.pipelines(&requests);
        for ((server, members), outcome) in groups.into_iter().zip(outcomes) {
            match outcome {
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
        self.invalidate_many(items.iter().map(|item| item.key));
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
        self.write(
            key,
            &Request::Delete { key },
            false,
            |c, server, reply| match reply {
                Reply::Deleted => Ok(true),
                Reply::NotFound => Ok(false),
                other => Err(c.unexpected(server, other)),
            },
        )
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
        self.write(key, &request, false, |c, server, reply| match reply {
            Reply::Number(n) => Ok(Some(n)),
            Reply::NotFound => Ok(None),
            other => Err(c.unexpected(server, other)),
        })
    }

    /// Sets a new expiration time (on every replica); `false` if the key does not exist.
    pub fn touch(&mut self, key: &[u8], ttl: i64) -> Result<bool> {
        let request = Request::Touch { key, exptime: ttl };
        self.write(key, &request, false, |c, server, reply| match reply {
            Reply::Touched => Ok(true),
            Reply::NotFound => Ok(false),
            other => Err(c.unexpected(server, other)),
        })
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
        let snapshot = self.router.snapshot().clone();
        let chosen: Vec<usize> = match only {
            Some(address) => vec![snapshot.position(address)?],
            None => (0..snapshot.servers.len()).collect(),
        };
        let mut results = Vec::new();
        for i in chosen {
            let address = snapshot.servers[i].address.clone();
            let result = if self.is_down(i) {
                Err(self.router.down_error(i))
            } else {
                self.call(i, request)
                    .and_then(|reply| accept(reply).map_err(|other| self.unexpected(i, other)))
            };
            results.push((address, result));
        }
        Ok(results)
    }
}
