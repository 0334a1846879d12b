//! One connection to one memcached server: TCP (TCP_NODELAY) or a unix socket, with connect and
//! I/O timeouts, a read buffer, and the request/reply plumbing around [`crate::proto`].

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::address::Address;
use crate::proto::{self, Expect, Reply};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Connect and I/O timeouts (default 1 s each).
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
}

/// Why a request on a connection failed. Either way the connection is no longer usable.
#[derive(Debug)]
pub enum ConnError {
    /// Connect, read or write failed or timed out, or the server closed the connection.
    Io(io::Error),
    /// The server's bytes are not memcached's protocol.
    Protocol(String),
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
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> ConnError {
        ConnError::Io(e)
    }
}

/// A persistent connection with its read buffer.
pub struct Conn {
    stream: Stream,
    /// Read buffer; bytes `pos..end` are received and not yet parsed. Allocated once (and grown
    /// for large replies), never zeroed again per read.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl Conn {
    /// Connects to `address` within `timeouts.connect` and sets the I/O timeouts.
    pub fn connect(address: &Address, timeouts: Timeouts) -> Result<Conn, ConnError> {
        let stream = match address {
            Address::Unix { path } => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(timeouts.io))?;
                s.set_write_timeout(Some(timeouts.io))?;
                Stream::Unix(s)
            }
            other => {
                let port = other.port().unwrap_or(0);
                let addrs: Vec<SocketAddr> = match other {
                    Address::Ipv4 { ip, .. } => vec![SocketAddr::new((*ip).into(), port)],
                    Address::Ipv6 { ip, .. } => vec![SocketAddr::new((*ip).into(), port)],
                    _ => (other.host().as_str(), port).to_socket_addrs()?.collect(),
                };
                let s = connect_any(&addrs, timeouts.connect)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(timeouts.io))?;
                s.set_write_timeout(Some(timeouts.io))?;
                Stream::Tcp(s)
            }
        };
        Ok(Conn {
            stream,
            buf: vec![0; READ_CHUNK],
            pos: 0,
            end: 0,
        })
    }

    /// Writes all of `bytes`.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        match &mut self.stream {
            Stream::Tcp(s) => s.write_all(bytes)?,
            Stream::Unix(s) => s.write_all(bytes)?,
        }
        Ok(())
    }

    /// Reads one complete reply of kind `expect`.
    pub fn receive(&mut self, expect: Expect) -> Result<Reply, ConnError> {
        loop {
            match proto::parse_reply(expect, &self.buf[self.pos..self.end]) {
                Ok(Some((reply, used))) => {
                    self.pos += used;
                    if self.pos == self.end {
                        self.pos = 0;
                        self.end = 0;
                    }
                    return Ok(reply);
                }
                Ok(None) => self.fill()?,
                Err(malformed) => return Err(ConnError::Protocol(malformed.0)),
            }
        }
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
        let read = match &mut self.stream {
            Stream::Tcp(s) => s.read(space),
            Stream::Unix(s) => s.read(space),
        };
        match read? {
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
