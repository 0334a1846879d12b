//! Requests encoded as memcached expects them: one buffer, keys (with the domain's prefix)
//! checked before anything is written, so a key like `a\r\nflush_all` never reaches a server.
//!
//! The one encoder of requests: the blocking client's, and mcproxy's (which turns what its
//! clients send into [`Request`]s, meta commands passed through with their flags). It also
//! says where a TLS record must end ([`Encoded`]): after each data block, as memcached needs
//! (see `crate::tls::write_requests`).

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

/// The meta commands about one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaVerb {
    Get,
    Set,
    Delete,
    Arithmetic,
    Debug,
}

impl MetaVerb {
    pub fn word(self) -> &'static str {
        match self {
            MetaVerb::Get => "mg",
            MetaVerb::Set => "ms",
            MetaVerb::Delete => "md",
            MetaVerb::Arithmetic => "ma",
            MetaVerb::Debug => "me",
        }
    }

    /// The reply codes a quiet (`q`) command does not send (memcached's protocol.txt).
    pub fn quiet_codes(self) -> &'static [&'static [u8]] {
        match self {
            MetaVerb::Get => &[b"EN"],
            MetaVerb::Set | MetaVerb::Arithmetic => &[b"HD"],
            MetaVerb::Delete => &[b"HD", b"NF"],
            MetaVerb::Debug => &[],
        }
    }
}

/// A meta command's flag saying its key is written in base64.
const BASE64_KEY: &[u8] = b"b";
/// A meta command's flag asking for no reply on success.
const QUIET: &[u8] = b"q";

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
    /// A meta command as a client wrote it (mcproxy passes them through):
    /// `VERB KEY[ DATALEN] FLAG…`, the flags verbatim, in their order. `value` is `ms`'s data
    /// block (its length goes before the flags). A `q` flag is not sent: whoever sends a request
    /// reads its reply (mcproxy applies quiet mode itself). A key in base64 (flag `b`) takes
    /// no key prefix: see [`Request::base64_key`].
    Meta {
        verb: MetaVerb,
        key: &'a [u8],
        flags: &'a [&'a [u8]],
        value: Option<&'a [u8]>,
    },
}

impl Request<'_> {
    /// Appends the request's bytes to `out`; where a TLS record must end, as
    /// [`Request::encode_prefixed`] says.
    pub fn encode(&self, out: &mut Vec<u8>) -> Option<usize> {
        self.encode_prefixed(out, b"")
    }

    /// Appends the request's bytes to `out`, each key preceded by `prefix` (a domain's key
    /// prefix, see [`crate::prefix`]). Returns the offset in `out` where a TLS record must end,
    /// when the request has a data block (storage commands, `ms`): just past it (see
    /// [`Encoded`], which keeps these).
    ///
    /// A key in base64 takes no prefix ([`Request::base64_key`]): the caller refuses such a
    /// request on a domain with a prefix (asserted in debug builds, as keys are).
    pub fn encode_prefixed(&self, out: &mut Vec<u8>, prefix: &[u8]) -> Option<usize> {
        debug_assert!(
            prefix.is_empty() || !self.base64_key(),
            "a base64 key cannot take a prefix"
        );
        let mut data = false;
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
                data = true;
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
            Request::Meta {
                verb,
                key,
                flags,
                value,
            } => {
                let len = value.map(|v| v.len().to_string()).unwrap_or_default();
                line(out, verb.word().as_bytes(), [prefix, key], &len);
                for flag in flags.iter().filter(|f| **f != QUIET) {
                    out.push(b' ');
                    out.extend_from_slice(flag);
                }
                if let Some(value) = value {
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(value);
                    data = true;
                }
            }
        }
        out.extend_from_slice(b"\r\n");
        data.then_some(out.len())
    }

    /// Whether the request names its key in base64 (a meta command's `b` flag): a prefix
    /// cannot simply be put before such a key, so it is sent only where keys have no prefix.
    pub fn base64_key(&self) -> bool {
        matches!(self, Request::Meta { flags, .. } if flags.contains(&BASE64_KEY))
    }

    /// Whether sending it again is harmless (it ends in the same state): set and delete, as
    /// text or meta (`ms` in set mode without a cas or an invalidation, `md`); not add,
    /// replace, append, prepend, cas, incr/decr or touch. A write whose table changed in
    /// flight is sent again to new replicas only then (`mcshm_route::FollowChange`), by the
    /// blocking client and by mcproxy.
    pub fn is_repeatable(&self) -> bool {
        match self {
            Request::Store { verb, .. } => *verb == StoreVerb::Set,
            Request::Delete { .. } => true,
            Request::Meta {
                verb: MetaVerb::Delete,
                ..
            } => true,
            Request::Meta {
                verb: MetaVerb::Set,
                flags,
                ..
            } => flags.iter().all(|f| match f.first() {
                Some(b'M') => f[1..].eq_ignore_ascii_case(b"S"),
                Some(b'C' | b'I') => false,
                _ => true,
            }),
            _ => false,
        }
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
            Request::MetaGet { .. } | Request::Meta { .. } => Expect::Meta,
        }
    }
}

/// Requests encoded one after another into one buffer, with where each TLS record of them
/// must end: just past each data block (see `crate::tls::write_requests` for why), so the
/// writer need not read the requests again to find them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    bytes: Vec<u8>,
    /// Offsets in `bytes`, ascending: where a request with a data block ends.
    record_ends: Vec<usize>,
    /// The reply each request expects, in order: what a connection owes once they are sent.
    expects: Vec<Expect>,
}

impl Encoded {
    pub fn new() -> Encoded {
        Encoded::default()
    }

    /// One request, its keys after `prefix`.
    pub fn of(request: &Request<'_>, prefix: &[u8]) -> Encoded {
        let mut encoded = Encoded::new();
        encoded.push(request, prefix);
        encoded
    }

    /// Appends `request`, its keys after `prefix` (see [`Request::encode_prefixed`]).
    pub fn push(&mut self, request: &Request<'_>, prefix: &[u8]) {
        if let Some(end) = request.encode_prefixed(&mut self.bytes, prefix) {
            self.record_ends.push(end);
        }
        self.expects.push(request.expects());
    }

    /// Appends `request` as a quiet meta command, whose reply memcached leaves out when it
    /// succeeds: a set as `ms PREFIXKEY LEN [F<flags>] [T<exptime>] O<opaque> q` and its data
    /// block, a delete as `md PREFIXKEY O<opaque> q`; a failure's reply carries `opaque`.
    /// Nothing is owed for it until [`Encoded::push_quiet_end`]. `false` (nothing appended):
    /// the request has no quiet form here (only set and delete have). Only for a server known
    /// to speak the meta protocol (memcached 1.6+): an older one would take a value's bytes
    /// for commands.
    pub fn push_quiet(&mut self, request: &Request<'_>, opaque: usize, prefix: &[u8]) -> bool {
        let out = &mut self.bytes;
        match request {
            Request::Store {
                verb: StoreVerb::Set,
                key,
                flags,
                exptime,
                value,
            } => {
                line(out, b"ms", [prefix, key], "");
                out.push(b' ');
                push_decimal(out, value.len() as u64);
                if *flags != 0 {
                    out.extend_from_slice(b" F");
                    push_decimal(out, u64::from(*flags));
                }
                if *exptime != 0 {
                    write_fmt(out, format_args!(" T{exptime}"));
                }
                out.extend_from_slice(b" O");
                push_decimal(out, opaque as u64);
                out.extend_from_slice(b" q\r\n");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
                self.record_ends.push(out.len());
            }
            Request::Delete { key } => {
                line(out, b"md", [prefix, key], "");
                out.extend_from_slice(b" O");
                push_decimal(out, opaque as u64);
                out.extend_from_slice(b" q\r\n");
            }
            _ => return false,
        }
        true
    }

    /// Ends a run of quiet commands with `mn`, which memcached answers `MN` once it has run
    /// them all: their reply ([`Expect::Quiet`]) is every failure they reported, up to it.
    pub fn push_quiet_end(&mut self) {
        self.bytes.extend_from_slice(b"mn\r\n");
        self.expects.push(Expect::Quiet);
    }

    /// Appends requests encoded before, where their records end with them.
    pub fn append(&mut self, other: &Encoded) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.record_ends
            .extend(other.record_ends.iter().map(|end| base + end));
        self.expects.extend_from_slice(&other.expects);
    }

    /// The reply each request expects, in order.
    pub fn expects(&self) -> &[Expect] {
        &self.expects
    }

    /// The requests' bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The bytes the buffer holds without growing.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Empties the buffer (keeping its memory).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.record_ends.clear();
        self.expects.clear();
    }

    /// The bytes from `start` (where a request starts) in the TLS records they go in: each
    /// record ends just past a data block, or at the end.
    pub fn records(&self, start: usize) -> impl Iterator<Item = &[u8]> {
        let ends = self
            .record_ends
            .iter()
            .copied()
            .filter(move |&end| end > start);
        let ends = ends.chain((self.bytes.len() > start).then_some(self.bytes.len()));
        let mut from = start;
        ends.filter_map(move |end| {
            let record = &self.bytes[from..end];
            from = end;
            (!record.is_empty()).then_some(record)
        })
    }
}

/// Formats into a request buffer without an intermediate string.
fn write_fmt(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    let _ = std::io::Write::write_fmt(out, args);
}

/// Appends `n` in decimal, as `write!` would without the formatting machinery (a bulk set
/// writes two or three numbers per record: that was 5 % of its client's CPU).
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
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
    /// A run of quiet meta commands and the `mn` that ends it (see [`Encoded::push_quiet`]):
    /// the failures they reported, up to `MN`.
    Quiet,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request's bytes, without a prefix and with `p:`, and where its record must end.
    fn enc(request: Request) -> (String, String, Option<usize>) {
        let text = |out: Vec<u8>| String::from_utf8(out).unwrap();
        let (mut plain, mut prefixed) = (Vec::new(), Vec::new());
        let end = request.encode(&mut plain);
        let prefixed_end = request.encode_prefixed(&mut prefixed, b"p:");
        assert_eq!(end.map(|_| prefixed.len()), prefixed_end);
        (text(plain), text(prefixed), end)
    }

    #[test]
    fn every_request_encodes_as_memcached_expects() {
        let keys: &[&[u8]] = &[b"a", b"b"];
        let get = |cas, touch| Request::Get { keys, cas, touch };
        let cases = [
            (get(false, None), "get a b\r\n", "get p:a p:b\r\n"),
            (get(true, None), "gets a b\r\n", "gets p:a p:b\r\n"),
            (get(false, Some(-1)), "gat -1 a b\r\n", "gat -1 p:a p:b\r\n"),
            (
                get(true, Some(10)),
                "gats 10 a b\r\n",
                "gats 10 p:a p:b\r\n",
            ),
            (
                Request::Delete { key: b"k" },
                "delete k\r\n",
                "delete p:k\r\n",
            ),
            (
                Request::Incr {
                    key: b"n",
                    delta: 5,
                },
                "incr n 5\r\n",
                "incr p:n 5\r\n",
            ),
            (
                Request::Decr {
                    key: b"n",
                    delta: u64::MAX,
                },
                "decr n 18446744073709551615\r\n",
                "decr p:n 18446744073709551615\r\n",
            ),
            (
                Request::Touch {
                    key: b"t",
                    exptime: 0,
                },
                "touch t 0\r\n",
                "touch p:t 0\r\n",
            ),
            (
                Request::FlushAll { delay: None },
                "flush_all\r\n",
                "flush_all\r\n",
            ),
            (
                Request::FlushAll { delay: Some(2) },
                "flush_all 2\r\n",
                "flush_all 2\r\n",
            ),
            (Request::Version, "version\r\n", "version\r\n"),
            (Request::Stats { group: None }, "stats\r\n", "stats\r\n"),
            (
                Request::Stats {
                    group: Some("slabs"),
                },
                "stats slabs\r\n",
                "stats slabs\r\n",
            ),
            (
                Request::MetaGet { key: b"m" },
                "mg m t f v\r\n",
                "mg p:m t f v\r\n",
            ),
            (
                Request::Meta {
                    verb: MetaVerb::Get,
                    key: b"m",
                    flags: &[b"v", b"q", b"k", b"O123"],
                    value: None,
                },
                "mg m v k O123\r\n",
                "mg p:m v k O123\r\n",
            ),
            (
                Request::Meta {
                    verb: MetaVerb::Delete,
                    key: b"m",
                    flags: &[],
                    value: None,
                },
                "md m\r\n",
                "md p:m\r\n",
            ),
            (
                Request::Meta {
                    verb: MetaVerb::Arithmetic,
                    key: b"m",
                    flags: &[b"MD", b"D3"],
                    value: None,
                },
                "ma m MD D3\r\n",
                "ma p:m MD D3\r\n",
            ),
            (
                Request::Meta {
                    verb: MetaVerb::Debug,
                    key: b"m",
                    flags: &[],
                    value: None,
                },
                "me m\r\n",
                "me p:m\r\n",
            ),
        ];
        for (request, plain, prefixed) in cases {
            assert_eq!(enc(request.clone()), (plain.into(), prefixed.into(), None));
        }
    }

    #[test]
    fn storage_requests_end_a_record_after_their_data() {
        let store = |verb| Request::Store {
            verb,
            key: b"k",
            flags: 3,
            exptime: -1,
            value: b"v\r\n",
        };
        let cases = [
            (StoreVerb::Set, "set k 3 -1 3\r\nv\r\n\r\n"),
            (StoreVerb::Add, "add k 3 -1 3\r\nv\r\n\r\n"),
            (StoreVerb::Replace, "replace k 3 -1 3\r\nv\r\n\r\n"),
            (StoreVerb::Append, "append k 3 -1 3\r\nv\r\n\r\n"),
            (StoreVerb::Prepend, "prepend k 3 -1 3\r\nv\r\n\r\n"),
            (StoreVerb::Cas(9), "cas k 3 -1 3 9\r\nv\r\n\r\n"),
        ];
        for (verb, plain) in cases {
            let prefixed = plain.replacen(" k ", " p:k ", 1);
            assert_eq!(
                enc(store(verb)),
                (plain.into(), prefixed, Some(plain.len())),
                "{verb:?}"
            );
        }
        let ms = Request::Meta {
            verb: MetaVerb::Set,
            key: b"m",
            flags: &[b"T9", b"q", b"F5"],
            value: Some(b"hi"),
        };
        let plain = "ms m 2 T9 F5\r\nhi\r\n";
        let prefixed = "ms p:m 2 T9 F5\r\nhi\r\n";
        assert_eq!(enc(ms), (plain.into(), prefixed.into(), Some(plain.len())));
    }

    #[test]
    fn a_base64_key_is_known_and_takes_no_prefix() {
        let meta = |flags| Request::Meta {
            verb: MetaVerb::Get,
            key: b"a2V5",
            flags,
            value: None,
        };
        assert!(meta(&[b"b", b"v"]).base64_key());
        assert!(!meta(&[b"v"]).base64_key());
        assert!(!Request::Delete { key: b"b" }.base64_key());
        let mut out = Vec::new();
        meta(&[b"b", b"v"]).encode(&mut out);
        assert_eq!(out, b"mg a2V5 b v\r\n");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "a base64 key cannot take a prefix")]
    fn a_prefix_before_a_base64_key_is_refused() {
        let request = Request::Meta {
            verb: MetaVerb::Get,
            key: b"a2V5",
            flags: &[b"b"],
            value: None,
        };
        request.encode_prefixed(&mut Vec::new(), b"p:");
    }

    #[test]
    fn a_pipeline_s_records_end_after_each_data_block() {
        let keys: &[&[u8]] = &[b"a", b"b"];
        let get = Request::Get {
            keys,
            cas: false,
            touch: None,
        };
        let set = |key, value| Request::Store {
            verb: StoreVerb::Set,
            key,
            flags: 0,
            exptime: 0,
            value,
        };
        let ms = Request::Meta {
            verb: MetaVerb::Set,
            key: b"m",
            flags: &[],
            value: Some(b"xy"),
        };
        let mut encoded = Encoded::new();
        for request in [&get, &set(b"k", b"x\r\ny"), &get, &ms, &get, &get] {
            encoded.push(request, b"");
        }
        let records: Vec<&[u8]> = encoded.records(0).collect();
        assert_eq!(
            records,
            [
                &b"get a b\r\nset k 0 0 4\r\nx\r\ny\r\n"[..],
                b"get a b\r\nms m 2\r\nxy\r\n",
                b"get a b\r\nget a b\r\n",
            ]
        );
        assert_eq!(records.concat(), encoded.bytes());
        // From a later request's start; and sets back to back.
        let second = b"get a b\r\nset k 0 0 4\r\nx\r\ny\r\n".len();
        assert_eq!(encoded.records(second).count(), 2);
        assert_eq!(encoded.records(encoded.len()).count(), 0);
        let mut sets = Encoded::of(&set(b"k", b"1"), b"p:");
        sets.append(&Encoded::of(&set(b"l", b"2"), b"p:"));
        sets.append(&Encoded::of(&get, b"p:"));
        let records: Vec<&[u8]> = sets.records(0).collect();
        assert_eq!(
            records,
            [
                &b"set p:k 0 0 1\r\n1\r\n"[..],
                b"set p:l 0 0 1\r\n2\r\n",
                b"get p:a p:b\r\n",
            ]
        );
        sets.clear();
        assert!(sets.is_empty() && sets.records(0).next().is_none());
    }

    #[test]
    fn numbers_are_written_as_format_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 4_294_967_295, 1 << 40, u64::MAX] {
            let mut out = b"x".to_vec();
            super::push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn sets_and_deletes_have_a_quiet_form_ended_by_mn() {
        let set = |flags, exptime| Request::Store {
            verb: StoreVerb::Set,
            key: b"k",
            flags,
            exptime,
            value: b"v\r\n",
        };
        let mut quiet = Encoded::new();
        assert!(quiet.push_quiet(&set(0, 0), 0, b""));
        assert!(quiet.push_quiet(&set(7, -1), 1, b"p:"));
        assert!(quiet.push_quiet(&Request::Delete { key: b"k" }, 2, b"p:"));
        quiet.push_quiet_end();
        let text = "ms k 3 O0 q\r\nv\r\n\r\nms p:k 3 F7 T-1 O1 q\r\nv\r\n\r\nmd p:k O2 q\r\nmn\r\n";
        assert_eq!(String::from_utf8_lossy(quiet.bytes()), text);
        assert_eq!(quiet.expects(), [Expect::Quiet]);
        let records: Vec<usize> = quiet.records(0).map(<[u8]>::len).collect();
        assert_eq!(records, [18, 27, 17]);
        for other in [
            Request::Store {
                verb: StoreVerb::Add,
                key: b"k",
                flags: 0,
                exptime: 0,
                value: b"",
            },
            Request::Touch {
                key: b"k",
                exptime: 1,
            },
        ] {
            assert!(!quiet.push_quiet(&other, 3, b""));
        }
        assert_eq!(String::from_utf8_lossy(quiet.bytes()), text);
    }
}
