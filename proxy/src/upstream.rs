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
//!
//! **Fences** (see [`libmcshm::fence`]): in a domain that fences, every connection that
//! carries requests routed with a fence in a loop iteration ends that iteration's write with one
//! read of the domain's fence (a plain `get`, never prefixed): one item per connection per
//! iteration, however many requests it carries, and no extra round trip. The replies to the
//! requests before it are held until the fence's reply is in (it follows them in the same
//! stream), then each is judged by the fleet revision *its* request was routed on: current, it
//! is delivered as it came; behind (or no fence at all), its waiter gets a [`Failure`] marked
//! [`Fenced`], which is no failure of the server. Requests routed without a fence (a domain
//! that does not fence: the default) are framed and delivered exactly as before, and their
//! connections never carry a fence read.

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
use crate::failure::{Failure, Fenced};
use crate::jobs::ReplyCell;
use crate::stats::ServerStats;
use crate::stream::Stream;
use libmcshm::fence::{parse_value, verdict};
use libmcshm::proto::frame::{Frame, frame_len, items};
use libmcshm::proto::{Encoded, Request};

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
    /// The connection's read of the domain's fence, which judges the replies before it (never
    /// handed to a deliverer).
    Fence,
}

impl<D> Deliver<D> {
    fn waits(&self) -> bool {
        !matches!(self, Deliver::Dropped | Deliver::Auth | Deliver::Fence)
    }
}

struct Waiter<D> {
    frame: Frame,
    sent: Instant,
    /// The fleet revision the request was routed on, when its domain fences: its reply is
    /// held until the fence read after it is answered, and judged by it.
    routed: Option<u64>,
    /// The length of its reply, once framed ahead of a fence read (see [`take_replies`]).
    framed: usize,
    to: Deliver<D>,
}

/// What a waiter gets: the server's reply, or the verdict of the fence read after it.
type Judged<'a> = Result<&'a [u8], Fenced>;

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
    /// Requests routed with a fence were queued since the last fence read: one goes out at
    /// the end of the iteration ([`Net::flush`]).
    unfenced: bool,
    /// Held replies already framed (see [`take_replies`]).
    ahead: Ahead,
}

/// How far the replies held for a fence read are framed already: so many waiters, so many
/// bytes from the front of the read buffer (a large held reply arriving in many reads is not
/// framed again from its start each time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ahead {
    waiters: usize,
    bytes: usize,
}

/// A domain's part in the connections.
struct DomainNet {
    access: AccessSource,
    /// The domain's fence key (`mcshm.fence.<domain>`, never prefixed).
    fence_key: Vec<u8>,
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

    /// A domain whose requests go through this net (`fence_key`: its fence, read after the
    /// requests routed with one): its number.
    pub fn add_domain(
        &mut self,
        access: AccessSource,
        fence_key: Vec<u8>,
        stats: Arc<crate::stats::ProxyStats>,
    ) -> usize {
        self.domains.push(DomainNet {
            access,
            fence_key,
            stats,
            version: u64::MAX,
        });
        self.domains.len() - 1
    }

    /// Queues a request for server `index` of `snapshot` on `lane`: `encode` appends it (complete,
    /// CRLF-terminated) to the connection's output, written at the end of the loop iteration.
    /// When the domain fences, its reply is judged by the fence read after it.
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
        let routed = fence_of(snapshot);
        self.queue(domain, snapshot, index, lane, frame, to, encode, routed);
    }

    /// [`Net::send`] without the fence's judgement: what cannot leave a superseded copy (the
    /// undo of a fenced write, `flush_all`).
    #[allow(clippy::too_many_arguments)]
    pub fn send_plain(
        &mut self,
        domain: usize,
        snapshot: &Snapshot,
        index: usize,
        lane: usize,
        frame: Frame,
        to: Deliver<D>,
        encode: impl FnOnce(&mut Encoded, &Deliver<D>),
    ) {
        self.queue(domain, snapshot, index, lane, frame, to, encode, None);
    }

    #[allow(clippy::too_many_arguments)]
    fn queue(
        &mut self,
        domain: usize,
        snapshot: &Snapshot,
        index: usize,
        lane: usize,
        frame: Frame,
        to: Deliver<D>,
        encode: impl FnOnce(&mut Encoded, &Deliver<D>),
        routed: Option<u64>,
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
            routed,
            framed: 0,
            to,
        });
        conn.unsent += 1;
        conn.unfenced |= routed.is_some();
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
            unfenced: false,
            ahead: Ahead::default(),
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
                routed: None,
                framed: 0,
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

    /// Writes what this iteration queued: one write per connection, ended by a read of the
    /// domain's fence when it carries requests routed with one.
    pub fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.queued = false;
            if std::mem::take(&mut conn.unfenced) {
                push_fence_read(conn, &self.domains[conn.route.0].fence_key);
            }
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

/// The fleet revision a request routed on `snapshot` is judged against, when its domain
/// fences (`None`: it does not, and nothing about the request changes).
pub fn fence_of(snapshot: &Snapshot) -> Option<u64> {
    fenced_revision(snapshot.policy.fence, snapshot.fleet_revision)
}

/// [`fence_of`] a table with fencing `fence` mirroring fleet revision `fleet_revision` (0: a
/// host-local table, which no fence concerns).
fn fenced_revision(fence: libmcshm::table::Fence, fleet_revision: u64) -> Option<u64> {
    (fence.is_on() && fleet_revision != 0).then_some(fleet_revision)
}

/// Appends the read of the domain's fence (`key`, never prefixed) to what `conn` writes next.
fn push_fence_read<D>(conn: &mut Conn<D>, key: &[u8]) {
    let keys = [key];
    let request = Request::Get {
        keys: &keys,
        cas: false,
        touch: None,
    };
    conn.out.push(&request, b"");
    conn.in_flight.push_back(Waiter {
        frame: Frame::Values,
        sent: Instant::now(),
        routed: None,
        framed: 0,
        to: Deliver::Fence,
    });
    conn.unsent += 1;
}

/// Hands every complete reply in the buffer to its waiter (a reply held for a fence read,
/// once the fence's reply is in: see [`take_replies`]).
fn deliver_replies<D>(
    conn: &mut Conn<D>,
    deliver: &mut impl FnMut(Deliver<D>, Result<&[u8], &Failure>),
) -> Result<(), Failure> {
    let now = Instant::now();
    let Conn {
        inbox,
        in_flight,
        ahead,
        stats,
        credentials,
        answered,
        replied,
        ..
    } = conn;
    let data = inbox.data();
    if data.is_empty() {
        inbox.shrink_when_empty(4 * READ_CHUNK);
        return Ok(());
    }
    let taken = take_replies(in_flight, ahead, data, |waiter, judged| {
        *answered = true;
        *replied = now;
        match (waiter.to, judged) {
            (Deliver::Dropped | Deliver::Fence, _) => {}
            (Deliver::Auth, reply) => {
                if let (Some(credentials), Ok(reply)) = (&*credentials, reply) {
                    credentials
                        .check_answer(reply)
                        .map_err(|refused| Failure::new(refused, libc::EACCES))?;
                }
            }
            (to, Ok(reply)) => {
                stats.record(now.saturating_duration_since(waiter.sent), true);
                deliver(to, Ok(reply));
            }
            (to, Err(fenced)) => {
                // The server answered: its time counts, as an answer.
                stats.record(now.saturating_duration_since(waiter.sent), true);
                deliver(to, Err(&Failure::fenced(fenced)));
            }
        }
        Ok(())
    });
    inbox.consume(taken?);
    if inbox.data().is_empty() {
        inbox.shrink_when_empty(4 * READ_CHUNK);
    }
    Ok(())
}

/// Frames the complete replies at the front of `data`, pops their waiters off `in_flight` in
/// order and gives each to `each` with its reply, or with the fence's verdict; the bytes used.
///
/// A waiter routed with a fence is held until the fence read after it (a [`Deliver::Fence`]
/// waiter) has its reply too: then it and every waiter before that fence read are handed over,
/// each judged by the revision its own request was routed on, and the fence read's reply is
/// used up. A waiter routed without one (and whatever nobody waits for any more) is handed
/// over as soon as its reply is complete, exactly as without fences. Pure: no I/O.
fn take_replies<D>(
    in_flight: &mut VecDeque<Waiter<D>>,
    ahead: &mut Ahead,
    data: &[u8],
    mut each: impl FnMut(Waiter<D>, Judged<'_>) -> Result<(), Failure>,
) -> Result<usize, Failure> {
    let framed = |frame: Frame, buf: &[u8]| {
        frame_len(frame, buf).map_err(|malformed| Failure::new(malformed.0, libc::EPROTO))
    };
    let mut used = 0;
    loop {
        let rest = &data[used..];
        if rest.is_empty() {
            return Ok(used);
        }
        let Some(front) = in_flight.front() else {
            return Err(Failure::new(
                "the server sent a reply nobody asked for",
                libc::EPROTO,
            ));
        };
        if front.routed.is_none() || !front.to.waits() {
            let len = match framed(front.frame, rest)? {
                Some(len) => len,
                None => return Ok(used),
            };
            *ahead = Ahead::default();
            let waiter = in_flight.pop_front().expect("checked above");
            each(waiter, Ok(&rest[..len]))?;
            used += len;
            continue;
        }
        // Held: frame ahead to the fence read that judges it.
        let fence_at = loop {
            let Some(waiter) = in_flight.get_mut(ahead.waiters) else {
                // No fence read queued after it yet: it goes out with this iteration's write.
                return Ok(used);
            };
            let Some(len) = framed(waiter.frame, &rest[ahead.bytes..])? else {
                return Ok(used);
            };
            if matches!(waiter.to, Deliver::Fence) {
                break (ahead.waiters, ahead.bytes, len);
            }
            waiter.framed = len;
            ahead.waiters += 1;
            ahead.bytes += len;
        };
        *ahead = Ahead::default();
        let (count, at, len) = fence_at;
        let fence = items(&rest[at..at + len])
            .first()
            .and_then(|item| parse_value(item.data));
        let mut offset = 0;
        for _ in 0..count {
            let waiter = in_flight.pop_front().expect("framed above");
            let reply = &rest[offset..offset + waiter.framed];
            offset += waiter.framed;
            let judged = match waiter.routed.map(|routed| (routed, verdict(fence, routed))) {
                Some((routed, v)) if !v.is_current() => Err(Fenced {
                    fence: v.wants(),
                    routed,
                }),
                _ => Ok(reply),
            };
            each(waiter, judged)?;
        }
        in_flight.pop_front(); // the fence read
        used += at + len;
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

    fn waiter(frame: Frame, routed: Option<u64>, to: Deliver<u32>) -> Waiter<u32> {
        Waiter {
            frame,
            sent: Instant::now(),
            routed,
            framed: 0,
            to,
        }
    }

    /// What each waiter got: its number and its reply as text, or the fence's verdict.
    type Got = Vec<(u32, Result<String, Fenced>)>;

    fn take(
        in_flight: &mut VecDeque<Waiter<u32>>,
        ahead: &mut Ahead,
        data: &[u8],
        got: &mut Got,
    ) -> usize {
        take_replies(in_flight, ahead, data, |waiter, judged| {
            if let Deliver::Direct(n) = waiter.to {
                let text = |r: &[u8]| String::from_utf8_lossy(r).into_owned();
                got.push((n, judged.map(text)));
            }
            Ok(())
        })
        .expect("well-formed")
    }

    const FENCE_6: &[u8] = b"VALUE mcshm.fence.app 0 1\r\n6\r\nEND\r\n";

    #[test]
    fn a_domain_that_does_not_fence_gets_each_reply_as_soon_as_it_is_complete() {
        let mut in_flight: VecDeque<_> = [
            waiter(Frame::Values, None, Deliver::Direct(1)),
            waiter(Frame::Line, None, Deliver::Direct(2)),
        ]
        .into();
        let (mut ahead, mut got) = (Ahead::default(), Got::new());
        let data = b"VALUE k 0 1\r\nv\r\nEND\r\nSTO";
        assert_eq!(take(&mut in_flight, &mut ahead, data, &mut got), 21);
        assert_eq!(got, [(1, Ok("VALUE k 0 1\r\nv\r\nEND\r\n".into()))]);
        assert_eq!(in_flight.len(), 1);
        got.clear();
        assert_eq!(take(&mut in_flight, &mut ahead, b"STORED\r\n", &mut got), 8);
        assert_eq!(got, [(2, Ok("STORED\r\n".into()))]);
        assert!(in_flight.is_empty());
    }

    #[test]
    fn a_batch_is_held_until_its_fence_and_each_waiter_judged_by_its_own_revision() {
        // Routed on revisions 5 and 7 in one iteration; the server is fenced at 6.
        let mut in_flight: VecDeque<_> = [
            waiter(Frame::Values, Some(5), Deliver::Direct(1)),
            waiter(Frame::Line, Some(7), Deliver::Direct(2)),
            waiter(Frame::Values, None, Deliver::Fence),
            waiter(Frame::Line, Some(7), Deliver::Direct(3)),
        ]
        .into();
        let (mut ahead, mut got) = (Ahead::default(), Got::new());
        let replies = b"VALUE k 0 3\r\nold\r\nEND\r\nSTORED\r\n";
        // Both replies are in, the fence's is not: nothing is handed over.
        assert_eq!(take(&mut in_flight, &mut ahead, replies, &mut got), 0);
        assert!(got.is_empty());
        assert_eq!(in_flight.len(), 4);
        assert_eq!(
            ahead,
            Ahead {
                waiters: 2,
                bytes: replies.len()
            },
            "framed once, not again"
        );
        // The fence's reply, and the start of the next batch's.
        let data = [&replies[..], FENCE_6, b"STO"].concat();
        let used = take(&mut in_flight, &mut ahead, &data, &mut got);
        assert_eq!(used, replies.len() + FENCE_6.len());
        assert_eq!(
            got,
            [
                (
                    1,
                    Err(Fenced {
                        fence: 6,
                        routed: 5
                    })
                ),
                (2, Ok("STORED\r\n".into())),
            ]
        );
        // The next batch's waiter has no fence read after it yet: held, however complete.
        assert_eq!(in_flight.len(), 1);
        got.clear();
        assert_eq!(take(&mut in_flight, &mut ahead, b"STORED\r\n", &mut got), 0);
        assert!(got.is_empty());
        // Its fence read goes out: then it is judged.
        in_flight.push_back(waiter(Frame::Values, None, Deliver::Fence));
        let data = [&b"STORED\r\n"[..], FENCE_6].concat();
        assert_eq!(
            take(&mut in_flight, &mut ahead, &data, &mut got),
            data.len()
        );
        assert_eq!(got, [(3, Ok("STORED\r\n".into()))]);
        assert!(in_flight.is_empty() && ahead == Ahead::default());
    }

    #[test]
    fn a_missing_fence_or_an_error_in_its_place_judges_every_waiter_behind() {
        for fence_reply in [&b"END\r\n"[..], b"SERVER_ERROR out of memory\r\n"] {
            let mut in_flight: VecDeque<_> = [
                waiter(Frame::Meta, Some(9), Deliver::Direct(1)),
                waiter(Frame::Values, None, Deliver::Fence),
            ]
            .into();
            let (mut ahead, mut got) = (Ahead::default(), Got::new());
            let data = [&b"EN\r\n"[..], fence_reply].concat();
            assert_eq!(
                take(&mut in_flight, &mut ahead, &data, &mut got),
                data.len()
            );
            let missing = Fenced {
                fence: u64::MAX,
                routed: 9,
            };
            assert_eq!(got, [(1, Err(missing))]);
        }
    }

    #[test]
    fn what_nobody_waits_for_is_not_held_and_a_fence_read_alone_is_used_up() {
        let mut in_flight: VecDeque<_> = [
            waiter(Frame::Line, Some(5), Deliver::Dropped),
            waiter(Frame::Values, None, Deliver::Fence),
            waiter(Frame::Line, None, Deliver::Direct(2)),
        ]
        .into();
        let (mut ahead, mut got) = (Ahead::default(), Got::new());
        let data = [&b"STORED\r\n"[..], b"END\r\n", b"DELETED\r\n"].concat();
        assert_eq!(
            take(&mut in_flight, &mut ahead, &data, &mut got),
            data.len()
        );
        assert_eq!(got, [(2, Ok("DELETED\r\n".into()))]);
        assert!(in_flight.is_empty());
    }

    #[test]
    fn a_domain_fences_only_when_its_policy_says_so_and_its_table_mirrors_the_fleet() {
        use libmcshm::table::Fence;
        assert_eq!(fenced_revision(Fence::On, 12), Some(12));
        assert_eq!(fenced_revision(Fence::Off, 12), None);
        assert_eq!(
            fenced_revision(Fence::Auto, 12),
            None,
            "auto is off in this release"
        );
        assert_eq!(fenced_revision(Fence::On, 0), None, "a table of one host");
    }

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
