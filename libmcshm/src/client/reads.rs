//! Reads: one key (its replicas in order, then the plan's fills), and many keys (every
//! server's share pipelined at once, then the misses' fallbacks).

use std::collections::{HashMap, HashSet};

use super::{Client, KEYS_PER_GET, MultiGet, Routed};
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

    /// Gets many keys: grouped per server, each group pipelined in `get` commands of up to 100
    /// keys; keys missed (or failed) on their first replica are asked of the next; keys every
    /// replica missed get the single get's fallbacks (warm-up, drain) and their owner asked
    /// again if the table changed during the batch. Keys of down
    /// servers are misses; keys no replica answered for are reported in `errors`. Bad keys fail
    /// the whole call before anything is sent.
    pub fn get_many(&mut self, keys: &[&[u8]], cas: bool) -> Result<MultiGet> {
        let (mut pending, version) = self.route_batch(keys)?;
        // Where each key was asked first, in the table the batch is routed with.
        let owners: Vec<(&[u8], usize)> = pending.iter().map(|(k, chain)| (*k, chain[0])).collect();
        let mut result = MultiGet::default();
        // A failed server, and the keys it was asked for.
        let mut failed: HashMap<usize, (Error, Vec<&[u8]>)> = HashMap::new();
        let replicas = pending.iter().map(|p| p.1.len()).max().unwrap_or(0);
        // With replicas: keys some server answered (hit or miss), so that a failure another
        // replica made up for is not reported.
        let mut answered: HashSet<&[u8]> = HashSet::new();
        for round in 0..replicas {
            let mut groups: HashMap<usize, Vec<&[u8]>> = HashMap::new();
            for (key, chain) in &pending {
                if let Some(&server) = chain.get(round)
                    && !self.is_down(server)
                {
                    groups.entry(server).or_default().push(key);
                }
            }
            // Which keys hit, for the next round; the last round (with one replica, the only
            // one) needs no bookkeeping.
            let last_round = round + 1 == replicas;
            let mut hits: HashSet<Vec<u8>> = HashSet::new();
            // Every server gets its share before any reply is read (see `pipelines`).
            let groups: Vec<(usize, Vec<&[u8]>)> = groups.into_iter().collect();
            let requests: Vec<(usize, Vec<Request>)> = groups
                .iter()
                .map(|(server, keys)| {
                    let gets = keys
                        .chunks(KEYS_PER_GET)
                        .map(|chunk| Request::Get {
                            keys: chunk,
                            cas,
                            touch: None,
                        })
                        .collect();
                    (*server, gets)
                })
                .collect();
            let outcomes = self.pipelines(&requests);
            for ((server, keys), outcome) in groups.into_iter().zip(outcomes) {
                let mut error = None;
                match outcome {
                    Ok(replies) => {
                        for reply in replies {
                            match reply {
                                Reply::Values(items) => {
                                    if !last_round {
                                        hits.extend(items.iter().map(|i| i.key.clone()));
                                    }
                                    result.items.extend(items);
                                }
                                other => error = Some(self.unexpected(server, other)),
                            }
                        }
                    }
                    Err(err) => error = Some(err),
                }
                match error {
                    Some(err) => {
                        failed
                            .entry(server)
                            .or_insert((err, Vec::new()))
                            .1
                            .extend(&keys);
                    }
                    None if replicas > 1 => answered.extend(&keys),
                    None => {}
                }
            }
            if !last_round {
                pending.retain(|(key, _)| !hits.contains(*key));
            }
        }
        // Keys every replica missed get what a single get would do now (the router's plan of
        // a read): their owner asked again if the table changed during the batch (a drain may
        // have moved them there), then the plan's fills (warm-up, drain).
        let changed = self.router.refresh().is_ok() && self.router.snapshot().version != version;
        let now = crate::registry::now_ms();
        if changed || self.router.fills_possible(now) {
            let filled = self.fill_misses(&result.items, owners, &failed, version, cas, now);
            result.items.extend(filled);
        }
        for (server, (err, asked)) in failed {
            if asked.iter().any(|key| !answered.contains(key)) {
                result.errors.push((self.address(server), err));
            }
        }
        Ok(result)
    }

    /// The misses of a multi-get (keys not in `items`, whose first server did not fail),
    /// planned again one by one: the owner asked again if the table changed since the batch was
    /// routed on `version`, then the plan's fills. The items found.
    pub(super) fn fill_misses(
        &mut self,
        items: &[Item],
        owners: Vec<(&[u8], usize)>,
        failed: &HashMap<usize, (Error, Vec<&[u8]>)>,
        version: u64,
        cas: bool,
        now: u64,
    ) -> Vec<Item> {
        let hit: HashSet<&[u8]> = items.iter().map(|i| i.key.as_slice()).collect();
        let mut filled = Vec::new();
        for (key, first) in owners {
            if hit.contains(key) || failed.contains_key(&first) {
                continue;
            }
            let Ok(plan) = self.router.plan_read(key, now) else {
                continue;
            };
            // Planning reads the table afresh: a drain that ended while the misses were being
            // filled leaves plans without fills, and the key on its new owner.
            let changed = self.router.snapshot().version != version;
            if plan.fills.is_empty() && !changed {
                continue;
            }
            let mut found = None;
            if changed && plan.replicas.first() == Some(&plan.owner) {
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

    /// The replicas of each key, and the table version they were routed on. Routing a key
    /// reads the table, so a batch could straddle two versions (keys routed before a drain
    /// began to the server it drains, the rest to their new owner): a batch that did is routed
    /// again, up to three times. The version returned is the one read before routing, so that
    /// a change during routing still makes the batch ask the owners of its misses again.
    pub(super) fn route_batch<'k>(&mut self, keys: &[&'k [u8]]) -> Result<(Vec<Routed<'k>>, u64)> {
        let mut attempt = 0;
        loop {
            self.refresh()?;
            let version = self.router.snapshot().version;
            let mut routed = Vec::with_capacity(keys.len());
            for &key in keys {
                routed.push((key, self.chain(key)?));
            }
            attempt += 1;
            if self.router.snapshot().version == version || attempt == 3 {
                return Ok((routed, version));
            }
        }
    }
}
