//! The verbs that change the domain's table (`add`, `delete`, `up`, `down`, `set`, `policy`
//! with values, `load`): each builds its change, makes one call to the
//! [`Store`](crate::store::Store) (a registry transaction here, an etcd compare-and-swap for
//! the fleet) and reports the version or fleet revision it published.

use std::io::{self, Read};
use std::path::Path;

use anyhow::{Context, Result};
use libmcshm::edit::{self, PolicyChange};
use libmcshm::table::{CommitInfo, Table};
use libmcshm::{Address, Server, State, Timeouts, dump};
use mcshm_cli::UsageError;
use serde_json::json;

use crate::cli::AddArgs;
use crate::show::print;
use crate::store::Written;
use crate::{Exit, Invocation};

/// `add`: the servers join (flushed first, unless added down or with --no-flush).
pub fn add(ctx: &Invocation, args: &AddArgs) -> Result<Exit> {
    let new = args
        .servers
        .iter()
        .map(|address| Server {
            weight: args.weight,
            retry_interval: args.retry.retry_interval,
            state: if args.down { State::Down } else { State::Up },
            reason: args.reason.clone(),
            ..Server::new(address.clone())
        })
        .collect::<Vec<_>>();
    let present = ctx.store.servers()?;
    refuse_alias(ctx, &present, &args.servers)?;
    if !args.down && !args.no_flush {
        flush_new(ctx, &present, &new, args.flush)?;
    }
    let name = ctx.local.domain.to_string();
    write(ctx, true, |t| {
        edit::add(
            &mut t.servers,
            &new,
            args.if_missing,
            CommitInfo::now(),
            &name,
        )
    })
}

/// `delete`: the servers leave the domain.
pub fn delete(ctx: &Invocation, addresses: &[Address], if_present: bool) -> Result<Exit> {
    let name = ctx.local.domain.to_string();
    let exit = write(ctx, false, |t| {
        edit::delete(t, addresses, if_present, &name)
    })?;
    if ctx.store.fleet().is_none() {
        // What the deleted servers missed goes with them (in a fleet, each agent forgets).
        let _ = libmcshm::lifecycle::forget_deleted(&ctx.local.dir, &ctx.local.domain);
    }
    Ok(exit)
}

/// `set`: a server's weight and/or retry interval.
pub fn set(
    ctx: &Invocation,
    address: &Address,
    weight: Option<u16>,
    retry_interval: Option<i32>,
) -> Result<Exit> {
    if weight.is_none() && retry_interval.is_none() {
        return Err(UsageError(
            "set: nothing to change (give --weight and/or --retry-interval)".into(),
        )
        .into());
    }
    let name = ctx.local.domain.to_string();
    write(ctx, false, |t| {
        edit::modify(&mut t.servers, address, weight, retry_interval, &name)
    })
}

/// `up`: see [`libmcshm::lifecycle::bring_up`].
pub fn up(ctx: &Invocation, addresses: &[Address], no_flush: bool) -> Result<Exit> {
    let exit = report(ctx, ctx.store.bring_up(addresses, no_flush)?)?;
    if !ctx.json {
        // How each came back: flushed, or (rejoin replay) the keys it missed deleted.
        let reading = ctx.store.read()?;
        for server in &reading.snapshot.servers {
            if addresses.iter().any(|a| server.address.same_server(a)) && !server.reason.is_empty()
            {
                eprintln!("mcadmin: {} {}", server.address, server.reason);
            }
        }
    }
    Ok(exit)
}

/// `down`: an operator's down, held until an operator's `up` (no retry probe, `watch` or fleet
/// agent brings the servers back); with `retry`, a down as after failures, retried
/// automatically.
pub fn down(ctx: &Invocation, addresses: &[Address], reason: &str, retry: bool) -> Result<Exit> {
    let name = ctx.local.domain.to_string();
    let exit = write(ctx, false, |t| {
        edit::set_down(
            &mut t.servers,
            addresses,
            reason,
            retry,
            CommitInfo::now(),
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

/// `policy` with values: changes them.
pub fn policy(ctx: &Invocation, change: PolicyChange) -> Result<Exit> {
    write(ctx, false, |t| {
        change.apply(&mut t.policy);
        edit::fit_buckets(t);
        Ok(())
    })
}

/// `load`'s flags.
pub struct LoadOptions {
    /// Only into a domain that does not exist yet.
    pub initial: bool,
    /// Flush no server.
    pub no_flush: bool,
    /// Whether a list without its end line (--partial) or of no servers (--allow-empty) is taken.
    pub accept: dump::Accept,
    /// Change nothing: print what the load would change.
    pub dry_run: bool,
}

/// `load`: the list is read within its bounds and checked whole before anything is touched,
/// so a list cut short, too large or empty (unless so allowed) leaves the table as it was, and
/// a new domain absent.
pub fn load(ctx: &Invocation, file: &Path, options: LoadOptions) -> Result<Exit> {
    let in_file = || format!("in {}", file.display());
    let text = match file.as_os_str() == "-" {
        true => dump::read(io::stdin().lock(), Path::new("stdin")),
        false => {
            let opened = std::fs::File::open(file)
                .map_err(|e| UsageError(format!("cannot read {}: {e}", file.display())))?;
            dump::read(io::BufReader::new(opened), file)
        }
    };
    let text = match text {
        // A list that cannot be read is bad input, as one that cannot be opened.
        Err(err @ libmcshm::Error::Io { .. }) => return Err(UsageError(err.to_string()).into()),
        other => other.with_context(in_file)?,
    };
    let mut loaded = dump::parse_list(&text, options.accept).with_context(in_file)?;
    let addresses: Vec<Address> = loaded.servers.iter().map(|s| s.address.clone()).collect();
    if let Some(alias) = libmcshm::address::find_alias(&[], &addresses) {
        return Err(UsageError(format!(
            "in {}: {} and {} are one memcached under two names (both reach {}): list it once; \
                 nothing changed",
            file.display(),
            alias.other,
            alias.server,
            alias.place
        ))
        .into());
    }
    if options.dry_run {
        return super::preview::dry_run(ctx, file, &loaded, options.initial, options.no_flush);
    }
    let (written, plan) = ctx
        .store
        .load(&mut loaded, options.initial, options.no_flush)?;
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

/// The contents of `file`, or of stdin for `-` (`what` names it in the error).
pub fn read_input(file: &Path, what: &str) -> Result<String> {
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

/// Refuses a server of `new` that is one of `present` (or of `new`) under another name (see
/// [`libmcshm::address::find_alias`]): the error names both.
fn refuse_alias(ctx: &Invocation, present: &[Server], new: &[Address]) -> Result<()> {
    let present: Vec<Address> = present.iter().map(|s| s.address.clone()).collect();
    match libmcshm::address::find_alias(&present, new) {
        None => Ok(()),
        Some(alias) => Err(libmcshm::Error::Alias {
            server: alias.server.to_string(),
            other: alias.other.to_string(),
            place: alias.place.to_string(),
            domain: ctx.local.domain.to_string(),
        }
        .into()),
    }
}

/// Flushes the servers of `new` that the domain (`present`) does not have yet: a server that
/// joins may hold items from an earlier time in this domain, which would be served stale
/// (`add --no-flush` adopts what they hold; `add --down` leaves the flush to the server's
/// `up`). Unless `force` (`--flush`), a server that holds items is a cache in use, emptied only
/// when the operator says so: it is refused, naming how many it holds, and nothing changes.
fn flush_new(ctx: &Invocation, present: &[Server], new: &[Server], force: bool) -> Result<()> {
    let access = libmcshm::access::Access::load(&ctx.local.dir, &ctx.local.domain)?;
    let timeouts = Timeouts::default();
    let joining = new
        .iter()
        .filter(|n| !present.iter().any(|p| p.address.same_server(&n.address)));
    if !force {
        let mut holding = Vec::new();
        for server in joining {
            let address = &server.address;
            match libmcshm::lifecycle::items_held(address, timeouts, &access) {
                Ok(0) => {}
                Ok(items) => holding.push(format!(
                    "{address} holds {items} item{}",
                    if items == 1 { "" } else { "s" }
                )),
                Err(error) => {
                    return Err(libmcshm::Error::Network {
                        server: address.to_string(),
                        error: format!(
                            "{error}: cannot ask it whether it holds items before it joins; \
                             nothing changed (add it with --down to flush it when it comes up, \
                             or --no-flush to add it as it is)"
                        ),
                    }
                    .into());
                }
            }
        }
        if !holding.is_empty() {
            return Err(UsageError(format!(
                "{}: add --flush to empty it before it joins, or --no-flush to adopt its \
                 contents as they are (a cache the application already uses); nothing changed",
                holding.join(", ")
            ))
            .into());
        }
    }
    Ok(libmcshm::lifecycle::flush_joining(
        present, new, timeouts, &access,
    )?)
}

/// What a fleet commit did to the servers' fences, for its line: nothing when it moved no key.
fn fences(commit: &mcshm_fleet::FleetCommit) -> String {
    let plural = |n: usize| if n == 1 { "server" } else { "servers" };
    match (commit.fenced, commit.unfenced) {
        (0, 0) => String::new(),
        (f, 0) => format!(" (fenced {f} {})", plural(f)),
        (f, u) => format!(
            " (fenced {f} {}; {u} not reached, out of service or new: fenced once they answer)",
            plural(f)
        ),
    }
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
    let domain = ctx.local.domain.as_str();
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
            || {
                json!({"domain": domain, "revision": commit.revision, "changed": commit.changed,
                       "fenced": commit.fenced, "unfenced": commit.unfenced})
            },
            || match commit.changed {
                true => format!(
                    "domain {domain}: fleet revision {}{}\n",
                    commit.revision,
                    fences(&commit)
                ),
                false => format!(
                    "domain {domain}: unchanged at fleet revision {}\n",
                    commit.revision
                ),
            },
        )?,
    }
    Ok(Exit::Success)
}
