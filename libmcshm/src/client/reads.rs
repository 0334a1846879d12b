//! Reads: one key (its replicas in order, then the plan's fills), and many keys (every
//! server's share pipelined at once, then the misses' fallbacks).

use std::collections::{HashMap, HashSet};

use std::sync::Arc;

use mcshm_route::{GetMany, ReadPlan};

use super::{Client, KEYS_PER_GET, MultiGet};
use crate::error::{Error, Result};
use crate::proto::{Item, Reply, Request};
use crate::table::Snapshot;

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

    /// Executes the router's read plan: the replicas in order, the first hit wins; a miss on
    /// all is a miss, then the plan's fills (warm-up, drain); an error only if no replica
    /// answered.
    pub(super) fn retrieve(
        &mut self,
        key: &[u8],
        cas: bool,
        touch: Option<i64>,
    ) -> Result<Option<Item>> {
        let plan = self.router.plan_read(key, crate::registry::now_ms());
        self.run_probes();
        let plan = plan?;
        let (mut answered, mut last_error) = (false, None);
        for server in &plan.replicas {
            match self.get_one(server.index, key, cas, touch) {
                Ok(Some(item)) => return Ok(Some(item)),
                Ok(None) => answered = true,
                Err(err) => last_error = Some(err),
            }
        }
        for fill in &plan.fills {
            if let Some(item) = self.fill(fill, key, cas, touch) {
                return Ok(Some(item));
            }
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
    pub fn get_many(&mut self, keys: &[&[u8]], cas: bool) -> Result<MultiGet> {
        let (plans, snapshot) = self.plan_batch(keys)?;
        let mut batch = GetMany::new(snapshot.version, plans);
        let mut result = MultiGet::default();
        // A failed server (its position in `snapshot`), and the keys it was asked for.
        let mut failed: HashMap<usize, (Error, Vec<usize>)> = HashMap::new();
        // Keys some server answered (hit or miss): a failure another replica made up for is
        // not reported.
        let mut answered: HashSet<usize> = HashSet::new();
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
                        for reply in replies {
                            match reply {
                                Reply::Values(items) => {
                                    for item in &items {
                                        let mine = members.iter().filter(|&&n| keys[n] == item.key);
                                        mine.for_each(|&n| batch.found(n));
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
                    None => answered.extend(&members),
                }
            }
        }
        result.items.extend(self.fall_back(&batch, keys, cas));
        for (server, (err, asked)) in failed {
            if asked.iter().any(|n| !answered.contains(n)) {
                let address = snapshot.servers[server].address.clone();
                result.errors.push((address, err));
            }
        }
        Ok(result)
    }

    /// The fallbacks of a multi-get's misses ([`GetMany::misses`]), each key planned again:
    /// its owner asked again when the table changed since the batch, then the plan's fills.
    /// The items found.
    fn fall_back(&mut self, batch: &GetMany, keys: &[&[u8]], cas: bool) -> Vec<Item> {
        let now = crate::registry::now_ms();
        if self.router.refresh().is_err() {
            return Vec::new();
        }
        let misses = batch.misses(
            self.router.snapshot().version,
            self.router.fills_possible(now),
        );
        let mut filled = Vec::new();
        for n in misses {
            let key = keys[n];
            let Ok(plan) = self.router.plan_read(key, now) else {
                continue;
            };
            let mut found = None;
            if batch.ask_owner_again(&plan, self.router.snapshot().version) {
                found = self
                    .get_one(plan.owner.index, key, cas, None)
                    .ok()
                    .flatten();
            }
            for fill in &plan.fills {
                if found.is_none() {
                    found = self.fill(fill, key, cas, None);
                }
            }
            filled.extend(found);
        }
        filled
    }

    /// The read plan of each key, on one table ([`Client::plan_each`]); a bad key fails the
    /// whole batch.
    pub(super) fn plan_batch(&mut self, keys: &[&[u8]]) -> Result<(Vec<ReadPlan>, Arc<Snapshot>)> {
        let now = crate::registry::now_ms();
        let (plans, snapshot) = self.plan_each(keys, |router, key| router.plan_read(key, now))?;
        Ok((plans.into_iter().collect::<Result<_>>()?, snapshot))
    }
}
