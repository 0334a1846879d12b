//! The health daemon's work (`mcadmin watch`): probe every server of a domain each round, mark
//! one that keeps failing down for every process, and bring one that answers again back through
//! the rejoin policy (flush first). One watcher acts on a domain per host at a time: it holds an
//! exclusive lock on `<dir>/.<domain>.watch`; others stand by and take over when it dies (the
//! kernel releases the lock with the process).
//!
//! Transitions reach the caller as [`Event`]s, the library's event stream for daemons.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::clock::now_ms;
use crate::conn::Timeouts;
use crate::domain::Domain;
use crate::edit;
use crate::error::{Error, Result};
use crate::lifecycle::{self, Rejoined};
use crate::registry::Registry;
use crate::table::{CommitInfo, State};

/// Takes the lock that makes one daemon of kind `role` (`watch`, `sync`) act on `domain` per
/// host: an exclusive lock on `DIR/.DOMAIN.ROLE`, released by the kernel when the holder dies,
/// so a standby takes over. `None` while another process holds it.
pub fn try_daemon_lock(dir: &Path, domain: &Domain, role: &str) -> Result<Option<File>> {
    let path = dir.join(format!(".{domain}.{role}"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| Error::io("open the daemon lock", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// This watcher now acts on the domain.
    Active,
    /// Another watcher acts on the domain; this one waits.
    Standby,
    /// A server was marked down.
    Down,
    /// A server was brought back (flushed first unless the rejoin policy is trust).
    Up,
    /// A server answered but could not be brought back (its flush failed): it stays down.
    RejoinFailed,
    /// A marked server was swept of its strays (`mcadmin settle`'s work, done by the watcher).
    Settled,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Active => "active",
            EventKind::Standby => "standby",
            EventKind::Down => "down",
            EventKind::Up => "up",
            EventKind::RejoinFailed => "rejoin-failed",
            EventKind::Settled => "settled",
        }
    }
}

/// One transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub domain: String,
    /// The server (empty for Active/Standby).
    pub server: String,
    pub reason: String,
    pub time_ms: u64,
}

/// Watches one domain.
pub struct Watcher {
    dir: PathBuf,
    domain: Domain,
    /// Consecutive failed probes that mark a server down (default: the domain's failure limit).
    failures: Option<u32>,
    check_key: Option<Vec<u8>>,
    timeouts: Timeouts,
    lock: Option<File>,
    standing_by: bool,
    counts: HashMap<u32, u32>,
}

impl Watcher {
    pub fn new(
        dir: impl Into<PathBuf>,
        domain: Domain,
        failures: Option<u32>,
        check_key: Option<Vec<u8>>,
        timeouts: Timeouts,
    ) -> Watcher {
        Watcher {
            dir: dir.into(),
            domain,
            failures,
            check_key,
            timeouts,
            lock: None,
            standing_by: false,
            counts: HashMap::new(),
        }
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// One round: take (or keep) the watch lock, then probe every server once.
    pub fn round(&mut self, events: &mut dyn FnMut(Event)) -> Result<()> {
        let was_active = self.lock.is_some();
        if !self.take_lock()? {
            if !self.standing_by {
                self.standing_by = true;
                events(self.event(EventKind::Standby, "", "another watcher is active"));
            }
            return Ok(());
        }
        if !was_active {
            self.standing_by = false;
            events(self.event(EventKind::Active, "", "watching"));
        }
        let mut registry = Registry::open_writer(&self.dir, &self.domain, false)?;
        let snapshot = registry.current_snapshot()?;
        let limit = self
            .failures
            .unwrap_or(u32::from(snapshot.policy.failure_limit));
        let access = crate::access::Access::load(&self.dir, &self.domain)?;
        for server in &snapshot.servers {
            let probed = lifecycle::health_check(
                &server.address,
                self.timeouts,
                self.check_key.as_deref(),
                &access,
            );
            match (server.state, probed) {
                (State::Up, Ok(())) => {
                    self.counts.remove(&server.id);
                }
                (State::Up, Err(error)) => {
                    let count = self.counts.entry(server.id).or_insert(0);
                    *count += 1;
                    if edit::down_after(*count, limit, server.state) {
                        let reason = edit::failure_reason(
                            *count,
                            "failed probes (mcadmin watch)",
                            &error,
                            CommitInfo::now(),
                        );
                        let id = server.id;
                        registry.transact(|t| {
                            let change = edit::Transition::FailureDown { reason: &reason };
                            edit::transition(&mut t.servers, id, change, CommitInfo::now());
                            Ok(())
                        })?;
                        self.counts.remove(&id);
                        events(self.event(EventKind::Down, &server.address.to_string(), &reason));
                    }
                }
                (State::Down, Ok(())) => {
                    match lifecycle::rejoin(
                        &mut registry,
                        server.id,
                        self.timeouts,
                        false,
                        "mcadmin watch",
                    ) {
                        Ok(Rejoined::Up { flushed }) => {
                            let how = if flushed {
                                "flushed, then marked up"
                            } else {
                                "marked up (rejoin trust)"
                            };
                            events(self.event(EventKind::Up, &server.address.to_string(), how));
                        }
                        Ok(Rejoined::Replayed { keys }) => {
                            let how = format!("deleted the {keys} keys it missed, then marked up");
                            events(self.event(EventKind::Up, &server.address.to_string(), &how));
                        }
                        Ok(Rejoined::NotDown | Rejoined::DrainCancelled) => {}
                        Err(err @ Error::Network { .. }) => {
                            events(self.event(
                                EventKind::RejoinFailed,
                                &server.address.to_string(),
                                &err.to_string(),
                            ));
                        }
                        Err(err) => return Err(err),
                    }
                }
                (State::Down, Err(_)) | (State::Draining, _) => {}
            }
        }
        Ok(())
    }

    /// Takes the domain's watch lock if free; `true` while we hold it.
    fn take_lock(&mut self) -> Result<bool> {
        if self.lock.is_some() {
            return Ok(true);
        }
        self.lock = try_daemon_lock(&self.dir, &self.domain, "watch")?;
        Ok(self.lock.is_some())
    }

    /// Whether this watcher holds the domain's lock (acts on it).
    pub fn is_active(&self) -> bool {
        self.lock.is_some()
    }

    fn event(&self, kind: EventKind, server: &str, reason: &str) -> Event {
        Event {
            kind,
            domain: self.domain.to_string(),
            server: server.to_string(),
            reason: reason.to_string(),
            time_ms: now_ms(),
        }
    }
}
