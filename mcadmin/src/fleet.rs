//! mcadmin with `--etcd`: what the verbs do differently on the fleet's tables (reached through
//! [`crate::store::Store`]), and the fleet's own commands (`sync`, the host agent; `hosts`).
//! Edits run the very closures the local verbs run, inside an etcd compare-and-swap instead of
//! a registry transaction.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use libmcshm::access::Access;
use libmcshm::lifecycle::LoadPlan;
use libmcshm::table::{Server, State, Table};
use libmcshm::{Address, Domain, Snapshot, Timeouts, lifecycle};
use mcshm_fleet::sync::{Agent, SyncEvent, SyncOptions};
use mcshm_fleet::{Etcd, EtcdConfig, Fleet, FleetCommit, FleetError, FleetTable};
use serde_json::json;

use crate::cli::EtcdArgs;
use crate::show;
use crate::show::print;
use crate::{Exit, Invocation};
use libmcshm::clock::utc;
use mcshm_cli::UsageError;

/// The fleet named by `--etcd` (and its TLS/auth options), if given.
pub fn connect(args: &EtcdArgs) -> Result<Option<Fleet>> {
    let Some(endpoints) = &args.etcd else {
        return Ok(None);
    };
    let config = EtcdConfig {
        endpoints: EtcdConfig::parse_endpoints(endpoints).map_err(usage)?,
        cacert: args.cacert.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
        user: args.user.clone(),
        timeout: args.etcd_timeout,
    };
    let etcd = Etcd::new(config).map_err(usage)?;
    Ok(Some(Fleet::new(etcd, &args.etcd_prefix).map_err(usage)?))
}

fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    UsageError(e.to_string()).into()
}

/// The exit code of a fleet error.
pub fn exit_for(err: &FleetError) -> Exit {
    match err {
        FleetError::Edit(e) => crate::exit_for_kind(e.kind()),
        FleetError::NoDomain(_) => Exit::NotFound,
        FleetError::Etcd(_) | FleetError::Hostile { .. } => Exit::Etcd,
        FleetError::Fence { .. } => Exit::Server,
    }
}

/// `load` on the fleet: replaces the table, even a damaged value, through the same transitions
/// as a local load (a server that joins up or comes back up is flushed first; see
/// [`libmcshm::lifecycle::prepare_load`]).
pub fn load(
    fleet: &Fleet,
    domain: &Domain,
    loaded: &mut Table,
    timeouts: Timeouts,
    access: &Access,
) -> Result<(FleetCommit, LoadPlan)> {
    let current = fleet.read(domain).ok().flatten();
    let plan = libmcshm::lifecycle::prepare_load(
        current.as_ref().map(|c| &c.table.servers[..]),
        loaded,
        None, // no host's log vouches for the fleet: joining servers are flushed
        timeouts,
        access,
    );
    let commit = fleet.transact_with(domain, true, true, "mcadmin load", |t| {
        plan.apply(t, loaded);
        Ok(())
    })?;
    Ok((commit, plan))
}

/// The domain's fleet table, or "no such domain".
fn read(fleet: &Fleet, domain: &Domain) -> Result<FleetTable> {
    Ok(fleet
        .read(domain)?
        .ok_or_else(|| FleetError::NoDomain(domain.to_string()))?)
}

/// The domain's fleet table, and the same shown as a local table is (its version is the fleet
/// revision).
pub fn snapshot(fleet: &Fleet, domain: &Domain) -> Result<(FleetTable, Snapshot)> {
    let table = read(fleet, domain)?;
    let snapshot = Snapshot {
        domain: domain.to_string(),
        version: table.revision as u64,
        changed_ms: table.changed.ms,
        writer_pid: table.changed.pid,
        writer_uid: 0,
        servers: table.table.servers.clone(),
        policy: table.table.policy,
        next_id: 0,
        fleet_revision: table.revision as u64,
        buckets: table.table.buckets.clone(),
    };
    Ok((table, snapshot))
}

/// Every domain of the fleet, with its revision and servers up (a refused value is listed as
/// an error and makes the exit status 6).
pub fn domains(ctx: &Invocation, fleet: &Fleet) -> Result<Exit> {
    let (tables, revision) = fleet.read_all()?;
    let mut failed = false;
    let mut rows = Vec::new();
    let mut docs = Vec::new();
    for (domain, table) in &tables {
        match table {
            Ok(t) => {
                let up = t
                    .table
                    .servers
                    .iter()
                    .filter(|s| s.state == State::Up)
                    .count();
                rows.push(format!(
                    "{domain}  {up}/{} up  fleet revision {}\n",
                    t.table.servers.len(),
                    t.revision
                ));
                docs.push(json!({"domain": domain.as_str(), "revision": t.revision,
                    "servers": t.table.servers.len(), "up": up}));
            }
            Err(e) => {
                eprintln!("mcadmin: {e}");
                failed = true;
                docs.push(json!({"domain": domain.as_str(), "error": e.to_string()}));
            }
        }
    }
    print(
        ctx,
        || json!({"revision": revision, "domains": docs}),
        || rows.concat(),
    )?;
    Ok(if failed { Exit::Etcd } else { Exit::Success })
}

/// `up` for the fleet: [`lifecycle::bring_up_in`] on the fleet's table. A down server is
/// flushed (rejoin policy) by this mcadmin first, and only then marked up for the fleet; under
/// `replay`, every host that mirrors the domain deletes on it what its clients logged instead
/// (`mcshm_fleet::replay`), and it is flushed if one cannot; a draining one stops draining.
pub fn bring_up(
    fleet: &Arc<Fleet>,
    dir: &Path,
    domain: &Domain,
    addresses: &[Address],
    no_flush: bool,
) -> Result<FleetCommit> {
    let mut table = Rejoining {
        fleet,
        dir,
        domain,
        revision: 0,
        commit: None,
    };
    lifecycle::bring_up_in(&mut table, addresses, no_flush, Timeouts::default())?;
    Ok(table.commit.unwrap_or(FleetCommit {
        revision: table.revision,
        ..FleetCommit::default()
    }))
}

/// The fleet's table of a domain as a rejoin reads and edits it: one read, and an etcd
/// compare-and-swap transaction for the edit.
struct Rejoining<'a> {
    fleet: &'a Arc<Fleet>,
    /// Holds the domain's access files, which the flushes present to the servers.
    dir: &'a Path,
    domain: &'a Domain,
    /// The fleet revision read.
    revision: i64,
    /// What the edit committed, if it ran.
    commit: Option<FleetCommit>,
}

impl lifecycle::RejoinTable for Rejoining<'_> {
    type Error = anyhow::Error;

    fn domain(&self) -> String {
        self.domain.to_string()
    }

    fn read(&mut self) -> Result<Table> {
        let table = read(self.fleet, self.domain)?;
        self.revision = table.revision;
        Ok(table.table)
    }

    fn commit(&mut self, edit: &mut dyn FnMut(&mut Table) -> libmcshm::Result<()>) -> Result<()> {
        self.commit = Some(self.fleet.transact(self.domain, false, "mcadmin", edit)?);
        Ok(())
    }

    fn access(&self) -> libmcshm::Result<Access> {
        Access::load(self.dir, self.domain)
    }

    /// The fleet's table is every host's: the reason names this one.
    fn signature(&self) -> String {
        format!(" on {}", mcshm_fleet::store::hostname())
    }

    fn name(&self, server: &Server) -> lifecycle::Named {
        lifecycle::Named::Address(server.address.clone())
    }

    /// Every host that mirrors the domain vouches for what its own clients wrote.
    fn missed(&mut self) -> Option<lifecycle::Missed> {
        let ask = mcshm_fleet::replay::ReplayAsk {
            by: mcshm_fleet::store::hostname(),
            deadline: mcshm_fleet::replay::DEFAULT_DEADLINE,
            timeouts: Timeouts::default(),
            access: Access::load(self.dir, self.domain).ok()?,
        };
        let (fleet, domain) = (self.fleet.clone(), self.domain.clone());
        Some(mcshm_fleet::replay::missed(fleet, domain, ask))
    }
}

/// Whether a host's table of a domain follows the fleet's: the revision it applied against
/// the fleet's table now ("current", or "behind" with the fleet's revision; a domain the
/// fleet no longer has is "gone").
fn host_lag(applied: i64, fleet: Option<i64>) -> (String, serde_json::Value) {
    match fleet {
        Some(now) if applied >= now => (
            "current".into(),
            json!({"fleet_revision": now, "current": true}),
        ),
        Some(now) => (
            format!("behind (fleet at {now})"),
            json!({"fleet_revision": now, "current": false}),
        ),
        None => (
            "gone from the fleet".into(),
            json!({"fleet_revision": null, "current": false}),
        ),
    }
}

pub fn hosts(ctx: &Invocation, fleet: &Fleet) -> Result<Exit> {
    let records = fleet.hosts()?;
    // What each domain's fleet table is at now, to show which hosts lag behind it.
    let (tables, _) = fleet.read_all()?;
    let fleet_revisions: std::collections::HashMap<String, i64> = tables
        .into_iter()
        .filter_map(|(domain, table)| Some((domain.to_string(), table.ok()?.revision)))
        .collect();
    let mut failed = false;
    let mut rows = Vec::new();
    let mut docs = Vec::new();
    for record in records {
        match record {
            Ok(h) => {
                let mut lags = serde_json::Map::new();
                for (domain, d) in &h.domains {
                    let (lag, lag_json) =
                        host_lag(d.revision, fleet_revisions.get(domain).copied());
                    lags.insert(domain.clone(), lag_json);
                    rows.push([
                        h.name.clone(),
                        domain.clone(),
                        d.revision.to_string(),
                        lag,
                        utc(d.applied_ms),
                        d.clients.to_string(),
                        h.pid.to_string(),
                    ]);
                }
                let mut doc = serde_json::to_value(&h)?;
                doc["lag"] = serde_json::Value::Object(lags);
                docs.push(doc);
            }
            Err(e) => {
                eprintln!("mcadmin: {e}");
                failed = true;
            }
        }
    }
    let header = [
        "HOST",
        "DOMAIN",
        "REVISION",
        "LAG",
        "APPLIED",
        "CLIENTS",
        "AGENT PID",
    ]
    .map(String::from);
    print(
        ctx,
        || json!({"hosts": docs}),
        || show::align(&header, &rows),
    )?;
    Ok(if failed { Exit::Etcd } else { Exit::Success })
}

pub struct SyncArgs<'a> {
    pub domains: &'a [String],
    pub all: bool,
    pub name: Option<&'a str>,
    pub probe_timeout: Duration,
    pub lease_ttl: i64,
    pub replay_deadline: Duration,
    pub fence_interval: Duration,
}

/// The host agent, until SIGTERM/SIGINT.
pub fn sync(ctx: &Invocation, fleet: Arc<Fleet>, args: SyncArgs<'_>) -> Result<Exit> {
    let domains = match args.all {
        true => Vec::new(),
        false => args
            .domains
            .iter()
            .map(|d| Domain::new(d))
            .collect::<libmcshm::Result<Vec<_>>>()?,
    };
    let name = args
        .name
        .map(str::to_string)
        .unwrap_or_else(mcshm_fleet::store::hostname);
    if name.is_empty()
        || name.len() > 253
        || name.contains(['/', ' '])
        || name.chars().any(char::is_control)
    {
        return Err(UsageError(format!(
            "invalid host name '{name}': 1-253 characters without '/', spaces or control characters"
        ))
        .into());
    }
    let timeout = args.probe_timeout;
    std::fs::create_dir_all(&ctx.local.dir)
        .with_context(|| format!("cannot create {}", ctx.local.dir.display()))?;
    let stop = crate::lifecycle::stop_flag()?;
    let mut agent = Agent::new(
        fleet,
        SyncOptions {
            name: name.clone(),
            dir: ctx.local.dir.clone(),
            domains,
            all: args.all,
            ownership: ctx.local.ownership,
            probe_timeouts: Timeouts {
                connect: timeout,
                io: timeout,
            },
            lease_ttl_s: args.lease_ttl,
            replay_deadline: args.replay_deadline,
            fence_interval: args.fence_interval,
        },
    );
    let json = ctx.json;
    agent.run(&stop, &mut |event| print_event(json, &name, &event));
    Ok(Exit::Success)
}

fn print_event(json: bool, host: &str, event: &SyncEvent) {
    let now = libmcshm::clock::now_ms();
    let (kind, domain, detail) = match event {
        SyncEvent::Active { domain } => ("active", domain.as_str(), String::new()),
        SyncEvent::Standby { domain } => ("standby", domain.as_str(), String::new()),
        SyncEvent::Applied { domain, revision } => {
            ("applied", domain.as_str(), format!("revision {revision}"))
        }
        SyncEvent::Pushed {
            domain,
            revision,
            marks,
        } => (
            "pushed",
            domain.as_str(),
            format!("revision {revision}: {}", marks.join(", ")),
        ),
        SyncEvent::Superseded { domain, marks } => {
            ("superseded", domain.as_str(), marks.join(", "))
        }
        SyncEvent::Refused { key, why } => ("refused", "", format!("{key}: {why}")),
        SyncEvent::Connected => ("connected", "", String::new()),
        SyncEvent::Disconnected { why } => ("disconnected", "", why.clone()),
        SyncEvent::Resync { domain } => (
            "resync",
            domain.as_str(),
            "revision compacted away: local marks not pushed are dropped".into(),
        ),
        SyncEvent::Probed {
            domain,
            server,
            result,
        } => ("probed", domain.as_str(), format!("{server}: {result}")),
        SyncEvent::Replayed {
            domain,
            server,
            result,
        } => ("replayed", domain.as_str(), format!("{server}: {result}")),
        SyncEvent::Rewatched { why } => ("rewatched", "", why.clone()),
        SyncEvent::Fenced { domain, action } => ("fenced", domain.as_str(), action.clone()),
    };
    let mut out = io::stdout().lock();
    let _ = if json {
        writeln!(
            out,
            "{}",
            json!({"time_ms": now, "host": host, "event": kind, "domain": domain, "detail": detail})
        )
    } else {
        writeln!(out, "{} {kind} {domain} {detail}", utc(now))
    };
    let _ = out.flush();
    if matches!(
        event,
        SyncEvent::Refused { .. } | SyncEvent::Disconnected { .. } | SyncEvent::Rewatched { .. }
    ) {
        eprintln!("mcadmin sync: {kind} {detail}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_current_behind_or_holds_a_domain_the_fleet_no_longer_has() {
        assert_eq!(host_lag(9, Some(9)).0, "current");
        assert_eq!(
            host_lag(12, Some(9)).0,
            "current",
            "a newer local view is not lag"
        );
        assert_eq!(host_lag(7, Some(9)).0, "behind (fleet at 9)");
        assert_eq!(
            host_lag(7, Some(9)).1,
            json!({"fleet_revision": 9, "current": false})
        );
        assert_eq!(host_lag(7, None).0, "gone from the fleet");
    }
}
