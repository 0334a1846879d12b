//! One domain served by the proxy: every command routed by the shared [`Router`] (the same
//! decisions as the blocking libmcshm client: ring, failover policy, shared failure view,
//! retry probes, replicas, invalidation after writes, warm-up and drain), sent to the servers
//! over the shared [`Upstream`] connections, and answered in memcached's words.
//!
//! The router is behind a mutex held only for routing decisions and failure reports, never
//! across I/O. Its answers are plans ([`ReadPlan`], [`WritePlan`]) that name servers by id, so
//! a decision and its report may straddle a table change (a server removed meanwhile is not
//! reported). The proxy executes the plans as the blocking client does, fills (warm-up, drain)
//! included, with its own connections: no second client, router or failure view.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use libmcshm::client::{Fill, FillKind, Outcome, ReadPlan, Router, ServerRef};
use libmcshm::proto::{self, Expect, Reply, Request, StoreVerb};
use libmcshm::table::State;
use libmcshm::{Address, Domain, Snapshot, Timeouts};

use crate::command::{Command, GetVerb, MetaVerb, encode_get};
use crate::reply::{Frame, ItemSpan, first_line, is_error, items, unprefix_meta};
use crate::stats::ProxyStats;
use crate::upstream::{Failure, Upstream};

/// The plan of a routing decision, or (from the enclosing function) the error reply the
/// command gets.
macro_rules! decided {
    ($decision:expr) => {
        match $decision {
            Ok(plan) => plan,
            Err(reply) => return Pending::Ready(reply),
        }
    };
}

/// A command's reply: known at once, or a future that waits for the servers. The session's
/// writer polls the futures in command order (no task per request: a request costs no spawn
/// and no cross-task hand-over).
pub enum Pending {
    Ready(Vec<u8>),
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>>),
}

impl Pending {
    fn task(work: impl std::future::Future<Output = Vec<u8>> + Send + 'static) -> Pending {
        Pending::Later(Box::pin(work))
    }

    /// noreply: the work is done, the client is told nothing.
    fn quiet_if(self, noreply: bool) -> Pending {
        self.then(move |reply| if noreply { Vec::new() } else { reply })
    }

    /// The reply, mapped when it is known.
    pub fn then(self, map: impl FnOnce(Vec<u8>) -> Vec<u8> + Send + 'static) -> Pending {
        match self {
            Pending::Ready(reply) => Pending::Ready(map(reply)),
            Pending::Later(work) => Pending::task(async move { map(work.await) }),
        }
    }
}

/// A request queued for a server, with the table it was routed on.
struct Outstanding {
    snapshot: Arc<Snapshot>,
    server: usize,
    sent: crate::upstream::Sent,
}

/// What a fill did ([`Service::fill`]).
#[derive(Debug, PartialEq, Eq)]
enum Filled {
    /// The key was copied to the owner: its `VALUE` item.
    Copied(Vec<u8>),
    /// The owner may have the key (a newer write, or the drain moved it): ask it.
    AskAgain,
    Nothing,
}

/// A routing decision: the table it was made on, and server positions in it.
struct Plan<T> {
    snapshot: Arc<Snapshot>,
    value: T,
}

pub struct Service {
    pub stats: Arc<ProxyStats>,
    router: Mutex<Router>,
    upstreams: Mutex<HashMap<Address, Arc<Upstream>>>,
    timeouts: Timeouts,
    width: usize,
    lanes: std::sync::atomic::AtomicUsize,
    /// The latest table version a decision or a report routed on (the upstreams are pruned to
    /// its servers): a write tells from it, without the router's lock, that the table changed
    /// while it was in flight.
    pruned: std::sync::atomic::AtomicU64,
    credentials: crate::upstream::CredentialSource,
}

impl Service {
    /// Serves `domain` of the registry in `dir`, with `width` connections per server, counting
    /// into `stats` (shared by the worker threads serving the domain).
    pub fn new(
        dir: &std::path::Path,
        domain: &Domain,
        timeouts: Timeouts,
        width: usize,
        stats: Arc<ProxyStats>,
    ) -> libmcshm::Result<Service> {
        let mut router = Router::for_domain(dir, domain)?;
        router.refresh()?;
        router.on_failure(|event| {
            if event.marked_down != libmcshm::MarkedDown::No {
                eprintln!(
                    "mcproxy: {} marked down ({:?}): {}",
                    event.server, event.marked_down, event.error
                );
            }
        });
        Ok(Service {
            stats,
            router: Mutex::new(router),
            upstreams: Mutex::new(HashMap::new()),
            timeouts,
            width,
            lanes: std::sync::atomic::AtomicUsize::new(0),
            pruned: std::sync::atomic::AtomicU64::new(u64::MAX),
            credentials: {
                let (dir, domain) = (dir.to_path_buf(), domain.clone());
                Arc::new(move || libmcshm::auth::load(&dir, &domain))
            },
        })
    }

    fn router(&self) -> MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A routing decision under the router lock; retry probes it found due run on the
    /// blocking pool.
    fn decide<T>(
        &self,
        decide: impl FnOnce(&mut Router) -> libmcshm::Result<T>,
    ) -> Result<Plan<T>, Vec<u8>> {
        let mut router = self.router();
        let decided = router.refresh().and_then(|()| decide(&mut router));
        self.run_probes(&mut router);
        self.prune(router.snapshot());
        match decided {
            Ok(value) => Ok(Plan {
                snapshot: router.snapshot().clone(),
                value,
            }),
            // A key too long once the domain's prefix is put before it is the client's.
            Err(err @ libmcshm::Error::BadKey { .. }) => {
                Err(format!("CLIENT_ERROR {err}\r\n").into_bytes())
            }
            Err(err) => Err(server_error(&err.to_string())),
        }
    }

    fn run_probes(&self, router: &mut Router) {
        for probe in router.take_probes() {
            let timeouts = self.timeouts;
            tokio::task::spawn_blocking(move || probe.run(timeouts));
        }
    }

    /// On a new table version: lets go of the connections to servers no longer in it (each
    /// closes once the requests it carries are answered).
    fn prune(&self, snapshot: &Snapshot) {
        use std::sync::atomic::Ordering::Relaxed;
        // One load per request; the swap only on a new version.
        if self.pruned.load(Relaxed) == snapshot.version
            || self.pruned.swap(snapshot.version, Relaxed) == snapshot.version
        {
            return;
        }
        let mut upstreams = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        upstreams.retain(|address, _| snapshot.servers.iter().any(|s| s.address == *address));
    }

    fn upstream(&self, address: &Address) -> Arc<Upstream> {
        let mut upstreams = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(upstream) = upstreams.get(address) {
            return upstream.clone();
        }
        let stats = self.stats.server(&address.to_string());
        let upstream = Arc::new(Upstream::new(
            address.clone(),
            self.timeouts,
            self.credentials.clone(),
            self.width,
            stats,
        ));
        upstreams.insert(address.clone(), upstream.clone());
        upstream
    }

    /// Queues `bytes` for server `i` of `snapshot` on `lane` (see [`Upstream::send`]).
    async fn send(
        &self,
        snapshot: &Arc<Snapshot>,
        i: usize,
        bytes: Vec<u8>,
        frame: Frame,
        lane: usize,
    ) -> Outstanding {
        let upstream = self.upstream(&snapshot.servers[i].address);
        Outstanding {
            snapshot: snapshot.clone(),
            server: i,
            sent: upstream.send(bytes, frame, lane).await,
        }
    }

    /// Waits for a request's reply and reports the outcome to the router.
    async fn finish(&self, outstanding: Outstanding) -> Result<Vec<u8>, Failure> {
        let Outstanding {
            snapshot,
            server,
            sent,
        } = outstanding;
        let result = sent.reply().await;
        self.report(&snapshot, server, &result);
        named(&snapshot, server, result)
    }

    /// Sends to server `i` and waits (follow-up requests, whose order does not matter).
    async fn call(
        &self,
        snapshot: &Arc<Snapshot>,
        i: usize,
        bytes: Vec<u8>,
        frame: Frame,
    ) -> Result<Vec<u8>, Failure> {
        let lane = self
            .lanes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outstanding = self.send(snapshot, i, bytes, frame, lane).await;
        self.finish(outstanding).await
    }

    fn report(&self, snapshot: &Arc<Snapshot>, i: usize, result: &Result<Vec<u8>, Failure>) {
        let server = ServerRef {
            id: snapshot.servers[i].id,
            index: i,
        };
        let outcome = match result {
            Ok(_) => Outcome::Answered,
            Err(failure) => {
                self.stats
                    .server_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Outcome::Failed {
                    error: &failure.error,
                    errno: failure.errno,
                }
            }
        };
        let mut router = self.router();
        router.report(server, outcome);
        self.prune(router.snapshot());
        self.run_probes(&mut router);
    }

    /// Starts a command that goes to servers (the session answers the others itself): its
    /// first requests are queued before this returns, on the client's `lane`, so the
    /// servers see a client's commands in the order it sent them. The rest (waiting,
    /// replicas, invalidations) runs in a task whose output is the reply.
    pub async fn start(self: &Arc<Self>, command: Command, lane: usize) -> Pending {
        match command {
            Command::Get {
                verb,
                exptime,
                keys,
            } => self.get(verb, exptime, keys, lane).await,
            Command::Meta {
                verb,
                ref key,
                quiet,
                ..
            } => {
                let started = match verb {
                    MetaVerb::Get => self.read_one(&command, key, lane).await,
                    MetaVerb::Debug => self.owner_only(&command, key, lane).await,
                    _ => self.write(&command, key, Frame::Meta, false, lane).await,
                };
                started.then(move |reply| {
                    let code = first_line(&reply).get(..2).unwrap_or_default();
                    match quiet && verb.quiet_codes().contains(&code) {
                        true => Vec::new(),
                        false => reply,
                    }
                })
            }
            Command::FlushAll { noreply, .. } => {
                let mut bytes = Vec::new();
                command.encode(&mut bytes, b"");
                self.flush_all(bytes, lane).await.quiet_if(noreply)
            }
            Command::Store {
                ref key,
                noreply,
                cas,
                ..
            } => self
                .write(&command, key, Frame::Line, cas.is_some(), lane)
                .await
                .quiet_if(noreply),
            Command::Delete { ref key, noreply }
            | Command::Arith {
                ref key, noreply, ..
            }
            | Command::Touch {
                ref key, noreply, ..
            } => self
                .write(&command, key, Frame::Line, false, lane)
                .await
                .quiet_if(noreply),
            Command::MetaNoop
            | Command::Version
            | Command::Verbosity { .. }
            | Command::Stats { .. }
            | Command::ConfigGetCluster
            | Command::Quit => unreachable!("answered by the session"),
        }
    }

    /// A retrieval of many keys: split per server (the key's first up replica; keys missed
    /// there are asked of the next replica), merged in the client's key order. Keys of failed
    /// servers are misses unless every server failed: then `SERVER_ERROR`.
    async fn get(
        self: &Arc<Self>,
        verb: GetVerb,
        exptime: Option<i64>,
        keys: Vec<Vec<u8>>,
        lane: usize,
    ) -> Pending {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.get_keys.fetch_add(keys.len() as u64, Relaxed);
        let now = libmcshm::registry::now_ms();
        let Plan {
            snapshot,
            value: plans,
        } = decided!(self.decide(|router| {
            let plans: libmcshm::Result<Vec<ReadPlan>> =
                keys.iter().map(|key| router.plan_read(key, now)).collect();
            plans
        }));
        let first = self
            .get_round(
                &snapshot,
                verb,
                exptime,
                &keys,
                &plans,
                &vec![false; keys.len()],
                0,
                lane,
            )
            .await;
        let this = self.clone();
        Pending::task(async move {
            let mut found: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
            let (mut answered, mut failure) = (false, None);
            let rounds = plans.iter().map(|p| p.replicas.len()).max().unwrap_or(0);
            let mut outstanding = first;
            for round in 0..rounds {
                if round > 0 {
                    let done: Vec<bool> = found.iter().map(Option::is_some).collect();
                    outstanding = this
                        .get_round(&snapshot, verb, exptime, &keys, &plans, &done, round, lane)
                        .await;
                }
                for (members, sent) in outstanding.drain(..) {
                    match this.finish(sent).await {
                        Ok(reply) if is_error(first_line(&reply)) => {
                            failure =
                                Some(String::from_utf8_lossy(first_line(&reply)).into_owned());
                        }
                        Ok(reply) => {
                            answered = true;
                            let prefix = snapshot.policy.prefix.as_bytes();
                            match_items(&reply, &members, &keys, prefix, &mut found);
                        }
                        Err(err) => failure = Some(err.error),
                    }
                }
            }
            this.fallbacks(&snapshot, verb, exptime, &keys, &plans, &mut found)
                .await;
            if !answered && let Some(error) = failure {
                return server_error(&error);
            }
            let mut out = Vec::new();
            for item in found.into_iter().flatten() {
                this.stats.get_hits.fetch_add(1, Relaxed);
                out.extend_from_slice(&item);
            }
            out.extend_from_slice(b"END\r\n");
            out
        })
    }

    /// Queues round `round` of a multi-get: one request per server, for the keys not `done`.
    #[allow(clippy::too_many_arguments)]
    async fn get_round(
        &self,
        snapshot: &Arc<Snapshot>,
        verb: GetVerb,
        exptime: Option<i64>,
        keys: &[Vec<u8>],
        plans: &[ReadPlan],
        done: &[bool],
        round: usize,
        lane: usize,
    ) -> Vec<(Vec<usize>, Outstanding)> {
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (n, plan) in plans.iter().enumerate() {
            if !done[n]
                && let Some(server) = plan.replicas.get(round)
            {
                groups.entry(server.index).or_default().push(n);
            }
        }
        let mut outstanding = Vec::with_capacity(groups.len());
        for (server, members) in groups {
            let mut bytes = Vec::new();
            let wanted = members.iter().map(|&n| keys[n].as_slice());
            let prefix = snapshot.policy.prefix;
            encode_get(verb, exptime, wanted, &mut bytes, prefix.as_bytes());
            let sent = self
                .send(snapshot, server, bytes, Frame::Values, lane)
                .await;
            outstanding.push((members, sent));
        }
        outstanding
    }

    /// The misses of a multi-get, as the blocking client takes them: when the table changed
    /// while the servers answered, each is planned again and its new owner asked (a drain that
    /// began meanwhile may have moved it); then each plan's fills (warm-up, drain) are executed
    /// and the owner asked again with the client's own verb (its cas, its touch).
    async fn fallbacks(
        &self,
        snapshot: &Arc<Snapshot>,
        verb: GetVerb,
        exptime: Option<i64>,
        keys: &[Vec<u8>],
        plans: &[ReadPlan],
        found: &mut [Option<Vec<u8>>],
    ) {
        if found.iter().all(Option::is_some) {
            return;
        }
        let now = libmcshm::registry::now_ms();
        let (changed, fills) = {
            let mut router = self.router();
            let changed = router.refresh().is_ok() && router.snapshot().version != snapshot.version;
            (changed, router.fills_possible(now))
        };
        if !changed && !fills && plans.iter().all(|p| p.fills.is_empty()) {
            return;
        }
        for n in 0..keys.len() {
            if found[n].is_some() {
                continue;
            }
            let (snapshot, plan) = match changed {
                false => (snapshot.clone(), plans[n].clone()),
                true => match self.decide(|router| router.plan_read(&keys[n], now)) {
                    Ok(Plan { snapshot, value }) => (snapshot, value),
                    Err(_) => continue,
                },
            };
            let owner_up = plan.replicas.first() == Some(&plan.owner);
            if changed && owner_up {
                found[n] = self
                    .ask_again(&snapshot, plan.owner, verb, exptime, &keys[n])
                    .await;
            }
            for fill in &plan.fills {
                if found[n].is_some() {
                    break;
                }
                match self.fill(&snapshot, fill, &keys[n]).await {
                    // Our copy is what the owner holds: a plain get returns it as it is.
                    Filled::Copied(item) if verb == GetVerb::Get && exptime.is_none() => {
                        found[n] = Some(item);
                    }
                    Filled::Copied(_) | Filled::AskAgain => {
                        found[n] = self
                            .ask_again(&snapshot, fill.to, verb, exptime, &keys[n])
                            .await;
                    }
                    Filled::Nothing => {}
                }
            }
        }
    }

    /// One key asked of one server with the client's verb: its `VALUE` item, bare of the prefix.
    async fn ask_again(
        &self,
        snapshot: &Arc<Snapshot>,
        server: ServerRef,
        verb: GetVerb,
        exptime: Option<i64>,
        key: &[u8],
    ) -> Option<Vec<u8>> {
        let prefix = snapshot.policy.prefix.as_bytes();
        let mut bytes = Vec::new();
        encode_get(verb, exptime, std::iter::once(key), &mut bytes, prefix);
        let reply = self
            .call(snapshot, server.index, bytes, Frame::Values)
            .await
            .ok()?;
        items(&reply)
            .into_iter()
            .find(|s| s.key.strip_prefix(prefix) == Some(key))
            .map(|s| s.unprefixed(prefix))
    }

    /// Executes one fill of a read plan as the blocking client does: `mg` on `from`, a hit
    /// copied to `to` with `add` (never over a newer write; flags and remaining TTL kept), a
    /// drain then deleting it from `from`.
    async fn fill(&self, snapshot: &Arc<Snapshot>, fill: &Fill, key: &[u8]) -> Filled {
        let prefix = snapshot.policy.prefix.as_bytes();
        let mut ask = Vec::new();
        Request::MetaGet { key }.encode_prefixed(&mut ask, prefix);
        let reply = self.call(snapshot, fill.from.index, ask, Frame::Meta).await;
        let Ok(Some((Reply::Meta { value, flags, ttl }, _))) = reply
            .as_deref()
            .map_or(Ok(None), |r| proto::parse_reply(Expect::Meta, r))
        else {
            // Gone from a draining server: the drain may have just moved it to `to`.
            return match fill.kind {
                FillKind::Drain => Filled::AskAgain,
                FillKind::Warm => Filled::Nothing,
            };
        };
        let store = Request::Store {
            verb: StoreVerb::Add,
            key,
            flags,
            exptime: ttl.max(0),
            value: &value,
        };
        let mut add = Vec::new();
        store.encode_prefixed(&mut add, prefix);
        let added = self.call(snapshot, fill.to.index, add, Frame::Line).await;
        if fill.kind == FillKind::Drain && added.is_ok() {
            let mut delete = Vec::new();
            Request::Delete { key }.encode_prefixed(&mut delete, prefix);
            let _ = self
                .call(snapshot, fill.from.index, delete, Frame::Line)
                .await;
        }
        match added {
            Ok(reply) if reply == b"STORED\r\n" => {
                let mut item = b"VALUE ".to_vec();
                item.extend_from_slice(key);
                item.extend_from_slice(format!(" {flags} {}\r\n", value.len()).as_bytes());
                item.extend_from_slice(&value);
                item.extend_from_slice(b"\r\n");
                Filled::Copied(item)
            }
            _ => Filled::AskAgain,
        }
    }

    /// A meta get along the key's replicas: the first reply that is not a miss (`EN`); on a
    /// miss everywhere, the plan's fills, then the owner asked again with the same command.
    async fn read_one(self: &Arc<Self>, command: &Command, key: &[u8], lane: usize) -> Pending {
        let now = libmcshm::registry::now_ms();
        let Plan {
            snapshot,
            value: plan,
        } = decided!(self.decide(|router| router.plan_read(key, now)));
        let bytes = decided!(encode_for(command, &snapshot));
        let Some(first) = plan.replicas.first().copied() else {
            return Pending::Ready(b"EN\r\n".to_vec());
        };
        let sent = self
            .send(&snapshot, first.index, bytes.clone(), Frame::Meta, lane)
            .await;
        let this = self.clone();
        let key = key.to_vec();
        Pending::task(async move {
            let prefix = snapshot.policy.prefix.as_bytes();
            let (mut miss, mut failure) = (None, None);
            let mut result = this.finish(sent).await;
            for next in plan.replicas.iter().skip(1).map(Some).chain([None]) {
                match result {
                    Ok(reply) if first_line(&reply).starts_with(b"EN") => miss = Some(reply),
                    Ok(reply) => return unprefix_meta(reply, prefix),
                    Err(err) => failure = Some(err.error),
                }
                let Some(next) = next else { break };
                result = this
                    .call(&snapshot, next.index, bytes.clone(), Frame::Meta)
                    .await;
            }
            for fill in &plan.fills {
                if miss.is_some() && this.fill(&snapshot, fill, &key).await != Filled::Nothing {
                    let again = this
                        .call(&snapshot, fill.to.index, bytes.clone(), Frame::Meta)
                        .await;
                    if let Ok(reply) = again
                        && !first_line(&reply).starts_with(b"EN")
                    {
                        return unprefix_meta(reply, prefix);
                    }
                }
            }
            match (miss, failure) {
                (Some(reply), _) => reply,
                (None, Some(error)) => server_error(&error),
                (None, None) => b"EN\r\n".to_vec(),
            }
        })
    }

    /// A command for the key's owner alone (`me`).
    async fn owner_only(self: &Arc<Self>, command: &Command, key: &[u8], lane: usize) -> Pending {
        let Plan { snapshot, value } = decided!(self.decide(|router| {
            let owner = router.owner(key)?;
            match router.is_down(owner) {
                true => Err(router.down_error(owner)),
                false => Ok(owner),
            }
        }));
        let bytes = decided!(encode_for(command, &snapshot));
        let sent = self.send(&snapshot, value, bytes, Frame::Meta, lane).await;
        let this = self.clone();
        Pending::task(async move {
            match this.finish(sent).await {
                Ok(reply) => unprefix_meta(reply, snapshot.policy.prefix.as_bytes()),
                Err(err) => server_error(&err.error),
            }
        })
    }

    /// A write to the key's up replicas (cas: the first only), then the invalidations the
    /// router names; the first replica's reply.
    async fn write(
        self: &Arc<Self>,
        command: &Command,
        key: &[u8],
        frame: Frame,
        only_first: bool,
        lane: usize,
    ) -> Pending {
        let Plan {
            snapshot,
            value: plan,
        } = decided!(self.decide(|router| router.plan_write(key, only_first)));
        let targets: Vec<usize> = plan.targets.iter().map(|s| s.index).collect();
        let stale: Vec<usize> = plan.invalidate.iter().map(|s| s.index).collect();
        let bytes = decided!(encode_for(command, &snapshot));
        let prefix = snapshot.policy.prefix;
        let mut outstanding = Vec::with_capacity(targets.len());
        let (last, mut payload) = (targets.len() - 1, Some(bytes));
        for (n, &server) in targets.iter().enumerate() {
            let bytes = match n == last {
                true => payload.take(),
                false => payload.clone(),
            };
            let bytes = bytes.expect("taken only for the last target");
            outstanding.push(self.send(&snapshot, server, bytes, frame, lane).await);
        }
        // The invalidations go out with the write: their round trips overlap.
        let mut delete = Vec::new();
        if !stale.is_empty() {
            Request::Delete { key }.encode_prefixed(&mut delete, prefix.as_bytes());
        }
        let mut deletes = Vec::with_capacity(stale.len());
        for &server in &stale {
            deletes.push(
                self.send(&snapshot, server, delete.clone(), Frame::Line, lane)
                    .await,
            );
        }
        let this = self.clone();
        let key = key.to_vec();
        Pending::task(async move {
            let (mut reply, mut failure) = (None, None);
            for sent in outstanding {
                match this.finish(sent).await {
                    Ok(bytes) if reply.is_none() => reply = Some(bytes),
                    Ok(_) => {}
                    Err(err) => failure = Some(err.error),
                }
            }
            for sent in deletes {
                let _ = this.finish(sent).await;
            }
            this.follow_table_change(&snapshot, &targets, &key).await;
            match (reply, failure) {
                (Some(reply), _) => unprefix_meta(reply, prefix.as_bytes()),
                (None, Some(error)) => server_error(&error),
                (None, None) => server_error("no server answered"),
            }
        })
    }

    /// A write planned on `snapshot`, whose table changed while it was in flight, may have
    /// landed where the key no longer belongs: it is deleted there (a miss, never a stale
    /// read), and the new table's invalidations are done.
    async fn follow_table_change(&self, snapshot: &Arc<Snapshot>, written: &[usize], key: &[u8]) {
        // The replies of the write were reported, which read the table: one load tells.
        use std::sync::atomic::Ordering::Relaxed;
        if self.pruned.load(Relaxed) == snapshot.version {
            return;
        }
        let mut delete = Vec::new();
        Request::Delete { key }.encode_prefixed(&mut delete, snapshot.policy.prefix.as_bytes());
        let Ok(Plan {
            snapshot: now,
            value: plan,
        }) = self.decide(|router| router.plan_write(key, false))
        else {
            return;
        };
        let targets: Vec<&Address> = plan
            .targets
            .iter()
            .map(|s| &now.servers[s.index].address)
            .collect();
        let misplaced = written.iter().filter_map(|&i| {
            let address = &snapshot.servers[i].address;
            let at = now.servers.iter().position(|s| s.address == *address)?;
            (!targets.contains(&address)).then_some(at)
        });
        let stale: Vec<usize> = misplaced
            .chain(plan.invalidate.iter().map(|s| s.index))
            .collect();
        for server in stale {
            let _ = self.call(&now, server, delete.clone(), Frame::Line).await;
        }
    }

    /// `flush_all` on every up server: `OK` when all of them did it.
    async fn flush_all(self: &Arc<Self>, bytes: Vec<u8>, lane: usize) -> Pending {
        let Plan {
            snapshot,
            value: up,
        } = decided!(self.decide(|router| {
            let n = router.snapshot().servers.len();
            Ok((0..n).filter(|&i| !router.is_down(i)).collect::<Vec<_>>())
        }));
        let mut outstanding = Vec::with_capacity(up.len());
        for &server in &up {
            outstanding.push(
                self.send(&snapshot, server, bytes.clone(), Frame::Line, lane)
                    .await,
            );
        }
        let this = self.clone();
        Pending::task(async move {
            let mut failed = Vec::new();
            for (server, sent) in up.into_iter().zip(outstanding) {
                match this.finish(sent).await {
                    Ok(reply) if reply == b"OK\r\n" => {}
                    Ok(reply) => failed.push(format!(
                        "{}: {}",
                        snapshot.servers[server].address,
                        String::from_utf8_lossy(first_line(&reply))
                    )),
                    Err(err) => failed.push(err.error),
                }
            }
            match failed.is_empty() {
                true => b"OK\r\n".to_vec(),
                false => server_error(&format!("flush_all failed on {}", failed.join("; "))),
            }
        })
    }

    /// `config get cluster` in ElastiCache's auto-discovery format: the table version, then
    /// `host|ip|port` per up server (the ip empty for a host name; unix sockets left out).
    pub fn cluster_config(&self) -> Vec<u8> {
        let plan = self.decide(|router| Ok(router.snapshot().version));
        let Ok(Plan {
            snapshot,
            value: version,
        }) = plan
        else {
            return server_error("the domain's table cannot be read");
        };
        let nodes: Vec<String> = snapshot
            .servers
            .iter()
            .filter(|s| s.state == State::Up)
            .filter_map(|s| {
                let port = s.address.port()?;
                let host = s.address.host();
                let ip = match &s.address {
                    Address::Host { .. } => String::new(),
                    _ => host.clone(),
                };
                Some(format!("{host}|{ip}|{port}"))
            })
            .collect();
        let body = format!("{version}\n{}\n", nodes.join(" "));
        format!("CONFIG cluster 0 {}\r\n{body}\r\nEND\r\n", body.len()).into_bytes()
    }
}

/// A failure's message, with the server's address in front.
fn named(
    snapshot: &Snapshot,
    i: usize,
    result: Result<Vec<u8>, Failure>,
) -> Result<Vec<u8>, Failure> {
    result.map_err(|failure| Failure {
        error: format!("{}: {}", snapshot.servers[i].address, failure.error),
        errno: failure.errno,
    })
}

/// Gives each of `members` (positions in `keys`) its item of `reply`. memcached answers hits in
/// the order the keys were asked, so one pass pairs them (a 100 000-key get costs linear
/// time); items out of that order are found by key.
fn match_items(
    reply: &[u8],
    members: &[usize],
    keys: &[Vec<u8>],
    prefix: &[u8],
    found: &mut [Option<Vec<u8>>],
) {
    let bare = |s: &ItemSpan<'_>| s.key.strip_prefix(prefix).map(<[u8]>::to_vec);
    let mut rest: Vec<ItemSpan<'_>> = Vec::new();
    let mut spans = items(reply).into_iter().peekable();
    for &n in members {
        match spans.peek() {
            Some(s) if s.key.strip_prefix(prefix) == Some(keys[n].as_slice()) => {
                found[n] = spans.next().map(|s| s.unprefixed(prefix));
            }
            _ => {}
        }
    }
    rest.extend(spans);
    if rest.is_empty() {
        return;
    }
    let mut by_key: HashMap<Vec<u8>, ItemSpan<'_>> = HashMap::new();
    for span in rest {
        if let Some(key) = bare(&span) {
            by_key.entry(key).or_insert(span);
        }
    }
    for &n in members {
        if found[n].is_none()
            && let Some(span) = by_key.remove(&keys[n])
        {
            found[n] = Some(span.unprefixed(prefix));
        }
    }
}

/// `SERVER_ERROR message`, on one line whatever the message holds.
/// The request a server gets for `command` under the domain's key prefix, or the reply its
/// client gets when it cannot have one: a meta command with a base64 key (`b`) on a domain
/// with a prefix.
fn encode_for(command: &Command, snapshot: &Snapshot) -> Result<Vec<u8>, Vec<u8>> {
    let prefix = snapshot.policy.prefix;
    if !prefix.is_empty() && command.base64_key() {
        return Err(
            b"CLIENT_ERROR base64 keys (b) are not supported on a domain with a key prefix\r\n"
                .to_vec(),
        );
    }
    let mut bytes = Vec::new();
    command.encode(&mut bytes, prefix.as_bytes());
    Ok(bytes)
}

pub fn server_error(message: &str) -> Vec<u8> {
    let clean: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("SERVER_ERROR {clean}\r\n").into_bytes()
}
