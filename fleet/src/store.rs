//! The fleet's tables in etcd: where each thing lives under the prefix, reading a domain, and
//! editing it as one compare-and-swap transaction with the same edit functions `mcadmin` runs
//! on a local table.
//!
//! ```text
//! PREFIX/domains/DOMAIN          the domain's table (JSON, see `document`); its mod_revision is
//!                                the fleet version of the domain
//! PREFIX/hosts/NAME              one per live `mcadmin sync` agent, on the agent's lease (see
//!                                `HostRecord`)
//! PREFIX/probes/DOMAIN/ADDRESS   when a host last took the right to probe a down server (ms);
//!                                taken by compare-and-swap: one probe per retry interval for the
//!                                whole fleet
//! PREFIX/replays/DOMAIN/ADDRESS  a request that every host replay its invalidation log on a
//!                                down server (see `replay`), on the requester's lease
//! PREFIX/replay-acks/ID/HOST     each host's answer to request ID, on the same lease
//! ```

use std::time::{Duration, Instant};

use mcshm_table::table::{Fence, Table};
use mcshm_table::{Address, Domain};
use serde::{Deserialize, Serialize};

use crate::document::{self, Changed};
use crate::etcd::{Etcd, EtcdError, Kv, PutIf};

/// Why a fleet operation failed.
#[derive(Debug)]
pub enum FleetError {
    Etcd(EtcdError),
    /// The edit itself was refused (bad input, no such server, …): nothing was written.
    Edit(mcshm_table::Error),
    /// A value under the prefix that is not a valid table.
    Hostile {
        key: String,
        why: String,
    },
    /// No such domain in the fleet.
    NoDomain(String),
    /// A server whose keys the change moves could not be fenced: nothing was written.
    Fence {
        server: String,
        why: String,
    },
}

impl std::fmt::Display for FleetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FleetError::Etcd(e) => e.fmt(f),
            FleetError::Edit(e) => e.fmt(f),
            FleetError::Hostile { key, why } => {
                write!(f, "refused the value of etcd key {key}: {why}")
            }
            FleetError::NoDomain(d) => write!(
                f,
                "no domain '{d}' in the fleet (create it with `mcadmin --etcd … --domain {d} add ADDR`)"
            ),
            FleetError::Fence { server, why } => write!(
                f,
                "could not raise the fence on {server} ({why}); nothing was changed: the change \
                 moves keys off it, and a host that lags the fleet would keep using it. Bring \
                 the server back, or mark it down first (`mcadmin --etcd … down {server}`)"
            ),
        }
    }
}

impl std::error::Error for FleetError {}

impl From<EtcdError> for FleetError {
    fn from(e: EtcdError) -> FleetError {
        FleetError::Etcd(e)
    }
}

/// A domain's table as the fleet holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetTable {
    pub table: Table,
    pub changed: Changed,
    /// The fleet version: the etcd revision that wrote this table.
    pub revision: i64,
}

/// What a fleet transaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetCommit {
    /// The fleet version now (the new revision, or the unchanged one).
    pub revision: i64,
    pub changed: bool,
    /// Servers whose fence the commit raised (or found) at its epoch before it was written.
    pub fenced: usize,
    /// Servers the change takes out of service that could not be reached to be fenced.
    pub unfenced: usize,
}

/// How a fleet commit reaches the servers whose fences it raises (see [`libmcshm::fence`]):
/// the domain's access files (TLS, credentials) are read from `dir`, as a rejoin's flush reads
/// them.
#[derive(Clone, Debug)]
pub struct Fencing {
    pub dir: std::path::PathBuf,
    pub timeouts: libmcshm::Timeouts,
}

/// What a `mcadmin sync` agent publishes about its host (`mcadmin --etcd … hosts`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub pid: u32,
    pub started_ms: u64,
    pub updated_ms: u64,
    /// Per domain mirrored: the fleet revision applied, when, and how many processes use it.
    pub domains: std::collections::BTreeMap<String, HostDomain>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDomain {
    pub revision: i64,
    pub applied_ms: u64,
    pub clients: usize,
}

/// How long a fleet edit keeps retrying conflicts and unreachable members.
const EDIT_DEADLINE: Duration = Duration::from_secs(30);
/// Attempts at an edit that keeps conflicting with other writers.
const EDIT_ATTEMPTS: u32 = 1000;

/// Where each thing lives under one prefix (the table at the top of this module): pure
/// string work, kept apart from the connection so that it can be checked without etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` must start and end with `/` (default `/mcshm/`), with no space or control
    /// character, at most 256 bytes.
    pub fn new(prefix: &str) -> Result<Keys, EtcdError> {
        let ok = prefix.starts_with('/')
            && prefix.ends_with('/')
            && prefix.len() <= 256
            && !prefix.chars().any(|c| c.is_control() || c == ' ');
        if !ok {
            return Err(EtcdError::Config(format!(
                "invalid --etcd-prefix '{prefix}': a key path that starts and ends with /, e.g. /mcshm/"
            )));
        }
        Ok(Keys {
            prefix: prefix.to_string(),
        })
    }

    pub fn domains_prefix(&self) -> String {
        format!("{}domains/", self.prefix)
    }

    pub fn domain_key(&self, domain: &Domain) -> String {
        format!("{}domains/{}", self.prefix, domain.as_str())
    }

    pub fn hosts_prefix(&self) -> String {
        format!("{}hosts/", self.prefix)
    }

    pub fn host_key(&self, name: &str) -> String {
        format!("{}hosts/{name}", self.prefix)
    }

    pub fn probe_key(&self, domain: &Domain, address: &Address) -> String {
        format!("{}probes/{}/{}", self.prefix, domain.as_str(), address)
    }

    pub fn replays_prefix(&self) -> String {
        format!("{}replays/", self.prefix)
    }

    pub fn replay_key(&self, domain: &Domain, address: &Address) -> String {
        format!("{}replays/{}/{}", self.prefix, domain.as_str(), address)
    }

    /// Where the hosts answer request `id` (an id is hex digits: see `replay`).
    pub fn replay_acks_prefix(&self, id: &str) -> String {
        format!("{}replay-acks/{id}/", self.prefix)
    }

    pub fn replay_ack_key(&self, id: &str, host: &str) -> String {
        format!("{}replay-acks/{id}/{host}", self.prefix)
    }

    /// The domain a key under `PREFIX/domains/` names (`None` for other keys and bad names).
    pub fn domain_of_key(&self, key: &[u8]) -> Option<Domain> {
        let key = std::str::from_utf8(key).ok()?;
        Domain::new(key.strip_prefix(&self.domains_prefix())?).ok()
    }
}

/// Decodes a domain's value, naming the key when it is refused.
pub fn decode(kv: &Kv) -> Result<FleetTable, FleetError> {
    let (table, changed) = document::decode(&kv.value).map_err(|why| FleetError::Hostile {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        why,
    })?;
    Ok(FleetTable {
        table,
        changed,
        revision: kv.mod_revision,
    })
}

/// The value of a probe key: when (ms) and by which host the right to probe was taken.
pub fn probe_lease_value(now_ms: u64, host: &str) -> String {
    serde_json::json!({"ms": now_ms, "host": host}).to_string()
}

/// Whether the right to probe, last taken as the probe key's `value` says, is free at
/// `now_ms`: no host took it in the last `interval_ms`. A value without a readable `ms`
/// counts as taken at 0 (free: a damaged key cannot stop probing).
pub fn probe_lease_free(value: &[u8], now_ms: u64, interval_ms: u64) -> bool {
    let last = serde_json::from_slice::<serde_json::Value>(value)
        .ok()
        .and_then(|v| v.get("ms").and_then(serde_json::Value::as_u64))
        .unwrap_or(0);
    now_ms >= last.saturating_add(interval_ms)
}

/// The fleet: an etcd connection and the key layout under its prefix.
pub struct Fleet {
    pub etcd: Etcd,
    keys: Keys,
    /// Set: every commit that moves keys fences the servers first (see [`Fleet::transact`]).
    fencing: Option<Fencing>,
}

impl Fleet {
    /// `prefix` must start and end with `/` (default `/mcshm/`): see [`Keys::new`]. Commits
    /// raise no fences until [`Fleet::with_fencing`].
    pub fn new(etcd: Etcd, prefix: &str) -> Result<Fleet, EtcdError> {
        Ok(Fleet {
            etcd,
            keys: Keys::new(prefix)?,
            fencing: None,
        })
    }

    /// Every commit that moves keys raises the fences of the servers it moves them off first.
    pub fn with_fencing(mut self, fencing: Fencing) -> Fleet {
        self.fencing = Some(fencing);
        self
    }

    /// The key layout under this fleet's prefix.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn domains_prefix(&self) -> String {
        self.keys.domains_prefix()
    }

    pub fn domain_key(&self, domain: &Domain) -> String {
        self.keys.domain_key(domain)
    }

    pub fn hosts_prefix(&self) -> String {
        self.keys.hosts_prefix()
    }

    pub fn host_key(&self, name: &str) -> String {
        self.keys.host_key(name)
    }

    pub fn probe_key(&self, domain: &Domain, address: &Address) -> String {
        self.keys.probe_key(domain, address)
    }

    /// The domain a key under `PREFIX/domains/` names (`None` for other keys and bad names).
    pub fn domain_of_key(&self, key: &[u8]) -> Option<Domain> {
        self.keys.domain_of_key(key)
    }

    /// Decodes a domain's value, naming the key when it is refused (see [`decode`]).
    pub fn decode(&self, kv: &Kv) -> Result<FleetTable, FleetError> {
        decode(kv)
    }

    /// The domain's current fleet table (`None`: not in the fleet).
    pub fn read(&self, domain: &Domain) -> Result<Option<FleetTable>, FleetError> {
        let (kv, _) = self.etcd.get(&self.domain_key(domain), None)?;
        kv.map(|kv| self.decode(&kv)).transpose()
    }

    /// The domain's fleet table as it was at `revision` (for telling a host's own changes from
    /// the fleet's); [`EtcdError::Compacted`] when etcd no longer has it.
    pub fn read_at(
        &self,
        domain: &Domain,
        revision: i64,
    ) -> Result<Option<FleetTable>, FleetError> {
        let (kv, _) = self.etcd.get(&self.domain_key(domain), Some(revision))?;
        kv.map(|kv| self.decode(&kv)).transpose()
    }

    /// Every domain in the fleet, with the cluster revision they were read at. A refused value
    /// is returned as its error, beside the good ones.
    #[allow(clippy::type_complexity)]
    pub fn read_all(
        &self,
    ) -> Result<(Vec<(Domain, Result<FleetTable, FleetError>)>, i64), FleetError> {
        let (kvs, revision) = self.etcd.list(&self.domains_prefix())?;
        let tables = kvs
            .iter()
            .filter_map(|kv| Some((self.domain_of_key(&kv.key)?, self.decode(kv))))
            .collect();
        Ok((tables, revision))
    }

    /// Runs `change` on the domain's fleet table and writes the result as one new fleet
    /// version, if nobody wrote in between (else re-reads and runs `change` again). `create`
    /// starts a domain that is not in the fleet yet from an empty table. A `change` error
    /// writes nothing.
    ///
    /// With [`Fleet::with_fencing`], in a domain whose policy has fencing on (or turns it on:
    /// then every server it routes is fenced), a change that moves keys first raises the fence
    /// of every server it moves them off ([`mcshm_table::coherence::fence_targets`]) to the revision
    /// read plus one: the commit's own revision is at least that, so every host still on the
    /// table read (or older) is fenced there before any host can use the new one. A server
    /// that cannot be fenced refuses the commit ([`FleetError::Fence`], nothing written),
    /// unless the change takes it out of service (down or deleted): then it is counted in
    /// [`FleetCommit::unfenced`].
    pub fn transact(
        &self,
        domain: &Domain,
        create: bool,
        by: &str,
        change: impl FnMut(&mut Table) -> mcshm_table::Result<()>,
    ) -> Result<FleetCommit, FleetError> {
        self.transact_with(domain, create, false, by, change)
    }

    /// [`Fleet::transact`]; with `repair`, a current value that is not a valid table is taken
    /// as an empty one (how `mcadmin --etcd … load` replaces a damaged value).
    pub fn transact_with(
        &self,
        domain: &Domain,
        create: bool,
        repair: bool,
        by: &str,
        mut change: impl FnMut(&mut Table) -> mcshm_table::Result<()>,
    ) -> Result<FleetCommit, FleetError> {
        let key = self.domain_key(domain);
        let deadline = Instant::now() + EDIT_DEADLINE;
        let (mut current, mut read_at) = self.etcd.get(&key, None)?;
        for _ in 0..EDIT_ATTEMPTS {
            let mut repairing = false;
            let (mut table, expected) = match &current {
                Some(kv) => match self.decode(kv) {
                    Ok(t) => (t.table, Some(kv.mod_revision)),
                    Err(FleetError::Hostile { .. }) if repair => {
                        repairing = true;
                        (Table::default(), Some(kv.mod_revision))
                    }
                    Err(e) => return Err(e),
                },
                None if create => (Table::default(), None),
                None => return Err(FleetError::NoDomain(domain.to_string())),
            };
            let before = table.clone();
            change(&mut table).map_err(FleetError::Edit)?;
            if expected.is_none() && self.fencing.is_some() && table.policy.fence == Fence::Auto {
                // A new domain fences unless its creator said otherwise (an existing one is
                // turned on by an operator's commit, which fences every server first).
                table.policy.fence = Fence::On;
            }
            if table == before && !repairing {
                let revision = expected.unwrap_or(0);
                return Ok(FleetCommit {
                    revision,
                    ..FleetCommit::default()
                });
            }
            let fenced = self.fence(domain, &before, &table, expected.unwrap_or(0))?;
            let value = document::encode(&table, &changed_by(by));
            match self.etcd.put_if(&key, &value, expected, None) {
                Ok(PutIf::Written(revision)) => return Ok(fenced.at(revision)),
                // Our own document (it names this process and the time to the millisecond):
                // the request reached a member whose answer was lost (a slow member's share
                // of the timeout ran out) and was sent again to the next one.
                Ok(PutIf::Conflict(Some(now)) | PutIf::Resent(Some(now))) if now.value == value => {
                    return Ok(fenced.at(now.mod_revision));
                }
                Ok(PutIf::Conflict(now)) => current = now,
                // Sent again after a member did not answer: that member may have written it
                // and another editor on top since; the key's history says.
                Ok(PutIf::Resent(now)) => {
                    let after = expected.unwrap_or(read_at);
                    match self.landed(&key, &value, after, deadline) {
                        Ok(Some(revision)) => return Ok(fenced.at(revision)),
                        Ok(None) | Err(EtcdError::Unreachable(_)) => current = now,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(EtcdError::Unreachable(why)) => {
                    // The answer was lost: the write may have happened. Our document names this
                    // process and the time to the millisecond, so finding it as the first write
                    // after the one we read means it did (another editor may have written on
                    // top of it since: then the key no longer holds it).
                    if Instant::now() >= deadline {
                        return Err(EtcdError::Unreachable(why).into());
                    }
                    let after = expected.unwrap_or(read_at);
                    match self.landed(&key, &value, after, deadline) {
                        Ok(Some(revision)) => return Ok(fenced.at(revision)),
                        Ok(None) => {}
                        Err(EtcdError::Unreachable(_)) if Instant::now() < deadline => {}
                        Err(e) => return Err(e.into()),
                    }
                    (current, read_at) = match self.etcd.get(&key, None) {
                        Ok(now) => now,
                        Err(EtcdError::Unreachable(_)) if Instant::now() < deadline => {
                            (current, read_at)
                        }
                        Err(e) => return Err(e.into()),
                    };
                }
                Err(e) => return Err(e.into()),
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(EtcdError::Unreachable(format!(
            "gave up on {key} after {}s of conflicting writers",
            EDIT_DEADLINE.as_secs()
        ))
        .into())
    }

    /// Raises the fences of the servers `before` → `after` moves keys off to `read + 1` (see
    /// [`Fleet::transact_with`]), when fencing is on.
    fn fence(
        &self,
        domain: &Domain,
        before: &Table,
        after: &Table,
        read: i64,
    ) -> Result<FleetCommit, FleetError> {
        let Some(fencing) = &self.fencing else {
            return Ok(FleetCommit::default());
        };
        let (was, is) = (before.policy.fence.is_on(), after.policy.fence.is_on());
        if !was && !is {
            return Ok(FleetCommit::default());
        }
        let mut targets = mcshm_table::coherence::fence_targets(before, after);
        if is && !was {
            // Turned on: every server it routes gets its first fence.
            let routed = mcshm_table::table::routed(&after.servers, after.policy.failover);
            for server in routed.into_iter().map(|i| &after.servers[i]) {
                if !targets.iter().any(|t| t.same_server(&server.address)) {
                    targets.push(server.address.clone());
                }
            }
        }
        self.raise_fences(fencing, domain, Some(before), after, &targets, read)
    }

    /// Raises the fences of `targets` to `read + 1` (see [`Fleet::fence`]). A server that
    /// cannot be reached refuses the commit, unless `after` takes it out of service or it is
    /// new to the table (not in `before`): no host has used it, and until a commit writes its
    /// fence (the agents' repair, once it answers) every host takes its answers as behind.
    fn raise_fences(
        &self,
        fencing: &Fencing,
        domain: &Domain,
        before: Option<&Table>,
        after: &Table,
        targets: &[Address],
        read: i64,
    ) -> Result<FleetCommit, FleetError> {
        let mut fenced = FleetCommit::default();
        if targets.is_empty() {
            return Ok(fenced);
        }
        let access = libmcshm::access::Access::load(&fencing.dir, domain).map_err(|e| {
            FleetError::Fence {
                server: targets[0].to_string(),
                why: e.to_string(),
            }
        })?;
        let key = libmcshm::fence::fence_key(domain);
        let epoch = u64::try_from(read).unwrap_or(0) + 1;
        for (server, raised) in
            libmcshm::fence::raise_all(targets, &key, epoch, fencing.timeouts, &access)
        {
            match raised {
                Ok(_) => fenced.fenced += 1,
                Err(_) if out_of_service(after, &server) || new_in(before, &server) => {
                    fenced.unfenced += 1
                }
                Err(why) => {
                    return Err(FleetError::Fence {
                        server: server.to_string(),
                        why,
                    });
                }
            }
        }
        Ok(fenced)
    }

    /// A commit that changes nothing but fences: raises the fences of `servers` to the
    /// revision read plus one, then writes the same table anew, so that every host mirrors a
    /// revision at or past every fence raised so far. How an agent repairs fences that went
    /// missing (a server restarted or flushed) and heals fences a commit raised before it
    /// failed (`servers` empty: the new revision alone lifts them). `None` when another
    /// writer committed first (the caller looks again) or fencing is not on.
    pub fn refence(
        &self,
        domain: &Domain,
        servers: &[Address],
        by: &str,
    ) -> Result<Option<FleetCommit>, FleetError> {
        let Some(fencing) = &self.fencing else {
            return Ok(None);
        };
        let key = self.domain_key(domain);
        let (current, _) = self.etcd.get(&key, None)?;
        let Some(kv) = current else {
            return Err(FleetError::NoDomain(domain.to_string()));
        };
        let table = self.decode(&kv)?.table;
        if !table.policy.fence.is_on() {
            return Ok(None);
        }
        let fenced = self.raise_fences(fencing, domain, None, &table, servers, kv.mod_revision)?;
        let value = document::encode(&table, &changed_by(by));
        match self
            .etcd
            .put_if(&key, &value, Some(kv.mod_revision), None)?
        {
            PutIf::Written(revision) => Ok(Some(fenced.at(revision))),
            PutIf::Conflict(Some(now)) | PutIf::Resent(Some(now)) if now.value == value => {
                Ok(Some(fenced.at(now.mod_revision)))
            }
            PutIf::Conflict(_) | PutIf::Resent(_) => Ok(None),
        }
    }

    /// Whether `value` was the first write of `key` after revision `after` (its revision if
    /// so), from the key's history (a watch from `after + 1`). With the history compacted
    /// away, only the key's current value can tell.
    fn landed(
        &self,
        key: &str,
        value: &[u8],
        after: i64,
        deadline: Instant,
    ) -> Result<Option<i64>, EtcdError> {
        let (now, _) = self.etcd.get(key, None)?;
        let Some(now) = now else {
            return Ok(None);
        };
        if now.mod_revision <= after {
            return Ok(None);
        }
        if now.value == value {
            return Ok(Some(now.mod_revision));
        }
        let mut watch = match self.etcd.watch(key, after + 1) {
            Ok(watch) => watch,
            Err(EtcdError::Compacted(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Every write after `after` up to `now` is in the history: bounded by the deadline.
        while Instant::now() < deadline {
            let batch = watch.next()?;
            if let Some(first) = batch.events.iter().find(|e| e.key == key.as_bytes()) {
                return Ok((first.value.as_deref() == Some(value)).then_some(first.mod_revision));
            }
        }
        Err(EtcdError::Unreachable(format!(
            "the history of {key} did not arrive in time"
        )))
    }

    /// Takes the fleet-wide right to probe down `address` now if no host took it in the last
    /// `interval_ms` (a compare-and-swap on its probe key): one probe per interval, fleet-wide.
    pub fn try_probe_lease(
        &self,
        domain: &Domain,
        address: &Address,
        interval_ms: u64,
        host: &str,
    ) -> Result<bool, FleetError> {
        let key = self.probe_key(domain, address);
        let now = mcshm_table::clock::now_ms();
        let (current, _) = self.etcd.get(&key, None)?;
        let expected = match &current {
            Some(kv) if !probe_lease_free(&kv.value, now, interval_ms) => return Ok(false),
            Some(kv) => Some(kv.mod_revision),
            None => None,
        };
        let value = probe_lease_value(now, host);
        Ok(matches!(
            self.etcd.put_if(&key, value.as_bytes(), expected, None)?,
            PutIf::Written(_)
        ))
    }

    /// The hosts whose agents are alive (their records are on the agents' leases).
    pub fn hosts(&self) -> Result<Vec<Result<HostRecord, FleetError>>, FleetError> {
        let (kvs, _) = self.etcd.list(&self.hosts_prefix())?;
        Ok(kvs
            .iter()
            .map(|kv| {
                serde_json::from_slice::<HostRecord>(&kv.value).map_err(|e| FleetError::Hostile {
                    key: String::from_utf8_lossy(&kv.key).into_owned(),
                    why: e.to_string(),
                })
            })
            .collect())
    }
}

impl FleetCommit {
    /// This commit's fences, written at `revision`.
    fn at(self, revision: i64) -> FleetCommit {
        FleetCommit {
            revision,
            changed: true,
            ..self
        }
    }
}

/// Whether `table` takes `server` out of service: deleted, or down.
fn out_of_service(table: &Table, server: &Address) -> bool {
    table
        .servers
        .iter()
        .find(|s| s.address.same_server(server))
        .is_none_or(|s| s.state == mcshm_table::State::Down)
}

/// Whether `server` is new to the table since `before` (none: not a change of servers).
fn new_in(before: Option<&Table>, server: &Address) -> bool {
    before.is_some_and(|b| !b.servers.iter().any(|s| s.address.same_server(server)))
}

/// The `changed` stamp of a document this process writes now.
pub fn changed_by(by: &str) -> Changed {
    Changed {
        by: by.to_string(),
        host: hostname(),
        pid: std::process::id(),
        ms: mcshm_table::clock::now_ms(),
    }
}

/// This machine's name (/proc/sys/kernel/hostname), or "localhost".
pub use mcshm_table::processes::host_name as hostname;

#[cfg(test)]
mod tests {
    //! The key layout and the values under it, with no etcd: what every agent and `mcadmin`
    //! of a fleet must agree on.
    use super::*;
    use mcshm_table::table::{Server, State};

    fn keys() -> Keys {
        Keys::new("/mcshm/").unwrap()
    }

    fn domain(name: &str) -> Domain {
        Domain::new(name).unwrap()
    }

    #[test]
    fn every_key_lives_under_the_prefix_as_the_layout_says() {
        let keys = keys();
        let app = domain("app1");
        let address = Address::parse("10.0.0.1:11211").unwrap();
        assert_eq!(keys.domains_prefix(), "/mcshm/domains/");
        assert_eq!(keys.domain_key(&app), "/mcshm/domains/app1");
        assert_eq!(keys.hosts_prefix(), "/mcshm/hosts/");
        assert_eq!(keys.host_key("web1"), "/mcshm/hosts/web1");
        assert_eq!(
            keys.probe_key(&app, &address),
            "/mcshm/probes/app1/10.0.0.1:11211"
        );
        assert_eq!(
            keys.replay_key(&app, &address),
            "/mcshm/replays/app1/10.0.0.1:11211"
        );
        assert_eq!(
            keys.replay_ack_key("17f0a", "web1"),
            "/mcshm/replay-acks/17f0a/web1"
        );
        // A domain's key is under the prefix its watch and list read.
        assert!(keys.domain_key(&app).starts_with(&keys.domains_prefix()));
        assert!(
            keys.replay_key(&app, &address)
                .starts_with(&keys.replays_prefix())
        );
        assert!(
            keys.replay_ack_key("1", "w")
                .starts_with(&keys.replay_acks_prefix("1"))
        );
        // Answers are not under the requests' prefix (the agents watch only requests).
        assert!(
            !keys
                .replay_acks_prefix("1")
                .starts_with(&keys.replays_prefix())
        );
        assert!(keys.host_key("web1").starts_with(&keys.hosts_prefix()));
        // Another prefix: the same layout below it, nothing shared with the first.
        let other = Keys::new("/team/b/").unwrap();
        assert_eq!(other.domain_key(&app), "/team/b/domains/app1");
        assert!(!other.domain_key(&app).starts_with(&keys.domains_prefix()));
    }

    #[test]
    fn a_domain_key_names_its_domain_and_no_other_key_names_one() {
        let keys = keys();
        for name in ["app1", "default", "a.b-c_d"] {
            let key = keys.domain_key(&domain(name));
            assert_eq!(keys.domain_of_key(key.as_bytes()), Some(domain(name)));
        }
        for key in [
            &b"/mcshm/hosts/web1"[..],
            b"/mcshm/probes/app1/10.0.0.1:11211",
            b"/other/domains/app1",
            b"/mcshm/domains/",
            b"/mcshm/domains/.hidden",
            b"/mcshm/domains/a/b",
            b"mcshm/domains/app1",
            b"/mcshm/domains/\xff\xfe",
        ] {
            assert_eq!(
                keys.domain_of_key(key),
                None,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn a_prefix_is_a_key_path_that_starts_and_ends_with_a_slash() {
        for good in ["/", "/mcshm/", "/a/b/c/", &format!("/{}/", "x".repeat(254))] {
            assert!(Keys::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "mcshm/",
            "/mcshm",
            "/mc shm/",
            "/mc\nshm/",
            "/mc\tshm/",
            &format!("/{}/", "x".repeat(255)),
        ] {
            let e = Keys::new(bad).unwrap_err();
            assert!(matches!(e, EtcdError::Config(_)), "{bad:?}: {e}");
            assert!(e.to_string().contains("--etcd-prefix"), "{e}");
        }
    }

    fn table() -> Table {
        let mut down = Server::new(Address::parse("10.0.0.2:11211").unwrap());
        down.state = State::Down;
        down.reason = "2 consecutive failures".into();
        down.since_ms = 5;
        Table {
            servers: vec![Server::new(Address::parse("10.0.0.1:11211").unwrap()), down],
            ..Table::default()
        }
    }

    #[test]
    fn a_domain_value_decodes_at_the_revision_that_wrote_it() {
        let changed = Changed {
            by: "mcadmin".into(),
            host: "web1".into(),
            pid: 7,
            ms: 9,
        };
        let kv = Kv {
            key: b"/mcshm/domains/app1".to_vec(),
            value: document::encode(&table(), &changed),
            mod_revision: 42,
        };
        let decoded = decode(&kv).unwrap();
        assert_eq!(decoded.revision, 42);
        assert_eq!(decoded.changed, changed);
        assert_eq!(decoded.table.servers.len(), 2);
        assert_eq!(decoded.table.servers[1].state, State::Down);
        assert_eq!(decoded.table.servers[1].reason, "2 consecutive failures");
    }

    #[test]
    fn a_value_that_is_not_a_table_is_refused_naming_its_key() {
        for value in [
            &b"not json"[..],
            b"{}",
            b"{\"servers\": [{\"address\": \"\"}]}",
        ] {
            let kv = Kv {
                key: b"/mcshm/domains/app1".to_vec(),
                value: value.to_vec(),
                mod_revision: 3,
            };
            match decode(&kv) {
                Err(FleetError::Hostile { key, why }) => {
                    assert_eq!(key, "/mcshm/domains/app1");
                    assert!(!why.is_empty());
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(value)),
            }
        }
    }

    #[test]
    fn the_probe_lease_is_free_once_its_interval_has_passed_since_it_was_taken() {
        let taken = probe_lease_value(10_000, "web1");
        assert!(!probe_lease_free(taken.as_bytes(), 10_000, 5_000));
        assert!(!probe_lease_free(taken.as_bytes(), 14_999, 5_000));
        assert!(probe_lease_free(taken.as_bytes(), 15_000, 5_000));
        assert!(probe_lease_free(taken.as_bytes(), 10_000, 0), "interval 0");
        // A clock that went back: taken "in the future", so still taken.
        assert!(!probe_lease_free(taken.as_bytes(), 9_000, 5_000));
        // No overflow at the end of time.
        let last = probe_lease_value(u64::MAX - 1, "web1");
        assert!(!probe_lease_free(last.as_bytes(), u64::MAX - 1, u64::MAX));
    }

    #[test]
    fn a_probe_key_value_names_the_time_and_the_host_and_a_damaged_one_frees_the_lease() {
        let value: serde_json::Value =
            serde_json::from_str(&probe_lease_value(1234, "web\"1")).unwrap();
        assert_eq!(value["ms"], 1234);
        assert_eq!(value["host"], "web\"1");
        for damaged in [
            &b""[..],
            b"garbage",
            b"{}",
            b"{\"ms\": \"soon\"}",
            b"{\"ms\": -5}",
        ] {
            // As if taken at 0: free once the interval has passed since the epoch.
            let what = String::from_utf8_lossy(damaged);
            assert!(probe_lease_free(damaged, 1_000_000, 1_000_000), "{what:?}");
            assert!(!probe_lease_free(damaged, 999_999, 1_000_000), "{what:?}");
        }
    }

    #[test]
    fn a_host_record_keeps_the_field_names_mcadmin_hosts_reads() {
        let mut record = HostRecord {
            name: "web1".into(),
            pid: 4242,
            started_ms: 1,
            updated_ms: 2,
            domains: Default::default(),
        };
        record.domains.insert(
            "app1".into(),
            HostDomain {
                revision: 17,
                applied_ms: 3,
                clients: 4,
            },
        );
        let json: serde_json::Value = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "web1", "pid": 4242, "started_ms": 1, "updated_ms": 2,
                "domains": {"app1": {"revision": 17, "applied_ms": 3, "clients": 4}}
            })
        );
        let back: HostRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }
}
