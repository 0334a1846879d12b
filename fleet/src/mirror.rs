//! How a host's table and the fleet's meet: the three-way merge of the agent.
//!
//! The local table records the fleet revision it mirrors (`Table::fleet_revision`). The fleet
//! table at that revision is the *base*. What differs between the base and the local table are
//! this host's own marks: a server a client marked down, one a retry probe or `mcadmin watch`
//! brought back (after its flush), one being drained or removed after its drain. The agent
//! pushes each mark onto the newest fleet table unless the fleet changed that server's state
//! since the base (a newer decision supersedes it), and when it mirrors a newer fleet table it
//! keeps the marks not pushed yet on the same terms. The result: no local mark is lost while
//! etcd is away, and no host undoes a newer fleet decision with an older local one.

use std::collections::HashMap;

use mcshm_table::table::{CommitInfo, Server, State, Table};
use mcshm_table::{Address, edit};

/// One state change this host made since the base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub address: Address,
    /// The state the base had.
    pub from: State,
    /// The state now; `None`: removed after a drain.
    pub to: Option<State>,
    pub reason: String,
    pub since_ms: u64,
    pub warm_until_ms: u64,
    /// Down by an operator (see [`Server::held`]).
    pub held: bool,
}

impl Mark {
    pub fn describe(&self) -> String {
        format!(
            "{} {} -> {}",
            self.address,
            self.from,
            self.to.map_or("removed", State::as_str)
        )
    }
}

/// The marks that turn `base` into `local`: state changes of servers in both, and removals of
/// servers that were draining (the end of a drain). Other differences (an edit made on this
/// host without `--etcd`) are not marks: the fleet's list wins.
pub fn local_marks(base: &Table, local: &Table) -> Vec<Mark> {
    let here: HashMap<_, &Server> = local
        .servers
        .iter()
        .map(|s| (s.address.identity(), s))
        .collect();
    base.servers
        .iter()
        .filter_map(|b| match here.get(&b.address.identity()) {
            Some(l) if l.state != b.state || l.held != b.held => Some(Mark {
                address: b.address.clone(),
                from: b.state,
                to: Some(l.state),
                reason: l.reason.clone(),
                since_ms: l.since_ms,
                warm_until_ms: l.warm_until_ms,
                held: l.held,
            }),
            None if b.state == State::Draining => Some(Mark {
                address: b.address.clone(),
                from: b.state,
                to: None,
                reason: String::new(),
                since_ms: 0,
                warm_until_ms: 0,
                held: false,
            }),
            _ => None,
        })
        .collect()
}

/// Marks that keep `local`'s newer state over a push of ours that lost its answer and landed
/// later in `fleet`: for each server of `in_doubt` whose fleet state is the one we pushed and
/// whose local state has changed since, a mark from the fleet's state to the local one.
pub fn superseding(in_doubt: &[Mark], fleet: &Table, local: &Table) -> Vec<Mark> {
    let find = |t: &'_ Table, a: &Address| -> Option<Server> {
        t.servers.iter().find(|s| s.address.same_server(a)).cloned()
    };
    in_doubt
        .iter()
        .filter_map(|m| {
            let (f, l) = (find(fleet, &m.address)?, find(local, &m.address)?);
            let landed = Some(f.state) == m.to && f.since_ms == m.since_ms;
            let moved_on = (l.state, l.held, l.since_ms) != (f.state, f.held, f.since_ms);
            (landed && moved_on).then(|| Mark {
                address: m.address.clone(),
                from: f.state,
                to: Some(l.state),
                reason: l.reason.clone(),
                since_ms: l.since_ms,
                warm_until_ms: l.warm_until_ms,
                held: l.held,
            })
        })
        .collect()
}

/// Applies `marks` to `onto` where the server's state there is still the one the mark started
/// from (nobody decided otherwise since); returns how many applied.
pub fn apply_marks(onto: &mut Table, marks: &[Mark]) -> usize {
    let mut applied = 0;
    for mark in marks {
        let Some(i) = onto
            .servers
            .iter()
            .position(|s| s.address.same_server(&mark.address))
        else {
            continue;
        };
        let server = &mut onto.servers[i];
        if server.state != mark.from {
            continue;
        }
        match mark.to {
            Some(state) => {
                server.state = state;
                server.reason = mark.reason.clone();
                server.since_ms = mark.since_ms;
                server.warm_until_ms = mark.warm_until_ms;
                server.held = mark.held;
            }
            None => {
                // A drain's end; a bucket map naming the server keeps it (its buckets move
                // first).
                let id = &mark.address;
                if onto.remove_servers(|s| s.address.same_server(id)).is_err() {
                    continue;
                }
            }
        }
        applied += 1;
    }
    applied
}

/// Makes `local` the fleet's table at `revision` (servers in the fleet's order, its policy),
/// keeping each server's local id and failure record, then re-applies `marks` not superseded.
/// Returns how many marks were kept (still to be pushed).
pub fn mirror(
    local: &mut Table,
    fleet: &Table,
    revision: u64,
    marks: &[Mark],
    actor: CommitInfo,
) -> usize {
    let mut servers = edit::merge_loaded(&local.servers, &fleet.servers, actor);
    for (server, from) in servers.iter_mut().zip(&fleet.servers) {
        if from.since_ms != 0 {
            server.since_ms = from.since_ms;
        }
    }
    local.servers = servers;
    local.policy = fleet.policy;
    local.buckets = fleet.buckets.clone();
    local.fleet_revision = revision;
    apply_marks(local, marks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(addr: &str, state: State) -> Server {
        Server {
            state,
            ..Server::new(Address::parse(addr).unwrap())
        }
    }

    fn table(servers: &[(&str, State)]) -> Table {
        Table {
            servers: servers.iter().map(|(a, s)| server(a, *s)).collect(),
            ..Table::default()
        }
    }

    const ACTOR: CommitInfo = CommitInfo {
        changed_ms: 1,
        pid: 2,
        uid: 3,
    };

    #[test]
    fn a_push_that_lands_late_is_superseded_by_the_newer_local_state() {
        let base = table(&[("a", State::Up)]);
        let mut down = base.clone();
        down.servers[0].state = State::Down;
        down.servers[0].since_ms = 10;
        let in_doubt = local_marks(&base, &down);
        // The host brought it back meanwhile; then the lost push lands in the fleet.
        let mut local = base.clone();
        local.servers[0].since_ms = 20;
        let mut landed = down.clone();
        let marks = superseding(&in_doubt, &landed, &local);
        assert_eq!(marks.len(), 1);
        assert_eq!(marks[0].describe(), "a:11211 down -> up");
        assert_eq!(apply_marks(&mut landed, &marks), 1);
        assert_eq!(landed.servers[0].state, State::Up);
        // Had it not landed (the fleet kept it up), nothing is to be superseded.
        assert!(superseding(&in_doubt, &base, &local).is_empty());
        // Had the host not moved on, its state is the one that landed.
        assert!(superseding(&in_doubt, &down, &down).is_empty());
    }

    #[test]
    fn a_local_mark_down_is_pushed_unless_superseded() {
        let base = table(&[("a", State::Up), ("b", State::Up)]);
        let mut local = base.clone();
        local.servers[0].state = State::Down;
        local.servers[0].reason = "2 failures".into();
        let marks = local_marks(&base, &local);
        assert_eq!(marks.len(), 1);
        assert_eq!(marks[0].describe(), "a:11211 up -> down");

        // The fleet added a server meanwhile: the mark still applies.
        let mut fleet = table(&[("a", State::Up), ("b", State::Up), ("c", State::Up)]);
        assert_eq!(apply_marks(&mut fleet, &marks), 1);
        assert_eq!(fleet.servers[0].state, State::Down);
        assert_eq!(fleet.servers[0].reason, "2 failures");

        // The fleet brought it down and up again meanwhile: superseded... only if the state
        // differs from the mark's origin. Drained instead: not applied.
        let mut fleet = table(&[("a", State::Draining), ("b", State::Up)]);
        assert_eq!(apply_marks(&mut fleet, &marks), 0);
        assert_eq!(fleet.servers[0].state, State::Draining);
    }

    #[test]
    fn mirroring_keeps_ids_and_unpushed_marks() {
        let mut local = table(&[("a", State::Up), ("b", State::Up)]);
        for (i, s) in local.servers.iter_mut().enumerate() {
            s.id = 10 + i as u32;
            s.live = i as u32;
        }
        local.fleet_revision = 5;
        let base = Table {
            fleet_revision: 0,
            ..local.clone()
        };
        local.servers[1].state = State::Down;
        let marks = local_marks(&base, &local);
        let fleet = table(&[("c", State::Up), ("b", State::Up), ("a", State::Down)]);
        let kept = mirror(&mut local, &fleet, 9, &marks, ACTOR);
        assert_eq!(kept, 1);
        assert_eq!(local.fleet_revision, 9);
        let names: Vec<_> = local
            .servers
            .iter()
            .map(|s| (s.address.to_string(), s.state, s.id))
            .collect();
        assert_eq!(
            names,
            vec![
                ("c:11211".into(), State::Up, 0),
                ("b:11211".into(), State::Down, 11),
                ("a:11211".into(), State::Down, 10),
            ]
        );
    }

    #[test]
    fn the_end_of_a_drain_removes_the_server_from_the_fleet() {
        let base = table(&[("a", State::Draining), ("b", State::Up)]);
        let local = table(&[("b", State::Up)]);
        let marks = local_marks(&base, &local);
        let mut fleet = base.clone();
        assert_eq!(apply_marks(&mut fleet, &marks), 1);
        assert_eq!(fleet.servers.len(), 1);
        // A server that was simply deleted on this host (not drained) stays in the fleet.
        let base = table(&[("a", State::Up)]);
        assert!(local_marks(&base, &Table::default()).is_empty());
    }
}
