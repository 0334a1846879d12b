//! Bringing servers back without stale data: probing a down server, and the rejoin policy
//! (flush, warm, trust) that every path back goes through: `mcadmin up`, the watch daemon, and
//! a client's retry probe.
//!
//! The invariant: a server that was down is marked up only after a successful `flush_all`
//! (unless the domain's rejoin policy is `trust`). While it was down its keys were not written
//! there, so whatever it holds may be stale; after the flush it holds nothing. If the flush
//! fails, it stays down.
//!
//! Under the `replay` policy the server keeps its cache: the keys it missed while away (every
//! write that should have reached it, recorded by the router in the domain's invalidation log)
//! are deleted on it instead, then it is marked up; keys appended meanwhile are deleted after,
//! and the log is cleared. It is flushed as before when the log cannot vouch for what it
//! missed: no log, a log that began after the server went down, a log that overflowed or found
//! a torn record, or a write that found no section.

use std::path::Path;

use crate::access::Access;
use crate::address::Address;
use crate::clock::now_ms;
use crate::conn::{Conn, Timeouts};
use crate::domain::Domain;
use crate::edit;
use crate::error::{Error, Result};
use crate::proto::{Reply, Request, StoreVerb};
use crate::registry::{
    Cleared, Commit, FileOwnership, Invalidations, LockWait, LogCapacity, Logged, Registry,
};
use crate::table::{CommitInfo, Policy, Rejoin, Server, State, Table, fit_reason};

/// One round trip (`version`), and with `check_key` a set and get of that key (PECL
/// memcache's checkState). `Err` names what failed.
pub fn health_check(
    address: &Address,
    timeouts: Timeouts,
    check_key: Option<&[u8]>,
    access: &Access,
) -> Result<(), String> {
    let mut conn =
        Conn::connect_as(address, timeouts, access).map_err(|e| format!("connect: {e}"))?;
    let mut ask = |request: Request<'_>| -> Result<Reply, String> {
        conn.ask(&request).map_err(|e| conn.explain(&e))
    };
    match ask(Request::Version)? {
        Reply::Version(_) => {}
        other => return Err(format!("version: unexpected {other:?}")),
    }
    if let Some(key) = check_key {
        let token = now_ms().to_string();
        let set = Request::Store {
            verb: StoreVerb::Set,
            key,
            flags: 0,
            exptime: 60,
            value: token.as_bytes(),
        };
        if ask(set)? != Reply::Stored {
            return Err("check key: set not stored".into());
        }
        let keys = [key];
        match ask(Request::Get {
            keys: &keys,
            cas: false,
            touch: None,
        })? {
            Reply::Values(items) if items.first().is_some_and(|i| i.value == token.as_bytes()) => {}
            _ => return Err("check key: get did not return what was set".into()),
        }
    }
    Ok(())
}

/// `flush_all` on one server (with the domain's TLS and credentials, `access`); `Err` names what
/// failed.
pub fn flush(address: &Address, timeouts: Timeouts, access: &Access) -> Result<(), String> {
    let mut conn =
        Conn::connect_as(address, timeouts, access).map_err(|e| format!("connect: {e}"))?;
    match conn
        .ask(&Request::FlushAll { delay: None })
        .map_err(|e| conn.explain(&e))?
    {
        Reply::Ok => Ok(()),
        other => Err(format!("flush_all refused: {other:?}")),
    }
}

/// How many items `address` holds (`stats`' `curr_items`, with the domain's TLS and
/// credentials, `access`): `mcadmin add` asks before it flushes a server, so that a cache in
/// use is emptied only when the operator says so. Fences (see [`crate::fence`]) are not a
/// cache's items: a server that was in a fenced domain before holds its fence, so a server
/// with a few items is listed and its fences left out (when it can be listed). `Err` names
/// what failed.
pub fn items_held(address: &Address, timeouts: Timeouts, access: &Access) -> Result<u64, String> {
    let mut conn =
        Conn::connect_as(address, timeouts, access).map_err(|e| format!("connect: {e}"))?;
    let held = match conn
        .ask(&Request::Stats { group: None })
        .map_err(|e| conn.explain(&e))?
    {
        Reply::Stats(stats) => stats
            .iter()
            .find(|(name, _)| name == "curr_items")
            .and_then(|(_, value)| value.parse().ok())
            .ok_or_else(|| "stats has no curr_items".to_string())?,
        other => return Err(format!("stats refused: {other:?}")),
    };
    if held == 0 || held > FEW_ITEMS {
        return Ok(held);
    }
    // The listing leaves fences out.
    Ok(
        crate::metadump::list_keys(address, timeouts, access)
            .map_or(held, |keys| keys.len() as u64),
    )
}

/// How many items a server may hold for [`items_held`] to list them (to leave its fences out).
const FEW_ITEMS: u64 = 64;

/// What [`rejoin`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejoined {
    /// Marked up; `flushed` says whether it was flushed first.
    Up { flushed: bool },
    /// Marked up after the `keys` it missed while away were deleted on it (rejoin `replay`).
    Replayed { keys: usize },
    /// It was draining and an operator brought it up: the drain is cancelled.
    DrainCancelled,
    /// It was not down (up, draining, or gone from the table), or it is held down by an
    /// operator and this is not one: nothing done.
    NotDown,
}

/// Who brings servers back, and how ([`rejoin_all`]).
#[derive(Clone, Copy, Debug)]
pub struct Rejoiner<'a> {
    /// Named in the new reason ("mcadmin up", "retry probe", "mcadmin watch").
    pub by: &'a str,
    /// An operator's `up`: brings back servers held down by an operator too. Automatic paths
    /// (retry probe, watch, fleet agent) leave held servers down.
    pub operator: bool,
    /// The operator's override: mark up without contacting the server (`up --no-flush`).
    pub skip_flush: bool,
    pub timeouts: Timeouts,
}

/// The rejoin rule of one domain, decided once from its policy and who asks, before any flush:
/// whether servers are flushed, the reason they get, their warm-up window. Pure: the clock is
/// passed to [`RejoinRule::decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejoinRule {
    /// Each server is flushed (`flush_all`) before it is marked up: not under the `trust`
    /// policy, nor with the operator's `--no-flush`.
    pub flush: bool,
    /// The reason of every server brought back.
    pub reason: String,
    /// Under the `warm` policy: how long (ms) a rejoined server's misses are filled from the
    /// interim owner. `None`: no warm-up.
    pub warm_ms: Option<u64>,
    /// An operator asks: a held server comes back too, and a draining one stops draining.
    pub operator: bool,
    /// Who asks, as a cancelled drain's reason names it.
    pub by: String,
}

/// What a rejoin does to one server ([`RejoinRule::decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Flush it first (and only then apply `transition`; a failed flush leaves it down).
    pub flush: bool,
    pub transition: edit::Transition<'a>,
}

impl RejoinRule {
    /// The rule under `policy` for `how`; `signature` ends the reason after `how.by`: who
    /// commits (", pid N" on this host, " on HOST" for a fleet's table, which every host
    /// shares).
    pub fn new(policy: &Policy, how: &Rejoiner<'_>, signature: &str) -> RejoinRule {
        let flush = policy.rejoin != Rejoin::Trust && !how.skip_flush;
        let reason = match flush {
            true => format!("rejoined after flush_all ({}{signature})", how.by),
            false => format!("rejoined without flush ({}{signature})", how.by),
        };
        let warm_ms = match policy.rejoin {
            Rejoin::Warm => Some(u64::from(policy.warm_window_s) * 1000),
            _ => None,
        };
        RejoinRule {
            flush,
            reason,
            warm_ms,
            operator: how.operator,
            by: how.by.to_string(),
        }
    }

    /// What happens to `server` at `now_ms`: a down server that may come back (not held, or an
    /// operator asks) rejoins, flushed first if the rule flushes, with the warm-up window from
    /// `now_ms`; a draining one stops draining if an operator asks; `None`: nothing.
    pub fn decide(&self, server: &Server, now_ms: u64) -> Option<Decision<'_>> {
        if server.may_rejoin(self.operator) {
            let rejoining = edit::Rejoining {
                reason: &self.reason,
                warm_until_ms: self.warm_ms.map_or(0, |ms| now_ms + ms),
                flushed: self.flush,
                operator: self.operator,
            };
            return Some(Decision {
                flush: self.flush,
                transition: edit::Transition::Rejoin(rejoining),
            });
        }
        (self.operator && server.state == State::Draining).then_some(Decision {
            flush: false,
            transition: edit::Transition::CancelDrain { by: &self.by },
        })
    }
}

/// A server a rejoin names, found again in the table it edits: by id in this host's table (ids
/// are never reused: a server deleted and added again meanwhile is not the one named), by
/// address in a fleet's table (whose servers have no ids).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Named {
    Id(u32),
    Address(Address),
}

impl Named {
    /// Where the named server is in `servers`. An id that is gone is `None` (nothing to bring
    /// back); an address that is gone is the error naming it in `domain`, as when it was looked
    /// up.
    fn position(&self, servers: &[Server], domain: &str) -> Result<Option<usize>> {
        match self {
            Named::Id(id) => Ok(servers.iter().position(|s| s.id == *id)),
            Named::Address(address) => servers
                .iter()
                .position(|s| s.address.same_server(address))
                .map(Some)
                .ok_or_else(|| Error::NoServer {
                    server: address.to_string(),
                    domain: domain.to_string(),
                }),
        }
    }
}

/// Where a rejoin reads and edits a domain's table: this host's [`Registry`], or the fleet's
/// table in etcd (mcadmin's `--etcd`). The rule ([`rejoin_in`]) is the same for both; a table
/// only says how it is read, edited and named.
pub trait RejoinTable {
    /// What its reads and transactions fail with (a flush's [`Error`] converts into it).
    type Error: From<Error>;
    /// The domain's name, for errors.
    fn domain(&self) -> String;
    /// The domain's table as it is now.
    fn read(&mut self) -> std::result::Result<Table, Self::Error>;
    /// Runs `edit` as one transaction on the table as it is then (another writer may have
    /// changed it since [`RejoinTable::read`]), publishing the result if it changed.
    fn commit(
        &mut self,
        edit: &mut dyn FnMut(&mut Table) -> Result<()>,
    ) -> std::result::Result<(), Self::Error>;
    /// What the domain's servers ask of a client (TLS, credentials): for the flush.
    fn access(&self) -> Result<Access>;
    /// Who commits, as a reason ends after the rejoiner's name (see [`RejoinRule::new`]).
    fn signature(&self) -> String;
    /// How `server` of this table is named across transactions.
    fn name(&self, server: &Server) -> Named;
    /// Who can vouch for what the domain's down servers missed (rejoin `replay`): this host's
    /// invalidation log, or for a fleet's table the hosts that mirror it, each replaying its
    /// own log. `None`: no one can, and a rejoin flushes.
    fn missed(&mut self) -> Option<Missed> {
        None
    }
}

/// Who vouches for what a down server missed under the `replay` policy ([`RejoinTable::missed`]).
pub enum Missed {
    /// This host's invalidation log: the rejoin deletes the logged keys itself.
    Log(Invalidations),
    /// A fleet: every host that mirrors the domain deletes on the server the keys its own
    /// clients logged (`mcshm_fleet`'s replay). Asked once per server; `Err` says why the
    /// server must be flushed instead (a host that cannot vouch or did not answer in time).
    Fleet(AskFleet),
    /// No one can vouch, and why (a process that maps the table read-only: it routes writes
    /// it cannot log). Servers are flushed, and their reason says why.
    Cannot(String),
}

/// How a rejoin asks a fleet to replay one server ([`Missed::Fleet`]).
pub type AskFleet = Box<dyn FnMut(&Server) -> std::result::Result<FleetReplayed, String> + Send>;

/// What the hosts of a fleet replayed on one server ([`Missed::Fleet`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FleetReplayed {
    /// The hosts that answered, every one that mirrors the domain.
    pub hosts: usize,
    /// The keys they deleted, in all.
    pub keys: usize,
}

impl RejoinTable for Registry {
    type Error = Error;

    fn domain(&self) -> String {
        Registry::domain(self).to_string()
    }

    fn read(&mut self) -> Result<Table> {
        Ok(self.current_snapshot()?.table())
    }

    fn commit(&mut self, edit: &mut dyn FnMut(&mut Table) -> Result<()>) -> Result<()> {
        self.transact(edit).map(drop)
    }

    fn access(&self) -> Result<Access> {
        let dir = self.path().parent().unwrap_or(Path::new("."));
        Access::load(dir, Registry::domain(self))
    }

    fn signature(&self) -> String {
        format!(", pid {}", std::process::id())
    }

    fn name(&self, server: &Server) -> Named {
        Named::Id(server.id)
    }

    fn missed(&mut self) -> Option<Missed> {
        // A table the fleet agent mirrors: other hosts wrote too, and their logs are theirs
        // (the agent's probe asks the fleet: `mcshm_fleet`).
        if self.current_snapshot().ok()?.fleet_revision != 0 {
            return None;
        }
        if let Some(why) = unlogged_reader(self.path()) {
            return Some(Missed::Cannot(why));
        }
        let dir = self.path().parent().unwrap_or(Path::new("."));
        Invalidations::open_or_create(dir, Registry::domain(self), LogCapacity::default())
            .ok()
            .map(Missed::Log)
    }
}

/// The logs of servers no longer in `servers` go with them (a process still routing with an
/// older table may have logged for one after it was deleted).
fn forget_deleted_in(log: &Invalidations, servers: &[Server]) {
    for id in log.servers() {
        if !servers.iter().any(|s| s.id == id) {
            let _ = log.forget(id);
        }
    }
}

/// After servers were deleted from this host's table in `dir`: their invalidation logs go
/// with them (a server that never came back). Nothing to do without a log.
pub fn forget_deleted(dir: &Path, domain: &Domain) -> Result<()> {
    if !crate::registry::log_path(dir, domain).exists() {
        return Ok(());
    }
    let servers = Registry::open(dir, domain)?
        .current_snapshot()?
        .servers
        .clone();
    let log = Invalidations::open_or_create(dir, domain, LogCapacity::default())?;
    forget_deleted_in(&log, &servers);
    Ok(())
}

/// A process that has the table at `path` mapped read-only, as why the log cannot vouch: it
/// may route writes (a client that cannot write the registry, or a C program that only looks
/// servers up and writes through its own client) and logs none of them. Only the processes
/// this user may see are found (all of them for root).
fn unlogged_reader(path: &Path) -> Option<String> {
    let reader = crate::processes::processes_mapping(path)
        .into_iter()
        .find(|p| !p.writable)?;
    Some(format!(
        "process {} ({}) has the table open read-only and logs none of its writes",
        reader.pid, reader.command
    ))
}

/// Runs a retry probe the router handed out: brings its server back through the domain's
/// rejoin policy if it answers (the rejoin's flush, or `version` round trip, is the probe: one
/// connection per lease).
pub fn run_probe(probe: mcshm_route::RetryProbe, timeouts: Timeouts) {
    if let Ok(mut writer) = probe.open_writer() {
        let _ = rejoin(
            &mut writer,
            probe.server_id(),
            timeouts,
            false,
            "retry probe",
        );
    }
}

/// Brings the down server with `id` back through the domain's rejoin policy (see
/// [`rejoin_all`]).
pub fn rejoin(
    writer: &mut Registry,
    id: u32,
    timeouts: Timeouts,
    skip_flush: bool,
    by: &str,
) -> Result<Rejoined> {
    let how = Rejoiner {
        by,
        operator: false,
        skip_flush,
        timeouts,
    };
    Ok(rejoin_all(writer, &[id], how)?.remove(0))
}

/// Brings the down servers with `ids` of this host's table back through the domain's rejoin
/// policy: see [`rejoin_in`].
pub fn rejoin_all(writer: &mut Registry, ids: &[u32], how: Rejoiner<'_>) -> Result<Vec<Rejoined>> {
    let table = RejoinTable::read(writer)?;
    let named: Vec<Named> = ids.iter().map(|id| Named::Id(*id)).collect();
    rejoin_in(writer, &table, &named, how)
}

/// Brings the `named` servers of `store` back through the domain's rejoin policy
/// ([`RejoinRule`], from `table`, the table as read): flush each down one (`trust`: no
/// contact; `skip_flush`: no contact), then mark them all up in one transaction (one version),
/// with `by` in the reason; with `operator`, draining servers among them stop draining in the
/// same version. A failed flush leaves every one of them as it was and is an error naming the
/// server. When none is down or (for an operator) draining, nothing is committed. One answer
/// per name.
pub fn rejoin_in<S: RejoinTable>(
    store: &mut S,
    table: &Table,
    named: &[Named],
    how: Rejoiner<'_>,
) -> std::result::Result<Vec<Rejoined>, S::Error> {
    let policy = table.policy;
    let rule = RejoinRule::new(&policy, &how, &store.signature());
    let domain = store.domain();
    let mut decided = Vec::new();
    for name in named {
        if let Some(at) = name.position(&table.servers, &domain)?
            && let Some(decision) = rule.decide(&table.servers[at], now_ms())
        {
            decided.push((&table.servers[at], decision.flush));
        }
    }
    if decided.is_empty() {
        return Ok(vec![Rejoined::NotDown; named.len()]);
    }
    let mut missed = match policy.rejoin {
        Rejoin::Replay => store.missed(),
        _ => None,
    };
    if let Some(Missed::Log(log)) = &missed {
        forget_deleted_in(log, &table.servers);
    }
    // Each server to contact: replayed when someone vouches for what it missed, else flushed.
    let mut replayed: Vec<Replayed<'_>> = Vec::new();
    // Flushed where a replay was asked for, and why (a fleet's host could not vouch).
    let mut flushed_why: Vec<(u32, &Address, String)> = Vec::new();
    let contacting: Vec<&Server> = decided
        .iter()
        .filter(|(_, flush)| *flush)
        .map(|(server, _)| *server)
        .collect();
    if !contacting.is_empty() {
        let access = store.access()?;
        for server in contacting {
            let address = &server.address;
            let stays_down = |error: String| Error::Network {
                server: address.to_string(),
                error: format!(
                    "{error}; it stays down (rejoin policy {})",
                    policy.rejoin.as_str()
                ),
            };
            match replay_missed(missed.as_mut(), server, how.timeouts, &access) {
                Vouch::Replayed(done) => replayed.push(done),
                Vouch::Failed(error) => return Err(stays_down(error).into()),
                Vouch::Flush(why) => {
                    flush(address, how.timeouts, &access).map_err(stays_down)?;
                    if let Some(why) = why {
                        flushed_why.push((server.id, address, why));
                    }
                }
            }
        }
    }
    let now = now_ms();
    let store_signature = store.signature();
    let mut replay_reason = String::new();
    let mut answers = vec![Rejoined::NotDown; named.len()];
    store.commit(&mut |t: &mut Table| {
        for (answer, name) in answers.iter_mut().zip(named) {
            let Some(at) = name.position(&t.servers, &domain)? else {
                continue;
            };
            let server = &mut t.servers[at];
            let Some(decision) = rule.decide(server, now) else {
                continue;
            };
            let replay = replayed
                .iter()
                .find(|r| r.id == server.id && r.address.same_server(&server.address));
            let why = flushed_why
                .iter()
                .find(|(id, address, _)| *id == server.id && address.same_server(&server.address));
            let transition = match (decision.transition, replay, why) {
                (edit::Transition::Rejoin(rejoining), Some(replay), _) => {
                    replay_reason = replay.reason(&how, &store_signature);
                    edit::Transition::Rejoin(edit::Rejoining {
                        reason: &replay_reason,
                        // It keeps its cache: the strays it held before stay marked.
                        flushed: false,
                        ..rejoining
                    })
                }
                (edit::Transition::Rejoin(rejoining), None, Some((_, _, why))) => {
                    replay_reason = fit_reason(
                        &format!("rejoined after flush_all ({}{store_signature}: ", how.by),
                        why,
                        ")",
                    );
                    edit::Transition::Rejoin(edit::Rejoining {
                        reason: &replay_reason,
                        ..rejoining
                    })
                }
                (transition, _, _) => transition,
            };
            edit::apply(server, transition, CommitInfo::now());
            *answer = match (decision.transition, replay) {
                (edit::Transition::Rejoin(_), Some(replay)) => {
                    Rejoined::Replayed { keys: replay.keys }
                }
                (edit::Transition::Rejoin(_), None) => Rejoined::Up {
                    flushed: rule.flush,
                },
                _ => Rejoined::DrainCancelled,
            };
        }
        Ok(())
    })?;
    if let Some(Missed::Log(log)) = &missed {
        let access = store.access()?;
        for replay in replayed {
            if let Some(logged) = replay.logged {
                let _ = settle_log(log, logged, replay.address, how.timeouts, &access);
            }
        }
    }
    Ok(answers)
}

/// A server whose missed keys were deleted on it before it is marked up.
struct Replayed<'a> {
    /// Its id in the table read (a fleet's table: none, and the address finds it).
    id: u32,
    address: &'a Address,
    keys: usize,
    /// This host's log as replayed (settled after the mark-up); `None` for a fleet's replay,
    /// which each host settles when its table has the server up.
    logged: Option<Logged>,
    /// The hosts that replayed, for a fleet's replay.
    hosts: Option<usize>,
    /// It restarted while away (empty): nothing was deleted.
    restarted: bool,
}

impl Replayed<'_> {
    fn reason(&self, how: &Rejoiner<'_>, signature: &str) -> String {
        let done = match self.hosts {
            None if self.restarted => "rejoined empty: it restarted while away (".to_string(),
            None => format!("rejoined after deleting the {} keys it missed (", self.keys),
            Some(hosts) => format!(
                "rejoined after {hosts} hosts deleted the {} keys it missed (",
                self.keys
            ),
        };
        fit_reason(&done, how.by, &format!("{signature})"))
    }
}

/// What became of a server's replay ([`replay_missed`]).
enum Vouch<'a> {
    /// Its missed keys were deleted on it.
    Replayed(Replayed<'a>),
    /// Nobody vouches for what it missed: flush it (with why, when a fleet was asked).
    Flush(Option<String>),
    /// The deletes failed: it stays down.
    Failed(String),
}

/// Deletes on `server` what it missed, when `missed` vouches for it.
fn replay_missed<'a>(
    missed: Option<&mut Missed>,
    server: &'a Server,
    timeouts: Timeouts,
    access: &Access,
) -> Vouch<'a> {
    let done = |keys, logged, hosts| Replayed {
        id: server.id,
        address: &server.address,
        keys,
        logged,
        hosts,
        restarted: false,
    };
    match missed {
        None => Vouch::Flush(None),
        Some(Missed::Log(log)) => {
            let Some(logged) = vouched(log, server) else {
                return Vouch::Flush(None);
            };
            let keys = logged.keys.as_deref().unwrap_or_default();
            let n = keys.len();
            let since = Some(server.since_ms);
            match replay_unless_restarted(&server.address, keys, since, timeouts, access) {
                Ok(false) => Vouch::Replayed(done(n, Some(logged), None)),
                Ok(true) => Vouch::Replayed(Replayed {
                    restarted: true,
                    ..done(0, Some(logged), None)
                }),
                Err(e) => Vouch::Failed(e),
            }
        }
        Some(Missed::Fleet(ask)) => match ask(server) {
            Ok(fleet) => Vouch::Replayed(done(fleet.keys, None, Some(fleet.hosts))),
            Err(why) => Vouch::Flush(Some(why)),
        },
        Some(Missed::Cannot(why)) => Vouch::Flush(Some(why.clone())),
    }
}

/// The server's log, when it vouches for what `server` missed while down: the log began
/// before the server went down, every write found a section, and it neither overflowed nor
/// holds a torn record.
fn vouched(log: &Invalidations, server: &Server) -> Option<Logged> {
    vouched_since(log, server.id, server.since_ms)
}

fn vouched_since(log: &Invalidations, id: u32, since_ms: u64) -> Option<Logged> {
    if log.unlogged() || log.created_ms() > since_ms {
        return None;
    }
    let logged = log.read(id);
    (!logged.overflowed()).then_some(logged)
}

/// One host's part of a fleet's replay: deletes on `server` (of this host's table in `dir`)
/// the keys this host's clients logged for it, when the log vouches for every write since
/// `since_ms` (the earliest time a host saw it down). Returns the log as replayed, to settle
/// once the server is up here ([`settle_host_log`]); `Err` says why this host cannot vouch
/// (the server must then be flushed).
pub fn replay_host_log(
    dir: &Path,
    domain: &Domain,
    server: &Server,
    since_ms: u64,
    timeouts: Timeouts,
) -> std::result::Result<Logged, String> {
    if let Some(why) = unlogged_reader(&domain.path_in(dir)) {
        return Err(why);
    }
    let log = Invalidations::open(dir, domain)
        .map_err(|e| format!("its invalidation log cannot be read: {e}"))?
        .ok_or("it has no invalidation log")?;
    let logged = vouched_since(&log, server.id, since_ms.min(server.since_ms)).ok_or(
        "its invalidation log cannot vouch (it began after the server went down, overflowed or is torn)",
    )?;
    let access = Access::load(dir, domain).map_err(|e| e.to_string())?;
    let keys = logged.keys.as_deref().unwrap_or_default();
    let down_since = since_ms.min(server.since_ms);
    replay_unless_restarted(&server.address, keys, Some(down_since), timeouts, &access)?;
    Ok(logged)
}

/// Once server `id` (at `address`) is up again in this host's table, which the fleet mirrors:
/// deletes on it what this host's clients logged while it was down, and clears its log (a log
/// that overflowed gets the server flushed: a flush costs its cache, never a stale read).
/// `replayed`: the log as this host replayed it for the fleet ([`replay_host_log`]), whose
/// keys are not sent again. Whether this host answered the fleet's request or not (its agent
/// was away), its own clients read nothing it logged once this is done.
/// Returns whether the log was cleared.
pub fn settle_host_log(
    dir: &Path,
    domain: &Domain,
    id: u32,
    address: &Address,
    replayed: Option<Logged>,
    timeouts: Timeouts,
) -> bool {
    let capacity = LogCapacity::default(); // of a log that exists: its own
    let (Ok(log), Ok(access)) = (
        Invalidations::open_or_create(dir, domain, capacity),
        Access::load(dir, domain),
    ) else {
        return false;
    };
    let logged = match replayed {
        Some(logged) => logged,
        None => {
            let logged = log.read(id);
            let done = match &logged.keys {
                Some(keys) => replay(address, keys, timeouts, &access),
                None => flush(address, timeouts, &access),
            };
            if done.is_err() {
                return false;
            }
            logged
        }
    };
    settle_log(&log, logged, address, timeouts, &access)
}

/// After a replayed server is marked up: deletes what was logged for it meanwhile (a write
/// routed on the version before), then clears its log; a log that overflowed meanwhile gets
/// the server flushed (it is up already: a flush costs its cache, never a stale read).
/// Returns whether the log was cleared.
fn settle_log(
    log: &Invalidations,
    mut logged: Logged,
    address: &Address,
    timeouts: Timeouts,
    access: &Access,
) -> bool {
    for _ in 0..4 {
        match log.clear(&logged) {
            Ok(Cleared::Done) => return true,
            Err(_) => return false,
            Ok(Cleared::Grew) => {}
        }
        logged = log.read(logged.server());
        let done = match &logged.keys {
            Some(keys) => replay(address, keys, timeouts, access),
            None => flush(address, timeouts, access),
        };
        if done.is_err() {
            return false;
        }
    }
    false
}

/// Deletes `keys` (as the server stores them) on the server at `address`, pipelined a
/// thousand at a time: each answered DELETED or NOT_FOUND. `Err` names what failed.
pub fn replay(
    address: &Address,
    keys: &[Vec<u8>],
    timeouts: Timeouts,
    access: &Access,
) -> Result<(), String> {
    replay_unless_restarted(address, keys, None, timeouts, access).map(drop)
}

/// How far apart (ms) a server's start and the time it went down must be for the start to
/// count as after it (memcached's clock has seconds, and it may run on another host).
const RESTART_SLACK_MS: u64 = 2_000;

/// [`replay`], but when `down_since_ms` is given and the server started after it (`stats`:
/// `time` − `uptime`), it restarted while away and holds nothing it missed: nothing is deleted
/// and the answer is `true`.
fn replay_unless_restarted(
    address: &Address,
    keys: &[Vec<u8>],
    down_since_ms: Option<u64>,
    timeouts: Timeouts,
    access: &Access,
) -> Result<bool, String> {
    let mut conn =
        Conn::connect_as(address, timeouts, access).map_err(|e| format!("connect: {e}"))?;
    if let Some(since) = down_since_ms
        && !keys.is_empty()
    {
        let stats = conn
            .ask(&Request::Stats { group: None })
            .map_err(|e| format!("stats: {}", conn.explain(&e)))?;
        if started_ms(&stats).is_some_and(|started| started > since + RESTART_SLACK_MS) {
            return Ok(true);
        }
    }
    for batch in keys.chunks(1000) {
        let mut encoded = crate::proto::Encoded::new();
        for key in batch {
            encoded.push(&Request::Delete { key }, b"");
        }
        conn.send_requests(&encoded)
            .map_err(|e| format!("replaying deletes: {}", conn.explain(&e)))?;
        for _ in batch {
            match conn.receive(crate::proto::Expect::Delete) {
                Ok(Reply::Deleted | Reply::NotFound) => {}
                Ok(other) => return Err(format!("a replayed delete was answered {other:?}")),
                Err(e) => return Err(format!("replaying deletes: {}", conn.explain(&e))),
            }
        }
    }
    Ok(false)
}

/// When (ms since the epoch) a server started, from its `stats`: `time` − `uptime`, plus the 2 s
/// memcached adds to its uptime (its clock starts 2 s before the process, so that no relative
/// time is ever 0: `process_started` in memcached.c).
fn started_ms(stats: &Reply) -> Option<u64> {
    let Reply::Stats(stats) = stats else {
        return None;
    };
    let stat = |name: &str| -> Option<u64> {
        let (_, value) = stats.iter().find(|(n, _)| n == name)?;
        value.parse().ok()
    };
    Some((stat("time")?.checked_sub(stat("uptime")?)? + 2) * 1000)
}

/// What [`prepare_load`] found: the servers it flushed, and those it could not.
#[derive(Debug, Default)]
pub struct LoadPlan {
    /// Joined or came back up, flushed first: they hold no strays.
    pub flushed: Vec<crate::address::Address>,
    /// Could not be flushed: loaded down (not held: the retry probe flushes them when they
    /// answer), with the error.
    pub unflushed: Vec<(crate::address::Address, String)>,
    /// Came back up under `replay` with the keys they missed deleted instead of a flush (this
    /// host's log vouched for them): the log as replayed, settled after the commit.
    pub replayed: Vec<(crate::address::Address, Logged)>,
}

/// `mcadmin load` as transitions: a server the list has up that `current` does not have (it
/// joins) or has down (it rejoins) is flushed first, as `add` and `up` flush; one that cannot
/// be flushed is loaded down after failures instead, so that nothing stale is served. Under
/// `replay`, a server that rejoins has the keys it missed deleted instead when `missed` (this
/// host's log) vouches for them, as `up` does. With no `current` (a new domain: the boot-time
/// replay of the list) the servers are taken as the list says, as their state before this host
/// lost its table.
pub fn prepare_load(
    current: Option<&[crate::table::Server]>,
    loaded: &mut crate::table::Table,
    missed: Option<&Invalidations>,
    timeouts: Timeouts,
    access: &Access,
) -> LoadPlan {
    let mut plan = LoadPlan::default();
    let Some(current) = current else {
        return plan;
    };
    if loaded.policy.rejoin == Rejoin::Trust {
        return plan;
    }
    for server in &mut loaded.servers {
        let was = current
            .iter()
            .find(|c| c.address.same_server(&server.address));
        let joins = server.state == State::Up && was.is_none_or(|c| c.state == State::Down);
        if !joins {
            continue;
        }
        let vouched = match (was, missed) {
            (Some(was), Some(log)) if loaded.policy.rejoin == Rejoin::Replay => {
                vouched(log, was).map(|logged| (was.since_ms, logged))
            }
            _ => None,
        };
        let done = match vouched {
            Some((since, logged)) => {
                let keys = logged.keys.as_deref().unwrap_or_default();
                let n = keys.len();
                let replayed =
                    replay_unless_restarted(&server.address, keys, Some(since), timeouts, access);
                replayed.map(|restarted| {
                    server.reason = match restarted {
                        true => "load: rejoined empty: it restarted while away".into(),
                        false => format!("load: rejoined after deleting the {n} keys it missed"),
                    };
                    plan.replayed.push((server.address.clone(), logged));
                })
            }
            None => flush(&server.address, timeouts, access).map(|()| {
                server.strays_since = 0;
                plan.flushed.push(server.address.clone());
            }),
        };
        match done {
            Ok(()) => {}
            Err(error) => {
                server.state = State::Down;
                server.held = false;
                let tail = "); retried automatically";
                server.reason = fit_reason("load: cannot flush it (", &error, tail);
                plan.unflushed.push((server.address.clone(), error));
            }
        }
    }
    plan
}

impl LoadPlan {
    /// Makes `table` the loaded list (see [`edit::merge_loaded`]): the servers flushed for the
    /// load start with no strays. A server whose line gives no reason and whose state the load
    /// keeps keeps its reason: `dump` leaves out the reasons the run time wrote, and loading a
    /// dump back says nothing about why a server is in the state it was already in.
    pub fn apply(&self, table: &mut crate::table::Table, loaded: &crate::table::Table) {
        let before = std::mem::take(&mut table.servers);
        table.servers = edit::merge_loaded(&before, &loaded.servers, CommitInfo::now());
        for server in &mut table.servers {
            if server.reason.is_empty()
                && let Some(old) = before.iter().find(|o| {
                    o.address.same_server(&server.address)
                        && (o.state, o.held) == (server.state, server.held)
                })
            {
                server.reason = old.reason.clone();
            }
            if self.flushed.iter().any(|a| a.same_server(&server.address)) {
                server.strays_since = 0;
            }
        }
        table.policy = loaded.policy;
        table.buckets = loaded.buckets.clone();
    }
}

/// `mcadmin add`: flushes the servers of `new` that `present` (the domain's servers) does not
/// have: a server that joins may hold items from an earlier time in this domain, which would be
/// served stale. The first that cannot be flushed is the error (nothing is added then).
pub fn flush_joining(
    present: &[Server],
    new: &[Server],
    timeouts: Timeouts,
    access: &Access,
) -> Result<()> {
    for server in new {
        if present
            .iter()
            .any(|p| p.address.same_server(&server.address))
        {
            continue;
        }
        flush(&server.address, timeouts, access).map_err(|error| Error::Network {
            server: server.address.to_string(),
            error: format!(
                "{error}: a server is flushed before it joins, so that it serves nothing stale; nothing changed (add it with --down to flush it when it comes up, or --no-flush if it holds nothing)"
            ),
        })?;
    }
    Ok(())
}

/// `mcadmin up` on `store` (this host's table or the fleet's): brings `addresses` back, all in
/// one version: a down server through the domain's rejoin policy (flushed first unless the
/// policy is trust or `skip_flush`; held servers too: this is an operator), a draining one by
/// cancelling its drain (see [`rejoin_in`]). An address not in the table is the error naming it.
pub fn bring_up_in<S: RejoinTable>(
    store: &mut S,
    addresses: &[Address],
    skip_flush: bool,
    timeouts: Timeouts,
) -> std::result::Result<Vec<Rejoined>, S::Error> {
    let table = store.read()?;
    let domain = store.domain();
    let named = addresses
        .iter()
        .map(|address| {
            let server = table
                .servers
                .iter()
                .find(|s| s.address.same_server(address))
                .ok_or_else(|| Error::NoServer {
                    server: address.to_string(),
                    domain: domain.clone(),
                })?;
            Ok(store.name(server))
        })
        .collect::<Result<Vec<Named>>>()?;
    let how = Rejoiner {
        by: "mcadmin up",
        operator: true,
        skip_flush,
        timeouts,
    };
    rejoin_in(store, &table, &named, how)
}

/// `mcadmin up` on this host's table (see [`bring_up_in`]). The commit says whether anything
/// changed.
pub fn bring_up(
    registry: &mut Registry,
    addresses: &[Address],
    skip_flush: bool,
    timeouts: Timeouts,
) -> Result<Commit> {
    let before = registry.version();
    bring_up_in(registry, addresses, skip_flush, timeouts)?;
    let version = registry.version();
    Ok(Commit {
        version,
        changed: version != before,
        published_ns: 0,
    })
}

/// Where and how [`load`] writes: the domain, the mode and group of a file it creates, and
/// how long it waits for another writer.
pub struct LoadTarget<'a> {
    pub dir: &'a Path,
    pub domain: &'a Domain,
    pub ownership: FileOwnership,
    pub lock_wait: LockWait,
}

/// `mcadmin load`: makes `loaded` the domain's table however its file is, flushing first the
/// servers it brings in or back (see [`prepare_load`]; `no_flush`: none). One transaction when
/// the file reads; a file whose committed table cannot be read is replaced whole
/// ([`Registry::replace`]); a file whose header is unusable is made anew
/// ([`Registry::recreate`]: what its servers held is unknown, so every server the list has up
/// is flushed). Returns the commit and which servers were and were not flushed.
pub fn load(
    target: &LoadTarget<'_>,
    loaded: &mut Table,
    no_flush: bool,
    timeouts: Timeouts,
    access: &Access,
) -> Result<(Commit, LoadPlan)> {
    let (dir, domain) = (target.dir, target.domain);
    let exists = domain.path_in(dir).exists();
    let mut registry = match Registry::open_writer_with(dir, domain, true, target.ownership) {
        Err(Error::Corrupt { .. }) => {
            let known = if no_flush { None } else { Some(&[][..]) };
            let plan = prepare_load(known, loaded, None, timeouts, access);
            let mut table = Table::default();
            plan.apply(&mut table, loaded);
            return Ok((Registry::recreate(dir, domain, &table)?, plan));
        }
        other => other?,
    };
    registry.set_lock_wait(target.lock_wait);
    let current = match registry.current_snapshot() {
        _ if no_flush => None,
        Ok(snapshot) if exists => Some(snapshot.servers.clone()),
        Ok(_) => None,
        Err(_) => Some(Vec::new()),
    };
    // This host's log, when it is the one that can vouch (see `Registry`'s `missed`).
    let missed = match loaded.policy.rejoin {
        Rejoin::Replay => match RejoinTable::missed(&mut registry) {
            Some(Missed::Log(log)) => Some(log),
            _ => None,
        },
        _ => None,
    };
    let plan = prepare_load(
        current.as_deref(),
        loaded,
        missed.as_ref(),
        timeouts,
        access,
    );
    let commit = match registry.transact(|t| {
        plan.apply(t, loaded);
        Ok(())
    }) {
        Err(Error::Corrupt { .. }) => {
            let mut table = Table::default();
            plan.apply(&mut table, loaded);
            registry.replace(&table)?
        }
        other => other?,
    };
    if let Some(log) = &missed {
        for (address, logged) in &plan.replayed {
            let _ = settle_log(log, logged.clone(), address, timeouts, access);
        }
    }
    Ok((commit, plan))
}

#[cfg(test)]
mod tests {
    //! The rejoin rule on hand-built servers, and [`rejoin_in`] on a table in memory. No
    //! memcached is needed: the policies here do not flush, or the flush goes to a closed
    //! port.
    use super::*;

    const NOW: u64 = 1_000_000;

    fn how(operator: bool, skip_flush: bool) -> Rejoiner<'static> {
        Rejoiner {
            by: "mcadmin up",
            operator,
            skip_flush,
            timeouts: Timeouts::default(),
        }
    }

    fn policy(rejoin: Rejoin) -> Policy {
        Policy {
            rejoin,
            warm_window_s: 30,
            ..Policy::default()
        }
    }

    fn server(id: u32, state: State, held: bool) -> Server {
        let mut server = Server::new(Address::parse(&format!("10.0.0.{id}:11211")).unwrap());
        server.id = id;
        server.state = state;
        server.held = held;
        server
    }

    #[test]
    fn the_policy_says_whether_to_flush_and_the_reason_says_so() {
        let flush = RejoinRule::new(&policy(Rejoin::Flush), &how(true, false), ", pid 7");
        assert!(flush.flush);
        assert_eq!(flush.reason, "rejoined after flush_all (mcadmin up, pid 7)");
        assert_eq!(flush.warm_ms, None);
        let trust = RejoinRule::new(&policy(Rejoin::Trust), &how(true, false), " on web1");
        assert!(!trust.flush);
        assert_eq!(trust.reason, "rejoined without flush (mcadmin up on web1)");
        let no_flush = RejoinRule::new(&policy(Rejoin::Flush), &how(true, true), ", pid 7");
        assert!(!no_flush.flush);
        assert_eq!(
            no_flush.reason,
            "rejoined without flush (mcadmin up, pid 7)"
        );
        let warm = RejoinRule::new(&policy(Rejoin::Warm), &how(false, false), ", pid 7");
        assert!(warm.flush);
        assert_eq!(warm.warm_ms, Some(30_000));
    }

    #[test]
    fn a_down_server_rejoins_with_the_warm_deadline_from_now() {
        let rule = RejoinRule::new(&policy(Rejoin::Warm), &how(false, false), ", pid 7");
        let decision = rule.decide(&server(1, State::Down, false), NOW).unwrap();
        assert_eq!(
            decision,
            Decision {
                flush: true,
                transition: edit::Transition::Rejoin(edit::Rejoining {
                    reason: "rejoined after flush_all (mcadmin up, pid 7)",
                    warm_until_ms: NOW + 30_000,
                    flushed: true,
                    operator: false,
                }),
            }
        );
        let rule = RejoinRule::new(&policy(Rejoin::Flush), &how(false, false), ", pid 7");
        let decision = rule.decide(&server(1, State::Down, false), NOW).unwrap();
        let edit::Transition::Rejoin(rejoining) = decision.transition else {
            panic!("{decision:?}");
        };
        assert_eq!(rejoining.warm_until_ms, 0, "no warm-up but under warm");
    }

    #[test]
    fn a_held_server_comes_back_only_for_an_operator() {
        let held = server(1, State::Down, true);
        let automatic = RejoinRule::new(&policy(Rejoin::Flush), &how(false, false), "");
        assert_eq!(automatic.decide(&held, NOW), None);
        let operator = RejoinRule::new(&policy(Rejoin::Flush), &how(true, false), "");
        assert!(matches!(
            operator.decide(&held, NOW),
            Some(Decision {
                flush: true,
                transition: edit::Transition::Rejoin(edit::Rejoining { operator: true, .. }),
            })
        ));
    }

    #[test]
    fn an_operator_cancels_a_drain_without_a_flush_and_up_servers_are_left_alone() {
        let draining = server(1, State::Draining, false);
        let operator = RejoinRule::new(&policy(Rejoin::Flush), &how(true, false), "");
        assert_eq!(
            operator.decide(&draining, NOW),
            Some(Decision {
                flush: false,
                transition: edit::Transition::CancelDrain { by: "mcadmin up" },
            })
        );
        let automatic = RejoinRule::new(&policy(Rejoin::Flush), &how(false, false), "");
        assert_eq!(automatic.decide(&draining, NOW), None);
        assert_eq!(operator.decide(&server(2, State::Up, false), NOW), None);
    }

    /// A table in memory, named by id or by address, that counts its transactions.
    struct Memory {
        table: Table,
        by_address: bool,
        commits: usize,
    }

    impl RejoinTable for Memory {
        type Error = Error;

        fn domain(&self) -> String {
            "app".into()
        }

        fn read(&mut self) -> Result<Table> {
            Ok(self.table.clone())
        }

        fn commit(&mut self, edit: &mut dyn FnMut(&mut Table) -> Result<()>) -> Result<()> {
            let mut table = self.table.clone();
            edit(&mut table)?;
            self.table = table;
            self.commits += 1;
            Ok(())
        }

        fn access(&self) -> Result<Access> {
            Ok(Access::default())
        }

        fn signature(&self) -> String {
            " on test".into()
        }

        fn name(&self, server: &Server) -> Named {
            match self.by_address {
                true => Named::Address(server.address.clone()),
                false => Named::Id(server.id),
            }
        }
    }

    fn memory(rejoin: Rejoin, by_address: bool) -> Memory {
        Memory {
            table: Table {
                servers: vec![
                    server(1, State::Down, false),
                    server(2, State::Draining, false),
                    server(3, State::Up, false),
                    server(4, State::Down, true),
                ],
                policy: policy(rejoin),
                fleet_revision: 0,
                buckets: None,
            },
            by_address,
            commits: 0,
        }
    }

    fn addresses(store: &Memory, ids: &[usize]) -> Vec<Address> {
        ids.iter()
            .map(|i| store.table.servers[*i].address.clone())
            .collect()
    }

    #[test]
    fn up_brings_down_and_held_servers_back_and_cancels_drains_in_one_commit() {
        for by_address in [false, true] {
            let mut store = memory(Rejoin::Trust, by_address);
            let named = addresses(&store, &[0, 1, 2, 3]);
            let answers = bring_up_in(&mut store, &named, false, Timeouts::default()).unwrap();
            assert_eq!(
                answers,
                [
                    Rejoined::Up { flushed: false },
                    Rejoined::DrainCancelled,
                    Rejoined::NotDown,
                    Rejoined::Up { flushed: false },
                ]
            );
            assert_eq!(store.commits, 1);
            let servers = &store.table.servers;
            assert!(servers.iter().all(|s| s.state == State::Up && !s.held));
            assert_eq!(
                servers[0].reason,
                "rejoined without flush (mcadmin up on test)"
            );
            assert_eq!(servers[1].reason, "drain cancelled (mcadmin up)");
        }
    }

    #[test]
    fn nothing_to_bring_back_commits_nothing() {
        let mut store = memory(Rejoin::Flush, false);
        let up = addresses(&store, &[2]);
        let answers = bring_up_in(&mut store, &up, false, Timeouts::default()).unwrap();
        assert_eq!(answers, [Rejoined::NotDown]);
        assert_eq!(store.commits, 0);
        // An automatic rejoin leaves held and draining servers alone.
        let table = store.table.clone();
        let named = [Named::Id(2), Named::Id(4), Named::Id(9)];
        let answers = rejoin_in(&mut store, &table, &named, how(false, false)).unwrap();
        assert_eq!(answers, vec![Rejoined::NotDown; 3]);
        assert_eq!(store.commits, 0);
    }

    #[test]
    fn an_address_not_in_the_table_is_an_error_and_changes_nothing() {
        let mut store = memory(Rejoin::Trust, true);
        let mut named = addresses(&store, &[0]);
        named.push(Address::parse("10.9.9.9:11211").unwrap());
        let err = bring_up_in(&mut store, &named, false, Timeouts::default()).unwrap_err();
        assert!(matches!(err, Error::NoServer { .. }), "{err}");
        assert_eq!(store.commits, 0);
    }

    #[test]
    fn a_failed_flush_leaves_every_server_down_and_names_the_policy() {
        let mut store = memory(Rejoin::Flush, false);
        // Nothing listens on port 1 of this address: the flush fails at once.
        store.table.servers[0].address = Address::parse("127.0.0.1:1").unwrap();
        let named = addresses(&store, &[0, 3]);
        let err = bring_up_in(&mut store, &named, false, Timeouts::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("it stays down (rejoin policy flush)"),
            "{err}"
        );
        assert_eq!(store.commits, 0);
        assert_eq!(store.table.servers[3].state, State::Down);
    }
}
