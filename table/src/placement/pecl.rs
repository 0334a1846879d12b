//! The placement of PHP's PECL memcache extension (`memcache.hash_strategy=consistent`), the
//! client most PHP sites run, so that C daemons on mcshm and PHP pages on that extension agree on
//! every key during a migration (tests/it/proxy_clients.rs checks it against the real extension).
//!
//! Each server gets `160 × weight` points (weights as `addServer` takes them, not normalised),
//! the hash of `host:port-i` for i = 0, 1, …; the points are sorted, and the circle is cut into
//! 1 024 buckets: bucket b belongs to the first point at or after `b × (2³² − 1) / 1024`. A key
//! goes to the bucket of its hash modulo 1 024 (not to the point after its hash: the extension
//! quantises), with `memcache.hash_function` crc32 (the default) or fnv (FNV-1a, 32 bits, over
//! signed chars).

use super::Member;
use crate::hash::PeclHash;

/// Points per unit of weight (the extension's `MMC_CONSISTENT_POINTS`).
const POINTS_PER_WEIGHT: usize = 160;
/// Buckets of the circle (`MMC_CONSISTENT_BUCKETS`).
const BUCKETS: usize = 1024;

/// Where a key lands on a [`PeclContinuum`] ([`PeclContinuum::bucket_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeclBucket {
    /// The key's hash (crc32 or fnv).
    pub hash: u32,
    /// `hash % 1024`.
    pub bucket: usize,
    /// The value of the bucket's point: the first at or after `bucket × (2³² − 1) / 1024`.
    pub point: u32,
    /// The point's server (position in the table).
    pub owner: usize,
}

/// A PECL memcache continuum over a list of servers (positions in the table).
#[derive(Clone, Debug, Default)]
pub struct PeclContinuum {
    hash: PeclHash,
    /// (value, server position), sorted.
    points: Vec<(u32, usize)>,
    /// Per bucket, the index of its point in `points`.
    buckets: Vec<usize>,
}

impl PeclContinuum {
    /// How many points the continuum has.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether it has no point (no members).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The continuum of `members`, hashed with `hash`.
    pub fn build(members: &[Member<'_>], hash: PeclHash) -> Self {
        let mut points = Vec::new();
        for member in members {
            let address = member.address;
            let stem = format!("{}:{}-", address.host(), address.port().unwrap_or(0));
            for n in 0..usize::from(member.weight) * POINTS_PER_WEIGHT {
                points.push((hash.hash(format!("{stem}{n}").as_bytes()), member.position));
            }
        }
        points.sort_by_key(|&(value, _)| value);
        let step = u32::MAX / BUCKETS as u32;
        let buckets = if points.is_empty() {
            Vec::new()
        } else {
            (0..BUCKETS as u32)
                .map(|b| {
                    let at = points.partition_point(|&(v, _)| v < step * b);
                    if at == points.len() { 0 } else { at }
                })
                .collect()
        };
        PeclContinuum {
            hash,
            points,
            buckets,
        }
    }

    /// The server (position in the table) of `key`; `None` without servers.
    pub fn owner(&self, key: &[u8]) -> Option<usize> {
        self.bucket_of(key).map(|b| b.owner)
    }

    /// Where `key` lands: its hash, its bucket (the hash modulo 1 024), the bucket's point
    /// and its server; `None` without servers.
    pub fn bucket_of(&self, key: &[u8]) -> Option<PeclBucket> {
        let hash = self.hash.hash(key);
        let bucket = hash as usize % BUCKETS;
        let &at = self.buckets.get(bucket)?;
        let (point, owner) = self.points[at];
        Some(PeclBucket {
            hash,
            bucket,
            point,
            owner,
        })
    }

    /// The first `n` distinct servers along the circle from `key`'s bucket, owner first.
    pub fn along(&self, key: &[u8], n: usize) -> Vec<usize> {
        let mut found: Vec<usize> = Vec::with_capacity(n);
        let Some(&start) = self.buckets.get(self.hash.hash(key) as usize % BUCKETS) else {
            return found;
        };
        for step in 0..self.points.len() {
            let server = self.points[(start + step) % self.points.len()].1;
            if !found.contains(&server) {
                found.push(server);
                if found.len() == n {
                    break;
                }
            }
        }
        found
    }
}
