//! The host agent (`mcadmin sync`): mirrors the fleet's domains into this host's tables and
//! pushes this host's own state marks to the fleet.
//!
//! Three kinds of input meet in one loop:
//! - the fleet, from one etcd watch on `PREFIX/domains/` (a thread): a full read at start and
//!   after a compaction, then every change in revision order;
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

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libmcshm::{Timeouts, lifecycle};
use mcshm_table::registry::{FileOwnership, commit_info, now_ms};
use mcshm_table::table::State;
use mcshm_table::{Address, Domain, Registry};

use crate::etcd::{EtcdError, WatchBatch};
use crate::mirror::{self, Mark};
use crate::store::{Fleet, FleetError, FleetTable, HostDomain, HostRecord};

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
}

/// How often the loop looks at time-driven work (probing, retries, the host record).
const TICK: Duration = Duration::from_millis(100);
/// How far ahead the agent holds down servers' local probe leases (if it dies, the host's
/// clients take probing back after this plus the retry interval).
const HOLD_MS: u64 = 3_000;
/// How often the host record and link status are rewritten at the least.
const REFRESH: Duration = Duration::from_secs(2);

enum Msg {
    /// A full read of the fleet (at start, after a compaction or a lost watch).
    Full(Vec<(Domain, Result<FleetTable, FleetError>)>),
    Watch(WatchBatch),
    WatchLost(String),
    Local(Domain),
    Probed {
        domain: Domain,
        server: Address,
        result: String,
    },
}

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
    probing: Arc<Mutex<HashSet<(Domain, String)>>>,
    /// When each down server's fleet probe key may next be free (ms), to ask etcd only then.
    next_probe: HashMap<(Domain, String), u64>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
}

impl Agent {
    pub fn new(fleet: Arc<Fleet>, options: SyncOptions) -> Agent {
        let (tx, rx) = mpsc::channel();
        let mut agent = Agent {
            fleet,
            mirrors: HashMap::new(),
            connected: None,
            link_since_ms: now_ms(),
            lease: None,
            started_ms: now_ms(),
            last_refresh: None,
            probing: Arc::default(),
            next_probe: HashMap::new(),
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
        spawn_watch(self.fleet.clone(), self.tx.clone());
        while !stop.load(Ordering::Relaxed) {
            match self.rx.recv_timeout(TICK) {
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
            Msg::Full(tables) => {
                self.set_connected(true, "", events);
                for (domain, table) in tables {
                    match table {
                        Ok(table) => self.apply(&domain, table, events),
                        Err(e) => refused(e, events),
                    }
                }
            }
            Msg::Watch(batch) => {
                self.set_connected(true, "", events);
                for event in batch.events {
                    let Some(domain) = self.fleet.domain_of_key(&event.key) else {
                        continue;
                    };
                    let Some(value) = event.value else {
                        continue; // a domain deleted from the fleet stays as it was here
                    };
                    let kv = crate::etcd::Kv {
                        key: event.key,
                        value,
                        mod_revision: event.mod_revision,
                    };
                    match self.fleet.decode(&kv) {
                        Ok(table) => self.apply(&domain, table, events),
                        Err(e) => refused(e, events),
                    }
                }
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
        }
        if mirror.writer.is_some() && !mirror.watching_local {
            mirror.watching_local = spawn_local(dir, domain.clone(), tx);
        }
        mirror.writer.as_ref()?;
        Some(mirror)
    }

    /// Mirrors fleet `table` into the local table, unless the local one mirrors a newer (or
    /// the same) revision already.
    fn apply(&mut self, domain: &Domain, table: FleetTable, events: &mut dyn FnMut(SyncEvent)) {
        let fleet = self.fleet.clone();
        let by = self.push_by();
        let Some(mirror) = self.active(domain, true, events) else {
            return;
        };
        let Ok(local) = mirror.writer.as_mut().expect("active").current_snapshot() else {
            return;
        };
        let local_revision = local.fleet_revision as i64;
        if table.revision <= local_revision {
            if table.revision == local_revision && mirror.base.is_none() {
                mirror.base = Some(table);
            }
            return;
        }
        let base = base_for(&fleet, mirror, local_revision, events).cloned();
        let revision = table.revision;
        let mut kept = 0;
        // Our own push that lost its answer, landed now: where this host has moved on since,
        // its newer state supersedes it.
        let ours = table.changed.by == by;
        let in_doubt = std::mem::take(&mut mirror.in_doubt);
        let writer = mirror.writer.as_mut().expect("active");
        let result = writer.transact(|t| {
            if t.fleet_revision as i64 >= revision {
                return Ok(());
            }
            // The marks are taken from the table under the writer lock: a client's mark-down
            // committed a moment ago is kept, not overwritten by the fleet's older state.
            let mut marks = base
                .as_ref()
                .filter(|b| b.revision == t.fleet_revision as i64)
                .map(|b| mirror::local_marks(&b.table, t))
                .unwrap_or_default();
            if ours {
                marks.extend(mirror::superseding(&in_doubt, &table.table, t));
            }
            kept = mirror::mirror(t, &table.table, revision as u64, &marks, commit_info());
            Ok(())
        });
        match result {
            Ok(_) => {
                mirror.applied_ms = now_ms();
                mirror.base = Some(table);
                mirror.pending |= kept > 0;
                events(SyncEvent::Applied {
                    domain: domain.to_string(),
                    revision,
                });
                self.last_refresh = None; // tell `hosts` at once
                if kept > 0 {
                    self.push(domain, events);
                }
            }
            Err(e) => events(SyncEvent::Refused {
                key: fleet.domain_key(domain),
                why: e.to_string(),
            }),
        }
    }

    /// Pushes this host's marks on `domain` to the fleet (kept pending if etcd does not take
    /// them), then mirrors the revision written.
    fn push(&mut self, domain: &Domain, events: &mut dyn FnMut(SyncEvent)) {
        let fleet = self.fleet.clone();
        let by = self.push_by();
        let connected = self.connected == Some(true);
        let Some(mirror) = self.active(domain, false, events) else {
            return;
        };
        if !connected {
            // Cut off: nothing is sent to an etcd that may be hung (it would take the request
            // and apply it whenever it resumes, however stale by then). The marks wait; what
            // is pushed once etcd answers again is the host's state at that time.
            mirror.pending = true;
            return;
        }
        let Ok(local) = mirror.writer.as_mut().expect("active").current_snapshot() else {
            return;
        };
        if local.fleet_revision == 0 {
            return; // never mirrored: nothing of ours to push yet
        }
        let Some(base) = base_for(&fleet, mirror, local.fleet_revision as i64, events) else {
            return;
        };
        let marks = mirror::local_marks(&base.table, &local.table());
        if marks.is_empty() {
            mirror.pending = false;
            return;
        }
        let mut applied = 0;
        let result = fleet.transact(domain, false, &by, |t| {
            applied = mirror::apply_marks(t, &marks);
            Ok(())
        });
        let described: Vec<String> = marks.iter().map(Mark::describe).collect();
        match result {
            Ok(commit) => {
                mirror.pending = false;
                mirror.in_doubt.clear();
                if applied == 0 {
                    events(SyncEvent::Superseded {
                        domain: domain.to_string(),
                        marks: described,
                    });
                } else {
                    events(SyncEvent::Pushed {
                        domain: domain.to_string(),
                        revision: commit.revision,
                        marks: described,
                    });
                }
                self.set_connected(true, "", events);
                match fleet.read(domain) {
                    Ok(Some(table)) => self.apply(domain, table, events),
                    Ok(None) => {}
                    Err(e) => refused(e, events),
                }
            }
            Err(FleetError::Etcd(e @ EtcdError::Unreachable(_))) => {
                mirror.pending = true;
                mirror.in_doubt = marks;
                self.set_connected(false, &e.to_string(), events);
            }
            Err(e) => {
                mirror.pending = true;
                refused(e, events);
            }
        }
    }

    /// The `changed.by` of this agent's pushes.
    fn push_by(&self) -> String {
        format!("mcadmin sync ({})", self.options.name)
    }

    fn tick(&mut self, events: &mut dyn FnMut(SyncEvent)) {
        let refresh = self.last_refresh.is_none_or(|t| t.elapsed() >= REFRESH);
        if refresh {
            self.refresh_host(events);
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
        if self.connected == Some(true) {
            let domains: Vec<Domain> = self.mirrors.keys().cloned().collect();
            for domain in domains {
                self.probe_duty(&domain, events);
            }
        }
    }

    /// Holds the local probe leases of down servers and competes for their fleet probe keys;
    /// the winner probes (flush first) in a thread of its own.
    fn probe_duty(&mut self, domain: &Domain, events: &mut dyn FnMut(SyncEvent)) {
        let fleet = self.fleet.clone();
        let name = self.options.name.clone();
        let dir = self.options.dir.clone();
        let timeouts = self.options.probe_timeouts;
        let probing = self.probing.clone();
        let tx = self.tx.clone();
        let mut next_probe = std::mem::take(&mut self.next_probe);
        let Some(mirror) = self.active(domain, false, events) else {
            self.next_probe = next_probe;
            return;
        };
        let writer = mirror.writer.as_mut().expect("active");
        let Ok(snapshot) = writer.current_snapshot() else {
            self.next_probe = next_probe;
            return;
        };
        let now = now_ms();
        for server in snapshot.servers.iter().filter(|s| s.state == State::Down) {
            writer.live().hold_probe_lease(server, now + HOLD_MS);
            if server.retry_interval < 0 || !server.may_rejoin(false) {
                continue; // never retried, or held down by an operator
            }
            let interval_ms = u64::from(server.retry_interval.unsigned_abs()) * 1000;
            let key = (domain.clone(), server.address.to_string());
            if now < server.since_ms.saturating_add(interval_ms)
                || next_probe.get(&key).is_some_and(|&t| now < t)
                || lock(&probing).contains(&key)
            {
                continue;
            }
            match fleet.try_probe_lease(domain, &server.address, interval_ms, &name) {
                Ok(true) => {
                    lock(&probing).insert(key.clone());
                    spawn_probe(
                        dir.clone(),
                        domain.clone(),
                        server.id,
                        server.address.clone(),
                        timeouts,
                        name.clone(),
                        tx.clone(),
                    );
                    next_probe.insert(key, now + interval_ms);
                }
                Ok(false) => {
                    // Another host probed within the interval: look again a little later.
                    next_probe.insert(key, now + (interval_ms / 4).clamp(50, 1000));
                }
                Err(_) => {}
            }
        }
        self.next_probe = next_probe;
    }

    /// Writes the host record (on its lease) and the link status of every local table.
    fn refresh_host(&mut self, events: &mut dyn FnMut(SyncEvent)) {
        self.last_refresh = Some(Instant::now());
        let mut record = HostRecord {
            name: self.options.name.clone(),
            pid: std::process::id(),
            started_ms: self.started_ms,
            updated_ms: now_ms(),
            domains: Default::default(),
        };
        let connected = self.connected == Some(true);
        for mirror in self.mirrors.values_mut() {
            let Some(writer) = mirror.writer.as_mut().filter(|_| mirror.lock.is_some()) else {
                continue;
            };
            let _ = writer.version(); // follow a replaced file
            writer.set_agent_link(connected, self.link_since_ms);
            let revision = writer
                .current_snapshot()
                .map_or(0, |s| s.fleet_revision as i64);
            record.domains.insert(
                mirror.domain.to_string(),
                HostDomain {
                    revision,
                    applied_ms: mirror.applied_ms,
                    clients: writer.process_records().len(),
                },
            );
        }
        let value = serde_json::to_vec(&record).expect("serializes");
        let key = self.fleet.host_key(&self.options.name);
        let result = (|| -> Result<(), EtcdError> {
            let lease = match self.lease {
                Some(id) if self.fleet.etcd.lease_keepalive(id)? => id,
                _ => self.fleet.etcd.lease_grant(self.options.lease_ttl_s)?,
            };
            self.lease = Some(lease);
            self.fleet.etcd.put(&key, &value, Some(lease))?;
            Ok(())
        })();
        match result {
            Ok(()) => self.set_connected(true, "", events),
            Err(e) => self.set_connected(false, &e.to_string(), events),
        }
    }

    fn set_connected(&mut self, connected: bool, why: &str, events: &mut dyn FnMut(SyncEvent)) {
        if self.connected == Some(connected) {
            return;
        }
        self.connected = Some(connected);
        self.link_since_ms = now_ms();
        events(match connected {
            true => SyncEvent::Connected,
            false => SyncEvent::Disconnected {
                why: why.to_string(),
            },
        });
        for mirror in self.mirrors.values_mut() {
            if let (Some(writer), Some(_)) = (&mirror.writer, &mirror.lock) {
                writer.set_agent_link(connected, self.link_since_ms);
            }
        }
    }

    /// A clean stop: the host record goes at once (its lease revoked), the tables say no agent.
    fn shutdown(&mut self) {
        for mirror in self.mirrors.values() {
            if let (Some(writer), Some(_)) = (&mirror.writer, &mirror.lock) {
                writer.clear_agent_link();
            }
        }
        if let Some(lease) = self.lease.take() {
            let _ = self.fleet.etcd.lease_revoke(lease);
        }
    }
}

/// The fleet table at `revision` (the local table's base): cached, else read from etcd. When
/// etcd compacted it away, there is no base: the local marks cannot be told from the fleet's
/// and are dropped (a full resync).
fn base_for<'m>(
    fleet: &Fleet,
    mirror: &'m mut Mirror,
    revision: i64,
    events: &mut dyn FnMut(SyncEvent),
) -> Option<&'m FleetTable> {
    if revision == 0 {
        return None;
    }
    if mirror.base.as_ref().is_none_or(|b| b.revision != revision) {
        mirror.base = match fleet.read_at(&mirror.domain, revision) {
            Ok(Some(table)) if table.revision == revision => Some(table),
            Ok(_) | Err(FleetError::Etcd(EtcdError::Compacted(_))) => {
                events(SyncEvent::Resync {
                    domain: mirror.domain.to_string(),
                });
                None
            }
            Err(_) => None,
        };
    }
    mirror.base.as_ref()
}

fn refused(e: FleetError, events: &mut dyn FnMut(SyncEvent)) {
    match e {
        FleetError::Hostile { key, why } => events(SyncEvent::Refused { key, why }),
        other => events(SyncEvent::Disconnected {
            why: other.to_string(),
        }),
    }
}

/// The watch thread: a full read, then the watch from the revision after it; a lost watch is
/// re-established from the last revision seen; a compacted one starts over with a full read.
fn spawn_watch(fleet: Arc<Fleet>, tx: Sender<Msg>) {
    std::thread::spawn(move || {
        let mut next: Option<i64> = None;
        loop {
            let start = match next {
                Some(rev) => rev,
                None => match fleet.read_all() {
                    Ok((tables, revision)) => {
                        if tx.send(Msg::Full(tables)).is_err() {
                            return;
                        }
                        revision + 1
                    }
                    Err(e) => {
                        if tx.send(Msg::WatchLost(e.to_string())).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(250));
                        continue;
                    }
                },
            };
            next = Some(start);
            let mut watch = match fleet.etcd.watch(&fleet.domains_prefix(), start) {
                Ok(w) => w,
                Err(EtcdError::Compacted(_)) => {
                    next = None;
                    continue;
                }
                Err(e) => {
                    if tx.send(Msg::WatchLost(e.to_string())).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                    continue;
                }
            };
            loop {
                match watch.next() {
                    Ok(batch) => {
                        let last = batch.events.iter().map(|e| e.mod_revision).max();
                        if let Some(rev) = last {
                            next = Some(rev + 1);
                        }
                        if tx.send(Msg::Watch(batch)).is_err() {
                            return;
                        }
                    }
                    Err(EtcdError::Compacted(_)) => {
                        next = None;
                        break;
                    }
                    Err(_) => break, // re-watch from `next` (an idle stream ends too)
                }
            }
        }
    });
}

/// A thread that sleeps on the domain's table and reports every local change.
fn spawn_local(dir: PathBuf, domain: Domain, tx: Sender<Msg>) -> bool {
    let Ok(mut registry) = Registry::open(&dir, &domain) else {
        return false;
    };
    std::thread::spawn(move || {
        let mut since = registry.version();
        loop {
            if let Some(version) = registry.wait_for_change(since, Duration::from_secs(1)) {
                since = version;
                if tx.send(Msg::Local(domain.clone())).is_err() {
                    return;
                }
            }
        }
    });
    true
}

/// Probes a down server for the fleet: the rejoin (flush first, per the domain's policy) on
/// this host's table; the agent then pushes the result.
fn spawn_probe(
    dir: PathBuf,
    domain: Domain,
    id: u32,
    server: Address,
    timeouts: Timeouts,
    name: String,
    tx: Sender<Msg>,
) {
    std::thread::spawn(move || {
        let result = Registry::open_writer(&dir, &domain, false).and_then(|mut writer| {
            lifecycle::rejoin(
                &mut writer,
                id,
                timeouts,
                false,
                &format!("fleet retry probe, host {name}"),
            )
        });
        let result = match result {
            Ok(lifecycle::Rejoined::Up { flushed: true }) => "up (flushed)".to_string(),
            Ok(lifecycle::Rejoined::Up { flushed: false }) => "up (not flushed)".to_string(),
            Ok(lifecycle::Rejoined::NotDown | lifecycle::Rejoined::DrainCancelled) => {
                "not down any more, or held down by an operator".to_string()
            }
            Err(e) => format!("still down: {e}"),
        };
        let _ = tx.send(Msg::Probed {
            domain,
            server,
            result,
        });
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
