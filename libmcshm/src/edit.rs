//! The changes `mcadmin` makes to a server list, as pure functions run inside
//! [`Registry::transact`](crate::Registry::transact). Each either applies completely or fails
//! with nothing changed (the transaction then publishes nothing).

use std::collections::{HashMap, HashSet};

use crate::address::{Address, Identity};
use crate::error::{Error, Result};
use crate::format::CommitInfo;
use crate::table::{Server, State};

/// Appends `new` servers (order kept: it is part of how clients hash). A server already present
/// is an error, or skipped with `if_missing`; one given twice in `new` is an error naming it
/// (skipped with `if_missing`). `new` servers get `actor` as their state change. Linear in the
/// number of servers (a hash set of identities).
pub fn add(
    servers: &mut Vec<Server>,
    new: &[Server],
    if_missing: bool,
    actor: CommitInfo,
    domain: &str,
) -> Result<()> {
    let mut added = Vec::with_capacity(new.len());
    {
        let present: HashSet<Identity<'_>> = servers.iter().map(|s| s.address.identity()).collect();
        let mut given: HashSet<Identity<'_>> = HashSet::with_capacity(new.len());
        for server in new {
            let identity = server.address.identity();
            if present.contains(&identity) {
                if if_missing {
                    continue;
                }
                return Err(Error::ServerExists {
                    server: server.address.to_string(),
                    domain: domain.to_string(),
                });
            }
            if !given.insert(identity) {
                if if_missing {
                    continue;
                }
                return Err(Error::invalid(
                    "server",
                    &server.address.to_string(),
                    "listed twice",
                ));
            }
            let mut server = server.clone();
            stamp(&mut server, actor);
            server.id = 0; // the writer assigns it
            added.push(server);
        }
    }
    servers.extend(added);
    Ok(())
}

/// Removes servers; an absent one is an error, or skipped with `if_present`. Linear in the
/// number of servers.
pub fn delete(
    servers: &mut Vec<Server>,
    addresses: &[Address],
    if_present: bool,
    domain: &str,
) -> Result<()> {
    let gone: HashSet<Identity<'_>> = addresses.iter().map(Address::identity).collect();
    {
        let present: HashSet<Identity<'_>> = servers.iter().map(|s| s.address.identity()).collect();
        if !if_present
            && let Some(absent) = addresses.iter().find(|a| !present.contains(&a.identity()))
        {
            return Err(missing(absent, domain));
        }
    }
    servers.retain(|s| !gone.contains(&s.address.identity()));
    Ok(())
}

/// Sets the state (and reason) of servers, as an operator does (`mcadmin down`, fleet verbs):
/// a server set down is *held* down (no automatic retry until an operator brings it up). The
/// since/by fields change only when the state does.
pub fn set_state(
    servers: &mut [Server],
    addresses: &[Address],
    state: State,
    reason: &str,
    actor: CommitInfo,
    domain: &str,
) -> Result<()> {
    for address in addresses {
        let server = find_mut(servers, address, domain)?;
        if server.state != state {
            server.state = state;
            stamp(server, actor);
        }
        server.held = state == State::Down;
        server.reason = reason.to_string();
    }
    Ok(())
}

/// Marks the server with `id` down with `reason` after failures, if it is (still) in the table
/// and up; a client that hit the failure limit (or `watch`) calls this, so that several doing
/// so at once make one change. It is not held: the retry probe may bring it back.
pub fn mark_down(servers: &mut [Server], id: u32, reason: &str, actor: CommitInfo) {
    if let Some(server) = servers
        .iter_mut()
        .find(|s| s.id == id && s.state == State::Up)
    {
        server.state = State::Down;
        server.held = false;
        server.reason = reason.to_string();
        stamp(server, actor);
    }
}

/// Marks the down server with `id` up (a rejoin), with `reason` and the warm-up deadline
/// (0: none). `flushed`: its items were flushed just before, so it holds no stray copies.
/// Nothing if it is not down any more. A held server comes up only with `operator`.
pub fn bring_up(servers: &mut [Server], id: u32, rejoin: Rejoining<'_>, actor: CommitInfo) -> bool {
    let Some(server) = servers
        .iter_mut()
        .find(|s| s.id == id && s.state == State::Down && (rejoin.operator || !s.held))
    else {
        return false;
    };
    server.state = State::Up;
    server.held = false;
    server.reason = rejoin.reason.to_string();
    server.warm_until_ms = rejoin.warm_until_ms;
    if rejoin.flushed {
        server.strays_since = 0;
    }
    stamp(server, actor);
    true
}

/// Cancels the drain of the server with `id` (an operator's `up`): it is up again, its keys
/// stay where they are. `false` when it is not draining.
pub fn cancel_drain(servers: &mut [Server], id: u32, by: &str) -> bool {
    let Some(server) = servers
        .iter_mut()
        .find(|s| s.id == id && s.state == State::Draining)
    else {
        return false;
    };
    server.state = State::Up;
    server.reason = format!("drain cancelled ({by})");
    true
}

/// Starts draining the up server with `id` (`mcadmin drain`); `false` when it is not up.
pub fn start_drain(servers: &mut [Server], id: u32, reason: &str, actor: CommitInfo) -> bool {
    let Some(server) = servers
        .iter_mut()
        .find(|s| s.id == id && s.state == State::Up)
    else {
        return false;
    };
    server.state = State::Draining;
    server.reason = reason.to_string();
    stamp(server, actor);
    true
}

/// Clears the strays mark of the server with `id` after a sweep that began at table version
/// `swept_at` (`mcadmin settle`): kept when a later version marked it again (that change's
/// strays were not swept). `true` when cleared.
pub fn clear_strays(servers: &mut [Server], id: u32, swept_at: u64) -> bool {
    match servers.iter_mut().find(|s| s.id == id) {
        Some(server) if server.strays_since != 0 && server.strays_since <= swept_at => {
            server.strays_since = 0;
            true
        }
        _ => false,
    }
}

/// How a down server comes back ([`bring_up`]).
#[derive(Clone, Copy, Debug)]
pub struct Rejoining<'a> {
    pub reason: &'a str,
    /// Until when misses are filled from the interim owner (0: no warm-up).
    pub warm_until_ms: u64,
    /// It was flushed just before (not `trust`, not `--no-flush`).
    pub flushed: bool,
    /// An operator brings it back (`mcadmin up`): a held server comes up too.
    pub operator: bool,
}

/// Changes the weight and/or retry interval of one server.
pub fn modify(
    servers: &mut [Server],
    address: &Address,
    weight: Option<u16>,
    retry_interval: Option<i32>,
    domain: &str,
) -> Result<()> {
    let server = find_mut(servers, address, domain)?;
    if let Some(weight) = weight {
        server.weight = weight;
    }
    if let Some(retry) = retry_interval {
        server.retry_interval = retry;
    }
    Ok(())
}

/// The list `mcadmin load` publishes: `loaded` in its order; a server whose state is the same as
/// in `current` keeps its since/by fields, the others get `actor`.
pub fn merge_loaded(current: &[Server], loaded: &[Server], actor: CommitInfo) -> Vec<Server> {
    let by_identity: HashMap<_, &Server> =
        current.iter().map(|s| (s.address.identity(), s)).collect();
    loaded
        .iter()
        .map(|server| {
            let mut server = server.clone();
            let old = by_identity.get(&server.address.identity());
            if let Some(old) = old {
                // The same server: keep its id (and so its failure counter).
                server.id = old.id;
                server.live = old.live;
            }
            if let Some(old) = old {
                // Whether it may hold strays is a fact about the server, not the list.
                server.strays_since = server.strays_since.max(old.strays_since);
            }
            match old.filter(|old| old.state == server.state) {
                Some(old) => {
                    server.since_ms = old.since_ms;
                    server.changed_by_pid = old.changed_by_pid;
                    server.changed_by_uid = old.changed_by_uid;
                }
                None => stamp(&mut server, actor),
            }
            server
        })
        .collect()
}

fn stamp(server: &mut Server, actor: CommitInfo) {
    server.since_ms = actor.changed_ms;
    server.changed_by_pid = actor.pid;
    server.changed_by_uid = actor.uid;
}

fn find_mut<'a>(
    servers: &'a mut [Server],
    address: &Address,
    domain: &str,
) -> Result<&'a mut Server> {
    servers
        .iter_mut()
        .find(|s| s.address.same_server(address))
        .ok_or_else(|| missing(address, domain))
}

fn missing(address: &Address, domain: &str) -> Error {
    Error::NoServer {
        server: address.to_string(),
        domain: domain.to_string(),
    }
}
