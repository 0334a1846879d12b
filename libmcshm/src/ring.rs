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

/// A built continuum: sorted points, each naming a server by its index in the list it was
/// built from.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    values: Vec<u32>,
    servers: Vec<u32>,
}

impl Ring {
    /// Builds the continuum of `servers` (name as [`point_name`], weight), in list order.
    pub fn build<'a>(servers: impl IntoIterator<Item = (&'a str, u16)> + Clone) -> Ring {
        let count = servers.clone().into_iter().count();
        let total: u64 = servers
            .clone()
            .into_iter()
            .map(|(_, w)| u64::from(w.max(1)))
            .sum();
        let mut points: Vec<(u32, u32)> = Vec::new();
        for (index, (name, weight)) in servers.into_iter().enumerate() {
            let pct = f32::from(weight.max(1)) / total as f32;
            let scaled = pct * 160.0 / 4.0 * count as f32;
            let per_server = ((f64::from(scaled) + 0.000_000_000_1) as f32).floor() as u32 * 4;
            let mut label = String::with_capacity(name.len() + 8);
            for i in 0..per_server / 4 {
                label.clear();
                label.push_str(name);
                label.push('-');
                label.push_str(&i.to_string());
                let digest = Md5::digest(label.as_bytes());
                for chunk in digest.chunks_exact(4) {
                    let value = u32::from_le_bytes(chunk.try_into().unwrap());
                    points.push((value, index as u32));
                }
            }
        }
        points.sort_unstable();
        Ring {
            values: points.iter().map(|p| p.0).collect(),
            servers: points.iter().map(|p| p.1).collect(),
        }
    }

    /// The index (in the build list) of the server that owns `key`; `None` for an empty ring.
    pub fn server_for(&self, key: &[u8]) -> Option<usize> {
        self.server_for_hash(hash_key(key))
    }

    /// The owner of a key hash (see [`hash_key`]).
    pub fn server_for_hash(&self, hash: u32) -> Option<usize> {
        if self.values.is_empty() {
            return None;
        }
        let at = self.values.partition_point(|&v| v < hash);
        let at = if at == self.values.len() { 0 } else { at };
        Some(self.servers[at] as usize)
    }

    /// The distinct servers along the ring from `key`'s point on, in ring order (the owner
    /// first): replicas and fallbacks. Lazy: take only as many as needed.
    pub fn servers_from(&self, key: &[u8]) -> impl Iterator<Item = usize> + '_ {
        let hash = hash_key(key);
        let start = self.values.partition_point(|&v| v < hash);
        let n = self.values.len();
        let mut seen = Vec::new();
        (0..n).filter_map(move |i| {
            let s = self.servers[(start + i) % n] as usize;
            (!seen.contains(&s)).then(|| {
                seen.push(s);
                s
            })
        })
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// A key's position on the continuum: the first four bytes of its MD5, little-endian.
pub fn hash_key(key: &[u8]) -> u32 {
    let digest = Md5::digest(key);
    u32::from_le_bytes(digest[..4].try_into().unwrap())
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
