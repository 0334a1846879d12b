//! Moving buckets between servers (`mcadmin buckets move`, `balance`, `finish`): a `vbucket`
//! domain's change of owners, made as a drain is, a bucket at a time rather than a server.
//!
//! The moves are first staged in the table: the bucket map's forward rows name each moving
//! bucket's new owner (libvbucket's `vBucketMapForward`). From that version on, every client
//! routes the bucket's keys to the new owner, fills a miss there from the old owner and deletes
//! the old copy (the router's draining owner, see `mcshm_route`), and the old owner is marked
//! as holding strays (`mcshm_table::coherence`), so no read is stale. Meanwhile [`Rebucket`]
//! lists each old owner's keys (`lru_crawler metadump all`) and moves those of the moving
//! buckets at a chosen rate, keeping flags and TTL, never over a newer value; then
//! [`completed`] makes the forward rows the rows. A move that stops half-way leaves the
//! rows staged, and correct: run it again to finish.

use std::path::Path;
use std::sync::Arc;

use crate::Snapshot;
use crate::access::Access;
use crate::address::Address;
use crate::client::{Client, Moved};
use crate::conn::Timeouts;
use crate::domain::Domain;
use crate::drain::DrainCounts;
use crate::error::{Error, Result};
use crate::hash::KeyHash;
use crate::metadump::list_keys;
use crate::placement::BucketMap;
use crate::placement::Distribution;
use crate::placement::buckets::key_bucket;
use crate::table::Table;

/// One key to move: from which server (position) of the staged table.
struct Pending {
    from: usize,
    key: Vec<u8>,
}

/// The keys of the buckets a staged table moves, listed once, moved one by one.
pub struct Rebucket {
    client: Client,
    staged: Arc<Snapshot>,
    keys: Vec<Pending>,
    sources: Vec<Address>,
    counts: DrainCounts,
}

/// A staged table's bucket map, or the error saying the domain has none.
pub fn map_of(snapshot: &Snapshot) -> Result<&Arc<BucketMap>> {
    vbucket_of(snapshot).map(|(map, _)| map)
}

/// A vbucket domain's bucket map and key hash, or the error saying the domain is not one.
pub fn vbucket_of(snapshot: &Snapshot) -> Result<(&Arc<BucketMap>, KeyHash)> {
    match (&snapshot.buckets, snapshot.policy.distribution) {
        (Some(map), Distribution::VBucket(hash)) => Ok((map, hash)),
        _ => Err(not_vbucket(&snapshot.domain, &snapshot.policy.distribution)),
    }
}

/// The error of a bucket command on a domain without a bucket map, saying how to make one.
pub fn not_vbucket(domain: &str, distribution: &Distribution) -> Error {
    Error::BadBuckets {
        why: format!(
            "domain '{domain}' is not a vbucket domain (distribution {}): `mcadmin buckets balance` makes it one",
            distribution.as_str()
        ),
    }
}

impl Rebucket {
    /// Lists the keys of the buckets the domain's current table moves (its forward rows), on
    /// each server they leave that is not down (a down server's keys cannot be read: its
    /// buckets move empty).
    pub fn start(dir: &Path, domain: &Domain, timeouts: Timeouts) -> Result<Rebucket> {
        let mut client = Client::for_domain(dir, domain, timeouts)?;
        let staged = client.snapshot()?;
        let (map, hash) = vbucket_of(&staged)?;
        let map = map.clone();
        let mut sources: Vec<usize> = (0..map.buckets())
            .filter_map(|b| map.moving_from(b))
            .collect();
        sources.sort_unstable();
        sources.dedup();
        let access = Access::load(dir, domain)?;
        let prefix = staged.policy.prefix;
        let listed = staged.servers.len();
        let mut keys = Vec::new();
        // A down source's keys cannot be read: its buckets move empty (it is flushed, or its
        // missed writes replayed, before it serves again).
        sources.retain(|&from| staged.servers[from].state != crate::State::Down);
        for &from in &sources {
            let server = &staged.servers[from];
            let found =
                list_keys(&server.address, timeouts, &access).map_err(|error| Error::Network {
                    server: server.address.to_string(),
                    error,
                })?;
            keys.extend(
                found
                    .iter()
                    .filter_map(|k| prefix.strip(k))
                    .filter(|k| {
                        let (_, b) = key_bucket(&map, hash, listed, k);
                        map.moving_from(b) == Some(from)
                    })
                    .map(|k| Pending {
                        from,
                        key: k.to_vec(),
                    }),
            );
        }
        let sources = sources
            .iter()
            .map(|&i| staged.servers[i].address.clone())
            .collect();
        Ok(Rebucket {
            client,
            staged,
            keys,
            sources,
            counts: DrainCounts::default(),
        })
    }

    /// The table the moves were staged in.
    pub fn staged(&self) -> &Arc<Snapshot> {
        &self.staged
    }

    /// How many keys there are to move.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The servers buckets leave.
    pub fn sources(&self) -> &[Address] {
        &self.sources
    }

    /// Key `n` (named without the domain's prefix).
    pub fn key(&self, n: usize) -> &[u8] {
        &self.keys[n].key
    }

    /// Moves key `n` to its bucket's new owner (flags and TTL kept, never over a newer value)
    /// and deletes it from the old one; counted either way.
    pub fn move_key(&mut self, n: usize) -> Result<Moved> {
        let pending = &self.keys[n];
        let from = self.staged.servers[pending.from].address.clone();
        let moved = self.client.move_key(&from, &pending.key);
        self.counts.count(&moved);
        moved
    }

    pub fn counts(&self) -> DrainCounts {
        self.counts
    }
}

/// The map with its staged moves completed, when `current`'s map is still `staged`'s (nobody
/// changed the map during the move); the error says to run the move again otherwise.
pub fn completed(current: &Table, staged: &Snapshot) -> Result<Arc<BucketMap>> {
    let then = map_of(staged)?;
    let now = current.buckets.as_ref().ok_or_else(|| Error::BadBuckets {
        why: "the domain is no longer a vbucket domain".into(),
    })?;
    let same_servers = current.servers.len() == staged.servers.len()
        && current
            .servers
            .iter()
            .zip(&staged.servers)
            .all(|(a, b)| a.address.same_server(&b.address));
    if now != then || !same_servers {
        return Err(Error::BadBuckets {
            why: "the bucket map or the server list changed while the keys moved: run `mcadmin buckets finish` to move what the new map stages".into(),
        });
    }
    let mut done = (**now).clone();
    done.complete();
    Ok(Arc::new(done))
}
