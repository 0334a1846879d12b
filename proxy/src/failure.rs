//! Why a request to a server got no reply: the one error type the worker's server connections
//! ([`crate::upstream`]) hand to what waits for a reply (the direct path, and the jobs'
//! reply cells in [`crate::jobs`]), reported to the router as a failure of that server. A leaf,
//! so that the executor and the connections need not know each other.
//!
//! One kind is no failure of the server: a reply its fence judged behind ([`Fenced`], see
//! [`libmcshm::fence`]). The server answered; this host's table is what lags. Such a reply is
//! not used, and the router hears of it as answered (a healthy server is never marked down for
//! it).

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
    /// The server answered, but its fence says this host's table is behind: the reply was not
    /// used (not a failure of the server; never counted against it).
    pub fenced: Option<Fenced>,
}

/// A reply a server's fence judged behind: the fence, and the fleet revision the request was
/// routed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fenced {
    /// The fleet revision this host's table must reach before the server's answers count
    /// ([`libmcshm::fence::Verdict::wants`]: `u64::MAX` for a missing fence).
    pub fence: u64,
    /// The fleet revision the request was routed on.
    pub routed: u64,
}

impl Fenced {
    /// What a client is told when a fenced answer is final (`server`: the server's address).
    pub fn describe(&self, server: Option<&str>) -> String {
        let server = match server {
            Some(address) => format!("server {address}"),
            None => "the server".to_string(),
        };
        match self.fence {
            u64::MAX => format!(
                "table behind ({server} has no fence for the domain, this host's table is at \
                 fleet revision {}: the answer was not used)",
                self.routed
            ),
            fence => format!(
                "table behind ({server} is fenced at fleet revision {fence}, this host's table \
                 is at {}: the answer was not used; is `mcadmin sync` running?)",
                self.routed
            ),
        }
    }
}

impl Failure {
    pub fn new(error: impl Into<String>, errno: i32) -> Failure {
        Failure {
            error: error.into(),
            errno,
            counted: true,
            fenced: None,
        }
    }

    /// A reply judged behind by the server's fence (see [`Fenced`]): not counted against the
    /// server.
    pub fn fenced(fenced: Fenced) -> Failure {
        Failure {
            error: fenced.describe(None),
            errno: libc::ESTALE,
            counted: false,
            fenced: Some(fenced),
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
