//! What a front end is told about failures: the [`Failure`] the router counted (with the
//! [`MarkDown`] it asks for at the domain's limit), the [`FailureEvent`] a callback gets once
//! it was carried out (with what that did, [`MarkedDown`]), and the errno every front end
//! reports an I/O error with ([`io_errno`]).

use mcshm_table::address::Address;

/// What a failure did, as the failure callback is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkedDown {
    /// Below the failure limit: nothing changed yet.
    No,
    /// Marked down in the registry, for every process on the host.
    ForEveryone,
    /// This process cannot write the registry (or uses a private server list): it treats the
    /// server as down itself. Reported once per server.
    LocallyOnly,
}

/// A failed operation, as the failure callback sees it.
#[derive(Debug)]
pub struct FailureEvent<'a> {
    pub server: &'a Address,
    /// What went wrong (connect refused, timed out, …).
    pub error: &'a str,
    /// The same as an errno value: the OS error (ECONNREFUSED, EPIPE, …), ETIMEDOUT for a
    /// timeout, ECONNRESET for a connection the server closed, EPROTO for a protocol error.
    pub errno: i32,
    /// Consecutive failures now counted for the server.
    pub failures: u32,
    pub marked_down: MarkedDown,
}

/// A server to mark down for every process: the action a failure at the domain's limit asks
/// of the front end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkDown {
    /// The server's stable id.
    pub id: u32,
    /// The reason to record, already fitted to the table's field.
    pub reason: String,
}

/// A failed request as the router counted it: what to tell, and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub server: Address,
    pub error: String,
    pub errno: i32,
    /// Consecutive failures now counted for the server.
    pub failures: u32,
    /// At the domain's failure limit: the mark-down to carry out.
    pub mark_down: Option<MarkDown>,
}

impl Failure {
    /// The event a failure callback is given once the failure was carried out.
    pub fn event(&self, marked_down: MarkedDown) -> FailureEvent<'_> {
        FailureEvent {
            server: &self.server,
            error: &self.error,
            errno: self.errno,
            failures: self.failures,
            marked_down,
        }
    }
}

/// An I/O error on a server connection as an errno value: ETIMEDOUT for a timeout,
/// ECONNRESET for a connection the server closed, else the OS error (EIO without one). Every
/// front end (the blocking client, mcproxy) reports failures with it.
pub fn io_errno(err: &std::io::Error) -> i32 {
    match err.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        std::io::ErrorKind::UnexpectedEof => libc::ECONNRESET,
        _ => err.raw_os_error().unwrap_or(libc::EIO),
    }
}
