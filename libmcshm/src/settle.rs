//! Sweeping servers of their strays (`mcadmin settle`), the workflow beside [`crate::drain`]: a
//! change that moves keys between servers marks the servers that lost keys (`strays_since`), and
//! until such a server is swept every write deletes its key there too, so that no old copy can
//! ever be served. A settle lists each marked server's keys (`lru_crawler metadump all`),
//! deletes those it does not own in the current table, and clears its mark with
//! [`Transition::Swept`] at the version the sweep started from: a change during the sweep marks
//! the server again, and the mark stays.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::access::Access;
use crate::address::Address;
use crate::client::Client;
use crate::conn::Timeouts;
use crate::domain::Domain;
use crate::edit::{self, Transition};
use crate::error::{Error, Result};
use crate::metadump::list_keys;
use crate::prefix::KeyPrefix;
use crate::registry::Registry;
use crate::table::{CommitInfo, Server, State};

/// A settle in progress, the workflow of `mcadmin settle` (the caller paces it and shows its
/// progress): [`Settle::start`] chooses the servers; [`Settle::sweep`] lists one server's keys;
/// [`Sweep::delete_if_stray`] deletes them one by one where they are strays;
/// [`Sweep::finish`] clears the server's mark once every key was looked at. A settle that stops
/// half-way leaves the marks: settling again sweeps the servers again.
pub struct Settle {
    registry: Registry,
    client: Client,
    access: Access,
    timeouts: Timeouts,
    prefix: KeyPrefix,
    servers: Vec<Server>,
}

/// The sweep of one server: its keys, and what was done with them so far.
pub struct Sweep<'a> {
    settle: &'a mut Settle,
    address: Address,
    id: u32,
    /// The table version the sweep started from: the mark is cleared only if no change since
    /// marked the server again.
    swept_at: u64,
    /// The domain's keys on the server (named without the key prefix, as clients send them).
    keys: Vec<Vec<u8>>,
    counts: SweepCounts,
}

/// What a sweep did with the keys it looked at so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepCounts {
    /// Strays: deleted from the server.
    pub deleted: u64,
    /// Could not be looked at or deleted (the server keeps its mark).
    pub failed: u64,
}

impl Settle {
    /// Starts settling `addresses` in `domain` through `writer` (opened for writing in `dir`),
    /// or with none, every marked server of the table that is up. A server named that is not in
    /// the table is refused.
    pub fn start(
        dir: &Path,
        domain: &Domain,
        mut writer: Registry,
        addresses: &[Address],
        timeouts: Timeouts,
    ) -> Result<Settle> {
        let snapshot = writer.current_snapshot()?;
        let mut servers = Vec::new();
        for address in addresses {
            servers.push(snapshot.server(address)?.clone());
        }
        if addresses.is_empty() {
            servers.extend(
                snapshot
                    .servers
                    .iter()
                    .filter(|s| s.strays_since != 0 && s.state == State::Up)
                    .cloned(),
            );
        }
        let access = Access::load(dir, domain)?;
        let mut client = Client::for_domain(dir, domain, timeouts)?;
        let prefix = client.snapshot()?.policy.prefix;
        Ok(Settle {
            registry: writer,
            client,
            access,
            timeouts,
            prefix,
            servers,
        })
    }

    /// The servers to sweep, in order.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// Starts sweeping server `n` of [`Settle::servers`]: lists its keys. `None` when the server
    /// is not up (down or draining): only an up server is swept.
    pub fn sweep(&mut self, n: usize) -> Result<Option<Sweep<'_>>> {
        let server = &self.servers[n];
        if server.state != State::Up {
            return Ok(None);
        }
        let (address, id) = (server.address.clone(), server.id);
        // Said in the table before the keys are listed: from this version on, a change that
        // makes the server lose keys stamps its mark anew (marks are otherwise kept as they
        // were set), so a sweep that judged keys by an older table does not clear it.
        let started = self.registry.transact(|t| {
            edit::transition(
                &mut t.servers,
                id,
                Transition::StartSweep,
                CommitInfo::now(),
            );
            Ok(())
        })?;
        let swept_at = started.version;
        let listed =
            list_keys(&address, self.timeouts, &self.access).map_err(|error| Error::Network {
                server: address.to_string(),
                error,
            })?;
        // With a key prefix, the server's keys carry it: sweep the domain's (named without it,
        // as the client sends them) and leave keys outside the prefix, which are not the
        // domain's.
        let prefix = self.prefix;
        let keys = listed
            .iter()
            .filter_map(|k| prefix.strip(k).map(<[u8]>::to_vec))
            .collect();
        Ok(Some(Sweep {
            settle: self,
            address,
            id,
            swept_at,
            keys,
            counts: SweepCounts::default(),
        }))
    }
}

impl Sweep<'_> {
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The domain's keys on the server, in the order they are looked at.
    pub fn keys(&self) -> &[Vec<u8>] {
        &self.keys
    }

    /// Deletes key `n` of [`Sweep::keys`] from the server if it is a stray there (the server is
    /// not one of its replicas in the current table); counted either way. `true` when deleted.
    pub fn delete_if_stray(&mut self, n: usize) -> Result<bool> {
        let deleted = self
            .settle
            .client
            .delete_if_stray(&self.address, &self.keys[n]);
        match deleted {
            Ok(true) => self.counts.deleted += 1,
            Ok(false) => {}
            Err(_) => self.counts.failed += 1,
        }
        deleted
    }

    pub fn counts(&self) -> SweepCounts {
        self.counts
    }

    /// Looks at every key at `rate` keys per second (0: as fast as possible), deleting the
    /// strays; `on_error` hears of each key that could not be looked at. `false` when `stop`
    /// was set first (the sweep is not finished: the server keeps its mark).
    pub fn run(
        &mut self,
        rate: u32,
        stop: &AtomicBool,
        on_error: &mut dyn FnMut(&[u8], &Error),
    ) -> bool {
        let started = Instant::now();
        for k in 0..self.keys.len() {
            if rate > 0 {
                let due = started + Duration::from_secs_f64(k as f64 / f64::from(rate));
                pause_until(due, stop);
            }
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            if let Err(err) = self.delete_if_stray(k) {
                on_error(&self.keys[k], &err);
            }
        }
        true
    }

    /// Clears the server's mark if no key failed, no change since the sweep started marked
    /// it again, and (in a domain that fences) this host's table is not behind the server's
    /// fence: a sweep on a table that lags the fleet judged keys by an older placement, and a
    /// stray it kept would be left unmarked. `true` when cleared.
    pub fn finish(self) -> Result<bool> {
        if self.counts.failed > 0 {
            return Ok(false);
        }
        if let Err(Error::TableBehind { .. }) = self.settle.client.check_fence(&self.address) {
            return Ok(false);
        }
        let (id, at) = (self.id, self.swept_at);
        let mut cleared = false;
        self.settle.registry.transact(|t| {
            let change = Transition::Swept { at };
            cleared = edit::transition(&mut t.servers, id, change, CommitInfo::now());
            Ok(())
        })?;
        Ok(cleared)
    }
}

/// Sleeps until `due`, waking early when `stop` is set.
fn pause_until(due: Instant, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let left = due.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// How long a daemon that sweeps unasked (the watcher, mcproxy) waits after a sweep that left
/// a mark (a key that could not be looked at, a server that did not list its keys) before the
/// next sweep of that domain: not on every round.
pub const SWEEP_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// What the sweep of one server did ([`sweep_marked`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Swept {
    pub address: Address,
    /// The domain's keys it held.
    pub keys: usize,
    pub counts: SweepCounts,
    /// Its mark was cleared (no key failed, no change marked it again meanwhile).
    pub cleared: bool,
    /// Why it could not be swept at all (its keys could not be listed).
    pub error: Option<String>,
}

/// Sweeps every marked server of `domain` that is up, at `rate` keys per second, until done
/// or `stop` (then the rest keep their marks): `mcadmin settle` without servers, as the watch
/// daemon (or mcproxy, where no watcher runs) does unasked, so that the marks' cost (a delete
/// on every write to a marked server's keys) does not last until an operator thinks of it.
/// One such sweep per domain and host at a time (the `settle` daemon lock): while another
/// runs, nothing is done.
pub fn sweep_marked(
    dir: &Path,
    domain: &Domain,
    rate: u32,
    timeouts: Timeouts,
    stop: &AtomicBool,
) -> Result<Vec<Swept>> {
    let Some(_sweeping) = crate::health::try_daemon_lock(dir, domain, "settle")? else {
        return Ok(Vec::new());
    };
    let writer = Registry::open_writer(dir, domain, false)?;
    let mut settle = Settle::start(dir, domain, writer, &[], timeouts)?;
    let mut swept = Vec::new();
    for n in 0..settle.servers().len() {
        let address = settle.servers()[n].address.clone();
        let mut sweep = match settle.sweep(n) {
            Ok(Some(sweep)) => sweep,
            Ok(None) => continue, // no longer up
            Err(e) => {
                swept.push(Swept {
                    address,
                    keys: 0,
                    counts: SweepCounts::default(),
                    cleared: false,
                    error: Some(e.to_string()),
                });
                continue;
            }
        };
        if !sweep.run(rate, stop, &mut |_, _| {}) {
            break;
        }
        let (keys, counts) = (sweep.keys().len(), sweep.counts());
        let cleared = sweep.finish()?;
        swept.push(Swept {
            address,
            keys,
            counts,
            cleared,
            error: None,
        });
    }
    Ok(swept)
}

/// Whether `domain` has a marked server that is up (what [`sweep_marked`] would sweep).
pub fn has_marked(dir: &Path, domain: &Domain) -> bool {
    Registry::open(dir, domain)
        .and_then(|mut r| r.current_snapshot())
        .is_ok_and(|s| {
            s.servers
                .iter()
                .any(|s| s.strays_since != 0 && s.state == State::Up)
        })
}
