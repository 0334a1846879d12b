//! One domain served by a worker: every command routed by the worker's [`Router`] (the same
//! decisions as the blocking libmcshm client: ring, failover policy, shared failure view,
//! retry probes, replicas, invalidation after writes, warm-up and drain), sent over the
//! worker's server connections ([`Net`](crate::upstream::Net)), and answered in memcached's words.
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
//!
//! The files follow the two ways: `direct` (the common shapes, no task), `read` (the jobs that
//! read: multi-get rounds, replica fallbacks, fills, meta gets) and `write` (the jobs that
//! write: replicas, invalidations, following a table change, flush_all). This file holds the
//! service itself: deciding with the router, sending, awaiting and reporting replies, and
//! which job runs a command.
//!
//! **Fenced answers** (see [`libmcshm::fence`] and [`crate::upstream`]): in a domain that
//! fences, a reply the server's fence judges behind arrives as a [`Failure`] marked
//! [`Fenced`]. It is reported to the router as answered (the server is healthy: this host's
//! table lags), counted (`fenced_answers`) and logged once per fence. A write that landed there
//! is undone (a `delete` on the same server, without a fence read). Then the command waits, at
//! most [`FENCE_WAIT`], for this host's table to reach the fence, and runs once more on it;
//! if the table does not catch up, a read is a miss and a write answers
//! `SERVER_ERROR table behind (…)` (nothing under `noreply`): never the superseded value, never a
//! write acknowledged where no other host reads.

use std::cell::{Cell, RefCell, RefMut};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libmcshm::clock::now_ms;
use libmcshm::table::State;
use libmcshm::{Address, Domain, Snapshot, Timeouts};
use mcshm_route::{FailureEvent, MarkedDown, Outcome, ReadPlan, Router, ServerRef, WritePlan};

use crate::command::{Command, MetaVerb};
use crate::failure::{Failure, Fenced};
use crate::jobs::{Await, ReplyCell, Tick, Work};
use crate::stats::ProxyStats;
use libmcshm::proto::Encoded;
use libmcshm::proto::frame::Frame;

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

// After the macro: modules see the macros defined before them.
mod direct;
mod read;
mod write;

use direct::Quiet;
pub use direct::{Direct, Finished, SlotRef, Started};

/// A request a job queued, sent by the worker after the job's poll.
pub struct Outgoing {
    pub domain: usize,
    pub snapshot: Arc<Snapshot>,
    pub server: usize,
    pub lane: usize,
    pub frame: Frame,
    pub bytes: Encoded,
    pub cell: Rc<ReplyCell>,
    /// Sent without the fence's judgement ([`crate::upstream::Net::send_plain`]).
    pub plain: bool,
}

/// How long a command whose answer was fenced waits for this host's table to reach the fence
/// before it gives a miss (a read) or `SERVER_ERROR table behind` (a write): the library's
/// default fence wait.
pub const FENCE_WAIT: Duration = Duration::from_millis(200);

/// The fences a job's answers met: the highest revision one of them asks for (`u64::MAX`: a
/// missing fence), so that the command can run once more when the table reaches it.
#[derive(Default)]
struct Fences(Cell<Option<u64>>);

impl Fences {
    fn note(&self, fenced: &Fenced) {
        let highest = self.0.get().map_or(fenced.fence, |f| f.max(fenced.fence));
        self.0.set(Some(highest));
    }

    fn wanted(&self) -> Option<u64> {
        self.0.get()
    }
}

/// The requests jobs queued since the worker last sent them.
pub type Outbox = Rc<RefCell<Vec<Outgoing>>>;

/// A request queued for a server, with the table it was routed on.
struct Outstanding {
    snapshot: Arc<Snapshot>,
    server: usize,
    reply: Await,
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
    /// The domain's number in the worker's [`Net`](crate::upstream::Net).
    domain: usize,
    /// Lanes for follow-up requests, whose order does not matter.
    lanes: Cell<usize>,
    outbox: Outbox,
}

/// Logs a failure that took a server down (a failure below the limit is not logged: the
/// server may answer the next request).
fn log_failure(event: &FailureEvent<'_>) {
    let whom = match event.marked_down {
        MarkedDown::No => return,
        MarkedDown::ForEveryone => "for every process on this host",
        MarkedDown::LocallyOnly => "for this process only (it cannot write the registry)",
    };
    crate::log(format_args!(
        "{} marked down {whom} after {} consecutive failures: {}",
        event.server, event.failures, event.error
    ));
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
        router.refresh(now_ms())?;
        Ok(Service {
            stats,
            router: RefCell::new(router),
            timeouts,
            domain: number,
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
        decide: impl FnOnce(&mut Router, u64) -> libmcshm::Result<T>,
    ) -> Result<Plan<T>, Vec<u8>> {
        let mut router = self.router();
        let now = now_ms();
        let decided = router.refresh(now).and_then(|()| decide(&mut router, now));
        self.run_probes(&mut router);
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

    /// Whether the table moved on from version `version` (one atomic load): a request routed
    /// on it may have gone where a key no longer belongs.
    fn changed_since(&self, version: u64) -> bool {
        self.router().version_now() != version
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
        bytes: Encoded,
        frame: Frame,
        lane: usize,
    ) -> Outstanding {
        self.queue(snapshot, i, bytes, frame, lane, false)
    }

    /// [`Service::send`], `plain`: without the fence's judgement.
    fn queue(
        &self,
        snapshot: &Arc<Snapshot>,
        i: usize,
        bytes: Encoded,
        frame: Frame,
        lane: usize,
        plain: bool,
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
            plain,
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
        bytes: Encoded,
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
            // The server answered; this host's table is what lags.
            Err(Failure {
                fenced: Some(fenced),
                ..
            }) => {
                self.stats
                    .fenced_answers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let address = snapshot.servers[i].address.to_string();
                crate::log::fenced(&snapshot.domain, &address, fenced.fence, fenced.routed);
                Outcome::Answered
            }
            Err(failure) => {
                self.stats
                    .server_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !failure.counted {
                    return; // its connection's failure is counted once, for another request
                }
                Outcome::Failed {
                    error: &failure.error,
                    errno: failure.errno,
                }
            }
        };
        let mut router = self.router();
        let now = now_ms();
        if let Some(failure) = router.report(server, outcome, now)
            && let Some(marked_down) = router.carry_out(&failure, now)
        {
            log_failure(&failure.event(marked_down));
        }
        self.run_probes(&mut router);
    }

    /// Undoes `command`, a write a fence judged behind on server `i` of `snapshot`: a delete
    /// of its key there, without a fence read (a delete cannot leave a superseded copy); its
    /// reply is not waited for. A key in base64 (a meta command's `b`) is deleted as named.
    fn undo(&self, snapshot: &Arc<Snapshot>, i: usize, command: &Command, lane: usize) {
        use libmcshm::proto::{MetaVerb as Verb, Request};
        let Some(key) = command.key() else { return };
        let prefix = snapshot.policy.prefix.as_bytes();
        let delete = match command.base64_key() {
            false => Encoded::of(&Request::Delete { key }, prefix),
            true => Encoded::of(
                &Request::Meta {
                    verb: Verb::Delete,
                    key,
                    flags: &[b"b"],
                    value: None,
                },
                prefix,
            ),
        };
        let frame = match command.base64_key() {
            false => Frame::Line,
            true => Frame::Meta,
        };
        // The reply cell is filled and dropped: nobody awaits it.
        let _ = self.queue(snapshot, i, delete, frame, lane, true);
    }

    /// After a fenced answer: waits, at most [`FENCE_WAIT`], until this host's table has
    /// reached `wanted` (the fence's revision); whether it did. A missing fence (`u64::MAX`)
    /// waits for nothing: no revision will do until a fleet commit writes one.
    async fn catch_up(&self, wanted: u64) -> bool {
        if wanted == u64::MAX {
            return false;
        }
        let deadline = Instant::now() + FENCE_WAIT;
        loop {
            {
                let mut router = self.router();
                if router.refresh(now_ms()).is_err() {
                    return false;
                }
                if router.snapshot().fleet_revision >= wanted {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            Tick::default().await;
        }
    }

    /// The slow path: the command's plan executed as the blocking client executes it (once
    /// more, on the table that caught up, when an answer was fenced).
    pub fn job(self: Rc<Self>, command: Command, lane: usize) -> Work {
        self.job_planned(command, lane, None, true)
    }

    /// [`Service::job`], with the plan already made for the command, if any.
    /// (`repeat`: whether a fenced answer makes it run once more when the table catches up.)
    fn job_planned(
        self: Rc<Self>,
        command: Command,
        lane: usize,
        planned: Option<Planned>,
        repeat: bool,
    ) -> Work {
        Box::pin(async move {
            let fences = Fences::default();
            let reply = self.run(&command, lane, planned, &fences).await;
            match fences.wanted() {
                Some(wanted) if repeat && self.catch_up(wanted).await => {
                    self.run(&command, lane, None, &Fences::default()).await
                }
                _ => reply,
            }
        })
    }

    /// A command's plan executed once; the fences its answers met go to `fences`.
    async fn run(
        &self,
        command: &Command,
        lane: usize,
        planned: Option<Planned>,
        fences: &Fences,
    ) -> Vec<u8> {
        let (read, write) = match planned {
            Some(Planned::Read(plan)) => (Some(plan), None),
            Some(Planned::Write(plan)) => (None, Some(plan)),
            None => (None, None),
        };
        match *command {
            Command::Get {
                verb,
                exptime,
                ref keys,
            } => {
                self.get(verb, exptime, keys.clone(), lane, read, fences)
                    .await
            }
            Command::Meta {
                verb,
                ref key,
                quiet,
                ..
            } => {
                let reply = match verb {
                    MetaVerb::Get => self.read_one(command, key, lane, read, fences).await,
                    MetaVerb::Debug => self.owner_only(command, key, lane, fences).await,
                    _ => {
                        let shape = (Frame::Meta, false);
                        self.write(command, key, shape, lane, write, fences).await
                    }
                };
                match quiet {
                    true => Quiet::Meta(verb).apply(reply),
                    false => reply,
                }
            }
            Command::FlushAll { noreply, .. } => {
                let mut bytes = Encoded::new();
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
                let reply = self.write(command, key, shape, lane, write, fences).await;
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
                let reply = self.write(command, key, shape, lane, write, fences).await;
                if noreply { Vec::new() } else { reply }
            }
            Command::MetaNoop
            | Command::Version
            | Command::Verbosity { .. }
            | Command::Stats { .. }
            | Command::ConfigGetCluster
            | Command::Quit => unreachable!("answered by the session"),
        }
    }

    /// `config get cluster` in ElastiCache's auto-discovery format: the table version, then
    /// `host|ip|port` per up server (the ip empty for a host name; unix sockets left out).
    pub fn cluster_config(&self) -> Vec<u8> {
        let plan = self.decide(|router, _| Ok(router.snapshot().version));
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
        ..failure
    })
}

/// The request a server gets for `command` under the domain's key prefix, or the reply its
/// client gets when it cannot have one: a meta command with a base64 key (`b`) on a domain
/// with a prefix.
fn encode_for(command: &Command, snapshot: &Snapshot) -> Result<Encoded, Vec<u8>> {
    let prefix = snapshot.policy.prefix;
    if !prefix.is_empty() && command.base64_key() {
        return Err(
            b"CLIENT_ERROR base64 keys (b) are not supported on a domain with a key prefix\r\n"
                .to_vec(),
        );
    }
    let mut bytes = Encoded::new();
    command.encode(&mut bytes, prefix.as_bytes());
    Ok(bytes)
}

/// `SERVER_ERROR message`, on one line whatever the message holds.
pub fn server_error(message: &str) -> Vec<u8> {
    let clean: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("SERVER_ERROR {clean}\r\n").into_bytes()
}
