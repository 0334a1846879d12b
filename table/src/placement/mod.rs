//! Where a key goes: the placements of libmemcached, spymemcached and PHP's PECL memcache, key
//! for key, so that mcshm and those clients agree on every key of a mixed fleet.
//!
//! Layering: [`crate::hash`] (the key hashes, a leaf) → this module (a [`Distribution`] names a
//! placement; [`Ring`] is the ketama continuum, [`PeclContinuum`] PECL's, modula is the hash
//! modulo the members; a [`Locator`] is any of them built for one table version) → the model
//! ([`crate::table`] stores a `Distribution` in its policy and turns its servers into
//! [`Member`]s) → the file, whose writer shares each version's ketama ring
//! (`crate::shared_ring`). Nothing here knows the table or the file: a placement is built from
//! members (position, address, weight) and answers with positions.

pub mod buckets;
mod locator;
mod pecl;
mod ring;

pub(crate) use ring::first_at_or_after;

pub use buckets::{BucketMap, Shape};
pub use locator::{BucketLocator, Locator, Placed, Via};
pub use pecl::{PeclBucket, PeclContinuum};
pub use ring::{
    Points, Ring, RingPoint, UNWEIGHTED_POINTS, index_bits, point_name, spy_point_name,
};

use crate::address::Address;
use crate::error::{Error, Result};
use crate::hash::{KeyHash, PeclHash};

/// One server as a placement sees it: where it is in the table (what lookups answer), its
/// address (what its points are named after) and its weight.
#[derive(Clone, Copy, Debug)]
pub struct Member<'a> {
    pub position: usize,
    pub address: &'a Address,
    pub weight: u16,
}

/// How keys map to servers (`mcadmin policy --distribution`), as the other clients of a mixed
/// fleet map them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Distribution {
    /// libmemcached's `MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED` (PHP memcached's
    /// `OPT_LIBKETAMA_COMPATIBLE`): the ketama continuum, weighted, MD5.
    #[default]
    Ketama,
    /// libmemcached's `MEMCACHED_DISTRIBUTION_CONSISTENT_KETAMA_SPY` with weights
    /// (spymemcached's `KetamaNodeLocator`): weighted ketama over the names `/host:port`.
    KetamaSpy,
    /// libmemcached's `MEMCACHED_BEHAVIOR_KETAMA` (pylibmc's `ketama`): 100 points per server
    /// whatever its weight, each the libhashkit hash (one-at-a-time unless `--hash` says) of
    /// `host-i` or `host:port-i`; keys hash with the same hash.
    KetamaUnweighted(KeyHash),
    /// PHP's PECL memcache extension, `memcache.hash_strategy=consistent` with
    /// `memcache.hash_function` crc32 or fnv (see [`PeclContinuum`]).
    PeclMemcache(PeclHash),
    /// libmemcached's default, `MEMCACHED_DISTRIBUTION_MODULA`: the key's hash modulo the
    /// number of servers on the list (the routed ones, in list order), with libhashkit's hash.
    Modula(KeyHash),
    /// libmemcached's `MEMCACHED_DISTRIBUTION_VIRTUAL_BUCKET` and libvbucket's maps: the key's
    /// hash masked to a power-of-two number of buckets, each owned by the server the domain's
    /// [`BucketMap`] names (see [`buckets`]).
    VBucket(KeyHash),
}

impl Distribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Distribution::Ketama => "ketama",
            Distribution::KetamaSpy => "ketama-spy",
            Distribution::KetamaUnweighted(_) => "ketama-unweighted",
            Distribution::PeclMemcache(_) => "pecl-memcache",
            Distribution::Modula(_) => "modula",
            Distribution::VBucket(_) => "vbucket",
        }
    }

    /// Whether keys are placed by a bucket map (the table holds one).
    pub fn has_buckets(self) -> bool {
        matches!(self, Distribution::VBucket(_))
    }

    /// Whether keys are placed on a ketama ring (which the writer shares in the file).
    pub fn has_ring(self) -> bool {
        self.points().is_some()
    }

    /// How the ketama distributions make their continuum's points (`None`: no ketama ring).
    pub fn points(self) -> Option<Points> {
        match self {
            Distribution::Ketama | Distribution::KetamaSpy => Some(Points::Weighted),
            Distribution::KetamaUnweighted(hash) => Some(Points::Unweighted(hash)),
            Distribution::Modula(_) | Distribution::PeclMemcache(_) | Distribution::VBucket(_) => {
                None
            }
        }
    }

    /// The name of the key hash (`md5` for the weighted ketama distributions).
    pub fn hash_name(self) -> &'static str {
        match self {
            Distribution::Modula(hash)
            | Distribution::KetamaUnweighted(hash)
            | Distribution::VBucket(hash) => hash.as_str(),
            Distribution::PeclMemcache(hash) => hash.as_str(),
            Distribution::Ketama | Distribution::KetamaSpy => "md5",
        }
    }

    /// From `--distribution` and `--hash` (modula's and ketama-unweighted's default hash:
    /// one-at-a-time, as libmemcached's); errors say what is accepted.
    pub fn parse(name: &str, hash: Option<&str>) -> Result<Distribution> {
        if name == "pecl-memcache" {
            let hash = match hash {
                None => PeclHash::default(),
                Some(text) => PeclHash::parse(text).ok_or_else(|| {
                    Error::invalid("hash", text, "pecl-memcache hashes with crc32 or fnv")
                })?,
            };
            return Ok(Distribution::PeclMemcache(hash));
        }
        let hash = match hash {
            None => None,
            Some(text) => Some(KeyHash::parse(text).ok_or_else(|| {
                Error::invalid(
                    "hash",
                    text,
                    "expected one-at-a-time, md5, crc, fnv1_64, fnv1a_64, fnv1_32, fnv1a_32, murmur, jenkins or murmur3",
                )
            })?),
        };
        let ketama = match name {
            "modula" => return Ok(Distribution::Modula(hash.unwrap_or_default())),
            "vbucket" => return Ok(Distribution::VBucket(hash.unwrap_or_default())),
            "ketama-unweighted" => {
                return Ok(Distribution::KetamaUnweighted(hash.unwrap_or_default()));
            }
            "ketama" => Distribution::Ketama,
            "ketama-spy" => Distribution::KetamaSpy,
            other => {
                return Err(Error::invalid(
                    "distribution",
                    other,
                    "expected ketama, ketama-spy, ketama-unweighted, modula, pecl-memcache or vbucket",
                ));
            }
        };
        match hash {
            None | Some(KeyHash::Md5) => Ok(ketama),
            Some(other) => Err(Error::invalid(
                "hash",
                other.as_str(),
                "ketama and ketama-spy hash with md5 (as libmemcached); other hashes go with ketama-unweighted, modula or vbucket",
            )),
        }
    }

    pub(crate) fn codes(self) -> (u8, u8) {
        match self {
            Distribution::Ketama => (0, 0),
            Distribution::Modula(hash) => (1, hash.code()),
            Distribution::KetamaSpy => (2, 0),
            Distribution::PeclMemcache(hash) => (3, hash.code()),
            Distribution::KetamaUnweighted(hash) => (4, hash.code()),
            Distribution::VBucket(hash) => (5, hash.code()),
        }
    }

    pub(crate) fn from_codes(distribution: u8, hash: u8) -> Option<Distribution> {
        match (distribution, hash) {
            (0, 0) => Some(Distribution::Ketama),
            (2, 0) => Some(Distribution::KetamaSpy),
            (3, hash) => Some(Distribution::PeclMemcache(PeclHash::from_code(hash)?)),
            (1, hash) => Some(Distribution::Modula(KeyHash::from_code(hash)?)),
            (4, hash) => Some(Distribution::KetamaUnweighted(KeyHash::from_code(hash)?)),
            (5, hash) => Some(Distribution::VBucket(KeyHash::from_code(hash)?)),
            _ => None,
        }
    }

    /// The name a server's point labels start with on this distribution's ketama ring.
    pub fn point_name(self, address: &Address) -> String {
        match self {
            Distribution::KetamaSpy => spy_point_name(address),
            _ => point_name(address),
        }
    }

    /// The ketama ring of `members` (ring server `n` is `members[n]`), as this distribution
    /// makes its continuum; an empty ring for the placements without one (modula, PECL).
    pub fn ring(self, members: &[Member<'_>]) -> Ring {
        let Some(scheme) = self.points() else {
            return Ring::default();
        };
        let names: Vec<String> = members.iter().map(|m| self.point_name(m.address)).collect();
        Ring::build_with(
            scheme,
            names
                .iter()
                .map(String::as_str)
                .zip(members.iter().map(|m| m.weight)),
        )
    }
}
