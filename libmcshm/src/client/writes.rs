//! Writes: one key to its replicas, with the invalidations that keep stale copies from being
//! served; many keys pipelined per server; delete, incr/decr, touch.

use super::fenced::fenced_at;
use super::{Client, StoreItem, Stored};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::proto::{self, Reply, Request, StoreVerb};
use mcshm_route::{CounterAsk, CounterNext, CounterReply, FollowChange, IncrOrCreate, ServerRef};

impl Client {
    /// set, add, replace, append, prepend or cas (`StoreVerb::Cas(unique)`), on every up replica
    /// (cas: the first only). Returns the first replica's outcome.
    pub fn store(
        &mut self,
        verb: StoreVerb,
        key: &[u8],
        value: &[u8],
        flags: u32,
        ttl: i64,
    ) -> Result<Stored> {
        let request = Request::Store {
            verb,
            key,
            flags,
            exptime: ttl,
            value,
        };
        let only_first = matches!(verb, StoreVerb::Cas(_));
        self.write(key, &request, only_first, |c, server, reply| {
            c.stored(server, reply)
        })
    }

    pub fn set(&mut self, key: &[u8], value: &[u8], flags: u32, ttl: i64) -> Result<Stored> {
        self.store(StoreVerb::Set, key, value, flags, ttl)
    }

    /// Sends a write to the key's up replicas; returns the first one's reply. Then the
    /// invalidations of the module doc (rehash: next server along the ring; a draining owner).
    /// A write a server's fence judged behind is undone there, and runs once more when this
    /// host's table catches up (see `fenced.rs`); else it fails with [`Error::TableBehind`].
    pub(super) fn write<T>(
        &mut self,
        key: &[u8],
        request: &Request<'_>,
        only_first: bool,
        interpret: impl Fn(&Self, usize, Reply) -> Result<T>,
    ) -> Result<T> {
        match self.write_once(key, request, only_first, &interpret) {
            Err(err) if fenced_at(&err).is_some_and(|wanted| self.catch_up(wanted)) => {
                self.write_once(key, request, only_first, &interpret)
            }
            other => other,
        }
    }

    fn write_once<T>(
        &mut self,
        key: &[u8],
        request: &Request<'_>,
        only_first: bool,
        interpret: &impl Fn(&Self, usize, Reply) -> Result<T>,
    ) -> Result<T> {
        let plan = self.router.plan_write(key, only_first, now_ms());
        self.run_probes();
        let plan = plan?;
        // The version the write is routed on (a probe run meanwhile does not refresh the
        // router: the plan's positions are still of this version).
        let routed = self.router.snapshot().version;
        let up: Vec<usize> = plan.targets.iter().map(|s| s.index).collect();
        let stale: Vec<usize> = plan.invalidate.iter().map(|s| s.index).collect();
        let (mut answer, mut last_error, mut fenced) = (None, None, Vec::new());
        let mut take = |server: usize, result: Result<Reply>| match result {
            Ok(reply) if answer.is_none() => answer = Some((server, reply)),
            Ok(_) => {}
            Err(err) if fenced_at(&err).is_some() => fenced.push((server, err)),
            Err(err) => last_error = Some(err),
        };
        if stale.is_empty() && up.len() == 1 {
            take(up[0], self.call(up[0], request));
        } else {
            // The replicas and the invalidations in one fan-out: their round trips overlap.
            let delete = Request::Delete { key };
            let calls: Vec<(usize, &Request<'_>)> = up
                .iter()
                .map(|&i| (i, request))
                .chain(stale.iter().map(|&i| (i, &delete)))
                .collect();
            for (&server, result) in up.iter().zip(self.fan_out(&calls)) {
                take(server, result);
            }
        }
        // Landed where this host's table is behind: undone there, and the write fails (a
        // replica on a newer table may be one this write did not reach).
        let undo: Vec<usize> = fenced.iter().map(|(server, _)| *server).collect();
        if let Some((_, err)) = fenced.into_iter().next() {
            for server in undo {
                let _ = self.call_plain(server, &Request::Delete { key });
            }
            self.follow_table_change(key, request, routed, &plan.targets);
            return Err(err);
        }
        // The reply is read while the positions are of the table the write was routed on.
        let outcome = match (answer, last_error) {
            (Some((server, reply)), _) => interpret(self, server, reply),
            (None, Some(err)) => Err(err),
            (None, None) => Err(self.router.down_error(up[0])),
        };
        self.follow_table_change(key, request, routed, &plan.targets);
        outcome
    }

    /// A write routed on version `routed` (to its servers `written`), whose table changed
    /// while it was in flight, follows the new versions as [`FollowChange`] says (deleted where
    /// it no longer belongs and where the new version invalidates; set and delete sent again
    /// to new replicas). One atomic load when the table did not change.
    pub(super) fn follow_table_change(
        &mut self,
        key: &[u8],
        request: &Request<'_>,
        routed: u64,
        written: &[ServerRef],
    ) {
        if self.router.version_now() == routed {
            return;
        }
        let mut follow = FollowChange::new(routed, written, request.is_repeatable());
        while self.router.refresh(now_ms()).is_ok() && follow.wants(self.router.snapshot().version)
        {
            let Ok(plan) = self.router.plan_write(key, false, now_ms()) else {
                return;
            };
            let now = self.router.snapshot().clone();
            let router = &self.router;
            let Some(round) = follow.round(now.version, &now.servers, &plan, |i| router.is_down(i))
            else {
                return;
            };
            for server in round.delete {
                let _ = self.call(server.index, &Request::Delete { key });
            }
            for server in round.resend {
                let _ = self.call(server.index, request);
            }
        }
    }

    /// After many writes: each key deleted where its write plan said a stale copy of it could
    /// later be served from (`groups[server]`: its keys), every server's share pipelined at
    /// once, as the stores are (not one server after another: their round trips overlap).
    fn invalidate_many(&mut self, groups: Vec<Vec<&[u8]>>) {
        let requests: Vec<(usize, Vec<Request>)> = groups
            .into_iter()
            .enumerate()
            .filter(|(_, keys)| !keys.is_empty())
            .map(|(server, keys)| {
                let deletes = keys
                    .into_iter()
                    .map(|key| Request::Delete { key })
                    .collect();
                (server, deletes)
            })
            .collect();
        let _ = self.pipelines_quiet_if_able(&requests);
    }

    /// [`Client::pipelines`] of sets and deletes (one reply per request), sent as quiet meta
    /// commands when every server of `groups` speaks them ([`Client::quiet_pipelines`]): a
    /// server then writes no reply for a success, which was a third of its work in a bulk
    /// set. A failure is placed by its opaque; an error reply names no command, so a server
    /// that sent one is sent its share again with a reply for each (a set or a delete sent
    /// again ends in the same state, see [`Request::is_repeatable`]).
    fn pipelines_quiet_if_able(
        &mut self,
        groups: &[(usize, Vec<Request<'_>>)],
    ) -> Vec<Result<Vec<Reply>>> {
        let quiet_form = |request: &Request<'_>| match request {
            Request::Store { verb, .. } => *verb == StoreVerb::Set,
            Request::Delete { .. } => true,
            _ => false,
        };
        let able = groups
            .iter()
            .all(|(_, requests)| requests.iter().all(quiet_form))
            && groups.iter().all(|(server, _)| self.speaks_meta(*server));
        if !able {
            return self.pipelines(groups);
        }
        let outcomes = self.quiet_pipelines(groups);
        let mut results = Vec::with_capacity(groups.len());
        for ((server, requests), outcome) in groups.iter().zip(outcomes) {
            results.push(outcome.and_then(|windows| match placed(requests, windows) {
                Some(replies) => Ok(replies),
                None => self.pipeline(*server, requests),
            }));
        }
        results
    }

    /// Stores many items as their write plans say: grouped per server and pipelined (with
    /// replicas > 1 each item is stored on every up replica), then each key's invalidations.
    /// One result per item, in order.
    ///
    /// Items a server's fence judged behind are undone there and stored once more when this
    /// host's table catches up; else they fail with [`Error::TableBehind`] (see `fenced.rs`).
    pub fn store_many(
        &mut self,
        verb: StoreVerb,
        items: &[StoreItem<'_>],
    ) -> Result<Vec<Result<Stored>>> {
        let mut results = self.store_many_once(verb, items)?;
        let fenced: Vec<usize> = (0..items.len())
            .filter(|&n| matches!(&results[n], Err(e) if fenced_at(e).is_some()))
            .collect();
        let wanted = fenced
            .iter()
            .filter_map(|&n| results[n].as_ref().err().and_then(fenced_at))
            .max();
        if let Some(wanted) = wanted
            && self.catch_up(wanted)
        {
            let again: Vec<StoreItem<'_>> = fenced.iter().map(|&n| items[n].clone()).collect();
            for (n, result) in fenced.into_iter().zip(self.store_many_once(verb, &again)?) {
                results[n] = result;
            }
        }
        Ok(results)
    }

    fn store_many_once(
        &mut self,
        verb: StoreVerb,
        items: &[StoreItem<'_>],
    ) -> Result<Vec<Result<Stored>>> {
        for item in items {
            proto::check_key(item.key).map_err(|why| Error::bad_key(item.key, why))?;
        }
        let keys: Vec<&[u8]> = items.iter().map(|item| item.key).collect();
        // One clock read for the batch, as get_many does (a read per key was a tenth of the
        // planning).
        let now = now_ms();
        let planned = self
            .router
            .plan_each(&keys, now, |router, key| router.plan_write(key, false, now));
        self.run_probes();
        let plans = planned?.plans;
        // Indexed by server position: a table has few servers, and a hash per key cost more.
        let servers = self.router.snapshot().servers.len();
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); servers];
        let mut invalidations: Vec<Vec<&[u8]>> = vec![Vec::new(); servers];
        let mut results: Vec<Option<Result<Stored>>> = Vec::with_capacity(items.len());
        for (n, plan) in plans.into_iter().enumerate() {
            results.push(None);
            match plan {
                Ok(plan) => {
                    for server in plan.targets {
                        groups[server.index].push(n);
                    }
                    for server in plan.invalidate {
                        invalidations[server.index].push(keys[n]);
                    }
                }
                // A key too long once the prefix is put before it fails the batch, as a bad key
                // does; so does a table without servers.
                Err(err @ (Error::BadKey { .. } | Error::NoServers { .. })) => return Err(err),
                // No replica up: this item's answer.
                Err(err) => results[n] = Some(Err(err)),
            }
        }
        // Every server's share is pipelined at once (see `pipelines`).
        let groups: Vec<(usize, Vec<usize>)> = groups
            .into_iter()
            .enumerate()
            .filter(|(_, members)| !members.is_empty())
            .collect();
        let requests: Vec<(usize, Vec<Request>)> = groups
            .iter()
            .map(|(server, members)| {
                let requests = members
                    .iter()
                    .map(|&n| Request::Store {
                        verb,
                        key: items[n].key,
                        flags: items[n].flags,
                        exptime: items[n].ttl,
                        value: items[n].value,
                    })
                    .collect();
                (*server, requests)
            })
            .collect();
        let outcomes = self.pipelines_quiet_if_able(&requests);
        let mut undo: Vec<Vec<&[u8]>> = vec![Vec::new(); servers];
        for ((server, members), outcome) in groups.into_iter().zip(outcomes) {
            match outcome {
                Ok(replies) => {
                    for (n, reply) in members.into_iter().zip(replies) {
                        let outcome = self.stored(server, reply);
                        // A replica's success does not hide another's fenced answer.
                        if !matches!(results[n], Some(Ok(_) | Err(Error::TableBehind { .. }))) {
                            results[n] = Some(outcome);
                        }
                    }
                }
                Err(Error::TableBehind {
                    server: at,
                    fence,
                    table,
                }) => {
                    // Landed where this host's table is behind: undone there (below).
                    for &n in &members {
                        results[n] = Some(Err(Error::TableBehind {
                            server: at.clone(),
                            fence,
                            table,
                        }));
                    }
                    undo[server].extend(members.iter().map(|&n| keys[n]));
                }
                Err(err) => {
                    let text = err.to_string();
                    for n in members {
                        if results[n].is_none() {
                            results[n] = Some(Err(Error::Network {
                                server: self.address(server).to_string(),
                                error: text.clone(),
                            }));
                        }
                    }
                }
            }
        }
        if undo.iter().any(|keys| !keys.is_empty()) {
            self.plain(|client| client.invalidate_many(undo));
        }
        self.invalidate_many(invalidations);
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Error::NoServers {
                        what: "the table".into(),
                    })
                })
            })
            .collect())
    }

    /// Deletes a key (on every replica); `false` if it did not exist.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        self.write(
            key,
            &Request::Delete { key },
            false,
            |c, server, reply| match reply {
                Reply::Deleted => Ok(true),
                Reply::NotFound => Ok(false),
                other => Err(c.unexpected(server, other)),
            },
        )
    }

    /// Increments a counter; `None` if the key does not exist.
    pub fn incr(&mut self, key: &[u8], delta: u64) -> Result<Option<u64>> {
        self.arith(key, Request::Incr { key, delta })
    }

    /// Decrements a counter (memcached stops at 0); `None` if the key does not exist.
    pub fn decr(&mut self, key: &[u8], delta: u64) -> Result<Option<u64>> {
        self.arith(key, Request::Decr { key, delta })
    }

    /// Increments (`up`) or decrements a counter by `delta`, creating it with `initial` (and
    /// `ttl`) when it is absent, as the routing core's [`IncrOrCreate`] says (a counter another
    /// client creates meanwhile is counted, never overwritten): the counter's value, or `None`
    /// when it could not be counted (it kept vanishing between the tries).
    pub fn incr_or_create(
        &mut self,
        key: &[u8],
        delta: u64,
        up: bool,
        initial: u64,
        ttl: i64,
    ) -> Result<Option<u64>> {
        let text = initial.to_string();
        let (mut sequence, mut ask) = IncrOrCreate::start();
        let mut counted = None;
        loop {
            let reply = match ask {
                CounterAsk::Arith => {
                    counted = match up {
                        true => self.incr(key, delta)?,
                        false => self.decr(key, delta)?,
                    };
                    match counted {
                        Some(_) => CounterReply::Number,
                        None => CounterReply::NotFound,
                    }
                }
                CounterAsk::Add => {
                    match self.store(StoreVerb::Add, key, text.as_bytes(), 0, ttl)? {
                        Stored::Stored => CounterReply::Stored,
                        Stored::NotStored => CounterReply::NotStored,
                        _ => CounterReply::Other,
                    }
                }
            };
            match sequence.next(reply) {
                CounterNext::Ask(next) => ask = next,
                CounterNext::Counted => return Ok(counted),
                CounterNext::Created => return Ok(Some(initial)),
                CounterNext::GaveUp | CounterNext::Failed => return Ok(None),
            }
        }
    }

    pub(super) fn arith(&mut self, key: &[u8], request: Request<'_>) -> Result<Option<u64>> {
        self.write(key, &request, false, |c, server, reply| match reply {
            Reply::Number(n) => Ok(Some(n)),
            Reply::NotFound => Ok(None),
            other => Err(c.unexpected(server, other)),
        })
    }

    /// Sets a new expiration time (on every replica); `false` if the key does not exist.
    pub fn touch(&mut self, key: &[u8], ttl: i64) -> Result<bool> {
        let request = Request::Touch { key, exptime: ttl };
        self.write(key, &request, false, |c, server, reply| match reply {
            Reply::Touched => Ok(true),
            Reply::NotFound => Ok(false),
            other => Err(c.unexpected(server, other)),
        })
    }
}

/// One reply per request from the [`Reply::Quiet`]s of its windows: a success where no failure
/// names it (by its position, the opaque it was sent with). `None` when an error reply names
/// no request.
fn placed(requests: &[Request<'_>], windows: Vec<Reply>) -> Option<Vec<Reply>> {
    let mut replies: Vec<Reply> = requests
        .iter()
        .map(|request| match request {
            Request::Delete { .. } => Reply::Deleted,
            _ => Reply::Stored,
        })
        .collect();
    for window in windows {
        let Reply::Quiet(failures) = window else {
            return None;
        };
        for (opaque, failure) in failures {
            let at = opaque.filter(|&at| at < replies.len())?;
            replies[at] = failure;
        }
    }
    Some(replies)
}
