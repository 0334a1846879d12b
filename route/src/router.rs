//! The router: the routing core of every front end (the blocking `libmcshm::Client` and
//! `mcproxy`), no sockets. It owns the decisions and none of the sockets: the ring of each table version
//! (the one the writer put in the file, looked up in place; built here only for files of older
//! formats, when this process's own failure view takes servers off it, or when the file's ring
//! cannot be used), a key's replicas along it, which servers are down, where stale copies must be invalidated after a write, the warm-up
//! and drain fallbacks, the shared failure counts, and which retry probes are due. A front end
//! asks the router where to send a request, does the I/O its own way, and tells the router how
//! it went ([`Router::report`], by server id); so each rule is written once, here.
//!
//! Every routing call is given the time (`now_ms`); the router reads no clock. Its only
//! blocking work is local: reading the registry, and marking a server down (a short
//! file-locked transaction) when the front end carries out a [`crate::Failure`]'s mark-down.
//! The retry probe talks to a server, so the router hands it out as a [`RetryProbe`] for the
//! front end to run where blocking is allowed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use mcshm_table::address::Address;
use mcshm_table::domain::Domain;
use mcshm_table::error::{Error, Result};
use mcshm_table::fence;
use mcshm_table::key::{self, KeyError};
use mcshm_table::placement::{BucketLocator, Locator, Member, Placed};
use mcshm_table::registry::Registry;
use mcshm_table::registry::RingView;
use mcshm_table::table::{Failover, Policy, Server, Snapshot, State, members};
use mcshm_table::work::WorkCounters;

use crate::PERIODIC_OPS;
use crate::report::MarkDown;

pub(crate) enum Source {
    Registry(Box<Registry>),
    Servers(Arc<Snapshot>),
}

/// The routing of one table version.
struct Routing {
    snapshot: Arc<Snapshot>,
    local_epoch: u64,
    /// The version's ring in the shared file (format 3), looked up in place.
    shared: Option<RingView>,
    /// The placement built in this process: always for a domain placed without a ring
    /// (modula, PECL memcache); for a ketama domain when the file has no shared ring, when this
    /// process's own failure view takes servers off it, or when the shared one cannot be used
    /// (lapped, damaged).
    local: OnceLock<Locator>,
    /// With draining servers: the placement that still includes them (where a key was),
    /// built when a plan first asks where a key was (a lookup never needs it).
    before_drain: OnceLock<Locator>,
    /// Down servers with a retry interval (candidates for the retry probe).
    probeable: Vec<usize>,
    /// Draining servers.
    draining: Vec<usize>,
    /// Their addresses and weights (what `before_drain` was built from, besides the ring).
    drained: Vec<(Address, u16)>,
    /// Servers that may hold copies of keys they no longer own (`Server::strays_since`): a
    /// write deletes its key there (see [`mcshm_table::coherence`]).
    strays: Vec<usize>,
    /// Under the `replay` rejoin policy and `rehash`, with servers down: the placement that
    /// still includes them (whose replicas a write misses), built when a write first asks.
    with_down: Option<OnceLock<Locator>>,
    /// Down servers (a write's key is logged for them under `replay`; none: nothing to log).
    down: Vec<usize>,
}

/// A retry probe the router found due (its lease is taken): run it with
/// `libmcshm::lifecycle::run_probe`, which connects to the server and may block for the
/// domain's timeouts.
#[derive(Debug)]
pub struct RetryProbe {
    dir: PathBuf,
    domain: Domain,
    server: u32,
}

impl RetryProbe {
    /// The id of the server to probe.
    pub fn server_id(&self) -> u32 {
        self.server
    }

    /// The domain opened for writing, as the probe's rejoin needs it: it never waits for
    /// another writer (a probe runs in a client's operation; the next lease tries again).
    pub fn open_writer(&self) -> Result<Registry> {
        let mut writer = Registry::open_writer(&self.dir, &self.domain, false)?;
        writer.set_lock_wait(mcshm_table::registry::LockWait::Never);
        Ok(writer)
    }
}

/// Routing decisions and the failure view of one domain (or private server list). Index `i`
/// in every method is a position in [`Router::snapshot`]'s servers, valid until the next
/// [`Router::refresh`].
pub struct Router {
    pub(crate) source: Source,
    routing: Option<Routing>,
    pub(crate) local_failures: HashMap<Address, u32>,
    pub(crate) local_down: HashSet<Address>,
    pub(crate) local_epoch: u64,
    pub(crate) reported: HashSet<Address>,
    /// Mark-downs that found another writer at work, retried later.
    pub(crate) pending_down: Vec<MarkDown>,
    /// The time of the operation being routed (ms since the Unix epoch), as given to
    /// [`Router::refresh`]: the router reads no clock.
    pub(crate) now_ms: u64,
    ops: u64,
    client_slot: Option<usize>,
    probes: Vec<RetryProbe>,
    /// Rings built in this process, and their points (see [`Router::work`]).
    rings_built: AtomicU64,
    ring_points_built: AtomicU64,
    /// The rest of this router's own work (its registry counts its reads).
    work: WorkCounters,
    /// Under the `replay` rejoin policy: the domain's invalidation log, where a write records
    /// its key for each down server that should have had it (see [`crate::missed`]).
    pub(crate) missed: crate::missed::MissedLog,
}

impl Router {
    /// The router of a registry domain. Counting failures needs write access to the registry
    /// file; without it the router keeps its failure view to itself.
    pub fn for_domain(dir: impl AsRef<Path>, domain: &Domain) -> Result<Router> {
        let dir = dir.as_ref();
        let mut registry = match Registry::open_writer(dir, domain, false) {
            Err(Error::PermissionDenied { .. }) => Registry::open(dir, domain)?,
            other => other?,
        };
        // Its mark-downs run inside a client's operation: they never wait for another writer.
        registry.set_lock_wait(mcshm_table::registry::LockWait::Never);
        let client_slot = registry.register_client();
        let mut router = Router::new(Source::Registry(Box::new(registry)));
        router.client_slot = client_slot;
        Ok(router)
    }

    /// The router of a private server list (weights 1, failover none).
    pub fn for_servers(servers: &[Address]) -> Result<Router> {
        let weighted: Vec<(Address, u16)> = servers.iter().map(|a| (a.clone(), 1)).collect();
        Router::for_weighted_servers(&weighted)
    }

    /// The router of a private server list with weights (failover none), as
    /// [`Address::parse_weighted_list`] reads one.
    pub fn for_weighted_servers(servers: &[(Address, u16)]) -> Result<Router> {
        let servers: Vec<Server> = servers
            .iter()
            .enumerate()
            .map(|(i, (a, weight))| Server {
                id: i as u32 + 1,
                live: i as u32,
                weight: (*weight).max(1),
                ..Server::new(a.clone())
            })
            .collect();
        if let Some(dup) = mcshm_table::table::first_duplicate(&servers) {
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
            fleet_revision: 0,
            buckets: None,
        };
        Ok(Router::new(Source::Servers(Arc::new(snapshot))))
    }

    /// The router of a table given as it is, without a registry: the rules on a hand-built
    /// table (this process keeps its failure view to itself, and takes no retry lease).
    pub fn for_snapshot(snapshot: Snapshot) -> Router {
        Router::new(Source::Servers(Arc::new(snapshot)))
    }

    fn new(source: Source) -> Router {
        Router {
            source,
            routing: None,
            local_failures: HashMap::new(),
            local_down: HashSet::new(),
            local_epoch: 0,
            reported: HashSet::new(),
            pending_down: Vec::new(),
            now_ms: 0,
            ops: 0,
            client_slot: None,
            probes: Vec::new(),
            rings_built: AtomicU64::new(0),
            ring_points_built: AtomicU64::new(0),
            work: WorkCounters::default(),
            missed: crate::missed::MissedLog::default(),
        }
    }

    /// A key's position on the domain's ketama ring (MD5, or ketama-unweighted's hash).
    fn ring_hash(&self, key: &[u8]) -> u32 {
        let distribution = self.routing().snapshot.policy.distribution;
        distribution.points().map_or_else(
            || mcshm_table::hash::ketama_md5(key),
            |points| points.hash_key(key),
        )
    }

    fn routing(&self) -> &Routing {
        self.routing
            .as_ref()
            .expect("refresh() builds the routing first")
    }

    /// The table routed with (after a [`Router::refresh`]).
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.routing().snapshot
    }

    /// How many times this router built its ring (diagnostics: a change that leaves the ring's
    /// members and weights alone builds none).
    pub fn ring_builds(&self) -> u64 {
        self.rings_built.load(Ordering::Relaxed)
    }

    /// What routing cost this router since it was made: its registry's reads (entries decoded,
    /// bytes copied, shared rings opened) and its own work (rings built here, server lists
    /// scanned). Plain counters, for tests and diagnostics: a change of one server of 10 000
    /// should cost a reader what one server costs, and no ring.
    pub fn work(&self) -> WorkCounters {
        let own = WorkCounters {
            rings_built: self.rings_built.load(Ordering::Relaxed),
            ring_points_built: self.ring_points_built.load(Ordering::Relaxed),
            ..self.work
        };
        match &self.source {
            Source::Registry(registry) => own.plus(&registry.work()),
            Source::Servers(_) => own,
        }
    }

    /// The placement of `members` for `distribution`, built here (and counted).
    fn build(&self, snapshot: &Snapshot, members: &[Member<'_>]) -> Locator {
        let distribution = snapshot.policy.distribution;
        let buckets = snapshot.buckets.as_ref();
        let locator = Locator::build_with(distribution, members, buckets, snapshot.servers.len());
        if distribution.has_ring() {
            self.rings_built.fetch_add(1, Ordering::Relaxed);
            self.ring_points_built
                .fetch_add(locator.points() as u64, Ordering::Relaxed);
        }
        locator
    }

    /// Retry probes found due since the last call: run each where blocking is allowed.
    pub fn take_probes(&mut self) -> Vec<RetryProbe> {
        std::mem::take(&mut self.probes)
    }

    /// The table's committed version now (one atomic load; no routing is rebuilt): whether the
    /// table changed since a decision, without counting an operation.
    pub fn version_now(&mut self) -> u64 {
        match &mut self.source {
            Source::Registry(registry) => registry.version(),
            Source::Servers(s) => s.version,
        }
    }

    /// Counts an answer a server's fence judged behind this host's table, in the table's
    /// header for every process on the host to see (`mcadmin list`, the metrics page).
    pub fn count_fenced(&mut self) {
        if let Source::Registry(registry) = &mut self.source {
            registry.count_fenced();
        }
    }

    /// Blocks until the table's version is past `since` or `timeout` passes (the registry's
    /// futex: a commit in any process wakes it); the new version, or `None`. A table without a
    /// registry never changes: `None` at once.
    pub fn wait_for_change(&mut self, since: u64, timeout: std::time::Duration) -> Option<u64> {
        match &mut self.source {
            Source::Registry(registry) => registry.wait_for_change(since, timeout),
            Source::Servers(_) => None,
        }
    }

    /// Starts routing an operation at `now_ms` (ms since the Unix epoch; the time every
    /// decision until the next refresh is made at, the retry leases' included): rebuilds the
    /// routing when the table version (or the local failure view) changed, one atomic load
    /// otherwise, so a front end may call it wherever it needs the current table. Operations
    /// are counted by the key lookups ([`Router::chain`]), not here.
    pub fn refresh(&mut self, now_ms: u64) -> Result<()> {
        self.now_ms = now_ms;
        let version = self.version_now();
        if let Some(r) = &self.routing
            && r.snapshot.version == version
            && r.local_epoch == self.local_epoch
        {
            return Ok(());
        }
        // Let go of the old version first: the registry then updates the snapshot in place
        // (a change of a few servers of 10 000 costs what those few cost).
        let old = self.routing.take().map(|r| {
            // What a placement that includes the draining servers was built from: kept for the
            // new version when it routes on the same ring with the same draining servers.
            let before_drain = (
                r.shared.map(|v| v.identity()),
                r.local_epoch,
                r.drained,
                r.before_drain,
            );
            (
                r.snapshot.version,
                r.probeable,
                r.draining,
                r.strays,
                r.down,
                before_drain,
            )
        });
        let (snapshot, shared, delta) = match &mut self.source {
            Source::Registry(registry) => {
                let (snapshot, ring) = registry.snapshot_and_ring()?;
                (snapshot, ring, registry.last_delta())
            }
            Source::Servers(s) => (s.clone(), None, None),
        };
        if old.as_ref().is_some_and(|o| o.0 != snapshot.version) {
            // The operator changed the table: our private view of it starts again.
            self.local_down.clear();
        }
        let servers = &snapshot.servers;
        let distribution = snapshot.policy.distribution;
        // The file's ring routes unless this process has taken servers off it on its own.
        let shared = shared
            .filter(|_| snapshot.policy.failover == Failover::None || self.local_down.is_empty());
        let shared = shared.filter(|_| distribution.has_ring());
        let local = OnceLock::new();
        if shared.is_none() {
            let routed: Vec<usize> = (0..servers.len())
                .filter(|&i| self.on_ring(&snapshot, i))
                .collect();
            let _ = local.set(self.build(&snapshot, &members(servers, &routed)));
        }
        // Positions of down servers with a retry interval, and of draining servers: updated
        // for the changed positions only when the registry read a change of our version.
        let changed = delta.filter(|d| old.as_ref().is_some_and(|o| o.0 == d.base));
        let (old_probeable, old_draining, old_strays, old_down, old_before_drain) = match old {
            Some(o) => (o.1, o.2, o.3, o.4, Some(o.5)),
            None => Default::default(),
        };
        let probeable = positions(servers, changed, old_probeable, |s| {
            s.retry_interval_ms().is_some()
        });
        let kept_draining = old_draining.clone();
        let draining = positions(servers, changed, old_draining, |s| {
            s.state == State::Draining
        });
        let drained: Vec<(Address, u16)> = draining
            .iter()
            .map(|&i| (servers[i].address.clone(), servers[i].weight))
            .collect();
        // The placement with the draining servers, when the old version had built it and the
        // new one routes on the same shared ring with the same draining servers (a reason, a
        // retry interval, a failure count: most changes during a drain): the same members at
        // the same positions, so the same placement, not built again.
        let before_drain = OnceLock::new();
        if let Some((ring, epoch, old_drained, built)) = old_before_drain
            && ring.is_some()
            && ring == shared.map(|v| v.identity())
            && epoch == self.local_epoch
            && self.local_down.is_empty()
            && kept_draining == draining
            && old_drained == drained
            && let Some(locator) = built.into_inner()
        {
            let _ = before_drain.set(locator);
        }
        let strays = positions(servers, changed, old_strays, |s| s.strays_since != 0);
        let down = positions(servers, changed, old_down, |s| s.state == State::Down);
        if changed.is_none() {
            self.work.servers_scanned += servers.len() as u64;
        }
        let replaying = snapshot.policy.rejoin == mcshm_table::table::Rejoin::Replay;
        let with_down =
            (replaying && snapshot.policy.failover == Failover::Rehash && !down.is_empty())
                .then(OnceLock::new);
        if replaying && let Source::Registry(registry) = &self.source {
            self.missed.open(registry);
        }
        self.routing = Some(Routing {
            snapshot,
            local_epoch: self.local_epoch,
            shared,
            local,
            before_drain,
            probeable,
            draining,
            drained,
            strays,
            with_down,
            down,
        });
        self.periodic();
        Ok(())
    }

    /// One operation (a key looked up): every [`PERIODIC_OPS`] of them, the periodic work.
    /// Counted here, not per refresh: a front end may refresh several times per operation
    /// (mcproxy: deciding, planning, reporting), and the period is in operations.
    fn count_operation(&mut self) {
        self.ops += 1;
        if self.ops.is_multiple_of(PERIODIC_OPS) {
            self.periodic();
        }
    }

    /// Every [`PERIODIC_OPS`] operations (and on every new version): note in the clients record
    /// that we use this version, and give down servers off the ring their retry probe.
    fn periodic(&mut self) {
        if !self.pending_down.is_empty() {
            self.retry_pending_down();
        }
        if let (Source::Registry(registry), Some(slot)) = (&self.source, self.client_slot) {
            registry.touch_client(slot, self.routing().snapshot.version);
        }
        for server in self.routing().probeable.clone() {
            self.maybe_probe(server);
        }
    }

    /// Whether server `i` is down, in the table or in this process's own view.
    pub fn is_down(&self, i: usize) -> bool {
        let server = &self.routing().snapshot.servers[i];
        server.state == State::Down
            || (!self.local_down.is_empty() && self.local_down.contains(&server.address))
    }

    /// Whether an application may use `key` in this domain, checked as every routing call
    /// checks it (at `now_ms`, with the domain's key prefix then): memcached's rule, the
    /// prefixed length, and outside mcshm's reserved namespace. Nothing is routed or counted;
    /// for a front end that reports a bad key and goes on (a bulk get's line).
    pub fn check_key(&mut self, key: &[u8], now_ms: u64) -> Result<()> {
        key::check_key(key).map_err(|why| Error::bad_key(key, why))?;
        self.refresh(now_ms)?;
        self.check_prefixed(key)
    }

    /// What the key (it passed [`key::check_key`]) must also be once the domain's key prefix
    /// is put before it: short enough, and outside mcshm's reserved namespace (the fences,
    /// [`mcshm_table::fence`]), which no application may read or write.
    fn check_prefixed(&self, key: &[u8]) -> Result<()> {
        let prefix = self.routing().snapshot.policy.prefix;
        prefix.check_fits(key)?;
        if fence::is_reserved_with(prefix.as_bytes(), key) {
            return Err(match prefix.is_empty() {
                true => Error::bad_key(key, KeyError::Reserved),
                false => Error::bad_key(
                    key,
                    format!(
                        "{} (the domain's key prefix '{}' is put before it)",
                        KeyError::Reserved,
                        prefix.as_text()
                    ),
                ),
            });
        }
        Ok(())
    }

    /// The server a key maps to (up or down), routed at `now_ms`.
    pub fn owner(&mut self, key: &[u8], now_ms: u64) -> Result<usize> {
        key::check_key(key).map_err(|why| Error::bad_key(key, why))?;
        self.refresh(now_ms)?;
        self.count_operation();
        self.check_prefixed(key)?;
        let shared = match self.routing().shared {
            Some(_) => {
                let hash = self.ring_hash(key);
                self.shared_lookup(|registry, view| registry.ring_owner(view, hash))?
            }
            None => None,
        };
        let owner = match shared {
            Some(owner) => owner,
            None => self.local().owner(key),
        };
        owner.ok_or_else(|| Error::NoServers { what: self.what() })
    }

    /// Where `key` lands, routed at `now_ms`, and why: the owner [`Router::owner`] answers,
    /// with the key's hash and the ring point (or modula's slot, PECL's bucket) that decide
    /// it, on the placement of the routed servers (under `rehash` the up ones: a down
    /// owner's key shows its interim owner). For explaining a key (`mcadmin explain`): it
    /// looks the key up in a placement built in this process, the same as the file's ring.
    pub fn placement(&mut self, key: &[u8], now_ms: u64) -> Result<Placed> {
        key::check_key(key).map_err(|why| Error::bad_key(key, why))?;
        self.refresh(now_ms)?;
        self.check_prefixed(key)?;
        self.local()
            .place(key)
            .ok_or_else(|| Error::NoServers { what: self.what() })
    }

    /// A lookup in the shared ring of the current version. When writers have moved on since the
    /// routing was read (the ring may be rewritten), the routing is refreshed and the lookup
    /// tried again; `None` when there is no usable shared ring (build one here).
    fn shared_lookup<T>(
        &mut self,
        lookup: impl Fn(&Registry, &RingView) -> Option<T>,
    ) -> Result<Option<T>> {
        for _ in 0..4 {
            if let Some(found) = self.with_shared(&lookup) {
                return Ok(Some(found));
            }
            let routing = self.routing();
            if routing.shared.is_none() || routing.local.get().is_some() {
                return Ok(None);
            }
            let version = routing.snapshot.version;
            self.refresh(self.now_ms)?;
            if self.routing().snapshot.version == version {
                break; // the same version, and its ring unusable: damaged
            }
        }
        Ok(None)
    }

    /// A lookup in the version's shared ring, if it has one that can still be used.
    fn with_shared<T>(&self, lookup: impl FnOnce(&Registry, &RingView) -> Option<T>) -> Option<T> {
        match (&self.source, &self.routing().shared) {
            (Source::Registry(registry), Some(view)) if self.routing().local.get().is_none() => {
                lookup(registry, view)
            }
            _ => None,
        }
    }

    /// The placement built here for the version routed with (built now if need be: the file
    /// has no usable ring).
    fn local(&self) -> &Locator {
        let routing = self.routing();
        routing.local.get_or_init(|| {
            let servers = &routing.snapshot.servers;
            let policy = routing.snapshot.policy;
            let routed = mcshm_table::table::routed(servers, policy.failover);
            self.build(&routing.snapshot, &members(servers, &routed))
        })
    }

    /// With draining servers: the placement that still includes them (where a key was before
    /// the drain), built on first use for the version routed with.
    fn before_drain(&self) -> Option<&Locator> {
        let routing = self.routing();
        if routing.draining.is_empty() {
            return None;
        }
        Some(routing.before_drain.get_or_init(|| {
            let snapshot = &routing.snapshot;
            let servers = &snapshot.servers;
            let all: Vec<usize> = (0..servers.len())
                .filter(|&i| self.on_ring(snapshot, i) || servers[i].state == State::Draining)
                .collect();
            self.build(snapshot, &members(servers, &all))
        }))
    }

    /// Under `replay` and `rehash` with servers down: the placement that still includes them,
    /// built on first use for the version routed with.
    fn with_down(&self) -> Option<&Locator> {
        let routing = self.routing();
        Some(routing.with_down.as_ref()?.get_or_init(|| {
            let servers = &routing.snapshot.servers;
            let all: Vec<usize> = (0..servers.len())
                .filter(|&i| servers[i].state != State::Draining)
                .collect();
            self.build(&routing.snapshot, &members(servers, &all))
        }))
    }

    /// Whether server `i` of `snapshot` is on the ring this process routes with: the domain's
    /// rule, and under rehash not taken off by this process on its own.
    fn on_ring(&self, snapshot: &Snapshot, i: usize) -> bool {
        let server = &snapshot.servers[i];
        mcshm_table::table::routes(server, snapshot.policy.failover)
            && (snapshot.policy.failover == Failover::None
                || !self.local_down.contains(&server.address))
    }

    /// The key's replicas, routed at `now_ms`: the first `replicas` distinct servers along the
    /// ring, owner first.
    pub fn chain(&mut self, key: &[u8], now_ms: u64) -> Result<Vec<usize>> {
        key::check_key(key).map_err(|why| Error::bad_key(key, why))?;
        self.refresh(now_ms)?;
        self.count_operation();
        self.check_prefixed(key)?;
        let replicas = usize::from(self.routing().snapshot.policy.replicas.max(1));
        let shared = match self.routing().shared {
            Some(_) => {
                let hash = self.ring_hash(key);
                self.shared_lookup(|registry, view| {
                    registry.ring_servers_from(view, hash, replicas)
                })?
            }
            None => None,
        };
        let chain = shared.unwrap_or_else(|| self.local().along(key, replicas));
        if chain.is_empty() {
            return Err(Error::NoServers { what: self.what() });
        }
        Ok(chain)
    }

    /// The servers a write goes to: the up ones of `chain` (cas: the first only). With none up,
    /// the error to report, after giving the owner its retry probe.
    pub(crate) fn write_targets(
        &mut self,
        chain: &[usize],
        only_first: bool,
    ) -> Result<Vec<usize>> {
        let mut up: Vec<usize> = chain
            .iter()
            .copied()
            .filter(|&i| !self.is_down(i))
            .collect();
        if up.is_empty() {
            let &owner = chain
                .first()
                .ok_or_else(|| Error::NoServers { what: self.what() })?;
            self.maybe_probe(owner);
            return Err(self.down_error(owner));
        }
        if only_first {
            up.truncate(1);
        }
        Ok(up)
    }

    /// The first `n` distinct servers along the ring from the key, in ring order (the key was
    /// checked). Stops as soon as it has them: a full walk would visit every point.
    pub fn along_ring(&self, key: &[u8], n: usize) -> Vec<usize> {
        if self.routing().shared.is_some() {
            let hash = self.ring_hash(key);
            if let Some(servers) =
                self.with_shared(|registry, view| registry.ring_servers_from(view, hash, n))
            {
                return servers;
            }
        }
        self.local().along(key, n)
    }

    /// With a write to a key with `replicas` replicas: the servers to delete it from, where a
    /// stale copy could later be served: every server that may hold strays and is not one of
    /// the key's replicas (see [`mcshm_table::coherence`]); under rehash the next server along the
    /// ring, where the key goes if a replica fails; a draining server that owned it.
    pub(crate) fn invalidations(&self, key: &[u8], replicas: usize) -> Vec<usize> {
        self.invalidation_targets(key, replicas)
            .into_iter()
            .filter(|&i| !self.is_down(i))
            .collect()
    }

    /// Where a write of `key` deletes stale copies, down servers included (a down one misses
    /// the delete: the `replay` policy logs it for its return, see [`Router::missed_by`]).
    fn invalidation_targets(&self, key: &[u8], replicas: usize) -> Vec<usize> {
        let routing = self.routing();
        let rehash = routing.snapshot.policy.failover == Failover::Rehash;
        let walk = replicas + usize::from(rehash);
        let along = match rehash || !routing.strays.is_empty() {
            true => self.along_ring(key, walk),
            false => Vec::new(),
        };
        let chain = &along[..replicas.min(along.len())];
        let mut stale = Vec::new();
        let next = along.get(replicas).copied().filter(|_| rehash);
        stale.extend(next);
        // Linear in the marked servers (every one of them, after a change that moved keys off
        // all): each is checked against the chain and the next server only.
        stale.extend(
            routing
                .strays
                .iter()
                .copied()
                .filter(|i| !chain.contains(i) && Some(*i) != next),
        );
        if let Some(i) = self.draining_owner(key)
            && !stale.contains(&i)
        {
            stale.push(i);
        }
        stale
    }

    /// The servers that should have had a write of `key` routed on `chain` (or the delete of
    /// a stale copy it makes) and will not because they are down: under `none` its down
    /// replicas, under `rehash` the down ones of the placement that still includes them, and
    /// the down servers among its invalidations. What the `replay` policy logs.
    pub(crate) fn missed_by(&self, key: &[u8], chain: &[usize]) -> Vec<usize> {
        if self.routing().down.is_empty() {
            return Vec::new(); // the common case: one load, no ring walk
        }
        let servers = &self.routing().snapshot.servers;
        let mut natural = match self.with_down() {
            Some(locator) => locator.along(key, chain.len().max(1)),
            None => chain.to_vec(),
        };
        for i in self.invalidation_targets(key, chain.len().max(1)) {
            if !natural.contains(&i) {
                natural.push(i);
            }
        }
        natural
            .into_iter()
            .filter(|&i| servers[i].state == State::Down)
            .collect()
    }

    /// The draining server that owned `key` before the drain, if any.
    pub(crate) fn draining_owner(&self, key: &[u8]) -> Option<usize> {
        if let Some(i) = self.moving_owner(key) {
            return Some(i);
        }
        let i = self.before_drain()?.owner(key)?;
        (self.routing().snapshot.servers[i].state == State::Draining).then_some(i)
    }

    /// The server `key`'s bucket is moving off (`mcadmin buckets move`), while a move is under
    /// way and that server is not down, not the key's owner now and not one of its replicas
    /// (a loaded map may keep the old owner as one): drained as a draining server is (a miss
    /// fills from it, a write deletes the key there).
    pub fn moving_owner(&self, key: &[u8]) -> Option<usize> {
        let (buckets, b) = self.moving_bucket(key)?;
        let from = buckets.map().moving_from(b)?;
        let routing = self.routing();
        let server = routing.snapshot.servers.get(from)?;
        let replicas = usize::from(routing.snapshot.policy.replicas.max(1));
        (server.state != State::Down && !buckets.bucket_along(b, replicas).contains(&from))
            .then_some(from)
    }

    /// The owner `key`'s bucket is moving off, by the map alone, while a move is under way
    /// (what the mover copies from; see [`Router::moving_owner`] for what clients drain).
    pub fn bucket_source(&self, key: &[u8]) -> Option<usize> {
        let (buckets, b) = self.moving_bucket(key)?;
        buckets.map().moving_from(b)
    }

    /// The bucket placement and `key`'s bucket (hashed once), while a move is under way: a
    /// domain without a bucket map, or with no move staged, pays one check.
    fn moving_bucket(&self, key: &[u8]) -> Option<(&BucketLocator, usize)> {
        self.routing().snapshot.buckets.as_ref()?.forward_cells()?;
        let Locator::Buckets(buckets) = self.local() else {
            return None;
        };
        Some((buckets, buckets.bucket(key).1))
    }

    /// The retry probe of down server `i`: at most one process per host per retry interval
    /// (the lease), and only processes that can write the registry. A due probe is queued for
    /// [`Router::take_probes`].
    pub(crate) fn maybe_probe(&mut self, i: usize) {
        let Source::Registry(registry) = &self.source else {
            return;
        };
        let candidate = &self.routing().snapshot.servers[i];
        if !registry.is_writable() || !registry.live().try_probe_lease(candidate, self.now_ms) {
            return;
        }
        let dir = registry.path().parent().unwrap_or(Path::new("."));
        self.probes.push(RetryProbe {
            dir: dir.to_path_buf(),
            domain: registry.domain().clone(),
            server: candidate.id,
        });
    }

    /// "domain 'x'" or "the server list", for messages.
    pub(crate) fn what(&self) -> String {
        match &self.source {
            Source::Registry(r) => format!("domain '{}'", r.domain()),
            Source::Servers(_) => "the server list".into(),
        }
    }

    pub fn address(&self, i: usize) -> &Address {
        &self.routing().snapshot.servers[i].address
    }

    /// Why server `i` gets no request: its state and reason.
    pub fn down_error(&self, i: usize) -> Error {
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
}

impl Drop for Router {
    fn drop(&mut self) {
        if let (Source::Registry(registry), Some(slot)) = (&self.source, self.client_slot) {
            registry.release_client(slot);
        }
    }
}

/// The positions of `servers` that satisfy `keep`: `before` (those of the previous version)
/// updated for the positions `changed` names, or a scan of every server.
pub(crate) fn positions(
    servers: &[Server],
    changed: Option<mcshm_table::registry::SlotDelta>,
    before: Vec<usize>,
    keep: impl Fn(&Server) -> bool,
) -> Vec<usize> {
    let Some(d) = changed else {
        return (0..servers.len()).filter(|&i| keep(&servers[i])).collect();
    };
    // `before` is in order: the positions of the changed range are replaced in place (a list of
    // every server, all marked, costs what the change costs, not a sort of the list).
    let mut kept = before;
    kept.truncate(kept.partition_point(|&i| i < d.count));
    let (from, to) = (
        kept.partition_point(|&i| i < d.first),
        kept.partition_point(|&i| i < d.end),
    );
    kept.splice(from..to, (d.first..d.end).filter(|&i| keep(&servers[i])));
    kept
}
