//! The replay duty: this host's part of a fleet's replay (`crate::replay`). For each request
//! that names a domain this agent mirrors, it deletes on the server the keys this host's
//! clients logged while it was down, and answers on the request's lease: the keys it deleted,
//! or why this host cannot vouch (the server is then flushed). Once this host's table has the
//! server up again it settles: deletes what its clients logged after the answer (writes routed
//! on a version that still had the server down) and clears the log. It settles too a server
//! that came back while this agent was away (its clients logged; nobody deleted those keys).
//!
//! Its own module because, with the probe duty, it is the part of the agent that talks to
//! memcached servers; the rule of what a log vouches for is libmcshm's (`lifecycle`), the same
//! one a host without a fleet applies.

use std::path::PathBuf;
use std::sync::mpsc::Sender;

use libmcshm::Timeouts;
use libmcshm::lifecycle;
use mcshm_table::clock::now_ms;
use mcshm_table::registry::{Invalidations, Logged};
use mcshm_table::table::{Rejoin, State};
use mcshm_table::{Address, Domain, Registry};

use super::{Agent, Msg, SyncEvent, lock};
use crate::etcd::Kv;
use crate::replay::{ReplayAnswer, ReplayRequest};

/// How long a request's id is remembered as answered (longer than any request lives: its
/// lease is the deadline plus 10 s).
const REMEMBER_MS: u64 = 10 * 60 * 1000;
/// How long a settle that failed waits before it is tried again.
const RETRY_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

impl Agent {
    /// Answers the replay requests read (a full read or a watch batch): each once, for a
    /// domain this agent mirrors, in a thread of its own.
    pub(super) fn replay_duty(&mut self, requests: Vec<Kv>, events: &mut dyn FnMut(SyncEvent)) {
        let now = now_ms();
        self.answered
            .retain(|_, at| now.saturating_sub(*at) < REMEMBER_MS);
        for kv in requests {
            let (request, domain, address) = match ReplayRequest::decode(self.fleet.keys(), &kv) {
                Ok(decoded) => decoded,
                Err(why) => {
                    events(SyncEvent::Refused {
                        key: String::from_utf8_lossy(&kv.key).into_owned(),
                        why,
                    });
                    continue;
                }
            };
            if self.answered.contains_key(&request.id) {
                continue;
            }
            let active = self
                .mirrors
                .get(&domain)
                .is_some_and(|m| m.lock.is_some() && m.writer.is_some());
            if !active {
                continue;
            }
            self.answered.insert(request.id.clone(), now);
            let answering = Answering {
                dir: self.options.dir.clone(),
                host: self.options.name.clone(),
                timeouts: self.options.probe_timeouts,
                fleet: self.fleet.clone(),
                settling: self.settling.clone(),
                tx: self.tx.clone(),
            };
            std::thread::spawn(move || answering.answer(request, domain, address));
        }
    }

    /// Settles every server that is up in this host's table and still has a log here: one
    /// this host replayed for the fleet, or one that came back while this agent was away
    /// (its clients logged, and no one deleted those keys). Each in a thread of its own.
    pub(super) fn settle_duty(&mut self) {
        let domains: Vec<Domain> = self.mirrors.keys().cloned().collect();
        for domain in domains {
            for (id, address) in self.unsettled(&domain) {
                let key = (domain.clone(), address.clone());
                if !lock(&self.settling_now).insert(key.clone()) {
                    continue; // settling already
                }
                let replayed = lock(&self.settling).remove(&key);
                let (dir, domain) = (self.options.dir.clone(), domain.clone());
                let timeouts = self.options.probe_timeouts;
                let settling_now = self.settling_now.clone();
                std::thread::spawn(move || {
                    if !lifecycle::settle_host_log(&dir, &domain, id, &address, replayed, timeouts)
                    {
                        // The server does not answer, or the log cannot be written: try again
                        // a little later, not on every tick.
                        std::thread::sleep(RETRY_SETTLE);
                    }
                    lock(&settling_now).remove(&key);
                });
            }
        }
    }

    /// The servers of `domain` (under `replay`, mirrored by this agent) that are not down in
    /// this host's table and have a log: their ids and addresses. The logs of servers that
    /// left the table go with them.
    fn unsettled(&mut self, domain: &Domain) -> Vec<(u32, Address)> {
        let dir = self.options.dir.clone();
        let Some(mirror) = self.mirrors.get_mut(domain).filter(|m| m.lock.is_some()) else {
            return Vec::new();
        };
        let Some(snapshot) = mirror
            .writer
            .as_mut()
            .and_then(|w| w.current_snapshot().ok())
        else {
            return Vec::new();
        };
        if snapshot.policy.rejoin != Rejoin::Replay {
            return Vec::new();
        }
        if mirror.log.is_none() {
            mirror.log = Invalidations::open(&dir, domain).ok().flatten();
        }
        let Some(log) = &mirror.log else {
            return Vec::new();
        };
        let mut settle = Vec::new();
        for id in log.servers() {
            match snapshot.servers.iter().find(|s| s.id == id) {
                None => {
                    let _ = log.forget(id);
                }
                Some(server) if server.state != State::Down => {
                    settle.push((id, server.address.clone()));
                }
                Some(_) => {}
            }
        }
        settle
    }
}

/// What a thread answering one request needs.
struct Answering {
    dir: PathBuf,
    host: String,
    timeouts: Timeouts,
    fleet: std::sync::Arc<crate::store::Fleet>,
    settling: std::sync::Arc<std::sync::Mutex<super::Settling>>,
    tx: Sender<Msg>,
}

impl Answering {
    fn answer(self, request: ReplayRequest, domain: Domain, address: Address) {
        let replayed = self.replay_here(&request, &domain, &address);
        let answer = match &replayed {
            Ok(logged) => ReplayAnswer::Replayed {
                keys: logged.keys.as_ref().map_or(0, Vec::len),
            },
            Err(why) => ReplayAnswer::Flush { why: why.clone() },
        };
        let sent = self.fleet.answer_replay(&request, &self.host, &answer);
        let result = match (&answer, &sent) {
            (_, Err(e)) => format!("could not answer {}: {e}", request.by),
            (ReplayAnswer::Replayed { keys }, Ok(())) => {
                format!(
                    "deleted the {keys} keys this host logged (asked by {})",
                    request.by
                )
            }
            (ReplayAnswer::Flush { why }, Ok(())) => {
                format!("cannot vouch, asked {} to flush: {why}", request.by)
            }
        };
        if let (Ok(logged), Ok(())) = (replayed, sent) {
            lock(&self.settling).insert((domain.clone(), address.clone()), logged);
        }
        let _ = self.tx.send(Msg::Replayed {
            domain,
            server: address,
            result,
        });
    }

    /// Replays this host's log on the server, if the log vouches for it.
    fn replay_here(
        &self,
        request: &ReplayRequest,
        domain: &Domain,
        address: &Address,
    ) -> Result<Logged, String> {
        let mut registry = Registry::open(&self.dir, domain).map_err(|e| e.to_string())?;
        let snapshot = registry.current_snapshot().map_err(|e| e.to_string())?;
        let server = snapshot
            .servers
            .iter()
            .find(|s| s.address.same_server(address))
            .ok_or("this host's table does not have the server")?;
        lifecycle::replay_host_log(&self.dir, domain, server, request.since_ms, self.timeouts)
    }
}
