//! The reply grammar, once: lines, error replies, `VALUE` and `VA` headers, data blocks. The
//! blocking client decodes replies with it ([`super::parse_reply`]) and mcproxy frames them
//! with it ([`super::frame`]), so both accept and refuse exactly the same bytes. Every line is
//! bounded by [`MAX_LINE`] and every value length by [`MAX_VALUE_LEN`]: a broken or hostile
//! server cannot make either buffer without limit.

use std::fmt;

use super::{MAX_LINE, MAX_VALUE_LEN, check_key};

/// The peer sent something that is not memcached's protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed reply: {}", self.0)
    }
}

impl Malformed {
    /// `what` was expected, and `line` (shown, cut at 80 characters) came instead.
    pub(super) fn at(what: &str, line: &[u8]) -> Malformed {
        let shown: String = String::from_utf8_lossy(line).chars().take(80).collect();
        Malformed(format!("{what}, got {shown:?}"))
    }
}

/// The line starting at `at` (without its CRLF) and the offset after it; `None`: read more.
pub(super) fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, Malformed> {
    let rest = &buf[at..];
    match rest.iter().take(MAX_LINE).position(|&b| b == b'\n') {
        Some(n) => {
            let text = &rest[..n];
            Ok(Some((text.strip_suffix(b"\r").unwrap_or(text), at + n + 1)))
        }
        None if rest.len() >= MAX_LINE => Err(Malformed(format!(
            "reply line longer than {MAX_LINE} bytes"
        ))),
        None => Ok(None),
    }
}

/// Whether a reply line is one of memcached's error replies (`ERROR`, `ERROR msg`,
/// `CLIENT_ERROR msg`, `SERVER_ERROR msg`).
pub fn is_error(line: &[u8]) -> bool {
    line == b"ERROR"
        || line.starts_with(b"ERROR ")
        || line.starts_with(b"CLIENT_ERROR")
        || line.starts_with(b"SERVER_ERROR")
}

/// The end of a data block of `len` bytes starting at `at` (its CRLF checked); `None`: read
/// more.
pub(super) fn block_end(buf: &[u8], at: usize, len: usize) -> Result<Option<usize>, Malformed> {
    let end = at + len + 2;
    if buf.len() < end {
        return Ok(None);
    }
    match &buf[end - 2..end] {
        b"\r\n" => Ok(Some(end)),
        _ => Err(Malformed("data block not followed by CRLF".into())),
    }
}

/// A `VALUE <key> <flags> <bytes> [<cas>]` line.
pub(super) struct ValueHeader<'a> {
    pub key: &'a [u8],
    pub flags: u32,
    pub len: usize,
    pub cas: Option<u64>,
}

pub(super) fn value_header(line: &[u8]) -> Result<ValueHeader<'_>, Malformed> {
    let bad = || Malformed::at("expected VALUE or END", line);
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
        .and_then(number)
        .and_then(|f| u32::try_from(f).ok())
        .ok_or_else(bad)?;
    let len = fields.next().and_then(value_len).ok_or_else(bad)?;
    let cas = match fields.next() {
        Some(c) => Some(number(c).ok_or_else(bad)?),
        None => None,
    };
    if fields.next().is_some() {
        return Err(bad());
    }
    Ok(ValueHeader {
        key,
        flags,
        len,
        cas,
    })
}

/// A meta hit's `VA <len> <flags>*` line: the value's length, and its `f` (client flags) and
/// `t` (remaining TTL, -1: none) when the request asked for them.
pub(super) struct MetaHeader {
    pub len: usize,
    pub flags: u32,
    pub ttl: i64,
}

pub(super) fn meta_header(line: &[u8]) -> Result<MetaHeader, Malformed> {
    let bad = || Malformed::at("bad meta reply", line);
    let mut fields = line.split(|&b| b == b' ');
    if fields.next() != Some(b"VA") {
        return Err(bad());
    }
    let len = fields.next().and_then(value_len).ok_or_else(bad)?;
    let mut header = MetaHeader {
        len,
        flags: 0,
        ttl: -1,
    };
    for field in fields {
        let text = std::str::from_utf8(field).map_err(|_| bad())?;
        match text.split_at_checked(1) {
            Some(("f", v)) => header.flags = v.parse().map_err(|_| bad())?,
            Some(("t", v)) => header.ttl = v.parse().map_err(|_| bad())?,
            _ => {}
        }
    }
    Ok(header)
}

/// A value length, bounded by [`MAX_VALUE_LEN`].
fn value_len(digits: &[u8]) -> Option<usize> {
    number(digits)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= MAX_VALUE_LEN)
}

/// An unsigned decimal of at most 20 digits.
pub(super) fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}
