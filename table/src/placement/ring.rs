//! Key → server selection: the ketama continuum, byte-compatible with libmemcached's
//! `MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED` (PHP's `OPT_LIBKETAMA_COMPATIBLE`), so that mcshm clients
//! and libmemcached clients of the same fleet send every key to the same server.
//!
//! For N servers with total weight W, server s gets `4 × floor(w_s / W × 40 × N + 1e-10)` points
//! (computed in f32 as libmemcached does). Its point names are `host-i` (or `host:port-i` when
//! the port is not 11211) for i = 0, 1, …; each name's MD5 gives four points, its digest read as
//! four little-endian u32s. Points are sorted by (value, server order). A key hashes to the first
//! four bytes of its MD5 as a little-endian u32 and belongs to the first point at or after that
//! value, wrapping to the first point. `tests/ketama.rs` checks this against libmemcached itself.

use md5::{Digest, Md5};

use crate::address::{Address, DEFAULT_PORT};
use crate::hash::{KeyHash, ketama_md5};

/// A built continuum: sorted points, each naming a server by its index in the list it was
/// built from, and an index over them.
///
/// The index makes a lookup O(1): `index[b]` is the first point whose value's top `bits` bits
/// are at least `b`, so a key's point lies in `points[index[b]..index[b + 1]]` (about two points
/// per bucket: `bits` grows with the ring, up to 16 for 65 536 buckets), found by a search of
/// one or two cache lines instead of a binary search over up to 1.6 M points (which, with
/// distinct keys, misses the cache at every step).
#[derive(Clone, Debug, Default)]
pub struct Ring {
    /// (value, server) pairs, sorted: a lookup's value and server share a cache line.
    points: Vec<(u32, u32)>,
    index: Vec<u32>,
    shift: u32,
    /// How the points were made, and so how keys hash onto them.
    scheme: Points,
}

/// Most buckets of the index (top 16 bits of the hash).
const MAX_INDEX_BITS: u32 = 16;
/// Rings of this many servers or more hash their point names on several threads.
const PARALLEL_FROM: usize = 1000;

impl Ring {
    /// Builds the continuum of `servers` (name as [`point_name`], weight), in list order.
    ///
    /// The MD5s of the point names are most of the work (10 000 servers: 400 000 of them), so
    /// large rings hash on every CPU (each thread a contiguous run of servers, concatenated in
    /// list order), and the points are sorted by a stable radix sort on their values, which
    /// orders ties by server as the (value, server) order requires.
    pub fn build<'a>(servers: impl IntoIterator<Item = (&'a str, u16)> + Clone) -> Ring {
        Ring::build_with(Points::Weighted, servers)
    }

    /// [`Ring::build`] with the points `scheme` makes.
    pub fn build_with<'a>(
        scheme: Points,
        servers: impl IntoIterator<Item = (&'a str, u16)> + Clone,
    ) -> Ring {
        let list: Vec<(&str, u16)> = servers.into_iter().collect();
        let count = list.len();
        // Every server's points have their place in one buffer allocated here: the hashing
        // threads only fill disjoint parts of it (no allocation of theirs outlives them, so a
        // process keeps no per-thread heap after a build).
        let counts: Vec<usize> = scheme
            .counts(list.iter().map(|&(_, w)| w))
            .into_iter()
            .map(|c| c as usize)
            .collect();
        let mut points = vec![(0u32, 0u32); counts.iter().sum()];
        let fill = |first: usize, run: &[(&str, u16)], out: &mut [(u32, u32)]| {
            let mut at = 0;
            for (offset, &(name, _)) in run.iter().enumerate() {
                let n = counts[first + offset];
                let server = (first + offset) as u32;
                scheme.hash_points(name, server, 0, &mut out[at..at + n]);
                at += n;
            }
        };
        let threads = match count {
            0..PARALLEL_FROM => 1,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
        };
        if threads == 1 {
            fill(0, &list, &mut points);
        } else {
            let run = count.div_ceil(threads);
            std::thread::scope(|scope| {
                let fill = &fill;
                let mut rest: &mut [(u32, u32)] = &mut points;
                for (n, chunk) in list.chunks(run).enumerate() {
                    let len: usize = counts[n * run..n * run + chunk.len()].iter().sum();
                    let (part, tail) = rest.split_at_mut(len);
                    rest = tail;
                    scope.spawn(move || fill(n * run, chunk, part));
                }
            });
        }
        Ring::from_sorted(radix_sort_by_value(points), scheme)
    }

    /// The ring of points already sorted by (value, server), made by `scheme`.
    pub(crate) fn from_sorted(points: Vec<(u32, u32)>, scheme: Points) -> Ring {
        let (index, shift) = build_index(&points);
        Ring {
            points,
            index,
            shift,
            scheme,
        }
    }

    /// The position of the first point at or after `hash` (`len()` when past the last one).
    fn position(&self, hash: u32) -> usize {
        let bucket = (u64::from(hash) >> self.shift) as usize;
        let (lo, hi) = (self.index[bucket] as usize, self.index[bucket + 1] as usize);
        let found = first_at_or_after(hi - lo, hash, self.shift, |i| Some(self.points[lo + i].0));
        lo + found.unwrap_or(hi - lo)
    }

    /// The index (in the build list) of the server that owns `key`; `None` for an empty ring.
    pub fn server_for(&self, key: &[u8]) -> Option<usize> {
        self.server_for_hash(self.scheme.hash_key(key))
    }

    /// The owner of a key hash (see [`ketama_md5`]).
    pub fn server_for_hash(&self, hash: u32) -> Option<usize> {
        self.point_for_hash(hash).map(|p| p.server)
    }

    /// The point a key hash lands on: the first at or after `hash`, wrapping to the first
    /// (`None` for an empty ring). What [`Ring::server_for_hash`] answers with, shown
    /// (`mcadmin explain`).
    pub fn point_for_hash(&self, hash: u32) -> Option<RingPoint> {
        if self.points.is_empty() {
            return None;
        }
        let at = self.position(hash);
        let index = if at == self.points.len() { 0 } else { at };
        let (value, server) = self.points[index];
        Some(RingPoint {
            index,
            value,
            server: server as usize,
        })
    }

    /// How keys hash onto this ring.
    pub fn scheme(&self) -> Points {
        self.scheme
    }

    /// The distinct servers along the ring from `key`'s point on, in ring order (the owner
    /// first): replicas and fallbacks. Lazy: take only as many as needed.
    pub fn servers_from(&self, key: &[u8]) -> impl Iterator<Item = usize> + '_ {
        self.servers_from_hash(self.scheme.hash_key(key))
    }

    /// [`Ring::servers_from`] of a key hash.
    pub fn servers_from_hash(&self, hash: u32) -> impl Iterator<Item = usize> + '_ {
        let n = self.points.len();
        let start = if n == 0 { 0 } else { self.position(hash) };
        let mut seen = Vec::new();
        (0..n).filter_map(move |i| {
            let s = self.points[(start + i) % n].1 as usize;
            (!seen.contains(&s)).then(|| {
                seen.push(s);
                s
            })
        })
    }

    /// The sorted (value, member) points, the index, and its bits (for the shared ring).
    pub(crate) fn parts(&self) -> (&[(u32, u32)], &[u32], u32) {
        (&self.points, &self.index, 32 - self.shift)
    }

    /// The points, index and index bits, for tests that compare rings point for point.
    #[doc(hidden)]
    pub fn parts_for_tests(&self) -> (&[(u32, u32)], &[u32], u32) {
        self.parts()
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// One point of a [`Ring`]: where a key hash lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingPoint {
    /// Its place among the ring's points, sorted by value (0-based).
    pub index: usize,
    /// Its value on the circle.
    pub value: u32,
    /// The server it belongs to (index in the list the ring was built from).
    pub server: usize,
}

/// How a continuum's points are made from its servers' names: libmemcached's two ways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Points {
    /// `MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED`: points in proportion to the weights (see
    /// `point_counts`), four per label, from the label's MD5; keys hash with MD5.
    #[default]
    Weighted,
    /// `MEMCACHED_BEHAVIOR_KETAMA` on servers of weight 1: 100 points per server, one per
    /// label, the label's hash by the domain's key hash, which keys hash with too.
    Unweighted(KeyHash),
}

/// Points per server of an unweighted continuum (libmemcached's `MEMCACHED_POINTS_PER_SERVER`).
pub const UNWEIGHTED_POINTS: u32 = 100;

impl Points {
    /// The points each server gets for `weights`, in list order.
    pub(crate) fn counts(self, weights: impl Iterator<Item = u16> + Clone) -> Vec<u32> {
        match self {
            Points::Weighted => point_counts(weights),
            Points::Unweighted(_) => weights.map(|_| UNWEIGHTED_POINTS).collect(),
        }
    }

    /// Points one label gives.
    pub(crate) fn per_label(self) -> u32 {
        match self {
            Points::Weighted => 4,
            Points::Unweighted(_) => 1,
        }
    }

    /// A key's position on the continuum.
    pub fn hash_key(self, key: &[u8]) -> u32 {
        match self {
            Points::Weighted => ketama_md5(key),
            Points::Unweighted(hash) => hash.hash(key),
        }
    }

    /// Fills `out` (its length a multiple of [`Points::per_label`]) with points of the server
    /// named `name`, from label `first` on (labels `name-i`), each tagged `server`.
    pub(crate) fn hash_points(self, name: &str, server: u32, first: u32, out: &mut [(u32, u32)]) {
        match self {
            Points::Weighted => hash_points(name, server, first, out),
            Points::Unweighted(hash) => {
                let mut label = Label::new(name);
                for (i, point) in (first..).zip(out.iter_mut()) {
                    *point = (hash.hash(label.numbered(i)), server);
                }
            }
        }
    }
}

/// A point label, `name-i`, rewritten in place for each `i` (no allocation per label).
struct Label {
    bytes: [u8; 512],
    stem: usize,
}

impl Label {
    fn new(name: &str) -> Label {
        let mut bytes = [0u8; 512];
        let stem = name.len().min(bytes.len() - 12);
        bytes[..stem].copy_from_slice(&name.as_bytes()[..stem]);
        bytes[stem] = b'-';
        Label { bytes, stem }
    }

    fn numbered(&mut self, i: u32) -> &[u8] {
        let len = self.stem + 1 + write_decimal(&mut self.bytes[self.stem + 1..], i);
        &self.bytes[..len]
    }
}

/// The points each server gets (a multiple of 4) for `weights`, in list order: libmemcached's
/// `4 × floor(w / W × 40 × N + 1e-10)`, in f32 as it computes it.
pub(crate) fn point_counts(weights: impl Iterator<Item = u16> + Clone) -> Vec<u32> {
    let count = weights.clone().count();
    let total: u64 = weights.clone().map(|w| u64::from(w.max(1))).sum();
    weights
        .map(|weight| {
            let pct = f32::from(weight.max(1)) / total as f32;
            let scaled = pct * 160.0 / 4.0 * count as f32;
            ((f64::from(scaled) + 0.000_000_000_1) as f32).floor() as u32 * 4
        })
        .collect()
}

/// Fills `out` (its length a multiple of 4) with points of the server named `name`, from
/// label `first` on: the MD5 of `name-i` gives its points 4i..4i+4, each tagged `server`.
fn hash_points(name: &str, server: u32, first: u32, out: &mut [(u32, u32)]) {
    let mut label = Label::new(name);
    for (i, four) in (first..).zip(out.chunks_exact_mut(4)) {
        let digest = Md5::digest(label.numbered(i));
        for (point, chunk) in four.iter_mut().zip(digest.chunks_exact(4)) {
            *point = (u32::from_le_bytes(chunk.try_into().unwrap()), server);
        }
    }
}

/// Writes `n` in decimal at the start of `out` (the point labels' suffix); returns its length.
fn write_decimal(out: &mut [u8], mut n: u32) -> usize {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - at;
    out[..len].copy_from_slice(&digits[at..]);
    len
}

/// Sorts points by value, keeping the order of equal values (LSD radix, four 8-bit passes):
/// points are generated in server order, so ties come out ordered by server.
fn radix_sort_by_value(mut points: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    let mut other = vec![(0u32, 0u32); points.len()];
    for pass in 0..4 {
        let shift = pass * 8;
        let mut counts = [0usize; 257];
        for &(value, _) in &points {
            counts[((value >> shift) & 0xff) as usize + 1] += 1;
        }
        for digit in 0..256 {
            counts[digit + 1] += counts[digit];
        }
        for &point in &points {
            let digit = ((point.0 >> shift) & 0xff) as usize;
            other[counts[digit]] = point;
            counts[digit] += 1;
        }
        std::mem::swap(&mut points, &mut other);
    }
    points
}

/// The bucket index of sorted `points` (see [`Ring`]): `2^bits + 1` entries, with `bits` about
/// log2 of the number of points (at least 1, at most [`MAX_INDEX_BITS`]), and the shift that
/// takes a hash to its bucket.
fn build_index(points: &[(u32, u32)]) -> (Vec<u32>, u32) {
    let bits = index_bits(points.len());
    let shift = 32 - bits;
    let buckets = 1usize << bits;
    let mut index = Vec::with_capacity(buckets + 1);
    let mut at = 0usize;
    for bucket in 0..buckets {
        let start = (bucket as u64) << shift;
        while at < points.len() && u64::from(points[at].0) < start {
            at += 1;
        }
        index.push(at as u32);
    }
    index.push(points.len() as u32);
    (index, shift)
}

/// The first of a bucket's `n` sorted values at or after `hash` (`n` when none is), where the
/// bucket holds the hashes that share their top `32 - shift` bits with `hash`; `None` when
/// `value` answers `None` (a shared ring's word it cannot read).
///
/// Points are MD5 outputs, spread evenly over their bucket, so the answer is close to where
/// `hash` falls in the bucket's range: the search starts there and steps to it. At 10 000
/// servers a bucket holds ~24 points (192 bytes, three or four cache lines); a binary search
/// touches two or three of them one after another, each a miss with distinct keys, where the
/// guess and its neighbours share one. It is bounded by `n` whatever the values.
pub(crate) fn first_at_or_after(
    n: usize,
    hash: u32,
    shift: u32,
    mut value: impl FnMut(usize) -> Option<u32>,
) -> Option<usize> {
    if n == 0 {
        return Some(0);
    }
    let offset = u64::from(hash) & ((1u64 << shift) - 1);
    let guess = ((u128::from(offset) * n as u128) >> shift) as usize;
    let mut at = guess.min(n - 1);
    if value(at)? < hash {
        at += 1;
        while at < n && value(at)? < hash {
            at += 1;
        }
    } else {
        while at > 0 && value(at - 1)? >= hash {
            at -= 1;
        }
    }
    Some(at)
}

/// Index bits for a ring of `points` points: about log2 of the count, 1 to 16.
pub fn index_bits(points: usize) -> u32 {
    (usize::BITS - points.leading_zeros()).clamp(1, MAX_INDEX_BITS)
}

/// The name a server's points are hashed from on a ketama-spy ring (libmemcached's
/// `MEMCACHED_DISTRIBUTION_CONSISTENT_KETAMA_SPY`, spymemcached's `KetamaNodeLocator`): `/`, the
/// host as configured, `:port` always.
pub fn spy_point_name(address: &Address) -> String {
    format!("/{}:{}", address.host(), address.port().unwrap_or(0))
}

/// The name a server's points are hashed from: the host as configured, with `:port` when the
/// port is not 11211 (a unix socket is `path:0`, as libmemcached names it).
pub fn point_name(address: &Address) -> String {
    match address.port() {
        Some(DEFAULT_PORT) => address.host(),
        Some(port) => format!("{}:{port}", address.host()),
        None => format!("{}:0", address.host()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_follow_weights() {
        let ring = Ring::build([("a", 1), ("b", 1), ("c", 2)]);
        // N = 3, W = 4: a and b get floor(0.25 * 120) * 4 = 120, c gets 240.
        assert_eq!(ring.len(), 480);
        let one = Ring::build([("solo:1", 5)]);
        assert_eq!(one.len(), 160);
        assert_eq!(one.server_for(b"anything"), Some(0));
        assert_eq!(
            Ring::build(std::iter::empty::<(&str, u16)>()).server_for(b"k"),
            None
        );
    }

    #[test]
    fn the_index_finds_what_a_binary_search_finds() {
        // 2 000 servers: 320 000 points, ~5 to a bucket of the largest index.
        let names: Vec<String> = (0..2000)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect();
        for count in [1, 2, 3, 17, 300, 2000] {
            let ring = Ring::build(names[..count].iter().map(|n| (n.as_str(), 1)));
            let mut hashes: Vec<u32> = vec![0, 1, u32::MAX, u32::MAX - 1];
            hashes.extend(
                ring.points
                    .iter()
                    .flat_map(|&(v, _)| [v, v.wrapping_sub(1), v.wrapping_add(1)]),
            );
            hashes.extend((0..10_000u32).map(|n| n.wrapping_mul(2_654_435_761)));
            for hash in hashes {
                let at = ring.points.partition_point(|&(v, _)| v < hash);
                assert_eq!(ring.position(hash), at, "{count} servers, hash {hash}");
            }
        }
    }

    /// The plain construction (one thread, a comparison sort of (value, server) pairs) that the
    /// parallel hashing and the radix sort must reproduce exactly.
    fn reference_points(servers: &[(&str, u16)]) -> Vec<(u32, u32)> {
        let count = servers.len();
        let total: u64 = servers.iter().map(|&(_, w)| u64::from(w.max(1))).sum();
        let mut points = Vec::new();
        for (index, &(name, weight)) in servers.iter().enumerate() {
            let pct = f32::from(weight.max(1)) / total as f32;
            let scaled = pct * 160.0 / 4.0 * count as f32;
            let per_server = ((f64::from(scaled) + 0.000_000_000_1) as f32).floor() as u32 * 4;
            for i in 0..per_server / 4 {
                let digest = Md5::digest(format!("{name}-{i}").as_bytes());
                for chunk in digest.chunks_exact(4) {
                    points.push((u32::from_le_bytes(chunk.try_into().unwrap()), index as u32));
                }
            }
        }
        points.sort_unstable();
        points
    }

    #[test]
    fn parallel_hashing_and_radix_sort_build_the_plain_ring() {
        let names: Vec<String> = (0..1500)
            .map(|i| format!("cache{i}:{}", 11211 + i % 3))
            .collect();
        for count in [1, 3, 999, PARALLEL_FROM, 1500] {
            let servers: Vec<(&str, u16)> = names[..count]
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), 1 + (i % 5) as u16))
                .collect();
            let ring = Ring::build(servers.iter().copied());
            assert!(ring.points == reference_points(&servers), "{count} servers");
        }
    }

    #[test]
    fn fallbacks_are_distinct_and_start_with_the_owner() {
        let ring = Ring::build([("a", 1), ("b", 1), ("c", 1)]);
        for key in [&b"x"[..], b"y", b"zzz"] {
            let order: Vec<usize> = ring.servers_from(key).collect();
            assert_eq!(order.len(), 3);
            assert_eq!(Some(order[0]), ring.server_for(key));
        }
    }

    #[test]
    fn point_names_match_libmemcached() {
        assert_eq!(point_name(&Address::parse("h").unwrap()), "h");
        assert_eq!(point_name(&Address::parse("h:1").unwrap()), "h:1");
        assert_eq!(point_name(&Address::parse("[::1]:5").unwrap()), "::1:5");
    }
}
