//! One domain served by the proxy: every command routed by the shared [`Router`] (the same
//! decisions as the blocking libmcshm client: ring, failover policy, shared failure view,
//! retry probes, replicas, invalidation after writes, warm-up and drain), sent to the servers
//! over the shared [`Upstream`] connections, and answered in memcached's words.
//!
//! The router is behind a mutex held only for routing decisions and failure reports, never
//! across I/O. A decision and its report may straddle a table change: reports find their
//! server again by id (a server removed meanwhile is not reported). The warm-up and drain
//! fallbacks of a miss copy keys between servers; that sequence runs on a blocking libmcshm
//! client (so it is the client's own code), only for misses on a server in its warm window or
//! whose keys are moving off a draining server.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use libmcshm::client::Router;
use libmcshm::table::State;
use libmcshm::{Address, Client, Domain, Snapshot, Timeouts};

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

    fn then(self, map: impl FnOnce(Vec<u8>) -> Vec<u8> + Send + 'static) -> Pending {
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
    /// The table version whose servers the upstreams were last pruned to.
    pruned: std::sync::atomic::AtomicU64,
    fallback: Arc<Mutex<Client>>,
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
            fallback: Arc::new(Mutex::new(Client::for_domain(dir, domain, timeouts)?)),
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
        let mut router = self.router();
        if router.refresh().is_err() {
            return;
        }
        let current = router.snapshot();
        let now = match Arc::ptr_eq(current, snapshot) {
            true => Some(i),
            false => current
                .servers
                .iter()
                .position(|s| s.id == snapshot.servers[i].id),
        };
        if let Some(now) = now {
            match result {
                Ok(_) => router.succeeded(now),
                Err(failure) => {
                    self.stats
                        .server_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    router.failed(now, &failure.error, failure.errno)
                }
            }
        }
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
        let Plan {
            snapshot,
            value: chains,
        } = decided!(self.decide(|router| {
            let chains: libmcshm::Result<Vec<_>> =
                keys.iter().map(|key| router.read_targets(key)).collect();
            chains
        }));
        let first = self
            .get_round(
                &snapshot,
                verb,
                exptime,
                &keys,
                &chains,
                &vec![false; keys.len()],
                0,
                lane,
            )
            .await;
        let this = self.clone();
        Pending::task(async move {
            let mut found: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
            let (mut answered, mut failure) = (false, None);
            let rounds = chains.iter().map(|(_, up)| up.len()).max().unwrap_or(0);
            let mut outstanding = first;
            for round in 0..rounds {
                if round > 0 {
                    let done: Vec<bool> = found.iter().map(Option::is_some).collect();
                    outstanding = this
                        .get_round(&snapshot, verb, exptime, &keys, &chains, &done, round, lane)
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
                            let mut spans = items(&reply);
                            for n in members {
                                let asked = |s: &ItemSpan<'_>| {
                                    s.key.strip_prefix(prefix) == Some(keys[n].as_slice())
                                };
                                if let Some(at) = spans.iter().position(asked) {
                                    found[n] = Some(spans.remove(at).unprefixed(prefix));
                                }
                            }
                        }
                        Err(err) => failure = Some(err.error),
                    }
                }
            }
            if exptime.is_none() {
                this.handover_fills(&snapshot, verb, &keys, &chains, &mut found)
                    .await;
            }
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
        chains: &[(usize, Vec<usize>)],
        done: &[bool],
        round: usize,
        lane: usize,
    ) -> Vec<(Vec<usize>, Outstanding)> {
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (n, (_, up)) in chains.iter().enumerate() {
            if !done[n]
                && let Some(&server) = up.get(round)
            {
                groups.entry(server).or_default().push(n);
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

    /// Warm-up and drain: misses whose owner is in its warm window, or whose key may still be
    /// on a draining server, are looked up by the blocking client (which copies what it finds
    /// to the owner, as every libmcshm process does). So are all misses when the table changed
    /// while the servers answered: a drain that began meanwhile may have moved them.
    async fn handover_fills(
        &self,
        snapshot: &Arc<Snapshot>,
        verb: GetVerb,
        keys: &[Vec<u8>],
        chains: &[(usize, Vec<usize>)],
        found: &mut [Option<Vec<u8>>],
    ) {
        let draining = snapshot.servers.iter().any(|s| s.state == State::Draining);
        let now = libmcshm::registry::now_ms();
        let warm = |i: usize| snapshot.servers[i].warm_until_ms > now;
        if found.iter().all(Option::is_some) {
            return;
        }
        let changed = {
            let mut router = self.router();
            router.refresh().is_ok() && router.snapshot().version != snapshot.version
        };
        let misses: Vec<usize> = (0..keys.len())
            .filter(|&n| found[n].is_none() && (changed || draining || warm(chains[n].0)))
            .collect();
        if misses.is_empty() {
            return;
        }
        let client = self.fallback.clone();
        let wanted: Vec<Vec<u8>> = misses.iter().map(|&n| keys[n].clone()).collect();
        let cas = matches!(verb, GetVerb::Gets);
        let filled = tokio::task::spawn_blocking(move || {
            let mut client = client.lock().unwrap_or_else(|e| e.into_inner());
            wanted
                .iter()
                .map(|key| {
                    let item = if cas {
                        client.gets(key)
                    } else {
                        client.get(key)
                    };
                    item.ok().flatten()
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (n, item) in misses.into_iter().zip(filled) {
            if let Some(item) = item {
                let mut bytes = Vec::new();
                bytes.extend_from_slice(b"VALUE ");
                bytes.extend_from_slice(&item.key);
                bytes.extend_from_slice(format!(" {} {}", item.flags, item.value.len()).as_bytes());
                if let Some(cas) = item.cas {
                    bytes.extend_from_slice(format!(" {cas}").as_bytes());
                }
                bytes.extend_from_slice(b"\r\n");
                bytes.extend_from_slice(&item.value);
                bytes.extend_from_slice(b"\r\n");
                found[n] = Some(bytes);
            }
        }
    }

    /// A meta get along the key's replicas: the first reply that is not a miss (`EN`).
    async fn read_one(self: &Arc<Self>, command: &Command, key: &[u8], lane: usize) -> Pending {
        let Plan {
            snapshot,
            value: up,
        } = decided!(self.decide(|router| Ok(router.read_targets(key)?.1)));
        let bytes = decided!(encode_for(command, &snapshot));
        let Some(&first) = up.first() else {
            return Pending::Ready(b"EN\r\n".to_vec());
        };
        let sent = self
            .send(&snapshot, first, bytes.clone(), Frame::Meta, lane)
            .await;
        let this = self.clone();
        Pending::task(async move {
            let (mut miss, mut failure) = (None, None);
            let mut result = this.finish(sent).await;
            for next in up.iter().skip(1).map(Some).chain([None]) {
                match result {
                    Ok(reply) if first_line(&reply).starts_with(b"EN") => miss = Some(reply),
                    Ok(reply) => return unprefix_meta(reply, snapshot.policy.prefix.as_bytes()),
                    Err(err) => failure = Some(err.error),
                }
                let Some(&next) = next else { break };
                result = this.call(&snapshot, next, bytes.clone(), Frame::Meta).await;
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
            value: (targets, stale),
        } = decided!(self.decide(|router| {
            let chain = router.chain(key)?;
            let targets = router.write_targets(&chain, only_first)?;
            Ok((targets, router.invalidations(key, chain.len())))
        }));
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
        let mut delete = Vec::new();
        if !stale.is_empty() {
            delete.extend_from_slice(b"delete ");
            delete.extend_from_slice(prefix.as_bytes());
            delete.extend_from_slice(key);
            delete.extend_from_slice(b"\r\n");
        }
        let this = self.clone();
        Pending::task(async move {
            let (mut reply, mut failure) = (None, None);
            for sent in outstanding {
                match this.finish(sent).await {
                    Ok(bytes) if reply.is_none() => reply = Some(bytes),
                    Ok(_) => {}
                    Err(err) => failure = Some(err.error),
                }
            }
            for server in stale {
                let _ = this
                    .call(&snapshot, server, delete.clone(), Frame::Line)
                    .await;
            }
            match (reply, failure) {
                (Some(reply), _) => unprefix_meta(reply, prefix.as_bytes()),
                (None, Some(error)) => server_error(&error),
                (None, None) => server_error("no server answered"),
            }
        })
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
