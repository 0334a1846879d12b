//! The fence duty: keeping the servers' fences (see [`libmcshm::fence`]) such that hosts on
//! the fleet's current table can use every server.
//!
//! A fence stands in the way of current hosts in two cases, and only a fleet commit may lift
//! it (a host never writes a fence: a write of the current revision could land just after a
//! concurrent commit's fence was flushed away and let superseded hosts through):
//! - **missing**: the server restarted, was flushed or evicted the item; every host takes its
//!   answers as behind. The agent *repairs* it: a commit that raises the fence on those
//!   servers to the revision read plus one, and writes the same table anew ([`Fleet::refence`]).
//! - **ahead of the fleet**: a commit raised it and then failed before its put (etcd cut off,
//!   the process killed); the fleet's revision stays below the fence. Seen at two looks in a
//!   row at the same fleet revision (a commit in flight is seen once at most), the agent
//!   *heals* it: the same commit with no server to raise, whose new revision lifts it.
//!
//! Every agent looks every `--fence-interval` (10 s), at a phase of its own (from its name), each
//! look in a thread of its own so that a server that does not answer does not hold the loop.
//! A fleet of N hosts so looks every 10 s / N: at 1 000 hosts a restarted server's fence is
//! found missing within ~10 ms on average, while each host reads each server's fence once per
//! 10 s (5 reads a second for a 50-server domain). Several agents repairing at once make one
//! commit: the others' compare-and-swap finds it and they look again at their next look.

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use libmcshm::Timeouts;
use libmcshm::access::Access;
use libmcshm::fence::{Verdict, fence_key, verdict};
use mcshm_table::table::{State, Table, routed};
use mcshm_table::{Address, Domain};

use super::{Agent, Msg, SyncEvent, lock};
use crate::store::Fleet;

/// When an agent looks first after `start`: its own phase of its interval (from its name), so
/// that a fleet's looks are spread over it.
pub(super) fn first_look(start: Instant, options: &super::SyncOptions) -> Instant {
    let every = (options.fence_interval.as_millis() as u64).max(1);
    start + Duration::from_millis(super::host::fnv1a(options.name.as_bytes()) % every)
}

/// How long a fence read may take: the look runs beside the loop.
const LOOK_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_millis(500),
    io: Duration::from_millis(500),
};

/// What one look found, for the next: the fleet revision looked at and the highest fence
/// above it (a heal waits for a second look that finds the same).
pub(super) type Ahead = Option<(i64, u64)>;

/// What to do about the fences found at fleet revision `revision`: the servers to repair (a
/// missing fence), whether to heal (a fence above the revision, seen at the last look too at
/// the same revision), and what this look leaves for the next.
pub(super) fn decide(
    found: &[(Address, Verdict)],
    revision: i64,
    last: Ahead,
) -> (Vec<Address>, bool, Ahead) {
    let missing: Vec<Address> = found
        .iter()
        .filter(|(_, v)| *v == Verdict::Missing)
        .map(|(a, _)| a.clone())
        .collect();
    let ahead = found
        .iter()
        .filter_map(|(_, v)| match v {
            Verdict::Behind(f) => Some(*f),
            _ => None,
        })
        .max()
        .map(|f| (revision, f));
    let heal = ahead.is_some() && last.is_some_and(|(r, _)| r == revision);
    (missing, heal, ahead)
}

/// The servers a look reads: those the table routes and that are not down (a down server
/// is sent nothing; its fence is raised when it comes back).
fn looked_at(table: &Table) -> Vec<Address> {
    routed(&table.servers, table.policy.failover)
        .into_iter()
        .map(|i| &table.servers[i])
        .filter(|s| s.state != State::Down)
        .map(|s| s.address.clone())
        .collect()
}

impl Agent {
    /// Starts a look at the fences of every mirrored domain that fences (at most one per
    /// domain at a time), when the agent's next look is due.
    pub(super) fn fence_duty(&mut self) {
        let now = Instant::now();
        if now < self.next_fence_look {
            return;
        }
        self.next_fence_look = now + self.options.fence_interval;
        let domains: Vec<Domain> = self.mirrors.keys().cloned().collect();
        for domain in domains {
            let Some(mirror) = self.mirrors.get(&domain) else {
                continue;
            };
            let Some(base) = mirror.base.as_ref().filter(|_| mirror.lock.is_some()) else {
                continue;
            };
            if !base.table.policy.fence.is_on() || !lock(&self.fencing_now).insert(domain.clone()) {
                continue;
            }
            let look = Look {
                fleet: self.fleet.clone(),
                dir: self.options.dir.clone(),
                domain,
                revision: base.revision,
                servers: looked_at(&base.table),
                last: self.fence_ahead.get(&mirror.domain).copied().flatten(),
                name: self.options.name.clone(),
            };
            look.spawn(self.tx.clone(), self.fencing_now.clone());
        }
    }

    /// What a look found and did.
    pub(super) fn fence_looked(
        &mut self,
        domain: Domain,
        ahead: Ahead,
        did: Option<String>,
        events: &mut dyn FnMut(SyncEvent),
    ) {
        self.fence_ahead.insert(domain.clone(), ahead);
        if let Some(action) = did {
            events(SyncEvent::Fenced {
                domain: domain.to_string(),
                action,
            });
        }
    }
}

/// One look, in a thread of its own.
struct Look {
    fleet: Arc<Fleet>,
    dir: std::path::PathBuf,
    domain: Domain,
    revision: i64,
    servers: Vec<Address>,
    last: Ahead,
    name: String,
}

impl Look {
    fn spawn(
        self,
        tx: Sender<Msg>,
        busy: Arc<std::sync::Mutex<std::collections::HashSet<Domain>>>,
    ) {
        std::thread::spawn(move || {
            let domain = self.domain.clone();
            let (ahead, did) = self.run();
            lock(&busy).remove(&domain);
            let _ = tx.send(Msg::FenceLooked { domain, ahead, did });
        });
    }

    /// Reads the fences, and repairs or heals as [`decide`] says: what it leaves for the
    /// next look, and what it did (for the log).
    fn run(self) -> (Ahead, Option<String>) {
        let Ok(access) = Access::load(&self.dir, &self.domain) else {
            return (None, None);
        };
        let key = fence_key(&self.domain);
        let table = u64::try_from(self.revision).unwrap_or(0);
        let found: Vec<(Address, Verdict)> = std::thread::scope(|s| {
            let reads: Vec<_> = self
                .servers
                .iter()
                .map(|a| s.spawn(|| libmcshm::fence::read(a, &key, LOOK_TIMEOUTS, &access)))
                .collect();
            self.servers
                .iter()
                .zip(reads)
                .filter_map(|(a, r)| {
                    // A server that does not answer is the clients' to count, not this look's.
                    let fence = r.join().ok()?.ok()?;
                    Some((a.clone(), verdict(fence, table)))
                })
                .collect()
        });
        let (missing, heal, ahead) = decide(&found, self.revision, self.last);
        if missing.is_empty() && !heal {
            return (ahead, None);
        }
        let by = format!("mcadmin sync on {}", self.name);
        let what = match missing.is_empty() {
            true => format!(
                "healed a fence at {} above revision {}",
                ahead.map_or(0, |a| a.1),
                self.revision
            ),
            false => format!(
                "repaired the missing fence of {}",
                missing
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        match self.fleet.refence(&self.domain, &missing, &by) {
            Ok(Some(commit)) => (None, Some(format!("{what}: revision {}", commit.revision))),
            Ok(None) => (ahead, None),
            Err(e) => (ahead, Some(format!("{what} failed: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(name: &str) -> Address {
        Address::parse(name).unwrap()
    }

    #[test]
    fn a_missing_fence_is_repaired_at_once_and_one_ahead_healed_at_the_second_look() {
        let found = [(a("a:1"), Verdict::Current), (a("b:1"), Verdict::Missing)];
        let (missing, heal, ahead) = decide(&found, 7, None);
        assert_eq!((missing, heal, ahead), (vec![a("b:1")], false, None));
        let found = [(a("a:1"), Verdict::Behind(8)), (a("b:1"), Verdict::Current)];
        assert_eq!(decide(&found, 7, None), (vec![], false, Some((7, 8))));
        assert_eq!(
            decide(&found, 7, Some((7, 8))),
            (vec![], true, Some((7, 8)))
        );
        // The fleet moved on since the last look: a commit in flight then, not a failed one.
        assert!(!decide(&found, 9, Some((7, 8))).1);
        let current = [(a("a:1"), Verdict::Current)];
        assert_eq!(decide(&current, 7, Some((7, 8))), (vec![], false, None));
    }
}
