//! Requests encoded as memcached expects them: one buffer, keys (with the domain's prefix)
//! checked before anything is written, so a key like `a\r\nflush_all` never reaches a server.

use super::check_key;

/// The storage commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreVerb {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas(u64),
}

impl StoreVerb {
    fn word(self) -> &'static [u8] {
        match self {
            StoreVerb::Set => b"set",
            StoreVerb::Add => b"add",
            StoreVerb::Replace => b"replace",
            StoreVerb::Append => b"append",
            StoreVerb::Prepend => b"prepend",
            StoreVerb::Cas(_) => b"cas",
        }
    }
}

/// A request. Keys must have passed [`check_key`] (the encoders assert it in debug builds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `get`/`gets` (with `cas`), or `gat`/`gats` when `touch` is `Some(exptime)`.
    Get {
        keys: &'a [&'a [u8]],
        cas: bool,
        touch: Option<i64>,
    },
    Store {
        verb: StoreVerb,
        key: &'a [u8],
        flags: u32,
        exptime: i64,
        value: &'a [u8],
    },
    Delete {
        key: &'a [u8],
    },
    Incr {
        key: &'a [u8],
        delta: u64,
    },
    Decr {
        key: &'a [u8],
        delta: u64,
    },
    Touch {
        key: &'a [u8],
        exptime: i64,
    },
    FlushAll {
        delay: Option<u32>,
    },
    Version,
    Stats {
        group: Option<&'a str>,
    },
    /// Meta get `mg KEY t f v`: value, flags and remaining TTL in one round trip.
    MetaGet {
        key: &'a [u8],
    },
}

impl Request<'_> {
    /// Appends the request's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_prefixed(out, b"");
    }

    /// Appends the request's bytes to `out`, each key preceded by `prefix` (a domain's key
    /// prefix, see [`crate::prefix`]).
    pub fn encode_prefixed(&self, out: &mut Vec<u8>, prefix: &[u8]) {
        match self {
            Request::Get { keys, cas, touch } => {
                match (touch, cas) {
                    (None, false) => out.extend_from_slice(b"get"),
                    (None, true) => out.extend_from_slice(b"gets"),
                    (Some(t), false) => write_fmt(out, format_args!("gat {t}")),
                    (Some(t), true) => write_fmt(out, format_args!("gats {t}")),
                }
                for key in *keys {
                    debug_assert!(check_key(key).is_ok());
                    out.push(b' ');
                    out.extend_from_slice(prefix);
                    out.extend_from_slice(key);
                }
            }
            Request::Store {
                verb,
                key,
                flags,
                exptime,
                value,
            } => {
                debug_assert!(check_key(key).is_ok());
                out.extend_from_slice(verb.word());
                out.push(b' ');
                out.extend_from_slice(prefix);
                out.extend_from_slice(key);
                write_fmt(out, format_args!(" {flags} {exptime} {}", value.len()));
                if let StoreVerb::Cas(unique) = verb {
                    write_fmt(out, format_args!(" {unique}"));
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(value);
            }
            Request::Delete { key } => line(out, b"delete", [prefix, key], ""),
            Request::Incr { key, delta } => {
                line(out, b"incr", [prefix, key], &delta.to_string());
            }
            Request::Decr { key, delta } => {
                line(out, b"decr", [prefix, key], &delta.to_string());
            }
            Request::Touch { key, exptime } => {
                line(out, b"touch", [prefix, key], &exptime.to_string());
            }
            Request::FlushAll { delay } => {
                out.extend_from_slice(b"flush_all");
                if let Some(d) = delay {
                    out.extend_from_slice(format!(" {d}").as_bytes());
                }
            }
            Request::Version => out.extend_from_slice(b"version"),
            Request::MetaGet { key } => {
                line(out, b"mg", [prefix, key], "t f v");
            }
            Request::Stats { group } => {
                out.extend_from_slice(b"stats");
                if let Some(g) = group {
                    out.push(b' ');
                    out.extend_from_slice(g.as_bytes());
                }
            }
        }
        out.extend_from_slice(b"\r\n");
    }

    /// What kind of reply this request gets.
    pub fn expects(&self) -> Expect {
        match self {
            Request::Get { .. } => Expect::Values,
            Request::Store { .. } => Expect::Store,
            Request::Delete { .. } => Expect::Delete,
            Request::Incr { .. } | Request::Decr { .. } => Expect::Number,
            Request::Touch { .. } => Expect::Touch,
            Request::FlushAll { .. } => Expect::Ok,
            Request::Version => Expect::Version,
            Request::Stats { .. } => Expect::Stats,
            Request::MetaGet { .. } => Expect::Meta,
        }
    }
}

/// Formats into a request buffer without an intermediate string.
fn write_fmt(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    let _ = std::io::Write::write_fmt(out, args);
}

/// `verb PREFIXKEY[ arg]`: `key` is the prefix and the key.
fn line(out: &mut Vec<u8>, verb: &[u8], [prefix, key]: [&[u8]; 2], arg: &str) {
    debug_assert!(check_key(key).is_ok());
    out.extend_from_slice(verb);
    out.push(b' ');
    out.extend_from_slice(prefix);
    out.extend_from_slice(key);
    if !arg.is_empty() {
        out.push(b' ');
        out.extend_from_slice(arg.as_bytes());
    }
}

/// The reply a request expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Values,
    Store,
    Delete,
    Number,
    Touch,
    Ok,
    Version,
    Stats,
    Meta,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_encode_as_memcached_expects() {
        let enc = |r: Request| {
            let mut out = Vec::new();
            r.encode(&mut out);
            String::from_utf8(out).unwrap()
        };
        let keys: &[&[u8]] = &[b"a", b"b"];
        assert_eq!(
            enc(Request::Get {
                keys,
                cas: false,
                touch: None
            }),
            "get a b\r\n"
        );
        assert_eq!(
            enc(Request::Get {
                keys,
                cas: true,
                touch: Some(10)
            }),
            "gats 10 a b\r\n"
        );
        let store = Request::Store {
            verb: StoreVerb::Cas(9),
            key: b"k",
            flags: 3,
            exptime: -1,
            value: b"v\r\n",
        };
        assert_eq!(enc(store), "cas k 3 -1 3 9\r\nv\r\n\r\n");
        assert_eq!(
            enc(Request::Incr {
                key: b"n",
                delta: 5
            }),
            "incr n 5\r\n"
        );
        assert_eq!(enc(Request::FlushAll { delay: Some(2) }), "flush_all 2\r\n");
        assert_eq!(
            enc(Request::Stats {
                group: Some("slabs")
            }),
            "stats slabs\r\n"
        );
        assert_eq!(
            enc(Request::Touch {
                key: b"t",
                exptime: 0
            }),
            "touch t 0\r\n"
        );
    }
}
