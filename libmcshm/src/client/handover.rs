//! Keys changing hands: warm-up after a rejoin (fill a miss from the server that owned the key
//! while the rejoined one was away) and draining (fall back to the draining server, move what
//! is found there). Both copy with `add`, so they never overwrite a newer write.

use super::{Client, Stored};
use crate::address::Address;
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

    /// Warm-up: a miss on a server in its warm window is looked up on the server that owned the
    /// key while it was away, and a hit is copied back with `add`.
    pub(super) fn warm_fill(&mut self, server: usize, key: &[u8]) -> Option<Item> {
        let interim = self.router.warm_source(server, key)?;
        self.copy_key(interim, server, key)
            .ok()?
            .map(|(item, _)| item)
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
        let item = Item {
            key: key.to_vec(),
            flags,
            value,
            cas: None,
        };
        Ok(Some((item, added)))
    }

    /// Drain: a miss on the key's new owner falls back to the draining server that had it; a
    /// hit there is moved to the new owner.
    pub(super) fn drain_fill(&mut self, owner: usize, key: &[u8]) -> Option<Item> {
        let draining = self.router.draining_owner(key)?;
        match self.copy_key(draining, owner, key).ok()? {
            Some((item, added)) => {
                if added.is_ok() {
                    let _ = self.call(draining, &Request::Delete { key });
                }
                Some(item)
            }
            // Gone from the draining server: the drain may have just moved it to the owner.
            None => self.get_one(owner, key, false, None).ok().flatten(),
        }
    }

    /// Moves one key off the draining server `draining` to its new owner (keeping flags and
    /// remaining TTL; never over a newer value there), then deletes it from `draining`.
    pub fn move_key(&mut self, draining: &Address, key: &[u8]) -> Result<crate::drain::Moved> {
        use crate::drain::Moved;
        let owner = self.router.owner(key)?;
        self.run_probes();
        if self.is_down(owner) {
            return Err(self.router.down_error(owner));
        }
        let snapshot = self.router.snapshot().clone();
        let from = snapshot
            .servers
            .iter()
            .position(|s| s.address.same_server(draining) && s.state == State::Draining)
            .ok_or_else(|| Error::NoServer {
                server: draining.to_string(),
                domain: snapshot.domain.clone(),
            })?;
        let Some((_, added)) = self.copy_key(from, owner, key)? else {
            return Ok(Moved::Gone);
        };
        let moved = match added? {
            Stored::Stored => Moved::Moved,
            _ => Moved::Kept,
        };
        self.call(from, &Request::Delete { key })?;
        Ok(moved)
    }

    pub(super) fn stored_reply(&mut self, server: usize, request: &Request<'_>) -> Result<Stored> {
        let reply = self.call(server, request)?;
        self.stored(server, reply)
    }
}
