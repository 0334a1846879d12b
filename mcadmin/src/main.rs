//! mcadmin: the command-line face of the registry. Glue only: parse the arguments (cli.rs),
//! choose where the domain's table is (store.rs), hand each command to its verb, and map errors
//! to the documented exit codes.

// Doc comments in cli.rs are clap help text (with [OPTIONAL] syntax), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod access;
mod buckets;
mod buckets_json;
mod cli;
mod domains;
mod explain;
mod fleet;
mod lifecycle;
mod metrics;
mod show;
mod store;
mod verbs;

use std::io;
use std::process::ExitCode;

use anyhow::Result;
use libmcshm::registry::FileOwnership;
use libmcshm::{Domain, ErrorKind};

use cli::{Cli, Command};
use mcshm_cli::UsageError;
use store::{Local, Store};
use verbs::{read, write};

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
    /// The domain in this host's registry directory, and how a write opens its file (drain,
    /// settle, clients, access files and the agent work here, whatever the store).
    pub local: Local,
    pub json: bool,
    /// Where the verbs read and write the domain's table: here, or with --etcd the fleet's.
    pub store: Store,
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
    if fleet.is_some() && matches!(cli.command, Command::Metrics) {
        return Err(UsageError(
            "metrics shows this host's tables: drop --etcd (every host's page, together, is \
             the fleet's)"
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
        ownership: match (&cli.mode, &cli.group) {
            (None, None) => FileOwnership::default(), // follows the directory
            (mode, group) => {
                FileOwnership::parse(mode.as_deref().unwrap_or("644"), group.as_deref())?
            }
        },
        lock_wait: cli.lock_timeout,
    };
    let store = match fleet {
        None => Store::Local(local.clone()),
        Some(fleet) => Store::Fleet {
            fleet: std::sync::Arc::new(fleet.with_fencing(mcshm_fleet::Fencing {
                dir: local.dir.clone(),
                timeouts: libmcshm::Timeouts::default(),
            })),
            dir: local.dir.clone(),
            domain: local.domain.clone(),
        },
    };
    let ctx = Invocation {
        local,
        json: cli.json,
        store,
    };
    match &cli.command {
        Command::Add(args) => write::add(&ctx, args),
        Command::Delete {
            servers,
            if_present,
        } => write::delete(&ctx, servers, *if_present),
        Command::Up { servers, no_flush } => write::up(&ctx, servers, *no_flush),
        Command::Down {
            servers,
            reason,
            retry,
        } => write::down(&ctx, servers, reason, *retry),
        Command::Set {
            server,
            weight,
            retry_interval,
        } => write::set(&ctx, server, *weight, *retry_interval),
        Command::Policy(args) => match args.change()? {
            change if change.is_empty() => read::policy(&ctx),
            change => write::policy(&ctx, change),
        },
        Command::List => read::list(&ctx),
        Command::Status { server } => read::status(&ctx, server),
        Command::Domains { action: None } => read::domains(&ctx),
        Command::Domains {
            action: Some(cli::DomainsAction::Remove { domain, force }),
        } => domains::remove(&ctx, domain, *force),
        Command::Dump { reasons } => read::dump(&ctx, *reasons),
        Command::Load {
            file,
            initial,
            no_flush,
            partial,
            allow_empty,
            dry_run,
        } => write::load(
            &ctx,
            file,
            write::LoadOptions {
                initial: *initial,
                no_flush: *no_flush,
                dry_run: *dry_run,
                accept: libmcshm::dump::Accept {
                    partial: *partial,
                    allow_empty: *allow_empty,
                },
            },
        ),
        Command::Wait { since, timeout } => read::wait(&ctx, *since, *timeout),
        Command::Metrics => metrics::print(&ctx, metrics::domain_given()),
        Command::Explain { key } => explain::explain(&ctx, key),
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
            metrics,
            settle_rate,
            no_settle,
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
                metrics: *metrics,
                settle_rate: (!no_settle).then_some(*settle_rate),
            },
        ),
        Command::Drain { server, rate } => lifecycle::drain(&ctx, server, *rate),
        Command::Buckets { action } => match action {
            cli::BucketsAction::List => buckets::list(&ctx),
            cli::BucketsAction::Balance {
                buckets,
                replicas,
                pace,
            } => buckets::balance(&ctx, *buckets, *replicas, *pace),
            cli::BucketsAction::Move {
                count,
                from,
                to,
                pace,
            } => buckets::move_buckets(&ctx, *count, from, to, *pace),
            cli::BucketsAction::Finish { pace } => buckets::finish(&ctx, *pace),
            cli::BucketsAction::Load { file, pace } => buckets::load(&ctx, file, *pace),
            cli::BucketsAction::Dump => buckets::dump(&ctx),
        },
        Command::Settle { servers, rate } => lifecycle::settle(&ctx, servers, *rate),
        Command::Clients => lifecycle::clients(&ctx),
        Command::Sync {
            all,
            name,
            probe_timeout,
            lease_ttl,
            replay_deadline,
            fence_interval,
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
                    replay_deadline: *replay_deadline,
                    fence_interval: *fence_interval,
                },
            )
        }
        Command::Hosts => fleet::hosts(&ctx, ctx.store.fleet().expect("checked above")),
        Command::Completions { .. } => unreachable!("handled above"),
    }
}
