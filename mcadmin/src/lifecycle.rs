//! mcadmin's long-running commands: `watch` (the health daemon), `drain`, `settle` (each the
//! library's workflow, paced here and shown as it goes) and `clients`.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libmcshm::drain::{Drain, DrainCounts};
use std::path::Path;

use libmcshm::health::{Event, EventKind, Watcher};
use libmcshm::settle::{Settle, SweepCounts, Swept};
use libmcshm::{Address, Domain, Registry, Timeouts};
use serde_json::json;

use crate::{Exit, Invocation};
use libmcshm::clock::utc;

/// A flag set by SIGTERM or SIGINT.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("cannot handle signals")?;
    }
    Ok(stop)
}

/// Runs `step` for keys `0..total` at `rate` keys per second (0: as fast as possible), with a
/// progress bar on a terminal; `Err(n)` when SIGINT or SIGTERM stopped it before key `n`.
pub fn move_keys(
    total: usize,
    rate: u32,
    mut step: impl FnMut(usize),
) -> Result<std::result::Result<(), usize>> {
    let stop = stop_flag()?;
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    for n in 0..total {
        if stop.load(Ordering::Relaxed) {
            return Ok(Err(n));
        }
        if rate > 0 {
            let due = started + Duration::from_secs_f64(n as f64 / f64::from(rate));
            pause(due.saturating_duration_since(Instant::now()), &stop);
            if stop.load(Ordering::Relaxed) {
                return Ok(Err(n)); // stopped during the pause: this key is not moved
            }
        }
        step(n);
        if tty && (n % 100 == 0 || n + 1 == total) {
            let width = 30;
            let done = (n + 1) * width / total.max(1);
            eprint!(
                "\r[{}{}] {}/{total} keys",
                "#".repeat(done),
                " ".repeat(width - done),
                n + 1,
            );
        }
    }
    if tty && total > 0 {
        eprintln!();
    }
    Ok(Ok(()))
}

/// Sleeps `duration`, waking early when `stop` is set.
fn pause(duration: Duration, stop: &AtomicBool) {
    let end = Instant::now() + duration;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
}

pub struct WatchOptions<'a> {
    pub domains: &'a [String],
    pub all: bool,
    pub interval: Duration,
    pub failures: Option<u32>,
    pub check_key: Option<&'a [u8]>,
    pub exec: Option<&'a str>,
    pub timeout: Duration,
    /// Serve the watched domains' metrics page here (`--metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Sweep marked servers at this many keys per second (`None`: `--no-settle`).
    pub settle_rate: Option<u32>,
}

pub fn watch(ctx: &Invocation, options: WatchOptions<'_>) -> Result<Exit> {
    let (interval, timeout) = (options.interval, options.timeout);
    let timeouts = Timeouts {
        connect: timeout,
        io: timeout,
    };
    let check_key = options.check_key.map(<[u8]>::to_vec);
    let names: Vec<String> = if options.all {
        Vec::new()
    } else {
        options.domains.to_vec()
    };
    let mut watchers: Vec<Watcher> = Vec::new();
    for name in &names {
        let domain = Domain::new(name)?;
        // A domain that does not exist (mistyped, its list not loaded) is a configuration
        // error: exit 3 at once, rather than a watcher that watches nothing for ever.
        Registry::open(&ctx.local.dir, &domain)?;
        watchers.push(Watcher::new(
            &ctx.local.dir,
            domain,
            options.failures,
            check_key.clone(),
            timeouts,
        ));
    }
    if let Some(address) = options.metrics {
        let only = (!options.all).then_some(names.as_slice());
        crate::metrics::serve(ctx, address, only)?;
    }
    let stop = stop_flag()?;
    let mut sweeps = Sweeps::default();
    while !stop.load(Ordering::Relaxed) {
        if options.all {
            for row in crate::show::scan_domains(&ctx.local.dir)? {
                if !watchers.iter().any(|w| w.domain().as_str() == row.domain) {
                    let domain = Domain::new(&row.domain)?;
                    watchers.push(Watcher::new(
                        &ctx.local.dir,
                        domain,
                        options.failures,
                        check_key.clone(),
                        timeouts,
                    ));
                }
            }
        }
        let mut removed = Vec::new();
        for (n, watcher) in watchers.iter_mut().enumerate() {
            let mut emit = |event: Event| report(ctx, options.exec, &event);
            match watcher.round(&mut emit) {
                Ok(()) => {}
                // Removed (`mcadmin domains remove`): a named domain ends the watch (exit 3);
                // with --all the others are still watched.
                Err(err @ libmcshm::Error::NoDomain { .. }) if !options.all => {
                    return Err(err.into());
                }
                Err(libmcshm::Error::NoDomain { .. }) => {
                    eprintln!(
                        "mcadmin: watch {}: the domain was removed",
                        watcher.domain()
                    );
                    removed.push(n);
                }
                Err(err) => eprintln!("mcadmin: watch {}: {err}", watcher.domain()),
            }
        }
        for n in removed.into_iter().rev() {
            watchers.remove(n);
        }
        if let Some(rate) = options.settle_rate {
            let mut emit = |event: Event| report(ctx, options.exec, &event);
            sweeps.report(&mut emit);
            for watcher in watchers.iter().filter(|w| w.is_active()) {
                sweeps.start(&ctx.local.dir, watcher.domain(), rate, timeouts, &stop);
            }
        }
        pause(interval, &stop);
    }
    Ok(Exit::Success)
}

/// The watcher's sweeps of marked servers, one thread per domain at a time.
#[derive(Default)]
struct Sweeps {
    running: Vec<(
        Domain,
        std::thread::JoinHandle<libmcshm::Result<Vec<Swept>>>,
    )>,
    /// When each domain may be swept again after a sweep that left a mark (a key that could
    /// not be looked at, a server that did not list its keys): not on every round.
    not_before: std::collections::HashMap<Domain, Instant>,
}

impl Sweeps {
    /// Starts a sweep of `domain` if it has a marked server that is up and none runs.
    fn start(
        &mut self,
        dir: &Path,
        domain: &Domain,
        rate: u32,
        timeouts: Timeouts,
        stop: &Arc<AtomicBool>,
    ) {
        let busy = self.running.iter().any(|(d, _)| d == domain);
        let waiting = self
            .not_before
            .get(domain)
            .is_some_and(|t| Instant::now() < *t);
        if busy || waiting {
            return;
        }
        if !libmcshm::settle::has_marked(dir, domain) {
            return;
        }
        let (dir, swept_domain, stop) = (dir.to_path_buf(), domain.clone(), stop.clone());
        let sweep = std::thread::spawn(move || {
            libmcshm::settle::sweep_marked(&dir, &swept_domain, rate, timeouts, &stop)
        });
        self.running.push((domain.clone(), sweep));
    }

    /// Reports each sweep that ended: a `settled` event per server.
    fn report(&mut self, emit: &mut dyn FnMut(Event)) {
        let (ended, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|(_, sweep)| sweep.is_finished());
        self.running = running;
        for (domain, sweep) in ended {
            let swept = sweep
                .join()
                .unwrap_or_else(|_| Err(libmcshm::Error::invalid("sweep", "", "panicked")));
            let (events, all_cleared) = swept_events(&domain, swept);
            if !all_cleared {
                self.not_before
                    .insert(domain, Instant::now() + libmcshm::settle::SWEEP_AGAIN_AFTER);
            }
            events.into_iter().for_each(&mut *emit);
        }
    }
}

/// The `settled` events of a sweep of `domain`, and whether every mark was cleared.
fn swept_events(domain: &Domain, swept: libmcshm::Result<Vec<Swept>>) -> (Vec<Event>, bool) {
    let event = |server: String, reason: String| Event {
        kind: EventKind::Settled,
        domain: domain.to_string(),
        server,
        reason,
        time_ms: libmcshm::clock::now_ms(),
    };
    match swept {
        Err(e) => (
            vec![event(String::new(), format!("sweep failed: {e}"))],
            false,
        ),
        Ok(swept) => {
            let all = swept.iter().all(|s| s.cleared);
            let events = swept
                .into_iter()
                .map(|s| {
                    let reason = match (&s.error, s.cleared) {
                        (Some(e), _) => format!("not swept: {e}"),
                        (None, cleared) => format!(
                            "swept {} keys, deleted {} strays, {} failed; {}",
                            s.keys,
                            s.counts.deleted,
                            s.counts.failed,
                            if cleared { "mark cleared" } else { "mark kept" }
                        ),
                    };
                    event(s.address.to_string(), reason)
                })
                .collect();
            (events, all)
        }
    }
}

/// Prints a transition (a line, or a JSON line) and runs the --exec hook for it.
fn report(ctx: &Invocation, exec: Option<&str>, event: &Event) {
    let time = utc(event.time_ms);
    let line = if ctx.json {
        json!({
            "time": time,
            "event": event.kind.as_str(),
            "domain": event.domain,
            "server": event.server,
            "reason": event.reason,
        })
        .to_string()
    } else if event.server.is_empty() {
        format!(
            "{time} {} domain={} {}",
            event.kind.as_str(),
            event.domain,
            event.reason
        )
    } else {
        format!(
            "{time} {} domain={} server={} {}",
            event.kind.as_str(),
            event.domain,
            event.server,
            event.reason
        )
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if let Some(command) = exec {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("MCSHM_EVENT", event.kind.as_str())
            .env("MCSHM_DOMAIN", &event.domain)
            .env("MCSHM_SERVER", &event.server)
            .env("MCSHM_REASON", &event.reason)
            .env("MCSHM_TIME", &time)
            .stdin(std::process::Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("mcadmin: --exec command exited with {s}"),
            Err(e) => eprintln!("mcadmin: cannot run --exec command: {e}"),
        }
    }
}

pub fn drain(ctx: &Invocation, address: &Address, rate: u32) -> Result<Exit> {
    let writer = ctx.local.writer(false)?;
    let mut drain = Drain::start(
        &ctx.local.dir,
        &ctx.local.domain,
        writer,
        address,
        Timeouts::default(),
    )?;
    let total = drain.keys().len();
    let started = Instant::now();
    let moved_all = move_keys(total, rate, |n| {
        if let Err(err) = drain.move_key(n) {
            let key = String::from_utf8_lossy(&drain.keys()[n]);
            eprintln!("mcadmin: {key}: {err}");
        }
    })?;
    if let Err(n) = moved_all {
        eprintln!(
            "\nmcadmin: interrupted after {n} of {total} keys; {address} is still draining: run `mcadmin drain {address}` again to resume, or `mcadmin up {address}` to cancel"
        );
        return Ok(Exit::No);
    }
    let seconds = started.elapsed().as_secs_f64();
    let keys_per_s = (total as f64 / seconds.max(1e-9)).round();
    let DrainCounts {
        moved,
        kept,
        gone,
        failed,
    } = drain.counts();
    if failed > 0 {
        eprintln!(
            "mcadmin: {failed} keys could not be moved; {address} stays draining (run drain again)"
        );
        return Ok(Exit::Server);
    }
    let (outside, prefix) = (drain.outside_prefix(), drain.prefix());
    let removed = drain.finish()?;
    crate::show::print(
        ctx,
        || json!({"server": address.to_string(), "moved": moved, "kept": kept, "gone": gone, "outside_prefix": outside, "version": removed.version, "seconds": seconds, "keys_per_s": keys_per_s}),
        || {
            let outside = match outside {
                0 => String::new(),
                n => format!(", {n} outside the domain's key prefix '{prefix}' left on it"),
            };
            format!(
                "drained {address}: {moved} keys moved, {kept} already newer on their new owner, {gone} gone (expired or evicted){outside} in {seconds:.1} s ({keys_per_s} keys/s); removed from domain {} (version {})\n",
                ctx.local.domain, removed.version
            )
        },
    )?;
    Ok(Exit::Success)
}

/// `settle`: sweeps the marked servers (or `addresses`) of their strays and clears their marks
/// (see [`libmcshm::settle`]), at `rate` keys per second.
pub fn settle(ctx: &Invocation, addresses: &[Address], rate: u32) -> Result<Exit> {
    let writer = ctx.local.writer(false)?;
    let mut settle = Settle::start(
        &ctx.local.dir,
        &ctx.local.domain,
        writer,
        addresses,
        Timeouts::default(),
    )?;
    let stop = stop_flag()?;
    let mut report = Vec::new();
    let mut failed = false;
    for n in 0..settle.servers().len() {
        let server = &settle.servers()[n];
        let (address, state) = (server.address.clone(), server.state);
        let Some(mut sweep) = settle.sweep(n)? else {
            eprintln!("mcadmin: {address} is {state}: only an up server is swept");
            failed = true;
            continue;
        };
        let total = sweep.keys().len();
        let done = sweep.run(rate, &stop, &mut |key, err| {
            eprintln!("mcadmin: {}: {err}", String::from_utf8_lossy(key));
        });
        if !done {
            eprintln!("\nmcadmin: interrupted; {address} keeps its mark (run settle again)");
            return Ok(Exit::No);
        }
        let SweepCounts {
            deleted,
            failed: errors,
        } = sweep.counts();
        let cleared = sweep.finish()?;
        failed |= errors > 0;
        report.push((address.to_string(), total, deleted, cleared));
    }
    crate::show::print(
        ctx,
        || {
            serde_json::Value::Array(
                report
                    .iter()
                    .map(|(server, listed, deleted, cleared)| json!({"server": server, "keys": listed, "deleted": deleted, "cleared": cleared}))
                    .collect(),
            )
        },
        || {
            let mut out = String::new();
            for (server, listed, deleted, cleared) in &report {
                let mark = match cleared {
                    true => "mark cleared",
                    false => {
                        "still marked (a change during the sweep marked it again, or a key failed: run settle again)"
                    }
                };
                out +=
                    &format!("settled {server}: {listed} keys, {deleted} strays deleted; {mark}\n");
            }
            if report.is_empty() {
                out += &format!("domain {}: no server to settle\n", ctx.local.domain);
            }
            out
        },
    )?;
    Ok(if failed { Exit::Server } else { Exit::Success })
}

pub fn clients(ctx: &Invocation) -> Result<Exit> {
    let registry = match ctx.local.writer(false) {
        Err(libmcshm::Error::PermissionDenied { .. }) => {
            Registry::open(&ctx.local.dir, &ctx.local.domain)?
        }
        other => other?,
    };
    // Every process with a record, then every other process that maps the file (read-only
    // processes, and those beyond the file's records), so a host with 500 clients lists 500.
    let mut clients = registry.process_records();
    let unrecorded: Vec<_> = libmcshm::processes::processes_mapping(registry.path())
        .into_iter()
        .filter(|p| !clients.iter().any(|c| c.pid == p.pid))
        .collect();
    let extra = unrecorded.len();
    clients.extend(unrecorded);
    crate::show::print(
        ctx,
        || {
            serde_json::Value::Array(
                clients
                    .iter()
                    .map(|c| json!({"pid": c.pid, "command": c.command, "version": c.version, "last_used_ms": c.last_used_ms, "recorded": c.recorded}))
                    .collect(),
            )
        },
        || {
            let mut out = String::from("PID      COMMAND          VERSION  LAST USED\n");
            for c in &clients {
                let (version, used) = match (c.recorded, c.last_used_ms) {
                    (true, 0) => (c.version.to_string(), "not yet".to_string()),
                    (true, ms) => (c.version.to_string(), utc(ms)),
                    (false, _) => ("-".to_string(), "-".to_string()),
                };
                out += &format!("{:<8} {:<16} {:<8} {}\n", c.pid, c.command, version, used);
            }
            if extra > 0 {
                out += &format!(
                    "({extra} without a clients record: opened read-only, or beyond the file's {} records; found by their mapping of the file)\n",
                    libmcshm::registry::PROCESS_SLOTS
                );
            }
            out
        },
    )?;
    Ok(Exit::Success)
}
