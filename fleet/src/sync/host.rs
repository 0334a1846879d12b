//! What the agent tells about itself: the host record on its lease (`mcadmin --etcd … hosts`
//! lists the live agents and what each mirrors) and the link status in each local table's
//! header (`mcadmin list` on the host says whether its tables follow the fleet), and the clean
//! stop that takes both back.
//!
//! The lease is kept alive every `REFRESH` (which is also how the agent notices that etcd no
//! longer answers); the record is written only when what it says changes ([`RecordState`]):
//! at once when it lists a domain it did not (a replay asks the hosts whose records list the
//! domain, `crate::replay`), a second or two later for a newer revision or client count. Every
//! write is a raft proposal, and with a record rewritten on a timer and after every change, a
//! fleet of 1 000 hosts made 500 writes a second at rest and 1 000 more at each change, in the
//! middle of its fan-out (`bench/fleet.sh`, docs/BENCHMARKS.md).
//!
//! Its own module because it is the agent's only periodic write that is not about servers.

use std::time::Instant;

use super::{Agent, SyncEvent};
use crate::etcd::EtcdError;
use crate::store::{HostDomain, HostRecord};
use mcshm_table::clock::now_ms;

/// How long a change of the host record waits before it is written, at the least: a burst of
/// fleet changes writes once, after their fan-out. Each host adds its own share of
/// [`RECORD_SPREAD_MS`] ([`record_delay_ms`]), so that the hosts' writes after one fleet change
/// do not all reach etcd in the same instant.
const RECORD_SETTLE_MS: u64 = 1_000;
const RECORD_SPREAD_MS: u64 = 1_000;

/// The host record as last written on the current lease, and since when what the record would
/// say has differed from it: the rule of when it is written, as a function of data.
#[derive(Debug, Default)]
pub(super) struct RecordState {
    written: Option<HostRecord>,
    changed_ms: Option<u64>,
    /// A domain mirrored that the record written does not list: write at once.
    unlisted: bool,
}

impl RecordState {
    /// A fleet revision of `domain` mirrored at `now_ms`: written once the delay is over,
    /// without waiting for the next refresh; at once if the record written does not list the
    /// domain yet.
    pub(super) fn touch(&mut self, domain: &str, now_ms: u64) {
        self.changed_ms.get_or_insert(now_ms);
        self.unlisted |= self
            .written
            .as_ref()
            .is_some_and(|w| !w.domains.contains_key(domain));
    }

    /// Whether a change touched is due to be written by time alone.
    pub(super) fn ripe(&self, now_ms: u64, delay_ms: u64) -> bool {
        self.unlisted
            || self
                .changed_ms
                .is_some_and(|since| now_ms >= since.saturating_add(delay_ms))
    }

    /// Whether `current` is to be written now: at once when the lease holds no record of this
    /// agent yet (`new_lease`, or none written) or `current` lists other domains than the
    /// record written; else when it says something else (its `updated_ms` aside), `delay_ms`
    /// after the difference was first seen.
    fn due(&mut self, current: &HostRecord, now_ms: u64, delay_ms: u64, new_lease: bool) -> bool {
        if new_lease {
            *self = RecordState::default();
        }
        let Some(written) = &self.written else {
            return true;
        };
        if !written.domains.keys().eq(current.domains.keys()) {
            return true;
        }
        if same_record(written, current) {
            self.changed_ms = None;
            self.unlisted = false;
            return false;
        }
        self.changed_ms.get_or_insert(now_ms);
        self.ripe(now_ms, delay_ms)
    }

    fn written(&mut self, record: HostRecord) {
        *self = RecordState {
            written: Some(record),
            ..RecordState::default()
        };
    }
}

/// Whether two records say the same, apart from when each was made.
fn same_record(a: &HostRecord, b: &HostRecord) -> bool {
    HostRecord {
        updated_ms: b.updated_ms,
        ..a.clone()
    } == *b
}

/// How long this host's record changes wait before they are written: at least
/// [`RECORD_SETTLE_MS`], plus a share of [`RECORD_SPREAD_MS`] that depends on the host's name
/// only (FNV-1a: the same on every run and build).
pub(super) fn record_delay_ms(name: &str) -> u64 {
    RECORD_SETTLE_MS + fnv1a(name.as_bytes()) % RECORD_SPREAD_MS
}

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Agent {
    /// Sets the link status of every local table and, with `keepalive`, renews the lease (or
    /// takes a new one); then writes the host record if [`RecordState`] says it is due.
    pub(super) fn refresh_host(&mut self, keepalive: bool, events: &mut dyn FnMut(SyncEvent)) {
        if keepalive {
            self.last_refresh = Some(Instant::now());
        }
        let now = now_ms();
        let mut record = HostRecord {
            name: self.options.name.clone(),
            pid: std::process::id(),
            started_ms: self.started_ms,
            updated_ms: now,
            domains: Default::default(),
        };
        let connected = self.connected == Some(true);
        for mirror in self.mirrors.values_mut() {
            let Some(writer) = mirror.writer.as_mut().filter(|_| mirror.lock.is_some()) else {
                continue;
            };
            let _ = writer.version(); // follow a replaced file
            writer.set_agent_link(connected, self.link_since_ms);
            let revision = writer
                .current_snapshot()
                .map_or(0, |s| s.fleet_revision as i64);
            record.domains.insert(
                mirror.domain.to_string(),
                HostDomain {
                    revision,
                    applied_ms: mirror.applied_ms,
                    clients: writer.process_records().len(),
                },
            );
        }
        let key = self.fleet.host_key(&self.options.name);
        let delay = self.record_delay_ms;
        let result = (|| -> Result<(), EtcdError> {
            let (lease, new_lease) = match self.lease {
                Some(id) if !keepalive => (id, false),
                Some(id) if self.health.lease_keepalive(id)? => (id, false),
                _ => (self.health.lease_grant(self.options.lease_ttl_s)?, true),
            };
            self.lease = Some(lease);
            if self.record.due(&record, now, delay, new_lease) {
                let value = serde_json::to_vec(&record).expect("serializes");
                if let Err(e) = self.health.put(&key, &value, Some(lease)) {
                    // A lease that expired since it was last renewed: take a new one.
                    if matches!(e, EtcdError::Refused(_)) {
                        self.lease = None;
                    }
                    return Err(e);
                }
                self.record.written(record);
            }
            Ok(())
        })();
        match result {
            Ok(()) => self.set_connected(true, "", events),
            Err(e) => self.set_connected(false, &e.to_string(), events),
        }
    }

    pub(super) fn set_connected(
        &mut self,
        connected: bool,
        why: &str,
        events: &mut dyn FnMut(SyncEvent),
    ) {
        if self.connected == Some(connected) {
            return;
        }
        self.connected = Some(connected);
        self.link_since_ms = now_ms();
        events(match connected {
            true => SyncEvent::Connected,
            false => SyncEvent::Disconnected {
                why: why.to_string(),
            },
        });
        for mirror in self.mirrors.values_mut() {
            if let (Some(writer), Some(_)) = (&mirror.writer, &mirror.lock) {
                writer.set_agent_link(connected, self.link_since_ms);
            }
        }
    }

    /// A clean stop: the host record goes at once (its lease revoked), the tables say no agent.
    pub(super) fn shutdown(&mut self) {
        for mirror in self.mirrors.values() {
            if let (Some(writer), Some(_)) = (&mirror.writer, &mirror.lock) {
                writer.clear_agent_link();
            }
        }
        if let Some(lease) = self.lease.take() {
            let _ = self.fleet.etcd.lease_revoke(lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HostDomain;

    fn record(revision: i64, updated_ms: u64) -> HostRecord {
        let mut r = HostRecord {
            name: "web1".into(),
            pid: 42,
            started_ms: 1,
            updated_ms,
            domains: Default::default(),
        };
        r.domains.insert(
            "app".into(),
            HostDomain {
                revision,
                applied_ms: 5,
                clients: 3,
            },
        );
        r
    }

    #[test]
    fn the_first_record_on_a_lease_is_written_at_once() {
        let mut state = RecordState::default();
        assert!(
            state.due(&record(7, 100), 100, 1_500, false),
            "none written yet"
        );
        state.written(record(7, 100));
        // A new lease holds no record, whatever was written on the old one.
        assert!(state.due(&record(7, 200), 200, 1_500, true));
    }

    #[test]
    fn an_unchanged_record_is_not_written_again_however_long_it_stays() {
        let mut state = RecordState::default();
        state.written(record(7, 100));
        for now in [2_100, 60_000, 3_600_000] {
            assert!(!state.due(&record(7, now), now, 1_500, false), "at {now}");
        }
        assert!(!state.ripe(3_600_000, 1_500));
    }

    #[test]
    fn a_change_is_written_once_its_delay_is_over_and_a_burst_writes_once() {
        let mut state = RecordState::default();
        state.written(record(7, 100));
        // A fleet revision mirrored at 1 000: touched, not yet due.
        state.touch("app", 1_000);
        assert!(!state.ripe(2_499, 1_500));
        assert!(!state.due(&record(8, 1_200), 1_200, 1_500, false));
        // More revisions in the burst do not move the first change's time.
        state.touch("app", 1_800);
        assert!(!state.due(&record(9, 2_000), 2_000, 1_500, false));
        assert!(state.ripe(2_500, 1_500));
        assert!(state.due(&record(9, 2_500), 2_500, 1_500, false));
        state.written(record(9, 2_500));
        assert!(!state.ripe(10_000, 1_500));
        assert!(!state.due(&record(9, 10_000), 10_000, 1_500, false));
    }

    #[test]
    fn a_change_seen_only_at_a_refresh_waits_its_delay_from_then() {
        let mut state = RecordState::default();
        state.written(record(7, 100));
        // The client count changed; a refresh at 4 000 sees it first.
        let mut more_clients = record(7, 4_000);
        more_clients.domains.get_mut("app").unwrap().clients = 4;
        assert!(!state.due(&more_clients, 4_000, 1_500, false));
        assert!(state.due(&more_clients, 6_000, 1_500, false));
    }

    #[test]
    fn a_touch_that_changed_nothing_is_forgotten_at_the_next_look() {
        let mut state = RecordState::default();
        state.written(record(7, 100));
        state.touch("app", 1_000);
        assert!(state.ripe(3_000, 1_500));
        assert!(!state.due(&record(7, 3_000), 3_000, 1_500, false));
        assert!(!state.ripe(9_000, 1_500));
    }

    #[test]
    fn a_domain_the_record_does_not_list_yet_is_written_at_once() {
        // A replay asks the hosts whose records list the domain: one that mirrors it now
        // must be listed at once.
        let mut state = RecordState::default();
        let mut none = record(7, 100);
        none.domains.clear();
        state.written(none);
        state.touch("app", 1_000);
        assert!(state.ripe(1_000, 1_500));
        assert!(state.due(&record(7, 1_000), 1_000, 1_500, false));
        state.written(record(7, 1_000));
        // A second domain, seen at a refresh: at once too.
        let mut two = record(7, 3_000);
        two.domains
            .insert("other".into(), two.domains["app"].clone());
        assert!(state.due(&two, 3_000, 1_500, false));
        // A listed domain's newer revision waits.
        state.written(record(7, 4_000));
        state.touch("app", 5_000);
        assert!(!state.ripe(5_000, 1_500));
    }

    #[test]
    fn each_host_waits_its_own_share_of_the_spread_the_same_on_every_run() {
        let delays: Vec<u64> = (1..=1000)
            .map(|i| record_delay_ms(&format!("host{i}")))
            .collect();
        assert!(delays.iter().all(|d| (1_000..2_000).contains(d)));
        assert_eq!(record_delay_ms("host1"), delays[0], "stable");
        // Spread over the whole window: every tenth of it holds some hosts.
        for tenth in 0..10 {
            let from = 1_000 + tenth * 100;
            let n = delays
                .iter()
                .filter(|&&d| (from..from + 100).contains(&d))
                .count();
            assert!(
                (50..150).contains(&n),
                "{n} hosts in [{from}, {})",
                from + 100
            );
        }
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
