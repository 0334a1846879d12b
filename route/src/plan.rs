//! Plans: what the router answers for one key, for every front end to execute as it is (the
//! blocking `libmcshm::Client` with its connections, mcproxy with its event loop), so
//! that each rule (replica order, warm-up and drain fallbacks, invalidations) is written once,
//! here, and the front ends cannot drift apart.
//!
//! A plan names servers by [`ServerRef`]: the server's stable id and its position in the table
//! version the plan was made on. Outcomes are reported by id ([`Router::report`]), so a plan
//! whose execution straddles a table change reports to the right server, or to none if it left.

use mcshm_table::error::Result;
use mcshm_table::table::{Server, State};

use crate::report::Failure;
use crate::router::Router;

/// A server of the table version a plan was made on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerRef {
    /// The server's id: unique in the domain, never reused.
    pub id: u32,
    /// Its position in that version's servers (what the plan's snapshot indexes).
    pub index: usize,
}

/// How a key is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadPlan {
    /// The key's owner (up or down).
    pub owner: ServerRef,
    /// The up replicas, owner first: ask them in order; the first hit wins.
    pub replicas: Vec<ServerRef>,
    /// When every replica missed: copy the key as these say, in order, until one finds it.
    pub fills: Vec<Fill>,
}

/// A miss filled from the server that had the key: warm-up after a rejoin, or a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fill {
    pub from: ServerRef,
    pub to: ServerRef,
    pub kind: FillKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillKind {
    /// `to` rejoined (warm policy) and `from` owned the key while it was away: copy with `add`
    /// (never over a newer write), keeping flags and remaining TTL.
    Warm,
    /// `from` is draining: copy with `add`, then delete the key from `from`. If `from` no
    /// longer has it, ask `to` again (the drain may have just moved it).
    Drain,
}

/// How a key is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritePlan {
    /// The up replicas to write (cas: the first only); the first one's reply is the answer.
    pub targets: Vec<ServerRef>,
    /// Where the key is deleted with the write, so that no stale copy can be served later
    /// (see [`mcshm_table::coherence`]).
    pub invalidate: Vec<ServerRef>,
}

impl ServerRef {
    /// The same server in another version of the table (`servers`), found by id: `None` when
    /// it left.
    pub fn in_version(self, servers: &[Server]) -> Option<ServerRef> {
        match servers.get(self.index) {
            Some(s) if s.id == self.id => Some(self),
            _ => servers
                .iter()
                .position(|s| s.id == self.id)
                .map(|index| ServerRef { id: self.id, index }),
        }
    }
}

/// A plan made on one version of the table, carried to another: each server found again by
/// id, those that left or are down there dropped (a batch planned across table changes is
/// executed on one version: see [`Router::plan_each`]).
pub trait Reposition {
    fn reposition(&mut self, servers: &[Server]);
}

fn reposition_all(refs: &mut Vec<ServerRef>, servers: &[Server]) {
    *refs = refs
        .iter()
        .filter_map(|s| s.in_version(servers))
        .filter(|s| servers[s.index].state != State::Down)
        .collect();
}

/// A batch of keys planned on one version of the table ([`Router::plan_each`]).
#[derive(Debug)]
pub struct PlannedBatch<P> {
    /// Each key's plan (or why it has none), in the keys' order.
    pub plans: Vec<Result<P>>,
    /// The version read before planning: a change during planning counts as one since the
    /// batch ([`crate::GetMany`] asks the owners of its misses again).
    pub version: u64,
}

impl Reposition for ReadPlan {
    fn reposition(&mut self, servers: &[Server]) {
        reposition_all(&mut self.replicas, servers);
        self.fills.retain_mut(|fill| {
            match (fill.from.in_version(servers), fill.to.in_version(servers)) {
                (Some(from), Some(to)) => {
                    (fill.from, fill.to) = (from, to);
                    true
                }
                _ => false,
            }
        });
        // The owner keeps its id; when it left, the first replica stands for it.
        match self.owner.in_version(servers) {
            Some(owner) => self.owner = owner,
            None => self.owner = self.replicas.first().copied().unwrap_or(self.owner),
        }
    }
}

impl Reposition for WritePlan {
    fn reposition(&mut self, servers: &[Server]) {
        reposition_all(&mut self.targets, servers);
        reposition_all(&mut self.invalidate, servers);
    }
}

/// What became of a request to a server, as a front end reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The server answered (whatever it answered).
    Answered,
    /// Connect, timeout or I/O failure: counted against the server.
    Failed { error: &'a str, errno: i32 },
}

impl Router {
    /// The server at position `index` of the version the router routes with, by id.
    pub fn server_ref(&self, index: usize) -> ServerRef {
        ServerRef {
            id: self.snapshot().servers[index].id,
            index,
        }
    }

    /// The plan of a read of `key` at `now_ms` (ms since the Unix epoch): its replicas (down
    /// ones get their retry probe), and the fills that apply to a miss.
    pub fn plan_read(&mut self, key: &[u8], now_ms: u64) -> Result<ReadPlan> {
        let chain = self.chain(key, now_ms)?;
        let owner = chain[0];
        let mut replicas = Vec::with_capacity(chain.len());
        for &i in &chain {
            match self.is_down(i) {
                true => self.maybe_probe(i),
                false => replicas.push(self.server_ref(i)),
            }
        }
        let mut fills = Vec::new();
        if !self.is_down(owner) {
            if let Some(from) = self.warm_source_at(owner, key, now_ms) {
                fills.push(Fill {
                    from: self.server_ref(from),
                    to: self.server_ref(owner),
                    kind: FillKind::Warm,
                });
            }
            if let Some(from) = self.draining_owner(key) {
                fills.push(Fill {
                    from: self.server_ref(from),
                    to: self.server_ref(owner),
                    kind: FillKind::Drain,
                });
            }
        }
        Ok(ReadPlan {
            owner: self.server_ref(owner),
            replicas,
            fills,
        })
    }

    /// Plans every key of a batch with `plan` (say `plan_read`), at `now_ms`, on one version of the table:
    /// planning a key reads the table, so a batch could straddle two versions (keys planned
    /// before a drain began sent to the server it drains, the rest to their new owner); a batch
    /// that did is planned again, up to three times, and after that each plan is carried to the
    /// version the router now routes with ([`Reposition`]). The plans' positions are of that
    /// version, [`Router::snapshot`]. The front end runs the probes found due.
    pub fn plan_each<K: AsRef<[u8]>, P: Reposition>(
        &mut self,
        keys: &[K],
        now_ms: u64,
        mut plan: impl FnMut(&mut Router, &[u8]) -> Result<P>,
    ) -> Result<PlannedBatch<P>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.refresh(now_ms)?;
            let version = self.snapshot().version;
            let mut plans: Vec<Result<P>> = keys.iter().map(|k| plan(self, k.as_ref())).collect();
            let now = self.snapshot().version;
            if now == version || attempt == 3 {
                if now != version {
                    let servers = &self.snapshot().servers;
                    plans
                        .iter_mut()
                        .flatten()
                        .for_each(|p| p.reposition(servers));
                }
                return Ok(PlannedBatch { plans, version });
            }
        }
    }

    /// The plan of a write of `key` at `now_ms` (`only_first`: cas, the first up replica
    /// only). With no replica up, the error to answer (the owner gets its retry probe).
    pub fn plan_write(&mut self, key: &[u8], only_first: bool, now_ms: u64) -> Result<WritePlan> {
        let chain = self.chain(key, now_ms)?;
        if self.missed.is_open() {
            let missed = self.missed_by(key, &chain);
            if !missed.is_empty() {
                let snapshot = self.snapshot().clone();
                let ids: Vec<u32> = missed.iter().map(|&i| snapshot.servers[i].id).collect();
                self.missed
                    .record(snapshot.policy.prefix.as_bytes(), key, &ids);
            }
        }
        let targets = self.write_targets(&chain, only_first)?;
        let invalidate = self.invalidations(key, chain.len());
        Ok(WritePlan {
            targets: targets.into_iter().map(|i| self.server_ref(i)).collect(),
            invalidate: invalidate.into_iter().map(|i| self.server_ref(i)).collect(),
        })
    }

    /// Reports what became of a request to server `server` of the version a plan was made on:
    /// found by id in the version the router routes with (one that left the table is not
    /// reported). The one way a front end reports; it does not refresh, so the positions of
    /// a plan in progress stay valid (refresh first to report against the newest version).
    ///
    /// A failure, counted at `now_ms`, comes back as data: the front end carries out its
    /// mark-down ([`Router::carry_out`]) and tells its user.
    pub fn report(
        &mut self,
        server: ServerRef,
        outcome: Outcome<'_>,
        now_ms: u64,
    ) -> Option<Failure> {
        let ServerRef { index, .. } = server.in_version(&self.snapshot().servers)?;
        match outcome {
            Outcome::Answered => {
                self.succeeded(index);
                None
            }
            Outcome::Failed { error, errno } => Some(self.failed(index, error, errno, now_ms)),
        }
    }

    /// Whether server `i` is in its warm window at `now_ms`; then the server that owned `key`
    /// while it was away (where a miss on it is looked up).
    pub(crate) fn warm_source_at(&self, server: usize, key: &[u8], now_ms: u64) -> Option<usize> {
        let rejoined = &self.snapshot().servers[server];
        if rejoined.state != State::Up || now_ms >= rejoined.warm_until_ms {
            return None;
        }
        self.along_ring(key, 2)
            .into_iter()
            .find(|&i| i != server && !self.is_down(i))
    }
}

#[cfg(test)]
mod tests {
    //! The rules of the plans on hand-built tables: no file, no socket, no sleep.
    use super::*;
    use crate::MarkedDown;
    use mcshm_table::address::Address;
    use mcshm_table::placement::Distribution;
    use mcshm_table::table::{Failover, Policy, Server, Snapshot};

    const NOW: u64 = 1_000_000;

    fn table(states: &[State], policy: Policy) -> Snapshot {
        let servers = states
            .iter()
            .enumerate()
            .map(|(i, state)| Server {
                id: 10 + i as u32,
                live: i as u32,
                state: *state,
                ..Server::new(Address::parse(&format!("10.0.0.{}:11211", i + 1)).unwrap())
            })
            .collect::<Vec<_>>();
        Snapshot {
            domain: "t".into(),
            version: 7,
            changed_ms: 0,
            writer_pid: 0,
            writer_uid: 0,
            next_id: 10 + servers.len() as u32,
            servers,
            policy,
            fleet_revision: 0,
            buckets: None,
        }
    }

    fn router(states: &[State], policy: Policy) -> Router {
        Router::for_snapshot(table(states, policy))
    }

    fn keys() -> impl Iterator<Item = Vec<u8>> {
        (0..500).map(|n| format!("key:{n}").into_bytes())
    }

    /// A key whose owner is server `index` in `r`.
    fn key_of(r: &mut Router, index: usize) -> Vec<u8> {
        keys()
            .find(|k| r.plan_read(k, NOW).unwrap().owner.index == index)
            .expect("a key of the server")
    }

    #[test]
    fn every_distribution_routes_every_key_to_a_server_of_the_table_by_id() {
        use mcshm_table::hash::KeyHash;
        use mcshm_table::hash::PeclHash;
        for distribution in [
            Distribution::Ketama,
            Distribution::KetamaSpy,
            Distribution::KetamaUnweighted(KeyHash::OneAtATime),
            Distribution::Modula(KeyHash::Crc),
            Distribution::PeclMemcache(PeclHash::Crc32),
        ] {
            let policy = Policy {
                distribution,
                ..Policy::default()
            };
            let mut r = router(&[State::Up; 3], policy);
            let mut owners = std::collections::HashSet::new();
            for key in keys() {
                let plan = r.plan_read(&key, NOW).unwrap();
                assert_eq!(plan.replicas, [plan.owner], "{distribution:?}");
                assert_eq!(plan.owner.id, 10 + plan.owner.index as u32);
                assert!(plan.fills.is_empty());
                let write = r.plan_write(&key, false, 0).unwrap();
                assert_eq!(write.targets, [plan.owner]);
                assert!(write.invalidate.is_empty(), "nothing to invalidate");
                owners.insert(plan.owner.index);
            }
            assert_eq!(owners.len(), 3, "{distribution:?} uses every server");
        }
    }

    #[test]
    fn failover_none_keeps_a_down_owner_and_rehash_moves_its_keys() {
        let none = Policy::default();
        let mut r = router(&[State::Up, State::Down, State::Up], none);
        let key = key_of(&mut r, 1);
        let plan = r.plan_read(&key, NOW).unwrap();
        assert_eq!(
            plan.owner.index, 1,
            "none: the down server still owns its keys"
        );
        assert!(plan.replicas.is_empty(), "a miss, no other server asked");
        let refused = r.plan_write(&key, false, 0).unwrap_err();
        assert!(refused.to_string().contains("10.0.0.2"), "{refused}");

        let rehash = Policy {
            failover: Failover::Rehash,
            ..Policy::default()
        };
        let mut r = router(&[State::Up, State::Down, State::Up], rehash);
        for key in keys() {
            let plan = r.plan_read(&key, NOW).unwrap();
            assert_ne!(plan.owner.index, 1, "rehash: no key on the down server");
            let write = r.plan_write(&key, false, 0).unwrap();
            // The next server along the ring is invalidated (the double fault).
            assert_eq!(write.invalidate.len(), 1);
            assert_ne!(write.invalidate[0], write.targets[0]);
        }
    }

    #[test]
    fn replicas_are_distinct_servers_read_in_order_and_all_written() {
        let two = Policy {
            replicas: 2,
            ..Policy::default()
        };
        let mut r = router(&[State::Up; 3], two);
        for key in keys().take(50) {
            let plan = r.plan_read(&key, NOW).unwrap();
            assert_eq!(plan.replicas.len(), 2);
            assert_ne!(plan.replicas[0], plan.replicas[1]);
            assert_eq!(plan.replicas[0], plan.owner);
            assert_eq!(r.plan_write(&key, false, 0).unwrap().targets, plan.replicas);
            assert_eq!(
                r.plan_write(&key, true, 0).unwrap().targets,
                [plan.owner],
                "cas"
            );
        }
    }

    #[test]
    fn a_server_in_its_warm_window_fills_misses_from_the_interim_owner() {
        let mut t = table(&[State::Up; 3], Policy::default());
        t.servers[0].warm_until_ms = NOW + 1;
        let mut r = Router::for_snapshot(t);
        let key = key_of(&mut r, 0);
        let plan = r.plan_read(&key, NOW).unwrap();
        let [fill] = plan.fills[..] else {
            panic!("one fill: {plan:?}")
        };
        assert_eq!((fill.to.index, fill.kind), (0, FillKind::Warm));
        assert_ne!(fill.from.index, 0);
        assert!(
            r.plan_read(&key, NOW + 1).unwrap().fills.is_empty(),
            "window over"
        );
        let other = key_of(&mut r, 1);
        assert!(
            r.plan_read(&other, NOW).unwrap().fills.is_empty(),
            "not warming"
        );
    }

    #[test]
    fn a_draining_server_is_read_after_a_miss_and_invalidated_by_writes() {
        let mut r = router(&[State::Up, State::Draining, State::Up], Policy::default());
        let mut drained = 0;
        for key in keys() {
            let plan = r.plan_read(&key, NOW).unwrap();
            assert_ne!(
                plan.owner.index, 1,
                "no key is owned by the draining server"
            );
            let write = r.plan_write(&key, false, 0).unwrap();
            if let [fill] = plan.fills[..] {
                assert_eq!((fill.from.index, fill.kind), (1, FillKind::Drain));
                assert_eq!(fill.to, plan.owner);
                assert_eq!(
                    write.invalidate,
                    [fill.from],
                    "a write deletes the old copy"
                );
                drained += 1;
            } else {
                assert!(write.invalidate.is_empty());
            }
        }
        assert!(
            drained > 50,
            "about a third of the keys were the draining server's"
        );
    }

    #[test]
    fn writes_delete_their_key_from_every_server_that_may_hold_a_stray() {
        let mut t = table(&[State::Up; 4], Policy::default());
        t.servers[0].strays_since = 5;
        t.servers[2].strays_since = 6;
        t.servers[3].state = State::Down;
        t.servers[3].strays_since = 6;
        let mut r = Router::for_snapshot(t);
        for key in keys().take(100) {
            let Ok(write) = r.plan_write(&key, false, 0) else {
                continue; // owned by the down server: no write
            };
            let mut expected: Vec<usize> = [0, 2]
                .into_iter()
                .filter(|&i| i != write.targets[0].index)
                .collect();
            expected.sort_unstable();
            let mut got: Vec<usize> = write.invalidate.iter().map(|s| s.index).collect();
            got.sort_unstable();
            assert_eq!(got, expected, "marked, not a replica, not down");
        }
    }

    #[test]
    fn a_plan_carried_to_another_version_finds_its_servers_by_id() {
        let before = table(&[State::Up; 3], Policy::default());
        let at = |i: usize| ServerRef {
            id: before.servers[i].id,
            index: i,
        };
        let mut plan = ReadPlan {
            owner: at(0),
            replicas: vec![at(0), at(2)],
            fills: vec![Fill {
                from: at(1),
                to: at(2),
                kind: FillKind::Drain,
            }],
        };
        // The next version: the first server left, the others moved up one place.
        let after: Vec<Server> = before.servers[1..].to_vec();
        plan.reposition(&after);
        let moved = |i: usize| ServerRef {
            id: before.servers[i].id,
            index: i - 1,
        };
        assert_eq!(plan.replicas, [moved(2)], "the one that left is dropped");
        assert_eq!(
            plan.owner,
            moved(2),
            "its first replica stands for a gone owner"
        );
        assert_eq!((plan.fills[0].from, plan.fills[0].to), (moved(1), moved(2)));
        let mut write = WritePlan {
            targets: vec![at(0), at(1)],
            invalidate: vec![at(2)],
        };
        write.reposition(&after);
        assert_eq!(write.targets, [moved(1)]);
        assert_eq!(write.invalidate, [moved(2)]);
        assert_eq!(
            at(1).in_version(&before.servers),
            Some(at(1)),
            "same version"
        );
    }

    #[test]
    fn a_failure_at_the_limit_asks_for_a_mark_down_that_the_front_end_carries_out() {
        let mut r = router(&[State::Up; 3], Policy::default());
        let key = key_of(&mut r, 2);
        let plan = r.plan_read(&key, NOW).unwrap();
        let failed = Outcome::Failed {
            error: "connection refused",
            errno: libc::ECONNREFUSED,
        };
        let first = r.report(plan.owner, failed, NOW).expect("a failure");
        assert_eq!((first.failures, first.mark_down.as_ref()), (1, None));
        assert_eq!(r.carry_out(&first, NOW), Some(MarkedDown::No));
        assert_eq!(
            r.plan_read(&key, NOW).unwrap().replicas,
            [plan.owner],
            "one is not enough"
        );
        let second = r.report(plan.owner, failed, NOW).expect("a failure");
        let down = second
            .mark_down
            .clone()
            .expect("the limit asks for a mark-down");
        assert_eq!(down.id, plan.owner.id);
        assert!(
            down.reason.contains("connection refused"),
            "{}",
            down.reason
        );
        assert_eq!(
            r.plan_read(&key, NOW).unwrap().replicas,
            [plan.owner],
            "asked, not done: the router commits nothing itself"
        );
        // A private list cannot be written: the server is down for this process, told once.
        assert_eq!(r.carry_out(&second, NOW), Some(MarkedDown::LocallyOnly));
        assert!(
            r.plan_read(&key, NOW).unwrap().replicas.is_empty(),
            "down once carried out"
        );
        assert_eq!(r.carry_out(&second, NOW), None, "told once");
        assert_eq!(
            second.event(MarkedDown::LocallyOnly).error,
            "connection refused"
        );
        assert!(r.report(plan.owner, Outcome::Answered, NOW).is_none());
        // A report names the server by id: one unknown to the table is ignored, even when its
        // index is that of a server that is up (counted against it, two would take it off).
        let first = key_of(&mut r, 0);
        let owner = r.plan_read(&first, NOW).unwrap().owner;
        assert_eq!(owner.index, 0);
        assert!(
            r.report(ServerRef { id: 99, index: 0 }, failed, NOW)
                .is_none()
        );
        assert!(
            r.report(ServerRef { id: 99, index: 0 }, failed, NOW)
                .is_none()
        );
        assert_eq!(r.plan_read(&first, NOW).unwrap().replicas, [owner]);
    }
}
