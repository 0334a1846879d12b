//! One worker thread: one event loop (mio, over epoll) owning its listeners' share of the
//! clients, its own connections to every server, its own router per domain, and the jobs of
//! its clients. A request is read, routed, sent, answered and written by one thread, with no
//! hand-over, no lock and no channel (memcached's own worker model, twemproxy's loop).
//!
//! Each iteration: the events are handled (clients read and parse, server replies are framed
//! into the clients' reply slots), the jobs those replies woke are polled, and then every
//! server connection writes what the iteration queued for it in one write, and every client
//! its replies in one write. So requests from many clients to one server are coalesced, and a
//! client's pipelined replies leave together.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::failure::Failure;
use crate::jobs::{Jobs, Work};
use crate::log::{Kind, Said};
use crate::service::{Direct, Finished, Outbox, Service, SlotRef};
use crate::session::{Ctx, Reply, Session, Settings, TimedOut, send_outbox};
use crate::stream::Stream;
use crate::upstream::{Deliver, Net};

/// Token kinds, in the low two bits.
const LISTENER: usize = 0;
const CLIENT: usize = 1;
const SERVER: usize = 2;
/// The main thread's wake-up (shutdown).
pub const WAKER: Token = Token(3);

fn token(kind: usize, n: usize) -> Token {
    Token(n << 2 | kind)
}

fn server_token(n: usize) -> Token {
    token(SERVER, n)
}

/// A listening socket.
pub enum Listener {
    Tcp(mio::net::TcpListener),
    Unix(mio::net::UnixListener),
}

/// What a worker is given.
pub struct Setup {
    pub poll: Poll,
    /// Each listener with the number of the domain it serves (in `domains`).
    pub listeners: Vec<(Listener, usize)>,
    /// Each domain: where its table is, and its counters.
    pub domains: Vec<(
        std::path::PathBuf,
        libmcshm::Domain,
        Arc<crate::stats::ProxyStats>,
    )>,
    pub timeouts: libmcshm::Timeouts,
    pub width: usize,
    pub settings: Settings,
    pub max_connections: usize,
    /// Client connections one user may hold (0: no share).
    pub max_per_uid: usize,
    pub shutdown_timeout: Duration,
    /// Clients open across every worker (for --max-connections).
    pub open: Arc<AtomicI64>,
    pub stop: Arc<AtomicBool>,
}

struct Worker {
    poll: Poll,
    listeners: Vec<(Listener, usize)>,
    services: Vec<std::rc::Rc<Service>>,
    clients: Slab<Session>,
    net: Net<Direct>,
    jobs: Jobs<SlotRef>,
    outbox: Outbox,
    settings: Settings,
    max_connections: usize,
    max_per_uid: usize,
    open: Arc<AtomicI64>,
    generation: u64,
    /// Clients with replies to write this iteration.
    dirty: Vec<usize>,
    /// Direct replies that became jobs during a delivery, started after it.
    deferred: Vec<(Work, SlotRef)>,
    /// When to look at the client timeouts next.
    next_sweep: Option<Instant>,
    /// When to accept again after running out of descriptors.
    accept_again: Option<Instant>,
    /// Clients held back by a limit, to read again once under it.
    stalled: Vec<usize>,
    /// When a refused connection's log line last said who holds the connections.
    holders_told: Option<Instant>,
}

/// Runs a worker until the stop flag is raised and its clients are answered (or the
/// shutdown timeout passes).
pub fn run(setup: Setup) {
    let registry = match setup.poll.registry().try_clone() {
        Ok(registry) => registry,
        Err(err) => {
            crate::log(format_args!("cannot start a worker: {err}"));
            return;
        }
    };
    let outbox = Outbox::default();
    let mut net = Net::new(registry, server_token, setup.timeouts, setup.width);
    let mut services = Vec::new();
    for (dir, domain, stats) in &setup.domains {
        let fence_key = libmcshm::fence::fence_key(domain);
        let number = net.add_domain(Service::access(dir, domain), fence_key, stats.clone());
        match Service::new(
            dir,
            domain,
            setup.timeouts,
            number,
            stats.clone(),
            outbox.clone(),
        ) {
            Ok(service) => services.push(std::rc::Rc::new(service)),
            Err(err) => {
                crate::log(format_args!("domain '{domain}': {err}"));
                return;
            }
        }
    }
    let mut worker = Worker {
        poll: setup.poll,
        listeners: setup.listeners,
        services,
        clients: Slab::new(),
        net,
        jobs: Jobs::default(),
        outbox,
        settings: setup.settings,
        max_connections: setup.max_connections,
        max_per_uid: setup.max_per_uid,
        open: setup.open,
        generation: 0,
        dirty: Vec::new(),
        deferred: Vec::new(),
        next_sweep: None,
        accept_again: None,
        stalled: Vec::new(),
        holders_told: None,
    };
    for (n, (listener, _)) in worker.listeners.iter_mut().enumerate() {
        let registered = match listener {
            Listener::Tcp(l) => {
                worker
                    .poll
                    .registry()
                    .register(l, token(LISTENER, n), Interest::READABLE)
            }
            Listener::Unix(l) => {
                worker
                    .poll
                    .registry()
                    .register(l, token(LISTENER, n), Interest::READABLE)
            }
        };
        if let Err(err) = registered {
            crate::log(format_args!("cannot listen in a worker: {err}"));
            return;
        }
    }
    worker.serve(&setup.stop, setup.shutdown_timeout);
}

impl Worker {
    fn serve(&mut self, stop: &AtomicBool, shutdown_timeout: Duration) {
        let mut events = Events::with_capacity(1024);
        let mut stopping: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if let Some(deadline) = stopping
                && (now >= deadline
                    || (self.clients.is_empty() && (self.jobs.is_empty() || !self.net.busy())))
            {
                return;
            }
            let timeout = self.timeout(now, stopping);
            if let Err(err) = self.poll.poll(&mut events, timeout)
                && err.kind() != std::io::ErrorKind::Interrupted
            {
                crate::log(format_args!("a worker's event loop failed: {err}"));
                return;
            }
            for event in events.iter() {
                let Token(t) = event.token();
                let n = t >> 2;
                match t & 3 {
                    LISTENER => self.accept(n),
                    CLIENT => {
                        let hup = event.is_read_closed() || event.is_error();
                        self.client_event(n, event.is_readable() || hup, event.is_writable(), hup);
                    }
                    SERVER => {
                        let hup = event.is_read_closed() || event.is_error();
                        let mut deliver = deliverer(
                            &mut self.clients,
                            &mut self.jobs,
                            &mut self.deferred,
                            &mut self.dirty,
                        );
                        self.net.ready(
                            n,
                            event.is_readable() || hup,
                            event.is_writable(),
                            hup,
                            &mut deliver,
                        );
                    }
                    _ => {}
                }
            }
            if stopping.is_none() && stop.load(Ordering::Acquire) {
                stopping = Some(Instant::now() + shutdown_timeout);
                self.stop_accepting();
            }
            self.settle();
            self.timers(Instant::now());
            self.settle();
            self.write_out();
        }
    }

    /// How long the next poll may wait: until the next timeout that must be checked.
    fn timeout(&self, now: Instant, stopping: Option<Instant>) -> Option<Duration> {
        let resumable = |&key: &usize| {
            self.clients
                .get(key)
                .is_some_and(|s| s.may_resume(&self.settings))
        };
        if self.stalled.iter().any(resumable) {
            return Some(Duration::ZERO);
        }
        let tick = crate::jobs::sleeping().then(|| now + crate::jobs::TICK);
        let deadlines = [
            tick,
            self.net.next_deadline(),
            self.next_sweep,
            self.accept_again,
            stopping,
        ];
        let next = deadlines.into_iter().flatten().min()?;
        Some(
            next.saturating_duration_since(now)
                .max(Duration::from_millis(1)),
        )
    }

    /// Runs everything the events set off until nothing more is ready: failed connections'
    /// requests, deferred and woken jobs, clients that may read again.
    fn settle(&mut self) {
        for _ in 0..1000 {
            {
                let mut deliver = deliverer(
                    &mut self.clients,
                    &mut self.jobs,
                    &mut self.deferred,
                    &mut self.dirty,
                );
                self.net.fail_broken(&mut deliver);
            }
            for (work, slot) in std::mem::take(&mut self.deferred) {
                let done = self.jobs.start(work, slot);
                send_outbox(&mut self.net, &self.outbox);
                if let Some((slot, output)) = done {
                    complete(
                        &mut self.clients,
                        &mut self.dirty,
                        slot,
                        Reply::Owned(output),
                    );
                }
            }
            let (clients, dirty, net, outbox) = (
                &mut self.clients,
                &mut self.dirty,
                &mut self.net,
                &self.outbox,
            );
            self.jobs.run_ready(
                |slot, output| complete(clients, dirty, slot, Reply::Owned(output)),
                || send_outbox(net, outbox),
            );
            let mut resumable = Vec::new();
            let (clients, settings) = (&self.clients, &self.settings);
            self.stalled.retain(|&key| match clients.get(key) {
                Some(s) if s.may_resume(settings) => {
                    resumable.push(key);
                    false
                }
                Some(s) => s.stalled,
                None => false,
            });
            for key in &resumable {
                self.client_event(*key, true, false, false);
            }
            if resumable.is_empty()
                && !self.net.has_broken()
                && !self.jobs.has_ready()
                && self.deferred.is_empty()
            {
                return;
            }
        }
    }

    /// Writes what the iteration queued: each server connection's requests, each client's
    /// replies; closes the clients that are done.
    fn write_out(&mut self) {
        self.net.flush();
        if self.net.has_broken() {
            self.settle();
            self.net.flush();
        }
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(session) = self.clients.get_mut(key) else {
                continue;
            };
            session.queued = false;
            session.flush();
            if session.finished() {
                self.close(key);
            } else if session.stuck() {
                let soon = Instant::now() + SWEEP_IDLE;
                if self.next_sweep.is_none_or(|at| at > soon) {
                    self.next_sweep = Some(soon);
                }
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn client_event(&mut self, key: usize, readable: bool, writable: bool, hup: bool) {
        let Some(session) = self.clients.get_mut(key) else {
            return;
        };
        if readable {
            let mut ctx = Ctx {
                net: &mut self.net,
                jobs: &mut self.jobs,
                outbox: &self.outbox,
                settings: &self.settings,
            };
            session.on_readable(&mut ctx, hup);
            if session.stalled && !self.stalled.contains(&key) {
                self.stalled.push(key);
            }
            if session.partial() {
                let soon = Instant::now() + SWEEP_PARTIAL;
                if self.next_sweep.is_none_or(|at| at > soon) {
                    self.next_sweep = Some(soon);
                }
            }
        }
        if writable && session.has_output() {
            session.flush();
        }
        if !session.queued {
            session.queued = true;
            self.dirty.push(key);
        }
    }

    fn accept(&mut self, n: usize) {
        loop {
            let (listener, domain) = &self.listeners[n];
            let accepted = match listener {
                Listener::Tcp(l) => l.accept().map(|(s, peer)| {
                    let _ = s.set_nodelay(true);
                    (Stream::Tcp(s), Some(peer))
                }),
                Listener::Unix(l) => l.accept().map(|(s, _)| (Stream::Unix(s), None)),
            };
            let domain = *domain;
            let (mut stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // EMFILE and friends: try again shortly instead of spinning.
                    self.accept_again = Some(Instant::now() + Duration::from_millis(50));
                    return;
                }
            };
            let service = self.services[domain].clone();
            let stats = service.stats.clone();
            let uid = self.peer_uid(&stream, peer);
            if let Some(uid) = uid
                && !self.admit_user(uid)
            {
                stats.rejected_connections.fetch_add(1, Ordering::Relaxed);
                Said::default().log(
                    Kind::ConnectionRefused,
                    format_args!(
                        "a connection refused: uid {uid} holds {} busy connections \
                         (--max-connections-per-uid)",
                        self.max_per_uid
                    ),
                );
                let _ = std::io::Write::write(&mut stream, b"ERROR Too many open connections\r\n");
                stream.shutdown_write();
                continue;
            }
            // Admission is one atomic step: worker threads accept at the same time. When full,
            // the connection idle longest makes room: idle connections (4 200 opened by one
            // process) cannot lock every other client out.
            if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_connections as i64
                && !self.close_idlest()
            {
                self.open.fetch_sub(1, Ordering::AcqRel);
                stats.rejected_connections.fetch_add(1, Ordering::Relaxed);
                let held = self.who_holds();
                Said::default().log(
                    Kind::ConnectionRefused,
                    format_args!(
                        "a connection refused: all {} connections (--max-connections) are \
                         busy{held}",
                        self.max_connections
                    ),
                );
                let _ = std::io::Write::write(&mut stream, b"ERROR Too many open connections\r\n");
                stream.shutdown_write();
                continue;
            }
            stats.curr_connections.fetch_add(1, Ordering::Relaxed);
            let lane = stats.total_connections.fetch_add(1, Ordering::Relaxed) as usize + 1;
            self.generation += 1;
            let entry = self.clients.vacant_entry();
            let key = entry.key();
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self
                .poll
                .registry()
                .register(&mut stream, token(CLIENT, key), interest)
                .is_err()
            {
                stats.curr_connections.fetch_sub(1, Ordering::Relaxed);
                self.open.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            let mut session =
                Session::new(stream, key, self.generation, service, lane, &self.settings);
            session.peer = peer;
            session.uid = uid;
            entry.insert(session);
            if self.settings.idle_timeout.is_some() && self.next_sweep.is_none() {
                self.next_sweep = Some(Instant::now() + SWEEP_IDLE);
            }
        }
    }

    /// With --max-connections-per-uid: the user at the other end of a new connection (the
    /// kernel's record of a unix socket's peer, or of a local TCP peer's socket).
    fn peer_uid(&self, stream: &Stream, peer: Option<std::net::SocketAddr>) -> Option<u32> {
        if self.max_per_uid == 0 {
            return None;
        }
        match (stream, peer) {
            (Stream::Unix(s), _) => libmcshm::peer_uid(std::os::fd::AsFd::as_fd(s)),
            (_, Some(peer)) => crate::peers::tcp_peer_uid(peer),
            _ => None,
        }
    }

    /// Whether user `uid` may open one more connection: under its share, or at it with one
    /// of its own idle (closed to make room, the one idle longest).
    fn admit_user(&mut self, uid: u32) -> bool {
        let held = self
            .clients
            .iter()
            .filter(|(_, s)| s.uid == Some(uid))
            .count();
        if held < self.max_per_uid {
            return true;
        }
        self.evict_idlest(|s| s.uid == Some(uid)).is_some()
    }

    /// Who holds this worker's connections (" (held by uid 1000: 4096)"), at most once a
    /// second (it reads the kernel's socket tables); empty in between.
    fn who_holds(&mut self) -> String {
        let now = Instant::now();
        if self
            .holders_told
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return String::new();
        }
        self.holders_told = Some(now);
        let peers: Vec<_> = self.clients.iter().map(|(_, s)| s.peer).collect();
        format!(" (held by {})", crate::peers::holders(&peers))
    }

    /// At --max-connections: closes this worker's connection idle longest, to admit a new
    /// one; `false` when none is idle.
    fn close_idlest(&mut self) -> bool {
        let Some(idle) = self.evict_idlest(|_| true) else {
            return false;
        };
        Said::default().log(
            Kind::ConnectionEvicted,
            format_args!(
                "--max-connections ({}) reached: the connection idle longest ({idle:.0?}) closed \
                 to admit a new one",
                self.max_connections,
            ),
        );
        true
    }

    /// Closes the connection idle longest among those `which` picks (counted in
    /// `evicted_connections`): how long it was idle; `None` when none of them is idle.
    fn evict_idlest(&mut self, which: impl Fn(&Session) -> bool) -> Option<Duration> {
        let (since, key) = self
            .clients
            .iter()
            .filter(|(_, session)| which(session))
            .filter_map(|(key, session)| session.idle_since().map(|since| (since, key)))
            .min()?;
        let stats = self.clients[key].service().stats.clone();
        self.close(key);
        stats.evicted_connections.fetch_add(1, Ordering::Relaxed);
        Some(since.elapsed())
    }

    fn stop_accepting(&mut self) {
        for (listener, _) in &mut self.listeners {
            let _ = match listener {
                Listener::Tcp(l) => self.poll.registry().deregister(l),
                Listener::Unix(l) => self.poll.registry().deregister(l),
            };
        }
        self.accept_again = None;
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.clients[key].stop_reading();
            if !self.clients[key].queued {
                self.clients[key].queued = true;
                self.dirty.push(key);
            }
        }
    }

    fn close(&mut self, key: usize) {
        let Some(mut session) = self.clients.try_remove(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut session.stream);
        if !session.broken {
            session.stream.shutdown_write();
        }
        session
            .service()
            .stats
            .curr_connections
            .fetch_sub(1, Ordering::Relaxed);
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// The timeouts: server connections' (connect, reply), clients' (a command trickling in,
    /// idleness), and accepting again after running out of descriptors.
    fn timers(&mut self, now: Instant) {
        // Jobs waiting for this host's table to catch up with a fence look again.
        self.jobs.wake_sleepers();
        {
            let mut deliver = deliverer(
                &mut self.clients,
                &mut self.jobs,
                &mut self.deferred,
                &mut self.dirty,
            );
            self.net.sweep(now, &mut deliver);
        }
        if self.accept_again.is_some_and(|at| now >= at) {
            self.accept_again = None;
            for n in 0..self.listeners.len() {
                self.accept(n);
            }
        }
        if self.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        let mut expired = Vec::new();
        let (mut partial, mut stuck) = (false, false);
        for (key, session) in &self.clients {
            match session.timed_out(now, &self.settings) {
                Some(why) => expired.push((key, why)),
                None => {
                    partial |= session.partial();
                    stuck |= session.stuck();
                }
            }
        }
        for (key, why) in expired {
            let session = &mut self.clients[key];
            let stats = &session.service().stats;
            match why {
                TimedOut::MidCommand => {
                    stats.client_errors.fetch_add(1, Ordering::Relaxed);
                }
                TimedOut::NotReading => {
                    stats.clients_not_reading.fetch_add(1, Ordering::Relaxed);
                    // Its replies are dropped: nothing more is written to it.
                    session.broken = true;
                }
                TimedOut::Idle => {}
            }
            session.stop_reading();
            if !session.queued {
                session.queued = true;
                self.dirty.push(key);
            }
        }
        self.next_sweep = match (partial, self.settings.idle_timeout) {
            (true, _) => Some(now + SWEEP_PARTIAL),
            (false, Some(_)) if !self.clients.is_empty() => Some(now + SWEEP_IDLE),
            _ if stuck => Some(now + SWEEP_IDLE),
            _ => None,
        };
    }
}

/// How often client timeouts are looked at while a command is arriving, and while only idle
/// connections could time out.
const SWEEP_PARTIAL: Duration = Duration::from_millis(10);
const SWEEP_IDLE: Duration = Duration::from_millis(100);

/// Hands a server's reply to whoever waits for it: a client's slot (a direct request), or a
/// job's cell (then the job is polled).
fn deliverer<'a>(
    clients: &'a mut Slab<Session>,
    jobs: &'a mut Jobs<SlotRef>,
    deferred: &'a mut Vec<(Work, SlotRef)>,
    dirty: &'a mut Vec<usize>,
) -> impl FnMut(Deliver<Direct>, Result<&[u8], &Failure>) + 'a {
    move |to, result| match to {
        Deliver::Auth | Deliver::Dropped | Deliver::Fence => {}
        Deliver::Cell(cell) => {
            if let Some(job) = cell.fill(result.map(<[u8]>::to_vec).map_err(Clone::clone)) {
                jobs.wake(job);
            }
        }
        Deliver::Direct(direct) => {
            let slot = direct.slot;
            let service = direct.service.clone();
            match service.finish_direct(direct, result) {
                Finished::Pass(bytes) => complete(clients, dirty, slot, Reply::Borrowed(bytes)),
                Finished::Owned(bytes) => complete(clients, dirty, slot, Reply::Owned(bytes)),
                Finished::Job(work) => deferred.push((work, slot)),
            }
        }
    }
}

/// A reply for a client's slot (dropped if the client is gone).
fn complete(clients: &mut Slab<Session>, dirty: &mut Vec<usize>, slot: SlotRef, reply: Reply<'_>) {
    let Some(session) = clients.get_mut(slot.client) else {
        return;
    };
    if session.generation != slot.generation {
        return;
    }
    session.complete(slot.seq, reply);
    if !session.queued {
        session.queued = true;
        dirty.push(slot.client);
    }
}
