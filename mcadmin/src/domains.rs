//! `mcadmin domains remove`: a domain's files leave this host's registry, unless processes
//! still use it.

use std::path::PathBuf;

use anyhow::Result;
use libmcshm::{Domain, Registry};
use mcshm_cli::UsageError;
use serde_json::json;

use crate::show::print;
use crate::{Exit, Invocation};

/// The files of a domain beside its table, by extension: the invalidation log, credentials
/// and TLS settings (the locks are removed after them, the writers' last).
const BESIDE: [&str; 3] = ["ilog", "auth", "tls"];

/// Removes `name`'s table and the files beside it from this host's registry directory; refused
/// (exit 1) while processes use it, unless `force`.
pub fn remove(ctx: &Invocation, name: &str, force: bool) -> Result<Exit> {
    if ctx.store.fleet().is_some() {
        return Err(UsageError(
            "domains remove works on this host's registry: drop --etcd (a domain the fleet \
             agent mirrors is made again from the fleet's table)"
                .into(),
        )
        .into());
    }
    let dir = &ctx.local.dir;
    let domain = Domain::new(name)?;
    let table = domain.path_in(dir);
    // Opening it checks that it is a domain's table (exit 3 when there is none; a symbolic
    // link or a foreign file is refused, as everywhere).
    let users = match Registry::open(dir, &domain) {
        Ok(registry) => {
            let mut users = registry.process_records();
            for other in libmcshm::processes::processes_mapping(registry.path()) {
                if !users.iter().any(|u| u.pid == other.pid) {
                    users.push(other);
                }
            }
            users
        }
        Err(err @ libmcshm::Error::NoDomain { .. }) => return Err(err.into()),
        // A damaged table is removed like any other.
        Err(libmcshm::Error::Corrupt { .. } | libmcshm::Error::NewerFormat { .. }) => {
            libmcshm::processes::processes_mapping(&table)
        }
        Err(err) => return Err(err.into()),
    };
    let mut users: Vec<String> = users
        .into_iter()
        .filter(|u| u.pid != std::process::id())
        .map(|u| format!("pid {} {}", u.pid, u.command))
        .collect();
    // A watcher or fleet agent opens the table only for its rounds: its lock says it runs.
    for role in ["watch", "sync"] {
        let lock = dir.join(format!(".{domain}.{role}"));
        if lock.exists()
            && matches!(
                libmcshm::health::try_daemon_lock(dir, &domain, role),
                Ok(None)
            )
        {
            users.push(format!("mcadmin {role}"));
        }
    }
    if !users.is_empty() && !force {
        let named: Vec<String> = users.iter().take(5).cloned().collect();
        let more = match users.len() > named.len() {
            true => format!(" and {} more", users.len() - named.len()),
            false => String::new(),
        };
        eprintln!(
            "mcadmin: domain '{domain}' is in use by {} process{} ({}{more}; `mcadmin --domain \
             {domain} clients` lists them): stop them first, or pass --force; nothing removed",
            users.len(),
            if users.len() == 1 { "" } else { "es" },
            named.join(", ")
        );
        return Ok(Exit::No);
    }
    let mut files: Vec<PathBuf> = vec![table.clone()];
    files.extend(BESIDE.iter().map(|ext| table.with_extension(ext)));
    // The daemons' locks (`.DOMAIN.watch`, `.DOMAIN.sync`), then the writers'.
    files.extend(["watch", "sync"].map(|role| dir.join(format!(".{domain}.{role}"))));
    files.push(table.with_extension("lock"));
    let mut removed = Vec::new();
    for file in &files {
        match std::fs::remove_file(file) {
            Ok(()) => removed.push(file.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(libmcshm::Error::io("remove", file, e).into()),
        }
    }
    print(
        ctx,
        || json!({"domain": domain.as_str(), "removed": removed, "processes": users.len()}),
        || {
            let mut out = format!("domain {domain}: removed {}\n", removed.join(", "));
            if !users.is_empty() {
                out += &format!(
                    "({} process{} still map the removed table until they open the domain \
                     again)\n",
                    users.len(),
                    if users.len() == 1 { "" } else { "es" }
                );
            }
            out
        },
    )?;
    Ok(Exit::Success)
}
