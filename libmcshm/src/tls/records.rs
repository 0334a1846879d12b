//! TLS record boundaries for memcached: where a record of requests must end.
//!
//! Why a file of its own: the rule below is about memcached's reading of TLS, not about
//! certificates or settings, and both the blocking client (`crate::conn`) and the proxy's
//! non-blocking streams write through it.

/// Writes requests (whole ones, encoded by mcshm) into a TLS session, ending a record after each
/// storage request's data block.
///
/// Why: memcached (1.6.18, Debian 12's, and others) reads a value that does not fit its read
/// buffer straight from the TLS session, asking for exactly the value's bytes; when the same
/// record carried requests after it, OpenSSL keeps them decrypted, memcached waits for the
/// socket to become readable again, and the connection hangs (any client: Python's `ssl`
/// pipelining 20 sets of 1 kB hangs it too). A record that ends where a value ends leaves
/// nothing behind. Other requests share records, so a pipeline of gets stays one record.
pub fn write_requests(
    session: &mut rustls::ClientConnection,
    requests: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    let mut start = 0;
    while start < requests.len() {
        let end = start + record_len(&requests[start..]);
        session.writer().write_all(&requests[start..end])?;
        start = end;
    }
    Ok(())
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
        let mut ends = Vec::new();
        let mut start = 0;
        while start < requests.len() {
            start += record_len(&requests[start..]);
            ends.push(start);
        }
        let set_end = b"get a b\r\nset k 0 0 4 noreply\r\nx\r\ny\r\n".len();
        let ms_end = set_end + b"get c\r\nms m 2 T0\r\nab\r\n".len();
        assert_eq!(ends, vec![set_end, ms_end, requests.len()]);
        assert_eq!(record_len(b"cas k 0 0 1 99\r\nz\r\nget a\r\n"), 19);
        assert_eq!(record_len(b"set k 0 0 nope\r\nget a\r\n"), 23);
    }
}
