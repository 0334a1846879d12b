//! Virtual buckets: the placement of libmemcached's `MEMCACHED_DISTRIBUTION_VIRTUAL_BUCKET`
//! (`memcached_bucket_set`, php-memcached's `setBucket`) and of libvbucket's maps (moxi,
//! Couchbase), key for key.
//!
//! A key hashes (with any libhashkit hash; libvbucket's `CRC` is libhashkit's `crc`) to one of
//! a power-of-two number of buckets, `hash & (buckets − 1)`, and the [`BucketMap`] names each
//! bucket's owner and its replicas by their position in the server list. A client with a
//! single server uses bucket 0's owner whatever the key (libmemcached hashes nothing then).
//!
//! The map is data an operator owns, not something derived from the list: a change of the list
//! moves no key until buckets are moved (`mcadmin buckets move`, `balance`). A move is staged
//! in the forward map (libvbucket's `vBucketMapForward`): while a bucket's forward row differs
//! from its row, keys route to the forward owner and the row's owner is where they come from
//! (drained as a draining server is). A move completes by making the forward rows the rows.

use crate::hash::KeyHash;

/// Buckets of a map made without a count (`policy --distribution vbucket`, `buckets balance`).
pub const DEFAULT_BUCKETS: usize = 1024;
/// Most buckets of a map (libvbucket's limit).
pub const MAX_BUCKETS: usize = 65_536;
/// Most replica columns of a map (libvbucket's limit).
pub const MAX_REPLICAS: usize = 4;
/// A cell of no server (libvbucket's `-1`).
pub const UNASSIGNED: u16 = u16::MAX;
/// Most servers a map can name (positions 0..65535; 65535 is [`UNASSIGNED`]).
pub const MAX_SERVERS: usize = UNASSIGNED as usize;

/// Which servers own which buckets: for each bucket a row of `1 + replicas` server positions
/// (owner first), and optionally the forward rows of a move under way.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BucketMap {
    width: usize,
    rows: Vec<u16>,
    forward: Option<Vec<u16>>,
}

/// How many buckets and replica columns a map has ([`BucketMap::shape`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub buckets: usize,
    pub replicas: usize,
}

impl Shape {
    /// Checks a shape: a power of two from 1 to 65 536 buckets, 0 to 4 replicas.
    pub fn new(buckets: usize, replicas: usize) -> Result<Shape, String> {
        if !buckets.is_power_of_two() || buckets > MAX_BUCKETS {
            return Err(format!(
                "{buckets} buckets: the count must be a power of two from 1 to {MAX_BUCKETS}"
            ));
        }
        if replicas > MAX_REPLICAS {
            return Err(format!(
                "{replicas} replicas: a map has at most {MAX_REPLICAS}"
            ));
        }
        Ok(Shape { buckets, replicas })
    }

    pub fn width(self) -> usize {
        1 + self.replicas
    }

    pub fn cells(self) -> usize {
        self.buckets * self.width()
    }
}

impl BucketMap {
    /// A map of `shape` from its cells (row after row, owner first; [`UNASSIGNED`] for none),
    /// checked against a list of `servers`: every cell names one of them or none, no row names
    /// a server twice, a row with no owner has no replicas.
    pub fn new(
        shape: Shape,
        rows: Vec<u16>,
        forward: Option<Vec<u16>>,
        servers: usize,
    ) -> Result<BucketMap, String> {
        if rows.len() != shape.cells() {
            return Err(format!(
                "{} cells do not make the {} rows of {} (owner and replicas) of its shape",
                rows.len(),
                shape.buckets,
                shape.width()
            ));
        }
        let map = BucketMap {
            width: shape.width(),
            rows,
            forward,
        };
        map.check(servers)?;
        Ok(map)
    }

    /// A map of `shape` over `positions` (servers of the list, in order) that gives each the
    /// same number of buckets to one, owner and replicas alike: bucket `b`'s owner is
    /// `positions[b % n]` and its replicas the next ones around. Unassigned without positions.
    pub fn balanced(shape: Shape, positions: &[usize]) -> BucketMap {
        let n = positions.len();
        let mut rows = vec![UNASSIGNED; shape.cells()];
        if n > 0 {
            for (b, row) in rows.chunks_exact_mut(shape.width()).enumerate() {
                for (column, cell) in row.iter_mut().enumerate().take(n) {
                    *cell = positions[(b + column) % n] as u16;
                }
            }
        }
        BucketMap {
            width: shape.width(),
            rows,
            forward: None,
        }
    }

    /// Checks the map against a list of `servers` (see [`BucketMap::new`]).
    pub fn check(&self, servers: usize) -> Result<(), String> {
        let shape = self.shape();
        Shape::new(shape.buckets, shape.replicas)?;
        if self.rows.len() != shape.cells() {
            return Err(format!(
                "{} cells do not make rows of {}",
                self.rows.len(),
                self.width
            ));
        }
        let tables = std::iter::once(("map", &self.rows))
            .chain(self.forward.iter().map(|f| ("forward map", f)));
        for (what, rows) in tables {
            if rows.len() != self.rows.len() {
                return Err(format!(
                    "the {what} has {} cells, not {}",
                    rows.len(),
                    self.rows.len()
                ));
            }
            for (b, row) in rows.chunks_exact(self.width).enumerate() {
                check_row(row, servers).map_err(|why| format!("{what}, bucket {b}: {why}"))?;
            }
        }
        if let Some(b) = (0..self.buckets()).find(|&b| {
            self.row(b)[0] != UNASSIGNED && self.forward_row(b).is_some_and(|f| f[0] == UNASSIGNED)
        }) {
            return Err(format!(
                "forward map, bucket {b}: no owner for a bucket that has one (a bucket moves to a server, never to none)"
            ));
        }
        Ok(())
    }

    pub fn shape(&self) -> Shape {
        Shape {
            buckets: self.rows.len() / self.width,
            replicas: self.width - 1,
        }
    }

    pub fn buckets(&self) -> usize {
        self.shape().buckets
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Every cell, row after row.
    pub fn cells(&self) -> &[u16] {
        &self.rows
    }

    /// The forward map's cells, when a move is under way.
    pub fn forward_cells(&self) -> Option<&[u16]> {
        self.forward.as_deref()
    }

    /// The bucket of a key hash (`hash & (buckets − 1)`).
    pub fn bucket_of(&self, hash: u32) -> usize {
        hash as usize & (self.buckets() - 1)
    }

    /// Bucket `b`'s row: owner, then replicas ([`UNASSIGNED`] for none).
    pub fn row(&self, b: usize) -> &[u16] {
        &self.rows[b * self.width..][..self.width]
    }

    /// Bucket `b`'s forward row, when a move is under way.
    pub fn forward_row(&self, b: usize) -> Option<&[u16]> {
        Some(&self.forward.as_ref()?[b * self.width..][..self.width])
    }

    /// Where bucket `b`'s keys are routed: its forward row while it moves, else its row.
    pub fn routed_row(&self, b: usize) -> &[u16] {
        match self.forward_row(b) {
            Some(row) if row[0] != UNASSIGNED => row,
            _ => self.row(b),
        }
    }

    /// Whether bucket `b` is moving: its forward owner differs from its owner.
    pub fn is_moving(&self, b: usize) -> bool {
        self.moving_from(b).is_some()
    }

    /// The owner bucket `b` is moving off (its row's), while its forward owner is another.
    pub fn moving_from(&self, b: usize) -> Option<usize> {
        let to = self.forward_row(b)?[0];
        let from = self.row(b)[0];
        (to != UNASSIGNED && from != UNASSIGNED && to != from).then_some(from as usize)
    }

    /// Bucket `b`'s owner (position), if assigned.
    pub fn owner(&self, b: usize) -> Option<usize> {
        cell(self.routed_row(b)[0])
    }

    /// Per server of a list of `servers`: buckets it owns, and buckets it holds a replica of
    /// (routed rows).
    pub fn counts(&self, servers: usize) -> Vec<(usize, usize)> {
        let mut counts = vec![(0, 0); servers];
        for b in 0..self.buckets() {
            for (column, &c) in self.routed_row(b).iter().enumerate() {
                if let Some(entry) = cell(c).and_then(|p| counts.get_mut(p)) {
                    match column {
                        0 => entry.0 += 1,
                        _ => entry.1 += 1,
                    }
                }
            }
        }
        counts
    }

    /// Per server of a list of `servers`: buckets moving off it, and buckets moving onto it.
    pub fn moving_counts(&self, servers: usize) -> (Vec<usize>, Vec<usize>) {
        let (mut off, mut on) = (vec![0; servers], vec![0; servers]);
        for b in 0..self.buckets() {
            if let (Some(from), Some(to)) = (self.moving_from(b), self.owner(b))
                && let (Some(off), Some(on)) = (off.get_mut(from), on.get_mut(to))
            {
                *off += 1;
                *on += 1;
            }
        }
        (off, on)
    }

    /// Buckets no server owns: their keys have no server until a balance or a load assigns
    /// them.
    pub fn unassigned(&self) -> usize {
        (0..self.buckets())
            .filter(|&b| self.owner(b).is_none())
            .count()
    }

    /// Buckets whose forward row differs from their row.
    pub fn moving(&self) -> usize {
        (0..self.buckets()).filter(|&b| self.is_moving(b)).count()
    }

    /// Whether any cell (rows or forward rows) names `position`.
    pub fn names(&self, position: usize) -> bool {
        let p = position as u16;
        self.rows.contains(&p) || self.forward.as_ref().is_some_and(|f| f.contains(&p))
    }

    /// The map after the servers `leaving` says (by position) left the list: the others move
    /// down over them, in one pass. Refused, with the first position named and its bucket,
    /// when a cell names one of them.
    pub fn without_positions(&self, leaving: &[bool]) -> Result<BucketMap, (usize, usize)> {
        let mut new_position = Vec::with_capacity(leaving.len());
        let mut next = 0u16;
        for &gone in leaving {
            new_position.push((!gone).then_some(next));
            next += u16::from(!gone);
        }
        let shift = |cells: &[u16]| -> Result<Vec<u16>, (usize, usize)> {
            cells
                .iter()
                .enumerate()
                .map(|(i, &c)| match cell(c) {
                    None => Ok(UNASSIGNED),
                    Some(p) => new_position
                        .get(p)
                        .copied()
                        .flatten()
                        .ok_or((p, i / self.width)),
                })
                .collect()
        };
        Ok(BucketMap {
            width: self.width,
            rows: shift(&self.rows)?,
            forward: self.forward.as_deref().map(shift).transpose()?,
        })
    }

    /// Stages the move of bucket `b` to owner `to`: its forward row is `to`, then its row's
    /// replicas but `to` (the old owner leaves the row; a column left over is none). Buckets not
    /// staged keep their row as their forward row.
    pub fn stage(&mut self, b: usize, to: usize) {
        let width = self.width;
        let rows = &self.rows;
        let forward = self.forward.get_or_insert_with(|| rows.clone());
        let old: Vec<u16> = rows[b * width..][..width].to_vec();
        // The old owner leaves the row: its copies are drained, not kept as a replica's.
        let mut row = vec![to as u16];
        row.extend(old[1..].iter().copied().filter(|&c| c != to as u16));
        row.resize(width, UNASSIGNED);
        forward[b * width..][..width].copy_from_slice(&row);
    }

    /// The map with `count` more buckets staged to move from owner `from` to `to` (positions):
    /// the first buckets `from` owns that are not already moving. Refused when it owns fewer.
    pub fn plan_move(&self, count: usize, from: usize, to: usize) -> Result<BucketMap, String> {
        if from == to {
            return Err("a bucket cannot move to the server it is on".into());
        }
        let free: Vec<usize> = (0..self.buckets())
            .filter(|&b| self.owner(b) == Some(from) && !self.is_moving(b))
            .take(count)
            .collect();
        if free.len() < count {
            return Err(format!(
                "the server owns {} buckets that are not already moving, fewer than {count}",
                free.len()
            ));
        }
        let mut next = self.clone();
        for b in free {
            next.stage(b, to);
        }
        Ok(next)
    }

    /// The map with moves staged that make it even over `positions` (servers of the list, in
    /// order): each owns `buckets / n` buckets or one more, and as few buckets move as can be
    /// (those of servers not among `positions`, and each server's excess). Replica columns
    /// are the next servers of `positions` after the owner, never the owner a bucket moves off.
    /// For a map with no move under way (finish those first); the map itself when it is even.
    pub fn plan_balance(&self, positions: &[usize]) -> BucketMap {
        let n = positions.len();
        let buckets = self.buckets();
        if n == 0 {
            return self.clone();
        }
        // A position's index in `positions` (the first, as `position` finds it), looked up
        // once a bucket rather than by a scan of the list.
        let mut indexes = vec![None; positions.iter().max().map_or(0, |&p| p + 1)];
        for (i, &p) in positions.iter().enumerate().rev() {
            indexes[p] = Some(i);
        }
        let index_of = |p: usize| indexes.get(p).copied().flatten();
        let mut owned: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut homeless = Vec::new();
        for b in 0..buckets {
            match self.owner(b).and_then(index_of) {
                Some(i) => owned[i].push(b),
                None => homeless.push(b),
            }
        }
        // The servers holding most keep the extra bucket of the remainder.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(owned[i].len()));
        let mut quota = vec![buckets / n; n];
        for &i in order.iter().take(buckets % n) {
            quota[i] += 1;
        }
        for i in 0..n {
            while owned[i].len() > quota[i] {
                homeless.push(owned[i].pop().expect("over quota"));
            }
        }
        homeless.sort_unstable();
        let mut next_owner = vec![UNASSIGNED; buckets];
        for (i, list) in owned.iter().enumerate() {
            for &b in list {
                next_owner[b] = positions[i] as u16;
            }
        }
        let mut homeless = homeless.into_iter();
        for i in 0..n {
            while owned[i].len() < quota[i] {
                let b = homeless.next().expect("quotas add up to the buckets");
                owned[i].push(b);
                next_owner[b] = positions[i] as u16;
            }
        }
        let width = self.width;
        let mut forward = vec![UNASSIGNED; self.rows.len()];
        for (b, row) in forward.chunks_exact_mut(width).enumerate() {
            let owner = next_owner[b];
            let i = index_of(owner as usize).expect("assigned to a position");
            // Replicas: the next positions after the owner, but never the owner it moves off
            // (whose copies the move drains).
            let leaving = Some(self.row(b)[0]).filter(|&old| old != owner);
            let next = (0..n)
                .map(|step| positions[(i + step) % n] as u16)
                .filter(|&p| Some(p) != leaving);
            for (cell, p) in row.iter_mut().zip(next) {
                *cell = p;
            }
        }
        if forward == self.rows {
            return self.clone(); // even already: nothing to stage
        }
        BucketMap {
            width,
            rows: self.rows.clone(),
            forward: Some(forward),
        }
    }

    /// Completes the moves staged: the forward rows become the rows.
    pub fn complete(&mut self) {
        if let Some(forward) = self.forward.take() {
            self.rows = forward;
        }
    }
}

/// The position a cell names, if any.
pub fn cell(c: u16) -> Option<usize> {
    (c != UNASSIGNED).then_some(c as usize)
}

/// A cell as every written form of a map has it (libvbucket's JSON, the fleet document, the
/// dump text): the server index, or -1 for none.
pub fn signed_cell(c: u16) -> i64 {
    cell(c).map_or(-1, |p| p as i64)
}

/// A cell read from its written form: -1 is none, 0 up to `servers` (exclusive) a server;
/// anything else is no cell. `servers` is at most [`UNASSIGNED`], so no index reads as none.
pub fn from_signed_cell(n: i64, servers: usize) -> Option<u16> {
    match n {
        -1 => Some(UNASSIGNED),
        n if (0..servers.min(UNASSIGNED as usize) as i64).contains(&n) => Some(n as u16),
        _ => None,
    }
}

fn check_row(row: &[u16], servers: usize) -> Result<(), String> {
    for (column, &c) in row.iter().enumerate() {
        if c == UNASSIGNED {
            continue;
        }
        if c as usize >= servers {
            return Err(format!(
                "server index {c} out of range (the list has {servers})"
            ));
        }
        if row[..column].contains(&c) {
            return Err(format!("server index {c} twice in a row"));
        }
    }
    if row[0] == UNASSIGNED && row.iter().any(|&c| c != UNASSIGNED) {
        return Err("replicas without an owner".into());
    }
    Ok(())
}

/// Where a key lands on a bucket map: libmemcached's rule. With one server on the list, bucket
/// 0 whatever the key (libmemcached does not hash then); else `hash(key) & (buckets − 1)`.
pub fn key_bucket(map: &BucketMap, hash: KeyHash, servers: usize, key: &[u8]) -> (u32, usize) {
    if servers == 1 {
        return (0, 0);
    }
    let value = hash.hash(key);
    (value, map.bucket_of(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libmemcached's own vectors (tests/libmemcached-1.0/virtual_buckets.cc): crc, 4 buckets,
    /// map {0, 1, 2, 1}, three servers.
    #[test]
    fn libmemcached_virtual_bucket_vectors() {
        let map = BucketMap::new(Shape::new(4, 0).unwrap(), vec![0, 1, 2, 1], None, 3).unwrap();
        let expected = [
            ("hello", 0),
            ("doctor", 0),
            ("name", 1),
            ("continue", 1),
            ("yesterday", 0),
            ("tomorrow", 1),
            ("another key", 2),
        ];
        for (key, server) in expected {
            let (_, b) = key_bucket(&map, KeyHash::Crc, 3, key.as_bytes());
            assert_eq!(map.owner(b), Some(server), "{key}");
        }
        // One server: bucket 0 whatever the key.
        assert_eq!(key_bucket(&map, KeyHash::Crc, 1, b"another key"), (0, 0));
    }

    #[test]
    fn malformed_maps_are_refused_with_the_reason() {
        assert!(Shape::new(1000, 0).unwrap_err().contains("power of two"));
        assert!(Shape::new(131_072, 0).unwrap_err().contains("power of two"));
        assert!(Shape::new(4, 5).unwrap_err().contains("at most 4"));
        let shape = Shape::new(2, 1).unwrap();
        let bad = |rows: Vec<u16>| BucketMap::new(shape, rows, None, 2).unwrap_err();
        assert!(bad(vec![0, 1, 1]).contains("rows"));
        assert!(
            bad(vec![0, 1]).contains("2 cells do not make the 2 rows of 2"),
            "too short"
        );
        assert!(bad(vec![0, 2, 1, 0]).contains("out of range"));
        assert!(bad(vec![0, 0, 1, 0]).contains("twice"));
        assert!(bad(vec![UNASSIGNED, 1, 1, 0]).contains("without an owner"));
        assert!(BucketMap::new(shape, vec![0, 1, UNASSIGNED, UNASSIGNED], None, 2).is_ok());
    }

    #[test]
    fn signed_cells_read_back_what_they_write_and_nothing_out_of_range() {
        for (c, n) in [(UNASSIGNED, -1), (0, 0), (2, 2), (UNASSIGNED - 1, 65_534)] {
            assert_eq!(signed_cell(c), n);
            assert_eq!(from_signed_cell(n, UNASSIGNED as usize), Some(c));
        }
        assert_eq!(from_signed_cell(3, 3), None);
        assert_eq!(from_signed_cell(-2, 3), None);
        assert_eq!(
            from_signed_cell(65_535, usize::MAX),
            None,
            "none is only -1"
        );
        assert_eq!(from_signed_cell(i64::MAX, usize::MAX), None);
    }

    #[test]
    fn a_balanced_map_gives_each_server_the_same_buckets_to_one() {
        let map = BucketMap::balanced(Shape::new(1024, 1).unwrap(), &[0, 2, 3]);
        let counts = map.counts(4);
        assert_eq!(counts[1], (0, 0));
        for &(owned, replica) in [counts[0], counts[2], counts[3]].iter() {
            assert!((341..=342).contains(&owned), "{counts:?}");
            assert!((341..=342).contains(&replica), "{counts:?}");
        }
        map.check(4).unwrap();
    }

    #[test]
    fn a_staged_move_routes_to_the_new_owner_until_completed() {
        let mut map = BucketMap::balanced(Shape::new(4, 1).unwrap(), &[0, 1]);
        assert_eq!(map.row(0), &[0, 1]);
        map.stage(0, 1);
        assert_eq!(map.owner(0), Some(1));
        assert_eq!(map.moving_from(0), Some(0));
        assert_eq!(
            map.forward_row(0),
            Some(&[1, UNASSIGNED][..]),
            "0 leaves the row"
        );
        assert_eq!(map.moving(), 1);
        map.complete();
        assert_eq!(map.row(0), &[1, UNASSIGNED]);
        assert_eq!(map.moving(), 0);
    }

    #[test]
    fn a_planned_move_stages_the_first_free_buckets_of_the_server() {
        let map = BucketMap::balanced(Shape::new(16, 0).unwrap(), &[0, 1]);
        let planned = map.plan_move(3, 0, 2).unwrap();
        assert_eq!(planned.moving(), 3);
        assert_eq!(planned.counts(3), vec![(5, 0), (8, 0), (3, 0)]);
        let more = planned.plan_move(5, 0, 2).unwrap();
        assert_eq!(more.moving(), 8);
        assert!(
            more.plan_move(1, 0, 2)
                .unwrap_err()
                .contains("owns 0 buckets")
        );
        assert!(map.plan_move(1, 1, 1).is_err());
    }

    #[test]
    fn a_balance_moves_only_what_it_must_and_evens_the_owners() {
        let map = BucketMap::balanced(Shape::new(1024, 1).unwrap(), &[0, 1, 2]);
        // A fourth server: each of the three gives up a quarter of its buckets, no more.
        let four = map.plan_balance(&[0, 1, 2, 3]);
        let counts = four.counts(4);
        assert!(counts.iter().all(|c| c.0 == 256), "{counts:?}");
        assert_eq!(four.moving(), 256);
        four.check(4).unwrap();
        // Server 1 leaves: only its buckets move.
        let without_1 = map.plan_balance(&[0, 2]);
        assert_eq!(without_1.moving(), map.counts(3)[1].0);
        assert!(without_1.counts(3).iter().all(|c| c.0 != 0 || c.1 == 0));
        // Balanced already: nothing moves.
        assert_eq!(map.plan_balance(&[0, 1, 2]).moving(), 0);
    }

    #[test]
    fn a_removed_position_shifts_the_others_unless_named() {
        let map = BucketMap::balanced(Shape::new(4, 0).unwrap(), &[0, 2]);
        assert_eq!(map.without_positions(&[true, false, false]), Err((0, 0)));
        let shifted = map.without_positions(&[false, true, false]).unwrap();
        assert_eq!(shifted.cells(), &[0, 1, 0, 1]);
        let map = BucketMap::balanced(Shape::new(4, 0).unwrap(), &[1, 4]);
        let shifted = map
            .without_positions(&[true, false, true, true, false])
            .unwrap();
        assert_eq!(shifted.cells(), &[0, 1, 0, 1]);
    }
}
