//! Retiring a server gently (`mcadmin drain`): while a server is draining,
//! clients send its keys to their new owner and move what they still find on it; meanwhile the
//! operator's drain enumerates its keys (`lru_crawler metadump all`) and moves them at a chosen
//! rate, keeping each key's flags and remaining TTL (`mg KEY t f v`), then removes the server.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::access::Access;
use crate::address::Address;
use crate::client::{Client, Moved};
use crate::conn::{Conn, ConnError, Timeouts};
use crate::domain::Domain;
use crate::edit::{self, Transition};
use crate::error::{Error, Result};
use crate::prefix::KeyPrefix;
use crate::registry::{Commit, Registry};
use crate::table::{CommitInfo, State};

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

/// A drain in progress, the workflow of `mcadmin drain` (the caller paces it and shows its
/// progress): [`Drain::start`] marks the server draining (clients then read a key's new owner
/// first and fall back to the draining server, moving what they find) and lists its keys once;
/// [`Drain::move_key`] moves them one by one; [`Drain::finish`] removes the server once every
/// key has moved. A drain that stops half-way leaves the server draining: starting again
/// resumes it, and `mcadmin up` cancels it.
pub struct Drain {
    registry: Registry,
    client: Client,
    address: Address,
    id: u32,
    prefix: KeyPrefix,
    /// The domain's keys on the server (named without the key prefix, as clients send them).
    keys: Vec<Vec<u8>>,
    outside_prefix: usize,
    counts: DrainCounts,
}

/// What a drain did with the keys it moved so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainCounts {
    pub moved: u64,
    /// Already newer on their new owner: only deleted from the draining server.
    pub kept: u64,
    /// Gone from the draining server (expired, evicted, or moved by a client).
    pub gone: u64,
    /// Could not be moved (the server stays draining).
    pub failed: u64,
}

impl Drain {
    /// Starts draining `address` in `domain` through `writer` (opened for writing in `dir`), or
    /// resumes the drain of a server already draining, and lists its keys. A down server is
    /// refused: its keys cannot be read.
    pub fn start(
        dir: &Path,
        domain: &Domain,
        mut writer: Registry,
        address: &Address,
        timeouts: Timeouts,
    ) -> Result<Drain> {
        let snapshot = writer.current_snapshot()?;
        let server = snapshot.server(address)?;
        let id = server.id;
        match server.state {
            State::Down => {
                return Err(Error::invalid(
                    "server",
                    &address.to_string(),
                    "it is down: its keys cannot be read to move them (bring it up, or `mcadmin delete` it)",
                ));
            }
            State::Up => {
                let reason = format!("draining (mcadmin drain, pid {})", std::process::id());
                writer.transact(|t| {
                    let change = Transition::StartDrain { reason: &reason };
                    edit::transition(&mut t.servers, id, change, CommitInfo::now());
                    Ok(())
                })?;
            }
            State::Draining => {} // resuming
        }
        let access = crate::access::Access::load(dir, domain)?;
        let listed = list_keys(address, timeouts, &access).map_err(|error| Error::Network {
            server: address.to_string(),
            error,
        })?;
        let mut client = Client::for_domain(dir, domain, timeouts)?;
        // With a key prefix, the server's keys carry it: move the domain's (named without it,
        // as the client sends them) and leave keys outside the prefix, which are not the
        // domain's.
        let prefix = client.snapshot()?.policy.prefix;
        let keys: Vec<Vec<u8>> = listed
            .iter()
            .filter_map(|k| prefix.strip(k).map(<[u8]>::to_vec))
            .collect();
        Ok(Drain {
            registry: writer,
            client,
            address: address.clone(),
            id,
            prefix,
            outside_prefix: listed.len() - keys.len(),
            keys,
            counts: DrainCounts::default(),
        })
    }

    /// The domain's keys on the server, in the order they are moved.
    pub fn keys(&self) -> &[Vec<u8>] {
        &self.keys
    }

    /// Keys on the server outside the domain's key prefix (left there: not the domain's).
    pub fn outside_prefix(&self) -> usize {
        self.outside_prefix
    }

    pub fn prefix(&self) -> KeyPrefix {
        self.prefix
    }

    /// Moves key `n` of [`Drain::keys`] to its new owner (flags and remaining TTL kept, never
    /// over a newer value) and deletes it from the draining server; counted either way.
    pub fn move_key(&mut self, n: usize) -> Result<Moved> {
        let moved = self.client.move_key(&self.address, &self.keys[n]);
        let counts = &mut self.counts;
        match moved {
            Ok(Moved::Moved) => counts.moved += 1,
            Ok(Moved::Kept) => counts.kept += 1,
            Ok(Moved::Gone) => counts.gone += 1,
            Err(_) => counts.failed += 1,
        }
        moved
    }

    pub fn counts(&self) -> DrainCounts {
        self.counts
    }

    /// Removes the drained server from the table (if it is still draining: `mcadmin up` may
    /// have cancelled the drain meanwhile). Call it only when no key failed.
    pub fn finish(mut self) -> Result<Commit> {
        let id = self.id;
        self.registry.transact(|t| {
            t.servers
                .retain(|s| !(s.id == id && s.state == State::Draining));
            Ok(())
        })
    }
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
