//! `load --dry-run`: what loading a list would change in the domain's table, computed as `load`
//! would make it (see [`libmcshm::lifecycle::prepare_load`] and
//! [`libmcshm::lifecycle::LoadPlan::apply`]), and nothing written or flushed.

use std::path::Path;

use anyhow::Result;
use libmcshm::table::{Rejoin, Server, State, Table};
use libmcshm::{Snapshot, dump};
use serde_json::{Value, json};

use crate::show::{down_by, print};
use crate::{Exit, Invocation};

/// One server's change: the attribute, before and after.
struct Change {
    what: &'static str,
    was: String,
    becomes: String,
}

/// What a load would do to the table.
#[derive(Default)]
struct Preview {
    added: Vec<(Server, bool)>,
    removed: Vec<Server>,
    changed: Vec<(Server, Vec<Change>)>,
    reordered: bool,
    policy: Option<(String, String)>,
}

impl Preview {
    fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && !self.reordered
            && self.policy.is_none()
    }
}

/// The state as a list line writes it: `up`, `draining`, `down` (held by the operator) or
/// `down-by=failures`.
fn state_word(server: &Server) -> String {
    match down_by(server) {
        Some("failures") => "down (failures)".into(),
        Some(_) => "down (operator)".into(),
        None => server.state.to_string(),
    }
}

fn preview(current: Option<&Snapshot>, loaded: &Table, no_flush: bool) -> Preview {
    let servers: &[Server] = current.map_or(&[], |c| &c.servers);
    // Flushed first, as `prepare_load` decides: into an existing domain, unless --no-flush or
    // rejoin trust, a server the list has up that joins or was down.
    let flushes = current.is_some() && !no_flush && loaded.policy.rejoin != Rejoin::Trust;
    let mut preview = Preview::default();
    for server in &loaded.servers {
        let Some(old) = servers
            .iter()
            .find(|s| s.address.same_server(&server.address))
        else {
            preview
                .added
                .push((server.clone(), flushes && server.state == State::Up));
            continue;
        };
        let mut changes = Vec::new();
        let mut change = |what, was: String, becomes: String| {
            if was != becomes {
                changes.push(Change { what, was, becomes });
            }
        };
        change("weight", old.weight.to_string(), server.weight.to_string());
        change(
            "retry-interval",
            old.retry_interval.to_string(),
            server.retry_interval.to_string(),
        );
        let same_state = (old.state, old.held) == (server.state, server.held);
        change("state", state_word(old), state_word(server));
        // `apply` keeps the reason of a server whose state stays and whose line gives none.
        if !(same_state && server.reason.is_empty()) {
            change("reason", old.reason.clone(), server.reason.clone());
        }
        if flushes && server.state == State::Up && old.state == State::Down {
            changes.push(Change {
                what: "flush",
                was: String::new(),
                becomes: "flushed first".into(),
            });
        }
        if !changes.is_empty() {
            preview.changed.push((server.clone(), changes));
        }
    }
    for old in servers {
        if !loaded
            .servers
            .iter()
            .any(|s| s.address.same_server(&old.address))
        {
            preview.removed.push(old.clone());
        }
    }
    // The servers both have, in the current order and in the list's: clients hash in order.
    let kept = |list: &[Server], other: &[Server]| -> Vec<String> {
        list.iter()
            .filter(|s| other.iter().any(|o| o.address.same_server(&s.address)))
            .map(|s| s.address.to_string().to_ascii_lowercase())
            .collect()
    };
    preview.reordered = kept(servers, &loaded.servers) != kept(&loaded.servers, servers);
    if let Some(current) = current {
        let (was, becomes) = (
            dump::policy_text(&current.policy),
            dump::policy_text(&loaded.policy),
        );
        if was != becomes {
            preview.policy = Some((was, becomes));
        }
    }
    preview
}

/// Prints what loading `loaded` (read from `file`) would change; `initial`: only into a new
/// domain. Nothing is written and no server is contacted.
pub fn dry_run(
    ctx: &Invocation,
    file: &Path,
    loaded: &Table,
    initial: bool,
    no_flush: bool,
) -> Result<Exit> {
    let domain = ctx.local.domain.as_str();
    let current = ctx.store.current()?;
    let version = current.as_ref().map(|c| c.version);
    if initial && current.is_some() {
        print(
            ctx,
            || preview_json(domain, version, &Preview::default()),
            || {
                format!(
                    "domain {domain}: load --initial {} would change nothing: the domain exists \
                     (version {})\n",
                    file.display(),
                    version.unwrap_or_default()
                )
            },
        )?;
        return Ok(Exit::Success);
    }
    let preview = preview(current.as_deref(), loaded, no_flush);
    print(
        ctx,
        || preview_json(domain, version, &preview),
        || preview_text(domain, file, version, &preview),
    )?;
    Ok(Exit::Success)
}

fn server_json(server: &Server) -> Value {
    json!({
        "server": server.address.to_string(),
        "weight": server.weight,
        "retry_interval": server.retry_interval,
        "state": server.state.to_string(),
        "down_by": down_by(server),
        "reason": server.reason,
    })
}

fn preview_json(domain: &str, version: Option<u64>, p: &Preview) -> Value {
    json!({
        "domain": domain,
        "exists": version.is_some(),
        "version": version,
        "changes": !p.is_empty(),
        "added": p.added.iter().map(|(s, flushed)| {
            let mut v = server_json(s);
            v["flushed_first"] = json!(flushed);
            v
        }).collect::<Vec<_>>(),
        "removed": p.removed.iter().map(|s| s.address.to_string()).collect::<Vec<_>>(),
        "changed": p.changed.iter().map(|(s, changes)| json!({
            "server": s.address.to_string(),
            "changes": changes
                .iter()
                .map(|c| json!({"what": c.what, "was": c.was, "becomes": c.becomes}))
                .collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "reordered": p.reordered,
        "policy": p.policy.as_ref().map(|(was, becomes)| json!({"was": was, "becomes": becomes})),
    })
}

fn preview_text(domain: &str, file: &Path, version: Option<u64>, p: &Preview) -> String {
    let mut out = match version {
        Some(_) if p.is_empty() => {
            return format!(
                "domain {domain}: load {} would change nothing (version {})\n",
                file.display(),
                version.unwrap_or_default()
            );
        }
        Some(v) => format!(
            "domain {domain}: load {} would change version {v} (dry run: nothing changed):\n",
            file.display()
        ),
        None => format!(
            "domain {domain} does not exist: load {} would create it (dry run: nothing \
             changed):\n",
            file.display()
        ),
    };
    for (s, flushed) in &p.added {
        out += &format!(
            "+ {} weight={} retry-interval={} state={}",
            s.address,
            s.weight,
            s.retry_interval,
            state_word(s)
        );
        if !s.reason.is_empty() {
            out += &format!(" reason={:?}", s.reason);
        }
        if *flushed {
            out += " (flushed first)";
        }
        out.push('\n');
    }
    for s in &p.removed {
        out += &format!("- {}\n", s.address);
    }
    for (s, changes) in &p.changed {
        let words: Vec<String> = changes
            .iter()
            .map(|c| match c.what {
                "flush" => c.becomes.clone(),
                "reason" => format!("reason {:?} -> {:?}", c.was, c.becomes),
                what => format!("{what} {} -> {}", c.was, c.becomes),
            })
            .collect();
        out += &format!("~ {}: {}\n", s.address, words.join(", "));
    }
    if p.reordered {
        out += "~ the servers' order changes (clients hash in the list's order)\n";
    }
    if let Some((was, becomes)) = &p.policy {
        out += &format!("~ policy: {was} -> {becomes}\n");
    }
    out
}
