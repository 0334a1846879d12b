//! A [`Locator`]: one table version's placement, built once per version by whoever routes
//! (the router in each process, for servers off the file's shared ring or without one), and
//! asked the two questions every front end asks: a key's owner, and the servers after it.

use super::{Distribution, Member, PeclContinuum, Ring};
use crate::hash::KeyHash;

/// A placement built for a list of members; answers with their positions in the table.
#[derive(Clone, Debug)]
pub enum Locator {
    /// A ketama continuum: ring server `n` is `positions[n]`.
    Ring { ring: Ring, positions: Vec<usize> },
    /// libmemcached's modula: the key's hash modulo the number of members, in list order.
    Modula {
        hash: KeyHash,
        positions: Vec<usize>,
    },
    /// PHP's PECL memcache continuum.
    Pecl(PeclContinuum),
}

impl Locator {
    /// The placement of `members` (in list order) for `distribution`.
    pub fn build(distribution: Distribution, members: &[Member<'_>]) -> Locator {
        let positions = members.iter().map(|m| m.position).collect();
        match distribution {
            Distribution::Modula(hash) => Locator::Modula { hash, positions },
            Distribution::PeclMemcache(hash) => Locator::Pecl(PeclContinuum::build(members, hash)),
            Distribution::Ketama | Distribution::KetamaSpy | Distribution::KetamaUnweighted(_) => {
                Locator::Ring {
                    ring: distribution.ring(members),
                    positions,
                }
            }
        }
    }

    /// The server (position in the table) of `key`; `None` without members.
    pub fn owner(&self, key: &[u8]) -> Option<usize> {
        match self {
            Locator::Ring { ring, positions } => ring.server_for(key).map(|n| positions[n]),
            Locator::Modula { hash, positions } => (!positions.is_empty())
                .then(|| positions[hash.hash(key) as usize % positions.len()]),
            Locator::Pecl(continuum) => continuum.owner(key),
        }
    }

    /// The owner of `key` and the servers after it (ketama and PECL: along the circle; modula:
    /// the next ones of the list), `n` at most, distinct. Stops as soon as it has them.
    pub fn along(&self, key: &[u8], n: usize) -> Vec<usize> {
        match self {
            Locator::Ring { ring, positions } => ring
                .servers_from(key)
                .take(n)
                .map(|m| positions[m])
                .collect(),
            Locator::Modula { hash, positions } => {
                if positions.is_empty() {
                    return Vec::new();
                }
                let first = hash.hash(key) as usize % positions.len();
                (0..n.min(positions.len()))
                    .map(|step| positions[(first + step) % positions.len()])
                    .collect()
            }
            Locator::Pecl(continuum) => continuum.along(key, n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Address;
    use crate::hash::PeclHash;

    fn addresses(n: usize) -> Vec<Address> {
        (0..n)
            .map(|i| Address::parse(&format!("10.0.0.{i}:11211")).unwrap())
            .collect()
    }

    fn members<'a>(all: &'a [Address], positions: &[usize]) -> Vec<Member<'a>> {
        positions
            .iter()
            .map(|&position| Member {
                position,
                address: &all[position],
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn a_ketama_locator_answers_as_its_ring_in_table_positions() {
        let all = addresses(5);
        let positions = [1, 3, 4];
        for distribution in [Distribution::Ketama, Distribution::KetamaSpy] {
            let locator = Locator::build(distribution, &members(&all, &positions));
            let ring = distribution.ring(&members(&all, &positions));
            for key in ["a", "b", "foo", "user:42"] {
                let owner = locator.owner(key.as_bytes()).unwrap();
                assert_eq!(owner, positions[ring.server_for(key.as_bytes()).unwrap()]);
                let along = locator.along(key.as_bytes(), 3);
                assert_eq!(along[0], owner);
            }
        }
    }

    #[test]
    fn modula_is_the_hash_modulo_the_members_and_walks_the_list() {
        let all = addresses(5);
        let positions = vec![0, 2, 4];
        let hash = KeyHash::OneAtATime;
        let placement = Locator::build(Distribution::Modula(hash), &members(&all, &positions));
        for key in ["a", "b", "foo", "user:42"] {
            let first = hash.hash(key.as_bytes()) as usize % positions.len();
            assert_eq!(placement.owner(key.as_bytes()), Some(positions[first]));
            let along = placement.along(key.as_bytes(), 5);
            // Every member once, starting at the owner, in list order.
            assert_eq!(along.len(), 3);
            assert_eq!(along[0], positions[first]);
            assert_eq!(along[1], positions[(first + 1) % 3]);
            assert_eq!(along[2], positions[(first + 2) % 3]);
        }
        let empty = Locator::build(Distribution::Modula(hash), &[]);
        assert_eq!(empty.owner(b"a"), None);
        assert!(empty.along(b"a", 2).is_empty());
    }

    #[test]
    fn pecl_owner_is_the_first_server_along_its_circle() {
        let all = addresses(4);
        for hash in [PeclHash::Crc32, PeclHash::Fnv] {
            let placement = Locator::build(
                Distribution::PeclMemcache(hash),
                &members(&all, &[0, 1, 2, 3]),
            );
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
