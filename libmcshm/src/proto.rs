//! The memcached text protocol as pure code over bytes: requests are encoded into a buffer,
//! replies are parsed from one ("complete, with the bytes it used" / "incomplete, read more" /
//! "malformed"). No I/O here; connections live in [`crate::client`].
//!
//! Every line read is bounded ([`MAX_LINE`]) and every value length is bounded
//! ([`MAX_VALUE_LEN`]), so a broken or hostile peer cannot make us buffer without limit. Keys
//! are checked before anything is encoded: a key like `a\r\nflush_all` never reaches a server.

use std::fmt;

/// Longest reply line (VALUE/STAT/VERSION/error lines are far shorter).
pub const MAX_LINE: usize = 8192;
/// Largest value we accept in a reply (memcached's item size limit is at most 1 GiB).
pub const MAX_VALUE_LEN: usize = 1 << 30;

pub use crate::key::{KeyError, MAX_KEY_LEN, check_key};

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

/// One item of a retrieval reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: Vec<u8>,
    pub flags: u32,
    pub value: Vec<u8>,
    /// The cas unique (`gets`/`gats` only).
    pub cas: Option<u64>,
}

/// A complete reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Values(Vec<Item>),
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    Ok,
    Number(u64),
    Version(String),
    Stats(Vec<(String, String)>),
    /// A meta get hit: value, flags, remaining TTL in seconds (-1: never expires).
    Meta {
        value: Vec<u8>,
        flags: u32,
        ttl: i64,
    },
    /// `ERROR`: the server did not understand the command.
    Error,
    /// `CLIENT_ERROR msg`: the server refused our request (e.g. bad data chunk).
    ClientError(String),
    /// `SERVER_ERROR msg`: the server could not serve it (e.g. object too large, out of memory).
    ServerError(String),
    /// `ERROR msg`: the server refuses the connection (memcached: "Too many open connections")
    /// and closes it.
    Refused(String),
}

/// The peer sent something that is not memcached's protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed reply: {}", self.0)
    }
}

/// `Ok(Some((reply, used)))`: a complete reply in the first `used` bytes; `Ok(None)`: read more.
pub type Parsed = Result<Option<(Reply, usize)>, Malformed>;

/// Parses the reply to a request of kind `expect` at the start of `buf`.
pub fn parse_reply(expect: Expect, buf: &[u8]) -> Parsed {
    let Some((first, mut used)) = take_line(buf)? else {
        return Ok(None);
    };
    if let Some(error) = error_reply(first) {
        return Ok(Some((error, used)));
    }
    let simple = |reply: Reply| Ok(Some((reply, used)));
    let unexpected = || {
        Err(Malformed(format!(
            "unexpected {:?}",
            String::from_utf8_lossy(first)
        )))
    };
    match expect {
        Expect::Store => match first {
            b"STORED" => simple(Reply::Stored),
            b"NOT_STORED" => simple(Reply::NotStored),
            b"EXISTS" => simple(Reply::Exists),
            b"NOT_FOUND" => simple(Reply::NotFound),
            _ => unexpected(),
        },
        Expect::Delete => match first {
            b"DELETED" => simple(Reply::Deleted),
            b"NOT_FOUND" => simple(Reply::NotFound),
            _ => unexpected(),
        },
        Expect::Touch => match first {
            b"TOUCHED" => simple(Reply::Touched),
            b"NOT_FOUND" => simple(Reply::NotFound),
            _ => unexpected(),
        },
        Expect::Ok => match first {
            b"OK" => simple(Reply::Ok),
            _ => unexpected(),
        },
        Expect::Number => match first {
            b"NOT_FOUND" => simple(Reply::NotFound),
            digits => match parse_u64(digits) {
                Some(n) => simple(Reply::Number(n)),
                None => unexpected(),
            },
        },
        Expect::Meta => match first {
            b"EN" => simple(Reply::NotFound),
            line => {
                let (len, flags, ttl) = parse_meta_value_line(line)?;
                let rest = &buf[used..];
                if rest.len() < len + 2 {
                    return Ok(None);
                }
                if &rest[len..len + 2] != b"\r\n" {
                    return Err(Malformed("meta value not followed by CRLF".into()));
                }
                let value = rest[..len].to_vec();
                Ok(Some((Reply::Meta { value, flags, ttl }, used + len + 2)))
            }
        },
        Expect::Version => match first.strip_prefix(b"VERSION ") {
            Some(v) => simple(Reply::Version(String::from_utf8_lossy(v).into_owned())),
            None => unexpected(),
        },
        Expect::Stats => {
            let mut stats = Vec::new();
            let mut current = first;
            loop {
                if current == b"END" {
                    return Ok(Some((Reply::Stats(stats), used)));
                }
                let stat = current.strip_prefix(b"STAT ").ok_or_else(|| {
                    Malformed(format!(
                        "expected STAT, got {:?}",
                        String::from_utf8_lossy(current)
                    ))
                })?;
                let text = String::from_utf8_lossy(stat);
                let (name, value) = text.split_once(' ').unwrap_or((&text, ""));
                stats.push((name.to_string(), value.to_string()));
                let Some((next, n)) = take_line(&buf[used..])? else {
                    return Ok(None);
                };
                current = next;
                used += n;
            }
        }
        Expect::Values => {
            let mut items = Vec::new();
            let mut current = first;
            loop {
                if current == b"END" {
                    return Ok(Some((Reply::Values(items), used)));
                }
                if let Some(error) = error_reply(current) {
                    return Ok(Some((error, used)));
                }
                let (head, len) = parse_value_line(current)?;
                let rest = &buf[used..];
                if rest.len() < len + 2 {
                    return Ok(None);
                }
                if &rest[len..len + 2] != b"\r\n" {
                    return Err(Malformed("value not followed by CRLF".into()));
                }
                items.push(Item {
                    value: rest[..len].to_vec(),
                    ..head
                });
                used += len + 2;
                let Some((next, n)) = take_line(&buf[used..])? else {
                    return Ok(None);
                };
                current = next;
                used += n;
            }
        }
    }
}

/// `VALUE <key> <flags> <bytes> [<cas>]`: the item without its value, and the value's length.
fn parse_value_line(line: &[u8]) -> Result<(Item, usize), Malformed> {
    let bad = || {
        Malformed(format!(
            "bad VALUE line {:?}",
            String::from_utf8_lossy(line)
        ))
    };
    let mut fields = line.split(|&b| b == b' ');
    if fields.next() != Some(b"VALUE") {
        return Err(bad());
    }
    let key = fields
        .next()
        .filter(|k| check_key(k).is_ok())
        .ok_or_else(bad)?;
    let flags = fields
        .next()
        .and_then(parse_u64)
        .and_then(|f| u32::try_from(f).ok())
        .ok_or_else(bad)?;
    let len = fields.next().and_then(parse_u64).ok_or_else(bad)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_VALUE_LEN)
        .ok_or_else(bad)?;
    let cas = match fields.next() {
        Some(c) => Some(parse_u64(c).ok_or_else(bad)?),
        None => None,
    };
    if fields.next().is_some() {
        return Err(bad());
    }
    Ok((
        Item {
            key: key.to_vec(),
            flags,
            value: Vec::new(),
            cas,
        },
        len,
    ))
}

/// `VA <len> t<ttl> f<flags>`: the value length, flags and TTL.
fn parse_meta_value_line(line: &[u8]) -> Result<(usize, u32, i64), Malformed> {
    let bad = || {
        Malformed(format!(
            "bad meta reply {:?}",
            String::from_utf8_lossy(line)
        ))
    };
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let mut fields = text.split(' ');
    if fields.next() != Some("VA") {
        return Err(bad());
    }
    let len: usize = fields
        .next()
        .and_then(|l| l.parse().ok())
        .filter(|&l| l <= MAX_VALUE_LEN)
        .ok_or_else(bad)?;
    let (mut flags, mut ttl) = (0, -1);
    for field in fields {
        match field.split_at_checked(1) {
            Some(("f", v)) => flags = v.parse().map_err(|_| bad())?,
            Some(("t", v)) => ttl = v.parse().map_err(|_| bad())?,
            _ => {}
        }
    }
    Ok((len, flags, ttl))
}

fn error_reply(line: &[u8]) -> Option<Reply> {
    let text = |rest: &[u8]| String::from_utf8_lossy(rest).trim().to_string();
    if line == b"ERROR" {
        Some(Reply::Error)
    } else if let Some(rest) = line.strip_prefix(b"ERROR ") {
        Some(Reply::Refused(text(rest)))
    } else if let Some(rest) = line.strip_prefix(b"CLIENT_ERROR") {
        Some(Reply::ClientError(text(rest)))
    } else {
        line.strip_prefix(b"SERVER_ERROR")
            .map(|rest| Reply::ServerError(text(rest)))
    }
}

/// The first CRLF-terminated line of `buf` (without CRLF) and the bytes it used, bounded by
/// [`MAX_LINE`].
fn take_line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, Malformed> {
    let window = &buf[..buf.len().min(MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some((&buf[..end], end + 2))),
        None if window.len() > MAX_LINE => {
            Err(Malformed(format!("line longer than {MAX_LINE} bytes")))
        }
        None => Ok(None),
    }
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every prefix of a complete reply is incomplete; the whole is complete and uses it all.
    fn check_every_prefix(expect: Expect, bytes: &[u8], want: Reply) {
        for cut in 0..bytes.len() {
            assert_eq!(
                parse_reply(expect, &bytes[..cut]),
                Ok(None),
                "prefix {cut} of {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let mut more = bytes.to_vec();
        more.extend_from_slice(b"STORED\r\n"); // the next reply must not be consumed
        assert_eq!(parse_reply(expect, &more), Ok(Some((want, bytes.len()))));
    }

    #[test]
    fn every_reply_parses_from_every_prefix() {
        let item = |key: &[u8], flags, value: &[u8], cas| Item {
            key: key.to_vec(),
            flags,
            value: value.to_vec(),
            cas,
        };
        let cases: Vec<(Expect, &[u8], Reply)> = vec![
            (Expect::Values, b"END\r\n", Reply::Values(vec![])),
            (
                Expect::Values,
                b"VALUE a 5 3\r\nx\r\n\r\nVALUE bb 0 0 77\r\n\r\nEND\r\n",
                Reply::Values(vec![
                    item(b"a", 5, b"x\r\n", None),
                    item(b"bb", 0, b"", Some(77)),
                ]),
            ),
            (
                Expect::Values,
                b"VALUE k 1 4\r\n\0\r\nE\r\nEND\r\n",
                Reply::Values(vec![item(b"k", 1, b"\0\r\nE", None)]),
            ),
            (
                Expect::Values,
                b"SERVER_ERROR out of memory\r\n",
                Reply::ServerError("out of memory".into()),
            ),
            (Expect::Store, b"STORED\r\n", Reply::Stored),
            (Expect::Store, b"NOT_STORED\r\n", Reply::NotStored),
            (Expect::Store, b"EXISTS\r\n", Reply::Exists),
            (Expect::Store, b"NOT_FOUND\r\n", Reply::NotFound),
            (
                Expect::Store,
                b"SERVER_ERROR object too large for cache\r\n",
                Reply::ServerError("object too large for cache".into()),
            ),
            (
                Expect::Store,
                b"CLIENT_ERROR bad data chunk\r\n",
                Reply::ClientError("bad data chunk".into()),
            ),
            (Expect::Store, b"ERROR\r\n", Reply::Error),
            (
                Expect::Values,
                b"ERROR Too many open connections\r\n",
                Reply::Refused("Too many open connections".into()),
            ),
            (Expect::Delete, b"DELETED\r\n", Reply::Deleted),
            (Expect::Delete, b"NOT_FOUND\r\n", Reply::NotFound),
            (
                Expect::Number,
                b"18446744073709551615\r\n",
                Reply::Number(u64::MAX),
            ),
            (Expect::Number, b"NOT_FOUND\r\n", Reply::NotFound),
            (Expect::Touch, b"TOUCHED\r\n", Reply::Touched),
            (Expect::Ok, b"OK\r\n", Reply::Ok),
            (
                Expect::Version,
                b"VERSION 1.6.18\r\n",
                Reply::Version("1.6.18".into()),
            ),
            (
                Expect::Stats,
                b"STAT pid 1\r\nSTAT version 1.6.18\r\nEND\r\n",
                Reply::Stats(vec![
                    ("pid".into(), "1".into()),
                    ("version".into(), "1.6.18".into()),
                ]),
            ),
        ];
        for (expect, bytes, want) in cases {
            check_every_prefix(expect, bytes, want);
        }
    }

    #[test]
    fn malformed_replies_are_errors() {
        let cases: &[(Expect, &[u8])] = &[
            (Expect::Store, b"WHAT\r\n"),
            (Expect::Values, b"VALUE a x 1\r\n"),
            (Expect::Values, b"VALUE a 1 99999999999\r\n"),
            (Expect::Values, b"VALUE a 1 1\r\nxx\r\n"),
            (Expect::Values, b"VALUE a 1 1 2 3\r\n"),
            (Expect::Number, b"-1\r\n"),
            (Expect::Number, b"99999999999999999999999\r\n"),
            (Expect::Stats, b"STAT a b\r\nnope\r\n"),
            (Expect::Version, b"1.6\r\n"),
        ];
        for (expect, bytes) in cases {
            assert!(
                parse_reply(*expect, bytes).is_err(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert!(
            parse_reply(Expect::Ok, &vec![b'x'; MAX_LINE + 10]).is_err(),
            "unbounded line"
        );
    }

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

    #[test]
    fn keys_are_checked() {
        assert_eq!(check_key(b""), Err(KeyError::Empty));
        assert_eq!(check_key(&[b'k'; 251]), Err(KeyError::TooLong(251)));
        assert!(check_key(&[b'k'; 250]).is_ok());
        assert_eq!(
            check_key(b"a\r\nflush_all"),
            Err(KeyError::BadByte(1, b'\r'))
        );
        assert_eq!(check_key(b"a b"), Err(KeyError::BadByte(1, b' ')));
        assert_eq!(check_key(b"a\x7f"), Err(KeyError::BadByte(1, 0x7f)));
        assert!(check_key("ключ".as_bytes()).is_ok());
    }
}
