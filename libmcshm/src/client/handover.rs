//! Keys changing hands: warm-up after a rejoin (fill a miss from the server that owned the key
//! while the rejoined one was away) and draining (fall back to the draining server, move what
//! is found there). Both copy with `add`, so they never overwrite a newer write.

use mcshm_route::AddAnswer;

use super::{Client, Fill, FillKind, Stored};
use crate::address::Address;
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::proto::{Item, Reply, Request, StoreVerb};
use crate::table::State;

impl Client {
    /// `mg KEY t f v` on one server: value, flags, remaining TTL (0 = never, as `set` takes it).
    pub(super) fn meta_get(
        &mut self,
        server: usize,
        key: &[u8],
    ) -> Result<Option<(Vec<u8>, u32, i64)>> {
        match self.call(server, &Request::MetaGet { key })? {
            Reply::Meta { value, flags, ttl } => Ok(Some((value, flags, ttl.max(0)))),
            Reply::NotFound => Ok(None),
            other => Err(self.unexpected(server, other)),
        }
    }

    /// Copies `key` from server `from` to server `to` with `add` (never over a value `to`
    /// already has), keeping flags and remaining TTL: the item, and the add's outcome; `None`
    /// when `from` does not have it.
    pub(super) fn copy_key(
        &mut self,
        from: usize,
        to: usize,
        key: &[u8],
    ) -> Result<Option<(Item, Result<Stored>)>> {
        let Some((value, flags, ttl)) = self.meta_get(from, key)? else {
            return Ok(None);
        };
        let request = Request::Store {
            verb: StoreVerb::Add,
            key,
            flags,
            exptime: ttl,
            value: &value,
        };
        let added = if self.is_down(to) {
            Err(self.router.down_error(to))
        } else {
            self.stored_reply(to, &request)
        };
        if let Err(Error::TableBehind { .. }) = &added {
            // Copied where this host's table is behind: undone (see `fenced.rs`).
            let _ = self.call_plain(to, &Request::Delete { key });
        }
        let item = Item {
            key: key.to_vec(),
            flags,
            value,
            cas: None,
        };
        Ok(Some((item, added)))
    }

    /// Executes one fill of a read plan as the routing core's sequence says
    /// ([`Fill::after_add`]): copies the key from `fill.from` to `fill.to` with `add`; a drain
    /// then deletes it from `from` when `to` holds a value; `to` is asked again unless our
    /// stored copy answers a plain get, the copy answering when it misses. A source that no
    /// longer has the key leaves a drain asking `to` again (the drain may have just moved it).
    pub(super) fn fill(
        &mut self,
        fill: &Fill,
        key: &[u8],
        cas: bool,
        touch: Option<i64>,
    ) -> Option<Item> {
        let (from, to) = (fill.from.index, fill.to.index);
        let Some((item, added)) = self.copy_key(from, to, key).ok()? else {
            return match fill.ask_after_source_miss() {
                true => self.get_one(to, key, cas, touch).ok().flatten(),
                false => None,
            };
        };
        let added = match added {
            // This host's table is behind the fleet's: no fill (a miss).
            Err(Error::TableBehind { .. }) => return None,
            Ok(Stored::Stored) => AddAnswer::Stored,
            Ok(Stored::NotStored) => AddAnswer::NotStored,
            _ => AddAnswer::Refused,
        };
        let next = fill.after_add(added, !cas && touch.is_none());
        if next.delete_source {
            let _ = self.call(from, &Request::Delete { key });
        }
        if !next.ask_again {
            return Some(item);
        }
        let again = self.get_one(to, key, cas, touch).ok().flatten();
        again.or(next.copy_if_missed.then_some(item))
    }

    /// Moves one key off the draining server `draining` (or the server its bucket is moving
    /// off, see [`crate::rebucket`]) to its new owner (keeping flags and
    /// remaining TTL; never over a newer value there), then deletes it from `draining` when
    /// the owner holds a value, as a read's drain fill does ([`Fill::after_add`]): a value the
    /// owner refuses stays where it is (the error says why).
    pub fn move_key(&mut self, draining: &Address, key: &[u8]) -> Result<Moved> {
        let owner = self.router.owner(key, now_ms())?;
        self.run_probes();
        if self.is_down(owner) {
            return Err(self.router.down_error(owner));
        }
        let chain = self.router.chain(key, now_ms())?;
        let snapshot = self.router.snapshot().clone();
        // The draining server, or the server the key's bucket is moving off.
        let moving = self.router.bucket_source(key);
        let from = snapshot
            .position(draining)
            .ok()
            .filter(|&i| snapshot.servers[i].state == State::Draining || moving == Some(i))
            .ok_or_else(|| Error::NoServer {
                server: draining.to_string(),
                domain: snapshot.domain.clone(),
            })?;
        let Some((_, added)) = self.copy_key(from, owner, key)? else {
            return Ok(Moved::Gone);
        };
        let drain = Fill {
            from: self.router.server_ref(from),
            to: self.router.server_ref(owner),
            kind: FillKind::Drain,
        };
        let (answer, moved) = match added? {
            Stored::Stored => (AddAnswer::Stored, Moved::Moved),
            Stored::NotStored => (AddAnswer::NotStored, Moved::Kept),
            _ => (AddAnswer::Refused, Moved::Kept),
        };
        // A source that stays one of the key's replicas (a loaded map's forward row may keep
        // the old owner as one) keeps its copy.
        if drain.after_add(answer, true).delete_source && !chain.contains(&from) {
            self.call(from, &Request::Delete { key })?;
        }
        Ok(moved)
    }

    /// Sweeps one key off `server` if it is a stray there: deleted when `server` is not one of
    /// the key's replicas in the current table (`mcadmin settle`). `true` when deleted.
    /// A key whose bucket is moving off `server` is not a stray there: it is what the move
    /// (and a read's fill) takes to the new owner.
    pub fn delete_if_stray(&mut self, server: &Address, key: &[u8]) -> Result<bool> {
        let chain = self.chain(key)?;
        let snapshot = self.router.snapshot().clone();
        let source = self.router.moving_owner(key);
        let keeps = |i: usize| snapshot.servers[i].address.same_server(server);
        if chain.iter().any(|&i| keeps(i)) || source.is_some_and(keeps) {
            return Ok(false);
        }
        self.call(snapshot.position(server)?, &Request::Delete { key })?;
        Ok(true)
    }

    /// Whether answers of `server` may be used on this host's table now: one fenced round
    /// trip (`version` and the fence read, in one write); [`Error::TableBehind`] when the table
    /// is behind the server's fence. What a sweep asks before it clears a mark: the keys it
    /// judged not stray were judged by this table.
    pub fn check_fence(&mut self, server: &Address) -> Result<()> {
        self.refresh()?;
        let snapshot = self.router.snapshot().clone();
        if self.fence_of(&snapshot).is_none() {
            return Ok(());
        }
        self.call(snapshot.position(server)?, &Request::Version)
            .map(|_| ())
    }

    pub(super) fn stored_reply(&mut self, server: usize, request: &Request<'_>) -> Result<Stored> {
        let reply = self.call(server, request)?;
        self.stored(server, reply)
    }
}

/// What moving one key did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moved {
    /// Copied to its new owner and deleted from the draining server.
    Moved,
    /// The new owner already had the key (a newer write): only deleted from the draining server.
    Kept,
    /// No longer on the draining server (expired, evicted, or moved by a client).
    Gone,
}
