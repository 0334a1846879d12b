//! Connections to the memcached servers, owned by one worker's event loop.
//!
//! Each server gets a few connections per worker ([`Net::new`]'s `width`); the requests of
//! every client of the worker are appended to one of them (the client's lane, so a client's
//! requests reach a server in the order it sent them), and each connection's requests of one
//! loop iteration go out in one write. memcached answers a connection's requests in order, so
//! replies are framed off the read buffer and handed, in place, to whoever waits: a client's
//! reply slot directly, or a job's [`ReplyCell`]. A connection that fails (connect, reset, a
//! reply that is not the protocol) fails exactly the requests it carried; the next request
//! opens a new one. A connection whose reply timed out fails its requests too but is kept
//! (`Net::abandon`): they were sent whole and a frozen server runs them when it thaws, so a
//! later write on a new connection could run first and be overwritten by an older one; on the
//! same connection memcached runs them in order, and their replies are read and dropped.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use libmcshm::access::Access;
use libmcshm::auth::Credentials;
use libmcshm::{Address, Snapshot, Timeouts};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::buffer::Inbox;
use crate::failure::Failure;
use crate::jobs::ReplyCell;
use crate::stats::ServerStats;
use crate::stream::Stream;
use libmcshm::proto::Encoded;
use libmcshm::proto::frame::{Frame, frame_len};

/// Bytes read from a server at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Where the domain's TLS settings and credentials are found (`mcadmin tls`, `mcadmin auth`):
/// read for each new connection, so a change applies without a restart.
pub type AccessSource = Arc<dyn Fn() -> libmcshm::Result<Access>>;

/// Who waits for a reply.
pub enum Deliver<D> {
    /// The connection's own authentication.
    Auth,
    /// A job.
    Cell(Rc<ReplyCell>),
    /// A client's reply slot, as the worker describes it.
    Direct(D),
    /// Nobody any more: the request timed out and was answered as failed; its reply is read
    /// and dropped when it comes.
    Dropped,
}

impl<D> Deliver<D> {
    fn waits(&self) -> bool {
        !matches!(self, Deliver::Dropped | Deliver::Auth)
    }
}

struct Waiter<D> {
    frame: Frame,
    sent: Instant,
    to: Deliver<D>,
}

/// One connection to a server.
struct Conn<D> {
    route: (usize, Address),
    stream: Stream,
    /// Until connected: when connecting gives up.
    connecting: Option<Instant>,
    /// Requests to write, and how much of them is written.
    out: Encoded,
    written: usize,
    inbox: Inbox,
    in_flight: VecDeque<Waiter<D>>,
    stats: Arc<ServerStats>,
    /// The server left the table: closed once what it carries is answered.
    closing: bool,
    queued: bool,
    broken: Option<Failure>,
    /// The credentials the connection authenticates with (`mcadmin auth`), if any.
    credentials: Option<Credentials>,
    /// Whether the server answered anything on it (see [`Net::diagnose`]).
    answered: bool,
    /// When the server last finished a reply on it: the oldest request in flight has been the
    /// server's to answer since then (or since it was sent, if later).
    replied: Instant,
    /// The newest requests in flight whose bytes are not all written yet: their time with the
    /// server starts when they are ([`write_out`]).
    unsent: usize,
}

/// A domain's part in the connections.
struct DomainNet {
    access: AccessSource,
    stats: Arc<crate::stats::ProxyStats>,
    version: u64,
}

/// The server connections of one worker.
pub struct Net<D> {
    registry: Registry,
    token: fn(usize) -> Token,
    conns: Slab<Conn<D>>,
    routes: HashMap<(usize, Address), Vec<Option<usize>>>,
    domains: Vec<DomainNet>,
    timeouts: Timeouts,
    width: usize,
    /// Connections with bytes to write this iteration.
    dirty: Vec<usize>,
    /// Connections that failed outside a delivery (at connect): failed by [`Net::fail_broken`].
    broken: Vec<usize>,
    /// When each server was last diagnosed (see [`Net::diagnose`]).
    diagnosed: HashMap<Address, Instant>,
    /// Requests that found no connection (it could not even be started), failed by
    /// [`Net::fail_broken`] too.
    unsent: Vec<(Deliver<D>, Failure)>,
}

impl<D> Net<D> {
    pub fn new(
        registry: Registry,
        token: fn(usize) -> Token,
        timeouts: Timeouts,
        width: usize,
    ) -> Self {
        Net {
            registry,
            token,
            conns: Slab::new(),
            routes: HashMap::new(),
            domains: Vec::new(),
            timeouts,
            width: width.max(1),
            dirty: Vec::new(),
            broken: Vec::new(),
            diagnosed: HashMap::new(),
            unsent: Vec::new(),
        }
    }

    /// A domain whose requests go through this net: its number.
    pub fn add_domain(
        &mut self,
        access: AccessSource,
        stats: Arc<crate::stats::ProxyStats>,
    ) -> usize {
        self.domains.push(DomainNet {
            access,
            stats,
            version: u64::MAX,
        });
        self.domains.len() - 1
    }

    /// Queues a request for server `index` of `snapshot` on `lane`: `encode` appends it (complete,
    /// CRLF-terminated) to the connection's output, written at the end of the loop iteration.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        domain: usize,
        snapshot: &Snapshot,
        index: usize,
        lane: usize,
        frame: Frame,
        to: Deliver<D>,
        encode: impl FnOnce(&mut Encoded, &Deliver<D>),
    ) {
        if self.domains[domain].version != snapshot.version {
            self.prune(domain, snapshot);
        }
        let address = &snapshot.servers[index].address;
        let key = match self.conn(domain, address, lane) {
            Ok(key) => key,
            Err(failure) => {
                self.domains[domain]
                    .stats
                    .server(&address.to_string())
                    .record(Duration::ZERO, false);
                self.unsent.push((to, failure));
                return;
            }
        };
        let conn = &mut self.conns[key];
        encode(&mut conn.out, &to);
        conn.in_flight.push_back(Waiter {
            frame,
            sent: Instant::now(),
            to,
        });
        conn.unsent += 1;
        if !conn.queued {
            conn.queued = true;
            self.dirty.push(key);
        }
    }

    /// The connection of `lane` to `address`: a new one where there is none.
    fn conn(&mut self, domain: usize, address: &Address, lane: usize) -> Result<usize, Failure> {
        let width = self.width;
        let route = match self.routes.get_mut(&(domain, address.clone())) {
            Some(route) => route,
            None => self
                .routes
                .entry((domain, address.clone()))
                .or_insert_with(|| vec![None; width]),
        };
        let slot = lane % width;
        if let Some(key) = route[slot] {
            return Ok(key);
        }
        let key = self.open(domain, address)?;
        if let Some(route) = self.routes.get_mut(&(domain, address.clone())) {
            route[slot] = Some(key);
        }
        Ok(key)
    }

    /// A new connection to `address` (its connect started); the failure if it cannot start.
    fn open(&mut self, domain: usize, address: &Address) -> Result<usize, Failure> {
        let stats = self.domains[domain].stats.server(&address.to_string());
        let access = (self.domains[domain].access)()
            .map_err(|err| Failure::new(err.to_string(), libc::EACCES))?;
        let mut stream = connect(address)?;
        if let (Some(tls), Stream::Tcp(_)) = (&access.tls, &stream) {
            let session = tls
                .connect(address)
                .map_err(|err| Failure::io("TLS", &err))?;
            stream = stream.with_tls(session);
        }
        let broken = None;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let mut conn = Conn {
            route: (domain, address.clone()),
            stream,
            connecting: Some(Instant::now() + self.timeouts.connect),
            out: Encoded::new(),
            written: 0,
            inbox: Inbox::default(),
            in_flight: VecDeque::new(),
            stats,
            closing: false,
            queued: false,
            broken,
            credentials: None,
            answered: false,
            replied: Instant::now(),
            unsent: 0,
        };
        if conn.broken.is_none() {
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(err) = self
                .registry
                .register(&mut conn.stream, (self.token)(key), interest)
            {
                conn.broken = Some(Failure::io("connect", &err));
            }
        }
        if conn.broken.is_none()
            && let Some(credentials) = access.credentials
        {
            conn.out.append(&credentials.request());
            conn.credentials = Some(credentials);
            conn.in_flight.push_back(Waiter {
                frame: Frame::Line,
                sent: Instant::now(),
                to: Deliver::Auth,
            });
            conn.unsent += 1;
        }
        if conn.broken.is_some() {
            self.broken.push(key);
        }
        entry.insert(conn);
        Ok(key)
    }

    /// On a new table version: lets go of the connections to servers no longer in it (each
    /// closes once the requests it carries are answered).
    fn prune(&mut self, domain: usize, snapshot: &Snapshot) {
        self.domains[domain].version = snapshot.version;
        let gone: Vec<(usize, Address)> = self
            .routes
            .keys()
            .filter(|(d, address)| {
                *d == domain && !snapshot.servers.iter().any(|s| s.address == *address)
            })
            .cloned()
            .collect();
        for route in gone {
            for key in self.routes.remove(&route).into_iter().flatten().flatten() {
                let conn = &mut self.conns[key];
                conn.closing = true;
                if conn.in_flight.is_empty() {
                    self.close(key);
                }
            }
        }
    }

    /// Writes what this iteration queued: one write per connection.
    pub fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.queued = false;
            if let Err(failure) = write_out(conn)
                && conn.broken.is_none()
            {
                conn.broken = Some(failure);
                self.broken.push(key);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Whether connections failed outside a delivery and wait for [`Net::fail_broken`].
    pub fn has_broken(&self) -> bool {
        !self.broken.is_empty() || !self.unsent.is_empty()
    }

    /// Fails the connections that broke (their requests get the failure).
    pub fn fail_broken(&mut self, deliver: &mut impl FnMut(Deliver<D>, Result<&[u8], &Failure>)) {
        for (to, failure) in std::mem::take(&mut self.unsent) {
            deliver(to, Err(&failure));
        }
        while let Some(key) = self.broken.pop() {
            if let Some(failure) = self.conns.get_mut(key).and_then(|c| c.broken.take()) {
                self.fail(key, failure, deliver);
            }
        }
    }

    /// An event on connection `key`.
    pub fn ready(
        &mut self,
        key: usize,
        readable: bool,
        writable: bool,
        hup: bool,
        deliver: &mut impl FnMut(Deliver<D>, Result<&[u8], &Failure>),
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.broken.is_some() {
            return;
        }
        let result = (|| {
            if conn.connecting.is_some() {
                match conn.stream.connected() {
                    Ok(true) => {
                        conn.connecting = None;
                        conn.stats.connections.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => return Ok(()),
                    Err(err) => return Err(Failure::io("connect", &err)),
                }
            }
            if writable {
                write_out(conn)?;
            }
            if readable {
                read_in(conn, hup)?;
                deliver_replies(conn, deliver)?;
            }
            Ok(())
        })();
        match result {
            Err(failure) => self.fail(key, failure, deliver),
            Ok(()) if conn.closing && conn.in_flight.is_empty() => self.close(key),
            Ok(()) => {}
        }
    }

    /// When connection `conn` times out ([`Deadline::of`]): the oldest request's time with the
    /// server counts from when it was sent or from the reply before it, whichever is later,
    /// so a request queued behind others' long replies (another client's 10 MB multi-gets) is
    /// not blamed on the server for the time those took to stream.
    fn deadline(&self, conn: &Conn<D>) -> Option<Deadline> {
        let oldest = conn
            .in_flight
            .iter()
            .find(|w| w.to.waits())
            .map(|w| w.sent.max(conn.replied));
        Deadline::of(conn.connecting, oldest, self.timeouts)
    }

    /// The earliest moment a connection times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns
            .iter()
            .filter_map(|(_, conn)| self.deadline(conn).map(|d| d.at()))
            .min()
    }

    /// Fails the connections whose connect or oldest request timed out.
    pub fn sweep(
        &mut self,
        now: Instant,
        deliver: &mut impl FnMut(Deliver<D>, Result<&[u8], &Failure>),
    ) {
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| {
                self.deadline(conn)
                    .and_then(|d| d.expired(now, self.timeouts))
                    .is_some()
            })
            .map(|(key, _)| key)
            .collect();
        for key in late {
            // What happened while the proxy's loop was busy elsewhere is not the server's
            // lateness: a connect that completed (its requests are written now), replies that
            // came. Look first, and time the connection out only if it is still late.
            let conn = &mut self.conns[key];
            let looked = match conn.connecting {
                Some(_) => match conn.stream.connected() {
                    Ok(true) => {
                        conn.connecting = None;
                        conn.stats.connections.fetch_add(1, Ordering::Relaxed);
                        write_out(conn)
                    }
                    Ok(false) => Ok(()),
                    Err(err) => Err(Failure::io("connect", &err)),
                },
                None => read_in(conn, false).and_then(|()| deliver_replies(conn, deliver)),
            };
            if let Err(failure) = looked {
                self.fail(key, failure, deliver);
                continue;
            }
            let conn = &self.conns[key];
            if let Some(failure) = self
                .deadline(conn)
                .and_then(|d| d.expired(Instant::now(), self.timeouts))
            {
                self.abandon(key, failure, deliver);
            }
        }
    }

    /// Fails the requests connection `key` carries after a timeout, keeping the connection
    /// (see the module's doc) unless it is out of step (a request written in part) or still
    /// connecting: their replies are dropped as they come, and later requests queue behind.
    fn abandon(
        &mut self,
        key: usize,
        failure: Failure,
        deliver: &mut impl FnMut(Deliver<D>, Result<&[u8], &Failure>),
    ) {
        let conn = &mut self.conns[key];
        let out_of_step = conn.written > 0 && conn.written < conn.out.len();
        if conn.connecting.is_some() || out_of_step {
            return self.fail(key, failure, deliver);
        }
        conn.replied = Instant::now();
        answer_failed(conn, failure, deliver);
    }

    /// Ends connection `key`, failing every request it carried.
    fn fail(
        &mut self,
        key: usize,
        failure: Failure,
        deliver: &mut impl FnMut(Deliver<D>, Result<&[u8], &Failure>),
    ) {
        let Some(mut conn) = self.remove(key) else {
            return;
        };
        let in_clear = matches!(conn.stream, Stream::Tcp(_) | Stream::Unix(_));
        if !conn.answered && in_clear && matches!(failure.errno, libc::ECONNRESET | libc::EPIPE) {
            self.diagnose(&conn.route.1);
        }
        answer_failed(&mut conn, failure, deliver);
    }

    /// A server that closed a connection in clear before answering anything may not speak the
    /// text protocol in clear (memcached -Z, -B binary, -S): asked on a thread of its own (the
    /// probes take up to 150 ms), at most once a minute per server, and logged. The requests
    /// have failed already; the log says why.
    fn diagnose(&mut self, address: &Address) {
        let now = Instant::now();
        if self
            .diagnosed
            .get(address)
            .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(60))
        {
            return;
        }
        self.diagnosed.insert(address.clone(), now);
        let (address, timeouts) = (address.clone(), self.timeouts);
        let _ = std::thread::Builder::new()
            .name("mcproxy-diagnose".into())
            .spawn(move || {
                if let Some(why) = libmcshm::conn::not_text_protocol(&address, timeouts) {
                    crate::log(format_args!("{address}: {why}"));
                }
            });
    }

    /// Ends connection `key`, which carries nothing.
    fn close(&mut self, key: usize) {
        self.remove(key);
    }

    fn remove(&mut self, key: usize) -> Option<Conn<D>> {
        let mut conn = self.conns.try_remove(key)?;
        let _ = self.registry.deregister(&mut conn.stream);
        if conn.connecting.is_none() {
            conn.stats.connections.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(route) = self.routes.get_mut(&conn.route) {
            for slot in route.iter_mut().filter(|s| **s == Some(key)) {
                *slot = None;
            }
        }
        Some(conn)
    }

    /// Whether a request waits for a server.
    pub fn busy(&self) -> bool {
        self.conns
            .iter()
            .any(|(_, c)| c.in_flight.iter().any(|w| w.to.waits()))
    }
}

/// Answers every request `conn` carries with `failure`, counted against the server for the
/// first only (a connection that fails is one failure of its server); their replies, if any
/// come, are dropped.
fn answer_failed<D>(
    conn: &mut Conn<D>,
    failure: Failure,
    deliver: &mut impl FnMut(Deliver<D>, Result<&[u8], &Failure>),
) {
    let now = Instant::now();
    let behind = failure.behind();
    let mut counted = Some(failure);
    for waiter in conn.in_flight.iter_mut().filter(|w| w.to.waits()) {
        conn.stats.record(now - waiter.sent, false);
        let to = std::mem::replace(&mut waiter.to, Deliver::Dropped);
        match counted.take() {
            Some(first) => deliver(to, Err(&first)),
            None => deliver(to, Err(&behind)),
        }
    }
}

/// A connection to `address`, started (non-blocking).
fn connect(address: &Address) -> Result<Stream, Failure> {
    let stream = match address {
        Address::Unix { path } => mio::net::UnixStream::connect(path).map(Stream::Unix),
        // A non-blocking connect tries one address: the resolver's first.
        other => other.socket_addrs().and_then(|all| {
            mio::net::TcpStream::connect(all[0]).map(|s| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            })
        }),
    };
    stream.map_err(|err| Failure::io("connect", &err))
}

/// Writes what the connection has queued, as far as the socket takes it.
fn write_out<D>(conn: &mut Conn<D>) -> Result<(), Failure> {
    if conn.connecting.is_some() {
        return Ok(());
    }
    conn.stream
        .flush_pending()
        .map_err(|err| Failure::io("write", &err))?;
    while conn.written < conn.out.len() {
        match conn.stream.write_requests(&conn.out, conn.written) {
            Ok(0) => {
                return Err(Failure::new(
                    "write: the server closed the connection",
                    libc::ECONNRESET,
                ));
            }
            Ok(n) => conn.written += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Failure::io("write", &err)),
        }
    }
    conn.out.clear();
    conn.written = 0;
    if conn.out.capacity() > 4 * READ_CHUNK {
        conn.out = Encoded::new();
    }
    // Written whole: the server has them now (not since they were queued, however long the
    // proxy's own loop took to get here).
    let now = Instant::now();
    let n = conn.in_flight.len();
    for waiter in conn.in_flight.range_mut(n - conn.unsent.min(n)..) {
        waiter.sent = now;
    }
    conn.unsent = 0;
    Ok(())
}

/// Reads what the server sent, until the socket has no more (a short read says so, unless
/// the event said the server closed: then to the end).
fn read_in<D>(conn: &mut Conn<D>, hup: bool) -> Result<(), Failure> {
    loop {
        match conn.inbox.read_from(&mut conn.stream, READ_CHUNK) {
            Ok((0, _)) => {
                return Err(Failure::new(
                    "the server closed the connection",
                    libc::ECONNRESET,
                ));
            }
            Ok((_, false)) if !hup => return Ok(()),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Failure::io("read", &err)),
        }
    }
}

/// Hands every complete reply in the buffer to its waiter.
fn deliver_replies<D>(
    conn: &mut Conn<D>,
    deliver: &mut impl FnMut(Deliver<D>, Result<&[u8], &Failure>),
) -> Result<(), Failure> {
    let now = Instant::now();
    loop {
        let data = conn.inbox.data();
        if data.is_empty() {
            conn.inbox.shrink_when_empty(4 * READ_CHUNK);
            return Ok(());
        }
        let Some(front) = conn.in_flight.front() else {
            return Err(Failure::new(
                "the server sent a reply nobody asked for",
                libc::EPROTO,
            ));
        };
        let len = match frame_len(front.frame, data) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(()),
            Err(malformed) => return Err(Failure::new(malformed.0, libc::EPROTO)),
        };
        let waiter = conn.in_flight.pop_front().expect("checked above");
        conn.answered = true;
        conn.replied = now;
        let reply = &data[..len];
        match waiter.to {
            Deliver::Dropped => {}
            Deliver::Auth => {
                if let Some(credentials) = &conn.credentials {
                    credentials
                        .check_answer(reply)
                        .map_err(|refused| Failure::new(refused, libc::EACCES))?;
                }
            }
            to => {
                conn.stats
                    .record(now.saturating_duration_since(waiter.sent), true);
                deliver(to, Ok(reply));
            }
        }
        conn.inbox.consume(len);
    }
}

/// When a server connection times out, if it waits for anything: the connect, while requests
/// wait for it; else the reply of its oldest request. Pure: the sweep and the worker's poll
/// timeout both ask it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deadline {
    Connect(Instant),
    Reply(Instant),
}

impl Deadline {
    /// The deadline of a connection still connecting until `connecting` (if it is), whose
    /// oldest request in flight has waited for the server since `oldest_sent` (if any).
    fn of(
        connecting: Option<Instant>,
        oldest_sent: Option<Instant>,
        timeouts: Timeouts,
    ) -> Option<Deadline> {
        match connecting {
            // A connect nothing waits for is not timed: it is used or pruned.
            Some(deadline) => oldest_sent.map(|_| Deadline::Connect(deadline)),
            None => oldest_sent.map(|sent| Deadline::Reply(sent + timeouts.io)),
        }
    }

    fn at(self) -> Instant {
        match self {
            Deadline::Connect(at) | Deadline::Reply(at) => at,
        }
    }

    /// The failure of a connection whose deadline passed at `now`; `None` before it.
    fn expired(self, now: Instant, timeouts: Timeouts) -> Option<Failure> {
        if now < self.at() {
            return None;
        }
        let why = match self {
            Deadline::Connect(_) => format!("connect: timed out after {:?}", timeouts.connect),
            Deadline::Reply(_) => format!("no reply within {:?}", timeouts.io),
        };
        Some(Failure::new(why, libc::ETIMEDOUT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        connect: Duration::from_millis(100),
        io: Duration::from_millis(300),
    };

    #[test]
    fn a_connection_waits_for_its_connect_then_for_its_oldest_reply() {
        let t0 = Instant::now();
        let connect_by = t0 + TIMEOUTS.connect;
        assert_eq!(
            Deadline::of(Some(connect_by), None, TIMEOUTS),
            None,
            "nothing waits"
        );
        assert_eq!(
            Deadline::of(Some(connect_by), Some(t0), TIMEOUTS),
            Some(Deadline::Connect(connect_by))
        );
        let sent = t0 + Duration::from_millis(50);
        assert_eq!(
            Deadline::of(None, Some(sent), TIMEOUTS),
            Some(Deadline::Reply(sent + TIMEOUTS.io))
        );
        assert_eq!(
            Deadline::of(None, None, TIMEOUTS),
            None,
            "idle: never times out"
        );
    }

    #[test]
    fn a_deadline_fails_the_connection_once_passed_naming_what_timed_out() {
        let t0 = Instant::now();
        let connect = Deadline::Connect(t0);
        assert!(
            connect
                .expired(t0 - Duration::from_millis(1), TIMEOUTS)
                .is_none()
        );
        let failure = connect.expired(t0, TIMEOUTS).expect("at the deadline");
        assert_eq!(failure.errno, libc::ETIMEDOUT);
        assert_eq!(failure.error, "connect: timed out after 100ms");
        let reply = Deadline::Reply(t0).expired(t0 + Duration::from_secs(1), TIMEOUTS);
        assert_eq!(reply.unwrap().error, "no reply within 300ms");
    }
}
