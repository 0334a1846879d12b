//! Bringing servers back without stale data: probing a down server, and the rejoin policy
//! (flush, warm, trust) that every path back goes through: `mcadmin up`, the watch daemon, and
//! a client's retry probe.
//!
//! The invariant: a server that was down is marked up only after a successful `flush_all`
//! (unless the domain's rejoin policy is `trust`). While it was down its keys were not written
//! there, so whatever it holds may be stale; after the flush it holds nothing. If the flush
//! fails, it stays down.

use crate::address::Address;
use crate::auth::Credentials;
use crate::conn::{Conn, Timeouts};
use crate::edit;
use crate::error::{Error, Result};
use crate::proto::{Reply, Request, StoreVerb};
use crate::registry::{Registry, commit_info, now_ms};
use crate::table::{Rejoin, State};

/// One round trip (`version`), and with `check_key` a set and get of that key (the seed
/// thread's checkState). `Err` names what failed.
pub fn probe(
    address: &Address,
    timeouts: Timeouts,
    check_key: Option<&[u8]>,
    credentials: Option<&Credentials>,
) -> Result<(), String> {
    let mut conn =
        Conn::connect_as(address, timeouts, credentials).map_err(|e| format!("connect: {e}"))?;
    let mut ask = |request: Request<'_>| -> Result<Reply, String> {
        let mut buf = Vec::new();
        request.encode(&mut buf);
        conn.send(&buf).map_err(|e| e.to_string())?;
        conn.receive(request.expects()).map_err(|e| e.to_string())
    };
    match ask(Request::Version)? {
        Reply::Version(_) => {}
        other => return Err(format!("version: unexpected {other:?}")),
    }
    if let Some(key) = check_key {
        let token = now_ms().to_string();
        let set = Request::Store {
            verb: StoreVerb::Set,
            key,
            flags: 0,
            exptime: 60,
            value: token.as_bytes(),
        };
        if ask(set)? != Reply::Stored {
            return Err("check key: set not stored".into());
        }
        let keys = [key];
        match ask(Request::Get {
            keys: &keys,
            cas: false,
            touch: None,
        })? {
            Reply::Values(items) if items.first().is_some_and(|i| i.value == token.as_bytes()) => {}
            _ => return Err("check key: get did not return what was set".into()),
        }
    }
    Ok(())
}

/// `flush_all` on one server (authenticating with `credentials` when given); `Err` names what
/// failed.
pub fn flush(
    address: &Address,
    timeouts: Timeouts,
    credentials: Option<&Credentials>,
) -> Result<(), String> {
    let mut conn =
        Conn::connect_as(address, timeouts, credentials).map_err(|e| format!("connect: {e}"))?;
    let mut buf = Vec::new();
    let request = Request::FlushAll { delay: None };
    request.encode(&mut buf);
    conn.send(&buf).map_err(|e| e.to_string())?;
    match conn.receive(request.expects()).map_err(|e| e.to_string())? {
        Reply::Ok => Ok(()),
        other => Err(format!("flush_all refused: {other:?}")),
    }
}

/// What [`rejoin`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejoined {
    /// Marked up; `flushed` says whether it was flushed first.
    Up { flushed: bool },
    /// It was not down (up, draining, or gone from the table): nothing done.
    NotDown,
}

/// Brings the down server with `id` back through the domain's rejoin policy: flush (`trust`: a
/// `version` round trip instead; `skip_flush`, the operator's override: no contact), then mark
/// it up, in one transaction, with `by` in the reason. One connection to the server in all; a
/// failed flush (or probe) leaves it down and is an error.
pub fn rejoin(
    writer: &mut Registry,
    id: u32,
    timeouts: Timeouts,
    skip_flush: bool,
    by: &str,
) -> Result<Rejoined> {
    let snapshot = writer.current_snapshot()?;
    let Some(server) = snapshot
        .servers
        .iter()
        .find(|s| s.id == id && s.state == State::Down)
    else {
        return Ok(Rejoined::NotDown);
    };
    let policy = snapshot.policy;
    let flushed = policy.rejoin != Rejoin::Trust && !skip_flush;
    if flushed {
        let dir = writer.path().parent().unwrap_or(std::path::Path::new("."));
        let credentials = crate::auth::load(dir, writer.domain())?;
        flush(&server.address, timeouts, credentials.as_ref()).map_err(|error| Error::Network {
            server: server.address.to_string(),
            error: format!(
                "{error}; it stays down (rejoin policy {})",
                policy.rejoin.as_str()
            ),
        })?;
    }
    let warm_until = match policy.rejoin {
        Rejoin::Warm => now_ms() + u64::from(policy.warm_window_s) * 1000,
        _ => 0,
    };
    let reason = match flushed {
        true => format!(
            "rejoined after flush_all ({by}, pid {})",
            std::process::id()
        ),
        false => format!("rejoined without flush ({by}, pid {})", std::process::id()),
    };
    writer.transact(|t| {
        edit::bring_up(&mut t.servers, id, &reason, warm_until, commit_info());
        Ok(())
    })?;
    Ok(Rejoined::Up { flushed })
}
