//! The probe duty: while the agent reaches etcd, no process on this host probes a down server
//! on its own (the agent holds every down server's local probe lease a little ahead), and
//! agents compete for each server's fleet probe key instead: one probe per retry interval for
//! the whole fleet. The winner runs the rejoin (flush first, per the domain's policy; under
//! `replay`, every host's replay first: `crate::replay`) on a thread, and the loop pushes its
//! result.
//!
//! Its own module because it is the one part of the agent that talks to memcached servers;
//! when a server is due is a rule of data ([`fleet_probe_due`], [`look_again_after`]), tested
//! here, the same rule the table's local probe lease applies on a host without a fleet
//! (`since_ms` plus the retry interval, servers held down by an operator never).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use libmcshm::Timeouts;
use libmcshm::access::Access;
use libmcshm::lifecycle::{self, Missed, RejoinTable};
use mcshm_table::clock::now_ms;
use mcshm_table::table::{Server, State, Table};
use mcshm_table::{Address, Domain, Registry};

use super::{Agent, Msg, SyncEvent, lock};
use crate::replay::{self, ReplayAsk};
use crate::store::Fleet;

/// How far ahead the agent holds down servers' local probe leases (if it dies, the host's
/// clients take probing back after this plus the retry interval).
const HOLD_MS: u64 = 3_000;

impl Agent {
    /// Holds the local probe leases of down servers and competes for their fleet probe keys;
    /// the winner probes (flush first) in a thread of its own.
    pub(super) fn probe_duty(&mut self, domain: &Domain, events: &mut dyn FnMut(SyncEvent)) {
        let fleet = self.fleet.clone();
        let name = self.options.name.clone();
        let dir = self.options.dir.clone();
        let timeouts = self.options.probe_timeouts;
        let replay_deadline = self.options.replay_deadline;
        let probing = self.probing.clone();
        let tx = self.tx.clone();
        let mut next_probe = std::mem::take(&mut self.next_probe);
        let Some(mirror) = self.active(domain, false, events) else {
            self.next_probe = next_probe;
            return;
        };
        let writer = mirror.writer.as_mut().expect("active");
        let Ok(snapshot) = writer.current_snapshot() else {
            self.next_probe = next_probe;
            return;
        };
        let now = now_ms();
        let mut retried = false;
        for server in snapshot.servers.iter().filter(|s| s.state == State::Down) {
            // One a retry probe may bring back makes the loop tick fast, so that its probe is
            // not late; the local probe leases, held HOLD_MS ahead, need only the idle tick.
            retried |= server.retry_interval_ms().is_some();
            writer.live().hold_probe_lease(server, now + HOLD_MS);
            let key = (domain.clone(), server.address.to_string());
            let next_try = next_probe.get(&key).copied();
            let busy = lock(&probing).contains(&key);
            let Some(interval_ms) = fleet_probe_due(server, now, next_try, busy) else {
                continue;
            };
            match fleet.try_probe_lease(domain, &server.address, interval_ms, &name) {
                Ok(true) => {
                    lock(&probing).insert(key.clone());
                    let probe = Probe {
                        fleet: fleet.clone(),
                        dir: dir.clone(),
                        domain: domain.clone(),
                        id: server.id,
                        server: server.address.clone(),
                        timeouts,
                        replay_deadline,
                        name: name.clone(),
                    };
                    probe.spawn(tx.clone());
                    next_probe.insert(key, now + interval_ms);
                }
                Ok(false) => {
                    // Another host probed within the interval: look again a little later.
                    next_probe.insert(key, now + look_again_after(interval_ms));
                }
                Err(_) => {}
            }
        }
        self.next_probe = next_probe;
        self.probing_down |= retried;
    }
}

/// Whether this agent competes now for down `server`'s fleet probe key, and with which
/// interval (ms): never for a server that is not retried (`retry_interval` < 0) or is held
/// down by an operator; else once its retry interval has passed since it went down, not before
/// `next_try` (when the key may be free again, as last seen), and not while a probe of it runs
/// (`busy`).
fn fleet_probe_due(server: &Server, now: u64, next_try: Option<u64>, busy: bool) -> Option<u64> {
    // Not retried (-1), held down by an operator, or its interval not over since it went down.
    let interval_ms = server.probe_due(now, 0)?;
    let waiting = next_try.is_some_and(|t| now < t) || busy;
    (!waiting).then_some(interval_ms)
}

/// How long to wait before asking again for a probe key another host holds: a quarter of the
/// interval, from 50 ms to 1 s (the key frees at a time this host does not know exactly).
fn look_again_after(interval_ms: u64) -> u64 {
    (interval_ms / 4).clamp(50, 1000)
}

/// A probe of a down server for the fleet: the rejoin on this host's table, which the agent
/// then pushes. Under the `replay` policy every host that mirrors the domain is asked to
/// replay its log first (`crate::replay`); the server is flushed if one cannot.
struct Probe {
    fleet: Arc<Fleet>,
    dir: PathBuf,
    domain: Domain,
    id: u32,
    server: Address,
    timeouts: Timeouts,
    replay_deadline: Duration,
    name: String,
}

impl Probe {
    fn spawn(self, tx: Sender<Msg>) {
        std::thread::spawn(move || {
            let result = self.rejoin();
            let _ = tx.send(Msg::Probed {
                domain: self.domain,
                server: self.server,
                result: probe_result(result),
            });
        });
    }

    fn rejoin(&self) -> mcshm_table::Result<lifecycle::Rejoined> {
        let mut writer = Registry::open_writer(&self.dir, &self.domain, false)?;
        let table = RejoinTable::read(&mut writer)?;
        let by = format!("fleet retry probe, host {}", self.name);
        let how = lifecycle::Rejoiner {
            by: &by,
            operator: false,
            skip_flush: false,
            timeouts: self.timeouts,
        };
        let ask = ReplayAsk {
            by: self.name.clone(),
            deadline: self.replay_deadline,
            timeouts: self.timeouts,
            access: RejoinTable::access(&writer)?,
        };
        let mut mirrored = Mirrored {
            registry: &mut writer,
            missed: Some(replay::missed(self.fleet.clone(), self.domain.clone(), ask)),
        };
        let named = [lifecycle::Named::Id(self.id)];
        Ok(lifecycle::rejoin_in(&mut mirrored, &table, &named, how)?.remove(0))
    }
}

/// This host's table as a fleet probe rejoins it: what its down servers missed is vouched
/// for by every host's log (the fleet's replay), not by this host's alone.
struct Mirrored<'a> {
    registry: &'a mut Registry,
    missed: Option<Missed>,
}

impl RejoinTable for Mirrored<'_> {
    type Error = mcshm_table::Error;

    fn domain(&self) -> String {
        RejoinTable::domain(&*self.registry)
    }

    fn read(&mut self) -> mcshm_table::Result<Table> {
        RejoinTable::read(self.registry)
    }

    fn commit(
        &mut self,
        edit: &mut dyn FnMut(&mut Table) -> mcshm_table::Result<()>,
    ) -> mcshm_table::Result<()> {
        RejoinTable::commit(self.registry, edit)
    }

    fn access(&self) -> mcshm_table::Result<Access> {
        RejoinTable::access(&*self.registry)
    }

    fn signature(&self) -> String {
        RejoinTable::signature(&*self.registry)
    }

    fn name(&self, server: &Server) -> lifecycle::Named {
        RejoinTable::name(&*self.registry, server)
    }

    fn missed(&mut self) -> Option<Missed> {
        self.missed.take()
    }
}

/// How a fleet probe went, as `mcadmin sync` reports it.
fn probe_result(result: mcshm_table::Result<lifecycle::Rejoined>) -> String {
    match result {
        Ok(lifecycle::Rejoined::Up { flushed: true }) => "up (flushed)".to_string(),
        Ok(lifecycle::Rejoined::Up { flushed: false }) => "up (not flushed)".to_string(),
        Ok(lifecycle::Rejoined::Replayed { keys }) => format!("up ({keys} missed keys deleted)"),
        Ok(lifecycle::Rejoined::NotDown | lifecycle::Rejoined::DrainCancelled) => {
            "not down any more, or held down by an operator".to_string()
        }
        Err(e) => format!("still down: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn down(retry_interval: i32, since_ms: u64) -> Server {
        Server {
            state: State::Down,
            retry_interval,
            since_ms,
            ..Server::new(Address::parse("10.0.0.1").unwrap())
        }
    }

    #[test]
    fn a_down_server_is_due_once_its_retry_interval_has_passed_since_it_went_down() {
        let server = down(15, NOW - 15_000);
        assert_eq!(fleet_probe_due(&server, NOW, None, false), Some(15_000));
        assert_eq!(fleet_probe_due(&server, NOW - 1, None, false), None);
        assert_eq!(fleet_probe_due(&down(15, NOW), NOW, None, false), None);
        // Interval 0: at once.
        assert_eq!(fleet_probe_due(&down(0, NOW), NOW, None, false), Some(0));
        // A since far in the future (a bad clock elsewhere) does not overflow.
        assert_eq!(fleet_probe_due(&down(15, u64::MAX), NOW, None, false), None);
    }

    #[test]
    fn a_server_never_retried_or_held_down_by_an_operator_is_never_due() {
        assert_eq!(fleet_probe_due(&down(-1, 0), NOW, None, false), None);
        let held = Server {
            held: true,
            ..down(15, 0)
        };
        assert_eq!(fleet_probe_due(&held, NOW, None, false), None);
        for state in [State::Up, State::Draining] {
            let not_down = Server {
                state,
                ..down(15, 0)
            };
            assert_eq!(
                fleet_probe_due(&not_down, NOW, None, false),
                None,
                "{state}"
            );
        }
    }

    #[test]
    fn a_due_server_waits_for_its_next_try_and_for_a_probe_that_runs() {
        let server = down(15, 0);
        assert_eq!(fleet_probe_due(&server, NOW, Some(NOW + 1), false), None);
        assert_eq!(
            fleet_probe_due(&server, NOW, Some(NOW), false),
            Some(15_000)
        );
        assert_eq!(fleet_probe_due(&server, NOW, Some(0), false), Some(15_000));
        assert_eq!(fleet_probe_due(&server, NOW, None, true), None, "probing");
    }

    #[test]
    fn a_probe_key_another_host_holds_is_asked_again_after_a_quarter_interval_within_bounds() {
        assert_eq!(look_again_after(0), 50);
        assert_eq!(look_again_after(100), 50);
        assert_eq!(look_again_after(2_000), 500);
        assert_eq!(look_again_after(4_000), 1_000);
        assert_eq!(look_again_after(3_600_000), 1_000);
    }

    #[test]
    fn a_probe_result_says_whether_the_server_came_back_and_why_not() {
        use lifecycle::Rejoined;
        assert_eq!(
            probe_result(Ok(Rejoined::Up { flushed: true })),
            "up (flushed)"
        );
        assert_eq!(
            probe_result(Ok(Rejoined::Up { flushed: false })),
            "up (not flushed)"
        );
        for other in [Rejoined::NotDown, Rejoined::DrainCancelled] {
            assert_eq!(
                probe_result(Ok(other)),
                "not down any more, or held down by an operator"
            );
        }
        let e = mcshm_table::Error::NoServers {
            what: "domain 'a'".into(),
        };
        let text = e.to_string();
        assert_eq!(probe_result(Err(e)), format!("still down: {text}"));
    }
}
