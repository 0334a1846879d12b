//! Fences on the servers: raising a domain's fence before a fleet commit, and reading one.
//!
//! The model (the key, its value, what a fence read means for a host) is the table crate's
//! [`mcshm_table::fence`], re-exported here; this module talks to memcached. A fence only ever
//! rises: [`raise`] is a compare-and-swap maximum (`gets`, then `add` when there is none or
//! `cas` when it is lower), so two commits raising fences at once both leave the higher, and a
//! fence raised by a commit cannot be lowered by another's older one.
//!
//! Only a fleet commit raises fences (`mcshm_fleet::store`, before its etcd put): a host that
//! finds a fence missing or above its table never writes one.

use std::thread;

pub use mcshm_table::fence::*;

use crate::access::Access;
use crate::address::Address;
use crate::conn::{Conn, Timeouts};
use crate::proto::{Reply, Request, StoreVerb};

/// Compare-and-swap rounds before a raise gives up (each lost only to another raise or to a
/// concurrent eviction, both rare).
const RAISE_ROUNDS: usize = 8;

/// Servers raised at once, each on a thread of its own.
const PARALLEL: usize = 32;

/// What a raise found and left: the fence before, and whether this raise wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raised {
    /// The fence found first (`None`: none, or a value no mcshm wrote).
    pub before: Option<u64>,
    /// Whether this raise wrote the fence (false: it was already at or above the epoch).
    pub wrote: bool,
}

/// The fence `key` on `address`, if any (`None`: missing, or a value no mcshm wrote).
pub fn read(
    address: &Address,
    key: &[u8],
    timeouts: Timeouts,
    access: &Access,
) -> Result<Option<u64>, String> {
    let mut conn = Conn::connect_as(address, timeouts, access).map_err(|e| e.to_string())?;
    Ok(fetch(&mut conn, key)?.and_then(|(value, _)| value))
}

/// Raises the fence `key` on `address` to at least `epoch`.
pub fn raise(
    address: &Address,
    key: &[u8],
    epoch: u64,
    timeouts: Timeouts,
    access: &Access,
) -> Result<Raised, String> {
    let mut conn = Conn::connect_as(address, timeouts, access).map_err(|e| e.to_string())?;
    let value = encode_value(epoch);
    let mut first = None;
    for round in 0..RAISE_ROUNDS {
        let found = fetch(&mut conn, key)?;
        let before = found.and_then(|(value, _)| value);
        if round == 0 {
            first = before;
        }
        let verb = match found {
            Some((Some(now), _)) if now >= epoch => {
                return Ok(Raised {
                    before: first,
                    wrote: false,
                });
            }
            Some((_, cas)) => StoreVerb::Cas(cas),
            None => StoreVerb::Add,
        };
        let request = Request::Store {
            verb,
            key,
            flags: 0,
            exptime: 0,
            value: &value,
        };
        match conn.ask(&request).map_err(|e| conn.explain(&e))? {
            Reply::Stored => {
                return Ok(Raised {
                    before: first,
                    wrote: true,
                });
            }
            // Another raise (or an eviction) came in between: look again.
            Reply::NotStored | Reply::Exists | Reply::NotFound => continue,
            other => return Err(format!("raising the fence: the server answered {other:?}")),
        }
    }
    Err(format!(
        "raising the fence: {RAISE_ROUNDS} compare-and-swap rounds lost to other writers"
    ))
}

/// [`raise`] on every server of `addresses`, 32 at once; each server's
/// result, in the order given.
pub fn raise_all(
    addresses: &[Address],
    key: &[u8],
    epoch: u64,
    timeouts: Timeouts,
    access: &Access,
) -> Vec<(Address, Result<Raised, String>)> {
    let mut results = Vec::with_capacity(addresses.len());
    for chunk in addresses.chunks(PARALLEL) {
        thread::scope(|scope| {
            let running: Vec<_> = chunk
                .iter()
                .map(|address| scope.spawn(move || raise(address, key, epoch, timeouts, access)))
                .collect();
            for (address, handle) in chunk.iter().zip(running) {
                let result = handle
                    .join()
                    .unwrap_or_else(|_| Err("raising the fence panicked".into()));
                results.push((address.clone(), result));
            }
        });
    }
    results
}

/// The fence item (`gets`): its epoch (`None` for a value no mcshm wrote) and cas unique;
/// `None` when the server has no such item.
fn fetch(conn: &mut Conn, key: &[u8]) -> Result<Option<(Option<u64>, u64)>, String> {
    let keys = [key];
    let request = Request::Get {
        keys: &keys,
        cas: true,
        touch: None,
    };
    match conn.ask(&request).map_err(|e| conn.explain(&e))? {
        Reply::Values(items) => Ok(items
            .into_iter()
            .find(|item| item.key == key)
            .map(|item| (parse_value(&item.value), item.cas.unwrap_or(0)))),
        other => Err(format!("reading the fence: the server answered {other:?}")),
    }
}
