//! The host agent (`mcadmin sync`): mirrors the fleet's domains into this host's tables and
//! pushes this host's own state marks to the fleet.
//!
//! Three kinds of input meet in one loop:
//! - the fleet, from one etcd watch on `PREFIX/domains/` (a thread): a full read at start and
//!   after a compaction, then every change in revision order; and a second on
//!   `PREFIX/replays/`, the requests to replay this host's invalidation log;
//! - this host, from one thread per mirrored domain sleeping on the table's futex: a client
//!   that marked a server down, a rejoin, a drain;
//! - a tick: the host record on its lease (`mcadmin --etcd … hosts`), the link status in the
//!   local header (`mcadmin list`), retries of pushes etcd did not take, and probing.
//!
//! Probing: while the agent reaches etcd it holds every down server's local probe lease, so no
//! client on the host probes; instead agents compete for the server's fleet probe key (one
//! winner per retry interval, fleet-wide), and the winner runs the rejoin (flush first) and
//! pushes the result. Cut off from etcd, the agent lets go and the host's clients probe as on a
//! host without a fleet; their rejoins are pushed when etcd is back.
//!
//! The agent is split along those concepts, each file with the pure rules it decides by (as
//! functions of data, tested beside them) and the I/O that executes them:
//! - this module: the events, the options, the agent's state and its loop (`run`, `handle`,
//!   `tick`), which only dispatches;
//! - `apply`: fleet → host (`apply`: mirror a fleet revision, keeping local marks not pushed
//!   yet) and host → fleet (`push`), both measured against the *base*, the fleet table the
//!   local one mirrors (`base_for`);
//! - `probe`: the probe duty (which down server is due for a fleet probe, and running it);
//! - `replay`: the replay duty (this host's part of a server's rejoin under `replay`: delete
//!   what its clients logged, answer, and settle once the server is up);
//! - `host`: the host record on its lease and the link status in the local tables;
//! - `fence`: the fence duty (repairing missing fences, healing fences a failed commit left
//!   above the fleet's revision);
//! - `lag`: whether the fleet's watch keeps up with etcd (a watch on a frozen or lagging
//!   member is silent, as an idle one is), and the time the agent's periodic calls may take;
//! - `threads`: the watch of the fleet and the watches of the local tables, feeding the loop.

mod apply;
mod fence;
mod host;
mod lag;
mod probe;
mod replay;
mod threads;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libmcshm::Timeouts;
use mcshm_table::clock::now_ms;
use mcshm_table::registry::{FileOwnership, Invalidations, Logged};
use mcshm_table::{Address, Domain, Registry};

use crate::etcd::{Etcd, Kv, WatchBatch};
use crate::mirror::Mark;
use crate::store::{Fleet, FleetError, FleetTable, Keys};

/// What the agent does, as a stream of events (`mcadmin sync` prints them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncEvent {
    /// This agent now mirrors the domain on this host.
    Active { domain: String },
    /// Another agent mirrors it; this one waits.
    Standby { domain: String },
    /// The local table now mirrors this fleet revision.
    Applied { domain: String, revision: i64 },
    /// Local marks written to the fleet at this revision.
    Pushed {
        domain: String,
        revision: i64,
        marks: Vec<String>,
    },
    /// Local marks the fleet had superseded: dropped.
    Superseded { domain: String, marks: Vec<String> },
    /// A value under the prefix was refused; the local table stays as it was.
    Refused { key: String, why: String },
    /// etcd answers again.
    Connected,
    /// etcd does not answer: the host serves its last tables.
    Disconnected { why: String },
    /// The revision needed was compacted away: local marks not pushed are dropped and the
    /// latest fleet table applied.
    Resync { domain: String },
    /// This host probed a down server for the fleet.
    Probed {
        domain: String,
        server: String,
        result: String,
    },
    /// This host answered a request to replay its invalidation log on a down server.
    Replayed {
        domain: String,
        server: String,
        result: String,
    },
    /// The fleet's watch fell behind etcd (its member frozen or cut off from the others): a
    /// new one reads the fleet again through a member that answers.
    Rewatched { why: String },
    /// The fence duty repaired or healed the domain's fences (or tried to).
    Fenced { domain: String, action: String },
}

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// The host's name in the fleet (`--name`, default the hostname).
    pub name: String,
    pub dir: PathBuf,
    /// The domains to mirror; empty with `all`: every domain of the fleet.
    pub domains: Vec<Domain>,
    pub all: bool,
    /// Mode and group of local tables the agent creates.
    pub ownership: FileOwnership,
    /// Timeouts of the flush a probe runs.
    pub probe_timeouts: Timeouts,
    /// TTL of the host record's lease, seconds.
    pub lease_ttl_s: i64,
    /// How long a probe that asks every host to replay its log waits for their answers
    /// before it flushes the server instead.
    pub replay_deadline: Duration,
    /// How often the agent looks at its domains' fences (see `fence`).
    pub fence_interval: Duration,
}

/// How often the loop looks at time-driven work while a down server waits for its retry probe
/// (due at its retry interval; the host's probe leases are held ahead).
const TICK: Duration = Duration::from_millis(100);
/// How often it looks otherwise: what is left then (the lease every `REFRESH`, the host
/// record a second or two after a change, retried pushes and settles) does not need more, and
/// everything else arrives as a message, which the loop handles at once. 1 000 idle agents at
/// `TICK` woke 10 000 times a second (a fifth of a core on a 2-core machine, `bench/fleet.sh`).
const IDLE_TICK: Duration = Duration::from_secs(1);
/// How often the lease is renewed, the link status rewritten and the fleet's watch checked, at
/// the least (more often with an `--etcd-timeout` under twice this: see `lag`); the host record
/// is written only when it changes.
const REFRESH: Duration = Duration::from_secs(2);

enum Msg {
    /// A full read of the fleet (at start, after a compaction or a lost watch), at a revision.
    Full(Vec<(Domain, Result<FleetTable, FleetError>)>, i64),
    Watch(WatchBatch),
    WatchLost(String),
    Local(Domain),
    Probed {
        domain: Domain,
        server: Address,
        result: String,
    },
    /// Replay requests: a full read, then what the watch brings.
    Replays(Vec<Kv>),
    ReplayWatch(WatchBatch),
    /// This host answered a replay request.
    Replayed {
        domain: Domain,
        server: Address,
        result: String,
    },
    /// A look at a domain's fences ended (see `fence`).
    FenceLooked {
        domain: Domain,
        ahead: fence::Ahead,
        did: Option<String>,
    },
}

/// Servers this host replayed, to settle once its table has them up: the log as replayed.
type Settling = HashMap<(Domain, Address), Logged>;

struct Mirror {
    domain: Domain,
    writer: Option<Registry>,
    lock: Option<File>,
    standing_by: bool,
    /// The fleet table at the revision the local table mirrors.
    base: Option<FleetTable>,
    /// Local marks etcd did not take yet.
    pending: bool,
    /// Marks of a push whose answer was lost (etcd hung or cut off while it had the request):
    /// it may still land. If it does after this host changed those servers again, the newer
    /// local state is kept and pushed over it.
    in_doubt: Vec<Mark>,
    applied_ms: u64,
    watching_local: bool,
    /// Just became active: read the fleet's table once.
    fresh: bool,
    /// The domain's invalidation log here, once it exists (the settle duty reads it).
    log: Option<Invalidations>,
}

/// The agent's state.
pub struct Agent {
    fleet: Arc<Fleet>,
    options: SyncOptions,
    mirrors: HashMap<Domain, Mirror>,
    connected: Option<bool>,
    link_since_ms: u64,
    lease: Option<i64>,
    started_ms: u64,
    last_refresh: Option<Instant>,
    /// The agent's own periodic calls (host record, watch check), bounded so that a cut link
    /// shows within `--etcd-timeout` (see `lag`), and how often they run.
    health: Etcd,
    refresh_every: Duration,
    /// The fleet's watch: counted up to replace it, the newest revision it delivered, and the
    /// newest revision etcd had when a check last found it behind.
    watch_generation: Arc<AtomicU64>,
    watched: i64,
    behind: Option<i64>,
    /// A mirrored table has a down server that a retry probe may bring back (not one held
    /// down by an operator, nor one with retry interval -1): the loop ticks faster.
    probing_down: bool,
    /// The host record written, and when a change of it is due (see `host`).
    record: host::RecordState,
    record_delay_ms: u64,
    probing: Arc<Mutex<HashSet<(Domain, String)>>>,
    /// When each down server's fleet probe key may next be free (ms), to ask etcd only then.
    next_probe: HashMap<(Domain, String), u64>,
    /// Replay requests answered (id → when, ms): each is answered once.
    answered: HashMap<String, u64>,
    settling: Arc<Mutex<Settling>>,
    /// Servers whose settle runs now.
    settling_now: Arc<Mutex<HashSet<(Domain, Address)>>>,
    /// Domains whose fences are being looked at, and what each last look left (see `fence`).
    fencing_now: Arc<Mutex<HashSet<Domain>>>,
    fence_ahead: HashMap<Domain, fence::Ahead>,
    next_fence_look: Instant,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
}

impl Agent {
    pub fn new(fleet: Arc<Fleet>, options: SyncOptions) -> Agent {
        let (tx, rx) = mpsc::channel();
        let (health, refresh_every) = lag::periodic_calls(&fleet.etcd);
        // Each host starts with its own member: the fleet's watches are spread over etcd.
        fleet.etcd.start_at(host::fnv1a(options.name.as_bytes()));
        let mut agent = Agent {
            fleet,
            mirrors: HashMap::new(),
            connected: None,
            link_since_ms: now_ms(),
            lease: None,
            started_ms: now_ms(),
            last_refresh: None,
            health,
            refresh_every,
            watch_generation: Arc::default(),
            watched: 0,
            behind: None,
            probing_down: false,
            record: host::RecordState::default(),
            record_delay_ms: host::record_delay_ms(&options.name),
            probing: Arc::default(),
            next_probe: HashMap::new(),
            answered: HashMap::new(),
            settling: Arc::default(),
            settling_now: Arc::default(),
            fencing_now: Arc::default(),
            fence_ahead: HashMap::new(),
            next_fence_look: fence::first_look(Instant::now(), &options),
            tx,
            rx,
            options,
        };
        for domain in agent.options.domains.clone() {
            agent.mirror_of(&domain);
        }
        agent
    }

    /// Runs until `stop` is set; events go to `events`.
    pub fn run(&mut self, stop: &AtomicBool, events: &mut dyn FnMut(SyncEvent)) {
        threads::spawn_watch(
            self.fleet.clone(),
            self.tx.clone(),
            self.watch_generation.clone(),
        );
        threads::spawn_replay_watch(self.fleet.clone(), self.tx.clone());
        while !stop.load(Ordering::Relaxed) {
            let until_refresh = self.last_refresh.map_or(Duration::ZERO, |t| {
                self.refresh_every.saturating_sub(t.elapsed())
            });
            match self
                .rx
                .recv_timeout(tick_interval(self.probing_down, until_refresh))
            {
                Ok(msg) => self.handle(msg, events),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.tick(events);
        }
        self.shutdown();
    }

    fn handle(&mut self, msg: Msg, events: &mut dyn FnMut(SyncEvent)) {
        match msg {
            Msg::Full(tables, revision) => {
                self.set_connected(true, "", events);
                self.watched = self.watched.max(revision);
                self.apply_all(tables, events);
            }
            Msg::Watch(batch) => {
                self.set_connected(true, "", events);
                self.watched = self.watched.max(lag::delivered(&batch));
                let tables = watched_tables(self.fleet.keys(), batch);
                self.apply_all(tables, events);
            }
            Msg::WatchLost(why) => self.set_connected(false, &why, events),
            Msg::Local(domain) => self.push(&domain, events),
            Msg::Probed {
                domain,
                server,
                result,
            } => {
                lock(&self.probing).remove(&(domain.clone(), server.to_string()));
                events(SyncEvent::Probed {
                    domain: domain.to_string(),
                    server: server.to_string(),
                    result,
                });
                self.push(&domain, events);
            }
            Msg::Replays(requests) => self.replay_duty(requests, events),
            Msg::ReplayWatch(batch) => {
                let requests = batch
                    .events
                    .into_iter()
                    .filter_map(|event| {
                        Some(Kv {
                            key: event.key,
                            value: event.value?,
                            mod_revision: event.mod_revision,
                        })
                    })
                    .collect();
                self.replay_duty(requests, events);
            }
            Msg::Replayed {
                domain,
                server,
                result,
            } => events(SyncEvent::Replayed {
                domain: domain.to_string(),
                server: server.to_string(),
                result,
            }),
            Msg::FenceLooked { domain, ahead, did } => {
                self.fence_looked(domain, ahead, did, events)
            }
        }
    }

    /// Applies each fleet table read, in order; a refused value is reported.
    fn apply_all(
        &mut self,
        tables: Vec<(Domain, Result<FleetTable, FleetError>)>,
        events: &mut dyn FnMut(SyncEvent),
    ) {
        for (domain, table) in tables {
            match table {
                Ok(table) => self.apply(&domain, table, events),
                Err(e) => refused(e, events),
            }
        }
    }

    /// The mirror of `domain`, when this agent mirrors it (`--all`, or named).
    fn mirror_of(&mut self, domain: &Domain) -> Option<&mut Mirror> {
        if !self.options.all && !self.options.domains.contains(domain) {
            return None;
        }
        Some(
            self.mirrors
                .entry(domain.clone())
                .or_insert_with(|| Mirror {
                    domain: domain.clone(),
                    writer: None,
                    lock: None,
                    standing_by: false,
                    base: None,
                    pending: false,
                    in_doubt: Vec::new(),
                    applied_ms: 0,
                    watching_local: false,
                    fresh: false,
                    log: None,
                }),
        )
    }

    /// Takes the domain's sync lock and opens its table (creating it); `None` while another
    /// agent holds the lock or the table cannot be opened.
    fn active(
        &mut self,
        domain: &Domain,
        create: bool,
        events: &mut dyn FnMut(SyncEvent),
    ) -> Option<&mut Mirror> {
        let dir = self.options.dir.clone();
        let ownership = self.options.ownership;
        let tx = self.tx.clone();
        let (connected, link_since_ms) = (self.connected == Some(true), self.link_since_ms);
        let mirror = self.mirror_of(domain)?;
        if mirror.lock.is_none() {
            // One agent per host and domain; a standby takes over when it dies.
            match libmcshm::health::try_daemon_lock(&dir, domain, "sync") {
                Ok(Some(file)) => {
                    mirror.lock = Some(file);
                    mirror.standing_by = false;
                    mirror.fresh = true;
                    events(SyncEvent::Active {
                        domain: domain.to_string(),
                    });
                }
                Ok(None) => {
                    if !mirror.standing_by {
                        mirror.standing_by = true;
                        events(SyncEvent::Standby {
                            domain: domain.to_string(),
                        });
                    }
                    return None;
                }
                Err(e) => {
                    events(SyncEvent::Refused {
                        key: domain.to_string(),
                        why: e.to_string(),
                    });
                    return None;
                }
            }
        }
        if mirror.writer.is_none() {
            mirror.writer = Registry::open_writer_with(&dir, domain, create, ownership).ok();
            // A table just taken up says at once whether it follows the fleet (the next
            // refresh may be two seconds away).
            if let Some(writer) = &mirror.writer {
                writer.set_agent_link(connected, link_since_ms);
            }
        }
        if mirror.writer.is_some() && !mirror.watching_local {
            mirror.watching_local = threads::spawn_local(dir, domain.clone(), tx);
        }
        mirror.writer.as_ref()?;
        Some(mirror)
    }

    /// The `changed.by` of this agent's pushes.
    fn push_by(&self) -> String {
        format!("mcadmin sync ({})", self.options.name)
    }

    fn tick(&mut self, events: &mut dyn FnMut(SyncEvent)) {
        let refresh = self
            .last_refresh
            .is_none_or(|t| t.elapsed() >= self.refresh_every);
        // A changed host record is written once its delay is over (while etcd answers; cut
        // off, the refresh's look comes first).
        let ripe = self.connected == Some(true) && self.record.ripe(now_ms(), self.record_delay_ms);
        if refresh || ripe {
            self.refresh_host(refresh, events);
        }
        if refresh {
            self.check_watch(events);
            if self.connected == Some(true) {
                self.fence_duty();
            }
            // Retry what etcd did not take, and standbys retry the lock.
            let retry: Vec<Domain> = self
                .mirrors
                .values()
                .filter(|m| m.pending || m.lock.is_none())
                .map(|m| m.domain.clone())
                .collect();
            for domain in &retry {
                self.push(domain, events);
            }
        }
        // A standby that just took over (or a domain named before the fleet had it) reads the
        // fleet's table itself: the watch delivered it before this agent was active.
        let fresh: Vec<Domain> = self
            .mirrors
            .values()
            .filter(|m| m.fresh && m.lock.is_some())
            .map(|m| m.domain.clone())
            .collect();
        for domain in fresh {
            match self.fleet.read(&domain) {
                Ok(table) => {
                    if let Some(m) = self.mirrors.get_mut(&domain) {
                        m.fresh = false;
                    }
                    if let Some(table) = table {
                        self.apply(&domain, table, events);
                    }
                }
                Err(e) => refused(e, events),
            }
        }
        self.settle_duty();
        self.probing_down = false;
        if self.connected == Some(true) {
            let domains: Vec<Domain> = self.mirrors.keys().cloned().collect();
            for domain in domains {
                self.probe_duty(&domain, events);
            }
        }
    }
}

/// How long the loop waits for a message before it looks at time-driven work again: never past
/// the next refresh (`until_refresh`: its bound on showing a cut link is `lag`'s).
fn tick_interval(probing_down: bool, until_refresh: Duration) -> Duration {
    let tick = match probing_down {
        true => TICK,
        false => IDLE_TICK,
    };
    tick.min(until_refresh)
}

/// The fleet tables a watch batch brings, in revision order: keys of domains that were
/// written (a domain deleted from the fleet stays as it was here; other keys under the
/// prefix are not tables), each decoded or refused.
fn watched_tables(keys: &Keys, batch: WatchBatch) -> Vec<(Domain, Result<FleetTable, FleetError>)> {
    batch
        .events
        .into_iter()
        .filter_map(|event| {
            let domain = keys.domain_of_key(&event.key)?;
            let kv = crate::etcd::Kv {
                key: event.key,
                value: event.value?,
                mod_revision: event.mod_revision,
            };
            Some((domain, crate::store::decode(&kv)))
        })
        .collect()
}

/// Reports a fleet read that failed: a refused value names its key; anything else means etcd
/// could not be used.
fn refused(e: FleetError, events: &mut dyn FnMut(SyncEvent)) {
    events(refusal(e));
}

fn refusal(e: FleetError) -> SyncEvent {
    match e {
        FleetError::Hostile { key, why } => SyncEvent::Refused { key, why },
        other => SyncEvent::Disconnected {
            why: other.to_string(),
        },
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{self, Changed};
    use crate::etcd::{EtcdError, WatchEvent};
    use mcshm_table::table::{Server, Table};

    fn value(address: &str) -> Vec<u8> {
        let table = Table {
            servers: vec![Server::new(Address::parse(address).unwrap())],
            ..Table::default()
        };
        document::encode(&table, &Changed::default())
    }

    fn event(key: &str, value: Option<Vec<u8>>, mod_revision: i64) -> WatchEvent {
        WatchEvent {
            key: key.as_bytes().to_vec(),
            value,
            mod_revision,
        }
    }

    #[test]
    fn the_loop_ticks_fast_only_while_a_down_server_waits_for_its_probe() {
        let later = Duration::from_secs(60);
        assert_eq!(tick_interval(true, later), TICK);
        assert_eq!(tick_interval(false, later), IDLE_TICK);
        // Never past the next refresh, which shows a cut link in time.
        let soon = Duration::from_millis(30);
        assert_eq!(tick_interval(false, soon), soon);
        assert_eq!(tick_interval(true, soon), soon);
        assert_eq!(tick_interval(false, Duration::ZERO), Duration::ZERO);
        // A host record waits 1 to 2 s: an idle tick of a second keeps it within a second.
        assert!(IDLE_TICK <= Duration::from_secs(1));
    }

    #[test]
    fn a_watch_batch_brings_the_written_domains_in_order_and_refuses_bad_values() {
        let keys = Keys::new("/mcshm/").unwrap();
        let batch = WatchBatch {
            events: vec![
                event("/mcshm/domains/b", Some(value("10.0.0.2")), 5),
                event("/mcshm/hosts/web1", Some(b"{}".to_vec()), 6),
                event("/mcshm/domains/gone", None, 7),
                event("/mcshm/probes/a/10.0.0.1:11211", Some(b"{}".to_vec()), 8),
                event("/mcshm/domains/a", Some(b"garbage".to_vec()), 9),
                event("/mcshm/domains/a", Some(value("10.0.0.1")), 10),
                event("/mcshm/domains/bad name", Some(value("10.0.0.3")), 11),
            ],
            revision: 11,
        };
        let tables = watched_tables(&keys, batch);
        let domains: Vec<&str> = tables.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(
            domains,
            ["b", "a", "a"],
            "only written domain keys, in order"
        );
        let b = tables[0].1.as_ref().unwrap();
        assert_eq!(b.revision, 5);
        assert_eq!(b.table.servers[0].address.to_string(), "10.0.0.2:11211");
        match &tables[1].1 {
            Err(FleetError::Hostile { key, .. }) => assert_eq!(key, "/mcshm/domains/a"),
            other => panic!("{other:?}"),
        }
        assert_eq!(tables[2].1.as_ref().unwrap().revision, 10);
    }

    #[test]
    fn a_refused_value_names_its_key_and_other_failures_mean_disconnected() {
        let hostile = FleetError::Hostile {
            key: "/mcshm/domains/a".into(),
            why: "not JSON".into(),
        };
        assert_eq!(
            refusal(hostile),
            SyncEvent::Refused {
                key: "/mcshm/domains/a".into(),
                why: "not JSON".into()
            }
        );
        let unreachable = FleetError::Etcd(EtcdError::Unreachable("no member".into()));
        let why = unreachable.to_string();
        assert_eq!(refusal(unreachable), SyncEvent::Disconnected { why });
        let mut seen = Vec::new();
        refused(FleetError::NoDomain("a".into()), &mut |e| seen.push(e));
        assert!(
            matches!(&seen[..], [SyncEvent::Disconnected { why }] if why.contains("'a'")),
            "{seen:?}"
        );
    }
}
