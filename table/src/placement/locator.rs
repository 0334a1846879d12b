//! A [`Locator`]: one table version's placement, built once per version by whoever routes
//! (the router in each process, for servers off the file's shared ring or without one), and
//! asked the two questions every front end asks: a key's owner, and the servers after it.

use std::sync::Arc;

use super::buckets::{self, BucketMap, cell};
use super::{Distribution, Member, PeclContinuum, Ring, RingPoint};
use crate::hash::KeyHash;

/// Where a key lands in a [`Locator`], and why ([`Locator::place`]; `mcadmin explain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    /// The key's owner (position in the table): what [`Locator::owner`] answers.
    pub owner: usize,
    /// The key's hash, as the placement hashes it (ketama: the first word of its MD5, or the
    /// unweighted ring's key hash; modula: libhashkit's; PECL: crc32 or fnv).
    pub hash: u32,
    pub via: Via,
}

/// How a [`Placed`] key reached its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A ketama ring: the first point at or after the hash, wrapping to the first (its
    /// `server` is the owner's position in the table), of `points` points.
    Point { point: RingPoint, points: usize },
    /// Modula: `hash % members == slot`; the owner is the `slot`-th member (from 0, in list
    /// order; members are the servers the placement was built over).
    Modula { members: usize, slot: usize },
    /// PECL memcache: the bucket `hash % 1024` and the value of its point.
    Bucket { bucket: usize, point: u32 },
    /// Virtual buckets: the bucket `hash & (buckets - 1)` (0 on a one-server list) and the
    /// column of its row that answered (0: its owner; more: a replica, its owner not routed;
    /// `None`: no server of its row routed, the next routed server of the list after its
    /// owner).
    VBucket {
        bucket: usize,
        buckets: usize,
        column: Option<usize>,
    },
}

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
    /// Virtual buckets: the map's rows, of which the members are routed.
    Buckets(BucketLocator),
}

/// A [`BucketMap`] as one version routes it: the key hash, how many servers the list has (one:
/// every key is bucket 0's), and which of them are routed (a row's first routed server owns
/// its bucket's keys).
#[derive(Clone, Debug)]
pub struct BucketLocator {
    hash: KeyHash,
    map: Arc<BucketMap>,
    listed: usize,
    routed: Vec<bool>,
    /// The routed positions, ascending: a failover's reach beyond a bucket's row.
    in_order: Vec<usize>,
}

impl BucketLocator {
    /// `map` over a list of `listed` servers, of which `members` are routed.
    pub fn new(hash: KeyHash, map: Arc<BucketMap>, listed: usize, members: &[Member<'_>]) -> Self {
        let mut routed = vec![false; listed];
        for m in members {
            if let Some(r) = routed.get_mut(m.position) {
                *r = true;
            }
        }
        let in_order = (0..listed).filter(|&p| routed[p]).collect();
        BucketLocator {
            hash,
            map,
            listed,
            routed,
            in_order,
        }
    }

    pub fn map(&self) -> &Arc<BucketMap> {
        &self.map
    }

    /// Whether `other` routes the same positions (of a list as long).
    pub fn routes_as(&self, other: &BucketLocator) -> bool {
        self.routed == other.routed
    }

    /// The key's hash and bucket.
    pub fn bucket(&self, key: &[u8]) -> (u32, usize) {
        buckets::key_bucket(&self.map, self.hash, self.listed, key)
    }

    /// Where bucket `b`'s keys are routed: its forward row while it moves.
    fn row(&self, b: usize) -> &[u16] {
        self.map.routed_row(b)
    }

    fn is_routed(&self, c: u16) -> Option<usize> {
        cell(c).filter(|&p| self.routed.get(p).copied().unwrap_or(false))
    }

    /// Bucket `b`'s servers as routed: the routed servers of its row, then (a failover's
    /// reach, its row exhausted) the routed servers of the list after its owner, wrapping, `n`
    /// at most, distinct, with the column of the first. Costs what its row and `n` cost,
    /// whatever the map's size.
    fn along_bucket(&self, b: usize, n: usize) -> (Vec<usize>, Option<usize>) {
        let row = self.row(b);
        let mut out: Vec<usize> = Vec::with_capacity(n.min(8));
        let mut first = None;
        for (column, &c) in row.iter().enumerate() {
            if out.len() == n {
                break;
            }
            if let Some(p) = self.is_routed(c)
                && !out.contains(&p)
            {
                first.get_or_insert(column);
                out.push(p);
            }
        }
        if out.len() < n && !self.in_order.is_empty() {
            let owner = row[0];
            let start = self.in_order.partition_point(|&p| p <= usize::from(owner));
            let len = self.in_order.len();
            for step in 0..len {
                let p = self.in_order[(start + step) % len];
                if !out.contains(&p) {
                    out.push(p);
                    if out.len() == n {
                        break;
                    }
                }
            }
        }
        (out, first)
    }

    /// Bucket `b`'s first `n` servers as routed (see [`Locator::along`]).
    pub fn bucket_along(&self, b: usize, n: usize) -> Vec<usize> {
        self.along_bucket(b, n).0
    }

    /// The key's owner (position).
    pub fn owner(&self, key: &[u8]) -> Option<usize> {
        let (_, b) = self.bucket(key);
        if let Some(p) = self.is_routed(self.row(b)[0]) {
            return Some(p); // the common case: the owner is routed
        }
        self.along_bucket(b, 1).0.first().copied()
    }

    pub fn along(&self, key: &[u8], n: usize) -> Vec<usize> {
        let (_, b) = self.bucket(key);
        self.along_bucket(b, n).0
    }

    pub fn place(&self, key: &[u8]) -> Option<Placed> {
        let (hash, bucket) = self.bucket(key);
        let (along, column) = self.along_bucket(bucket, 1);
        Some(Placed {
            owner: *along.first()?,
            hash,
            via: Via::VBucket {
                bucket,
                buckets: self.map.buckets(),
                column,
            },
        })
    }
}

impl Locator {
    /// How many points it has (a modula placement: its members), what building it cost.
    pub fn points(&self) -> usize {
        match self {
            Locator::Ring { ring, .. } => ring.len(),
            Locator::Modula { positions, .. } => positions.len(),
            Locator::Pecl(continuum) => continuum.len(),
            Locator::Buckets(b) => b.map.buckets(),
        }
    }

    /// The placement of `members` (in list order) for `distribution`; a bucket map's
    /// distribution routes by `buckets` (of a list of `listed` servers), or no key without one.
    pub fn build_with(
        distribution: Distribution,
        members: &[Member<'_>],
        buckets: Option<&Arc<BucketMap>>,
        listed: usize,
    ) -> Locator {
        if let Distribution::VBucket(hash) = distribution {
            let map = buckets.cloned().unwrap_or_else(|| {
                Arc::new(BucketMap::balanced(
                    super::Shape {
                        buckets: 1,
                        replicas: 0,
                    },
                    &[],
                ))
            });
            return Locator::Buckets(BucketLocator::new(hash, map, listed, members));
        }
        Locator::build(distribution, members)
    }

    /// The placement of `members` (in list order) for `distribution` (a bucket map's: every
    /// bucket unassigned, see [`Locator::build_with`]).
    pub fn build(distribution: Distribution, members: &[Member<'_>]) -> Locator {
        let positions = members.iter().map(|m| m.position).collect();
        match distribution {
            Distribution::VBucket(_) => Locator::build_with(distribution, members, None, 0),
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
            Locator::Buckets(b) => b.owner(key),
        }
    }

    /// Where `key` lands and why: what [`Locator::owner`] answers, with the hash and the point
    /// (or modula's slot) that decide it; `None` without members.
    pub fn place(&self, key: &[u8]) -> Option<Placed> {
        match self {
            Locator::Ring { ring, positions } => {
                let hash = ring.scheme().hash_key(key);
                let mut point = ring.point_for_hash(hash)?;
                point.server = positions[point.server];
                Some(Placed {
                    owner: point.server,
                    hash,
                    via: Via::Point {
                        point,
                        points: ring.len(),
                    },
                })
            }
            Locator::Modula { hash, positions } => {
                let members = positions.len();
                let value = hash.hash(key);
                let slot = (members > 0).then(|| value as usize % members)?;
                Some(Placed {
                    owner: positions[slot],
                    hash: value,
                    via: Via::Modula { members, slot },
                })
            }
            Locator::Pecl(continuum) => {
                let b = continuum.bucket_of(key)?;
                Some(Placed {
                    owner: b.owner,
                    hash: b.hash,
                    via: Via::Bucket {
                        bucket: b.bucket,
                        point: b.point,
                    },
                })
            }
            Locator::Buckets(b) => b.place(key),
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
            Locator::Buckets(b) => b.along(key, n),
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
    fn place_names_the_owner_owner_answers_with_the_hash_and_point_that_decide_it() {
        let all = addresses(5);
        let positions = [0, 2, 3, 4];
        let distributions = [
            Distribution::Ketama,
            Distribution::KetamaSpy,
            Distribution::KetamaUnweighted(KeyHash::Fnv1a32),
            Distribution::Modula(KeyHash::OneAtATime),
            Distribution::PeclMemcache(PeclHash::Crc32),
        ];
        for distribution in distributions {
            let locator = Locator::build(distribution, &members(&all, &positions));
            for n in 0..300 {
                let key = format!("key:{n}");
                let placed = locator.place(key.as_bytes()).unwrap();
                assert_eq!(Some(placed.owner), locator.owner(key.as_bytes()), "{key}");
                match placed.via {
                    Via::Point { point, points } => {
                        let ring = distribution.ring(&members(&all, &positions));
                        assert_eq!(points, ring.len());
                        assert_eq!(
                            placed.hash,
                            distribution.points().unwrap().hash_key(key.as_bytes())
                        );
                        assert_eq!(point.server, placed.owner);
                        let (sorted, _, _) = ring.parts_for_tests();
                        assert_eq!(sorted[point.index].0, point.value);
                        // The first point at or after the hash, or the first of all (wrapped).
                        assert!(point.value >= placed.hash || point.index == 0, "{key}");
                        assert!(point.index == 0 || sorted[point.index - 1].0 < placed.hash);
                    }
                    Via::Modula { members, slot } => {
                        assert_eq!(members, positions.len());
                        assert_eq!(slot, placed.hash as usize % members);
                        assert_eq!(positions[slot], placed.owner);
                    }
                    Via::Bucket { bucket, .. } => {
                        assert_eq!(bucket, placed.hash as usize % 1024);
                    }
                    Via::VBucket { .. } => unreachable!("no bucket map here"),
                }
            }
        }
        let empty = Locator::build(Distribution::Ketama, &[]);
        assert_eq!(empty.place(b"a"), None);
        assert_eq!(
            Locator::build(Distribution::Modula(KeyHash::Md5), &[]).place(b"a"),
            None
        );
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
    fn a_bucket_locator_routes_to_the_first_routed_server_of_the_row_then_later_owners() {
        let all = addresses(4);
        let map = Arc::new(BucketMap::balanced(
            super::super::Shape::new(16, 1).unwrap(),
            &[0, 1, 2, 3],
        ));
        let hash = KeyHash::OneAtATime;
        let every = Locator::build_with(
            Distribution::VBucket(hash),
            &members(&all, &[0, 1, 2, 3]),
            Some(&map),
            4,
        );
        // Server 1 not routed (down under rehash): its buckets go to their replica.
        let without_1 = Locator::build_with(
            Distribution::VBucket(hash),
            &members(&all, &[0, 2, 3]),
            Some(&map),
            4,
        );
        for n in 0..200 {
            let key = format!("key{n}");
            let b = hash.hash(key.as_bytes()) as usize & 15;
            let row = map.row(b);
            assert_eq!(every.owner(key.as_bytes()), Some(row[0] as usize));
            assert_eq!(
                every.along(key.as_bytes(), 2),
                vec![row[0] as usize, row[1] as usize]
            );
            let placed = without_1.place(key.as_bytes()).unwrap();
            match row[0] {
                1 => {
                    assert_eq!(placed.owner, row[1] as usize);
                    assert!(matches!(
                        placed.via,
                        Via::VBucket {
                            column: Some(1),
                            ..
                        }
                    ));
                }
                owner => assert_eq!(placed.owner, owner as usize),
            }
            let along = without_1.along(key.as_bytes(), 3);
            assert_eq!(
                along.len(),
                3,
                "the row, then the routed servers of the list"
            );
            assert!(!along.contains(&1));
        }
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
