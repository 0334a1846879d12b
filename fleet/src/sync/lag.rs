//! Lag that is known: the agent's table must not follow a member of etcd that stopped
//! following the cluster, and a host cut off must say so within `--etcd-timeout`.
//!
//! A watch on a member that is frozen (SIGSTOP, a hung disk) or cut off from the others is
//! silent, exactly as a watch on a quiet fleet is; its connection stays open, so nothing
//! fails. So on every refresh the agent asks etcd, through the leader (a linearizable read,
//! which a lagging member cannot answer), for the newest modification under the domains'
//! prefix, and compares it with the newest revision its watch delivered. Behind at one check
//! is normal (a change committed a moment before); still short of that same revision at the
//! next check, the watch is stuck: the agent replaces it (a new full read and watch, through
//! whichever member answers), and the old one's thread ends unheard ([`super::threads`]).
//!
//! The periodic calls (the host record and this check) are bounded so that a cut link shows
//! within `--etcd-timeout` of the cut: they run every `refresh` (2 s, or half the timeout when
//! it is shorter) and may take `timeout − refresh`, so the first call after a cut fails by
//! then. Each endpoint gets its share of that ([`Etcd::attempt_timeout`]).
//!
//! Not seen: a deleted domain (the newest modification under the prefix cannot go back; a
//! deleted domain stays as it was on the hosts anyway).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Agent, REFRESH, SyncEvent, threads};
use crate::etcd::{Etcd, WatchBatch};

/// The least time the periodic calls may take, and the least interval between them.
const FLOOR: Duration = Duration::from_millis(100);

/// The connection the agent's periodic calls use and how often they run, for an `--etcd-timeout`
/// of `etcd.timeout()`: every `refresh`, each bounded by `timeout − refresh`.
pub(super) fn periodic_calls(etcd: &Etcd) -> (Etcd, Duration) {
    let timeout = etcd.timeout();
    let refresh = REFRESH.min(timeout / 2).max(FLOOR);
    let budget = timeout.saturating_sub(refresh).max(FLOOR);
    (etcd.within(budget), refresh)
}

/// The newest revision a watch message shows its watch has delivered: its header's, which a
/// message carrying changes has at or past its newest change.
pub(super) fn delivered(batch: &WatchBatch) -> i64 {
    let newest_event = batch.events.iter().map(|e| e.mod_revision).max();
    batch.revision.max(newest_event.unwrap_or(0))
}

/// What one check finds, from the newest revision the watch delivered (`watched`), the newest
/// modification etcd has under the prefix (`newest`) and what the last check was waiting for
/// (`waiting`: the newest it saw while the watch was behind).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum WatchState {
    /// The watch delivered everything etcd has.
    Current,
    /// Behind, waiting for this revision (a change a moment ago, or since the last check).
    Behind(i64),
    /// Still short of what the last check waited for: replace it.
    Stuck { waited: i64 },
}

pub(super) fn watch_state(watched: i64, newest: i64, waiting: Option<i64>) -> WatchState {
    match waiting {
        Some(waited) if watched < waited => WatchState::Stuck { waited },
        _ if newest <= watched => WatchState::Current,
        _ => WatchState::Behind(newest),
    }
}

impl Agent {
    /// The check above (while connected; a failed read shows the link cut).
    pub(super) fn check_watch(&mut self, events: &mut dyn FnMut(SyncEvent)) {
        if self.connected != Some(true) {
            return;
        }
        let newest = match self.health.newest_under(&self.fleet.domains_prefix()) {
            Ok(newest) => newest,
            Err(e) => return self.set_connected(false, &e.to_string(), events),
        };
        match watch_state(self.watched, newest, self.behind) {
            WatchState::Current => self.behind = None,
            WatchState::Behind(newest) => self.behind = Some(newest),
            WatchState::Stuck { waited } => {
                self.behind = None;
                events(SyncEvent::Rewatched {
                    why: format!(
                        "the fleet's watch delivered revision {} while etcd had {waited} \
                         (its member frozen or cut off from the others): reading the fleet \
                         again through a member that answers",
                        self.watched
                    ),
                });
                self.watch_generation.fetch_add(1, Ordering::AcqRel);
                threads::spawn_watch(
                    self.fleet.clone(),
                    self.tx.clone(),
                    self.watch_generation.clone(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::{EtcdConfig, WatchEvent};

    #[test]
    fn a_watch_short_of_what_the_last_check_saw_is_stuck_and_a_moment_behind_is_not() {
        assert_eq!(watch_state(10, 10, None), WatchState::Current);
        assert_eq!(watch_state(10, 7, None), WatchState::Current, "other keys");
        // A change a moment before the check: behind once, not stuck.
        assert_eq!(watch_state(10, 12, None), WatchState::Behind(12));
        assert_eq!(watch_state(12, 12, Some(12)), WatchState::Current);
        // It delivered what the last check waited for, but more came since: wait again.
        assert_eq!(watch_state(12, 15, Some(12)), WatchState::Behind(15));
        // Nothing delivered between two checks.
        assert_eq!(
            watch_state(10, 12, Some(12)),
            WatchState::Stuck { waited: 12 }
        );
        assert_eq!(
            watch_state(11, 14, Some(12)),
            WatchState::Stuck { waited: 12 }
        );
    }

    #[test]
    fn a_message_delivers_its_header_revision_or_its_newest_change() {
        let event = |mod_revision| WatchEvent {
            key: b"/mcshm/domains/a".to_vec(),
            value: None,
            mod_revision,
        };
        let batch = |revision, events| WatchBatch { events, revision };
        assert_eq!(delivered(&batch(9, vec![event(7), event(9)])), 9);
        assert_eq!(delivered(&batch(0, vec![event(7)])), 7);
        assert_eq!(delivered(&batch(0, vec![])), 0);
    }

    #[test]
    fn periodic_calls_fail_in_time_to_show_a_cut_within_the_timeout() {
        for (timeout_ms, refresh_ms, budget_ms) in [
            (5000, 2000, 3000),
            (2000, 1000, 1000),
            (1000, 500, 500),
            (100, 100, 100),
        ] {
            let etcd = Etcd::new(EtcdConfig {
                endpoints: vec!["http://127.0.0.1:1".into(); 3],
                timeout: Duration::from_millis(timeout_ms),
                ..EtcdConfig::default()
            })
            .unwrap();
            let (health, refresh) = periodic_calls(&etcd);
            assert_eq!(
                refresh,
                Duration::from_millis(refresh_ms),
                "{timeout_ms} ms"
            );
            assert_eq!(
                health.timeout(),
                Duration::from_millis(budget_ms),
                "{timeout_ms} ms"
            );
        }
    }
}
