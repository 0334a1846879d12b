//! TLS record boundaries for memcached: where a record of requests must end.
//!
//! Why a file of its own: the rule below is about memcached's reading of TLS, not about
//! certificates or settings, and both the blocking client (`crate::conn`) and the proxy's
//! non-blocking streams write through it.

use crate::proto::Encoded;

/// Writes requests (whole ones, encoded by mcshm) into a TLS session, ending a record after each
/// storage request's data block: `requests` from `start`, where a request starts, in the
/// records the encoder said ([`Encoded::records`]).
///
/// Why: memcached (1.6.18, Debian 12's, and others) reads a value that does not fit its read
/// buffer straight from the TLS session, asking for exactly the value's bytes; when the same
/// record carried requests after it, OpenSSL keeps them decrypted, memcached waits for the
/// socket to become readable again, and the connection hangs (any client: Python's `ssl`
/// pipelining 20 sets of 1 kB hangs it too). A record that ends where a value ends leaves
/// nothing behind. Other requests share records, so a pipeline of gets stays one record.
pub fn write_requests(
    session: &mut rustls::ClientConnection,
    requests: &Encoded,
    start: usize,
) -> std::io::Result<()> {
    write_records(session, requests.records(start))
}

/// [`write_requests`] for requests that reach the writer as bytes, without their record ends:
/// the blocking client's pipelines (`crate::client` encodes them into a buffer of its own and
/// hands `Conn::send` the bytes). Their lines are read again to find where each data block
/// ends: the one place that reads encoded requests again.
pub fn write_request_bytes(
    session: &mut rustls::ClientConnection,
    requests: &[u8],
) -> std::io::Result<()> {
    write_records(session, records_of(requests))
}

/// Writes each of `records` as a TLS record of its own (rustls seals what one write gives it).
fn write_records<'a>(
    session: &mut rustls::ClientConnection,
    records: impl Iterator<Item = &'a [u8]>,
) -> std::io::Result<()> {
    use std::io::Write;
    for record in records {
        session.writer().write_all(record)?;
    }
    Ok(())
}

/// `requests` in the records they go in, found by reading their lines.
fn records_of(requests: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = requests;
    std::iter::from_fn(move || {
        let (record, after) = rest.split_at(record_len(rest));
        rest = after;
        (!record.is_empty()).then_some(record)
    })
}

/// The bytes of `requests` one record takes: up to the end of the first storage request's data
/// block (`set`, `add`, `replace`, `append`, `prepend`, `cas`, meta `ms`), or all of them.
fn record_len(requests: &[u8]) -> usize {
    let mut at = 0;
    while let Some(eol) = requests[at..].windows(2).position(|w| w == b"\r\n") {
        let line = &requests[at..at + eol];
        at += eol + 2;
        let mut words = line.split(|&b| b == b' ');
        let data_len = match words.next() {
            Some(b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas") => words.nth(3),
            Some(b"ms") => words.nth(1),
            _ => continue,
        };
        let Some(len) = data_len
            .and_then(|w| std::str::from_utf8(w).ok())
            .and_then(|w| w.parse::<usize>().ok())
        else {
            continue;
        };
        return (at + len + 2).min(requests.len());
    }
    requests.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_ends_where_a_storage_request_s_data_ends() {
        let requests =
            b"get a b\r\nset k 0 0 4 noreply\r\nx\r\ny\r\nget c\r\nms m 2 T0\r\nab\r\nmn\r\n";
        let records: Vec<&[u8]> = records_of(requests).collect();
        assert_eq!(
            records,
            [
                &b"get a b\r\nset k 0 0 4 noreply\r\nx\r\ny\r\n"[..],
                b"get c\r\nms m 2 T0\r\nab\r\n",
                b"mn\r\n",
            ]
        );
        assert_eq!(record_len(b"cas k 0 0 1 99\r\nz\r\nget a\r\n"), 19);
        assert_eq!(record_len(b"set k 0 0 nope\r\nget a\r\n"), 23);
    }

    #[test]
    fn reading_the_requests_again_finds_the_encoder_s_records() {
        use crate::proto::{MetaVerb, Request, StoreVerb};
        let keys: &[&[u8]] = &[b"a", b"b"];
        let get = Request::Get {
            keys,
            cas: true,
            touch: None,
        };
        let cas = Request::Store {
            verb: StoreVerb::Cas(7),
            key: b"k",
            flags: 1,
            exptime: 0,
            value: b"x\r\nset z 0 0 1",
        };
        let ms = Request::Meta {
            verb: MetaVerb::Set,
            key: b"m",
            flags: &[b"T0"],
            value: Some(b"ab"),
        };
        let mut encoded = Encoded::new();
        for request in [&get, &cas, &cas, &get, &ms, &get] {
            encoded.push(request, b"p:");
        }
        let found: Vec<&[u8]> = records_of(encoded.bytes()).collect();
        let said: Vec<&[u8]> = encoded.records(0).collect();
        assert_eq!(found, said);
        assert_eq!(said.len(), 4);
    }
}
