//! Retiring a server gently (`mcadmin drain`): while a server is draining,
//! clients send its keys to their new owner and move what they still find on it; meanwhile the
//! operator's drain enumerates its keys (`lru_crawler metadump all`) and moves them at a chosen
//! rate, keeping each key's flags and remaining TTL (`mg KEY t f v`), then removes the server.

use std::path::Path;

use crate::address::Address;
use crate::client::{Client, Moved};
use crate::conn::Timeouts;
use crate::domain::Domain;
use crate::edit::{self, Transition};
use crate::error::{Error, Result};
use crate::metadump::list_keys;
use crate::prefix::KeyPrefix;
use crate::registry::{Commit, Registry};
use crate::table::{CommitInfo, State};

/// A drain in progress, the workflow of `mcadmin drain` (the caller paces it and shows its
/// progress): [`Drain::start`] marks the server draining (clients then read a key's new owner
/// first and fall back to the draining server, moving what they find) and lists its keys once;
/// [`Drain::move_key`] moves them one by one; [`Drain::finish`] removes the server once every
/// key has moved. A drain that stops half-way leaves the server draining: starting again
/// resumes it, and `mcadmin up` cancels it.
pub struct Drain {
    registry: Registry,
    client: Client,
    address: Address,
    id: u32,
    prefix: KeyPrefix,
    /// The domain's keys on the server (named without the key prefix, as clients send them).
    keys: Vec<Vec<u8>>,
    outside_prefix: usize,
    counts: DrainCounts,
}

/// What a drain (or a bucket move) did with the keys it moved so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainCounts {
    pub moved: u64,
    /// Already newer on their new owner: only deleted from the draining server.
    pub kept: u64,
    /// Gone from the draining server (expired, evicted, or moved by a client).
    pub gone: u64,
    /// Could not be moved (the server stays draining).
    pub failed: u64,
}

impl DrainCounts {
    /// Counts the outcome of one key's move.
    pub fn count(&mut self, moved: &Result<Moved>) {
        match moved {
            Ok(Moved::Moved) => self.moved += 1,
            Ok(Moved::Kept) => self.kept += 1,
            Ok(Moved::Gone) => self.gone += 1,
            Err(_) => self.failed += 1,
        }
    }
}

impl Drain {
    /// Starts draining `address` in `domain` through `writer` (opened for writing in `dir`), or
    /// resumes the drain of a server already draining, and lists its keys. A down server is
    /// refused: its keys cannot be read.
    pub fn start(
        dir: &Path,
        domain: &Domain,
        mut writer: Registry,
        address: &Address,
        timeouts: Timeouts,
    ) -> Result<Drain> {
        let snapshot = writer.current_snapshot()?;
        let server = snapshot.server(address)?;
        let id = server.id;
        // A vbucket domain's keys follow its map: a server the map names keeps its buckets'
        // keys until they move (and cannot leave the list before).
        if let Some(map) = &snapshot.buckets
            && map.names(snapshot.position(address)?)
        {
            return Err(Error::BadBuckets {
                why: format!(
                    "{address} owns or replicates buckets of domain '{domain}': move them off first (`mcadmin buckets move --count N {address} TO`, or `mcadmin down {address}` then `mcadmin buckets balance`), then drain or delete it"
                ),
            });
        }
        match server.state {
            State::Down => {
                return Err(Error::invalid(
                    "server",
                    &address.to_string(),
                    "it is down: its keys cannot be read to move them (bring it up, or `mcadmin delete` it)",
                ));
            }
            State::Up => {
                let reason = format!("draining (mcadmin drain, pid {})", std::process::id());
                writer.transact(|t| {
                    let change = Transition::StartDrain { reason: &reason };
                    edit::transition(&mut t.servers, id, change, CommitInfo::now());
                    Ok(())
                })?;
            }
            State::Draining => {} // resuming
        }
        let access = crate::access::Access::load(dir, domain)?;
        let listed = list_keys(address, timeouts, &access).map_err(|error| Error::Network {
            server: address.to_string(),
            error,
        })?;
        let mut client = Client::for_domain(dir, domain, timeouts)?;
        // With a key prefix, the server's keys carry it: move the domain's (named without it,
        // as the client sends them) and leave keys outside the prefix, which are not the
        // domain's.
        let prefix = client.snapshot()?.policy.prefix;
        let keys: Vec<Vec<u8>> = listed
            .iter()
            .filter_map(|k| prefix.strip(k).map(<[u8]>::to_vec))
            .collect();
        Ok(Drain {
            registry: writer,
            client,
            address: address.clone(),
            id,
            prefix,
            outside_prefix: listed.len() - keys.len(),
            keys,
            counts: DrainCounts::default(),
        })
    }

    /// The domain's keys on the server, in the order they are moved.
    pub fn keys(&self) -> &[Vec<u8>] {
        &self.keys
    }

    /// Keys on the server outside the domain's key prefix (left there: not the domain's).
    pub fn outside_prefix(&self) -> usize {
        self.outside_prefix
    }

    pub fn prefix(&self) -> KeyPrefix {
        self.prefix
    }

    /// Moves key `n` of [`Drain::keys`] to its new owner (flags and remaining TTL kept, never
    /// over a newer value) and deletes it from the draining server; counted either way.
    pub fn move_key(&mut self, n: usize) -> Result<Moved> {
        let moved = self.client.move_key(&self.address, &self.keys[n]);
        self.counts.count(&moved);
        moved
    }

    pub fn counts(&self) -> DrainCounts {
        self.counts
    }

    /// Removes the drained server from the table (if it is still draining: `mcadmin up` may
    /// have cancelled the drain meanwhile). Call it only when no key failed.
    pub fn finish(mut self) -> Result<Commit> {
        let id = self.id;
        self.registry
            .transact(|t| t.remove_servers(|s| s.id == id && s.state == State::Draining))
    }
}
