//! How mcadmin prints tables: aligned text for people, JSON for scripts.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use libmcshm::clock::now_ms;
use libmcshm::clock::utc;
use libmcshm::registry::LogStats;
use libmcshm::table::Policy;
use libmcshm::{Domain, Registry, Server, Snapshot, State};
use serde_json::{Value, json};

/// `failures[i]`: consecutive failures counted for server i (from the live region).
pub fn snapshot_json(snapshot: &Snapshot, failures: &[u32]) -> Value {
    let servers: Vec<Value> = snapshot
        .servers
        .iter()
        .zip(failures)
        .map(|(s, f)| {
            let mut v = server_json(s);
            v["failures"] = json!(f);
            v
        })
        .collect();
    let mut v = json!({
        "domain": snapshot.domain,
        "version": snapshot.version,
        "changed_ms": snapshot.changed_ms,
        "writer_pid": snapshot.writer_pid,
        "writer_uid": snapshot.writer_uid,
        "policy": policy_json(&snapshot.policy),
        "servers": servers,
    });
    // A vbucket domain: the map's shape, and each server's buckets (owned, replicas held).
    if let Some(map) = &snapshot.buckets {
        let shape = map.shape();
        v["bucket_map"] = json!({"buckets": shape.buckets, "replicas": shape.replicas,
                                 "moving": map.moving()});
        let counts = map.counts(snapshot.servers.len());
        for (server, (owned, held)) in v["servers"]
            .as_array_mut()
            .into_iter()
            .flatten()
            .zip(counts)
        {
            server["buckets"] = json!(owned);
            server["bucket_replicas"] = json!(held);
        }
    }
    v
}

/// The bucket map line of a vbucket domain's `list` (empty for other domains).
pub fn buckets_text(snapshot: &Snapshot) -> String {
    let Some(map) = &snapshot.buckets else {
        return String::new();
    };
    let shape = map.shape();
    format!(
        "buckets: {} ({} replica column{}), {} moving; per server: mcadmin buckets list\n",
        shape.buckets,
        shape.replicas,
        if shape.replicas == 1 { "" } else { "s" },
        map.moving()
    )
}

pub fn policy_json(p: &Policy) -> Value {
    json!({
        "failover": p.failover.as_str(),
        "failure_limit": p.failure_limit,
        "rejoin": p.rejoin.as_str(),
        "replicas": p.replicas,
        "warm_window_s": p.warm_window_s,
        "distribution": p.distribution.as_str(),
        "hash": p.distribution.hash_name(),
        "prefix": p.prefix.to_string(),
        "fence": p.fence.as_str(),
    })
}

pub fn server_json(server: &Server) -> Value {
    json!({
        "address": server.address.to_string(),
        "host": server.address.host(),
        "port": server.address.port(),
        "weight": server.weight,
        "state": server.state.as_str(),
        "retry_interval": server.retry_interval,
        "since_ms": server.since_ms,
        "changed_by_pid": server.changed_by_pid,
        "changed_by_uid": server.changed_by_uid,
        "reason": server.reason,
        "id": server.id,
        "warm_until_ms": server.warm_until_ms,
        "down_by": down_by(server),
        "strays_since": server.strays_since,
    })
}

/// What each down server missed, from the domain's invalidation log (rejoin `replay`): per
/// server position, `None` when the server is up or the domain has no log.
pub fn missed(dir: &Path, domain: &Domain, snapshot: &Snapshot) -> Vec<Option<LogStats>> {
    let log = libmcshm::registry::Invalidations::open(dir, domain)
        .ok()
        .flatten();
    snapshot
        .servers
        .iter()
        .map(|s| {
            let log = log.as_ref().filter(|_| s.state == State::Down)?;
            Some(log.stats(s.id))
        })
        .collect()
}

/// `"missed_keys"` and `"missed_overflowed"` on each down server of a `list --json`, when the
/// domain keeps a log.
pub fn add_missed_json(list: &mut Value, missed: &[Option<LogStats>]) {
    let Some(servers) = list["servers"].as_array_mut() else {
        return;
    };
    for (server, stats) in servers.iter_mut().zip(missed) {
        if let Some(stats) = stats {
            server["missed_keys"] = json!(stats.keys);
            server["missed_overflowed"] = json!(stats.overflowed);
        }
    }
}

/// The lines under `list` that say what each down server missed and what its rejoin will do.
pub fn missed_text(snapshot: &Snapshot, missed: &[Option<LogStats>]) -> String {
    let mut out = String::new();
    for (server, stats) in snapshot.servers.iter().zip(missed) {
        let Some(stats) = stats else { continue };
        let then = match stats.overflowed {
            true => "its log overflowed: it will be flushed when it comes back",
            false => "deleted on it when it comes back",
        };
        out += &format!("{} missed {} writes: {then}\n", server.address, stats.keys);
    }
    out
}

/// The lines under `list` that name each marked server: it may hold stray copies of keys a
/// change moved away, so every write also deletes its key there until it is swept.
pub fn marks_text(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    for server in snapshot.servers.iter().filter(|s| s.strays_since != 0) {
        out += &format!(
            "{} marked since version {}: it may hold copies of keys it lost, so every write \
             also deletes its key there until it is swept (mcadmin settle, mcadmin watch or \
             mcproxy)\n",
            server.address, server.strays_since,
        );
    }
    out
}

/// Who holds a down server down: "operator" (until `mcadmin up`) or "failures" (retried
/// automatically); `None` when it is not down.
pub fn down_by(server: &Server) -> Option<&'static str> {
    match (server.state, server.held) {
        (State::Down, true) => Some("operator"),
        (State::Down, false) => Some("failures"),
        _ => None,
    }
}

/// The STATE column: `down` says by whom.
fn state_text(server: &Server) -> String {
    match down_by(server) {
        Some(by) => format!("down ({by})"),
        None => server.state.to_string(),
    }
}

pub fn snapshot_table(snapshot: &Snapshot, failures: &[u32]) -> String {
    let mut out = format!(
        "domain {}  version {}  changed {} by pid {} uid {}\npolicy: {}\n",
        snapshot.domain,
        snapshot.version,
        utc(snapshot.changed_ms),
        snapshot.writer_pid,
        snapshot.writer_uid,
        libmcshm::dump::policy_text(&snapshot.policy),
    );
    out += &buckets_text(snapshot);
    out += &servers_table(&snapshot.servers, failures);
    out
}

/// The server rows of `list`.
pub fn servers_table(servers: &[Server], failures: &[u32]) -> String {
    let rows: Vec<[String; 7]> = servers
        .iter()
        .zip(failures)
        .map(|(s, f)| {
            [
                s.address.to_string(),
                s.weight.to_string(),
                state_text(s),
                s.retry_interval.to_string(),
                f.to_string(),
                utc(s.since_ms),
                s.reason.clone(),
            ]
        })
        .collect();
    let header = [
        "ADDRESS", "WEIGHT", "STATE", "RETRY", "FAILURES", "SINCE", "REASON",
    ]
    .map(String::from);
    align(&header, &rows)
}

/// The fleet line of a local `list`: the revision mirrored and the agent's link to etcd.
pub fn agent_text(snapshot: &Snapshot, link: &libmcshm::AgentLink) -> String {
    if snapshot.fleet_revision == 0 && link.agent.is_none() {
        return String::new();
    }
    let agent = match link.agent {
        None => "no agent".to_string(),
        Some(p) if !p.is_alive() => format!("agent pid {} not running", p.pid),
        Some(p) if link.connected => {
            format!("agent pid {} connected since {}", p.pid, utc(link.since_ms))
        }
        Some(p) => format!(
            "agent pid {} CUT OFF from etcd since {} (serving this table)",
            p.pid,
            utc(link.since_ms)
        ),
    };
    let fenced = match link.fenced_answers {
        0 => String::new(),
        n => format!("  {n} answers not used: fenced above this table (it lagged the fleet)"),
    };
    format!(
        "fleet revision {}  {agent}{fenced}\n",
        snapshot.fleet_revision
    )
}

pub fn agent_json(snapshot: &Snapshot, link: &libmcshm::AgentLink) -> Value {
    json!({
        "revision": snapshot.fleet_revision,
        "agent_pid": link.agent.map(|p| p.pid),
        "agent_running": link.agent.is_some_and(|p| p.is_alive()),
        "connected": link.connected,
        "since_ms": link.since_ms,
        "fenced_answers": link.fenced_answers,
    })
}

pub fn server_status(server: &Server) -> String {
    let mut line = format!(
        "{} {} since {}",
        server.address,
        state_text(server),
        utc(server.since_ms)
    );
    if !server.reason.is_empty() {
        line += &format!(": {}", server.reason);
    }
    line + "\n"
}

/// One registry file found by `domains`.
pub struct DomainRow {
    pub domain: String,
    pub table: Result<Arc<Snapshot>, libmcshm::Error>,
}

/// Every `*.mcshm` file in `dir` (none if `dir` does not exist), sorted by domain, each with
/// its table or why it cannot be read.
pub fn scan_domains(dir: &Path) -> Result<Vec<DomainRow>> {
    let domains = libmcshm::metrics::domains_in(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?;
    Ok(domains
        .into_iter()
        .map(|domain| DomainRow {
            table: Registry::open(dir, &domain).and_then(|mut r| r.snapshot()),
            domain: domain.to_string(),
        })
        .collect())
}

pub fn domains_json(rows: &[DomainRow]) -> Value {
    Value::Array(
        rows.iter()
            .map(|row| match &row.table {
                Ok(s) => json!({
                    "domain": row.domain,
                    "servers": s.servers.len(),
                    "up": up_count(s),
                    "version": s.version,
                    "changed_ms": s.changed_ms,
                }),
                Err(e) => json!({"domain": row.domain, "error": e.to_string()}),
            })
            .collect(),
    )
}

pub fn domains_table(rows: &[DomainRow]) -> String {
    let now = now_ms();
    let rows: Vec<[String; 4]> = rows
        .iter()
        .map(|row| match &row.table {
            Ok(s) => [
                row.domain.clone(),
                format!("{}/{} up", up_count(s), s.servers.len()),
                s.version.to_string(),
                age(now.saturating_sub(s.changed_ms)),
            ],
            Err(_) => [
                row.domain.clone(),
                "unreadable".into(),
                "-".into(),
                "-".into(),
            ],
        })
        .collect();
    align(
        &["DOMAIN", "SERVERS", "VERSION", "CHANGED"].map(String::from),
        &rows,
    )
}

fn up_count(snapshot: &Snapshot) -> usize {
    snapshot
        .servers
        .iter()
        .filter(|s| s.state == State::Up)
        .count()
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn align<const N: usize>(header: &[String; N], rows: &[[String; N]]) -> String {
    let mut widths = header.each_ref().map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < N {
                line += &format!("{cell:<width$}  ", width = widths[i]);
            } else {
                line += cell;
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// Prints JSON (one document, newline-terminated) or text.
pub fn print(
    ctx: &crate::Invocation,
    json: impl FnOnce() -> serde_json::Value,
    text: impl FnOnce() -> String,
) -> Result<()> {
    let mut out = io::stdout().lock();
    if ctx.json {
        writeln!(out, "{}", json())?;
    } else {
        out.write_all(text().as_bytes())?;
    }
    out.flush()?;
    Ok(())
}
