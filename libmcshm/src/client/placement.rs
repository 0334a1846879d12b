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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Address;
    use crate::hash::PeclHash;

    fn servers(n: usize) -> Vec<Server> {
        (0..n)
            .map(|i| Server::new(Address::parse(&format!("10.0.0.{i}:11211")).unwrap()))
            .collect()
    }

    #[test]
    fn the_ketama_distributions_have_no_placement_of_their_own() {
        let all = servers(3);
        for distribution in [Distribution::Ketama, Distribution::KetamaSpy] {
            assert!(Placement::build(distribution, &all, vec![0, 1, 2]).is_none());
        }
    }

    #[test]
    fn modula_is_the_hash_modulo_the_members_and_walks_the_list() {
        let all = servers(5);
        let members = vec![0, 2, 4];
        let hash = KeyHash::OneAtATime;
        let placement =
            Placement::build(Distribution::Modula(hash), &all, members.clone()).unwrap();
        for key in ["a", "b", "foo", "user:42"] {
            let first = hash.hash(key.as_bytes()) as usize % members.len();
            assert_eq!(placement.owner(key.as_bytes()), Some(members[first]));
            let along = placement.along(key.as_bytes(), 5);
            // Every member once, starting at the owner, in list order.
            assert_eq!(along.len(), 3);
            assert_eq!(along[0], members[first]);
            assert_eq!(along[1], members[(first + 1) % 3]);
            assert_eq!(along[2], members[(first + 2) % 3]);
        }
        let empty = Placement::build(Distribution::Modula(hash), &all, Vec::new()).unwrap();
        assert_eq!(empty.owner(b"a"), None);
        assert!(empty.along(b"a", 2).is_empty());
    }

    #[test]
    fn pecl_owner_is_the_first_server_along_its_circle() {
        let all = servers(4);
        for hash in [PeclHash::Crc32, PeclHash::Fnv] {
            let placement =
                Placement::build(Distribution::PeclMemcache(hash), &all, vec![0, 1, 2, 3]).unwrap();
            let mut owners = std::collections::HashSet::new();
            for n in 0..200 {
                let key = format!("key{n}");
                let owner = placement.owner(key.as_bytes()).unwrap();
                let along = placement.along(key.as_bytes(), 4);
                assert_eq!(along.first(), Some(&owner));
                let distinct: std::collections::HashSet<_> = along.iter().collect();
                assert_eq!(distinct.len(), along.len(), "distinct servers");
                owners.insert(owner);
            }
            assert_eq!(owners.len(), 4, "200 keys reach every server");
        }
    }
}
