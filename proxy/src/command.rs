//! What proxy clients send: the memcached text protocol and the meta commands, parsed from a
//! buffer as pure code ("a command and the bytes it used" / "read more" / "answer this and go
//! on" / "answer this and close"). No I/O here; [`crate::session`] feeds it.
//!
//! Everything is bounded before it is buffered: a command line by [`Limits::max_line`], a
//! value by [`Limits::max_item`]. A value over the limit is answered at once and its bytes
//! are discarded as they arrive (memcached's "swallow"), so a client cannot make the proxy
//! hold more than one line plus one item. Replies to malformed input use memcached's own
//! words, so clients that parse them keep working.

use libmcshm::fence;
use libmcshm::proto::{Encoded, Request, StoreVerb, check_key};

/// How much one command may make the proxy buffer.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest command line, CRLF included (a multi-key get is one line).
    pub max_line: usize,
    /// Largest value of a storage command (memcached's `-I`, 1 MiB by default).
    pub max_item: usize,
    /// Longest line of a retrieval command (`get`, `gets`, `gat`, `gats`): memcached reads
    /// those in pieces and takes any number of keys; the proxy takes 100 000 keys of 20 bytes.
    pub max_get_line: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_line: 64 * 1024,
            max_item: 1024 * 1024,
            max_get_line: 2 * 1024 * 1024,
        }
    }
}

/// The retrieval verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetVerb {
    Get,
    Gets,
    Gat,
    Gats,
}

impl GetVerb {
    /// Whether the items come with their cas unique (`gets`, `gats`).
    pub fn cas(self) -> bool {
        matches!(self, GetVerb::Gets | GetVerb::Gats)
    }
}

/// The meta commands routed by key (the encoder's: they are passed through).
pub use libmcshm::proto::MetaVerb;

/// A command, decoded. Keys are checked (1–250 bytes, no control bytes, none in mcshm's reserved
/// namespace: [`RESERVED`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Get {
        verb: GetVerb,
        /// gat/gats: the new expiration time.
        exptime: Option<i64>,
        keys: Vec<Vec<u8>>,
    },
    Store {
        /// set, add, replace, append, prepend or cas.
        verb: &'static str,
        key: Vec<u8>,
        flags: u32,
        exptime: i64,
        cas: Option<u64>,
        value: Vec<u8>,
        noreply: bool,
    },
    Delete {
        key: Vec<u8>,
        noreply: bool,
    },
    Arith {
        decr: bool,
        key: Vec<u8>,
        delta: u64,
        noreply: bool,
    },
    Touch {
        key: Vec<u8>,
        exptime: i64,
        noreply: bool,
    },
    Meta {
        verb: MetaVerb,
        key: Vec<u8>,
        /// The flags as sent, without `q` (the proxy applies quiet mode itself).
        flags: Vec<Vec<u8>>,
        quiet: bool,
        /// ms: the value.
        value: Option<Vec<u8>>,
    },
    MetaNoop,
    Version,
    Verbosity {
        noreply: bool,
    },
    FlushAll {
        delay: Option<u32>,
        noreply: bool,
    },
    Stats {
        group: Option<String>,
    },
    ConfigGetCluster,
    Quit,
}

/// The result of [`parse`].
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Read more.
    Incomplete,
    /// A command in the first `used` bytes.
    Command(Command, usize),
    /// Answer `reply` (a complete reply line) and go on after `used` bytes.
    Reply(&'static [u8], usize),
    /// Answer `reply`, drop `used` bytes, then discard `skip` more as they arrive (a value
    /// over the limit, or the data of a storage command whose line was refused).
    Swallow {
        reply: &'static [u8],
        used: usize,
        skip: usize,
    },
    /// Answer `reply` and close: the stream cannot be resynchronised.
    Close(&'static [u8]),
}

pub const ERROR: &[u8] = b"ERROR\r\n";
/// The version mcproxy answers: memcached's numbering first, for clients that parse it.
pub const VERSION_REPLY: &str =
    concat!("VERSION 1.6.0 mcproxy-", env!("CARGO_PKG_VERSION"), "\r\n");
pub const BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";
pub const BAD_CHUNK: &[u8] = b"CLIENT_ERROR bad data chunk\r\n";
pub const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";
pub const LINE_TOO_LONG: &[u8] = b"CLIENT_ERROR line too long\r\n";
/// A key in mcshm's reserved namespace ([`libmcshm::fence`]): the fences no client may read
/// or write. Refused on the key as the client sent it (a base64 key decoded); the router
/// refuses it again with the domain's key prefix before it.
pub const RESERVED: &[u8] =
    b"CLIENT_ERROR keys starting with mcshm.fence. are reserved by mcshm (fencing)\r\n";

/// Parses the command at the start of `buf`.
pub fn parse(buf: &[u8], limits: Limits) -> Parsed {
    let a_retrieval = [&b"get "[..], b"gets ", b"gat ", b"gats "]
        .iter()
        .any(|verb| buf.starts_with(verb));
    let max_line = match a_retrieval {
        true => limits.max_get_line.max(limits.max_line),
        false => limits.max_line,
    };
    let Some(newline) = buf.iter().take(max_line).position(|&b| b == b'\n') else {
        return match buf.len() >= max_line {
            true => Parsed::Close(LINE_TOO_LONG),
            false => Parsed::Incomplete,
        };
    };
    let used = newline + 1;
    let line = buf[..newline]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..newline]);
    let tokens: Vec<&[u8]> = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .collect();
    let Some((&verb, args)) = tokens.split_first() else {
        return Parsed::Reply(ERROR, used);
    };
    let simple = |command| Parsed::Command(command, used);
    match verb {
        b"get" | b"gets" => retrieval(args, used, verb == b"gets", false),
        b"gat" | b"gats" => retrieval(args, used, verb == b"gats", true),
        b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" => {
            storage(verb, args, &buf[used..], used, limits)
        }
        b"delete" => match args {
            // memcached still accepts the legacy "delete key 0".
            [key] | [key, b"0"] => keyed(key, used, |key| Command::Delete {
                key,
                noreply: false,
            }),
            [key, b"noreply"] | [key, b"0", b"noreply"] => {
                keyed(key, used, |key| Command::Delete { key, noreply: true })
            }
            _ => Parsed::Reply(BAD_FORMAT, used),
        },
        b"incr" | b"decr" => match (args, args.get(1).and_then(|d| number::<u64>(d))) {
            ([key, _], Some(delta)) | ([key, _, b"noreply"], Some(delta)) => {
                let noreply = args.len() == 3;
                keyed(key, used, |key| Command::Arith {
                    decr: verb == b"decr",
                    key,
                    delta,
                    noreply,
                })
            }
            _ => Parsed::Reply(b"CLIENT_ERROR invalid numeric delta argument\r\n", used),
        },
        b"touch" => match (args, args.get(1).and_then(|t| number::<i64>(t))) {
            ([key, _], Some(exptime)) | ([key, _, b"noreply"], Some(exptime)) => {
                let noreply = args.len() == 3;
                keyed(key, used, |key| Command::Touch {
                    key,
                    exptime,
                    noreply,
                })
            }
            _ => Parsed::Reply(BAD_FORMAT, used),
        },
        b"mg" | b"md" | b"ma" | b"me" | b"ms" => meta(verb, args, &buf[used..], used, limits),
        b"mn" => simple(Command::MetaNoop),
        b"version" => simple(Command::Version),
        b"verbosity" => match args {
            [level] | [level, b"noreply"] if number::<u32>(level).is_some() => {
                simple(Command::Verbosity {
                    noreply: args.len() == 2,
                })
            }
            _ => Parsed::Reply(ERROR, used),
        },
        b"flush_all" => match args {
            [] => simple(Command::FlushAll {
                delay: None,
                noreply: false,
            }),
            [b"noreply"] => simple(Command::FlushAll {
                delay: None,
                noreply: true,
            }),
            [delay] | [delay, b"noreply"] => match number::<u32>(delay) {
                Some(delay) => simple(Command::FlushAll {
                    delay: Some(delay),
                    noreply: args.len() == 2,
                }),
                None => Parsed::Reply(BAD_FORMAT, used),
            },
            _ => Parsed::Reply(BAD_FORMAT, used),
        },
        b"stats" => match args {
            [] => simple(Command::Stats { group: None }),
            [group] => simple(Command::Stats {
                group: Some(String::from_utf8_lossy(group).into_owned()),
            }),
            _ => Parsed::Reply(BAD_FORMAT, used),
        },
        b"config" => match args {
            [b"get", b"cluster"] => simple(Command::ConfigGetCluster),
            _ => Parsed::Reply(ERROR, used),
        },
        b"quit" => simple(Command::Quit),
        _ => Parsed::Reply(ERROR, used),
    }
}

fn number<T: std::str::FromStr>(token: &[u8]) -> Option<T> {
    std::str::from_utf8(token).ok()?.parse().ok()
}

fn keyed(key: &[u8], used: usize, make: impl FnOnce(Vec<u8>) -> Command) -> Parsed {
    match check_key(key) {
        Ok(()) if fence::is_reserved(key) => Parsed::Reply(RESERVED, used),
        Ok(()) => Parsed::Command(make(key.to_vec()), used),
        Err(_) => Parsed::Reply(BAD_FORMAT, used),
    }
}

fn retrieval(args: &[&[u8]], used: usize, cas: bool, touch: bool) -> Parsed {
    let (exptime, keys) = match (touch, args) {
        (false, keys) => (None, keys),
        (true, [exptime, keys @ ..]) => match number::<i64>(exptime) {
            Some(exptime) => (Some(exptime), keys),
            None => return Parsed::Reply(BAD_FORMAT, used),
        },
        (true, []) => return Parsed::Reply(ERROR, used),
    };
    if keys.is_empty() {
        return Parsed::Reply(ERROR, used);
    }
    if keys.iter().any(|key| check_key(key).is_err()) {
        return Parsed::Reply(BAD_FORMAT, used);
    }
    if keys.iter().any(|key| fence::is_reserved(key)) {
        return Parsed::Reply(RESERVED, used);
    }
    let verb = match (touch, cas) {
        (false, false) => GetVerb::Get,
        (false, true) => GetVerb::Gets,
        (true, false) => GetVerb::Gat,
        (true, true) => GetVerb::Gats,
    };
    Parsed::Command(
        Command::Get {
            verb,
            exptime,
            keys: keys.iter().map(|k| k.to_vec()).collect(),
        },
        used,
    )
}

/// The data block of `len` bytes after the line, with its CRLF: the value, or what to do.
fn data_block(rest: &[u8], len: usize, used: usize, limits: Limits) -> Result<Vec<u8>, Parsed> {
    if len > limits.max_item {
        return Err(Parsed::Swallow {
            reply: TOO_LARGE,
            used,
            skip: len + 2,
        });
    }
    if rest.len() < len + 2 {
        return Err(Parsed::Incomplete);
    }
    if &rest[len..len + 2] != b"\r\n" {
        // memcached answers and then reads the bad data as commands; skipping the announced
        // length keeps the stream in step more often.
        return Err(Parsed::Swallow {
            reply: BAD_CHUNK,
            used,
            skip: len + 2,
        });
    }
    Ok(rest[..len].to_vec())
}

fn storage(verb: &[u8], args: &[&[u8]], rest: &[u8], used: usize, limits: Limits) -> Parsed {
    let is_cas = verb == b"cas";
    let fixed = if is_cas { 5 } else { 4 };
    let noreply = args.len() == fixed + 1 && args[fixed] == b"noreply";
    if args.len() != fixed && !noreply {
        return Parsed::Reply(BAD_FORMAT, used);
    }
    let Some(len) = number::<usize>(args[3]) else {
        return Parsed::Reply(BAD_FORMAT, used);
    };
    let (flags, exptime) = (number::<u32>(args[1]), number::<i64>(args[2]));
    let cas = if is_cas {
        number::<u64>(args[4])
    } else {
        Some(0)
    };
    let (Some(flags), Some(exptime), Some(cas), Ok(())) = (flags, exptime, cas, check_key(args[0]))
    else {
        return Parsed::Swallow {
            reply: BAD_FORMAT,
            used,
            skip: len.saturating_add(2),
        };
    };
    if fence::is_reserved(args[0]) {
        return Parsed::Swallow {
            reply: RESERVED,
            used,
            skip: len.saturating_add(2),
        };
    }
    let value = match data_block(rest, len, used, limits) {
        Ok(value) => value,
        Err(other) => return other,
    };
    let verb = match verb {
        b"set" => "set",
        b"add" => "add",
        b"replace" => "replace",
        b"append" => "append",
        b"prepend" => "prepend",
        _ => "cas",
    };
    Parsed::Command(
        Command::Store {
            verb,
            key: args[0].to_vec(),
            flags,
            exptime,
            cas: is_cas.then_some(cas),
            value,
            noreply,
        },
        used + len + 2,
    )
}

fn meta(verb: &[u8], args: &[&[u8]], rest: &[u8], used: usize, limits: Limits) -> Parsed {
    let verb = match verb {
        b"mg" => MetaVerb::Get,
        b"ms" => MetaVerb::Set,
        b"md" => MetaVerb::Delete,
        b"ma" => MetaVerb::Arithmetic,
        _ => MetaVerb::Debug,
    };
    let Some((&key, mut flags)) = args.split_first() else {
        return Parsed::Reply(b"CLIENT_ERROR bad command line format\r\n", used);
    };
    let mut len = None;
    if verb == MetaVerb::Set {
        let Some((datalen, others)) = flags.split_first() else {
            return Parsed::Reply(BAD_FORMAT, used);
        };
        let Some(n) = number::<usize>(datalen) else {
            return Parsed::Reply(BAD_FORMAT, used);
        };
        len = Some(n);
        flags = others;
    }
    let refused = match check_key(key) {
        Err(_) => Some(BAD_FORMAT),
        // A key in base64 (flag `b`) is what the server stores decoded.
        Ok(()) if flags.contains(&&b"b"[..]) => base64_decode(key)
            .is_some_and(|key| fence::is_reserved(&key))
            .then_some(RESERVED),
        Ok(()) => fence::is_reserved(key).then_some(RESERVED),
    };
    if let Some(reply) = refused {
        return match len {
            Some(n) => Parsed::Swallow {
                reply,
                used,
                skip: n.saturating_add(2),
            },
            None => Parsed::Reply(reply, used),
        };
    }
    let value = match len.map(|n| data_block(rest, n, used, limits)) {
        None => None,
        Some(Ok(value)) => Some(value),
        Some(Err(other)) => return other,
    };
    let quiet = flags.iter().any(|f| *f == b"q");
    let consumed = used + len.map_or(0, |n| n + 2);
    Parsed::Command(
        Command::Meta {
            verb,
            key: key.to_vec(),
            flags: flags
                .iter()
                .filter(|f| **f != b"q")
                .map(|f| f.to_vec())
                .collect(),
            quiet,
            value,
        },
        consumed,
    )
}

/// A meta command's base64 key decoded (standard alphabet, padding optional), `None` when it
/// is not base64 (the server answers that).
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let text = text
        .strip_suffix(b"==")
        .or(text.strip_suffix(b"="))
        .unwrap_or(text);
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut held) = (0u32, 0u32);
    for &c in text {
        let sextet = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(sextet);
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
            bits &= (1 << held) - 1;
        }
    }
    Some(out)
}

impl Command {
    /// Appends the request a server gets for this command ([`Command::with_request`]) to
    /// `out`, every key after `prefix`, the domain's key prefix (see `libmcshm::prefix`). A
    /// multi-key get is split per server first ([`encode_get`]).
    pub fn encode(&self, out: &mut Encoded, prefix: &[u8]) {
        self.with_request(|request| out.push(request, prefix));
    }

    /// `f` given the request a server gets for this command: the command without `noreply`
    /// and `q` (the proxy always reads the server's reply and decides itself what its client
    /// sees). Not for the commands the proxy answers itself.
    pub fn with_request<T>(&self, f: impl FnOnce(&Request<'_>) -> T) -> T {
        let (one, many): ([&[u8]; 1], Vec<&[u8]>);
        let listed: Vec<&[u8]>;
        let request = match self {
            Command::Get {
                verb,
                exptime,
                keys,
            } => Request::Get {
                keys: match keys.as_slice() {
                    [key] => {
                        one = [key];
                        &one
                    }
                    _ => {
                        many = keys.iter().map(Vec::as_slice).collect();
                        &many
                    }
                },
                cas: verb.cas(),
                touch: *exptime,
            },
            Command::Store {
                verb,
                key,
                flags,
                exptime,
                cas,
                value,
                ..
            } => Request::Store {
                verb: store_verb(verb, *cas),
                key,
                flags: *flags,
                exptime: *exptime,
                value,
            },
            Command::Delete { key, .. } => Request::Delete { key },
            Command::Arith {
                decr: false,
                key,
                delta,
                ..
            } => Request::Incr { key, delta: *delta },
            Command::Arith {
                decr: true,
                key,
                delta,
                ..
            } => Request::Decr { key, delta: *delta },
            Command::Touch { key, exptime, .. } => Request::Touch {
                key,
                exptime: *exptime,
            },
            Command::Meta {
                verb,
                key,
                flags,
                value,
                ..
            } => {
                listed = flags.iter().map(Vec::as_slice).collect();
                Request::Meta {
                    verb: *verb,
                    key,
                    flags: &listed,
                    value: value.as_deref(),
                }
            }
            Command::FlushAll { delay, .. } => Request::FlushAll { delay: *delay },
            Command::MetaNoop
            | Command::Version
            | Command::Verbosity { .. }
            | Command::Stats { .. }
            | Command::ConfigGetCluster
            | Command::Quit => unreachable!("answered by the proxy itself"),
        };
        f(&request)
    }
}

/// The storage verb [`parse`] named `word`, with the cas unique of a `cas`.
fn store_verb(word: &str, cas: Option<u64>) -> StoreVerb {
    match (word, cas) {
        (_, Some(unique)) => StoreVerb::Cas(unique),
        ("add", None) => StoreVerb::Add,
        ("replace", None) => StoreVerb::Replace,
        ("append", None) => StoreVerb::Append,
        ("prepend", None) => StoreVerb::Prepend,
        _ => StoreVerb::Set,
    }
}

/// A retrieval of `keys` from one server, each after `prefix`.
pub fn encode_get<'a>(
    verb: GetVerb,
    exptime: Option<i64>,
    keys: impl Iterator<Item = &'a [u8]>,
    out: &mut Encoded,
    prefix: &[u8],
) {
    let keys: Vec<&[u8]> = keys.collect();
    let get = Request::Get {
        keys: &keys,
        cas: verb.cas(),
        touch: exptime,
    };
    out.push(&get, prefix);
}

impl Command {
    /// The key of a command about one key.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Command::Store { key, .. }
            | Command::Delete { key, .. }
            | Command::Arith { key, .. }
            | Command::Touch { key, .. }
            | Command::Meta { key, .. } => Some(key),
            Command::Get { keys, .. } if keys.len() == 1 => Some(&keys[0]),
            _ => None,
        }
    }

    /// Whether the command names its key in base64 (a meta command's `b` flag), which a
    /// prefix cannot simply be put before.
    pub fn base64_key(&self) -> bool {
        matches!(self, Command::Meta { .. }) && self.with_request(|request| request.base64_key())
    }

    /// Whether sending the write again is harmless ([`Request::is_repeatable`]).
    pub fn is_repeatable(&self) -> bool {
        self.with_request(|request| request.is_repeatable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_line: 64,
            max_item: 10,
            max_get_line: 64,
        }
    }

    #[test]
    fn only_set_and_delete_are_repeatable() {
        let limits = Limits {
            max_line: 256,
            max_item: 64,
            max_get_line: 256,
        };
        let command = |text: &str| match parse(text.as_bytes(), limits) {
            Parsed::Command(command, _) => command,
            other => panic!("{text}: {other:?}"),
        };
        for text in [
            "set k 0 0 1\r\nv\r\n",
            "delete k\r\n",
            "md k q\r\n",
            "ms k 1 T0\r\nv\r\n",
        ] {
            assert!(command(text).is_repeatable(), "{text}");
        }
        assert!(
            command("ms k 1 MS\r\nv\r\n").is_repeatable(),
            "set mode named"
        );
        for text in [
            "add k 0 0 1\r\nv\r\n",
            "append k 0 0 1\r\nv\r\n",
            "cas k 0 0 1 5\r\nv\r\n",
            "incr k 1\r\n",
            "touch k 10\r\n",
            "ms k 1 ME\r\nv\r\n",
            "ms k 1 C5\r\nv\r\n",
        ] {
            assert!(!command(text).is_repeatable(), "{text}");
        }
    }

    #[test]
    fn storage_waits_for_the_whole_value_then_strips_noreply() {
        let input = b"set k 5 0 3 noreply\r\nabc\r\nget k\r\n";
        assert_eq!(parse(&input[..22], limits()), Parsed::Incomplete);
        let Parsed::Command(command, used) = parse(input, limits()) else {
            panic!("a command")
        };
        assert_eq!(used, 26);
        let mut out = Encoded::new();
        command.encode(&mut out, b"");
        assert_eq!(out.bytes(), b"set k 5 0 3\r\nabc\r\n");
    }

    #[test]
    fn oversized_values_are_swallowed_and_long_lines_close() {
        assert_eq!(
            parse(b"set k 0 0 11\r\n", limits()),
            Parsed::Swallow {
                reply: TOO_LARGE,
                used: 14,
                skip: 13
            }
        );
        assert_eq!(parse(&[b'a'; 64], limits()), Parsed::Close(LINE_TOO_LONG));
        // A retrieval line may be longer (memcached takes any number of keys).
        let many = Limits {
            max_get_line: 1 << 20,
            ..limits()
        };
        let keys: Vec<String> = (0..10_000).map(|i| format!("k{i}")).collect();
        let line = format!("get {}\r\n", keys.join(" "));
        match parse(line.as_bytes(), many) {
            Parsed::Command(Command::Get { keys, .. }, used) => {
                assert_eq!((keys.len(), used), (10_000, line.len()));
            }
            other => panic!("{other:?}"),
        }
        let long_set = format!("set {}", "k".repeat(100));
        assert_eq!(
            parse(long_set.as_bytes(), many),
            Parsed::Close(LINE_TOO_LONG)
        );
        assert_eq!(parse(&[b'a'; 63], limits()), Parsed::Incomplete);
        assert_eq!(
            parse(b"set k 0 0 3\r\nabcXY", limits()),
            Parsed::Swallow {
                reply: BAD_CHUNK,
                used: 13,
                skip: 5
            }
        );
    }

    #[test]
    fn garbage_and_bad_keys_get_memcached_words() {
        assert_eq!(parse(b"bogus\r\n", limits()), Parsed::Reply(ERROR, 7));
        assert_eq!(parse(b"\r\n", limits()), Parsed::Reply(ERROR, 2));
        let long = format!("get {}\r\n", "k".repeat(251));
        let big = Limits {
            max_line: 1024,
            ..limits()
        };
        assert_eq!(parse(long.as_bytes(), big), Parsed::Reply(BAD_FORMAT, 257));
        assert_eq!(
            parse(b"incr k x\r\n", limits()),
            Parsed::Reply(b"CLIENT_ERROR invalid numeric delta argument\r\n", 10)
        );
        assert_eq!(
            parse(b"set k x 0 2\r\nab\r\n", limits()),
            Parsed::Swallow {
                reply: BAD_FORMAT,
                used: 13,
                skip: 4
            }
        );
    }

    #[test]
    fn meta_quiet_is_taken_off_and_remembered() {
        let Parsed::Command(command, used) = parse(b"ms k 2 q T9\r\nhi\r\n", limits()) else {
            panic!("a command")
        };
        assert_eq!(used, 17);
        assert!(matches!(command, Command::Meta { quiet: true, .. }));
        let mut out = Encoded::new();
        command.encode(&mut out, b"");
        assert_eq!(out.bytes(), b"ms k 2 T9\r\nhi\r\n");
    }

    #[test]
    fn servers_get_the_command_without_noreply_and_q_under_the_prefix() {
        let limits = Limits {
            max_line: 256,
            max_item: 64,
            max_get_line: 256,
        };
        let cases = [
            ("get a b\r\n", "get p:a p:b\r\n"),
            ("gets a\r\n", "gets p:a\r\n"),
            ("gat 10 a b\r\n", "gat 10 p:a p:b\r\n"),
            ("gats -1 a\r\n", "gats -1 p:a\r\n"),
            ("set k 1 2 3\r\nabc\r\n", "set p:k 1 2 3\r\nabc\r\n"),
            ("add k 0 0 1 noreply\r\nx\r\n", "add p:k 0 0 1\r\nx\r\n"),
            ("replace k 0 0 1\r\nx\r\n", "replace p:k 0 0 1\r\nx\r\n"),
            ("append k 0 0 1\r\nx\r\n", "append p:k 0 0 1\r\nx\r\n"),
            ("prepend k 0 0 1\r\nx\r\n", "prepend p:k 0 0 1\r\nx\r\n"),
            (
                "cas k 0 0 1 99 noreply\r\nx\r\n",
                "cas p:k 0 0 1 99\r\nx\r\n",
            ),
            ("delete k noreply\r\n", "delete p:k\r\n"),
            ("delete k 0\r\n", "delete p:k\r\n"),
            ("incr k 5\r\n", "incr p:k 5\r\n"),
            ("decr k 5 noreply\r\n", "decr p:k 5\r\n"),
            ("touch k 60 noreply\r\n", "touch p:k 60\r\n"),
            ("mg k q v k\r\n", "mg p:k v k\r\n"),
            ("md k q\r\n", "md p:k\r\n"),
            ("ma k MD D2\r\n", "ma p:k MD D2\r\n"),
            ("me k\r\n", "me p:k\r\n"),
            ("ms k 2 q T9 F1\r\nhi\r\n", "ms p:k 2 T9 F1\r\nhi\r\n"),
            ("flush_all 5 noreply\r\n", "flush_all 5\r\n"),
            ("flush_all\r\n", "flush_all\r\n"),
        ];
        for (sent, server_gets) in cases {
            let Parsed::Command(command, used) = parse(sent.as_bytes(), limits) else {
                panic!("{sent:?}: not a command")
            };
            assert_eq!(used, sent.len(), "{sent:?}");
            let mut out = Encoded::new();
            command.encode(&mut out, b"p:");
            assert_eq!(
                String::from_utf8_lossy(out.bytes()),
                server_gets,
                "{sent:?}"
            );
        }
        let mut out = Encoded::new();
        encode_get(
            GetVerb::Gats,
            Some(3),
            [&b"a"[..], b"b"].into_iter(),
            &mut out,
            b"",
        );
        assert_eq!(out.bytes(), b"gats 3 a b\r\n");
    }

    #[test]
    fn only_meta_commands_have_base64_keys() {
        let limits = limits();
        let command = |text: &str| match parse(text.as_bytes(), limits) {
            Parsed::Command(command, _) => command,
            other => panic!("{text}: {other:?}"),
        };
        assert!(command("mg a2V5 b v\r\n").base64_key());
        assert!(!command("mg b v\r\n").base64_key());
        assert!(!command("get b\r\n").base64_key());
    }

    #[test]
    fn base64_keys_are_decoded() {
        assert_eq!(
            base64_decode(b"bWNzaG0uZmVuY2UuYXBw").unwrap(),
            b"mcshm.fence.app"
        );
        assert_eq!(base64_decode(b"a2V5").unwrap(), b"key");
        assert_eq!(base64_decode(b"a2U=").unwrap(), b"ke");
        assert_eq!(base64_decode(b"aw==").unwrap(), b"k");
        assert_eq!(base64_decode(b"aw").unwrap(), b"k");
        assert_eq!(base64_decode(b"a-b"), None);
    }

    /// No client reads or writes a fence: every command that names a key refuses one in the
    /// reserved namespace (`mcshm.fence.`) with [`RESERVED`], a storage command's data
    /// skipped, and the stream goes on.
    #[test]
    fn keys_in_the_reserved_namespace_are_refused() {
        let limits = Limits {
            max_line: 256,
            max_item: 64,
            max_get_line: 256,
        };
        assert!(String::from_utf8_lossy(RESERVED).contains("mcshm.fence."));
        let replied = [
            "get mcshm.fence.app\r\n",
            "gets k mcshm.fence.app\r\n",
            "gat 10 mcshm.fence.x k\r\n",
            "delete mcshm.fence.app\r\n",
            "incr mcshm.fence.app 1\r\n",
            "touch mcshm.fence.app 10\r\n",
            "mg mcshm.fence.app v\r\n",
            "md mcshm.fence.app q\r\n",
            "ma mcshm.fence.app\r\n",
            "me mcshm.fence.app\r\n",
            "mg bWNzaG0uZmVuY2UuYXBw b v\r\n",
            "mg bWNzaG0uZmVuY2Uu b v\r\n",
        ];
        for sent in replied {
            assert_eq!(
                parse(sent.as_bytes(), limits),
                Parsed::Reply(RESERVED, sent.len()),
                "{sent:?}"
            );
        }
        let swallowed = [
            ("set mcshm.fence.app 0 0 2\r\n", "10\r\n"),
            ("add mcshm.fence.app 0 0 2 noreply\r\n", "10\r\n"),
            ("cas mcshm.fence.app 0 0 2 5\r\n", "10\r\n"),
            ("ms mcshm.fence.app 2 T0\r\n", "10\r\n"),
            ("ms bWNzaG0uZmVuY2UuYXBw 2 b\r\n", "10\r\n"),
        ];
        for (line, data) in swallowed {
            let sent = format!("{line}{data}get k\r\n");
            assert_eq!(
                parse(sent.as_bytes(), limits),
                Parsed::Swallow {
                    reply: RESERVED,
                    used: line.len(),
                    skip: data.len()
                },
                "{line:?}"
            );
        }
        // Keys near the namespace, or in it only once decoded without `b`, are commands.
        for sent in [
            "get mcshm.fenc\r\n",
            "get mcshm.fencex fence.app\r\n",
            "set app.mcshm.fence.x 0 0 1\r\nv\r\n",
            "mg bWNzaG0uZmVuY2UuYXBw v\r\n",
            "mg bWNzaG0uZmVu b v\r\n",
        ] {
            assert!(
                matches!(parse(sent.as_bytes(), limits), Parsed::Command(..)),
                "{sent:?}"
            );
        }
    }
}
