//! TLS record boundaries for memcached: where a record of requests must end.
//!
//! Why a file of its own: the rule below is about memcached's reading of TLS, not about
//! certificates or settings, and both the blocking client (`crate::conn`) and the proxy's
//! non-blocking streams write through it. The records come from the encoder
//! ([`Encoded::records`]): nothing reads encoded requests again to find them.

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
    use std::io::Write;
    // rustls seals what one write gives it as a record of its own.
    for record in requests.records(start) {
        session.writer().write_all(record)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_ends_where_a_storage_request_s_data_ends() {
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
        let said: Vec<&[u8]> = encoded.records(0).collect();
        // gets and the first cas; the second cas; a get and the ms; the last get. A value
        // holding a request's text ends no record: the encoder knows where data ends.
        assert_eq!(said.len(), 4);
        assert!(said[0].starts_with(b"gets p:a p:b\r\ncas p:k 1 0 14 7\r\n"));
        assert!(said[0].ends_with(b"x\r\nset z 0 0 1\r\n"));
        assert!(said[1].starts_with(b"cas p:k") && said[1].ends_with(b"set z 0 0 1\r\n"));
        assert!(said[2].starts_with(b"gets p:a p:b\r\nms p:m 2 T0\r\n"));
        assert_eq!(said[3], b"gets p:a p:b\r\n");
        assert_eq!(said.concat(), encoded.bytes(), "every byte, in order");
    }
}
