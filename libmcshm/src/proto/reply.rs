//! Replies decoded for the blocking client: [`parse_reply`] turns the bytes at the start of a
//! buffer into one [`Reply`] (complete, with the bytes it used; incomplete; or malformed), over
//! the shared grammar.

use super::Expect;
use super::grammar::{Malformed, block_end, is_error, line, meta_header, number, value_header};

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
    /// What a run of quiet meta commands reported up to its `MN` ([`Expect::Quiet`]): each
    /// failure with the opaque of the command it answers (`NS`: [`Reply::NotStored`], `EX`:
    /// [`Reply::Exists`], `NF`: [`Reply::NotFound`]), or `None` for an error reply, which
    /// names no command (`SERVER_ERROR object too large for cache`).
    Quiet(Vec<(Option<usize>, Reply)>),
}

/// `Ok(Some((reply, used)))`: a complete reply in the first `used` bytes; `Ok(None)`: read more.
pub type Parsed = Result<Option<(Reply, usize)>, Malformed>;

/// Parses the reply to a request of kind `expect` at the start of `buf`.
pub fn parse_reply(expect: Expect, buf: &[u8]) -> Parsed {
    if expect == Expect::Quiet {
        // Its error replies are among its lines, not the whole reply.
        return quiet(buf);
    }
    let Some((first, used)) = line(buf, 0)? else {
        return Ok(None);
    };
    if let Some(error) = error_reply(first) {
        return Ok(Some((error, used)));
    }
    let simple = |reply: Reply| Ok(Some((reply, used)));
    let unexpected = || Err(Malformed::at("unexpected reply", first));
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
            digits => match number(digits) {
                Some(n) => simple(Reply::Number(n)),
                None => unexpected(),
            },
        },
        Expect::Meta => match first {
            b"EN" => simple(Reply::NotFound),
            line => {
                let header = meta_header(line)?;
                let Some(end) = block_end(buf, used, header.len)? else {
                    return Ok(None);
                };
                let value = buf[used..used + header.len].to_vec();
                let (flags, ttl) = (header.flags, header.ttl);
                Ok(Some((Reply::Meta { value, flags, ttl }, end)))
            }
        },
        Expect::Version => match first.strip_prefix(b"VERSION ") {
            Some(v) => simple(Reply::Version(String::from_utf8_lossy(v).into_owned())),
            None => unexpected(),
        },
        Expect::Stats => stats(buf, first, used),
        Expect::Values => values(buf, first, used),
        Expect::Quiet => unreachable!("parsed above"),
    }
}

/// The failures a run of quiet meta commands reported, up to `MN` (see [`Reply::Quiet`]).
/// A success that was not left out (`HD`) is skipped.
fn quiet(buf: &[u8]) -> Parsed {
    let (mut failures, mut at) = (Vec::new(), 0);
    loop {
        let Some((current, next)) = line(buf, at)? else {
            return Ok(None);
        };
        at = next;
        if current == b"MN" {
            return Ok(Some((Reply::Quiet(failures), at)));
        }
        if let Some(error) = error_reply(current) {
            failures.push((None, error));
            continue;
        }
        let mut fields = current.split(|&b| b == b' ');
        let reply = match fields.next() {
            Some(b"HD") => continue,
            Some(b"NS") => Reply::NotStored,
            Some(b"EX") => Reply::Exists,
            Some(b"NF") => Reply::NotFound,
            _ => return Err(Malformed::at("expected a meta reply or MN", current)),
        };
        let opaque = fields
            .find_map(|field| field.strip_prefix(b"O"))
            .and_then(number)
            .map(|n| n as usize);
        failures.push((opaque, reply));
    }
}

/// `STAT name value` lines up to `END`.
fn stats<'a>(buf: &'a [u8], mut current: &'a [u8], mut used: usize) -> Parsed {
    let mut stats = Vec::new();
    loop {
        if current == b"END" {
            return Ok(Some((Reply::Stats(stats), used)));
        }
        let stat = current
            .strip_prefix(b"STAT ")
            .ok_or_else(|| Malformed::at("expected STAT", current))?;
        let text = String::from_utf8_lossy(stat);
        let (name, value) = text.split_once(' ').unwrap_or((&text, ""));
        stats.push((name.to_string(), value.to_string()));
        let Some((next, end)) = line(buf, used)? else {
            return Ok(None);
        };
        (current, used) = (next, end);
    }
}

/// `VALUE` items up to `END` (an error reply in their place ends them).
fn values<'a>(buf: &'a [u8], mut current: &'a [u8], mut used: usize) -> Parsed {
    let mut items = Vec::new();
    loop {
        if current == b"END" {
            return Ok(Some((Reply::Values(items), used)));
        }
        if let Some(error) = error_reply(current) {
            return Ok(Some((error, used)));
        }
        let header = value_header(current)?;
        let Some(end) = block_end(buf, used, header.len)? else {
            return Ok(None);
        };
        items.push(Item {
            key: header.key.to_vec(),
            flags: header.flags,
            value: buf[used..used + header.len].to_vec(),
            cas: header.cas,
        });
        let Some((next, after)) = line(buf, end)? else {
            return Ok(None);
        };
        (current, used) = (next, after);
    }
}

/// An error reply as the client reports it.
fn error_reply(line: &[u8]) -> Option<Reply> {
    if !is_error(line) {
        return None;
    }
    let text = |rest: &[u8]| String::from_utf8_lossy(rest).trim().to_string();
    Some(match line.strip_prefix(b"ERROR") {
        Some([]) => Reply::Error,
        Some(rest) => Reply::Refused(text(rest)),
        None => match line.strip_prefix(b"CLIENT_ERROR") {
            Some(rest) => Reply::ClientError(text(rest)),
            None => Reply::ServerError(text(&line[b"SERVER_ERROR".len()..])),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::MAX_LINE;

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
    fn a_quiet_run_reports_its_failures_by_opaque_up_to_mn() {
        // As memcached 1.6.18 answered quiet sets (one too large, one NS), a quiet delete of a
        // missing key and an `HD` it should have left out.
        let bytes =
            b"SERVER_ERROR object too large for cache\r\nNS O4\r\nNF O5 k\r\nHD O6\r\nMN\r\n";
        let want = Reply::Quiet(vec![
            (
                None,
                Reply::ServerError("object too large for cache".into()),
            ),
            (Some(4), Reply::NotStored),
            (Some(5), Reply::NotFound),
        ]);
        check_every_prefix(Expect::Quiet, bytes, want);
        check_every_prefix(Expect::Quiet, b"MN\r\n", Reply::Quiet(vec![]));
        assert!(parse_reply(Expect::Quiet, b"VALUE a 0 1\r\n").is_err());
    }
}
