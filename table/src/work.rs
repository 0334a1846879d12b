//! What a table change costs the processes that read it, counted: entries decoded, bytes copied
//! out of the mapping, rings built here or read in place from the file. Plain counters kept per
//! handle (a [`crate::Registry`], a router), bumped by the operations that do the work, so that
//! tests can assert that a change costs what it changes (deterministically: work, not time), and
//! a person can see why a first operation was slow.

/// Work done by one handle since it was opened. Every field only grows; compare two readings
/// with [`WorkCounters::since`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkCounters {
    /// Versions read whole: every entry of the slot copied and decoded.
    pub whole_reads: u64,
    /// Versions read as a change of the cached one: the slot header and the changed entries.
    pub delta_reads: u64,
    /// Server entries decoded (and checked against their CRC).
    pub entries_decoded: u64,
    /// Bytes of slots (headers and entries) copied out of the mapping.
    pub bytes_copied: u64,
    /// Servers copied in memory because a cached snapshot was still shared when a change had to
    /// be applied to it (a copy-on-write of the whole list).
    pub servers_cloned: u64,
    /// Versions whose ring this handle looks up in place, in the file (none built).
    pub shared_rings: u64,
    /// Placements (ketama rings, PECL continuums, modula lists) built in this process.
    pub rings_built: u64,
    /// Points of the rings built in this process (hashed and sorted here).
    pub ring_points_built: u64,
    /// Rings a writer derived from the previous version's (only the labels gained or lost
    /// hashed) to write into the file.
    pub rings_derived: u64,
    /// Full scans of a version's server list (positions of the down, draining and marked
    /// servers found again instead of updated for the changed ones).
    pub servers_scanned: u64,
}

impl WorkCounters {
    /// The work done between `earlier` (a reading of the same handle) and `self`.
    pub fn since(&self, earlier: &WorkCounters) -> WorkCounters {
        WorkCounters {
            whole_reads: self.whole_reads - earlier.whole_reads,
            delta_reads: self.delta_reads - earlier.delta_reads,
            entries_decoded: self.entries_decoded - earlier.entries_decoded,
            bytes_copied: self.bytes_copied - earlier.bytes_copied,
            servers_cloned: self.servers_cloned - earlier.servers_cloned,
            shared_rings: self.shared_rings - earlier.shared_rings,
            rings_built: self.rings_built - earlier.rings_built,
            ring_points_built: self.ring_points_built - earlier.ring_points_built,
            rings_derived: self.rings_derived - earlier.rings_derived,
            servers_scanned: self.servers_scanned - earlier.servers_scanned,
        }
    }

    /// Both handles' work (a router's own and its registry's).
    pub fn plus(&self, other: &WorkCounters) -> WorkCounters {
        WorkCounters {
            whole_reads: self.whole_reads + other.whole_reads,
            delta_reads: self.delta_reads + other.delta_reads,
            entries_decoded: self.entries_decoded + other.entries_decoded,
            bytes_copied: self.bytes_copied + other.bytes_copied,
            servers_cloned: self.servers_cloned + other.servers_cloned,
            shared_rings: self.shared_rings + other.shared_rings,
            rings_built: self.rings_built + other.rings_built,
            ring_points_built: self.ring_points_built + other.ring_points_built,
            rings_derived: self.rings_derived + other.rings_derived,
            servers_scanned: self.servers_scanned + other.servers_scanned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WorkCounters;

    #[test]
    fn since_and_plus_are_field_by_field() {
        let a = WorkCounters {
            whole_reads: 1,
            entries_decoded: 10,
            ..WorkCounters::default()
        };
        let b = WorkCounters {
            whole_reads: 1,
            delta_reads: 1,
            entries_decoded: 11,
            ..WorkCounters::default()
        };
        let d = b.since(&a);
        assert_eq!((d.whole_reads, d.delta_reads, d.entries_decoded), (0, 1, 1));
        assert_eq!(a.plus(&d), b);
    }
}
