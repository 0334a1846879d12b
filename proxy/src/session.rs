//! One client connection, owned by a worker's event loop: commands are parsed as they arrive,
//! each is started at once (so requests pipelined on one connection run concurrently on the
//! servers), and the replies are written strictly in the order the commands came, each into
//! its reply slot. A reply that arrives for the oldest slot is copied straight from the server
//! connection's buffer into the client's output; one that arrives early waits in its slot.
//!
//! Memory per connection is bounded: one command line and one value of input, and at most
//! [`Settings::pipeline`] commands between reading and answering (beyond that the session
//! stops reading, and TCP pushes back on the client).

use std::io::{self, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mcshm_route::{CounterAsk, CounterNext, CounterReply, IncrOrCreate};

use crate::binary;
use crate::buffer::Inbox;
use crate::command::{Command, Limits, Parsed, VERSION_REPLY, parse};
use crate::jobs::{Jobs, Work};
use crate::reply_order::ReplyOrder;
use crate::service::{Direct, Outbox, Service, SlotRef, Started};
use crate::stream::Stream;
use crate::upstream::{Deliver, Net};

/// What every session of the proxy obeys.
#[derive(Clone, Debug)]
pub struct Settings {
    /// With `--client-auth`: the credentials a client must present before any command (SASL
    /// PLAIN in binary, memcached's ASCII authentication in text).
    pub client_auth: Option<Arc<crate::client_auth::ClientAuth>>,
    pub limits: Limits,
    /// A client that sent part of a command and nothing more for this long is disconnected.
    pub client_timeout: Duration,
    /// A client with nothing pending and silent for this long is disconnected (None: never).
    pub idle_timeout: Option<Duration>,
    /// Commands read but not yet answered, per connection.
    pub pipeline: usize,
    /// Reply bytes a client may be owed (held, unwritten, and estimated for the replies to
    /// come: see `reply_order`) before the proxy stops reading its commands.
    pub reply_limit: usize,
}

/// Bytes read from a client at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Room an idle connection keeps for its next command: most commands are a line of a few dozen
/// bytes, so 2 000 idle clients cost 8 MB, not the 64 MB of full chunks.
const IDLE_ROOM: usize = 4 * 1024;
/// A new client's replies are each counted as this share of `--client-reply-limit` until
/// replies are seen: its first burst of commands is cut to this many (then the estimate
/// follows the sizes seen).
const FIRST_BURST: usize = 2;
/// Quiet gets routed as one multi-get at most (a longer run is several).
const QUIET_GET_RUN: usize = 1000;

use crate::log::{Kind, Said};
pub use crate::reply_order::{Reply, Then};

/// What a session needs of its worker to start commands.
pub struct Ctx<'a> {
    pub net: &'a mut Net<Direct>,
    pub jobs: &'a mut Jobs<SlotRef>,
    pub outbox: &'a Outbox,
    pub settings: &'a Settings,
}

/// How a command is answered.
enum Dispatch {
    Ready(Vec<u8>),
    Route(Command, Then),
    Job(Work),
}

pub struct Session {
    pub stream: Stream,
    pub generation: u64,
    key: usize,
    service: Rc<Service>,
    lane: usize,
    inbox: Inbox,
    out: Vec<u8>,
    written: usize,
    /// The replies of the commands in flight, in the client's order.
    replies: ReplyOrder,
    /// The protocol, from the connection's first byte: 0x80 is the binary protocol's magic.
    binary: Option<bool>,
    authenticated: bool,
    /// Bytes of a refused value still to discard as they arrive.
    swallow: usize,
    /// When the command in the buffer began to arrive: --client-timeout bounds the whole
    /// command, however its bytes trickle in.
    partial_since: Option<Instant>,
    last_active: Instant,
    /// Since when the client has taken none of the output the proxy could not write at once
    /// (`None`: it takes what it is sent). A client that takes nothing for --client-timeout is
    /// closed and its replies dropped.
    stuck_since: Option<Instant>,
    /// Still reading commands (not after end of stream, quit, a fatal error, or shutdown).
    pub reading: bool,
    /// Stopped reading for the pipeline or output limit: read again when under it.
    pub stalled: bool,
    /// Queued for a flush this iteration.
    pub queued: bool,
    /// Broken: close without flushing.
    pub broken: bool,
    /// What the connection has had logged (one line per kind).
    said: Said,
    /// The client's address (TCP; `None` on a unix socket): who holds the connections, when
    /// one is refused.
    pub peer: Option<std::net::SocketAddr>,
    /// The user at the other end, with --max-connections-per-uid.
    pub uid: Option<u32>,
}

impl Session {
    pub fn new(
        stream: Stream,
        key: usize,
        generation: u64,
        service: Rc<Service>,
        lane: usize,
        settings: &Settings,
    ) -> Session {
        Session {
            stream,
            generation,
            key,
            service,
            lane,
            inbox: Inbox::default(),
            out: Vec::new(),
            written: 0,
            replies: ReplyOrder::new(settings.reply_limit / FIRST_BURST),
            binary: None,
            authenticated: settings.client_auth.is_none(),
            swallow: 0,
            partial_since: None,
            last_active: Instant::now(),
            stuck_since: None,
            reading: true,
            stalled: false,
            queued: false,
            broken: false,
            said: Said::default(),
            peer: None,
            uid: None,
        }
    }

    pub fn service(&self) -> &Rc<Service> {
        &self.service
    }

    /// Whether the session is over: nothing more to read, answer or write.
    pub fn finished(&self) -> bool {
        self.broken || (!self.reading && self.replies.is_empty() && self.written == self.out.len())
    }

    /// Whether the pipeline or the reply limit holds reading back. A client owed nothing may
    /// always send one command, however large its reply.
    fn over_limits(&self, settings: &Settings) -> bool {
        self.replies.len() >= settings.pipeline.max(1)
            || self.replies.owed(self.out.len() - self.written) >= settings.reply_limit
    }

    /// Reads and starts what the client sent, until the socket has no more or a limit holds.
    /// (`hup`: the client closed its end, so a short read does not mean there is no more.)
    pub fn on_readable(&mut self, ctx: &mut Ctx<'_>, hup: bool) {
        self.stalled = false;
        self.parse_all(ctx);
        while self.reading && !self.broken {
            if self.over_limits(ctx.settings) {
                self.stalled = true;
                return;
            }
            let room = if self.inbox.is_empty() {
                IDLE_ROOM
            } else {
                READ_CHUNK
            };
            match self.inbox.read_from(&mut self.stream, room) {
                Ok((0, _)) => {
                    if !self.inbox.is_empty() || self.swallow > 0 {
                        // A command cut off by the end of the stream.
                        self.inbox.consume(usize::MAX);
                    }
                    self.reading = false;
                }
                Ok((_, filled)) => {
                    self.last_active = Instant::now();
                    self.parse_all(ctx);
                    if self.over_limits(ctx.settings) {
                        self.stalled = true;
                        return;
                    }
                    if !filled && !hup {
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.broken = true;
                }
            }
        }
    }

    /// Starts every complete command in the buffer (within the pipeline limit).
    fn parse_all(&mut self, ctx: &mut Ctx<'_>) {
        let mut consumed = false;
        while self.reading && !self.inbox.is_empty() && !self.over_limits(ctx.settings) {
            if self.swallow > 0 {
                let n = self.swallow.min(self.inbox.data().len());
                self.inbox.consume(n);
                self.swallow -= n;
                consumed = true;
                continue;
            }
            if self.binary.is_none() {
                self.binary = Some(self.inbox.data()[0] == binary::MAGIC_REQUEST);
            }
            let progressed = match self.binary {
                Some(true) => self.next_binary(ctx),
                _ => self.next_text(ctx),
            };
            if !progressed {
                break;
            }
            consumed = true;
        }
        if consumed {
            self.partial_since = None;
        }
        if (!self.inbox.is_empty() || self.swallow > 0) && self.partial_since.is_none() {
            self.partial_since = Some(Instant::now());
        }
        self.inbox.shrink_when_empty(READ_CHUNK);
    }

    /// One text command from the buffer; false when it is incomplete.
    fn next_text(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let stats = &self.service.stats;
        let (dispatch, used) = match parse(self.inbox.data(), ctx.settings.limits) {
            Parsed::Incomplete => return false,
            Parsed::Command(command, used) => {
                stats.commands.fetch_add(1, Ordering::Relaxed);
                let auth = ctx.settings.client_auth.as_deref();
                let dispatch = match (self.authenticated, auth) {
                    (false, Some(auth)) => match ascii_auth(auth, command) {
                        Some((reply, ok)) => {
                            self.authenticated = ok;
                            if reply == AUTH_FAILURE {
                                self.said.log(
                                    Kind::FailedLogin,
                                    format_args!("a client's authentication failed"),
                                );
                            }
                            Some(Dispatch::Ready(reply.to_vec()))
                        }
                        None => None,
                    },
                    _ => self.dispatch(command),
                };
                (dispatch, used)
            }
            Parsed::Reply(reply, used) => {
                stats.client_errors.fetch_add(1, Ordering::Relaxed);
                (Some(Dispatch::Ready(reply.to_vec())), used)
            }
            Parsed::Swallow { reply, used, skip } => {
                stats.client_errors.fetch_add(1, Ordering::Relaxed);
                self.swallow = skip;
                (Some(Dispatch::Ready(reply.to_vec())), used)
            }
            Parsed::Close(reply) => {
                stats.client_errors.fetch_add(1, Ordering::Relaxed);
                self.answer(Dispatch::Ready(reply.to_vec()), ctx);
                self.stop_reading();
                return true;
            }
        };
        self.inbox.consume(used);
        match dispatch {
            Some(dispatch) => self.answer(dispatch, ctx),
            None => self.stop_reading(),
        }
        true
    }

    /// One binary request (or a run of quiet gets) from the buffer; false when incomplete.
    fn next_binary(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let stats = self.service.stats.clone();
        let limits = ctx.settings.limits;
        match binary::parse(self.inbox.data(), limits) {
            binary::Parsed::Incomplete => false,
            binary::Parsed::Request(request, action, used)
                if self.authenticated && binary::is_quiet_get(&request, &action) =>
            {
                self.inbox.consume(used);
                stats.commands.fetch_add(1, Ordering::Relaxed);
                // A run of quiet gets (libmemcached's mget) is one multi-get.
                let (mut run, mut keys) = (vec![request], quiet_get_keys(action));
                while run.len() < QUIET_GET_RUN {
                    match binary::parse(self.inbox.data(), limits) {
                        binary::Parsed::Request(r, a, used) if binary::is_quiet_get(&r, &a) => {
                            self.inbox.consume(used);
                            stats.commands.fetch_add(1, Ordering::Relaxed);
                            keys.extend(quiet_get_keys(a));
                            run.push(r);
                        }
                        _ => break,
                    }
                }
                let command = Command::Get {
                    verb: crate::command::GetVerb::Gets,
                    exptime: None,
                    keys,
                };
                let then = Then::Map(Box::new(move |text| binary::answer_quiet_gets(&run, &text)));
                self.answer(Dispatch::Route(command, then), ctx);
                true
            }
            binary::Parsed::Request(request, action, used) => {
                self.inbox.consume(used);
                stats.commands.fetch_add(1, Ordering::Relaxed);
                match self.binary_dispatch(request, action, ctx.settings) {
                    Ok(dispatch) => self.answer(dispatch, ctx),
                    Err(last) => {
                        if let Some(reply) = last {
                            self.answer(Dispatch::Ready(reply), ctx);
                        }
                        self.stop_reading();
                    }
                }
                true
            }
            binary::Parsed::Swallow { reply, used, skip } => {
                self.inbox.consume(used);
                self.swallow = skip;
                stats.client_errors.fetch_add(1, Ordering::Relaxed);
                self.said.log(
                    Kind::ValueTooLarge,
                    format_args!(
                        "binary request of {} bytes refused: value too large",
                        used + skip
                    ),
                );
                self.answer(Dispatch::Ready(reply), ctx);
                true
            }
            binary::Parsed::Close(reply) => {
                stats.client_errors.fetch_add(1, Ordering::Relaxed);
                self.said.log(
                    Kind::MalformedBinary,
                    format_args!(
                        "malformed binary request (bad magic or lengths): connection closed"
                    ),
                );
                self.answer(Dispatch::Ready(reply), ctx);
                self.stop_reading();
                true
            }
        }
    }

    /// Stops reading (quit, a fatal error, a timeout, shutdown): the commands already started
    /// are answered, then the session ends.
    pub fn stop_reading(&mut self) {
        self.reading = false;
        self.inbox.consume(usize::MAX);
        self.swallow = 0;
    }

    /// A text command, answered here or routed. `None`: the client quit.
    fn dispatch(&self, command: Command) -> Option<Dispatch> {
        let ready = |bytes: &[u8]| Some(Dispatch::Ready(bytes.to_vec()));
        let service = &self.service;
        match command {
            Command::Quit => None,
            Command::Version => ready(VERSION_REPLY.as_bytes()),
            Command::Verbosity { noreply: true } => ready(b""),
            Command::Verbosity { noreply: false } => ready(b"OK\r\n"),
            Command::MetaNoop => ready(b"MN\r\n"),
            Command::Stats { group: None } => Some(Dispatch::Ready(service.stats.memcached_text())),
            Command::Stats { group: Some(group) } => Some(Dispatch::Ready(
                format!(
                    "CLIENT_ERROR mcproxy answers 'stats' with its own counters; for 'stats {}' ask a server directly\r\n",
                    group.chars().filter(|c| !c.is_control()).collect::<String>()
                )
                .into_bytes(),
            )),
            Command::ConfigGetCluster => Some(Dispatch::Ready(service.cluster_config())),
            other => Some(Dispatch::Route(other, Then::Plain)),
        }
    }

    /// A binary request (see [`crate::binary`]): its text command routed as any other, the
    /// text reply turned into the binary response. `Err`: the client quits (with the response
    /// to send first, unless quiet).
    fn binary_dispatch(
        &mut self,
        request: binary::Request,
        action: binary::Action,
        settings: &Settings,
    ) -> Result<Dispatch, Option<Vec<u8>>> {
        use binary::Action;
        match action {
            Action::Quit => Err((!request.quiet)
                .then(|| binary::response(request.opcode, 0, request.opaque, 0, &[], &[], &[]))),
            Action::Sasl {
                list,
                mechanism,
                data,
            } => {
                let auth = settings.client_auth.as_deref();
                let (reply, ok) = binary::sasl(&request, auth, list, &mechanism, &data);
                if !list && !ok {
                    self.said.log(
                        Kind::FailedLogin,
                        format_args!("a client's SASL authentication failed"),
                    );
                }
                self.authenticated |= ok;
                Ok(Dispatch::Ready(reply))
            }
            _ if !self.authenticated => Ok(Dispatch::Ready(binary::error(
                &request,
                binary::status::AUTH_ERROR,
                "Auth failure: authenticate first (SASL PLAIN)",
            ))),
            Action::Answer(bytes) => {
                let status = bytes
                    .get(6..8)
                    .map_or(0, |s| u16::from_be_bytes([s[0], s[1]]));
                match status {
                    binary::status::UNKNOWN => self.said.log(
                        Kind::UnknownOpcode,
                        format_args!(
                            "binary opcode 0x{:02x} is not supported: answered 'unknown command'",
                            request.opcode
                        ),
                    ),
                    binary::status::INVALID => self.said.log(
                        Kind::InvalidArguments,
                        format_args!(
                            "binary opcode 0x{:02x} with invalid arguments (key, extras or value): answered 'invalid arguments'",
                            request.opcode
                        ),
                    ),
                    _ => {}
                }
                Ok(Dispatch::Ready(bytes))
            }
            Action::Stats => Ok(Dispatch::Ready(binary::stats(
                &request,
                &self.service.stats.memcached_text(),
            ))),
            Action::Route(command) => match request.initial {
                None => Ok(Dispatch::Route(
                    command,
                    Then::Map(Box::new(move |text| binary::answer(&request, &text))),
                )),
                Some((initial, exptime)) => Ok(Dispatch::Job(increment_or_create(
                    self.service.clone(),
                    request,
                    command,
                    initial,
                    exptime,
                    self.lane,
                ))),
            },
        }
    }

    /// Gives a command its reply slot and starts it.
    fn answer(&mut self, dispatch: Dispatch, ctx: &mut Ctx<'_>) {
        let seq = self.replies.next_seq();
        let slot = SlotRef {
            client: self.key,
            generation: self.generation,
            seq,
        };
        let (started, then) = match dispatch {
            Dispatch::Ready(bytes) => (Started::Ready(bytes), Then::Plain),
            Dispatch::Job(work) => (Started::Job(work), Then::Plain),
            Dispatch::Route(command, then) => {
                (self.service.start(command, self.lane, ctx.net, slot), then)
            }
        };
        self.replies.open(then);
        match started {
            Started::Ready(bytes) => self.complete(seq, Reply::Owned(bytes)),
            Started::Direct => {}
            Started::Job(work) => {
                let done = ctx.jobs.start(work, slot);
                send_outbox(ctx.net, ctx.outbox);
                if let Some((_, output)) = done {
                    self.complete(seq, Reply::Owned(output));
                }
            }
        }
    }

    /// The reply of the command numbered `seq`: written out at once when it is the oldest
    /// waiting, else kept until those before it are answered.
    pub fn complete(&mut self, seq: u64, reply: Reply<'_>) {
        self.replies.complete(seq, reply, &mut self.out);
    }

    /// Whether there is output to write.
    pub fn has_output(&self) -> bool {
        self.written < self.out.len()
    }

    /// Writes the output, as far as the socket takes it; what it does not take starts (or,
    /// when some was taken, restarts) the clock of a client that does not read.
    pub fn flush(&mut self) {
        let before = self.written;
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => {
                    self.broken = true;
                    return;
                }
                Ok(n) => self.written += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if self.written > before || self.stuck_since.is_none() {
                        self.stuck_since = Some(Instant::now());
                    }
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.broken = true;
                    return;
                }
            }
        }
        self.out.clear();
        self.written = 0;
        self.stuck_since = None;
        if self.out.capacity() > 4 * READ_CHUNK {
            self.out = Vec::new();
        }
    }

    /// Whether output waits for a client that has not taken it (its timeout runs).
    pub fn stuck(&self) -> bool {
        self.stuck_since.is_some() && !self.broken
    }

    /// Whether the session may read again after being held back by a limit.
    pub fn may_resume(&self, settings: &Settings) -> bool {
        self.stalled && self.reading && !self.over_limits(settings)
    }

    /// The client timeouts: which one ends the session now, if any.
    pub fn timed_out(&self, now: Instant, settings: &Settings) -> Option<TimedOut> {
        if let Some(since) = self.stuck_since
            && now.saturating_duration_since(since) >= settings.client_timeout
        {
            return Some(TimedOut::NotReading);
        }
        if !self.reading {
            return None;
        }
        if let Some(since) = self.partial_since
            && now.saturating_duration_since(since) >= settings.client_timeout
        {
            return Some(TimedOut::MidCommand);
        }
        let idle = self.replies.is_empty() && self.inbox.is_empty() && self.swallow == 0;
        match settings.idle_timeout {
            Some(limit) if idle && now.saturating_duration_since(self.last_active) >= limit => {
                Some(TimedOut::Idle)
            }
            _ => None,
        }
    }

    /// Since when the client has been idle (nothing pending, read or written), if it is: a
    /// connection the proxy may close to make room for a new client when it is full.
    pub fn idle_since(&self) -> Option<Instant> {
        let idle = self.reading
            && !self.broken
            && self.replies.is_empty()
            && self.inbox.is_empty()
            && self.swallow == 0
            && !self.has_output();
        idle.then_some(self.last_active)
    }

    /// Whether a command is arriving (its --client-timeout runs).
    pub fn partial(&self) -> bool {
        self.reading && self.partial_since.is_some()
    }
}

/// Why a client's session ends on a timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimedOut {
    /// It sent part of a command and nothing more for --client-timeout.
    MidCommand,
    /// Silent with nothing pending for --idle-timeout.
    Idle,
    /// It took none of its replies for --client-timeout: closed, its replies dropped.
    NotReading,
}

/// Sends the requests the jobs queued, in the order they were queued.
pub fn send_outbox(net: &mut Net<Direct>, outbox: &Outbox) {
    let queued = std::mem::take(&mut *outbox.borrow_mut());
    for o in queued {
        let bytes = o.bytes;
        let (snapshot, to) = (&o.snapshot, Deliver::Cell(o.cell));
        let encode = |out: &mut libmcshm::proto::Encoded, _: &Deliver<Direct>| out.append(&bytes);
        match o.plain {
            false => net.send(o.domain, snapshot, o.server, o.lane, o.frame, to, encode),
            true => net.send_plain(o.domain, snapshot, o.server, o.lane, o.frame, to, encode),
        }
    }
}

/// The key of a quiet get's action.
fn quiet_get_keys(action: binary::Action) -> Vec<Vec<u8>> {
    match action {
        binary::Action::Route(Command::Get { keys, .. }) => keys,
        _ => Vec::new(),
    }
}

/// A binary increment with an initial value: a missing counter is created with it, as the
/// routing core's [`IncrOrCreate`] says (the blocking client runs the same): `add`, so that of
/// two clients creating it one wins and the other increments.
fn increment_or_create(
    service: Rc<Service>,
    request: binary::Request,
    command: Command,
    initial: u64,
    exptime: i64,
    lane: usize,
) -> Work {
    Box::pin(async move {
        let add = Command::Store {
            verb: "add",
            key: request.key.clone(),
            flags: 0,
            exptime,
            cas: None,
            value: initial.to_string().into_bytes(),
            noreply: false,
        };
        let (mut sequence, mut ask) = IncrOrCreate::start();
        loop {
            let sent = match ask {
                CounterAsk::Arith => command.clone(),
                CounterAsk::Add => add.clone(),
            };
            let text = service.clone().job(sent, lane).await;
            let line = text.strip_suffix(b"\r\n").unwrap_or(&text);
            let reply = match line {
                b"NOT_FOUND" => CounterReply::NotFound,
                b"STORED" => CounterReply::Stored,
                b"NOT_STORED" => CounterReply::NotStored,
                _ if !line.is_empty() && line.iter().all(u8::is_ascii_digit) => {
                    CounterReply::Number
                }
                _ => CounterReply::Other,
            };
            match sequence.next(reply) {
                CounterNext::Ask(next) => ask = next,
                CounterNext::Counted | CounterNext::Failed => {
                    return binary::answer(&request, &text);
                }
                CounterNext::Created => {
                    return binary::answer(&request, format!("{initial}\r\n").as_bytes());
                }
                CounterNext::GaveUp => return binary::answer(&request, b"NOT_STORED\r\n"),
            }
        }
    })
}

/// A text command before the client authenticated (memcached's ASCII authentication, as
/// `memcached -Y` takes it): a `set` whose value is `user password` authenticates; anything
/// else is refused. The reply, and whether the client is now authenticated; `None`: it quit.
const AUTH_FAILURE: &[u8] = b"CLIENT_ERROR authentication failure\r\n";

fn ascii_auth(
    auth: &crate::client_auth::ClientAuth,
    command: Command,
) -> Option<(&'static [u8], bool)> {
    match command {
        Command::Quit => None,
        Command::Store { value, .. } if auth.check_ascii(&value) => Some((b"STORED\r\n", true)),
        Command::Store { .. } => Some((AUTH_FAILURE, false)),
        _ => Some((b"CLIENT_ERROR unauthenticated\r\n", false)),
    }
}
