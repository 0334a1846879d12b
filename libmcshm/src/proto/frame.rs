//! Replies framed for a proxy: where one reply ends in a buffer (so replies to pipelined
//! requests are handed back one by one without decoding them), and the items of a retrieval
//! reply (so the parts of a split multi-key get are merged in the client's key order). The same
//! grammar as [`super::parse_reply`]: what one accepts, the other does.

use super::grammar::{Malformed, block_end, is_error, line, meta_header, value_header};

/// The shape of the reply a request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// One line (storage, delete, incr/decr, touch, flush_all, and any error).
    Line,
    /// `VALUE` items, then `END`.
    Values,
    /// A meta reply: one line, with a data block when it starts with `VA`.
    Meta,
}

/// The length of the complete reply at the start of `buf`, or `None` to read more.
pub fn frame_len(frame: Frame, buf: &[u8]) -> Result<Option<usize>, Malformed> {
    let Some((first, mut used)) = line(buf, 0)? else {
        return Ok(None);
    };
    if is_error(first) {
        return Ok(Some(used));
    }
    match frame {
        Frame::Line => Ok(Some(used)),
        Frame::Meta => match first.starts_with(b"VA ") {
            true => block_end(buf, used, meta_header(first)?.len),
            false => Ok(Some(used)),
        },
        Frame::Values => {
            let mut current = first;
            loop {
                if current == b"END" {
                    return Ok(Some(used));
                }
                let header = value_header(current)?;
                match block_end(buf, used, header.len)? {
                    Some(end) => used = end,
                    None => return Ok(None),
                }
                match line(buf, used)? {
                    Some((next, end)) => (current, used) = (next, end),
                    None => return Ok(None),
                }
            }
        }
    }
}

/// The first line of a reply, without CRLF.
pub fn first_line(reply: &[u8]) -> &[u8] {
    let end = reply
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(reply.len());
    reply[..end].strip_suffix(b"\r").unwrap_or(&reply[..end])
}

/// One `VALUE` item of a complete retrieval reply: its key and its bytes (header line to the
/// data's CRLF), to be copied to the client as they are.
pub struct ItemSpan<'a> {
    pub key: &'a [u8],
    /// The whole item: its `VALUE` line and data block.
    pub bytes: &'a [u8],
    pub flags: u32,
    /// The cas unique (`gets`, `gats`; 0 without one).
    pub cas: u64,
    /// The value.
    pub data: &'a [u8],
}

impl ItemSpan<'_> {
    /// The item's bytes with `prefix` (the domain's key prefix, which its key starts with)
    /// taken off the key: what the proxy's client, which sent the key without it, gets.
    pub fn unprefixed(&self, prefix: &[u8]) -> Vec<u8> {
        match self.key.strip_prefix(prefix) {
            Some(key) if !prefix.is_empty() => {
                let rest = &self.bytes[b"VALUE ".len() + self.key.len()..];
                [&b"VALUE "[..], key, rest].concat()
            }
            _ => self.bytes.to_vec(),
        }
    }
}

/// A meta reply with `prefix` taken off the key it names: the `k` flag's value, and the key of
/// an `ME` (debug) reply. The data block, if any, is left as it is; any other reply (a text
/// command's, an error) is returned as it came, and so is a meta reply that names no key.
pub fn unprefix_meta(reply: Vec<u8>, prefix: &[u8]) -> Vec<u8> {
    const META_CODES: [&[u8]; 7] = [b"HD", b"VA", b"EN", b"NF", b"NS", b"EX", b"ME"];
    let line = first_line(&reply);
    let meta = line.len() >= 2
        && META_CODES.contains(&&line[..2])
        && line.get(2).is_none_or(|&b| b == b' ');
    if prefix.is_empty() || !meta {
        return reply;
    }
    let debug = line.starts_with(b"ME ");
    let prefixed_key = |token: &[u8]| {
        token
            .strip_prefix(b"k")
            .is_some_and(|k| k.starts_with(prefix))
    };
    if !debug && !line.split(|&b| b == b' ').skip(1).any(prefixed_key) {
        return reply;
    }
    let head = line.len();
    let line = &reply[..head];
    let mut out = Vec::with_capacity(reply.len());
    for (n, token) in line.split(|&b| b == b' ').enumerate() {
        if n > 0 {
            out.push(b' ');
        }
        let token = match (debug, n) {
            (true, 1) => token.strip_prefix(prefix).unwrap_or(token),
            (false, 1..) => match token
                .strip_prefix(b"k")
                .and_then(|k| k.strip_prefix(prefix))
            {
                Some(key) => {
                    out.push(b'k');
                    key
                }
                None => token,
            },
            _ => token,
        };
        out.extend_from_slice(token);
    }
    out.extend_from_slice(&reply[head..]);
    out
}

/// The items of a complete retrieval reply (as [`frame_len`] accepted it).
pub fn items(reply: &[u8]) -> Vec<ItemSpan<'_>> {
    let mut items = Vec::new();
    let mut at = 0;
    while let Ok(Some((current, after))) = line(reply, at) {
        let Ok(header) = value_header(current) else {
            break;
        };
        let end = after + header.len + 2;
        items.push(ItemSpan {
            key: header.key,
            bytes: &reply[at..end],
            flags: header.flags,
            cas: header.cas.unwrap_or(0),
            data: &reply[after..after + header.len],
        });
        at = end;
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::MAX_LINE;

    #[test]
    fn frames_values_meta_and_lines() {
        let values = b"VALUE a 0 2\r\nhi\r\nVALUE b 1 0 7\r\n\r\nEND\r\nSTORED\r\n";
        assert_eq!(frame_len(Frame::Values, values), Ok(Some(39)));
        for cut in 0..39 {
            assert_eq!(frame_len(Frame::Values, &values[..cut]), Ok(None), "{cut}");
        }
        let spans = items(&values[..39]);
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[1].key, b"b");
        assert_eq!(spans[1].bytes, b"VALUE b 1 0 7\r\n\r\n");
        assert_eq!(
            frame_len(Frame::Meta, b"VA 2 t1\r\nhi\r\nHD\r\n"),
            Ok(Some(13))
        );
        assert_eq!(frame_len(Frame::Meta, b"EN\r\n"), Ok(Some(4)));
        assert_eq!(
            frame_len(Frame::Values, b"SERVER_ERROR out of memory\r\n"),
            Ok(Some(28))
        );
    }

    #[test]
    fn hostile_replies_are_errors() {
        assert!(frame_len(Frame::Values, b"HELLO\r\n").is_err());
        assert!(frame_len(Frame::Values, b"VALUE a 0 99999999999\r\n").is_err());
        assert!(frame_len(Frame::Meta, b"VA 2\r\nhiXX").is_err());
        assert!(frame_len(Frame::Line, &vec![b'x'; MAX_LINE]).is_err());
    }
}
