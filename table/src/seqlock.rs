//! The publish/read protocol: two slots, a sequence word per slot, one committed-version word.
//!
//! A writer (serialized by the file lock, see [`crate::registry`]) builds version `v + 1` in slot
//! `(v + 1) % 2`, the one readers are not using, then publishes it with a single atomic store of
//! the committed word. That one store is both the switch of the active slot and the version bump.
//!
//! ```text
//! writer (holds the lock)                    reader (never blocks)
//! s = seq[i]; if s odd { s += 1 }            v  = committed.load(Acquire); i = v % 2
//! seq[i].store(s + 1, Release)  (odd)       s1 = seq[i].load(Acquire); odd => retry
//! fence(Release)                             copy slot i with Relaxed loads
//! slot i words = image   (Relaxed stores)    fence(Acquire)
//! seq[i].store(s + 2, Release)               s2 = seq[i].load(Relaxed); s1 != s2 => retry
//! committed.store(v + 1, Release)            slot generation != v => lapped (retry) or corrupt
//! ```
//!
//! A writer killed anywhere leaves the committed word pointing at the slot it never touched, so
//! the last published table stays readable; a slot left with an odd sequence is simply the next
//! writer's target again (it rounds the sequence up to even first). A reader is only disturbed
//! when writers lap it (two commits during one copy); it then retries a bounded number of times.
//!
//! The protocol is generic over [`Words`] so that it runs unchanged over the shared mapping and,
//! in the model test (`tests/loom_seqlock.rs`), over loom's atomics.

use std::sync::atomic::Ordering;

/// Bit 63 of the committed word: this file was replaced by a larger one (see
/// [`crate::registry`]); readers re-open the path.
pub const MOVED: u64 = 1 << 63;
/// The version part of a sealed committed word (format 2): 48 bits.
pub const VERSION_MASK: u64 = (1 << 48) - 1;

/// How a file's committed word is written. Format 2 seals it: bits 0..48 the version, bits
/// 48..63 a CRC-15 of the version, bit 63 [`MOVED`]. The word is outside the header CRC and is
/// rewritten by every commit, so it checks itself within its one atomic store: a damaged word
/// (one that would silently send readers to the other, older slot) is an error instead. MOVED
/// is left out of the check: a flipped MOVED bit only makes readers look at the path again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seal {
    /// Format 1: the word is the version (and MOVED).
    Plain,
    /// Format 2: version, check, MOVED.
    Checked,
}

impl Seal {
    /// The committed word for `version` (at most [`VERSION_MASK`] when checked).
    pub fn encode(self, version: u64, moved: bool) -> u64 {
        let moved = if moved { MOVED } else { 0 };
        match self {
            Seal::Plain => version | moved,
            Seal::Checked => {
                debug_assert!(version <= VERSION_MASK);
                (version & VERSION_MASK) | (u64::from(crc15(version)) << 48) | moved
            }
        }
    }

    /// The version and MOVED bit of a committed word; `None` when its check fails.
    pub fn decode(self, word: u64) -> Option<(u64, bool)> {
        let moved = word & MOVED != 0;
        match self {
            Seal::Plain => Some((word & !MOVED, moved)),
            Seal::Checked => {
                let version = word & VERSION_MASK;
                let check = ((word >> 48) & 0x7fff) as u16;
                (check == crc15(version)).then_some((version, moved))
            }
        }
    }
}

/// CRC-15/CAN (polynomial 0x4599) of the 6 low bytes of `version`: detects every error of up
/// to 15 bits in a row, and any other with probability 1 − 2⁻¹⁵.
fn crc15(version: u64) -> u16 {
    let mut crc: u16 = 0;
    for byte in version.to_le_bytes()[..6].iter() {
        crc ^= u16::from(*byte) << 7;
        for _ in 0..8 {
            crc = if crc & 0x4000 != 0 {
                (crc << 1) ^ 0x4599
            } else {
                crc << 1
            };
        }
    }
    crc & 0x7fff
}

pub use crate::shm::Words;

/// Where the protocol's words are, in 64-bit words from the start of the memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// The committed word: the published version (bit 63: [`MOVED`]), sealed as `seal` says.
    pub committed: usize,
    pub seal: Seal,
    /// First word of each slot. Word 0 of a slot is its sequence, word 1 its generation (the
    /// version it holds); the rest is the image the format layer defines.
    pub slots: [usize; 2],
    /// Words a slot may hold at most, sequence word included.
    pub slot_words: usize,
    /// Words at the start of a slot that say how long its image is (read before the rest).
    pub slot_header_words: usize,
}

/// Why a read attempt gave no table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// A writer overwrote the slot while we copied it: retry.
    Lapped,
    /// The slot is inconsistent with no writer at work: the file is damaged.
    Corrupt(String),
}

impl Geometry {
    /// One attempt to copy the committed slot into `out` (which ends up holding the whole slot
    /// image, sequence word first). `image_words` reads the slot header words and says how many
    /// words the image has in all, or `None` if the header is invalid.
    ///
    /// Returns the version copied. The copy is consistent (no writer touched it during the copy)
    /// but not yet validated beyond its generation: the caller checks its CRC and contents.
    pub fn read<W: Words>(
        &self,
        mem: &W,
        out: &mut Vec<u64>,
        image_words: impl Fn(&[u64]) -> Option<usize>,
    ) -> Result<u64, ReadError> {
        // A MOVED file still holds a valid table (callers follow moves before reading).
        let committed = self.committed(mem)?;
        let base = self.slots[(committed & 1) as usize];
        let seq = self.load(mem, base, Ordering::Acquire)?;
        if seq & 1 == 1 {
            return Err(self.lapped_or_corrupt(mem, committed, "slot sequence odd"));
        }
        out.clear();
        out.resize(self.slot_header_words, 0);
        mem.copy_out(base, out).ok_or_else(out_of_bounds)?;
        let total =
            image_words(out).filter(|&n| (self.slot_header_words..=self.slot_words).contains(&n));
        let Some(total) = total else {
            return Err(self.unchanged_or_lapped(mem, base, seq, committed, "slot length invalid"));
        };
        out.resize(total, 0);
        let header = self.slot_header_words;
        mem.copy_out(base + header, &mut out[header..])
            .ok_or_else(out_of_bounds)?;
        mem.fence(Ordering::Acquire);
        if self.load(mem, base, Ordering::Relaxed)? != seq {
            return Err(ReadError::Lapped);
        }
        if out[1] != committed {
            return Err(self.lapped_or_corrupt(
                mem,
                committed,
                "slot generation is not the committed version",
            ));
        }
        Ok(committed)
    }

    /// One attempt to copy part of the committed slot: its header words into `header`, then
    /// what `rest` copies, given the header and a copier of `words` at a slot offset (bounded by
    /// the slot). The whole is checked by the slot's sequence as [`Geometry::read`] checks a
    /// full copy. `rest` returns `None` when the header does not suit it (then so does this,
    /// as `Ok(None)`: the caller reads the whole slot instead).
    pub fn read_part<W: Words, T>(
        &self,
        mem: &W,
        header: &mut Vec<u64>,
        rest: impl FnOnce(&[u64], &dyn Fn(usize, &mut [u64]) -> Option<()>) -> Option<T>,
    ) -> Result<Option<(u64, T)>, ReadError> {
        let committed = self.committed(mem)?;
        let base = self.slots[(committed & 1) as usize];
        let seq = self.load(mem, base, Ordering::Acquire)?;
        if seq & 1 == 1 {
            return Err(self.lapped_or_corrupt(mem, committed, "slot sequence odd"));
        }
        header.clear();
        header.resize(self.slot_header_words, 0);
        mem.copy_out(base, header).ok_or_else(out_of_bounds)?;
        let slot_words = self.slot_words;
        let copy = |offset: usize, words: &mut [u64]| {
            let end = offset.checked_add(words.len())?;
            (end <= slot_words).then_some(())?;
            mem.copy_out(base + offset, words)
        };
        let part = rest(header, &copy);
        mem.fence(Ordering::Acquire);
        if self.load(mem, base, Ordering::Relaxed)? != seq {
            return Err(ReadError::Lapped);
        }
        if header[1] != committed {
            return Err(self.lapped_or_corrupt(
                mem,
                committed,
                "slot generation is not the committed version",
            ));
        }
        Ok(part.map(|part| (committed, part)))
    }

    /// Publishes `image` (a whole slot image; word 0 is ignored, word 1 must be the new version)
    /// as version `current + 1`. The caller holds the writer lock and has checked that `image`
    /// fits a slot. Returns the new version, or `None` if the memory refused a store.
    pub fn publish<W: Words>(&self, mem: &W, current: u64, image: &[u64]) -> Option<u64> {
        self.publish_with(mem, current, image, || Some(()))
    }

    /// [`Geometry::publish`], running `inside` once the slot is marked as being written (odd)
    /// and before its image is stored: memory that only readers of this slot's version may use
    /// (the shared ring) is written there, so a reader of the slot's previous version sees the
    /// sequence change and drops what it read.
    pub fn publish_with<W: Words>(
        &self,
        mem: &W,
        current: u64,
        image: &[u64],
        inside: impl FnOnce() -> Option<()>,
    ) -> Option<u64> {
        let next = current + 1;
        debug_assert_eq!(image.get(1), Some(&next));
        if image.len() > self.slot_words || image.len() < 2 {
            return None;
        }
        let base = self.slots[(next & 1) as usize];
        let mut seq = mem.load(base, Ordering::Relaxed)?;
        if seq & 1 == 1 {
            seq += 1; // a writer died in this slot; its half-written image is simply replaced
        }
        // Release, so a reader that sees this odd sequence also sees our previous commit and
        // can tell "lapped" from "damaged" (found by the loom model).
        mem.store(base, seq + 1, Ordering::Release)?;
        mem.fence(Ordering::Release);
        inside()?;
        mem.copy_in(base + 1, &image[1..])?;
        mem.store(base, seq + 2, Ordering::Release)?;
        mem.store(
            self.committed,
            self.seal.encode(next, false),
            Ordering::Release,
        )?;
        Some(next)
    }

    /// The committed version (MOVED or not); a word that fails its check is damage.
    pub fn committed<W: Words>(&self, mem: &W) -> Result<u64, ReadError> {
        let word = self.load(mem, self.committed, Ordering::Acquire)?;
        self.seal
            .decode(word)
            .map(|(version, _)| version)
            .ok_or_else(|| ReadError::Corrupt("the committed version word fails its check".into()))
    }

    fn load<W: Words>(&self, mem: &W, index: usize, order: Ordering) -> Result<u64, ReadError> {
        mem.load(index, order).ok_or_else(out_of_bounds)
    }

    /// The slot looked wrong: if the committed word moved meanwhile we were lapped, else the file
    /// is damaged.
    fn lapped_or_corrupt<W: Words>(&self, mem: &W, committed: u64, what: &str) -> ReadError {
        match self.committed(mem) {
            Ok(now) if now != committed => ReadError::Lapped,
            _ => ReadError::Corrupt(what.to_string()),
        }
    }

    fn unchanged_or_lapped<W: Words>(
        &self,
        mem: &W,
        base: usize,
        seq: u64,
        committed: u64,
        what: &str,
    ) -> ReadError {
        mem.fence(Ordering::Acquire);
        match mem.load(base, Ordering::Relaxed) {
            Some(now) if now == seq => self.lapped_or_corrupt(mem, committed, what),
            _ => ReadError::Lapped,
        }
    }
}

fn out_of_bounds() -> ReadError {
    ReadError::Corrupt("slot lies outside the file".to_string())
}

#[cfg(test)]
mod loom_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_words_round_trip_and_every_damage_of_up_to_a_byte_is_caught() {
        for version in [0, 1, 2, 255, 256, 65_535, 1 << 40, VERSION_MASK] {
            for moved in [false, true] {
                let word = Seal::Checked.encode(version, moved);
                assert_eq!(Seal::Checked.decode(word), Some((version, moved)));
                for byte in 0..8 {
                    for mask in 1..=255u64 {
                        let damaged = word ^ (mask << (byte * 8));
                        if damaged & !MOVED == word & !MOVED {
                            continue; // only MOVED flipped: harmless by design
                        }
                        assert_eq!(
                            Seal::Checked.decode(damaged),
                            None,
                            "version {version}, byte {byte} ^ {mask:#x}"
                        );
                    }
                }
            }
        }
        // The roll-back of the issue: v -> v - 1 with the old check bits kept.
        let word = Seal::Checked.encode(1000, false);
        assert_eq!(Seal::Checked.decode((word & !VERSION_MASK) | 999), None);
        assert_eq!(Seal::Plain.decode(1000 | MOVED), Some((1000, true)));
    }
}
