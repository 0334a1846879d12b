//! The keys a memcached server holds: `lru_crawler metadump all`, read and decoded. Its own
//! module because several workflows list a server's keys (drain moves them, settle sweeps
//! them, `mclient keys` prints them) and the client sits below those workflows.

use std::time::{Duration, Instant};

use crate::access::Access;
use crate::address::Address;
use crate::conn::{Conn, ConnError, Timeouts};
use crate::fence;

/// Longest metadump we read (a bound on memory for a hostile or enormous server).
const MAX_DUMP: usize = 1 << 30;

/// The keys a server holds, from `lru_crawler metadump all` (sent on a connection of its own:
/// memcached answers it only when it is not pipelined behind other commands), as sent (the
/// domain's key prefix included), mcshm's reserved keys left out ([`keys_of`]).
///
/// memcached runs one crawl at a time: while another process's dump of the same server runs
/// (mcproxy's or the watcher's sweep, a settle, a drain) it answers `BUSY`, and the dump is
/// asked again until the crawler is free, for [`BUSY_WAIT`] at most.
pub fn list_keys(
    address: &Address,
    timeouts: Timeouts,
    access: &Access,
) -> Result<Vec<Vec<u8>>, String> {
    let deadline = Instant::now() + BUSY_WAIT;
    let mut pause = Duration::from_millis(20);
    loop {
        let dump = metadump(address, timeouts, access)
            .map_err(|e| format!("lru_crawler metadump: {e}"))?;
        if !dump.starts_with(b"BUSY") || Instant::now() >= deadline {
            return keys_of(&dump);
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// How long a dump waits for a server's crawler that another dump holds.
pub const BUSY_WAIT: Duration = Duration::from_secs(60);

/// The keys of a metadump, decoded, up to its `END` (`Err` when the server refused the dump
/// or it ended early). Keys in mcshm's reserved namespace (the fences, [`crate::fence`]) are
/// left out: they are not the application's, and every workflow that lists keys would
/// otherwise show one (`mclient keys`), move it (a drain) or delete it as a stray (settle).
pub fn keys_of(dump: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let text = String::from_utf8_lossy(dump);
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
            let key = url_decode(key);
            if !fence::is_reserved(&key) {
                keys.push(key);
            }
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

    #[test]
    fn reserved_keys_are_not_listed() {
        let dump = b"key=user%3A1 exp=-1 la=1 cas=2 fetch=no cls=1 size=70\r\n\
            key=mcshm.fence.app exp=-1 la=1 cas=3 fetch=no cls=1 size=70\r\n\
            key=mcshm%2Efence%2Eother exp=-1 la=1 cas=4 fetch=no cls=1 size=70\r\n\
            key=mcshm.fenc exp=-1 la=1 cas=5 fetch=no cls=1 size=70\r\n\
            key=app.mcshm.fence.x exp=-1 la=1 cas=6 fetch=no cls=1 size=70\r\n\
            END\r\n";
        let keys = super::keys_of(dump).unwrap();
        assert_eq!(
            keys,
            [&b"user:1"[..], b"mcshm.fenc", b"app.mcshm.fence.x"],
            "the fences left out, keys near them kept"
        );
        assert!(super::keys_of(b"key=a exp=-1\r\n").is_err(), "no END");
        assert!(super::keys_of(b"BUSY currently processing crawler request\r\n").is_err());
    }
}
