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

/// Sets the state (and reason) of servers. The since/by fields change only when the state does.
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
        server.reason = reason.to_string();
    }
    Ok(())
}

/// Marks the server with `id` down with `reason`, if it is (still) in the table and up; a client
/// that hit the failure limit calls this, so that several clients doing so at once make one
/// change.
pub fn mark_down(servers: &mut [Server], id: u32, reason: &str, actor: CommitInfo) {
    if let Some(server) = servers
        .iter_mut()
        .find(|s| s.id == id && s.state == State::Up)
    {
        server.state = State::Down;
        server.reason = reason.to_string();
        stamp(server, actor);
    }
}

/// Marks the down server with `id` up (a rejoin), with `reason` and the warm-up deadline
/// (0: none). Nothing if it is not down any more.
pub fn bring_up(
    servers: &mut [Server],
    id: u32,
    reason: &str,
    warm_until_ms: u64,
    actor: CommitInfo,
) {
    if let Some(server) = servers
        .iter_mut()
        .find(|s| s.id == id && s.state == State::Down)
    {
        server.state = State::Up;
        server.reason = reason.to_string();
        server.warm_until_ms = warm_until_ms;
        stamp(server, actor);
    }
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
