//! A connection of the event loop, TCP, TLS over TCP (to servers) or unix socket, as one type.
//!
//! TLS on a non-blocking socket, as the event loop needs it: rustls takes a write's requests
//! whole (its buffers have no limit: what the loop queued is bounded by the requests it carries) and
//! writes what the socket takes; the rest, and the handshake, go out as the socket allows
//! ([`Stream::flush_pending`] on each writable event, and after each read that made TLS
//! bytes to send). A read decrypts until the caller's buffer is full or the socket has nothing
//! more (the loop is edge-triggered: a short read must mean the socket is drained, as it does
//! for TCP).

use std::io::{self, Read, Write};

use libmcshm::proto::Encoded;
use mio::event::Source;
use mio::{Interest, Registry, Token};

pub enum Stream {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
    Tls(Box<TlsStream>),
}

/// A TLS client session over a non-blocking TCP socket.
pub struct TlsStream {
    sock: mio::net::TcpStream,
    session: rustls::ClientConnection,
}

impl TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        loop {
            match self.session.reader().read(&mut buf[filled..]) {
                Ok(0) => return Ok(filled), // the server's close_notify: the end
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) if filled > 0 => return Ok(filled), // said again at the next read
                Err(err) => return Err(err),
            }
            if filled == buf.len() {
                return Ok(filled);
            }
            match self.session.read_tls(&mut self.sock) {
                Ok(0) => return Ok(filled), // the end of the stream
                Ok(_) => {
                    self.session
                        .process_new_packets()
                        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
                    self.flush_pending()?;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock && filled > 0 => {
                    return Ok(filled);
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            match self.session.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            // Requests to a server go through Stream::write_requests, in the records memcached
            // needs; nothing else is written to one.
            Stream::Tls(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a TLS stream takes requests (Stream::write_requests)",
            )),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream {
    /// Writes `requests` from `start` (where a request starts, as the event loop writes):
    /// how many bytes the socket took. TLS takes them all, in the records the encoder said
    /// memcached needs (see `libmcshm::tls::write_requests`), and writes what the socket takes.
    pub fn write_requests(&mut self, requests: &Encoded, start: usize) -> io::Result<usize> {
        match self {
            Stream::Tls(s) => {
                libmcshm::tls::write_requests(&mut s.session, requests, start)?;
                s.flush_pending()?;
                Ok(requests.len() - start)
            }
            clear => clear.write(&requests.bytes()[start..]),
        }
    }

    /// The TCP connection `self`, to speak TLS with `session` (its handshake goes out with the
    /// first writes). A unix socket stays in clear.
    pub fn with_tls(self, session: rustls::ClientConnection) -> Stream {
        match self {
            Stream::Tcp(sock) => Stream::Tls(Box::new(TlsStream { sock, session })),
            other => other,
        }
    }

    /// Writes the TLS bytes the socket did not take before (a no-op in clear).
    pub fn flush_pending(&mut self) -> io::Result<()> {
        match self {
            Stream::Tls(s) => s.flush_pending(),
            _ => Ok(()),
        }
    }

    /// A non-blocking connect's outcome, once the socket is writable: `Ok(true)` connected,
    /// `Ok(false)` not yet.
    pub fn connected(&self) -> io::Result<bool> {
        let s = match self {
            Stream::Tcp(s) => s,
            Stream::Tls(tls) => &tls.sock,
            Stream::Unix(_) => return Ok(true),
        };
        if let Some(err) = s.take_error()? {
            return Err(err);
        }
        match s.peer_addr() {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(err) => Err(err),
        }
    }

    pub fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Tls(s) => s.sock.shutdown(std::net::Shutdown::Write),
        };
    }
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(r, t, i),
            Stream::Unix(s) => s.register(r, t, i),
            Stream::Tls(s) => s.sock.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(r, t, i),
            Stream::Unix(s) => s.reregister(r, t, i),
            Stream::Tls(s) => s.sock.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(r),
            Stream::Unix(s) => s.deregister(r),
            Stream::Tls(s) => s.sock.deregister(r),
        }
    }
}
