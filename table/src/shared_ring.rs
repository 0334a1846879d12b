//! The ring in the shared file (format 3): computed once per change, by the writer, and read in
//! place by every process.
//!
//! Without it every process rebuilt the whole continuum on its first operation after any change
//! (10 000 servers: 400 000 MD5s, ~60 ms) and kept its own copy (12.5 MB). Now the writer that
//! commits a version also writes the ring that version routes with into the ring region the
//! committed version does not use, inside the new slot's seqlock window (see
//! [`crate::seqlock::Geometry::publish`]), and names it in the slot header. A change that
//! leaves the ring as it was (a reason, a retry interval, up/down under failover `none`) names
//! the same region again and writes nothing.
//!
//! A reader looks keys up in the mapping with atomic loads, no copy and no build. It trusts no
//! word it reads:
//! - every point carries a 16-bit check of its value, its server and the ring's generation, so
//!   a damaged point, or one left over from an older ring in the same region, is refused;
//! - an answer is accepted only with its neighbour: the point found is at or after the key's
//!   hash and the one before it is below, so a damaged index cannot send a key elsewhere;
//! - after the lookup, the slot's sequence word must be the one seen when the version was read:
//!   a region is only rewritten by a writer that has first made that word odd (two commits
//!   later), so an unchanged sequence means the ring read is the version's own.
//!
//! A lookup that fails any of these is "unusable", and the caller builds the ring itself, as
//! before format 3 (and as for files of older formats).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use crate::format::{Layout, RingRef, RingWords};
use crate::placement::{Distribution, Ring, first_at_or_after};
use crate::seqlock::Words;
use crate::table::Server;

/// Bits 0..48 of a point: value and server.
const DATA_MASK: u64 = (1 << 48) - 1;
/// Servers a shared ring can name (16 bits; the capacity of a file is at most this).
const MAX_SERVERS: usize = 1 << 16;

/// The 16-bit check of a point's data within ring `generation` (a 64-bit finaliser: any change
/// of the data or the generation changes the check with probability 1 − 2⁻¹⁶).
fn check(data: u64, generation: u64) -> u64 {
    let mut x = data ^ generation.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x6d63_7368_6d5f_7267;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x >> 48
}

fn encode_point(value: u32, server: u32, generation: u64) -> u64 {
    let data = u64::from(value) | (u64::from(server) << 32);
    data | (check(data, generation) << 48)
}

fn decode_point(word: u64, generation: u64) -> Option<(u32, u32)> {
    let data = word & DATA_MASK;
    (word >> 48 == check(data, generation)).then_some((data as u32, (data >> 32) as u32))
}

/// A ring to be written into a region as generation `generation`, checked to fit it.
pub struct RingToWrite {
    ring: Ring,
    members: Vec<usize>,
    generation: u64,
    at: RingWords,
    slot: u32,
}

/// Words written per call of a [`RingToWrite::write`] sink: no copy of a whole ring (12.5 MB at
/// 10 000 servers) is ever allocated.
const CHUNK_WORDS: usize = 4096;

impl RingToWrite {
    /// `ring` (built over `members`, positions in the slot's servers) for region `slot` at
    /// `at`; `None` when it does not fit (then the version names no ring, and readers build
    /// their own).
    pub fn new(
        ring: Ring,
        members: Vec<usize>,
        generation: u64,
        at: RingWords,
        slot: u32,
    ) -> Option<RingToWrite> {
        let (points, index, _) = ring.parts();
        let fits = points.len() <= at.point_capacity
            && members.iter().all(|&m| m < MAX_SERVERS)
            && index.len().div_ceil(2) <= at.points - at.index;
        fits.then_some(RingToWrite {
            ring,
            members,
            generation,
            at,
            slot,
        })
    }

    /// What the slot header names.
    pub fn reference(&self) -> RingRef {
        RingRef {
            generation: self.generation,
            slot: self.slot,
            points: self.ring.len() as u32,
        }
    }

    /// Writes the region (header, index, points) through `sink(first word, words)`, a chunk at
    /// a time.
    pub fn write(&self, mut sink: impl FnMut(usize, &[u64]) -> Option<()>) -> Option<()> {
        let (points, index, bits) = self.ring.parts();
        let mut header = [0u64; crate::format::RING_HEADER_LEN / 8];
        header[0] = self.generation;
        header[1] = points.len() as u64 | (u64::from(bits) << 32);
        sink(self.at.header, &header)?;
        let mut chunk = Vec::with_capacity(CHUNK_WORDS);
        for (n, pairs) in index.chunks(2 * CHUNK_WORDS).enumerate() {
            chunk.clear();
            chunk.extend(
                pairs.chunks(2).map(|pair| {
                    u64::from(pair[0]) | pair.get(1).map_or(0, |&v| u64::from(v) << 32)
                }),
            );
            sink(self.at.index + n * CHUNK_WORDS, &chunk)?;
        }
        for (n, run) in points.chunks(CHUNK_WORDS).enumerate() {
            chunk.clear();
            chunk.extend(run.iter().map(|&(value, member)| {
                encode_point(value, self.members[member as usize] as u32, self.generation)
            }));
            sink(self.at.points + n * CHUNK_WORDS, &chunk)?;
        }
        Some(())
    }
}

/// A version's ring as one reader found it: where it lies and how to tell it is still that
/// version's. Lookups return `None` when the ring cannot be used (see the module doc).
#[derive(Clone, Copy, Debug)]
pub struct RingView {
    at: RingWords,
    generation: u64,
    points: usize,
    shift: u32,
    servers: usize,
    /// The slot sequence word of the version read, and its value then.
    seq_word: usize,
    seq: u64,
    /// The file (device, inode) it lies in: a view of a replaced file is unusable.
    pub(crate) file_id: (u64, u64),
}

impl RingView {
    /// Which ring this is: the file it lies in (device, inode) and the version that wrote it.
    /// Two versions that name the same ring route their members alike (the writer names a ring
    /// again only for the same members at the same positions, with the same weights).
    pub fn identity(&self) -> ((u64, u64), u64) {
        (self.file_id, self.generation)
    }

    /// The ring `ring` names in a file laid out as `layout`, for a table of `servers` servers
    /// read from the slot whose sequence word (index, value) was `seq` then. `None` when the
    /// region's header does not match the reference (the caller builds the ring itself).
    pub fn open<W: Words>(
        mem: &W,
        layout: &Layout,
        ring: RingRef,
        servers: usize,
        (seq_word, seq): (usize, u64),
        file_id: (u64, u64),
    ) -> Option<RingView> {
        let at = layout.ring_words(ring.slot)?;
        let generation = mem.load(at.header, Ordering::Relaxed)?;
        let meta = mem.load(at.header + 1, Ordering::Relaxed)?;
        let (points, bits) = (meta as u32 as usize, (meta >> 32) as u32);
        let fits = generation == ring.generation
            && points == ring.points as usize
            && points <= at.point_capacity
            && bits == crate::placement::index_bits(points)
            && servers <= MAX_SERVERS;
        if !fits {
            return None;
        }
        let view = RingView {
            at,
            generation,
            points,
            shift: 32 - bits,
            servers,
            seq_word,
            seq,
            file_id,
        };
        view.still_valid(mem).then_some(view)
    }

    /// Whether the ring read is still the version's own: no writer has started on its slot
    /// since (the seqlock's closing check; call it after the lookups it covers).
    pub fn still_valid<W: Words>(&self, mem: &W) -> bool {
        mem.fence(Ordering::Acquire);
        mem.load(self.seq_word, Ordering::Relaxed) == Some(self.seq)
    }

    fn index<W: Words>(&self, mem: &W, bucket: usize) -> Option<usize> {
        let word = mem.load(self.at.index + bucket / 2, Ordering::Relaxed)?;
        Some((word >> (32 * (bucket % 2))) as u32 as usize)
    }

    fn point<W: Words>(&self, mem: &W, at: usize) -> Option<(u32, usize)> {
        if at >= self.points {
            return None;
        }
        let word = mem.load(self.at.points + at, Ordering::Relaxed)?;
        let (value, server) = decode_point(word, self.generation)?;
        ((server as usize) < self.servers).then_some((value, server as usize))
    }

    /// The position of the first point at or after `hash` (`points` when past the last),
    /// confirmed by its neighbour: the two points around the answer pass their checks and
    /// bracket the hash. Adjacent points of the written ring that bracket a hash are its
    /// answer, so whatever else is damaged, an answer confirmed so is the ring's own.
    fn position<W: Words>(&self, mem: &W, hash: u32) -> Option<usize> {
        let bucket = (u64::from(hash) >> self.shift) as usize;
        let (lo, hi) = (self.index(mem, bucket)?, self.index(mem, bucket + 1)?);
        if lo > hi || hi > self.points {
            return None;
        }
        // The search reads values unchecked; the answer is checked below, with its neighbour.
        let low = lo
            + first_at_or_after(hi - lo, hash, self.shift, |i| {
                Some(mem.load(self.at.points + lo + i, Ordering::Relaxed)? as u32)
            })?;
        let at_or_after = low == self.points || self.point(mem, low)?.0 >= hash;
        let before = low == 0 || self.point(mem, low - 1)?.0 < hash;
        (at_or_after && before).then_some(low)
    }

    /// The server (position in the slot's entries) that owns a key hash; `Some(None)` for an
    /// empty ring.
    pub fn owner<W: Words>(&self, mem: &W, hash: u32) -> Option<Option<usize>> {
        if self.points == 0 {
            return Some(None);
        }
        let at = self.position(mem, hash)?;
        let at = if at == self.points { 0 } else { at };
        Some(Some(self.point(mem, at)?.1))
    }

    /// The first `n` distinct servers along the ring from a key hash, owner first.
    pub fn servers_from<W: Words>(&self, mem: &W, hash: u32, n: usize) -> Option<Vec<usize>> {
        let mut found = Vec::with_capacity(n.min(16));
        if self.points == 0 || n == 0 {
            return Some(found);
        }
        let start = self.position(mem, hash)?;
        for step in 0..self.points {
            let server = self.point(mem, (start + step) % self.points)?.1;
            if !found.contains(&server) {
                found.push(server);
                if found.len() == n {
                    break;
                }
            }
        }
        Some(found)
    }

    /// Every point, in ring order, as (value, server); `None` if one fails its check.
    pub fn points<W: Words>(&self, mem: &W) -> Option<Vec<(u32, usize)>> {
        (0..self.points).map(|at| self.point(mem, at)).collect()
    }

    /// Whether every point passes its check, in order, and the index matches them: what a
    /// writer confirms before naming this ring again for a new version.
    pub fn verify<W: Words>(&self, mem: &W) -> bool {
        let mut previous = None;
        for at in 0..self.points {
            match self.point(mem, at) {
                Some((value, _)) if previous.is_none_or(|p| p <= value) => previous = Some(value),
                _ => return false,
            }
        }
        let buckets = 1usize << (32 - self.shift);
        let mut at = 0;
        for bucket in 0..=buckets {
            let start = (bucket as u64) << self.shift;
            while at < self.points
                && self
                    .point(mem, at)
                    .is_some_and(|(v, _)| u64::from(v) < start)
            {
                at += 1;
            }
            let expected = if bucket == buckets { self.points } else { at };
            if self.index(mem, bucket) != Some(expected) {
                return false;
            }
        }
        true
    }
}

/// The ring of `new`'s routed `members` derived from `view`, the previous version's ring (of
/// `old` and its `old_members`), both of `distribution`. A server's points are the hashes of
/// `name-0`, `name-1`, …, as many as its point count, so a server still on the ring keeps its
/// points, copied from the mapping and renumbered: only the labels it gains are hashed, and
/// those it loses are hashed to be dropped. One server down among 10 000 of equal weight changes every count by a label
/// or none (the f32 arithmetic of libmemcached): 10 000 MD5s instead of 400 000. `None` when
/// more than half the labels would be hashed (build afresh, on every CPU) or the old ring
/// cannot be read whole.
pub fn derive<W: Words>(
    mem: &W,
    view: &RingView,
    distribution: Distribution,
    (old, old_members): (&[Server], &[usize]),
    (new, members): (&[Server], &[usize]),
) -> Option<Ring> {
    let scheme = distribution.points()?;
    let per_label = scheme.per_label();
    let old_counts = scheme.counts(old_members.iter().map(|&i| old[i].weight));
    let new_counts = scheme.counts(members.iter().map(|&i| new[i].weight));
    let before: HashMap<&crate::address::Address, (usize, u32)> = old_members
        .iter()
        .zip(&old_counts)
        .map(|(&i, &count)| (&old[i].address, (i, count)))
        .collect();
    let mut renumber = vec![u32::MAX; old.len()];
    // (member, old position, labels from, labels to): hashed to be added, or to be dropped.
    let (mut gained, mut lost) = (Vec::new(), Vec::new());
    for (member, (&i, &count)) in members.iter().zip(&new_counts).enumerate() {
        match before.get(&new[i].address) {
            Some(&(j, was)) => {
                renumber[j] = member as u32;
                if count > was {
                    gained.push((member, was / per_label, count / per_label));
                } else if count < was {
                    lost.push((j, count / per_label, was / per_label));
                }
            }
            None => gained.push((member, 0, count / per_label)),
        }
    }
    let labels = |list: &[(usize, u32, u32)]| -> usize {
        list.iter().map(|&(_, from, to)| (to - from) as usize).sum()
    };
    let total: usize = new_counts.iter().map(|&c| (c / per_label) as usize).sum();
    if (labels(&gained) + labels(&lost)) * 2 > total.max(1) {
        return None;
    }
    let hash = |list: &[(usize, u32, u32)], name_of: &dyn Fn(usize) -> String| {
        let mut points = vec![(0u32, 0u32); labels(list) * per_label as usize];
        let mut at = 0;
        for &(server, from, to) in list {
            let n = ((to - from) * per_label) as usize;
            scheme.hash_points(
                &name_of(server),
                server as u32,
                from,
                &mut points[at..at + n],
            );
            at += n;
        }
        points.sort_unstable();
        points
    };
    let dropped = hash(&lost, &|j| distribution.point_name(&old[j].address));
    let added = hash(&gained, &|m| {
        distribution.point_name(&new[members[m]].address)
    });
    let mut drop = dropped.iter().peekable();
    let mut kept = Vec::with_capacity(view.points + added.len());
    let mut words = vec![0u64; CHUNK_WORDS];
    for first in (0..view.points).step_by(CHUNK_WORDS) {
        let words = &mut words[..CHUNK_WORDS.min(view.points - first)];
        mem.copy_out(view.at.points + first, words)?;
        for &word in words.iter() {
            let (value, position) = decode_point(word, view.generation)?;
            let position = position as usize;
            while drop
                .next_if(|&&(v, p)| (v, p as usize) < (value, position))
                .is_some()
            {}
            if drop
                .next_if(|&&(v, p)| (v, p as usize) == (value, position))
                .is_some()
            {
                continue;
            }
            let member = *renumber.get(position)?;
            if member != u32::MAX {
                kept.push((value, member));
            }
        }
    }
    let expected = new_counts.iter().map(|&c| c as usize).sum::<usize>() - added.len();
    if kept.len() != expected {
        return None;
    }
    // Ties (equal values) must stay in server order; renumbering keeps that unless the list
    // was reordered, so restore it.
    let kept_order = renumber.iter().filter(|&&m| m != u32::MAX);
    if kept_order
        .clone()
        .zip(kept_order.skip(1))
        .any(|(a, b)| a > b)
    {
        for run in kept.chunk_by_mut(|a, b| a.0 == b.0) {
            run.sort_unstable();
        }
    }
    if added.is_empty() {
        return Some(Ring::from_sorted(kept, scheme));
    }
    let mut merged = Vec::with_capacity(kept.len() + added.len());
    let (mut a, mut b) = (kept.into_iter().peekable(), added.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x <= y => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, _) => b.next(),
        };
        match next {
            Some(point) => merged.push(point),
            None => break,
        }
    }
    Some(Ring::from_sorted(merged, scheme))
}

/// Whether a table's routed servers give the same ring: the same positions, addresses and
/// weights.
pub fn same_members(
    old: &[Server],
    old_members: &[usize],
    new: &[Server],
    new_members: &[usize],
) -> bool {
    old_members == new_members
        && old_members.iter().all(|&i| {
            old.get(i)
                .zip(new.get(i))
                .is_some_and(|(a, b)| a.address == b.address && a.weight == b.weight)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_round_trip_and_damage_or_another_generation_is_refused() {
        for (value, server) in [(0, 0), (1, 2), (u32::MAX, 65_535), (0x1234_5678, 77)] {
            let word = encode_point(value, server, 9);
            assert_eq!(decode_point(word, 9), Some((value, server)));
            assert_eq!(decode_point(word, 10), None, "another ring's point");
            for bit in 0..64 {
                assert_eq!(decode_point(word ^ (1 << bit), 9), None, "bit {bit}");
            }
        }
        assert_eq!(decode_point(0, 1), None, "a zero word is no point");
    }
}
