//! Reads: one key (its replicas in order, then the plan's fills), and many keys (every
//! server's share pipelined at once, then the misses' fallbacks).

use std::collections::HashMap;

use mcshm_route::{GetMany, ReadPlan};

use super::fenced::fenced_at;
use super::{Client, KEYS_PER_GET, MultiGet};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::proto::{Item, Reply, Request};

impl Client {
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Item>> {
        self.retrieve(key, false, None)
    }

    /// `get` with the cas unique.
    pub fn gets(&mut self, key: &[u8]) -> Result<Option<Item>> {
        self.retrieve(key, true, None)
    }

    /// Get and touch (`gat`; `gats` with `cas`).
    pub fn gat(&mut self, key: &[u8], ttl: i64, cas: bool) -> Result<Option<Item>> {
        self.retrieve(key, cas, Some(ttl))
    }

    /// Executes the router's read plan as a batch of one ([`GetMany`], the sequence mcproxy's
    /// gets run too): the replicas in order, the first hit wins (a batch of one's rounds, with
    /// nothing to group: a hit allocates nothing); on a miss everywhere, the batch's fallbacks
    /// (the owner asked again if the table changed meanwhile; the plan's fills); an error only
    /// if no replica answered.
    /// A read no replica answered but one whose fence judged it behind runs once more when
    /// this host's table catches up; else it is a miss (see `fenced.rs`).
    pub(super) fn retrieve(
        &mut self,
        key: &[u8],
        cas: bool,
        touch: Option<i64>,
    ) -> Result<Option<Item>> {
        let mut result = self.retrieve_once(key, cas, touch);
        if let Err(err) = &result
            && let Some(wanted) = fenced_at(err)
        {
            result = match self.catch_up(wanted) {
                true => self.retrieve_once(key, cas, touch),
                false => Ok(None),
            };
        }
        match result {
            Err(err) if fenced_at(&err).is_some() => Ok(None),
            other => other,
        }
    }

    fn retrieve_once(&mut self, key: &[u8], cas: bool, touch: Option<i64>) -> Result<Option<Item>> {
        let plan = self.router.plan_read(key, now_ms());
        self.run_probes();
        let plan = plan?;
        let version = self.router.snapshot().version;
        let (mut answered, mut last_error, mut failed) = (false, None, Vec::new());
        for &server in &plan.replicas {
            match self.get_one(server.index, key, cas, touch) {
                Ok(Some(item)) => return Ok(Some(item)),
                Ok(None) => answered = true,
                Err(err) => {
                    failed.push(server);
                    last_error = Some(err);
                }
            }
        }
        let mut batch = GetMany::new(version, vec![plan]);
        failed.into_iter().for_each(|server| batch.failed(server));
        if let Some(item) = self.fall_back(&batch, &[key], cas, touch).pop() {
            return Ok(Some(item));
        }
        match (answered, last_error) {
            (false, Some(err)) => Err(err),
            _ => Ok(None),
        }
    }

    pub(super) fn get_one(
        &mut self,
        server: usize,
        key: &[u8],
        cas: bool,
        touch: Option<i64>,
    ) -> Result<Option<Item>> {
        let keys = [key];
        let request = Request::Get {
            keys: &keys,
            cas,
            touch,
        };
        match self.call(server, &request)? {
            Reply::Values(mut items) => Ok(items.pop().filter(|i| i.key == key)),
            other => Err(self.unexpected(server, other)),
        }
    }

    /// Gets many keys as the routing core's [`GetMany`] says: rounds along each key's up
    /// replicas (each server's share pipelined in `get` commands of up to 100 keys, every
    /// server's share sent before any reply is read), then the single get's fallbacks for the
    /// keys every replica missed (their owner asked again if the table changed during the
    /// batch; warm-up and drain fills). Keys of down servers are misses; keys no replica
    /// answered for are reported in `errors`. Bad keys fail the whole call before anything is
    /// sent.
    ///
    /// A server whose fence judged its answers behind: the batch runs once more when this
    /// host's table catches up; else that server's keys are misses (see `fenced.rs`).
    pub fn get_many(&mut self, keys: &[&[u8]], cas: bool) -> Result<MultiGet> {
        let mut result = self.get_many_once(keys, cas)?;
        let wanted = result.errors.iter().filter_map(|(_, e)| fenced_at(e)).max();
        if let Some(wanted) = wanted {
            if self.catch_up(wanted) {
                result = self.get_many_once(keys, cas)?;
            }
            result.errors.retain(|(_, e)| fenced_at(e).is_none());
        }
        Ok(result)
    }

    fn get_many_once(&mut self, keys: &[&[u8]], cas: bool) -> Result<MultiGet> {
        let now = now_ms();
        let planned = self
            .router
            .plan_each(keys, now, |router, key| router.plan_read(key, now));
        self.run_probes();
        let planned = planned?;
        let plans = planned
            .plans
            .into_iter()
            .collect::<Result<Vec<ReadPlan>>>()?;
        let snapshot = self.router.snapshot().clone();
        let mut batch = GetMany::new(planned.version, plans);
        let mut result = MultiGet::default();
        // A failed server (its position in `snapshot`), and the keys it was asked for.
        let mut failed: HashMap<usize, (Error, Vec<usize>)> = HashMap::new();
        // Keys some server answered (hit or miss): a failure another replica made up for is
        // not reported.
        let mut answered = vec![false; keys.len()];
        while let Some(round) = batch.next_round() {
            let asked: Vec<Vec<&[u8]>> = round
                .iter()
                .map(|(_, members)| members.iter().map(|&n| keys[n]).collect())
                .collect();
            let requests: Vec<(usize, Vec<Request>)> = round
                .iter()
                .zip(&asked)
                .map(|((server, _), asked)| {
                    let gets = asked
                        .chunks(KEYS_PER_GET)
                        .map(|chunk| Request::Get {
                            keys: chunk,
                            cas,
                            touch: None,
                        })
                        .collect();
                    (server.index, gets)
                })
                .collect();
            let outcomes = self.pipelines(&requests);
            for ((server, members), outcome) in round.into_iter().zip(outcomes) {
                let mut error = None;
                match outcome {
                    Ok(replies) => {
                        for (reply, asked) in replies.into_iter().zip(members.chunks(KEYS_PER_GET))
                        {
                            match reply {
                                Reply::Values(items) => {
                                    for n in answering(&items, asked, keys) {
                                        batch.found(n);
                                    }
                                    result.items.extend(items);
                                }
                                other => error = Some(self.unexpected(server.index, other)),
                            }
                        }
                    }
                    Err(err) => error = Some(err),
                }
                match error {
                    Some(err) => {
                        batch.failed(server);
                        let entry = failed.entry(server.index).or_insert((err, Vec::new()));
                        entry.1.extend(&members);
                    }
                    None => members.iter().for_each(|&n| answered[n] = true),
                }
            }
        }
        result.items.extend(self.fall_back(&batch, keys, cas, None));
        for (server, (err, asked)) in failed {
            if asked.iter().any(|&n| !answered[n]) {
                let address = snapshot.servers[server].address.clone();
                result.errors.push((address, err));
            }
        }
        Ok(result)
    }

    /// The fallbacks of a batch's misses ([`GetMany::misses`]), each key planned again: its
    /// owner asked again when the table changed since the batch, then the plan's fills. The
    /// items found.
    fn fall_back(
        &mut self,
        batch: &GetMany,
        keys: &[&[u8]],
        cas: bool,
        touch: Option<i64>,
    ) -> Vec<Item> {
        let now = now_ms();
        if self.router.refresh(now).is_err() {
            return Vec::new();
        }
        let mut filled = Vec::new();
        for n in batch.misses(self.router.snapshot().version) {
            let key = keys[n];
            let Ok(plan) = self.router.plan_read(key, now) else {
                continue;
            };
            let mut found = None;
            if batch.ask_owner_again(&plan, self.router.snapshot().version) {
                found = self
                    .get_one(plan.owner.index, key, cas, touch)
                    .ok()
                    .flatten();
            }
            for fill in &plan.fills {
                if found.is_none() {
                    found = self.fill(fill, key, cas, touch);
                }
            }
            filled.extend(found);
        }
        filled
    }
}

/// The keys (positions in `keys`) that the hits `items` of one `get` of the keys `asked`
/// answer. memcached answers a `get` in the order its keys were asked, so each hit is looked
/// for from the last one on (no hashing per key); a hit out of that order (another server,
/// a proxy) is looked for among all the asked keys. A key asked twice is answered twice.
fn answering<'a>(
    items: &'a [Item],
    asked: &'a [usize],
    keys: &'a [&[u8]],
) -> impl Iterator<Item = usize> + 'a {
    let mut next = 0;
    items.iter().filter_map(move |item| {
        let key = item.key.as_slice();
        let at = match asked[next..].iter().position(|&n| keys[n] == key) {
            Some(at) => next + at,
            None => asked.iter().position(|&n| keys[n] == key)?,
        };
        next = at + 1;
        Some(asked[at])
    })
}
