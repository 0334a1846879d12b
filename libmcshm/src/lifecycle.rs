//! Bringing servers back without stale data: probing a down server, and the rejoin policy
//! (flush, warm, trust) that every path back goes through: `mcadmin up`, the watch daemon, and
//! a client's retry probe.
//!
//! The invariant: a server that was down is marked up only after a successful `flush_all`
//! (unless the domain's rejoin policy is `trust`). While it was down its keys were not written
//! there, so whatever it holds may be stale; after the flush it holds nothing. If the flush
//! fails, it stays down.

use std::path::Path;

use crate::access::Access;
use crate::address::Address;
use crate::conn::{Conn, Timeouts};
use crate::domain::Domain;
use crate::edit;
use crate::error::{Error, Result};
use crate::proto::{Reply, Request, StoreVerb};
use crate::registry::{Commit, FileOwnership, LockWait, Registry, commit_info, now_ms};
use crate::table::{Rejoin, Server, State, Table, fit_reason};

/// One round trip (`version`), and with `check_key` a set and get of that key (the seed
/// thread's checkState). `Err` names what failed.
pub fn health_check(
    address: &Address,
    timeouts: Timeouts,
    check_key: Option<&[u8]>,
    access: &Access,
) -> Result<(), String> {
    let mut conn =
        Conn::connect_as(address, timeouts, access).map_err(|e| format!("connect: {e}"))?;
    let mut ask = |request: Request<'_>| -> Result<Reply, String> {
        conn.ask(&request).map_err(|e| conn.explain(&e))
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

/// `flush_all` on one server (with the domain's TLS and credentials, `access`); `Err` names what
/// failed.
pub fn flush(address: &Address, timeouts: Timeouts, access: &Access) -> Result<(), String> {
    let mut conn =
        Conn::connect_as(address, timeouts, access).map_err(|e| format!("connect: {e}"))?;
    match conn
        .ask(&Request::FlushAll { delay: None })
        .map_err(|e| conn.explain(&e))?
    {
        Reply::Ok => Ok(()),
        other => Err(format!("flush_all refused: {other:?}")),
    }
}

/// What [`rejoin`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejoined {
    /// Marked up; `flushed` says whether it was flushed first.
    Up { flushed: bool },
    /// It was draining and an operator brought it up: the drain is cancelled.
    DrainCancelled,
    /// It was not down (up, draining, or gone from the table), or it is held down by an
    /// operator and this is not one: nothing done.
    NotDown,
}

/// Who brings servers back, and how ([`rejoin_all`]).
#[derive(Clone, Copy, Debug)]
pub struct Rejoiner<'a> {
    /// Named in the new reason ("mcadmin up", "retry probe", "mcadmin watch").
    pub by: &'a str,
    /// An operator's `up`: brings back servers held down by an operator too. Automatic paths
    /// (retry probe, watch, fleet agent) leave held servers down.
    pub operator: bool,
    /// The operator's override: mark up without contacting the server (`up --no-flush`).
    pub skip_flush: bool,
    pub timeouts: Timeouts,
}

/// Runs a retry probe the router handed out: brings its server back through the domain's
/// rejoin policy if it answers (the rejoin's flush, or `version` round trip, is the probe: one
/// connection per lease).
pub fn run_probe(probe: mcshm_route::RetryProbe, timeouts: Timeouts) {
    if let Ok(mut writer) = probe.open_writer() {
        let _ = rejoin(
            &mut writer,
            probe.server_id(),
            timeouts,
            false,
            "retry probe",
        );
    }
}

/// Brings the down server with `id` back through the domain's rejoin policy (see
/// [`rejoin_all`]).
pub fn rejoin(
    writer: &mut Registry,
    id: u32,
    timeouts: Timeouts,
    skip_flush: bool,
    by: &str,
) -> Result<Rejoined> {
    let how = Rejoiner {
        by,
        operator: false,
        skip_flush,
        timeouts,
    };
    Ok(rejoin_all(writer, &[id], how)?.remove(0))
}

/// Brings the down servers with `ids` back through the domain's rejoin policy: flush each
/// (`trust`: no contact; `skip_flush`: no contact), then mark them all up in one transaction
/// (one version), with `by` in the reason; with `operator`, draining servers among `ids` stop
/// draining in the same version. A failed flush leaves every one of them as it was and is an
/// error naming the server. One answer per id.
pub fn rejoin_all(writer: &mut Registry, ids: &[u32], how: Rejoiner<'_>) -> Result<Vec<Rejoined>> {
    let snapshot = writer.current_snapshot()?;
    let policy = snapshot.policy;
    let flushed = policy.rejoin != Rejoin::Trust && !how.skip_flush;
    let due: Vec<&crate::table::Server> = ids
        .iter()
        .filter_map(|id| {
            snapshot
                .servers
                .iter()
                .find(|s| s.id == *id && s.may_rejoin(how.operator))
        })
        .collect();
    let draining = how.operator
        && ids.iter().any(|id| {
            snapshot
                .servers
                .iter()
                .any(|s| s.id == *id && s.state == State::Draining)
        });
    if due.is_empty() && !draining {
        return Ok(vec![Rejoined::NotDown; ids.len()]);
    }
    if flushed {
        let dir = writer.path().parent().unwrap_or(std::path::Path::new("."));
        let access = crate::access::Access::load(dir, writer.domain())?;
        for server in &due {
            flush(&server.address, how.timeouts, &access).map_err(|error| Error::Network {
                server: server.address.to_string(),
                error: format!(
                    "{error}; it stays down (rejoin policy {})",
                    policy.rejoin.as_str()
                ),
            })?;
        }
    }
    let warm_until_ms = match policy.rejoin {
        Rejoin::Warm => now_ms() + u64::from(policy.warm_window_s) * 1000,
        _ => 0,
    };
    let reason = match flushed {
        true => format!(
            "rejoined after flush_all ({}, pid {})",
            how.by,
            std::process::id()
        ),
        false => format!(
            "rejoined without flush ({}, pid {})",
            how.by,
            std::process::id()
        ),
    };
    let rejoining = edit::Rejoining {
        reason: &reason,
        warm_until_ms,
        flushed,
        operator: how.operator,
    };
    let mut answers = vec![Rejoined::NotDown; ids.len()];
    writer.transact(|t| {
        for (answer, id) in answers.iter_mut().zip(ids) {
            let (rejoin, cancel) = (
                edit::Transition::Rejoin(rejoining),
                edit::Transition::CancelDrain { by: how.by },
            );
            if edit::transition(&mut t.servers, *id, rejoin, commit_info()) {
                *answer = Rejoined::Up { flushed };
            } else if how.operator && edit::transition(&mut t.servers, *id, cancel, commit_info()) {
                *answer = Rejoined::DrainCancelled;
            }
        }
        Ok(())
    })?;
    Ok(answers)
}

/// What [`prepare_load`] found: the servers it flushed, and those it could not.
#[derive(Debug, Default)]
pub struct LoadPlan {
    /// Joined or came back up, flushed first: they hold no strays.
    pub flushed: Vec<crate::address::Address>,
    /// Could not be flushed: loaded down (not held: the retry probe flushes them when they
    /// answer), with the error.
    pub unflushed: Vec<(crate::address::Address, String)>,
}

/// `mcadmin load` as transitions: a server the list has up that `current` does not have (it
/// joins) or has down (it rejoins) is flushed first, as `add` and `up` flush; one that cannot
/// be flushed is loaded down after failures instead, so that nothing stale is served. With no
/// `current` (a new domain: the boot-time replay of the list) the servers are taken as the list
/// says, as their state before this host lost its table.
pub fn prepare_load(
    current: Option<&[crate::table::Server]>,
    loaded: &mut crate::table::Table,
    timeouts: Timeouts,
    access: &Access,
) -> LoadPlan {
    let mut plan = LoadPlan::default();
    let Some(current) = current else {
        return plan;
    };
    if loaded.policy.rejoin == Rejoin::Trust {
        return plan;
    }
    for server in &mut loaded.servers {
        let was = current
            .iter()
            .find(|c| c.address.same_server(&server.address));
        let joins = server.state == State::Up && was.is_none_or(|c| c.state == State::Down);
        if !joins {
            continue;
        }
        match flush(&server.address, timeouts, access) {
            Ok(()) => {
                server.strays_since = 0;
                plan.flushed.push(server.address.clone());
            }
            Err(error) => {
                server.state = State::Down;
                server.held = false;
                let tail = "); retried automatically";
                server.reason = fit_reason("load: cannot flush it (", &error, tail);
                plan.unflushed.push((server.address.clone(), error));
            }
        }
    }
    plan
}

impl LoadPlan {
    /// Makes `table` the loaded list (see [`edit::merge_loaded`]): the servers flushed for the
    /// load start with no strays.
    pub fn apply(&self, table: &mut crate::table::Table, loaded: &crate::table::Table) {
        table.servers = edit::merge_loaded(&table.servers, &loaded.servers, commit_info());
        for server in &mut table.servers {
            if self.flushed.iter().any(|a| a.same_server(&server.address)) {
                server.strays_since = 0;
            }
        }
        table.policy = loaded.policy;
    }
}

/// `mcadmin add`: flushes the servers of `new` that `present` (the domain's servers) does not
/// have: a server that joins may hold items from an earlier time in this domain, which would be
/// served stale. The first that cannot be flushed is the error (nothing is added then).
pub fn flush_joining(
    present: &[Server],
    new: &[Server],
    timeouts: Timeouts,
    access: &Access,
) -> Result<()> {
    for server in new {
        if present
            .iter()
            .any(|p| p.address.same_server(&server.address))
        {
            continue;
        }
        flush(&server.address, timeouts, access).map_err(|error| Error::Network {
            server: server.address.to_string(),
            error: format!(
                "{error}: a server is flushed before it joins, so that it serves nothing stale; nothing changed (add it with --down to flush it when it comes up, or --no-flush if it holds nothing)"
            ),
        })?;
    }
    Ok(())
}

/// `mcadmin up`: brings `addresses` back, all in one version: a down server through the
/// domain's rejoin policy (flushed first unless the policy is trust or `skip_flush`; held
/// servers too: this is an operator), a draining one by cancelling its drain. The commit says
/// whether anything changed.
pub fn bring_up(
    registry: &mut Registry,
    addresses: &[Address],
    skip_flush: bool,
    timeouts: Timeouts,
) -> Result<Commit> {
    let snapshot = registry.current_snapshot()?;
    let ids = addresses
        .iter()
        .map(|address| Ok(snapshot.server(address)?.id))
        .collect::<Result<Vec<u32>>>()?;
    let how = Rejoiner {
        by: "mcadmin up",
        operator: true,
        skip_flush,
        timeouts,
    };
    rejoin_all(registry, &ids, how)?;
    let version = registry.version();
    Ok(Commit {
        version,
        changed: version != snapshot.version,
        published_ns: 0,
    })
}

/// Where and how [`load`] writes: the domain, the mode and group of a file it creates, and
/// how long it waits for another writer.
pub struct LoadTarget<'a> {
    pub dir: &'a Path,
    pub domain: &'a Domain,
    pub ownership: FileOwnership,
    pub lock_wait: LockWait,
}

/// `mcadmin load`: makes `loaded` the domain's table however its file is, flushing first the
/// servers it brings in or back (see [`prepare_load`]; `no_flush`: none). One transaction when
/// the file reads; a file whose committed table cannot be read is replaced whole
/// ([`Registry::replace`]); a file whose header is unusable is made anew
/// ([`Registry::recreate`]: what its servers held is unknown, so every server the list has up
/// is flushed). Returns the commit and which servers were and were not flushed.
pub fn load(
    target: &LoadTarget<'_>,
    loaded: &mut Table,
    no_flush: bool,
    timeouts: Timeouts,
    access: &Access,
) -> Result<(Commit, LoadPlan)> {
    let (dir, domain) = (target.dir, target.domain);
    let exists = domain.path_in(dir).exists();
    let mut registry = match Registry::open_writer_with(dir, domain, true, target.ownership) {
        Err(Error::Corrupt { .. }) => {
            let known = if no_flush { None } else { Some(&[][..]) };
            let plan = prepare_load(known, loaded, timeouts, access);
            let mut table = Table::default();
            plan.apply(&mut table, loaded);
            return Ok((Registry::recreate(dir, domain, &table)?, plan));
        }
        other => other?,
    };
    registry.set_lock_wait(target.lock_wait);
    let current = match registry.current_snapshot() {
        _ if no_flush => None,
        Ok(snapshot) if exists => Some(snapshot.servers.clone()),
        Ok(_) => None,
        Err(_) => Some(Vec::new()),
    };
    let plan = prepare_load(current.as_deref(), loaded, timeouts, access);
    let commit = match registry.transact(|t| {
        plan.apply(t, loaded);
        Ok(())
    }) {
        Err(Error::Corrupt { .. }) => {
            let mut table = Table::default();
            plan.apply(&mut table, loaded);
            registry.replace(&table)?
        }
        other => other?,
    };
    Ok((commit, plan))
}
