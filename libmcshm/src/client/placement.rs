//! Placements without a ketama ring: `modula` (libmemcached's default) and `pecl-memcache`
//! (PHP's PECL memcache extension). Each is built per table version from the routed servers, in
//! the router, and answers like the ring does: a key's owner, and the next servers after it.

use crate::hash::KeyHash;
use crate::pecl::PeclContinuum;
use crate::table::{Distribution, Server};

pub(super) enum Placement {
    /// The key's hash modulo the number of `members` (positions in the table, list order).
    Modula(KeyHash, Vec<usize>),
    Pecl(PeclContinuum),
}

impl Placement {
    /// The placement of `members` for `distribution`; `None` for the ketama distributions
    /// (they route with a ring).
    pub(super) fn build(
        distribution: Distribution,
        servers: &[Server],
        members: Vec<usize>,
    ) -> Option<Placement> {
        match distribution {
            Distribution::Modula(hash) => Some(Placement::Modula(hash, members)),
            Distribution::PeclMemcache(hash) => Some(Placement::Pecl(PeclContinuum::build(
                servers, &members, hash,
            ))),
            Distribution::Ketama | Distribution::KetamaSpy | Distribution::KetamaUnweighted(_) => {
                None
            }
        }
    }

    /// The server (position in the table) of `key`; `None` without servers.
    pub(super) fn owner(&self, key: &[u8]) -> Option<usize> {
        match self {
            Placement::Modula(hash, members) => {
                (!members.is_empty()).then(|| members[hash.hash(key) as usize % members.len()])
            }
            Placement::Pecl(continuum) => continuum.owner(key),
        }
    }

    /// The owner of `key` and the servers after it (modula: the next ones of the list; PECL:
    /// along its circle), `n` at most, distinct.
    pub(super) fn along(&self, key: &[u8], n: usize) -> Vec<usize> {
        match self {
            Placement::Modula(hash, members) => {
                if members.is_empty() {
                    return Vec::new();
                }
                let first = hash.hash(key) as usize % members.len();
                (0..n.min(members.len()))
                    .map(|step| members[(first + step) % members.len()])
                    .collect()
            }
            Placement::Pecl(continuum) => continuum.along(key, n),
        }
    }
}
