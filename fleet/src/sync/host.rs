//! What the agent tells about itself: the host record on its lease (`mcadmin --etcd … hosts`
//! lists the live agents and what each mirrors) and the link status in each local table's
//! header (`mcadmin list` on the host says whether its tables follow the fleet), and the clean
//! stop that takes both back.
//!
//! Its own module because it is the agent's only periodic write that is not about servers.

use std::time::Instant;

use super::{Agent, SyncEvent};
use crate::etcd::EtcdError;
use crate::store::{HostDomain, HostRecord};
use mcshm_table::clock::now_ms;

impl Agent {
    /// Writes the host record (on its lease) and the link status of every local table.
    pub(super) fn refresh_host(&mut self, events: &mut dyn FnMut(SyncEvent)) {
        self.last_refresh = Some(Instant::now());
        let mut record = HostRecord {
            name: self.options.name.clone(),
            pid: std::process::id(),
            started_ms: self.started_ms,
            updated_ms: now_ms(),
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
        let value = serde_json::to_vec(&record).expect("serializes");
        let key = self.fleet.host_key(&self.options.name);
        let result = (|| -> Result<(), EtcdError> {
            let lease = match self.lease {
                Some(id) if self.health.lease_keepalive(id)? => id,
                _ => self.health.lease_grant(self.options.lease_ttl_s)?,
            };
            self.lease = Some(lease);
            self.health.put(&key, &value, Some(lease))?;
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
