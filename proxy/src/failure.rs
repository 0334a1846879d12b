//! Why a request to a server got no reply: the one error type the worker's server connections
//! ([`crate::upstream`]) hand to what waits for a reply (the direct path, and the jobs'
//! reply cells in [`crate::jobs`]), reported to the router as a failure of that server. A leaf,
//! so that the executor and the connections need not know each other.

use std::io;

/// Why a request got no reply; counts against the server in the router (once per failed
/// connection: see [`Failure::behind`]).
#[derive(Clone, Debug)]
pub struct Failure {
    pub error: String,
    pub errno: i32,
    /// Whether it counts against the server: a connection that fails is one failure of its
    /// server, however many requests it carried.
    pub counted: bool,
}

impl Failure {
    pub fn new(error: impl Into<String>, errno: i32) -> Failure {
        Failure {
            error: error.into(),
            errno,
            counted: true,
        }
    }

    /// The same failure for a request the failed connection carried behind the one it is
    /// counted for: answered as failed, not counted again (a pipeline of 50 requests on a
    /// connection that timed out is one timeout, not 50 consecutive failures).
    pub fn behind(&self) -> Failure {
        Failure {
            counted: false,
            ..self.clone()
        }
    }

    /// An I/O error, or the TLS error rustls reports through one (explained in words).
    pub(crate) fn io(context: &str, err: &io::Error) -> Failure {
        match libmcshm::tls::explain_io(err) {
            Some(why) => Failure::new(why, libc::EPROTO),
            None => Failure::new(format!("{context}: {err}"), mcshm_route::io_errno(err)),
        }
    }
}
