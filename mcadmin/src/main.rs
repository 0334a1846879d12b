//! mcadmin: the command-line face of the registry. Glue only: parse arguments, call libmcshm,
//! print, map errors to the documented exit codes.

// Doc comments in cli.rs are clap help text (with [OPTIONAL] syntax), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod access;
mod cli;
mod fleet;
mod lifecycle;
mod show;
mod store;

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use libmcshm::edit::PolicyChange;
use libmcshm::registry::{FileOwnership, LockWait, commit_info};
use libmcshm::table::Table;
use libmcshm::{Address, Domain, ErrorKind, Registry, Server, State, Timeouts, dump, edit};
use serde_json::json;

use cli::{Cli, Command};
use mcshm_cli::UsageError;
use store::{Local, Origin, Store, Written};

mcshm_cli::exit_codes! {
    /// Exit codes (documented in `--help` and mcadmin(8)).
    pub enum Exit {
        Success = 0,
        No = 1,
        BadInput = 2,
        NotFound = 3,
        Registry = 4,
        Server = 5,
        Etcd = 6,
    }
}

fn main() -> ExitCode {
    let cli: Cli = mcshm_cli::parse("mcadmin");
    mcshm_cli::finish("mcadmin", run(&cli), Exit::Success, exit_for)
}

fn exit_for(err: &anyhow::Error) -> Exit {
    if let Some(e) = err.downcast_ref::<libmcshm::Error>() {
        return exit_for_kind(e.kind());
    }
    if let Some(e) = err.downcast_ref::<mcshm_fleet::FleetError>() {
        return fleet::exit_for(e);
    }
    match err.downcast_ref::<UsageError>() {
        Some(_) => Exit::BadInput,
        None => Exit::Registry,
    }
}

pub fn exit_for_kind(kind: ErrorKind) -> Exit {
    match kind {
        ErrorKind::BadInput => Exit::BadInput,
        ErrorKind::NotFound => Exit::NotFound,
        ErrorKind::Registry => Exit::Registry,
        ErrorKind::Server => Exit::Server,
    }
}

pub struct Invocation {
    pub dir: PathBuf,
    pub domain: Domain,
    pub json: bool,
    /// Mode and group of a domain file this command creates.
    pub ownership: FileOwnership,
    /// How long a write waits for another writer (--lock-timeout).
    pub lock_wait: LockWait,
    /// Where the verbs read and write the domain's table: here, or with --etcd the fleet's.
    pub store: Store,
}

impl Invocation {
    /// The domain opened for writing (created if `create`), waiting for other writers as
    /// --lock-timeout says.
    pub fn writer(&self, create: bool) -> libmcshm::Result<Registry> {
        let mut registry =
            Registry::open_writer_with(&self.dir, &self.domain, create, self.ownership)?;
        registry.set_lock_wait(self.lock_wait);
        Ok(registry)
    }
}

fn run(cli: &Cli) -> Result<Exit> {
    if let Command::Completions { shell } = &cli.command {
        clap_complete::generate(
            *shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "mcadmin",
            &mut io::stdout(),
        );
        return Ok(Exit::Success);
    }
    let several = matches!(cli.command, Command::Watch { .. } | Command::Sync { .. });
    if cli.domain.len() > 1 && !several {
        return Err(UsageError("only `watch` and `sync` take several --domain".into()).into());
    }
    let fleet = fleet::connect(&cli.etcd)?;
    let local_only = matches!(
        cli.command,
        Command::Watch { .. } | Command::Drain { .. } | Command::Clients | Command::Wait { .. }
    );
    if fleet.is_some() && local_only {
        return Err(UsageError(
            "watch, drain, clients and wait work on this host's table: drop --etcd (with \
             `mcadmin sync` running, what they do reaches the fleet)"
                .into(),
        )
        .into());
    }
    if fleet.is_none() && matches!(cli.command, Command::Sync { .. } | Command::Hosts) {
        return Err(UsageError(
            "sync and hosts need the fleet's etcd: give --etcd ENDPOINTS or set MCSHM_ETCD".into(),
        )
        .into());
    }
    let domain = Domain::new(&cli.domain[0])?;
    let dir = match &cli.dir {
        Some(dir) => dir.clone(),
        None => libmcshm::default_dir()?,
    };
    let local = Local {
        dir,
        domain,
        ownership: FileOwnership::parse(&cli.mode, cli.group.as_deref())?,
        lock_wait: cli.lock_timeout,
    };
    let store = match fleet {
        None => Store::Local(local.clone()),
        Some(fleet) => Store::Fleet {
            fleet: std::sync::Arc::new(fleet),
            dir: local.dir.clone(),
            domain: local.domain.clone(),
        },
    };
    let ctx = Invocation {
        dir: local.dir,
        domain: local.domain,
        json: cli.json,
        ownership: local.ownership,
        lock_wait: local.lock_wait,
        store,
    };
    match &cli.command {
        Command::Add {
            servers,
            weight,
            down,
            reason,
            retry,
            if_missing,
            no_flush,
        } => {
            let new = servers
                .iter()
                .map(|address| Server {
                    weight: *weight,
                    retry_interval: retry.retry_interval,
                    state: if *down { State::Down } else { State::Up },
                    reason: reason.clone(),
                    ..Server::new(address.clone())
                })
                .collect::<Vec<_>>();
            if !*down && !*no_flush {
                flush_new(&ctx, &new)?;
            }
            let name = ctx.domain.to_string();
            write(&ctx, true, |t| {
                edit::add(&mut t.servers, &new, *if_missing, commit_info(), &name)
            })
        }
        Command::Delete {
            servers,
            if_present,
        } => {
            let name = ctx.domain.to_string();
            write(&ctx, false, |t| {
                edit::delete(&mut t.servers, servers, *if_present, &name)
            })
        }
        Command::Up { servers, no_flush } => up(&ctx, servers, *no_flush),
        Command::Down {
            servers,
            reason,
            retry,
        } => down(&ctx, servers, reason, *retry),
        Command::Set {
            server,
            weight,
            retry_interval,
        } => {
            if weight.is_none() && retry_interval.is_none() {
                return Err(UsageError(
                    "set: nothing to change (give --weight and/or --retry-interval)".into(),
                )
                .into());
            }
            let name = ctx.domain.to_string();
            write(&ctx, false, |t| {
                edit::modify(&mut t.servers, server, *weight, *retry_interval, &name)
            })
        }
        Command::Policy(args) => policy(&ctx, args.change()?),
        Command::List => list(&ctx),
        Command::Status { server } => status(&ctx, server),
        Command::Domains => domains(&ctx),
        Command::Dump => {
            let snapshot = ctx.store.snapshot()?;
            io::stdout().write_all(dump::to_text(&snapshot).as_bytes())?;
            Ok(Exit::Success)
        }
        Command::Load {
            file,
            initial,
            no_flush,
        } => load(&ctx, file, *initial, *no_flush),
        Command::Wait { since, timeout } => wait(&ctx, *since, *timeout),
        Command::Auth {
            user,
            password_file,
            clear,
        } => access::auth(&ctx, user.as_deref(), password_file.as_deref(), *clear),
        Command::Tls {
            ca,
            cert,
            key,
            server_name,
            verify,
            clear,
        } => access::tls(
            &ctx,
            access::TlsChange {
                ca: ca.as_deref(),
                client: cert.as_deref().zip(key.as_deref()),
                server_name: server_name.as_deref(),
                verify: *verify,
            },
            *clear,
        ),
        Command::Watch {
            all,
            interval,
            failures,
            check_key,
            exec,
            timeout,
        } => lifecycle::watch(
            &ctx,
            lifecycle::WatchOptions {
                domains: &cli.domain,
                all: *all,
                interval: *interval,
                failures: *failures,
                check_key: check_key.as_deref(),
                exec: exec.as_deref(),
                timeout: *timeout,
            },
        ),
        Command::Drain { server, rate } => lifecycle::drain(&ctx, server, *rate),
        Command::Settle { servers, rate } => lifecycle::settle(&ctx, servers, *rate),
        Command::Clients => lifecycle::clients(&ctx),
        Command::Sync {
            all,
            name,
            probe_timeout,
            lease_ttl,
        } => {
            let fleet = ctx.store.fleet().expect("checked above").clone();
            fleet::sync(
                &ctx,
                fleet,
                fleet::SyncArgs {
                    domains: &cli.domain,
                    all: *all,
                    name: name.as_deref(),
                    probe_timeout: *probe_timeout,
                    lease_ttl: *lease_ttl,
                },
            )
        }
        Command::Hosts => fleet::hosts(&ctx, ctx.store.fleet().expect("checked above")),
        Command::Completions { .. } => unreachable!("handled above"),
    }
}

/// Flushes the servers of `new` that the domain does not have yet: a server that joins may hold
/// items from an earlier time in this domain, which would be served stale (`add --no-flush`
/// skips this for a server known to be empty; `add --down` leaves it to the server's `up`).
fn flush_new(ctx: &Invocation, new: &[Server]) -> Result<()> {
    let present = ctx.store.servers()?;
    let access = libmcshm::access::Access::load(&ctx.dir, &ctx.domain)?;
    let timeouts = Timeouts::default();
    Ok(libmcshm::lifecycle::flush_joining(
        &present, new, timeouts, &access,
    )?)
}

/// `up`: see [`libmcshm::lifecycle::bring_up`].
fn up(ctx: &Invocation, addresses: &[Address], no_flush: bool) -> Result<Exit> {
    report(ctx, ctx.store.bring_up(addresses, no_flush)?)
}

/// `down`: an operator's down, held until an operator's `up` (no retry probe, `watch` or fleet
/// agent brings the servers back); with `retry`, a down as after failures, retried
/// automatically.
fn down(ctx: &Invocation, addresses: &[Address], reason: &str, retry: bool) -> Result<Exit> {
    let name = ctx.domain.to_string();
    let exit = write(ctx, false, |t| {
        edit::set_down(
            &mut t.servers,
            addresses,
            reason,
            retry,
            commit_info(),
            &name,
        )
    })?;
    if !ctx.json {
        let list: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        match retry {
            true => eprintln!(
                "mcadmin: {} down, retried automatically (flushed when it answers)",
                list.join(", ")
            ),
            false => eprintln!(
                "mcadmin: {} held down until `mcadmin up` (no automatic retry)",
                list.join(", ")
            ),
        }
    }
    Ok(exit)
}

/// Runs one transaction and reports the version (or fleet revision) it published.
fn write(
    ctx: &Invocation,
    create: bool,
    change: impl FnMut(&mut Table) -> libmcshm::Result<()>,
) -> Result<Exit> {
    report(ctx, ctx.store.transact(create, change)?)
}

fn report(ctx: &Invocation, written: Written) -> Result<Exit> {
    let domain = ctx.domain.as_str();
    match written {
        Written::Version(commit) => print(
            ctx,
            || json!({"domain": domain, "version": commit.version, "changed": commit.changed}),
            || match commit.changed {
                true => format!("domain {domain}: version {}\n", commit.version),
                false => format!("domain {domain}: unchanged at version {}\n", commit.version),
            },
        )?,
        Written::Revision(commit) => print(
            ctx,
            || json!({"domain": domain, "revision": commit.revision, "changed": commit.changed}),
            || match commit.changed {
                true => format!("domain {domain}: fleet revision {}\n", commit.revision),
                false => format!(
                    "domain {domain}: unchanged at fleet revision {}\n",
                    commit.revision
                ),
            },
        )?,
    }
    Ok(Exit::Success)
}

/// Shows the policy, or changes it when given values.
fn policy(ctx: &Invocation, change: PolicyChange) -> Result<Exit> {
    if change.is_empty() {
        let p = ctx.store.snapshot()?.policy;
        print(
            ctx,
            || show::policy_json(&p),
            || dump::policy_text(&p) + "\n",
        )?;
        return Ok(Exit::Success);
    }
    write(ctx, false, |t| {
        change.apply(&mut t.policy);
        Ok(())
    })
}

/// Prints one server of the domain; exit 0 when up, 1 otherwise.
/// `list`: the servers with their version, and who mirrors the table (local) or changed it
/// last (the fleet's).
fn list(ctx: &Invocation) -> Result<Exit> {
    let reading = ctx.store.read()?;
    let (snapshot, failures) = (&reading.snapshot, &reading.failures);
    match &reading.origin {
        Origin::Local(link) => print(
            ctx,
            || {
                let mut v = show::snapshot_json(snapshot, failures);
                v["fleet"] = show::agent_json(snapshot, link);
                v
            },
            || {
                let table = show::snapshot_table(snapshot, failures);
                let (first, rest) = table.split_once('\n').unwrap_or((&table, ""));
                format!("{first}\n{}{rest}", show::agent_text(snapshot, link))
            },
        )?,
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
                    "domain {}  fleet revision {revision}  changed {} by {} on {} pid {}\npolicy: {}\n{}",
                    ctx.domain,
                    libmcshm::clock::utc(changed.ms),
                    changed.by,
                    changed.host,
                    changed.pid,
                    dump::policy_text(&snapshot.policy),
                    show::servers_table(&snapshot.servers, failures)
                )
            },
        )?,
    }
    Ok(Exit::Success)
}

fn status(ctx: &Invocation, address: &Address) -> Result<Exit> {
    let snapshot = ctx.store.snapshot()?;
    let found = snapshot
        .find(address)
        .ok_or_else(|| libmcshm::Error::NoServer {
            server: address.to_string(),
            domain: ctx.domain.to_string(),
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

fn domains(ctx: &Invocation) -> Result<Exit> {
    if let Some(fleet) = ctx.store.fleet() {
        return fleet::domains(ctx, fleet);
    }
    let rows = show::scan_domains(&ctx.dir)?;
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

/// The contents of `file`, or of stdin for `-` (`what` names it in the error).
pub fn read_input(file: &std::path::Path, what: &str) -> Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        io::stdin()
            .read_to_string(&mut text)
            .with_context(|| format!("cannot read {what} from stdin"))?;
        return Ok(text);
    }
    std::fs::read_to_string(file)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", file.display())).into())
}

fn load(ctx: &Invocation, file: &std::path::Path, initial: bool, no_flush: bool) -> Result<Exit> {
    let text = read_input(file, "the server list")?;
    let mut loaded = dump::parse(&text).with_context(|| format!("in {}", file.display()))?;
    let (written, plan) = ctx.store.load(&mut loaded, initial, no_flush)?;
    // Servers that could not be flushed are named (and loaded down), exit 5.
    for (address, error) in &plan.unflushed {
        eprintln!(
            "mcadmin: {address}: cannot flush it ({error}); loaded down, retried automatically"
        );
    }
    report(ctx, written)?;
    Ok(match plan.unflushed.is_empty() {
        true => Exit::Success,
        false => Exit::Server,
    })
}

fn wait(ctx: &Invocation, since: Option<u64>, timeout: Option<Duration>) -> Result<Exit> {
    let timeout = timeout.unwrap_or(Duration::MAX);
    let mut registry = Registry::open(&ctx.dir, &ctx.domain)?;
    let since = since.unwrap_or_else(|| registry.version());
    let deadline = std::time::Instant::now().checked_add(timeout);
    loop {
        let left = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(std::time::Instant::now())
        });
        if let Some(version) = registry.wait_for_change(since, left) {
            print(
                ctx,
                || json!({"domain": ctx.domain.as_str(), "version": version}),
                || format!("{version}\n"),
            )?;
            return Ok(Exit::Success);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(Exit::No);
        }
    }
}

/// Prints JSON (one document, newline-terminated) or text.
pub fn print(
    ctx: &Invocation,
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
