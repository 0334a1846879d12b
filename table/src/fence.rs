//! The fencing epoch: how a memcached server tells a host that its table is superseded.
//!
//! In a fleet, a host's table can lag the fleet's (its agent is paused, or cut off from etcd
//! while it still reaches the servers). Routing on the older table, it would read the old
//! owners' copies of keys that moved, and write where no other host reads. Stock memcached has
//! no "not my key" reply (Couchbase's `NOT_MY_VBUCKET`, Brad Fitzpatrick's `NOT_OWNER` of
//! 2004), so mcshm keeps one reserved item per domain on the servers, the *fence*: the lowest
//! fleet revision a table must have to use that server's answers.
//!
//! - **Raised before the change exists.** A fleet commit that moves keys off a server first
//!   raises that server's fence to `Rb + 1` (`Rb` the revision of the document the commit
//!   replaces; the commit's own revision is unknown before the put and is at least that), and
//!   only then puts the document. From that moment every host still at `Rb` or older gets
//!   fenced answers from the server, and every host at the new revision passes.
//! - **Read with every batch.** A host sends `mg <fence key> v` after the requests of each batch
//!   to a server, in the same write: one small item, no extra round trip. memcached answers in
//!   order, so a fence read after the batch saw every fence raised before the batch ran.
//! - **A fenced answer is not used** ([`Verdict`]): a read is a miss, a write is undone and
//!   fails, until the host has mirrored a table at or past the fence.
//! - **A missing fence** (the server restarted, was flushed, evicted the item) is treated as a
//!   fence above every table: only a commit through etcd may write a fence (never a host that
//!   reads one), so that no host can lower a fence a concurrent commit just raised.
//!
//! The fence key is `mcshm.fence.<domain>`, never prefixed (a prefix change is itself a fenced
//! change), and the whole `mcshm.fence.` namespace is reserved: applications may not read or
//! write it, and listings, drains and sweeps skip it.
//!
//! This module is the model (names, values, verdicts): no sockets. The servers to fence for a
//! change are [`crate::coherence::fence_targets`].

use crate::domain::Domain;

/// Every fence key starts with this; no application key may.
pub const FENCE_PREFIX: &[u8] = b"mcshm.fence.";

/// The fence key of `domain` (at most 76 bytes: a domain name is at most 64).
pub fn fence_key(domain: &Domain) -> Vec<u8> {
    let mut key = FENCE_PREFIX.to_vec();
    key.extend_from_slice(domain.as_str().as_bytes());
    key
}

/// Whether `wire_key` (a key as sent, its prefix included) is in the reserved namespace.
pub fn is_reserved(wire_key: &[u8]) -> bool {
    wire_key.starts_with(FENCE_PREFIX)
}

/// Whether `key`, sent after `prefix`, would be in the reserved namespace (without building
/// the wire key).
pub fn is_reserved_with(prefix: &[u8], key: &[u8]) -> bool {
    if prefix.len() >= FENCE_PREFIX.len() {
        return is_reserved(prefix);
    }
    let (head, tail) = FENCE_PREFIX.split_at(prefix.len());
    prefix == head && key.starts_with(tail)
}

/// A fence's stored value: the epoch in ASCII decimal.
pub fn encode_value(epoch: u64) -> Vec<u8> {
    epoch.to_string().into_bytes()
}

/// The epoch a stored value says, or `None` for anything that is not a decimal `u64` (a value
/// no mcshm wrote: treated as a missing fence).
pub fn parse_value(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// What a server's fence says of the answers it gave a host routing on fleet revision `table`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The fence is at or below the table's revision: the answers stand.
    Current,
    /// The server was fenced at this revision, newer than the table: the answers are not used
    /// until the host has mirrored it.
    Behind(u64),
    /// No fence (or one no mcshm wrote): not used until a commit through etcd writes one.
    Missing,
}

/// The verdict of a fence read (`None`: no item) for a host at fleet revision `table`.
pub fn verdict(fence: Option<u64>, table: u64) -> Verdict {
    match fence {
        None => Verdict::Missing,
        Some(epoch) if epoch > table => Verdict::Behind(epoch),
        Some(_) => Verdict::Current,
    }
}

impl Verdict {
    /// Whether the answers may be used.
    pub fn is_current(self) -> bool {
        self == Verdict::Current
    }

    /// The fleet revision a host must reach before this server's answers count again
    /// (`u64::MAX` when the fence is missing: no revision will do until it is written).
    pub fn wants(self) -> u64 {
        match self {
            Verdict::Current => 0,
            Verdict::Behind(epoch) => epoch,
            Verdict::Missing => u64::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_key_names_the_domain_and_is_a_valid_memcached_key() {
        let longest = Domain::new(&"d".repeat(64)).unwrap();
        let key = fence_key(&longest);
        assert_eq!(key.len(), 76);
        assert!(crate::key::check_key(&key).is_ok());
        assert_eq!(fence_key(&Domain::new("app").unwrap()), b"mcshm.fence.app");
        assert!(is_reserved(&key));
    }

    #[test]
    fn the_whole_namespace_is_reserved_whatever_the_prefix_supplies() {
        assert!(is_reserved(b"mcshm.fence."));
        assert!(is_reserved(b"mcshm.fence.other-domain"));
        assert!(!is_reserved(b"mcshm.fenc"));
        assert!(!is_reserved(b"app:mcshm.fence.x"));
        assert!(is_reserved_with(b"", b"mcshm.fence.x"));
        assert!(is_reserved_with(b"mcshm.", b"fence.x"));
        assert!(is_reserved_with(b"mcshm.fence.", b"anything"));
        assert!(is_reserved_with(b"mcshm.fence.app", b""));
        assert!(!is_reserved_with(b"mcshm.", b"fenc"));
        assert!(!is_reserved_with(b"app:", b"mcshm.fence.x"));
        assert!(!is_reserved_with(b"mcshm.x", b"fence.x"));
    }

    #[test]
    fn values_round_trip_and_anything_else_is_no_fence() {
        for epoch in [0, 1, 1742, u64::MAX] {
            assert_eq!(parse_value(&encode_value(epoch)), Some(epoch));
        }
        for bad in [
            &b""[..],
            b"-1",
            b"12a",
            b" 12",
            b"18446744073709551616",
            b"1.0",
        ] {
            assert_eq!(parse_value(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_fence_above_the_table_or_missing_is_not_current() {
        assert_eq!(verdict(Some(7), 7), Verdict::Current);
        assert_eq!(verdict(Some(3), 7), Verdict::Current);
        assert_eq!(verdict(Some(8), 7), Verdict::Behind(8));
        assert_eq!(verdict(None, 7), Verdict::Missing);
        assert_eq!(verdict(None, u64::MAX), Verdict::Missing);
        assert_eq!(Verdict::Behind(8).wants(), 8);
        assert_eq!(Verdict::Missing.wants(), u64::MAX);
        assert!(!Verdict::Missing.is_current());
    }
}
