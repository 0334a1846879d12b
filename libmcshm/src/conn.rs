//! One connection to one memcached server: TCP (TCP_NODELAY, TLS when the domain has it: see
//! [`crate::tls`]) or a unix socket, with connect and I/O timeouts, a read buffer, and the
//! request/reply plumbing around [`crate::proto`].
//!
//! The I/O timeout bounds each whole reply and each whole send, not each read: a server that
//! drips one byte at a time (each read well within the timeout) still fails at the deadline, as
//! a server that says nothing does.
//!
//! A connection whose reply timed out is kept, not dropped ([`Conn::abandon`]): the requests it
//! carried were sent whole and a frozen server runs them when it thaws, so a later write sent on
//! a new connection could be run first and then overwritten by the older one (memcached runs
//! its connections in any order). On the same connection memcached runs them in order: the
//! replies owed to requests given up on are read and dropped before the next reply anyone
//! waits for. Only a connection out of step (a request written in part, bytes that are not the
//! protocol) is dropped.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::access::Access;
use crate::address::Address;
use crate::proto::{self, Encoded, Expect, Reply};

/// How far past its deadline a request may run (the socket timeout is only lowered to the
/// time left when that is this much shorter).
const SLACK: Duration = Duration::from_millis(10);
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Connect and I/O timeouts (default 1 s each). `io` bounds each request's send and each
/// reply, however the bytes arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub io: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(1),
            io: Duration::from_secs(1),
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }

    /// Writes from `requests` (whole ones): how many bytes the socket took. `encoded`, when
    /// given, holds them (`requests` is its end) and says where TLS records end.
    fn write(&mut self, requests: &[u8], encoded: Option<&Encoded>) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(requests),
            Stream::Unix(s) => s.write(requests),
            // rustls takes the requests whole (no buffer limit), in records as memcached
            // needs them; the flush writes them all.
            Stream::Tls(s) => {
                match encoded {
                    Some(encoded) => {
                        let start = encoded.len() - requests.len();
                        crate::tls::write_requests(&mut s.conn, encoded, start)?;
                    }
                    // Command lines without a data block (Conn::send): one record is right.
                    None => s.conn.writer().write_all(requests)?,
                }
                s.flush()?;
                Ok(requests.len())
            }
        }
    }

    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
            Stream::Unix(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
            Stream::Tls(s) => {
                s.sock.set_read_timeout(Some(timeout))?;
                s.sock.set_write_timeout(Some(timeout))
            }
        }
    }
}

/// Why a request on a connection failed. Either way the connection is no longer usable.
#[derive(Debug)]
pub enum ConnError {
    /// Connect, read or write failed or timed out, or the server closed the connection.
    Io(io::Error),
    /// The server's bytes are not memcached's protocol.
    Protocol(String),
    /// The server refused our credentials, or we have none it would take, or the domain's
    /// credentials or TLS settings cannot be read (see [`crate::access`]).
    Auth(String),
    /// The TLS handshake or a TLS record failed: the cause in words (see [`crate::tls::explain`]).
    Tls(String),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Io(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                f.write_str("timed out")
            }
            ConnError::Io(e) => write!(f, "{e}"),
            ConnError::Protocol(why) => write!(f, "protocol error: {why}"),
            ConnError::Auth(why) | ConnError::Tls(why) => f.write_str(why),
        }
    }
}

impl From<io::Error> for ConnError {
    /// An I/O error, or the TLS error rustls reports through one.
    fn from(e: io::Error) -> ConnError {
        match crate::tls::explain_io(&e) {
            Some(why) => ConnError::Tls(why),
            None => ConnError::Io(e),
        }
    }
}

/// A persistent connection with its read buffer.
pub struct Conn {
    stream: Stream,
    /// Where it goes, and how long it waits: a failure's diagnosis opens connections of its own.
    address: Address,
    timeouts: Timeouts,
    /// Read buffer; bytes `pos..end` are received and not yet parsed. Allocated once (and grown
    /// for large replies), never zeroed again per read.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// The I/O timeout, and the one set on the socket now (changed only as a deadline nears).
    io: Duration,
    socket_timeout: Duration,
    /// Replies read so far: a connection that fails before its first is worth a diagnosis.
    replies: u64,
    /// The replies owed to requests sent whole, oldest first.
    owed: VecDeque<Expect>,
    /// How many of the oldest owed replies nobody waits for any more (their requests timed
    /// out): read and dropped before the next one.
    orphans: usize,
    /// A request was written in part: the server reads the next request as the rest of it.
    out_of_step: bool,
    /// Whether the server speaks the meta protocol, once asked (`Client::speaks_meta`).
    speaks_meta: Option<bool>,
}

impl Conn {
    /// Connects to `address` within `timeouts.connect` and sets the I/O timeouts: in clear,
    /// without authentication.
    pub fn connect(address: &Address, timeouts: Timeouts) -> Result<Conn, ConnError> {
        Conn::connect_as(address, timeouts, &Access::default())
    }

    /// [`Conn::connect`] as `access` says: the TLS handshake (TCP servers) within the I/O
    /// timeout, then memcached's ASCII authentication (see [`crate::auth`]) before anything
    /// else is sent.
    pub fn connect_as(
        address: &Address,
        timeouts: Timeouts,
        access: &Access,
    ) -> Result<Conn, ConnError> {
        let mut conn = Conn::open(address, timeouts, access.tls.as_deref())?;
        if let Some(credentials) = &access.credentials {
            conn.send_requests(&credentials.request())?;
            match conn.receive(Expect::Store)? {
                Reply::Stored => {}
                Reply::ClientError(message) => {
                    return Err(ConnError::Auth(credentials.refused(&message)));
                }
                other => {
                    return Err(ConnError::Protocol(format!(
                        "unexpected answer to authentication: {other:?}"
                    )));
                }
            }
            conn.replies = 0;
        }
        Ok(conn)
    }

    fn open(
        address: &Address,
        timeouts: Timeouts,
        tls: Option<&crate::tls::Tls>,
    ) -> Result<Conn, ConnError> {
        let stream = match address {
            Address::Unix { path } => Stream::Unix(UnixStream::connect(path)?),
            other => {
                let s = connect_any(&other.socket_addrs()?, timeouts.connect)?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        };
        stream.set_timeouts(timeouts.io)?;
        let stream = match (stream, tls) {
            (Stream::Tcp(sock), Some(tls)) => handshake(sock, tls, address, timeouts.io)?,
            (stream, _) => stream,
        };
        Ok(Conn {
            stream,
            address: address.clone(),
            timeouts,
            buf: vec![0; READ_CHUNK],
            pos: 0,
            end: 0,
            io: timeouts.io,
            socket_timeout: timeouts.io,
            replies: 0,
            owed: VecDeque::new(),
            orphans: 0,
            out_of_step: false,
            speaks_meta: None,
        })
    }

    /// Replies read on this connection so far.
    pub fn replies(&self) -> u64 {
        self.replies
    }

    /// Sends one request and reads its reply.
    pub fn ask(&mut self, request: &proto::Request<'_>) -> Result<Reply, ConnError> {
        self.send_requests(&Encoded::of(request, b""))?;
        self.receive(request.expects())
    }

    /// `err`, which ended this connection, in words: when the server never answered in clear,
    /// with the reason it does not speak the text protocol in clear, if that is it (see
    /// [`not_text_protocol`]).
    pub fn explain(&self, err: &ConnError) -> String {
        let text = err.to_string();
        if self.replies == 0
            && !self.is_tls()
            && matches!(err, ConnError::Io(_))
            && let Some(why) = not_text_protocol(&self.address, self.timeouts)
        {
            return format!("{text}: {why}");
        }
        text
    }

    /// Whether the server speaks the meta protocol, if asked on this connection.
    pub fn speaks_meta(&self) -> Option<bool> {
        self.speaks_meta
    }

    /// Whether no reply is owed or buffered: an exchange outside the requests' order (the
    /// meta probe) cannot take another request's reply for its own.
    pub fn is_idle(&self) -> bool {
        self.owed.is_empty() && self.pos == self.end
    }

    /// What asking the server whether it speaks the meta protocol found.
    pub fn set_speaks_meta(&mut self, speaks: bool) {
        self.speaks_meta = Some(speaks);
    }

    /// Whether the connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Writes all of `bytes` within the I/O timeout, as they are: command lines without a data
    /// block (`lru_crawler metadump all`, the probes of what a server speaks), which TLS may
    /// carry in one record. Storage requests go through [`Conn::send_requests`], whose records
    /// end where each value ends.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.write_all(bytes, None)
    }

    /// Writes all of `requests` within the I/O timeout; their replies are then owed.
    pub fn send_requests(&mut self, requests: &Encoded) -> Result<(), ConnError> {
        self.write_all(requests.bytes(), Some(requests))?;
        self.owed.extend(requests.expects());
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8], encoded: Option<&Encoded>) -> Result<(), ConnError> {
        let deadline = Instant::now() + self.io;
        let mut rest = bytes;
        while !rest.is_empty() {
            let written = rest.len() < bytes.len();
            let step = self
                .time_left(deadline)
                .and_then(|()| self.stream.write(rest, encoded).map_err(ConnError::from));
            match step {
                Ok(0) => {
                    self.out_of_step |= written;
                    return Err(io::Error::from(io::ErrorKind::WriteZero).into());
                }
                Ok(n) => rest = &rest[n..],
                Err(ConnError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.out_of_step |= written;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Gives up on the replies owed now, after `err` (a reply that timed out): `true` when the
    /// connection may be kept, its order holding (the owed replies are read and dropped before
    /// the next one); `false` when it must be dropped (out of step, or another error).
    pub fn abandon(&mut self, err: &ConnError) -> bool {
        let timed_out = matches!(err, ConnError::Io(e)
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut));
        if !timed_out || self.out_of_step {
            return false;
        }
        self.orphans = self.owed.len();
        true
    }

    /// Whether a request given up on (see [`Conn::abandon`]) may still change the server's
    /// data when it runs: a write, not a read.
    pub fn owes_orphan_writes(&self) -> bool {
        self.owed
            .iter()
            .take(self.orphans)
            .any(|e| !matches!(e, Expect::Values | Expect::Version | Expect::Stats))
    }

    /// Reads and drops the replies owed to requests given up on, within the I/O timeout.
    pub fn settle(&mut self) -> Result<(), ConnError> {
        let mut deadline = None;
        self.drop_orphans(&mut deadline)
    }

    fn drop_orphans(&mut self, deadline: &mut Option<Instant>) -> Result<(), ConnError> {
        while self.orphans > 0 {
            let expect = *self.owed.front().expect("orphans are owed");
            self.read_reply(expect, deadline)?;
            self.owed.pop_front();
            self.orphans -= 1;
        }
        Ok(())
    }

    /// Reads one complete reply of kind `expect`, within the I/O timeout (the replies owed to
    /// requests given up on are read and dropped first, within the same timeout).
    pub fn receive(&mut self, expect: Expect) -> Result<Reply, ConnError> {
        // Taken at the first read the reply needs: a reply already buffered (pipelined) costs
        // no clock read.
        let mut deadline = None;
        self.drop_orphans(&mut deadline)?;
        let reply = self.read_reply(expect, &mut deadline)?;
        // (Nothing is owed for a request written raw, as the protocol probes do.)
        self.owed.pop_front();
        Ok(reply)
    }

    fn read_reply(
        &mut self,
        expect: Expect,
        deadline: &mut Option<Instant>,
    ) -> Result<Reply, ConnError> {
        loop {
            match proto::parse_reply(expect, &self.buf[self.pos..self.end]) {
                Ok(Some((reply, used))) => {
                    self.replies += 1;
                    self.pos += used;
                    if self.pos == self.end {
                        self.pos = 0;
                        self.end = 0;
                    }
                    return Ok(reply);
                }
                Ok(None) => {
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.io);
                    self.time_left(deadline)?;
                    self.fill()?
                }
                Err(malformed) => return Err(ConnError::Protocol(malformed.0)),
            }
        }
    }

    /// Reads an answer that is not one reply of the grammar (`lru_crawler metadump`: lines up
    /// to `END`) until `complete` says it is whole: at most `max` bytes, until `deadline`, each
    /// read waiting at most the I/O timeout.
    pub fn receive_until(
        &mut self,
        max: usize,
        deadline: Instant,
        complete: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>, ConnError> {
        loop {
            let received = &self.buf[self.pos..self.end];
            if complete(received) {
                let answer = received.to_vec();
                (self.pos, self.end) = (0, 0);
                self.replies += 1;
                return Ok(answer);
            }
            if received.len() > max {
                return Err(ConnError::Protocol(format!(
                    "answer longer than {max} bytes"
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out").into());
            }
            self.fill()?;
        }
    }

    /// Sets the socket's timeouts to what is left until `deadline` (only once a request runs
    /// late: then a system call per read); past it, the request timed out.
    fn time_left(&mut self, deadline: Instant) -> Result<(), ConnError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out").into());
        }
        // Within SLACK of the full timeout (a fresh request), the full timeout: no system call.
        let wanted = if left + SLACK >= self.io {
            self.io
        } else {
            left
        };
        let lower = wanted + SLACK < self.socket_timeout;
        if lower || (wanted == self.io && self.socket_timeout != self.io) {
            self.stream.set_timeouts(wanted)?;
            self.socket_timeout = wanted;
        }
        Ok(())
    }

    /// Reads more bytes into the buffer, compacting or growing it when full.
    fn fill(&mut self) -> Result<(), ConnError> {
        if self.end == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let space = &mut self.buf[self.end..];
        match self.stream.read(space)? {
            0 => Err(ConnError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by server",
            ))),
            n => {
                self.end += n;
                Ok(())
            }
        }
    }
}

/// How long the diagnosis of a server that never answered may take, over both its probes: a
/// binary-only server answers them at once, and a command's --timeout is overrun by this at
/// most.
const DIAGNOSIS: Duration = Duration::from_millis(150);

/// Why a server that accepted a connection in clear never answered its first text request,
/// when the reason is that it does not speak the text protocol in clear: a text probe long
/// enough for a binary server to read as a (bad) header gets no text answer, and then a TLS
/// `ClientHello` gets a TLS record back (memcached -Z), or a binary `NOOP` a binary answer.
/// `None` when the server answers text, or nothing (frozen, slow): the error stands.
pub fn not_text_protocol(address: &Address, timeouts: Timeouts) -> Option<&'static str> {
    // Both probes share one short deadline: a command's timeout is overrun by this at most.
    let deadline = Instant::now() + DIAGNOSIS.min(timeouts.io);
    let within = || {
        let left = deadline.saturating_duration_since(Instant::now());
        Timeouts {
            connect: timeouts.connect.min(left),
            io: left,
        }
    };
    let mut text = Conn::connect(address, within()).ok()?;
    // 27 bytes: a binary-only server reads 24 of them as a header, finds no magic byte and
    // closes the connection at once.
    text.send(b"version\r\nversion\r\nversion\r\n").ok()?;
    if text.receive(Expect::Version).is_ok() {
        return None;
    }
    let mut tls = Conn::connect(address, within()).ok()?;
    tls.send(&crate::tls::client_hello()).ok()?;
    if tls.fill().is_ok() && crate::tls::is_record(&tls.buf[tls.pos..tls.end]) {
        return Some(
            "the server speaks TLS (memcached -Z): give the domain its TLS settings with `mcadmin tls --ca FILE`",
        );
    }
    let mut binary = Conn::connect(address, within()).ok()?;
    let mut noop = [0u8; 24];
    noop[0] = 0x80; // request magic
    noop[1] = 0x0a; // NOOP
    binary.send(&noop).ok()?;
    while binary.end - binary.pos < 8 {
        binary.time_left(deadline).ok()?;
        binary.fill().ok()?;
    }
    let header = &binary.buf[binary.pos..binary.end];
    let status = u16::from_be_bytes([header[6], header[7]]);
    match (header[0], status) {
        (0x81, 0x0020) => Some(
            "the server requires SASL authentication (memcached -S); mcshm speaks the text protocol",
        ),
        (0x81, _) => Some(
            "the server speaks only the binary protocol (memcached -B binary); mcshm speaks the text protocol",
        ),
        _ => None,
    }
}

/// The TLS handshake on a new TCP connection, within `timeout`.
fn handshake(
    mut sock: TcpStream,
    tls: &crate::tls::Tls,
    address: &Address,
    timeout: Duration,
) -> Result<Stream, ConnError> {
    let mut session = tls.connect(address)?;
    let deadline = Instant::now() + timeout;
    while session.is_handshaking() {
        if Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out").into());
        }
        match session.complete_io(&mut sock) {
            Ok((0, 0)) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by server during the TLS handshake",
                )
                .into());
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(
        session, sock,
    ))))
}

fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "host name resolved to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}
