//! `mcadmin buckets`: a vbucket domain's map (see [`libmcshm::placement::buckets`]). Showing
//! it, and changing owners the one way that serves no stale read and loses no key: a change of
//! owners on a map (`move`, `balance`, a `load` of the same shape) is staged in the map's
//! forward rows, its keys are moved as a drain moves them ([`libmcshm::rebucket`]), and the
//! forward rows then become the rows. A new map or a new shape (a first `balance`, a `load` or
//! `balance` of another bucket count) places every key anew, at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use libmcshm::drain::DrainCounts;
use libmcshm::placement::buckets::{DEFAULT_BUCKETS, UNASSIGNED, cell};
use libmcshm::placement::{BucketMap, Distribution, Shape};
use libmcshm::rebucket::{self, Rebucket};
use libmcshm::table::{Table, routed};
use libmcshm::{Address, Registry, Timeouts};
use mcshm_cli::UsageError;
use serde_json::json;

use crate::buckets_json;
use crate::cli::Pace;
use crate::lifecycle::move_keys;
use crate::show::print;
use crate::store::Written;
use crate::{Exit, Invocation};

/// `buckets list`.
pub fn list(ctx: &Invocation) -> Result<Exit> {
    let snapshot = ctx.store.snapshot()?;
    let map = rebucket::map_of(&snapshot)?;
    let counts = map.counts(snapshot.servers.len());
    let (leaving, arriving) = map.moving_counts(snapshot.servers.len());
    let shape = map.shape();
    print(
        ctx,
        || {
            let servers: Vec<_> = snapshot
                .servers
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    json!({"server": s.address.to_string(), "state": s.state.as_str(),
                           "buckets": counts[i].0, "replicas": counts[i].1,
                           "moving_off": leaving[i], "moving_on": arriving[i]})
                })
                .collect();
            json!({"domain": snapshot.domain, "version": snapshot.version,
                   "hash": snapshot.policy.distribution.hash_name(),
                   "buckets": shape.buckets, "replicas": shape.replicas,
                   "moving": map.moving(), "unassigned": map.unassigned(),
                   "servers": servers})
        },
        || {
            let mut out = format!(
                "domain {}, version {}: {} buckets, {} replica column{}, hash {}; {} moving, {} unassigned\n",
                snapshot.domain,
                snapshot.version,
                shape.buckets,
                shape.replicas,
                if shape.replicas == 1 { "" } else { "s" },
                snapshot.policy.distribution.hash_name(),
                map.moving(),
                map.unassigned(),
            );
            out += &format!(
                "{:<28} {:<9} {:>8} {:>9} {:>10} {:>9}\n",
                "SERVER", "STATE", "BUCKETS", "REPLICAS", "MOVING-OFF", "MOVING-ON"
            );
            for (i, s) in snapshot.servers.iter().enumerate() {
                out += &format!(
                    "{:<28} {:<9} {:>8} {:>9} {:>10} {:>9}\n",
                    s.address.to_string(),
                    s.state.as_str(),
                    counts[i].0,
                    counts[i].1,
                    leaving[i],
                    arriving[i]
                );
            }
            out
        },
    )?;
    Ok(Exit::Success)
}

/// `buckets dump`: the map as libvbucket JSON.
pub fn dump(ctx: &Invocation) -> Result<Exit> {
    let snapshot = ctx.store.snapshot()?;
    let (map, hash) = rebucket::vbucket_of(&snapshot)?;
    let servers: Vec<String> = snapshot
        .servers
        .iter()
        .map(|s| s.address.to_string())
        .collect();
    let text = buckets_json::to_json(hash, &servers, map).map_err(UsageError)?;
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, text.as_bytes())?;
    Ok(Exit::Success)
}

/// `buckets load FILE`: the map of a libvbucket config, its servers found in the domain. On a
/// vbucket domain of the same shape and hash, the owners that change move (staged, then their
/// keys moved); otherwise the map is taken at once.
pub fn load(ctx: &Invocation, file: &std::path::Path, pace: Pace) -> Result<Exit> {
    let bytes = read_bounded(file)?;
    let mut notes = Vec::new();
    let config = buckets_json::parse(&bytes, &mut notes)
        .map_err(|why| UsageError(format!("in {}: {why}; nothing changed", file.display())))?;
    let current = ctx.store.snapshot()?;
    let positions = config
        .servers
        .iter()
        .map(|text| {
            let address = Address::parse(text).map_err(|e| UsageError(e.to_string()))?;
            current
                .servers
                .iter()
                .position(|s| s.address.same_server(&address))
                .ok_or_else(|| {
                    UsageError(format!(
                        "server {text} of {}'s serverList is not in domain {}: add it first (`mcadmin add {text}`); nothing changed",
                        file.display(),
                        ctx.local.domain
                    ))
                })
        })
        .collect::<Result<Vec<usize>, UsageError>>()?;
    for note in notes {
        eprintln!("mcadmin: note: in {}: {note}", file.display());
    }
    let remap = |cells: &[u16]| -> Vec<u16> {
        cells
            .iter()
            .map(|&c| cell(c).map_or(UNASSIGNED, |p| positions[p] as u16))
            .collect()
    };
    let loaded = &config.map;
    let listed = current.servers.len();
    let shape = loaded.shape();
    let rows = remap(loaded.cells());
    let forward = loaded.forward_cells().map(remap);
    let same_shape = current.policy.distribution == Distribution::VBucket(config.hash)
        && current.buckets.as_ref().is_some_and(|m| m.shape() == shape);
    if !same_shape {
        let map = BucketMap::new(shape, rows, forward, listed)
            .map_err(|why| UsageError(format!("in {}: {why}; nothing changed", file.display())))?;
        let map = Arc::new(map);
        let written = ctx.store.transact(false, |t| {
            if t.servers.len() != listed {
                return Err(changed_meanwhile());
            }
            t.policy.distribution = Distribution::VBucket(config.hash);
            t.buckets = Some(map.clone());
            Ok(())
        })?;
        return report_commit(ctx, "bucket map loaded", written);
    }
    // The loaded owners become the forward rows of the current map: what changes moves.
    let target = match &forward {
        Some(forward) => forward.clone(),
        None => rows,
    };
    stage_and_move(ctx, pace, |t| {
        let map = map_in(ctx, t)?;
        no_moves_under_way(map)?;
        if t.servers.len() != listed {
            return Err(changed_meanwhile());
        }
        BucketMap::new(shape, map.cells().to_vec(), Some(target.clone()), listed)
            .map_err(|why| libmcshm::Error::BadBuckets { why })
    })
}

fn changed_meanwhile() -> libmcshm::Error {
    libmcshm::Error::BadBuckets {
        why: "the server list changed while the map was read: load it again".into(),
    }
}

/// A file (or `-`, stdin) of at most the codec's limit.
fn read_bounded(file: &std::path::Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let limit = buckets_json::MAX_INPUT as u64 + 1;
    let mut bytes = Vec::new();
    let read = match file.as_os_str() == "-" {
        true => std::io::stdin().lock().take(limit).read_to_end(&mut bytes),
        false => std::fs::File::open(file).and_then(|f| f.take(limit).read_to_end(&mut bytes)),
    };
    read.map_err(|e| UsageError(format!("cannot read {}: {e}", file.display())))?;
    Ok(bytes)
}

/// `buckets balance`.
pub fn balance(
    ctx: &Invocation,
    buckets: Option<usize>,
    replicas: Option<usize>,
    pace: Pace,
) -> Result<Exit> {
    let current = ctx.store.snapshot()?;
    // A shape not given is the current map's (a new map: 1024 buckets, no replicas).
    let now = current.buckets.as_ref().map(|m| m.shape());
    let wanted = (
        buckets
            .or(now.map(|s| s.buckets))
            .unwrap_or(DEFAULT_BUCKETS),
        replicas.or(now.map(|s| s.replicas)).unwrap_or(0),
    );
    if now.is_none_or(|s| (s.buckets, s.replicas) != wanted) {
        // A new map (or a new shape): taken at once, every key placed anew.
        let shape = Shape::new(wanted.0, wanted.1)
            .map_err(|why| UsageError(format!("invalid bucket map: {why}")))?;
        let written = ctx.store.transact(false, |t| {
            let positions = routed(&t.servers, libmcshm::table::Failover::Rehash);
            if !t.policy.distribution.has_buckets() {
                t.policy.distribution = Distribution::VBucket(Default::default());
            }
            t.buckets = Some(Arc::new(BucketMap::balanced(shape, &positions)));
            Ok(())
        })?;
        return report_commit(ctx, "new bucket map", written);
    }
    stage_and_move(ctx, pace, |t| {
        let map = map_in(ctx, t)?;
        no_moves_under_way(map)?;
        let positions = routed(&t.servers, libmcshm::table::Failover::Rehash);
        if positions.is_empty() {
            return Err(libmcshm::Error::BadBuckets {
                why: "no server is up to own buckets".into(),
            });
        }
        Ok(map.plan_balance(&positions))
    })
}

/// `buckets move --count N FROM TO`.
pub fn move_buckets(
    ctx: &Invocation,
    count: usize,
    from: &Address,
    to: &Address,
    pace: Pace,
) -> Result<Exit> {
    if count == 0 {
        return Err(UsageError("--count must be 1 or more".into()).into());
    }
    stage_and_move(ctx, pace, |t| {
        let map = map_in(ctx, t)?;
        let position = |a: &Address| {
            t.servers
                .iter()
                .position(|s| s.address.same_server(a))
                .ok_or_else(|| libmcshm::Error::NoServer {
                    server: a.to_string(),
                    domain: ctx.local.domain.to_string(),
                })
        };
        let (f, to_at) = (position(from)?, position(to)?);
        if t.servers[to_at].state != libmcshm::State::Up {
            return Err(libmcshm::Error::invalid(
                "server",
                &to.to_string(),
                format!(
                    "it is {}: buckets move to servers that are up",
                    t.servers[to_at].state
                ),
            ));
        }
        map.plan_move(count, f, to_at)
            .map_err(|why| libmcshm::Error::BadBuckets {
                why: format!("cannot move {count} buckets off {from}: {why}"),
            })
    })
}

/// `buckets finish`.
pub fn finish(ctx: &Invocation, pace: Pace) -> Result<Exit> {
    stage_and_move(ctx, pace, |t| Ok((**map_in(ctx, t)?).clone()))
}

/// The bucket map of table `t` of the domain, or the error saying it has none.
fn map_in<'t>(ctx: &Invocation, t: &'t Table) -> libmcshm::Result<&'t Arc<BucketMap>> {
    t.buckets
        .as_ref()
        .ok_or_else(|| rebucket::not_vbucket(ctx.local.domain.as_str(), &t.policy.distribution))
}

/// Refused while moves are staged: a new plan over them could send a staged bucket where its
/// moved keys are not.
fn no_moves_under_way(map: &BucketMap) -> libmcshm::Result<()> {
    match map.moving() {
        0 => Ok(()),
        _ => Err(libmcshm::Error::BadBuckets {
            why: "moves are under way: complete them first (`mcadmin buckets finish`)".into(),
        }),
    }
}

/// Stages the map `plan` makes of the current table (its forward rows), moves the keys of every
/// moving bucket, and completes the moves.
pub fn stage_and_move(
    ctx: &Invocation,
    pace: Pace,
    plan: impl Fn(&Table) -> libmcshm::Result<BucketMap>,
) -> Result<Exit> {
    let mut staged_map = None;
    let written = ctx.store.transact(false, |t| {
        let map = Arc::new(plan(t)?);
        staged_map = Some(map.clone());
        t.buckets = Some(map);
        Ok(())
    })?;
    let staged_map = staged_map.expect("staged");
    let staged_at = commit_number(&written);
    let moving = staged_map.moving();
    if moving > 0 {
        eprintln!(
            "mcadmin: {moving} buckets staged to move ({}); moving their keys",
            describe(&written)
        );
    }
    if !local_table_with(ctx, &staged_map, pace.mirror_timeout)? {
        eprintln!(
            "mcadmin: this host's table of domain {} does not hold the staged map after {} s (--mirror-timeout): is `mcadmin sync` running for it? The moves stay staged (served correctly): run `mcadmin buckets finish` here once it mirrors them",
            ctx.local.domain,
            pace.mirror_timeout.as_secs_f64()
        );
        return Ok(Exit::No);
    }
    let timeouts = Timeouts::default();
    let mut mover = Rebucket::start(&ctx.local.dir, &ctx.local.domain, timeouts)?;
    let total = mover.len();
    let started = Instant::now();
    let moved_all = move_keys(total, pace.rate, |n| {
        if let Err(err) = mover.move_key(n) {
            eprintln!("mcadmin: {}: {err}", String::from_utf8_lossy(mover.key(n)));
        }
    })?;
    if let Err(n) = moved_all {
        eprintln!(
            "\nmcadmin: interrupted after {n} of {total} keys; the buckets stay staged (served correctly): run `mcadmin buckets finish` to complete them"
        );
        return Ok(Exit::No);
    }
    let seconds = started.elapsed().as_secs_f64();
    let DrainCounts {
        moved,
        kept,
        gone,
        failed,
    } = mover.counts();
    if failed > 0 {
        eprintln!(
            "mcadmin: {failed} keys could not be moved; the buckets stay staged (run `mcadmin buckets finish`)"
        );
        return Ok(Exit::Server);
    }
    let staged = mover.staged().clone();
    let done = ctx.store.transact(false, |t| {
        t.buckets = Some(rebucket::completed(t, &staged)?);
        Ok(())
    })?;
    let sources: Vec<String> = mover.sources().iter().map(|a| a.to_string()).collect();
    let domain = ctx.local.domain.to_string();
    print(
        ctx,
        || {
            json!({"domain": domain, "buckets_moved": moving, "staged_at": staged_at,
                   "completed_at": commit_number(&done), "from": sources, "moved": moved,
                   "kept": kept, "gone": gone, "seconds": seconds})
        },
        || {
            format!(
                "domain {domain}: {moving} buckets moved off {}: {moved} keys moved, {kept} already newer on their new owner, {gone} gone (expired or evicted) in {seconds:.1} s; {}\n",
                match sources.is_empty() {
                    true => "no server".to_string(),
                    false => sources.join(", "),
                },
                describe(&done)
            )
        },
    )?;
    Ok(Exit::Success)
}

/// The version or fleet revision a write published.
fn commit_number(written: &Written) -> u64 {
    match written {
        Written::Version(c) => c.version,
        Written::Revision(c) => c.revision as u64,
    }
}

fn describe(written: &Written) -> String {
    match written {
        Written::Version(c) => format!("version {}", c.version),
        Written::Revision(c) => format!("fleet revision {}", c.revision),
    }
}

fn report_commit(ctx: &Invocation, what: &str, written: Written) -> Result<Exit> {
    let domain = ctx.local.domain.to_string();
    print(
        ctx,
        || json!({"domain": domain, "changed": what, "version": commit_number(&written)}),
        || format!("domain {domain}: {what}, {}\n", describe(&written)),
    )?;
    Ok(Exit::Success)
}

/// Waits until this host's table holds `map` (at once here; with --etcd, once the host's agent
/// has mirrored the commit, for at most `limit`): the keys move by the table this host's clients
/// route with. Whether it does.
fn local_table_with(ctx: &Invocation, map: &Arc<BucketMap>, limit: Duration) -> Result<bool> {
    // A limit past what a clock can say is no limit.
    let deadline = Instant::now().checked_add(limit);
    let mut registry = Registry::open(&ctx.local.dir, &ctx.local.domain)?;
    loop {
        let version = registry.version();
        let snapshot = registry.snapshot()?;
        if snapshot.buckets.as_deref() == Some(&**map) {
            return Ok(true);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
        registry.wait_for_change(version, Duration::from_millis(200));
    }
}
