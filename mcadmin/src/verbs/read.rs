//! The verbs that show the domain's table (`list`, `status`, `dump`, `policy` without values,
//! `domains`) as the [`Store`](crate::store::Store) reads it, this host's or the fleet's; and
//! `wait`, which waits for this host's table to change.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::Result;
use libmcshm::{Address, Registry, State, dump};
use serde_json::json;

use crate::fleet;
use crate::show::{self, print};
use crate::store::Origin;
use crate::{Exit, Invocation};

/// `list`: the servers with their version, and who mirrors the table (local) or changed it
/// last (the fleet's).
pub fn list(ctx: &Invocation) -> Result<Exit> {
    let reading = ctx.store.read()?;
    let (snapshot, failures) = (&reading.snapshot, &reading.failures);
    match &reading.origin {
        Origin::Local(link) => {
            let missed = show::missed(&ctx.local.dir, &ctx.local.domain, snapshot);
            print(
                ctx,
                || {
                    let mut v = show::snapshot_json(snapshot, failures);
                    v["fleet"] = show::agent_json(snapshot, link);
                    show::add_missed_json(&mut v, &missed);
                    v
                },
                || {
                    let table = show::snapshot_table(snapshot, failures);
                    let (first, rest) = table.split_once('\n').unwrap_or((&table, ""));
                    format!(
                        "{first}\n{}{rest}{}{}",
                        show::agent_text(snapshot, link),
                        show::missed_text(snapshot, &missed),
                        show::marks_text(snapshot)
                    )
                },
            )?
        }
        Origin::Fleet { revision, changed } => print(
            ctx,
            || {
                let mut v = show::snapshot_json(snapshot, failures);
                v["revision"] = json!(revision);
                v["changed_by"] = json!(changed.by);
                v["changed_host"] = json!(changed.host);
                v
            },
            || {
                format!(
                    "domain {}  fleet revision {revision}  changed {} by {} on {} pid {}\npolicy: {}\n{}{}",
                    ctx.local.domain,
                    libmcshm::clock::utc(changed.ms),
                    changed.by,
                    changed.host,
                    changed.pid,
                    dump::policy_text(&snapshot.policy),
                    show::buckets_text(snapshot),
                    show::servers_table(&snapshot.servers, failures)
                )
            },
        )?,
    }
    Ok(Exit::Success)
}

/// Prints one server of the domain; exit 0 when up, 1 otherwise.
pub fn status(ctx: &Invocation, address: &Address) -> Result<Exit> {
    let snapshot = ctx.store.snapshot()?;
    let found = snapshot
        .find(address)
        .ok_or_else(|| libmcshm::Error::NoServer {
            server: address.to_string(),
            domain: ctx.local.domain.to_string(),
        })?;
    print(
        ctx,
        || show::server_json(found),
        || show::server_status(found),
    )?;
    Ok(match found.state {
        State::Up => Exit::Success,
        State::Down | State::Draining => Exit::No,
    })
}

/// `dump`: the table as the text `load` reads; with `reasons`, the run time's reasons too.
pub fn dump(ctx: &Invocation, reasons: bool) -> Result<Exit> {
    let snapshot = ctx.store.snapshot()?;
    let reasons = match reasons {
        true => dump::Reasons::All,
        false => dump::Reasons::Operator,
    };
    io::stdout().write_all(dump::to_text(&snapshot, reasons).as_bytes())?;
    Ok(Exit::Success)
}

/// `policy` without values: shows the policy.
pub fn policy(ctx: &Invocation) -> Result<Exit> {
    let p = ctx.store.snapshot()?.policy;
    print(
        ctx,
        || show::policy_json(&p),
        || dump::policy_text(&p) + "\n",
    )?;
    Ok(Exit::Success)
}

/// `domains`: every domain of this host's registry, or of the fleet.
pub fn domains(ctx: &Invocation) -> Result<Exit> {
    if let Some(fleet) = ctx.store.fleet() {
        return fleet::domains(ctx, fleet);
    }
    let rows = show::scan_domains(&ctx.local.dir)?;
    let mut failed = false;
    for row in &rows {
        if let Err(err) = &row.table {
            eprintln!("mcadmin: {err}");
            failed = true;
        }
    }
    print(
        ctx,
        || show::domains_json(&rows),
        || show::domains_table(&rows),
    )?;
    Ok(if failed {
        Exit::Registry
    } else {
        Exit::Success
    })
}

pub fn wait(ctx: &Invocation, since: Option<u64>, timeout: Option<Duration>) -> Result<Exit> {
    let timeout = timeout.unwrap_or(Duration::MAX);
    let mut registry = Registry::open(&ctx.local.dir, &ctx.local.domain)?;
    let since = since.unwrap_or_else(|| registry.version());
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let left = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        if let Some(version) = registry.wait_for_change(since, left) {
            print(
                ctx,
                || json!({"domain": ctx.local.domain.as_str(), "version": version}),
                || format!("{version}\n"),
            )?;
            return Ok(Exit::Success);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Exit::No);
        }
    }
}
