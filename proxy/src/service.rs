//! One domain served by a worker: every command routed by the worker's [`Router`] (the same
//! decisions as the blocking libmcshm client: ring, failover policy, shared failure view,
//! retry probes, replicas, invalidation after writes, warm-up and drain), sent over the
//! worker's server connections ([`Net`]), and answered in memcached's words.
//!
//! The router belongs to the worker's thread: a decision takes no lock. Its answers are plans
//! ([`ReadPlan`], [`WritePlan`]) that name servers by id, so a
//! decision and its report may straddle a table change (a server removed meanwhile is not
//! reported).
//!
//! Two ways to execute a plan. The common shapes (one key, one server, nothing to fill or
//! invalidate: a get on an up owner, a write without replicas) are **direct**: the request is
//! encoded straight into the server connection's output and its reply framed straight into the
//! client's, with no task and no copy between ([`Service::start`], [`Service::finish_direct`]).
//! Everything else (multi-gets, replicas, fills, invalidations, a table change in flight) is a
//! job: the plan executed as the blocking client executes it, written as async code over the
//! same connections ([`crate::jobs`]).

use std::cell::{Cell, RefCell, RefMut};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use libmcshm::proto::{self, Expect, Reply, Request, StoreVerb};
use libmcshm::table::State;
use libmcshm::{Address, Domain, Snapshot, Timeouts};
use mcshm_route::{AddAnswer, Fill, FollowChange, Outcome, ReadPlan, Router, ServerRef, WritePlan};

use crate::command::{Command, GetVerb, MetaVerb, encode_get};
use crate::failure::Failure;
use crate::jobs::{Await, ReplyCell, Work};
use crate::stats::ProxyStats;
use crate::upstream::{Deliver, Net};
use libmcshm::proto::frame::{Frame, ItemSpan, first_line, items, unprefix_meta};
use libmcshm::proto::is_error;

/// The plan of a routing decision, or (from the enclosing function) the error reply the
/// command gets.
macro_rules! decided {
    ($decision:expr) => {
        match $decision {
            Ok(plan) => plan,
            Err(reply) => return reply,
        }
    };
}

/// A client's reply slot: the session, its generation, and the command's place in its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRef {
    pub client: usize,
    pub generation: u64,
    pub seq: u64,
}

/// A direct request on its way: where its reply goes and what it needs on arrival.
pub struct Direct {
    pub slot: SlotRef,
    pub service: Rc<Service>,
    snapshot: Arc<Snapshot>,
    server: usize,
    lane: usize,
    command: Command,
    quiet: Quiet,
}

/// What a client is not told.
#[derive(Clone, Copy)]
enum Quiet {
    No,
    /// noreply: nothing.
    Noreply,
    /// A meta command's `q`: nothing for the verb's quiet codes.
    Meta(MetaVerb),
}

impl Quiet {
    fn of(command: &Command) -> Quiet {
        match *command {
            Command::Meta {
                verb, quiet: true, ..
            } => Quiet::Meta(verb),
            Command::Store { noreply: true, .. }
            | Command::Delete { noreply: true, .. }
            | Command::Arith { noreply: true, .. }
            | Command::Touch { noreply: true, .. } => Quiet::Noreply,
            _ => Quiet::No,
        }
    }

    fn hides(self, reply: &[u8]) -> bool {
        match self {
            Quiet::No => false,
            Quiet::Noreply => true,
            Quiet::Meta(verb) => {
                let code = first_line(reply).get(..2).unwrap_or_default();
                verb.quiet_codes().contains(&code)
            }
        }
    }

    fn apply(self, reply: Vec<u8>) -> Vec<u8> {
        match self.hides(&reply) {
            true => Vec::new(),
            false => reply,
        }
    }
}

/// How a command started ([`Service::start`]).
pub enum Started {
    /// Answered at once.
    Ready(Vec<u8>),
    /// A direct request: the reply comes with [`Service::finish_direct`].
    Direct,
    /// A job: its output is the reply.
    Job(Work),
}

/// A direct request's reply ([`Service::finish_direct`]).
pub enum Finished<'a> {
    /// The server's reply, as it came.
    Pass(&'a [u8]),
    Owned(Vec<u8>),
    /// More to do (a table change in flight): the job's output is the reply.
    Job(Work),
}

/// A request a job queued, sent by the worker after the job's poll.
pub struct Outgoing {
    pub domain: usize,
    pub snapshot: Arc<Snapshot>,
    pub server: usize,
    pub lane: usize,
    pub frame: Frame,
    pub bytes: Vec<u8>,
    pub cell: Rc<ReplyCell>,
}

/// The requests jobs queued since the worker last sent them.
pub type Outbox = Rc<RefCell<Vec<Outgoing>>>;

/// A request queued for a server, with the table it was routed on.
struct Outstanding {
    snapshot: Arc<Snapshot>,
    server: usize,
    reply: Await,
}

/// What a fill did ([`Service::fill`]), as the routing core's sequence says.
#[derive(Debug, PartialEq, Eq)]
enum Filled {
    /// The key was copied to the owner: its `VALUE` item is the answer.
    Copied(Vec<u8>),
    /// Ask the owner again (a newer write, a refused copy, the drain moved it); when it
    /// misses, the copy's `VALUE` item, if any, is the answer.
    AskAgain(Option<Vec<u8>>),
    Nothing,
}

/// A plan the direct path made for a command and could not use (see
/// [`Service::start`]).
enum Planned {
    Read(Plan<ReadPlan>),
    Write(Plan<WritePlan>),
}

/// A routing decision: the table it was made on, and server positions in it.
struct Plan<T> {
    snapshot: Arc<Snapshot>,
    value: T,
}

pub struct Service {
    pub stats: Arc<ProxyStats>,
    router: RefCell<Router>,
    timeouts: Timeouts,
    /// The domain's number in the worker's [`Net`].
    domain: usize,
    /// The latest table version a decision or a report routed on: a write tells from it that
    /// the table changed while it was in flight.
    seen: Cell<u64>,
    /// Lanes for follow-up requests, whose order does not matter.
    lanes: Cell<usize>,
    outbox: Outbox,
}

impl Service {
    /// Serves `domain` of the registry in `dir` as number `number` of the worker's net,
    /// counting into `stats` (shared by the worker threads serving the domain).
    pub fn new(
        dir: &std::path::Path,
        domain: &Domain,
        timeouts: Timeouts,
        number: usize,
        stats: Arc<ProxyStats>,
        outbox: Outbox,
    ) -> libmcshm::Result<Service> {
        let mut router = Router::for_domain(dir, domain)?;
        router.refresh()?;
        router.on_failure(|event| {
            let whom = match event.marked_down {
                mcshm_route::MarkedDown::No => return,
                mcshm_route::MarkedDown::ForEveryone => "for every process on this host",
                mcshm_route::MarkedDown::LocallyOnly => {
                    "for this process only (it cannot write the registry)"
                }
            };
            crate::log(format_args!(
                "{} marked down {whom} after {} consecutive failures: {}",
                event.server, event.failures, event.error
            ));
        });
        Ok(Service {
            stats,
            router: RefCell::new(router),
            timeouts,
            domain: number,
            seen: Cell::new(u64::MAX),
            lanes: Cell::new(0),
            outbox,
        })
    }

    /// Where a new server connection of the domain finds its TLS settings and credentials.
    pub fn access(dir: &std::path::Path, domain: &Domain) -> crate::upstream::AccessSource {
        let (dir, domain) = (dir.to_path_buf(), domain.clone());
        Arc::new(move || libmcshm::access::Access::load(&dir, &domain))
    }

    fn router(&self) -> RefMut<'_, Router> {
        self.router.borrow_mut()
    }

    /// A routing decision; retry probes it found due run on their own threads.
    fn decide<T>(
        &self,
        decide: impl FnOnce(&mut Router) -> libmcshm::Result<T>,
    ) -> Result<Plan<T>, Vec<u8>> {
        let mut router = self.router();
        let decided = router.refresh().and_then(|()| decide(&mut router));
        self.run_probes(&mut router);
        self.seen.set(router.snapshot().version);
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
            let _ = std::thread::Builder::new()
                .name("mcproxy-probe".into())
                .spawn(move || libmcshm::lifecycle::run_probe(probe, timeouts));
        }
    }

    /// Queues `bytes` for server `i` of `snapshot` on `lane` (sent by the worker after the
    /// job's poll, in the order queued).
    fn send(
        &self,
        snapshot: &Arc<Snapshot>,
        i: usize,
        bytes: Vec<u8>,
        frame: Frame,
        lane: usize,
    ) -> Outstanding {
        let cell = Rc::new(ReplyCell::default());
        self.outbox.borrow_mut().push(Outgoing {
            domain: self.domain,
            snapshot: snapshot.clone(),
            server: i,
            lane,
            frame,
            bytes,
            cell: cell.clone(),
        });
        Outstanding {
            snapshot: snapshot.clone(),
            server: i,
            reply: Await(cell),
        }
    }

    /// Waits for a request's reply and reports the outcome to the router.
    async fn finish(&self, outstanding: Outstanding) -> Result<Vec<u8>, Failure> {
        let Outstanding {
            snapshot,
            server,
            reply,
        } = outstanding;
        let result = reply.await;
        self.report(&snapshot, server, result.as_deref().map_err(Clone::clone));
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
        let lane = self.lanes.get().wrapping_add(1);
        self.lanes.set(lane);
        let outstanding = self.send(snapshot, i, bytes, frame, lane);
        self.finish(outstanding).await
    }

    fn report(&self, snapshot: &Arc<Snapshot>, i: usize, result: Result<&[u8], Failure>) {
        let server = ServerRef {
            id: snapshot.servers[i].id,
            index: i,
        };
        let outcome = match &result {
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
        self.seen.set(router.snapshot().version);
        self.run_probes(&mut router);
    }

    /// Starts a command that goes to servers (the session answers the others itself), on the
    /// client's `lane`: directly when its plan has the common shape, else as a job that
    /// executes the plan already made. Either way its first requests are queued before this
    /// returns (a job is polled once at once), so the servers see a client's commands in the
    /// order it sent them.
    pub fn start(
        self: &Rc<Self>,
        command: Command,
        lane: usize,
        net: &mut Net<Direct>,
        slot: SlotRef,
    ) -> Started {
        let shape = match &command {
            Command::Get { keys, .. } if keys.len() == 1 => {
                self.stats
                    .get_keys
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.direct_read(&keys[0])
                    .map(|(s, i)| (s, i, Frame::Values))
            }
            Command::Meta {
                verb: MetaVerb::Get,
                key,
                ..
            } => self.direct_read(key).map(|(s, i)| (s, i, Frame::Meta)),
            Command::Meta {
                verb: MetaVerb::Set | MetaVerb::Delete | MetaVerb::Arithmetic,
                key,
                ..
            } => self
                .direct_write(key, false)
                .map(|(s, i)| (s, i, Frame::Meta)),
            Command::Store { key, cas, .. } => self
                .direct_write(key, cas.is_some())
                .map(|(s, i)| (s, i, Frame::Line)),
            Command::Delete { key, .. }
            | Command::Arith { key, .. }
            | Command::Touch { key, .. } => self
                .direct_write(key, false)
                .map(|(s, i)| (s, i, Frame::Line)),
            _ => Err(None),
        };
        let (snapshot, server, frame) = match shape {
            Ok(shape) => shape,
            Err(planned) => return Started::Job(self.clone().job_planned(command, lane, planned)),
        };
        let prefix = snapshot.policy.prefix;
        if !prefix.is_empty() && command.base64_key() {
            return Started::Job(self.clone().job(command, lane));
        }
        let quiet = Quiet::of(&command);
        let to = Deliver::Direct(Direct {
            slot,
            service: self.clone(),
            snapshot: snapshot.clone(),
            server,
            lane,
            command,
            quiet,
        });
        net.send(
            self.domain,
            &snapshot,
            server,
            lane,
            frame,
            to,
            |out, to| {
                if let Deliver::Direct(direct) = to {
                    direct.command.encode(out, prefix.as_bytes());
                }
            },
        );
        Started::Direct
    }

    /// The one server a read goes to directly: the key's single up replica, when nothing may
    /// need filling; else the plan, for the job (`None`: no plan could be made).
    fn direct_read(&self, key: &[u8]) -> Result<(Arc<Snapshot>, usize), Option<Planned>> {
        let now = libmcshm::registry::now_ms();
        let Plan { snapshot, value } = self
            .decide(|router| {
                let plan = router.plan_read(key, now)?;
                Ok((plan, router.fills_possible(now)))
            })
            .map_err(|_| None)?;
        let (plan, fills) = value;
        match !fills && plan.fills.is_empty() && plan.replicas.len() == 1 {
            true => Ok((snapshot, plan.replicas[0].index)),
            false => Err(Some(Planned::Read(Plan {
                snapshot,
                value: plan,
            }))),
        }
    }

    /// The one server a write goes to directly: its single target, when nothing needs
    /// invalidating; else the plan, for the job (`None`: no plan could be made).
    fn direct_write(
        &self,
        key: &[u8],
        only_first: bool,
    ) -> Result<(Arc<Snapshot>, usize), Option<Planned>> {
        let Plan { snapshot, value } = self
            .decide(|router| router.plan_write(key, only_first))
            .map_err(|_| None)?;
        match value.targets.len() == 1 && value.invalidate.is_empty() {
            true => Ok((snapshot, value.targets[0].index)),
            false => Err(Some(Planned::Write(Plan { snapshot, value }))),
        }
    }

    /// The reply of a direct request: reported to the router, and made the client's reply.
    pub fn finish_direct<'a>(
        self: &Rc<Self>,
        direct: Direct,
        result: Result<&'a [u8], &Failure>,
    ) -> Finished<'a> {
        let Direct {
            snapshot,
            server,
            lane,
            command,
            quiet,
            ..
        } = direct;
        let version = snapshot.version;
        self.report(&snapshot, server, result.map_err(Clone::clone));
        let prefix = snapshot.policy.prefix;
        let reply = match result {
            Ok(reply) => reply,
            Err(_) if matches!(quiet, Quiet::Noreply) => return Finished::Owned(Vec::new()),
            Err(failure) => {
                let error = format!("{}: {}", snapshot.servers[server].address, failure.error);
                return Finished::Owned(server_error(&error));
            }
        };
        match command {
            Command::Get { .. } => {
                let line = first_line(reply);
                if is_error(line) {
                    return Finished::Owned(server_error(&String::from_utf8_lossy(line)));
                }
                if reply == b"END\r\n" {
                    // A miss on a table that changed meanwhile: the key may have moved.
                    if self.seen.get() != version {
                        return Finished::Job(self.clone().job(command, lane));
                    }
                    return Finished::Pass(reply);
                }
                self.stats
                    .get_hits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if prefix.is_empty() {
                    return Finished::Pass(reply);
                }
                let mut out = Vec::with_capacity(reply.len());
                for item in items(reply) {
                    out.extend_from_slice(&item.unprefixed(prefix.as_bytes()));
                }
                out.extend_from_slice(b"END\r\n");
                Finished::Owned(out)
            }
            Command::Meta {
                verb: MetaVerb::Get,
                ..
            } => self.direct_reply(reply, quiet, prefix.as_bytes()),
            write if self.seen.get() != version => {
                // The table changed while the write was in flight: it may have landed where
                // the key no longer belongs.
                let reply = unprefix_meta(reply.to_vec(), prefix.as_bytes());
                let this = self.clone();
                Finished::Job(Box::pin(async move {
                    let key = write.key().unwrap_or_default();
                    this.follow_table_change(&snapshot, &[server], key, &write)
                        .await;
                    quiet.apply(reply)
                }))
            }
            _ => self.direct_reply(reply, quiet, prefix.as_bytes()),
        }
    }

    /// A single-line or meta reply as the client gets it.
    fn direct_reply<'a>(&self, reply: &'a [u8], quiet: Quiet, prefix: &[u8]) -> Finished<'a> {
        match quiet.hides(reply) {
            true => Finished::Owned(Vec::new()),
            false if prefix.is_empty() => Finished::Pass(reply),
            false => Finished::Owned(unprefix_meta(reply.to_vec(), prefix)),
        }
    }

    /// The slow path: the command's plan executed as the blocking client executes it.
    pub fn job(self: Rc<Self>, command: Command, lane: usize) -> Work {
        self.job_planned(command, lane, None)
    }

    /// [`Service::job`], with the plan already made for the command, if any.
    fn job_planned(
        self: Rc<Self>,
        command: Command,
        lane: usize,
        planned: Option<Planned>,
    ) -> Work {
        let (read, write) = match planned {
            Some(Planned::Read(plan)) => (Some(plan), None),
            Some(Planned::Write(plan)) => (None, Some(plan)),
            None => (None, None),
        };
        Box::pin(async move {
            match command {
                Command::Get {
                    verb,
                    exptime,
                    keys,
                } => self.get(verb, exptime, keys, lane, read).await,
                Command::Meta {
                    verb,
                    ref key,
                    quiet,
                    ..
                } => {
                    let reply = match verb {
                        MetaVerb::Get => self.read_one(&command, key, lane, read).await,
                        MetaVerb::Debug => self.owner_only(&command, key, lane).await,
                        _ => {
                            self.write(&command, key, (Frame::Meta, false), lane, write)
                                .await
                        }
                    };
                    match quiet {
                        true => Quiet::Meta(verb).apply(reply),
                        false => reply,
                    }
                }
                Command::FlushAll { noreply, .. } => {
                    let mut bytes = Vec::new();
                    command.encode(&mut bytes, b"");
                    let reply = self.flush_all(bytes, lane).await;
                    if noreply { Vec::new() } else { reply }
                }
                Command::Store {
                    ref key,
                    noreply,
                    cas,
                    ..
                } => {
                    let shape = (Frame::Line, cas.is_some());
                    let reply = self.write(&command, key, shape, lane, write).await;
                    if noreply { Vec::new() } else { reply }
                }
                Command::Delete { ref key, noreply }
                | Command::Arith {
                    ref key, noreply, ..
                }
                | Command::Touch {
                    ref key, noreply, ..
                } => {
                    let shape = (Frame::Line, false);
                    let reply = self.write(&command, key, shape, lane, write).await;
                    if noreply { Vec::new() } else { reply }
                }
                Command::MetaNoop
                | Command::Version
                | Command::Verbosity { .. }
                | Command::Stats { .. }
                | Command::ConfigGetCluster
                | Command::Quit => unreachable!("answered by the session"),
            }
        })
    }

    /// A retrieval of many keys: split per server (the key's first up replica; keys missed
    /// there are asked of the next replica), merged in the client's key order. Every server's
    /// share is sent before any reply is awaited. Keys of failed servers are misses unless
    /// every server failed: then `SERVER_ERROR`.
    /// (`planned`: the plan of a single key, made by the direct path.)
    async fn get(
        &self,
        verb: GetVerb,
        exptime: Option<i64>,
        keys: Vec<Vec<u8>>,
        lane: usize,
        planned: Option<Plan<ReadPlan>>,
    ) -> Vec<u8> {
        use std::sync::atomic::Ordering::Relaxed;
        if keys.len() > 1 {
            self.stats.get_keys.fetch_add(keys.len() as u64, Relaxed);
        }
        let now = libmcshm::registry::now_ms();
        let Plan {
            snapshot,
            value: plans,
        } = match planned {
            Some(Plan { snapshot, value }) => Plan {
                snapshot,
                value: vec![value],
            },
            None => decided!(self.decide(|router| {
                let plans: libmcshm::Result<Vec<ReadPlan>> =
                    keys.iter().map(|key| router.plan_read(key, now)).collect();
                plans
            })),
        };
        let batch = Batch {
            snapshot: &snapshot,
            verb,
            exptime,
            keys: &keys,
            plans: &plans,
        };
        let mut found: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        let (mut answered, mut failure) = (false, None);
        let rounds = plans.iter().map(|p| p.replicas.len()).max().unwrap_or(0);
        for round in 0..rounds {
            let done: Vec<bool> = found.iter().map(Option::is_some).collect();
            let outstanding = self.get_round(&batch, &done, round, lane);
            for (members, sent) in outstanding {
                match self.finish(sent).await {
                    Ok(reply) if is_error(first_line(&reply)) => {
                        failure = Some(String::from_utf8_lossy(first_line(&reply)).into_owned());
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
        self.fallbacks(&batch, &mut found).await;
        if !answered && let Some(error) = failure {
            return server_error(&error);
        }
        let mut out = Vec::new();
        for item in found.into_iter().flatten() {
            self.stats.get_hits.fetch_add(1, Relaxed);
            out.extend_from_slice(&item);
        }
        out.extend_from_slice(b"END\r\n");
        out
    }

    /// Queues round `round` of a multi-get: one request per server, for the keys not `done`.
    fn get_round(
        &self,
        batch: &Batch<'_>,
        done: &[bool],
        round: usize,
        lane: usize,
    ) -> Vec<(Vec<usize>, Outstanding)> {
        let (snapshot, keys) = (batch.snapshot, batch.keys);
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (n, plan) in batch.plans.iter().enumerate() {
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
            encode_get(
                batch.verb,
                batch.exptime,
                wanted,
                &mut bytes,
                prefix.as_bytes(),
            );
            let sent = self.send(snapshot, server, bytes, Frame::Values, lane);
            outstanding.push((members, sent));
        }
        outstanding
    }

    /// The misses of a multi-get, as the blocking client takes them: when the table changed
    /// while the servers answered, each is planned again and its new owner asked (a drain that
    /// began meanwhile may have moved it); then each plan's fills (warm-up, drain) are executed
    /// and the owner asked again with the client's own verb (its cas, its touch).
    async fn fallbacks(&self, batch: &Batch<'_>, found: &mut [Option<Vec<u8>>]) {
        let Batch {
            snapshot,
            verb,
            exptime,
            keys,
            plans,
        } = *batch;
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
                let plain = verb == GetVerb::Get && exptime.is_none();
                match self.fill(&snapshot, fill, &keys[n], plain).await {
                    Filled::Copied(item) => found[n] = Some(item),
                    Filled::AskAgain(copy) => {
                        found[n] = self
                            .ask_again(&snapshot, fill.to, verb, exptime, &keys[n])
                            .await
                            .or(copy);
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

    /// Executes one fill of a read plan as the routing core's sequence says
    /// ([`Fill::after_add`]; the blocking client runs the same): `mg` on `from`, a hit copied
    /// to `to` with `add` (never over a newer write; flags and remaining TTL kept), a drain
    /// then deleting it from `from` when `to` holds a value. `plain`: the read is a plain get,
    /// which our stored copy answers as it is.
    async fn fill(&self, snapshot: &Arc<Snapshot>, fill: &Fill, key: &[u8], plain: bool) -> Filled {
        let prefix = snapshot.policy.prefix.as_bytes();
        let mut ask = Vec::new();
        Request::MetaGet { key }.encode_prefixed(&mut ask, prefix);
        let reply = self.call(snapshot, fill.from.index, ask, Frame::Meta).await;
        let Ok(Some((Reply::Meta { value, flags, ttl }, _))) = reply
            .as_deref()
            .map_or(Ok(None), |r| proto::parse_reply(Expect::Meta, r))
        else {
            return match fill.ask_after_source_miss() {
                true => Filled::AskAgain(None),
                false => Filled::Nothing,
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
        let added = match self.call(snapshot, fill.to.index, add, Frame::Line).await {
            Ok(reply) if reply == b"STORED\r\n" => AddAnswer::Stored,
            Ok(reply) if reply == b"NOT_STORED\r\n" => AddAnswer::NotStored,
            _ => AddAnswer::Refused,
        };
        let next = fill.after_add(added, plain);
        if next.delete_source {
            let mut delete = Vec::new();
            Request::Delete { key }.encode_prefixed(&mut delete, prefix);
            let _ = self
                .call(snapshot, fill.from.index, delete, Frame::Line)
                .await;
        }
        let mut item = b"VALUE ".to_vec();
        item.extend_from_slice(key);
        item.extend_from_slice(format!(" {flags} {}\r\n", value.len()).as_bytes());
        item.extend_from_slice(&value);
        item.extend_from_slice(b"\r\n");
        match (next.ask_again, next.copy_if_missed) {
            (false, _) => Filled::Copied(item),
            (true, copy) => Filled::AskAgain(copy.then_some(item)),
        }
    }

    /// A meta get along the key's replicas: the first reply that is not a miss (`EN`); on a
    /// miss everywhere, the plan's fills, then the owner asked again with the same command.
    async fn read_one(
        &self,
        command: &Command,
        key: &[u8],
        lane: usize,
        planned: Option<Plan<ReadPlan>>,
    ) -> Vec<u8> {
        let now = libmcshm::registry::now_ms();
        let Plan {
            snapshot,
            value: plan,
        } = match planned {
            Some(plan) => plan,
            None => decided!(self.decide(|router| router.plan_read(key, now))),
        };
        let bytes = decided!(encode_for(command, &snapshot));
        let Some(first) = plan.replicas.first().copied() else {
            return b"EN\r\n".to_vec();
        };
        let sent = self.send(&snapshot, first.index, bytes.clone(), Frame::Meta, lane);
        let prefix = snapshot.policy.prefix.as_bytes();
        let (mut miss, mut failure) = (None, None);
        let mut result = self.finish(sent).await;
        for next in plan.replicas.iter().skip(1).map(Some).chain([None]) {
            match result {
                Ok(reply) if first_line(&reply).starts_with(b"EN") => miss = Some(reply),
                Ok(reply) => return unprefix_meta(reply, prefix),
                Err(err) => failure = Some(err.error),
            }
            let Some(next) = next else { break };
            result = self
                .call(&snapshot, next.index, bytes.clone(), Frame::Meta)
                .await;
        }
        for fill in &plan.fills {
            // A meta reply carries what only the server gives (its flags as asked): the owner
            // is asked again whatever the fill did, and a miss there stays a miss.
            if miss.is_some() && self.fill(&snapshot, fill, key, false).await != Filled::Nothing {
                let again = self
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
    }

    /// A command for the key's owner alone (`me`).
    async fn owner_only(&self, command: &Command, key: &[u8], lane: usize) -> Vec<u8> {
        let Plan { snapshot, value } = decided!(self.decide(|router| {
            let owner = router.owner(key)?;
            match router.is_down(owner) {
                true => Err(router.down_error(owner)),
                false => Ok(owner),
            }
        }));
        let bytes = decided!(encode_for(command, &snapshot));
        let sent = self.send(&snapshot, value, bytes, Frame::Meta, lane);
        match self.finish(sent).await {
            Ok(reply) => unprefix_meta(reply, snapshot.policy.prefix.as_bytes()),
            Err(err) => server_error(&err.error),
        }
    }

    /// A write to the key's up replicas (`only_first`, for cas: the first only), then the
    /// invalidations the router names; the first replica's reply.
    async fn write(
        &self,
        command: &Command,
        key: &[u8],
        (frame, only_first): (Frame, bool),
        lane: usize,
        planned: Option<Plan<WritePlan>>,
    ) -> Vec<u8> {
        let Plan {
            snapshot,
            value: plan,
        } = match planned {
            Some(plan) => plan,
            None => decided!(self.decide(|router| router.plan_write(key, only_first))),
        };
        let targets: Vec<usize> = plan.targets.iter().map(|s| s.index).collect();
        let bytes = decided!(encode_for(command, &snapshot));
        let prefix = snapshot.policy.prefix;
        let outstanding: Vec<Outstanding> = targets
            .iter()
            .map(|&server| self.send(&snapshot, server, bytes.clone(), frame, lane))
            .collect();
        // The invalidations go out with the write: their round trips overlap.
        let mut delete = Vec::new();
        if !plan.invalidate.is_empty() {
            Request::Delete { key }.encode_prefixed(&mut delete, prefix.as_bytes());
        }
        let deletes: Vec<Outstanding> = plan
            .invalidate
            .iter()
            .map(|s| self.send(&snapshot, s.index, delete.clone(), Frame::Line, lane))
            .collect();
        let (mut reply, mut failure) = (None, None);
        for sent in outstanding {
            match self.finish(sent).await {
                Ok(bytes) if reply.is_none() => reply = Some(bytes),
                Ok(_) => {}
                Err(err) => failure = Some(err.error),
            }
        }
        for sent in deletes {
            let _ = self.finish(sent).await;
        }
        self.follow_table_change(&snapshot, &targets, key, command)
            .await;
        match (reply, failure) {
            (Some(reply), _) => unprefix_meta(reply, prefix.as_bytes()),
            (None, Some(error)) => server_error(&error),
            (None, None) => server_error("no server answered"),
        }
    }

    /// A write planned on `snapshot` and sent to its servers `written`, whose table changed
    /// while it was in flight, follows the new versions as [`FollowChange`] says (the blocking
    /// client runs the same): deleted where it no longer belongs and where the new version
    /// invalidates; a set or delete sent again to new replicas.
    async fn follow_table_change(
        &self,
        snapshot: &Arc<Snapshot>,
        written: &[usize],
        key: &[u8],
        command: &Command,
    ) {
        // The replies of the write were reported, which read the table: one load tells.
        if self.seen.get() == snapshot.version {
            return;
        }
        let written: Vec<ServerRef> = written
            .iter()
            .map(|&index| ServerRef {
                id: snapshot.servers[index].id,
                index,
            })
            .collect();
        let mut follow = FollowChange::new(snapshot.version, &written, command.is_repeatable());
        loop {
            let Ok(Plan {
                snapshot: now,
                value: round,
            }) = self.decide(|router| {
                let plan = router.plan_write(key, false)?;
                let now = router.snapshot().clone();
                Ok(follow.round(now.version, &now.servers, &plan, |i| router.is_down(i)))
            })
            else {
                return;
            };
            let Some(round) = round else { return };
            let prefix = now.policy.prefix.as_bytes();
            let mut delete = Vec::new();
            Request::Delete { key }.encode_prefixed(&mut delete, prefix);
            for server in round.delete {
                let _ = self
                    .call(&now, server.index, delete.clone(), Frame::Line)
                    .await;
            }
            if round.resend.is_empty() {
                continue;
            }
            let Ok(again) = encode_for(command, &now) else {
                return;
            };
            let frame = match command {
                Command::Meta { .. } => Frame::Meta,
                _ => Frame::Line,
            };
            for server in round.resend {
                let _ = self.call(&now, server.index, again.clone(), frame).await;
            }
        }
    }

    /// `flush_all` on every up server: `OK` when all of them did it.
    async fn flush_all(&self, bytes: Vec<u8>, lane: usize) -> Vec<u8> {
        let Plan {
            snapshot,
            value: up,
        } = decided!(self.decide(|router| {
            let n = router.snapshot().servers.len();
            Ok((0..n).filter(|&i| !router.is_down(i)).collect::<Vec<_>>())
        }));
        let outstanding: Vec<Outstanding> = up
            .iter()
            .map(|&server| self.send(&snapshot, server, bytes.clone(), Frame::Line, lane))
            .collect();
        let mut failed = Vec::new();
        for (server, sent) in up.into_iter().zip(outstanding) {
            match self.finish(sent).await {
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

/// A multi-get as planned: the table version its plans were made on, the client's verb (and
/// its touch), its keys in the client's order, and each key's plan.
#[derive(Clone, Copy)]
struct Batch<'a> {
    snapshot: &'a Arc<Snapshot>,
    verb: GetVerb,
    exptime: Option<i64>,
    keys: &'a [Vec<u8>],
    plans: &'a [ReadPlan],
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
