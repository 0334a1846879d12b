//! The jobs that read: a multi-get split per server in rounds along each key's replicas, the
//! fallbacks of keys every replica missed (a table change, warm-up and drain fills, as the
//! routing core's sequence says), a meta get along the replicas, and `me` on the owner.

use std::collections::HashMap;
use std::sync::Arc;

use libmcshm::Snapshot;
use libmcshm::proto::{self, Encoded, Expect, Reply, Request, StoreVerb};
use mcshm_route::{AddAnswer, Fill, GetMany, ReadPlan, ServerRef};

use super::{Fences, Outstanding, Plan, Service, encode_for, server_error};
use crate::command::{Command, GetVerb, encode_get};
use crate::failure::Failure;
use libmcshm::proto::frame::{Frame, ItemSpan, first_line, items, unprefix_meta};
use libmcshm::proto::is_error;

/// What a fill did ([`Service::fill`]), as the routing core's sequence says.
#[derive(Debug, PartialEq, Eq)]
enum Filled {
    /// The key was copied to the owner: its `VALUE` item is the answer.
    Copied(Vec<u8>),
    /// Ask the owner again (a newer write, a refused copy, the drain moved it); when it
    /// misses, the copy's `VALUE` item, if any, is the answer.
    AskAgain(Option<Vec<u8>>),
    Nothing,
}

impl Service {
    /// A retrieval of many keys, as the routing core's [`GetMany`] says (the blocking client
    /// runs the same): rounds along each key's up replicas, one request per server per round,
    /// every server's share sent before any reply is awaited; then the misses' fallbacks.
    /// Merged in the client's key order. Keys of failed servers are misses unless every server
    /// failed: then `SERVER_ERROR`. Keys of a server whose fence judged its answer behind are
    /// misses (the fence noted in `fences`).
    /// (`planned`: the plan of a single key, made by the direct path.)
    pub(super) async fn get(
        &self,
        verb: GetVerb,
        exptime: Option<i64>,
        keys: Vec<Vec<u8>>,
        lane: usize,
        planned: Option<Plan<ReadPlan>>,
        fences: &Fences,
    ) -> Vec<u8> {
        use std::sync::atomic::Ordering::Relaxed;
        if keys.len() > 1 {
            self.stats.get_keys.fetch_add(keys.len() as u64, Relaxed);
        }
        let Plan {
            snapshot,
            value: (plans, version),
        } = match planned {
            Some(Plan { snapshot, value }) => {
                let version = snapshot.version;
                Plan {
                    snapshot,
                    value: (vec![value], version),
                }
            }
            // On one table version, as the blocking client plans its batches.
            None => decided!(self.decide(|router, now| {
                let batch =
                    router.plan_each(&keys, now, |router, key| router.plan_read(key, now))?;
                let plans = batch
                    .plans
                    .into_iter()
                    .collect::<libmcshm::Result<Vec<_>>>()?;
                Ok((plans, batch.version))
            })),
        };
        let batch = Batch {
            snapshot: &snapshot,
            verb,
            exptime,
            keys: &keys,
        };
        let mut many = GetMany::new(version, plans);
        let mut found: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        let (mut answered, mut failure) = (false, None);
        while let Some(round) = many.next_round() {
            for ((server, members), sent) in self.get_round(&batch, round, lane) {
                match self.finish(sent).await {
                    Ok(reply) if is_error(first_line(&reply)) => {
                        failure = Some(String::from_utf8_lossy(first_line(&reply)).into_owned());
                        many.failed(server);
                    }
                    Ok(reply) => {
                        answered = true;
                        let prefix = snapshot.policy.prefix.as_bytes();
                        match_items(&reply, &members, &keys, prefix, &mut found);
                        members
                            .iter()
                            .filter(|&&n| found[n].is_some())
                            .for_each(|&n| many.found(n));
                    }
                    // The server answered, for a table newer than this host's: misses.
                    Err(Failure {
                        fenced: Some(fenced),
                        ..
                    }) => {
                        answered = true;
                        fences.note(&fenced);
                    }
                    Err(err) => {
                        failure = Some(err.error);
                        many.failed(server);
                    }
                }
            }
        }
        self.fallbacks(&batch, &many, &mut found).await;
        if !answered && let Some(error) = failure {
            return server_error(&error);
        }
        let mut out = Vec::new();
        for item in found.into_iter().flatten() {
            self.stats.get_hits.fetch_add(1, Relaxed);
            out.extend_from_slice(&item);
        }
        out.extend_from_slice(b"END\r\n");
        out
    }

    /// Queues a round of a multi-get ([`GetMany::next_round`]): one request per server, for
    /// its keys.
    fn get_round(
        &self,
        batch: &Batch<'_>,
        round: Vec<(ServerRef, Vec<usize>)>,
        lane: usize,
    ) -> Vec<((ServerRef, Vec<usize>), Outstanding)> {
        let (snapshot, keys) = (batch.snapshot, batch.keys);
        let mut outstanding = Vec::with_capacity(round.len());
        for (server, members) in round {
            let mut bytes = Encoded::new();
            let wanted = members.iter().map(|&n| keys[n].as_slice());
            let prefix = snapshot.policy.prefix;
            encode_get(
                batch.verb,
                batch.exptime,
                wanted,
                &mut bytes,
                prefix.as_bytes(),
            );
            let sent = self.send(snapshot, server.index, bytes, Frame::Values, lane);
            outstanding.push(((server, members), sent));
        }
        outstanding
    }

    /// The misses of a multi-get that get a single get's fallbacks ([`GetMany::misses`]), each
    /// planned again: its owner asked again when the table changed since the batch (a drain
    /// that began meanwhile may have moved it), then the plan's fills (warm-up, drain), the
    /// owner asked again with the client's own verb (its cas, its touch).
    async fn fallbacks(&self, batch: &Batch<'_>, many: &GetMany, found: &mut [Option<Vec<u8>>]) {
        let Batch {
            verb,
            exptime,
            keys,
            ..
        } = *batch;
        if found.iter().all(Option::is_some) {
            return;
        }
        let version_now = self.router().version_now();
        for n in many.misses(version_now) {
            let Ok(Plan {
                snapshot,
                value: plan,
            }) = self.decide(|router, now| router.plan_read(&keys[n], now))
            else {
                continue;
            };
            if many.ask_owner_again(&plan, snapshot.version) {
                found[n] = self
                    .ask_again(&snapshot, plan.owner, verb, exptime, &keys[n])
                    .await;
            }
            for fill in &plan.fills {
                if found[n].is_some() {
                    break;
                }
                let plain = verb == GetVerb::Get && exptime.is_none();
                match self.fill(&snapshot, fill, &keys[n], plain).await {
                    Filled::Copied(item) => found[n] = Some(item),
                    Filled::AskAgain(copy) => {
                        found[n] = self
                            .ask_again(&snapshot, fill.to, verb, exptime, &keys[n])
                            .await
                            .or(copy);
                    }
                    Filled::Nothing => {}
                }
            }
        }
    }

    /// One key asked of one server with the client's verb: its `VALUE` item, bare of the prefix.
    async fn ask_again(
        &self,
        snapshot: &Arc<Snapshot>,
        server: ServerRef,
        verb: GetVerb,
        exptime: Option<i64>,
        key: &[u8],
    ) -> Option<Vec<u8>> {
        let prefix = snapshot.policy.prefix.as_bytes();
        let mut bytes = Encoded::new();
        encode_get(verb, exptime, std::iter::once(key), &mut bytes, prefix);
        let reply = self
            .call(snapshot, server.index, bytes, Frame::Values)
            .await
            .ok()?;
        items(&reply)
            .into_iter()
            .find(|s| s.key.strip_prefix(prefix) == Some(key))
            .map(|s| s.unprefixed(prefix))
    }

    /// Executes one fill of a read plan as the routing core's sequence says
    /// ([`Fill::after_add`]; the blocking client runs the same): `mg` on `from`, a hit copied
    /// to `to` with `add` (never over a newer write; flags and remaining TTL kept), a drain
    /// then deleting it from `from` when `to` holds a value. `plain`: the read is a plain get,
    /// which our stored copy answers as it is.
    async fn fill(&self, snapshot: &Arc<Snapshot>, fill: &Fill, key: &[u8], plain: bool) -> Filled {
        let prefix = snapshot.policy.prefix.as_bytes();
        let ask = Encoded::of(&Request::MetaGet { key }, prefix);
        let reply = self.call(snapshot, fill.from.index, ask, Frame::Meta).await;
        let Ok(Some((Reply::Meta { value, flags, ttl }, _))) = reply
            .as_deref()
            .map_or(Ok(None), |r| proto::parse_reply(Expect::Meta, r))
        else {
            return match fill.ask_after_source_miss() {
                true => Filled::AskAgain(None),
                false => Filled::Nothing,
            };
        };
        let store = Request::Store {
            verb: StoreVerb::Add,
            key,
            flags,
            exptime: ttl.max(0),
            value: &value,
        };
        let add = Encoded::of(&store, prefix);
        let added = match self.call(snapshot, fill.to.index, add, Frame::Line).await {
            Ok(reply) if reply == b"STORED\r\n" => AddAnswer::Stored,
            Ok(reply) if reply == b"NOT_STORED\r\n" => AddAnswer::NotStored,
            _ => AddAnswer::Refused,
        };
        let next = fill.after_add(added, plain);
        if next.delete_source {
            let delete = Encoded::of(&Request::Delete { key }, prefix);
            let _ = self
                .call(snapshot, fill.from.index, delete, Frame::Line)
                .await;
        }
        let mut item = b"VALUE ".to_vec();
        item.extend_from_slice(key);
        item.extend_from_slice(format!(" {flags} {}\r\n", value.len()).as_bytes());
        item.extend_from_slice(&value);
        item.extend_from_slice(b"\r\n");
        match (next.ask_again, next.copy_if_missed) {
            (false, _) => Filled::Copied(item),
            (true, copy) => Filled::AskAgain(copy.then_some(item)),
        }
    }

    /// A meta get along the key's replicas: the first reply that is not a miss (`EN`); on a
    /// miss everywhere, the plan's fills, then the owner asked again with the same command. A
    /// reply a fence judged behind is a miss (the fence noted in `fences`).
    pub(super) async fn read_one(
        &self,
        command: &Command,
        key: &[u8],
        lane: usize,
        planned: Option<Plan<ReadPlan>>,
        fences: &Fences,
    ) -> Vec<u8> {
        let Plan {
            snapshot,
            value: plan,
        } = match planned {
            Some(plan) => plan,
            None => decided!(self.decide(|router, now| router.plan_read(key, now))),
        };
        let bytes = decided!(encode_for(command, &snapshot));
        let prefix = snapshot.policy.prefix.as_bytes();
        // A batch of one, as a text get and the blocking client's get run it.
        let mut many = GetMany::new(snapshot.version, vec![plan]);
        let (mut miss, mut failure) = (None, None);
        let mut first = true;
        while let Some(round) = many.next_round() {
            let (server, _) = round[0];
            let result = match std::mem::take(&mut first) {
                // The first request on the client's lane, in its order.
                true => {
                    let sent = self.send(&snapshot, server.index, bytes.clone(), Frame::Meta, lane);
                    self.finish(sent).await
                }
                false => {
                    self.call(&snapshot, server.index, bytes.clone(), Frame::Meta)
                        .await
                }
            };
            match result {
                Ok(reply) if first_line(&reply).starts_with(b"EN") => miss = Some(reply),
                Ok(reply) => return unprefix_meta(reply, prefix),
                Err(Failure {
                    fenced: Some(fenced),
                    ..
                }) => {
                    fences.note(&fenced);
                    miss = Some(b"EN\r\n".to_vec());
                }
                Err(err) => {
                    failure = Some(err.error);
                    many.failed(server);
                }
            }
        }
        if !many.misses(self.router().version_now()).is_empty()
            && let Some(reply) = self.meta_fallbacks(command, key, &many).await
        {
            return reply;
        }
        match (miss, failure) {
            (Some(reply), _) => reply,
            (None, Some(error)) => server_error(&error),
            (None, None) => b"EN\r\n".to_vec(),
        }
    }

    /// The fallbacks of a meta get's miss ([`GetMany::misses`]), the key planned again: its
    /// owner asked again when the table changed; then the plan's fills, the owner asked again
    /// after each (a meta reply carries what only the server gives: the flags as asked, so the
    /// copy itself is never the answer). The first hit.
    async fn meta_fallbacks(
        &self,
        command: &Command,
        key: &[u8],
        many: &GetMany,
    ) -> Option<Vec<u8>> {
        let Plan {
            snapshot,
            value: plan,
        } = self.decide(|router, now| router.plan_read(key, now)).ok()?;
        let bytes = encode_for(command, &snapshot).ok()?;
        let ask =
            |server: ServerRef| self.call(&snapshot, server.index, bytes.clone(), Frame::Meta);
        let hit = |reply: &[u8]| !first_line(reply).starts_with(b"EN");
        if many.ask_owner_again(&plan, snapshot.version)
            && let Ok(reply) = ask(plan.owner).await
            && hit(&reply)
        {
            return Some(unprefix_meta(reply, snapshot.policy.prefix.as_bytes()));
        }
        for fill in &plan.fills {
            if self.fill(&snapshot, fill, key, false).await != Filled::Nothing
                && let Ok(reply) = ask(fill.to).await
                && hit(&reply)
            {
                return Some(unprefix_meta(reply, snapshot.policy.prefix.as_bytes()));
            }
        }
        None
    }

    /// A command for the key's owner alone (`me`).
    pub(super) async fn owner_only(
        &self,
        command: &Command,
        key: &[u8],
        lane: usize,
        fences: &Fences,
    ) -> Vec<u8> {
        let Plan { snapshot, value } = decided!(self.decide(|router, now| {
            let owner = router.owner(key, now)?;
            match router.is_down(owner) {
                true => Err(router.down_error(owner)),
                false => Ok(owner),
            }
        }));
        let bytes = decided!(encode_for(command, &snapshot));
        let sent = self.send(&snapshot, value, bytes, Frame::Meta, lane);
        match self.finish(sent).await {
            Ok(reply) => unprefix_meta(reply, snapshot.policy.prefix.as_bytes()),
            Err(err) => {
                if let Some(fenced) = &err.fenced {
                    fences.note(fenced);
                }
                server_error(&err.error)
            }
        }
    }
}

/// A multi-get as asked: the table version its plans were made on, the client's verb (and
/// its touch), and its keys in the client's order.
#[derive(Clone, Copy)]
struct Batch<'a> {
    snapshot: &'a Arc<Snapshot>,
    verb: GetVerb,
    exptime: Option<i64>,
    keys: &'a [Vec<u8>],
}

/// Gives each of `members` (positions in `keys`) its item of `reply`. memcached answers hits in
/// the order the keys were asked, so one pass pairs them (a 100 000-key get costs linear
/// time); items out of that order are found by key.
fn match_items(
    reply: &[u8],
    members: &[usize],
    keys: &[Vec<u8>],
    prefix: &[u8],
    found: &mut [Option<Vec<u8>>],
) {
    let bare = |s: &ItemSpan<'_>| s.key.strip_prefix(prefix).map(<[u8]>::to_vec);
    let mut rest: Vec<ItemSpan<'_>> = Vec::new();
    let mut spans = items(reply).into_iter().peekable();
    for &n in members {
        match spans.peek() {
            Some(s) if s.key.strip_prefix(prefix) == Some(keys[n].as_slice()) => {
                found[n] = spans.next().map(|s| s.unprefixed(prefix));
            }
            _ => {}
        }
    }
    rest.extend(spans);
    if rest.is_empty() {
        return;
    }
    let mut by_key: HashMap<Vec<u8>, ItemSpan<'_>> = HashMap::new();
    for span in rest {
        if let Some(key) = bare(&span) {
            by_key.entry(key).or_insert(span);
        }
    }
    for &n in members {
        if found[n].is_none()
            && let Some(span) = by_key.remove(&keys[n])
        {
            found[n] = Some(span.unprefixed(prefix));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::match_items;

    fn keys(names: &[&str]) -> Vec<Vec<u8>> {
        names.iter().map(|k| k.as_bytes().to_vec()).collect()
    }

    fn text(found: &[Option<Vec<u8>>]) -> Vec<Option<String>> {
        let text = |v: &Vec<u8>| String::from_utf8_lossy(v).into_owned();
        found.iter().map(|f| f.as_ref().map(text)).collect()
    }

    #[test]
    fn items_in_the_asked_order_are_paired_in_one_pass() {
        let keys = keys(&["a", "b", "c"]);
        let reply = b"VALUE a 0 1\r\n1\r\nVALUE c 0 1\r\n3\r\nEND\r\n";
        let mut found = vec![None; 3];
        match_items(reply, &[0, 1, 2], &keys, b"", &mut found);
        assert_eq!(
            text(&found),
            [
                Some("VALUE a 0 1\r\n1\r\n".into()),
                None,
                Some("VALUE c 0 1\r\n3\r\n".into())
            ]
        );
    }

    #[test]
    fn items_out_of_order_are_found_by_key_and_members_only_get_theirs() {
        let keys = keys(&["a", "b", "c", "d"]);
        // This server was asked for b and d only (members 1 and 3); it answered d first.
        let reply = b"VALUE d 0 1\r\n4\r\nVALUE b 0 1\r\n2\r\nEND\r\n";
        let mut found = vec![None; 4];
        match_items(reply, &[1, 3], &keys, b"", &mut found);
        assert_eq!(
            text(&found),
            [
                None,
                Some("VALUE b 0 1\r\n2\r\n".into()),
                None,
                Some("VALUE d 0 1\r\n4\r\n".into())
            ]
        );
    }

    #[test]
    fn the_prefix_is_taken_off_and_foreign_keys_are_ignored() {
        let keys = keys(&["a", "b"]);
        let reply = b"VALUE app:x 0 1\r\n9\r\nVALUE app:b 5 1\r\n2\r\nVALUE zz 0 1\r\n0\r\nEND\r\n";
        let mut found = vec![None; 2];
        match_items(reply, &[0, 1], &keys, b"app:", &mut found);
        assert_eq!(text(&found), [None, Some("VALUE b 5 1\r\n2\r\n".into())]);
    }
}
