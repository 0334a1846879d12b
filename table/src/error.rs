//! Typed errors. Every message is one line that names the problem and, where there is one, the
//! next step; [`Error::kind`] sorts them into the classes the command-line tools turn into exit
//! codes.

use std::io;
use std::path::PathBuf;

/// Errors of libmcshm.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input from the caller: an address, domain name, weight, reason, dump line…
    #[error("invalid {what} '{input}': {why}")]
    Invalid {
        what: &'static str,
        input: String,
        why: String,
    },
    /// A line of a server list (`mcadmin load`) is malformed.
    #[error("line {line}: {why}")]
    BadLine { line: usize, why: String },
    /// A server list (`mcadmin load`) is refused as a whole: cut short, too large, empty; `why`
    /// names the next step.
    #[error("{why}")]
    BadList { why: String },
    /// A bucket map that does not fit its domain (see [`crate::placement::buckets`]).
    #[error("bucket map: {why}")]
    BadBuckets { why: String },
    /// The domain has no registry file yet (`path`), in the directory looked in.
    #[error(
        "no such domain '{domain}' in {} (no file {}): create it with `mcadmin --domain {domain} add HOST:PORT`, or name the directory that holds it (--dir, MCSHM_DIR)",
        path.parent().unwrap_or(path).display(),
        path.file_name().map_or(std::borrow::Cow::Borrowed(""), |n| n.to_string_lossy())
    )]
    NoDomain { domain: String, path: PathBuf },
    /// A server named by the caller is not in the table.
    #[error("server {server} is not in domain '{domain}'")]
    NoServer { server: String, domain: String },
    /// A server to add is already in the table.
    #[error("server {server} is already in domain '{domain}' (use `mcadmin set` to change it)")]
    ServerExists { server: String, domain: String },
    /// A server to add is one already in the table under another name (both reach `place`).
    #[error(
        "server {server} is {other} of domain '{domain}' under another name (both reach {place}): one memcached listed twice gets two shares of the keys, and a key written under one name is missed under the other; nothing changed"
    )]
    Alias {
        server: String,
        other: String,
        place: String,
        domain: String,
    },
    /// The caller may not read or write the file.
    #[error(
        "permission denied: cannot {op} {}: run as its owner or a member of its group (ls -l \
         shows them), or as root; a domain's group is set when it is created (mcadmin --group)",
        path.display()
    )]
    PermissionDenied { op: &'static str, path: PathBuf },
    /// Another writer held the writer lock for longer than this one would wait.
    #[error(
        "{} is locked by another writer{} (waited {:.1} s); try again when it is done",
        path.display(),
        holder.as_ref().map_or(String::new(), |h| format!(" ({h})")),
        waited.as_secs_f64()
    )]
    Locked {
        path: PathBuf,
        holder: Option<String>,
        waited: std::time::Duration,
    },
    /// The path is not something we will map: a symlink, not a regular file, foreign owner.
    #[error("refusing {}: {why}", path.display())]
    UnsafeFile { path: PathBuf, why: String },
    /// The file's contents fail validation.
    #[error(
        "{} is corrupt: {why} (rewrite it with `mcadmin load FILE` from a dump or your config)",
        path.display()
    )]
    Corrupt { path: PathBuf, why: String },
    /// A settings file beside the table (TLS settings) cannot be used; `why` names the fix.
    #[error("{} cannot be used: {why}", path.display())]
    Unusable { path: PathBuf, why: String },
    /// The file was written by a newer mcshm whose format this build cannot read.
    #[error(
        "{} has format version {found} and needs a reader of version {needs}; this mcshm reads format {supported}: upgrade mcshm",
        path.display()
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        needs: u32,
        supported: u32,
    },
    /// No registry directory could be chosen.
    #[error(
        "no registry directory: /run/mcshm does not exist and XDG_RUNTIME_DIR is not set (pass --dir or set MCSHM_DIR)"
    )]
    NoDirectory,
    /// The table would exceed what the format can hold.
    #[error("too many servers: {count} (at most {max} per domain)")]
    TooManyServers { count: usize, max: usize },
    /// A key memcached would refuse (checked before anything is sent).
    #[error("invalid key '{key}': {why}")]
    BadKey { key: String, why: String },
    /// The key's server is down and the domain's failover policy is `none`.
    #[error(
        "server {server} is down{reason}; failover is none, so its keys are not served elsewhere"
    )]
    ServerDown { server: String, reason: String },
    /// No server can take the request.
    #[error("no server is up in {what}")]
    NoServers { what: String },
    /// Connecting, sending or receiving failed or timed out.
    #[error("{server}: {error}")]
    Network { server: String, error: String },
    /// The server answered `SERVER_ERROR`.
    #[error("{server} answered SERVER_ERROR {message}")]
    ServerError { server: String, message: String },
    /// The server answered `CLIENT_ERROR`: it refused the request.
    #[error("{server} answered CLIENT_ERROR {message}")]
    ClientError { server: String, message: String },
    /// The server refused the connection (`ERROR msg`, e.g. too many open connections).
    #[error("{server} refused the connection: {message}")]
    Refused { server: String, message: String },
    /// The server answered `ERROR`: it does not know the command.
    #[error("{server} answered ERROR (unknown command)")]
    UnknownCommand { server: String },
    /// The server's fence (see [`crate::fence`]) is above the fleet revision this host routed
    /// on, or missing (`fence` = `u64::MAX`): its answer was not used (a write there was
    /// undone), and the host's table did not catch up in time.
    #[error("{server}: {}", behind_text(*fence, *table))]
    TableBehind {
        server: String,
        fence: u64,
        table: u64,
    },
    /// Any other I/O failure.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What [`Error::TableBehind`] says.
fn behind_text(fence: u64, table: u64) -> String {
    let what = match fence {
        u64::MAX => "has no fence for the domain (restarted or flushed since a fleet commit wrote \
                     one)"
            .to_string(),
        fence => format!("is fenced at fleet revision {fence}"),
    };
    format!(
        "the server {what} and this host's table is at fleet revision {table}: the answer was \
         not used (the table is behind; is `mcadmin sync` running and connected to etcd?)"
    )
}

/// The classes of [`Error`], for exit codes and for callers that branch on the cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's input was wrong; nothing was changed.
    BadInput,
    /// The domain or server does not exist, or a server to add already does.
    NotFound,
    /// The registry could not be read or written (I/O, permissions, corruption, format).
    Registry,
    /// A memcached server failed, is down, or refused to serve the request.
    Server,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::ServerDown { .. }
            | Error::NoServers { .. }
            | Error::Network { .. }
            | Error::ServerError { .. }
            | Error::Refused { .. }
            | Error::UnknownCommand { .. }
            | Error::TableBehind { .. } => ErrorKind::Server,
            Error::Invalid { .. }
            | Error::BadKey { .. }
            | Error::ClientError { .. }
            | Error::BadLine { .. }
            | Error::BadList { .. }
            | Error::BadBuckets { .. }
            | Error::TooManyServers { .. } => ErrorKind::BadInput,
            Error::NoDomain { .. }
            | Error::NoServer { .. }
            | Error::ServerExists { .. }
            | Error::Alias { .. } => ErrorKind::NotFound,
            _ => ErrorKind::Registry,
        }
    }

    pub fn invalid(what: &'static str, input: &str, why: impl Into<String>) -> Error {
        Error::Invalid {
            what,
            input: shown(input),
            why: why.into(),
        }
    }

    pub fn bad_key(key: &[u8], why: impl ToString) -> Error {
        Error::BadKey {
            key: shown(&String::from_utf8_lossy(key)),
            why: why.to_string(),
        }
    }

    /// An I/O error on `path`, with `EACCES`/`EPERM` turned into [`Error::PermissionDenied`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        let path = path.into();
        if source.kind() == io::ErrorKind::PermissionDenied {
            Error::PermissionDenied { op, path }
        } else {
            Error::Io { op, path, source }
        }
    }
}

/// User input as shown in an error: escaped and shortened, so that a newline or a megabyte of
/// input still makes one readable line.
fn shown(input: &str) -> String {
    let mut shown: String = input
        .chars()
        .take(100)
        .collect::<String>()
        .escape_debug()
        .collect();
    if input.chars().count() > 100 {
        shown.push('…');
    }
    shown
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
