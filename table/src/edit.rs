//! The changes `mcadmin` makes to a server list, as pure functions run inside
//! [`Registry::transact`](crate::Registry::transact). Each either applies completely or fails
//! with nothing changed (the transaction then publishes nothing).

use std::collections::{HashMap, HashSet};

use crate::address::{Address, Identity};
use crate::error::{Error, Result};
use crate::placement::Distribution;
use crate::prefix::KeyPrefix;
use crate::processes::host_name;
use crate::table::{CommitInfo, Failover, Fence, Policy, Rejoin, Server, State, Table, fit_reason};

/// Appends `new` servers (order kept: it is part of how clients hash). A server already present
/// is an error, or skipped with `if_missing`; one given twice in `new` is an error naming it
/// (skipped with `if_missing`). `new` servers get `actor` as their state change. Linear in the
/// number of servers (a hash set of identities).
pub fn add(
    servers: &mut Vec<Server>,
    new: &[Server],
    if_missing: bool,
    actor: CommitInfo,
    domain: &str,
) -> Result<()> {
    let mut added = Vec::with_capacity(new.len());
    {
        let present: HashSet<Identity<'_>> = servers.iter().map(|s| s.address.identity()).collect();
        let mut given: HashSet<Identity<'_>> = HashSet::with_capacity(new.len());
        for server in new {
            let identity = server.address.identity();
            if present.contains(&identity) {
                if if_missing {
                    continue;
                }
                return Err(Error::ServerExists {
                    server: server.address.to_string(),
                    domain: domain.to_string(),
                });
            }
            if !given.insert(identity) {
                if if_missing {
                    continue;
                }
                return Err(Error::invalid(
                    "server",
                    &server.address.to_string(),
                    "listed twice",
                ));
            }
            let mut server = server.clone();
            stamp(&mut server, actor);
            server.id = 0; // the writer assigns it
            added.push(server);
        }
    }
    servers.extend(added);
    Ok(())
}

/// Removes servers; an absent one is an error, or skipped with `if_present`. Linear in the
/// number of servers (and of a bucket map's cells).
/// A `vbucket` domain's map is renumbered; a server it names is refused (move its buckets
/// first).
pub fn delete(
    table: &mut Table,
    addresses: &[Address],
    if_present: bool,
    domain: &str,
) -> Result<()> {
    let gone: HashSet<Identity<'_>> = addresses.iter().map(Address::identity).collect();
    {
        let present: HashSet<Identity<'_>> =
            table.servers.iter().map(|s| s.address.identity()).collect();
        if !if_present
            && let Some(absent) = addresses.iter().find(|a| !present.contains(&a.identity()))
        {
            return Err(missing(absent, domain));
        }
    }
    table.remove_servers(|s| gone.contains(&s.address.identity()))
}

/// A change of one server's state: every path that changes a state (mcadmin's verbs, `load`,
/// a client's mark-down and retry probe, `watch`, drain, settle, the fleet agent) goes through
/// [`transition`], so the rules of each (who may bring a held server back, what a flush clears)
/// are written once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition<'a> {
    /// An operator's down (`mcadmin down`): held until an operator's up, unless `retry` (a down
    /// as after failures, retried automatically). From up or draining.
    OperatorDown { reason: &'a str, retry: bool },
    /// Marked down after failures (clients, `watch`): retried automatically. From up only, so
    /// that several processes doing it at once make one change.
    FailureDown { reason: &'a str },
    /// Back up from down (see [`Rejoining`]).
    Rejoin(Rejoining<'a>),
    /// Starts draining (`mcadmin drain`). From up.
    StartDrain { reason: &'a str },
    /// An operator's up of a draining server: the drain is cancelled, its keys stay.
    CancelDrain { by: &'a str },
    /// `mcadmin settle` begins a sweep of a marked server: from this version on, a change that
    /// makes it lose keys stamps its mark anew (see [`Server::sweeping`]). From marked, not
    /// already sweeping.
    StartSweep,
    /// `mcadmin settle` swept it of strays from a sweep that began at version `at`: its mark is
    /// cleared, unless a later version marked it again.
    Swept { at: u64 },
}

/// Applies `change` to the server with `id`; `false` (nothing changed) when it is not in the
/// table or not in a state the change starts from.
pub fn transition(
    servers: &mut [Server],
    id: u32,
    change: Transition<'_>,
    actor: CommitInfo,
) -> bool {
    match servers.iter_mut().find(|s| s.id == id) {
        Some(server) => apply(server, change, actor),
        None => false,
    }
}

/// Applies `change` to `server` (a fleet table's servers have no ids: they are found by
/// address); `false` when it is not in a state the change starts from.
pub fn apply(server: &mut Server, change: Transition<'_>, actor: CommitInfo) -> bool {
    let (state, reason) = match change {
        Transition::OperatorDown { reason, retry } => {
            server.held = !retry;
            (State::Down, reason)
        }
        Transition::FailureDown { reason } if server.state == State::Up => {
            server.held = false;
            (State::Down, reason)
        }
        Transition::Rejoin(r) if server.may_rejoin(r.operator) => {
            server.held = false;
            server.warm_until_ms = r.warm_until_ms;
            if r.flushed {
                // Emptied: no stray is left, and a sweep under way has nothing to clear (a
                // mark set after this one is newer than the sweep, which then keeps it).
                server.strays_since = 0;
                server.sweeping = false;
            }
            (State::Up, r.reason)
        }
        Transition::StartDrain { reason } if server.state == State::Up => (State::Draining, reason),
        Transition::CancelDrain { by } if server.state == State::Draining => {
            server.state = State::Up;
            server.reason = format!("drain cancelled ({by})");
            return true;
        }
        Transition::StartSweep if server.strays_since != 0 && !server.sweeping => {
            server.sweeping = true;
            return true;
        }
        Transition::Swept { at } if server.strays_since != 0 && server.strays_since <= at => {
            // The flag goes with the mark only: another sweep of the server may still be
            // under way while the mark stays.
            server.strays_since = 0;
            server.sweeping = false;
            return true;
        }
        _ => return false,
    };
    if server.state != state {
        server.state = state;
        stamp(server, actor);
    }
    // Fitted here, whoever wrote it: a reason made of an error's text (a TLS failure, a
    // server's own error line) can be longer than the table's field.
    server.reason = fit_reason("", reason, "");
    true
}

/// Whether `failures` consecutive failures take a server in `state` down at a failure limit
/// of `limit`: the one rule of every process that counts them (each client's router, and
/// `mcadmin watch` with its failed probes). Only an up server goes down after failures.
pub fn down_after(failures: u32, limit: u32, state: State) -> bool {
    state == State::Up && failures >= limit.max(1)
}

/// The reason of a down after failures, for [`Transition::FailureDown`]: how many `counted`
/// (`consecutive failures`, `failed probes`), the last error's text (cut to fit the table's
/// field, its control characters made spaces), and who saw it (`actor`'s pid and this host,
/// kept whole: a fleet shares the table).
pub fn failure_reason(failures: u32, counted: &str, last_error: &str, actor: CommitInfo) -> String {
    fit_reason(
        &format!("{failures} {counted}, last: "),
        last_error,
        &format!(" (pid {} on {})", actor.pid, host_name()),
    )
}

/// An operator's down of servers by address (`mcadmin down`, fleet verbs): see
/// [`Transition::OperatorDown`]. A server not in the table is an error naming it.
pub fn set_down(
    servers: &mut [Server],
    addresses: &[Address],
    reason: &str,
    retry: bool,
    actor: CommitInfo,
    domain: &str,
) -> Result<()> {
    for address in addresses {
        let server = find_mut(servers, address, domain)?;
        apply(server, Transition::OperatorDown { reason, retry }, actor);
    }
    Ok(())
}

/// How a down server comes back ([`Transition::Rejoin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejoining<'a> {
    pub reason: &'a str,
    /// Until when misses are filled from the interim owner (0: no warm-up).
    pub warm_until_ms: u64,
    /// It was flushed just before (not `trust`, not `--no-flush`): it holds no strays.
    pub flushed: bool,
    /// An operator brings it back (`mcadmin up`): a held server comes up too.
    pub operator: bool,
}

/// Changes the weight and/or retry interval of one server.
pub fn modify(
    servers: &mut [Server],
    address: &Address,
    weight: Option<u16>,
    retry_interval: Option<i32>,
    domain: &str,
) -> Result<()> {
    let server = find_mut(servers, address, domain)?;
    if let Some(weight) = weight {
        server.weight = weight;
    }
    if let Some(retry) = retry_interval {
        server.retry_interval = retry;
    }
    Ok(())
}

/// The list `mcadmin load` publishes: `loaded` in its order; a server whose state is the same as
/// in `current` keeps its since/by fields, the others get `actor`.
pub fn merge_loaded(current: &[Server], loaded: &[Server], actor: CommitInfo) -> Vec<Server> {
    let by_identity: HashMap<_, &Server> =
        current.iter().map(|s| (s.address.identity(), s)).collect();
    loaded
        .iter()
        .map(|server| {
            let mut server = server.clone();
            let old = by_identity.get(&server.address.identity());
            if let Some(old) = old {
                // The same server: keep its id (and so its failure counter).
                server.id = old.id;
                server.live = old.live;
            }
            if let Some(old) = old {
                // Whether it may hold strays is a fact about the server, not the list.
                server.strays_since = server.strays_since.max(old.strays_since);
                server.sweeping |= old.sweeping;
            }
            match old.filter(|old| old.state == server.state) {
                Some(old) => {
                    server.since_ms = old.since_ms;
                    server.changed_by_pid = old.changed_by_pid;
                    server.changed_by_uid = old.changed_by_uid;
                }
                None => stamp(&mut server, actor),
            }
            server
        })
        .collect()
}

fn stamp(server: &mut Server, actor: CommitInfo) {
    server.since_ms = actor.changed_ms;
    server.changed_by_pid = actor.pid;
    server.changed_by_uid = actor.uid;
}

/// The server of `servers` with this address, or the error that names it in `domain` (found
/// by address: a fleet table's servers have no ids).
pub fn find_mut<'a>(
    servers: &'a mut [Server],
    address: &Address,
    domain: &str,
) -> Result<&'a mut Server> {
    servers
        .iter_mut()
        .find(|s| s.address.same_server(address))
        .ok_or_else(|| missing(address, domain))
}

fn missing(address: &Address, domain: &str) -> Error {
    Error::NoServer {
        server: address.to_string(),
        domain: domain.to_string(),
    }
}

/// After a change of the distribution: a table that became `vbucket` gets an even map of
/// [`DEFAULT_BUCKETS`](crate::placement::buckets::DEFAULT_BUCKETS) buckets over its up servers
/// (replica columns: the policy's replicas less one, at most 4); one that is no longer `vbucket`
/// loses its map.
pub fn fit_buckets(table: &mut Table) {
    use crate::placement::buckets::{BucketMap, DEFAULT_BUCKETS, MAX_REPLICAS, Shape};
    match (table.policy.distribution.has_buckets(), &table.buckets) {
        (false, Some(_)) => table.buckets = None,
        (true, None) => {
            let replicas = usize::from(table.policy.replicas.max(1) - 1).min(MAX_REPLICAS);
            let shape = Shape::new(DEFAULT_BUCKETS, replicas).expect("a valid shape");
            let up = crate::table::routed(&table.servers, Failover::Rehash);
            table.buckets = Some(std::sync::Arc::new(BucketMap::balanced(shape, &up)));
        }
        _ => {}
    }
}

/// The policy fields a `policy` command sets; the others stay as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyChange {
    pub failover: Option<Failover>,
    pub failure_limit: Option<u8>,
    pub rejoin: Option<Rejoin>,
    pub replicas: Option<u8>,
    pub warm_window_s: Option<u32>,
    pub distribution: Option<Distribution>,
    pub prefix: Option<KeyPrefix>,
    pub fence: Option<Fence>,
}

impl PolicyChange {
    /// Whether it sets nothing (`policy` then shows the policy).
    pub fn is_empty(&self) -> bool {
        *self == PolicyChange::default()
    }

    /// Sets the fields it names in `policy`.
    pub fn apply(&self, policy: &mut Policy) {
        let p = policy;
        p.failover = self.failover.unwrap_or(p.failover);
        p.failure_limit = self.failure_limit.unwrap_or(p.failure_limit);
        p.rejoin = self.rejoin.unwrap_or(p.rejoin);
        p.replicas = self.replicas.unwrap_or(p.replicas);
        p.warm_window_s = self.warm_window_s.unwrap_or(p.warm_window_s);
        p.distribution = self.distribution.unwrap_or(p.distribution);
        p.prefix = self.prefix.unwrap_or(p.prefix);
        p.fence = self.fence.unwrap_or(p.fence);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTOR: CommitInfo = CommitInfo {
        changed_ms: 5,
        pid: 6,
        uid: 7,
    };

    fn up() -> Server {
        Server {
            id: 1,
            strays_since: 3,
            ..Server::new(Address::parse("a:1").unwrap())
        }
    }

    fn rejoin(operator: bool, flushed: bool) -> Transition<'static> {
        Transition::Rejoin(Rejoining {
            reason: "back",
            warm_until_ms: 9,
            flushed,
            operator,
        })
    }

    #[test]
    fn an_operators_down_is_held_until_an_operators_up() {
        let mut s = up();
        let down = Transition::OperatorDown {
            reason: "maintenance",
            retry: false,
        };
        s.sweeping = true;
        assert!(apply(&mut s, down, ACTOR));
        assert!(s.is_held_down());
        assert_eq!((s.since_ms, s.changed_by_pid), (5, 6));
        assert!(
            !apply(&mut s, rejoin(false, true), ACTOR),
            "a probe leaves it down"
        );
        assert!(
            apply(&mut s, rejoin(true, true), ACTOR),
            "an operator brings it up"
        );
        assert_eq!((s.state, s.held, s.warm_until_ms), (State::Up, false, 9));
        assert_eq!(s.strays_since, 0, "flushed: no strays");
        assert!(!s.sweeping, "flushed: nothing left to sweep");
    }

    #[test]
    fn a_failure_down_is_retried_and_only_an_up_server_fails() {
        let mut s = up();
        let failed = Transition::FailureDown {
            reason: "2 failures",
        };
        assert!(apply(&mut s, failed, ACTOR));
        assert!(!s.held);
        assert!(
            !apply(&mut s, failed, ACTOR),
            "a second process's mark-down: no change"
        );
        assert!(
            apply(&mut s, rejoin(false, false), ACTOR),
            "the retry probe"
        );
        assert_eq!(s.strays_since, 3, "not flushed (trust): its mark stays");
    }

    #[test]
    fn any_reason_is_fitted_to_the_tables_field() {
        let mut s = up();
        let long = format!("{}\r\nend", "é".repeat(200));
        let down = Transition::OperatorDown {
            reason: &long,
            retry: true,
        };
        assert!(apply(&mut s, down, ACTOR));
        assert!(
            s.reason.len() <= crate::table::MAX_REASON_LEN,
            "{}",
            s.reason.len()
        );
        assert!(s.reason.starts_with("éé"), "cut on a character boundary");
        assert!(crate::table::check_reason(&s.reason).is_ok());
        let short = Transition::StartDrain { reason: "as given" };
        apply(&mut up(), short, ACTOR);
        let mut d = up();
        apply(&mut d, short, ACTOR);
        assert_eq!(d.reason, "as given", "a reason that fits is kept as it is");
    }

    #[test]
    fn a_failure_reason_keeps_who_and_cuts_the_error() {
        let error = format!("TLS: {}", "x".repeat(300));
        let reason = failure_reason(3, "failed probes (mcadmin watch)", &error, ACTOR);
        assert!(crate::table::check_reason(&reason).is_ok(), "{reason}");
        assert!(reason.starts_with("3 failed probes (mcadmin watch), last: TLS: xxx"));
        let tail = format!(" (pid 6 on {})", host_name());
        assert!(reason.ends_with(&tail), "{reason}");
        let short = failure_reason(2, "consecutive failures", "refused", ACTOR);
        assert_eq!(
            short,
            format!("2 consecutive failures, last: refused{tail}")
        );
    }

    #[test]
    fn only_an_up_server_goes_down_and_only_at_the_limit() {
        assert!(!down_after(1, 2, State::Up));
        assert!(down_after(2, 2, State::Up));
        assert!(down_after(3, 2, State::Up), "past the limit too");
        assert!(!down_after(5, 2, State::Down), "already down: no change");
        assert!(
            !down_after(5, 2, State::Draining),
            "a drain is the operator's"
        );
        assert!(down_after(1, 0, State::Up), "a limit of 0 counts as 1");
    }

    #[test]
    fn drains_start_from_up_and_cancel_back_to_up() {
        let mut s = up();
        assert!(!apply(&mut s, Transition::CancelDrain { by: "x" }, ACTOR));
        assert!(apply(&mut s, Transition::StartDrain { reason: "d" }, ACTOR));
        assert_eq!(s.state, State::Draining);
        assert!(!apply(
            &mut s,
            Transition::StartDrain { reason: "d" },
            ACTOR
        ));
        assert!(apply(&mut s, Transition::CancelDrain { by: "x" }, ACTOR));
        assert_eq!(s.state, State::Up);
    }

    #[test]
    fn a_sweep_clears_only_marks_it_began_after() {
        let mut s = up();
        assert!(
            !apply(&mut s, Transition::Swept { at: 2 }, ACTOR),
            "marked at 3"
        );
        assert!(apply(&mut s, Transition::Swept { at: 3 }, ACTOR));
        assert_eq!(s.strays_since, 0);
        assert!(
            !apply(&mut s, Transition::Swept { at: 9 }, ACTOR),
            "nothing to clear"
        );
    }

    #[test]
    fn a_sweep_is_said_in_the_table_of_a_marked_server_and_ends_with_its_mark() {
        let mut s = up();
        assert!(apply(&mut s, Transition::StartSweep, ACTOR));
        assert!(s.sweeping);
        assert!(!apply(&mut s, Transition::StartSweep, ACTOR), "already");
        assert!(!apply(&mut s, Transition::Swept { at: 2 }, ACTOR));
        assert!(s.sweeping, "the mark stays, and so does the sweep's flag");
        assert!(apply(&mut s, Transition::Swept { at: 3 }, ACTOR));
        assert_eq!((s.strays_since, s.sweeping), (0, false));
        assert!(
            !apply(&mut s, Transition::StartSweep, ACTOR),
            "unmarked: a new mark is stamped anyway"
        );
    }

    #[test]
    fn a_policy_change_sets_what_it_names_and_keeps_the_rest() {
        assert!(PolicyChange::default().is_empty());
        let before = Policy::default();
        let change = PolicyChange {
            failover: Some(Failover::Rehash),
            replicas: Some(2),
            ..PolicyChange::default()
        };
        assert!(!change.is_empty());
        let mut after = before;
        change.apply(&mut after);
        assert_eq!(after.failover, Failover::Rehash);
        assert_eq!(after.replicas, 2);
        let kept = Policy {
            failover: before.failover,
            replicas: before.replicas,
            ..after
        };
        assert_eq!(kept, before, "nothing else changed");
    }
}
