//! `mcadmin metrics` and `watch --metrics`: the host's domains as Prometheus' text format,
//! printed once (for node_exporter's textfile collector) or served over HTTP for as long as the
//! watcher runs. The page itself is the library's ([`libmcshm::metrics`]), so both say the same.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap::parser::ValueSource;
use libmcshm::Domain;
use libmcshm::metrics;

use crate::cli::Cli;
use crate::{Exit, Invocation};

/// Whether the command line or `$MCSHM_DOMAIN` named a domain (`--domain` has a default,
/// `default`, which `metrics` does not take: without a domain named it shows every one).
pub fn domain_given() -> bool {
    Cli::command()
        .try_get_matches()
        .ok()
        .and_then(|m| m.value_source("domain"))
        .is_some_and(|source| source != ValueSource::DefaultValue)
}

/// `metrics`: the page of the named domain (which must exist), or of every domain.
pub fn print(ctx: &Invocation, one: bool) -> Result<Exit> {
    let dir = &ctx.local.dir;
    let domains = match one {
        true => vec![ctx.local.domain.clone()],
        false => {
            metrics::domains_in(dir).with_context(|| format!("cannot list {}", dir.display()))?
        }
    };
    let mut read = metrics::collect(dir, &domains);
    if one && read[0].1.is_err() {
        // A domain named that does not exist is an error, as for every other verb.
        if let (_, Err(err)) = read.remove(0) {
            return Err(err.into());
        }
    }
    for (domain, result) in &read {
        if let Err(err) = result {
            eprintln!("mcadmin: {domain}: {err} (mcshm_table_readable 0)");
        }
    }
    let mut out = std::io::stdout().lock();
    out.write_all(metrics::render(&read).as_bytes())?;
    out.flush()?;
    Ok(Exit::Success)
}

/// `watch --metrics`: serves the page of `only` (every domain when `None`) at
/// http://ADDRESS/metrics, on a thread of its own, while the watcher runs.
pub fn serve(ctx: &Invocation, address: SocketAddr, only: Option<&[String]>) -> Result<()> {
    let listener =
        TcpListener::bind(address).with_context(|| format!("cannot serve metrics on {address}"))?;
    let bound = listener.local_addr()?;
    let only: Option<Vec<Domain>> = only
        .map(|names| names.iter().map(|n| Domain::new(n)).collect())
        .transpose()?;
    let dir = ctx.local.dir.clone();
    metrics::http::serve(listener, move || {
        metrics::host_page(&dir, only.as_deref())
            .unwrap_or_else(|err| format!("# mcadmin: cannot list {}: {err}\n", dir.display()))
    })
    .context("cannot start the metrics thread")?;
    eprintln!("mcadmin: metrics on http://{bound}/metrics");
    Ok(())
}
