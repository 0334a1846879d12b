//! The sequences around a plan, written once: what a front end does with each reply of a
//! fill, and how a write follows a table that changed while it was in flight. The plans say
//! *who*; these say *in what order, what wins, and when to ask again*. Both front ends (the
//! blocking `libmcshm::Client` and mcproxy's jobs) feed them the answers they got and execute
//! what they return, so the two cannot end a scenario in different states: they once did (a
//! drain that deleted the only copy after the new owner refused it; a write followed by the
//! library and only half followed by the proxy).
//!
//! Pure data in, data out: no router, no socket, no clock.

use mcshm_table::table::{Server, State};

use std::collections::BTreeMap;

use crate::plan::{Fill, FillKind, ReadPlan, ServerRef, WritePlan};

/// What the new owner answered to a fill's `add` of the copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddAnswer {
    /// `STORED`: it holds our copy.
    Stored,
    /// `NOT_STORED`: it already held a value (a newer write), which wins.
    NotStored,
    /// Anything else (`SERVER_ERROR`, say a value over its item size; a failure; it is down):
    /// it holds nothing of ours.
    Refused,
}

/// What a front end does once the new owner answered the `add`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AfterAdd {
    /// Delete the key from the fill's source: a drain whose new owner now holds a value (ours,
    /// or a newer one). Never after a refusal: the source may hold the only copy.
    pub delete_source: bool,
    /// Ask the new owner again for the answer (with the read's own verb): a newer write won,
    /// the add was refused, or the read wants what only the server knows (its cas unique, a
    /// touch). Otherwise the copy is the answer.
    pub ask_again: bool,
    /// When the new owner, asked again, misses: the copy answers (it is what the key holds),
    /// for a plain get only; a cas unique or a touch is the server's, and a copy has neither.
    pub copy_if_missed: bool,
}

impl Fill {
    /// After the source missed the fill's `mg`: whether to ask the new owner again (a drain:
    /// the drain may have just moved the key there); otherwise the fill found nothing.
    pub fn ask_after_source_miss(&self) -> bool {
        self.kind == FillKind::Drain
    }

    /// After the new owner answered the `add` of the copy; `plain` when the read is a plain
    /// get (no cas unique, no touch), which our stored copy answers as it is.
    pub fn after_add(&self, added: AddAnswer, plain: bool) -> AfterAdd {
        AfterAdd {
            delete_source: self.kind == FillKind::Drain && added != AddAnswer::Refused,
            ask_again: !(added == AddAnswer::Stored && plain),
            copy_if_missed: plain,
        }
    }
}

/// How many table changes a write follows before it stops (each round is a refresh and a few
/// requests; a table that changes faster than a write completes is left to its invalidations).
pub const MAX_FOLLOWED: u32 = 3;

/// A write that was sent on one table version, following later versions: each round names the
/// servers it must be deleted from (written where the key no longer belongs, and the new
/// version's invalidations) and, for a write that can be repeated (set, delete), the new
/// replicas it must be sent to. Servers are known by id, stable across versions.
#[derive(Clone, Debug)]
pub struct FollowChange {
    /// Ids of the servers that were sent the write.
    written: Vec<u32>,
    repeatable: bool,
    /// The version last followed.
    version: u64,
    rounds: u32,
}

/// One round of [`FollowChange`]: positions in the version it was made on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowRound {
    /// Delete the key here.
    pub delete: Vec<ServerRef>,
    /// Send the write again here.
    pub resend: Vec<ServerRef>,
}

impl FollowChange {
    /// A write made on version `version`, sent to `written` (of that version); `repeatable`
    /// when sending it again is harmless (set, delete: not add, incr, append or cas).
    pub fn new(version: u64, written: &[ServerRef], repeatable: bool) -> FollowChange {
        FollowChange {
            written: written.iter().map(|s| s.id).collect(),
            repeatable,
            version,
            rounds: 0,
        }
    }

    /// Whether version `now` is one to follow (one the write has not seen, within the bound).
    pub fn wants(&self, now: u64) -> bool {
        now != self.version && self.rounds < MAX_FOLLOWED
    }

    /// The round for version `version` of the table (`servers`), on which `plan` is the key's
    /// write plan (made with every replica, not cas's first only) and `is_down(i)` says whether
    /// the front end takes server `i` for down (the table's state, or this process's own view):
    /// `None` when there is nothing to follow (see [`FollowChange::wants`]). The write counts
    /// as sent to the round's resends.
    pub fn round(
        &mut self,
        version: u64,
        servers: &[Server],
        plan: &WritePlan,
        is_down: impl Fn(usize) -> bool,
    ) -> Option<FollowRound> {
        if !self.wants(version) {
            return None;
        }
        self.version = version;
        self.rounds += 1;
        let mut round = FollowRound::default();
        let is_target = |id: u32| plan.targets.iter().any(|t| t.id == id);
        for (index, server) in servers.iter().enumerate() {
            let at = ServerRef {
                id: server.id,
                index,
            };
            let written = self.written.contains(&server.id);
            if written && !is_target(server.id) && server.state != State::Down && !is_down(index) {
                round.delete.push(at);
            }
        }
        for &invalidate in &plan.invalidate {
            if !round.delete.contains(&invalidate) {
                round.delete.push(invalidate);
            }
        }
        if self.repeatable {
            for &target in &plan.targets {
                if !self.written.contains(&target.id) {
                    round.resend.push(target);
                    self.written.push(target.id);
                }
            }
        }
        Some(round)
    }
}

/// A multi-get (or a single get: a batch of one) as its keys' read plans say, for every front
/// end: rounds along each key's up replicas (each round asks every key not found yet of its next
/// replica that has not failed in this batch, one request per server, every server's share sent
/// before any reply is read); then, for the keys every replica missed, the fallbacks: the key
/// planned again, its owner asked again when the table changed since the batch was planned (a
/// drain that began meanwhile may have moved it), then the new plan's fills. A key whose first
/// replica failed gets no fallback: the failure is its answer (a front end reports it as its
/// protocol says), and a fill would write to that server.
#[derive(Clone, Debug)]
pub struct GetMany {
    /// The table version the batch was planned on (read before planning).
    version: u64,
    plans: Vec<ReadPlan>,
    found: Vec<bool>,
    /// Each key's next replica to ask (a position in its plan's replicas).
    next: Vec<usize>,
    /// Ids of the servers that failed during the batch.
    failed: Vec<u32>,
}

impl GetMany {
    /// The batch of `plans` (one per key, in the client's order), planned on `version` (the
    /// version read before planning: a change during planning counts as a change).
    pub fn new(version: u64, plans: Vec<ReadPlan>) -> GetMany {
        GetMany {
            version,
            found: vec![false; plans.len()],
            next: vec![0; plans.len()],
            plans,
            failed: Vec::new(),
        }
    }

    /// The next round: each server (in table order) and the keys (positions in the batch) it
    /// is asked for; `None` once every key is found or has no replica left to ask.
    pub fn next_round(&mut self) -> Option<Vec<(ServerRef, Vec<usize>)>> {
        let mut groups: BTreeMap<usize, (ServerRef, Vec<usize>)> = BTreeMap::new();
        for (n, plan) in self.plans.iter().enumerate() {
            if self.found[n] {
                continue;
            }
            let replicas = &plan.replicas;
            while replicas
                .get(self.next[n])
                .is_some_and(|s| self.failed.contains(&s.id))
            {
                self.next[n] += 1;
            }
            if let Some(&server) = replicas.get(self.next[n]) {
                self.next[n] += 1;
                groups
                    .entry(server.index)
                    .or_insert((server, Vec::new()))
                    .1
                    .push(n);
            }
        }
        (!groups.is_empty()).then(|| groups.into_values().collect())
    }

    /// Key `n` was found.
    pub fn found(&mut self, n: usize) {
        self.found[n] = true;
    }

    /// `server` failed: it is asked nothing more in this batch (its keys of this round are asked
    /// of their next replica, if any).
    pub fn failed(&mut self, server: ServerRef) {
        if !self.failed.contains(&server.id) {
            self.failed.push(server.id);
        }
    }

    /// The keys that get the fallbacks once the rounds are done, the table now at
    /// `version_now`: every key not found whose first replica did not fail, and that either has
    /// a fill in its plan or whose table changed (its plan has a fill whenever the key can need
    /// one, on the version it was made on).
    pub fn misses(&self, version_now: u64) -> Vec<usize> {
        let changed = version_now != self.version;
        (0..self.plans.len())
            .filter(|&n| !self.found[n])
            .filter(|&n| changed || !self.plans[n].fills.is_empty())
            .filter(|&n| {
                let first = self.plans[n].replicas.first();
                !first.is_some_and(|s| self.failed.contains(&s.id))
            })
            .collect()
    }

    /// For a missed key planned again as `plan` on version `version_now`: whether its owner is
    /// asked again before the fills (the table changed, and the owner is up).
    pub fn ask_owner_again(&self, plan: &ReadPlan, version_now: u64) -> bool {
        version_now != self.version && plan.replicas.first() == Some(&plan.owner)
    }
}

/// A request of [`IncrOrCreate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterAsk {
    /// incr (or decr) by the delta.
    Arith,
    /// add the initial value (with the ttl).
    Add,
}

/// What the key's server answered to a request of [`IncrOrCreate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterReply {
    /// The counter's new value (to an incr or decr).
    Number,
    /// `NOT_FOUND` (to an incr or decr).
    NotFound,
    /// `STORED` (to the add).
    Stored,
    /// `NOT_STORED` (to the add: the counter exists now).
    NotStored,
    /// Anything else: an error, passed on as it is.
    Other,
}

/// What a front end does next in an [`IncrOrCreate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterNext {
    /// Send this request.
    Ask(CounterAsk),
    /// The incr's number is the answer.
    Counted,
    /// The counter was created: the initial value is the answer.
    Created,
    /// Every add found the counter and every incr missed it (it comes and goes faster than
    /// this can count): not stored.
    GaveUp,
    /// The last reply (an error) is the answer.
    Failed,
}

/// How many times a missing counter is created before [`CounterNext::GaveUp`].
pub const MAX_ADDS: u32 = 2;

/// Increment-or-create, as libmemcached's `memcached_increment_with_initial` and the binary
/// protocol's incr with an initial value: incr; on a miss, add the initial value (never over a
/// counter another client made meanwhile); when the add finds one, incr again. The blocking
/// client (`Client::incr_or_create`, the C API's `mcshm_incr_initial`) and mcproxy (the binary
/// protocol) run this one sequence.
#[derive(Clone, Debug)]
pub struct IncrOrCreate {
    last: CounterAsk,
    adds: u32,
}

impl IncrOrCreate {
    /// The sequence, and its first request (an incr).
    pub fn start() -> (IncrOrCreate, CounterAsk) {
        let sequence = IncrOrCreate {
            last: CounterAsk::Arith,
            adds: 0,
        };
        (sequence, CounterAsk::Arith)
    }

    /// What to do after the server answered the last request with `reply`.
    pub fn next(&mut self, reply: CounterReply) -> CounterNext {
        let next = match (self.last, reply) {
            (CounterAsk::Arith, CounterReply::Number) => CounterNext::Counted,
            (CounterAsk::Arith, CounterReply::NotFound) if self.adds < MAX_ADDS => {
                self.adds += 1;
                CounterNext::Ask(CounterAsk::Add)
            }
            (CounterAsk::Arith, CounterReply::NotFound) => CounterNext::GaveUp,
            (CounterAsk::Add, CounterReply::Stored) => CounterNext::Created,
            (CounterAsk::Add, CounterReply::NotStored) => CounterNext::Ask(CounterAsk::Arith),
            _ => CounterNext::Failed,
        };
        if let CounterNext::Ask(ask) = next {
            self.last = ask;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    //! The sequences on hand-made answers and tables: no server, no file.
    use super::*;
    use mcshm_table::address::Address;

    fn at(id: u32, index: usize) -> ServerRef {
        ServerRef { id, index }
    }

    fn fill(kind: FillKind) -> Fill {
        Fill {
            from: at(1, 0),
            to: at(2, 1),
            kind,
        }
    }

    #[test]
    fn a_drain_deletes_its_source_only_when_the_new_owner_holds_a_value() {
        let drain = fill(FillKind::Drain);
        assert!(drain.after_add(AddAnswer::Stored, true).delete_source);
        assert!(
            drain.after_add(AddAnswer::NotStored, true).delete_source,
            "a newer value is there: the old one may go"
        );
        assert!(
            !drain.after_add(AddAnswer::Refused, true).delete_source,
            "refused (SERVER_ERROR): the source holds the only copy"
        );
        let warm = fill(FillKind::Warm);
        for added in [AddAnswer::Stored, AddAnswer::NotStored, AddAnswer::Refused] {
            assert!(
                !warm.after_add(added, true).delete_source,
                "warm-up keeps it"
            );
        }
    }

    #[test]
    fn only_a_stored_copy_answers_a_plain_get_without_asking_again() {
        let drain = fill(FillKind::Drain);
        assert!(!drain.after_add(AddAnswer::Stored, true).ask_again);
        assert!(
            drain.after_add(AddAnswer::Stored, false).ask_again,
            "a cas unique or a touch is the server's"
        );
        assert!(
            drain.after_add(AddAnswer::NotStored, true).ask_again,
            "a newer write won"
        );
        assert!(drain.after_add(AddAnswer::Refused, true).ask_again);
        let refused = drain.after_add(AddAnswer::Refused, true);
        assert!(refused.copy_if_missed, "the source's value is the key's");
        let gets = drain.after_add(AddAnswer::Refused, false);
        assert!(!gets.copy_if_missed, "a copy has no cas unique");
    }

    fn read_plan(replicas: &[ServerRef], fills: Vec<Fill>) -> ReadPlan {
        ReadPlan {
            owner: replicas.first().copied().unwrap_or(at(99, 9)),
            replicas: replicas.to_vec(),
            fills,
        }
    }

    #[test]
    fn a_multi_get_asks_each_missing_key_of_its_next_replica_round_by_round() {
        let (a, b, c) = (at(10, 0), at(11, 1), at(12, 2));
        let plans = vec![
            read_plan(&[a, b], vec![]),
            read_plan(&[b, c], vec![]),
            read_plan(&[a, c], vec![]),
            read_plan(&[], vec![]),
        ];
        let mut batch = GetMany::new(7, plans);
        assert_eq!(batch.next_round().unwrap(), [(a, vec![0, 2]), (b, vec![1])]);
        batch.found(0);
        batch.found(1);
        assert_eq!(
            batch.next_round().unwrap(),
            [(c, vec![2])],
            "key 2 on its second replica"
        );
        assert_eq!(batch.next_round(), None, "no third replica");
    }

    #[test]
    fn a_server_that_failed_is_asked_nothing_more_in_the_batch() {
        let (a, b, c) = (at(10, 0), at(11, 1), at(12, 2));
        let plans = vec![read_plan(&[a, b], vec![]), read_plan(&[c, b, a], vec![])];
        let mut batch = GetMany::new(7, plans);
        assert_eq!(batch.next_round().unwrap(), [(a, vec![0]), (c, vec![1])]);
        batch.failed(b);
        // Key 0 asks b next, which failed meanwhile: nothing left for it; key 1 skips b for a.
        assert_eq!(batch.next_round().unwrap(), [(a, vec![1])]);
        batch.failed(a);
        assert_eq!(batch.next_round(), None);
    }

    #[test]
    fn misses_fall_back_only_when_something_may_have_them_and_their_first_did_not_fail() {
        let (a, b) = (at(10, 0), at(11, 1));
        let plans = vec![
            read_plan(&[a], vec![]),
            read_plan(&[b], vec![]),
            read_plan(&[a], vec![]),
        ];
        let mut batch = GetMany::new(7, plans);
        batch.next_round();
        batch.found(2);
        batch.failed(b);
        assert!(
            batch.misses(7).is_empty(),
            "same table, no fill in the plans"
        );
        assert_eq!(batch.misses(8), [0], "key 1's server failed: its answer");
        let drained = read_plan(&[a], vec![fill(FillKind::Drain)]);
        let batch = GetMany::new(7, vec![drained.clone(), read_plan(&[a], vec![])]);
        assert_eq!(batch.misses(7), [0], "only the key whose plan has a fill");
        assert!(batch.ask_owner_again(&drained, 8), "changed, owner up");
        assert!(!batch.ask_owner_again(&drained, 7), "unchanged");
        let owner_down = ReadPlan {
            owner: at(12, 2),
            replicas: vec![a],
            fills: vec![],
        };
        assert!(!batch.ask_owner_again(&owner_down, 8), "the owner is down");
    }

    /// Runs an [`IncrOrCreate`] against the replies given, in order: the requests it made and
    /// how it ended.
    fn counter(replies: &[CounterReply]) -> (Vec<CounterAsk>, CounterNext) {
        let (mut sequence, first) = IncrOrCreate::start();
        let mut asked = vec![first];
        for &reply in replies {
            match sequence.next(reply) {
                CounterNext::Ask(ask) => asked.push(ask),
                end => return (asked, end),
            }
        }
        panic!("no end after {replies:?}: asked {asked:?}");
    }

    #[test]
    fn a_counter_is_counted_created_or_recounted_when_another_client_made_it() {
        use CounterAsk::{Add, Arith};
        use CounterReply::*;
        assert_eq!(counter(&[Number]), (vec![Arith], CounterNext::Counted));
        assert_eq!(
            counter(&[NotFound, Stored]),
            (vec![Arith, Add], CounterNext::Created)
        );
        assert_eq!(
            counter(&[NotFound, NotStored, Number]),
            (vec![Arith, Add, Arith], CounterNext::Counted),
            "another client created it between our miss and our add"
        );
        assert_eq!(
            counter(&[NotFound, NotStored, NotFound, NotStored, NotFound]),
            (vec![Arith, Add, Arith, Add, Arith], CounterNext::GaveUp),
            "bounded: at most two adds"
        );
        assert_eq!(counter(&[Other]), (vec![Arith], CounterNext::Failed));
        assert_eq!(
            counter(&[NotFound, Other]),
            (vec![Arith, Add], CounterNext::Failed)
        );
    }

    #[test]
    fn a_source_miss_asks_again_only_for_a_drain() {
        assert!(fill(FillKind::Drain).ask_after_source_miss());
        assert!(!fill(FillKind::Warm).ask_after_source_miss());
    }

    fn servers(states: &[State]) -> Vec<Server> {
        states
            .iter()
            .enumerate()
            .map(|(i, &state)| Server {
                id: 10 + i as u32,
                state,
                ..Server::new(Address::parse(&format!("10.0.0.{}:11211", i + 1)).unwrap())
            })
            .collect()
    }

    /// No server taken for down beyond the table's state.
    fn up(_: usize) -> bool {
        false
    }

    fn plan(targets: &[ServerRef], invalidate: &[ServerRef]) -> WritePlan {
        WritePlan {
            targets: targets.to_vec(),
            invalidate: invalidate.to_vec(),
        }
    }

    #[test]
    fn an_unchanged_table_is_not_followed() {
        let mut follow = FollowChange::new(7, &[at(10, 0)], true);
        let table = servers(&[State::Up, State::Up]);
        assert!(!follow.wants(7));
        assert_eq!(follow.round(7, &table, &plan(&[at(10, 0)], &[]), up), None);
    }

    #[test]
    fn a_set_moves_to_the_new_owner_and_leaves_the_old_one() {
        // Written to 10; in version 8 the key belongs to 11.
        let mut follow = FollowChange::new(7, &[at(10, 0)], true);
        let table = servers(&[State::Up, State::Up]);
        let round = follow
            .round(8, &table, &plan(&[at(11, 1)], &[]), up)
            .unwrap();
        assert_eq!(round.delete, [at(10, 0)]);
        assert_eq!(round.resend, [at(11, 1)]);
        // Version 9, same placement: 11 was written in round one, so nothing is sent twice.
        let round = follow
            .round(9, &table, &plan(&[at(11, 1)], &[]), up)
            .unwrap();
        assert_eq!(round.delete, [at(10, 0)], "still not its place");
        assert!(round.resend.is_empty());
    }

    #[test]
    fn an_add_is_not_sent_again_but_is_still_deleted_where_it_does_not_belong() {
        let mut follow = FollowChange::new(7, &[at(10, 0)], false);
        let table = servers(&[State::Up, State::Up]);
        let round = follow
            .round(8, &table, &plan(&[at(11, 1)], &[]), up)
            .unwrap();
        assert_eq!(round.delete, [at(10, 0)]);
        assert!(round.resend.is_empty(), "add, incr, append: not repeatable");
    }

    #[test]
    fn a_down_server_is_not_asked_and_invalidations_are_added_once() {
        let mut follow = FollowChange::new(7, &[at(10, 0), at(12, 2)], true);
        // 10 went down (its keys moved to 11); 12 is an invalidation of the new version.
        let table = servers(&[State::Down, State::Up, State::Up]);
        let round = follow
            .round(8, &table, &plan(&[at(11, 1)], &[at(12, 2)]), up)
            .unwrap();
        assert_eq!(round.delete, [at(12, 2)], "10 is down; 12 named once");
        assert_eq!(round.resend, [at(11, 1)]);
    }

    #[test]
    fn a_server_this_process_takes_for_down_is_not_asked() {
        let mut follow = FollowChange::new(7, &[at(10, 0)], true);
        let table = servers(&[State::Up, State::Up]);
        let locally_down = |i: usize| i == 0;
        let round = follow
            .round(8, &table, &plan(&[at(11, 1)], &[]), locally_down)
            .unwrap();
        assert!(round.delete.is_empty());
        assert_eq!(round.resend, [at(11, 1)]);
    }

    #[test]
    fn servers_are_found_by_id_when_positions_move() {
        // Written to id 11 at index 1; in version 8 a server before it left: id 11 is index 0.
        let mut follow = FollowChange::new(7, &[at(11, 1)], true);
        let mut table = servers(&[State::Up, State::Up, State::Up]);
        table.remove(0);
        let round = follow
            .round(8, &table, &plan(&[at(12, 1)], &[]), up)
            .unwrap();
        assert_eq!(round.delete, [at(11, 0)]);
        assert_eq!(round.resend, [at(12, 1)]);
    }

    #[test]
    fn at_most_three_changes_are_followed() {
        let mut follow = FollowChange::new(1, &[at(10, 0)], true);
        let table = servers(&[State::Up]);
        let rounds = (2..10)
            .filter_map(|v| follow.round(v, &table, &plan(&[at(10, 0)], &[]), up))
            .count();
        assert_eq!(rounds as u32, MAX_FOLLOWED);
        assert!(!follow.wants(11));
    }
}
