//! The keys a memcached server holds: `lru_crawler metadump all`, read and decoded. Its own
//! module because several workflows list a server's keys (drain moves them, settle sweeps
//! them, `mclient keys` prints them) and the client sits below those workflows.

use std::time::{Duration, Instant};

use crate::access::Access;
use crate::address::Address;
use crate::conn::{Conn, ConnError, Timeouts};

/// Longest metadump we read (a bound on memory for a hostile or enormous server).
const MAX_DUMP: usize = 1 << 30;

/// The keys a server holds, from `lru_crawler metadump all` (sent on a connection of its own:
/// memcached answers it only when it is not pipelined behind other commands).
pub fn list_keys(
    address: &Address,
    timeouts: Timeouts,
    access: &Access,
) -> Result<Vec<Vec<u8>>, String> {
    let dump =
        metadump(address, timeouts, access).map_err(|e| format!("lru_crawler metadump: {e}"))?;
    let text = String::from_utf8_lossy(&dump);
    let mut keys = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line == "END" {
            return Ok(keys);
        }
        if line.starts_with("BUSY") || line.starts_with("ERROR") || line.starts_with("CLIENT_ERROR")
        {
            return Err(format!("lru_crawler metadump refused: {line}"));
        }
        if let Some(key) = line.split(' ').find_map(|f| f.strip_prefix("key=")) {
            keys.push(url_decode(key));
        }
    }
    Err("lru_crawler metadump ended without END".into())
}

/// `lru_crawler metadump all`'s answer, on a connection of its own (authenticated first:
/// memcached answers the dump only when nothing is pipelined before it). The crawler may pause
/// between chunks, so each read waits at least 10 s; the whole dump at most 10 minutes.
fn metadump(address: &Address, timeouts: Timeouts, access: &Access) -> Result<Vec<u8>, ConnError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let timeouts = Timeouts {
        io: timeouts.io.max(Duration::from_secs(10)),
        ..timeouts
    };
    let mut conn = Conn::connect_as(address, timeouts, access)?;
    conn.send(b"lru_crawler metadump all\r\n")?;
    conn.receive_until(MAX_DUMP, deadline, |out| {
        out.ends_with(b"END\r\n") || ends_with_error(out)
    })
}

fn ends_with_error(out: &[u8]) -> bool {
    out.ends_with(b"\r\n")
        && (out.starts_with(b"BUSY")
            || out.starts_with(b"ERROR")
            || out.starts_with(b"CLIENT_ERROR"))
}

/// Decodes metadump's URL-encoded keys (`%XX`).
fn url_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_url_decoded() {
        assert_eq!(super::url_decode("a%20b%2Fc"), b"a b/c");
        assert_eq!(super::url_decode("plain"), b"plain");
        assert_eq!(super::url_decode("bad%zz%4"), b"bad%zz%4");
    }
}
