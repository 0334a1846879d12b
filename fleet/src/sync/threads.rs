//! The threads that feed the agent's loop, each blocking on one source and sending [`Msg`]s:
//! the watch of the fleet's domains and the watch of replay requests (one each for the agent),
//! and the watch of a local table (one per mirrored domain, sleeping on the table's futex). The loop owns all state; these only
//! report. Where a lost watch resumes is a rule of data ([`resume_after`]), tested here.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use mcshm_table::{Domain, Registry};

use super::Msg;
use crate::etcd::{EtcdError, WatchBatch};
use crate::store::Fleet;

/// What one watch thread follows: the keys under `prefix`, read in full first (`full`: the
/// message and the revision read at), then watched; `lost` reports a lost watch (the
/// domains' watch says whether etcd answers; the others leave that to it).
struct Feed {
    prefix: String,
    full: fn(&Fleet) -> Result<(Msg, i64), String>,
    batch: fn(WatchBatch) -> Msg,
    lost: Option<fn(String) -> Msg>,
}

/// The watch of the fleet's domains, while `generation` stays what it is now: the agent moves
/// to a new watch (on whichever member answers) by counting it up, and this one's thread ends
/// without another word (see `super::lag`).
pub(super) fn spawn_watch(fleet: Arc<Fleet>, tx: Sender<Msg>, generation: Arc<AtomicU64>) {
    let feed = Feed {
        prefix: fleet.domains_prefix(),
        full: |fleet| {
            let (tables, revision) = fleet.read_all().map_err(|e| e.to_string())?;
            Ok((Msg::Full(tables, revision), revision))
        },
        batch: Msg::Watch,
        lost: Some(Msg::WatchLost),
    };
    spawn_feed(fleet, feed, tx, generation);
}

/// The watch of replay requests (`crate::replay`).
pub(super) fn spawn_replay_watch(fleet: Arc<Fleet>, tx: Sender<Msg>) {
    let feed = Feed {
        prefix: fleet.keys().replays_prefix(),
        full: |fleet| {
            let (kvs, revision) = fleet
                .etcd
                .list(&fleet.keys().replays_prefix())
                .map_err(|e| e.to_string())?;
            Ok((Msg::Replays(kvs), revision))
        },
        batch: Msg::ReplayWatch,
        lost: None,
    };
    spawn_feed(fleet, feed, tx, Arc::default());
}

/// A watch thread: a full read, then the watch from the revision after it; a lost watch is
/// re-established from the last revision seen; a compacted one starts over with a full read.
/// It ends when `generation` moves on from the value it started with (nothing it had read is
/// sent after that, so a superseded watch's answers do not reach the loop).
fn spawn_feed(fleet: Arc<Fleet>, feed: Feed, tx: Sender<Msg>, generation: Arc<AtomicU64>) {
    let mine = generation.load(Ordering::Acquire);
    std::thread::spawn(move || {
        let current = || generation.load(Ordering::Acquire) == mine;
        let send = |msg: Msg| current() && tx.send(msg).is_ok();
        let lost = |why: String| match feed.lost {
            Some(lost) => send(lost(why)),
            None => current(),
        };
        let mut next: Option<i64> = None;
        loop {
            let start = match next {
                Some(rev) => rev,
                None => match (feed.full)(&fleet) {
                    Ok((msg, revision)) => {
                        if !send(msg) {
                            return;
                        }
                        revision + 1
                    }
                    Err(e) => {
                        if !lost(e) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(250));
                        continue;
                    }
                },
            };
            next = Some(start);
            let mut watch = match fleet.etcd.watch(&feed.prefix, start) {
                Ok(w) => w,
                Err(EtcdError::Compacted(_)) => {
                    next = None;
                    continue;
                }
                Err(e) => {
                    if !lost(e.to_string()) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                    continue;
                }
            };
            loop {
                match watch.next() {
                    Ok(batch) => {
                        if let Some(rev) = resume_after(&batch) {
                            next = Some(rev);
                        }
                        if !send((feed.batch)(batch)) {
                            return;
                        }
                    }
                    Err(EtcdError::Compacted(_)) => {
                        next = None;
                        break;
                    }
                    Err(_) if current() => break, // re-watch from `next` (an idle stream ends too)
                    Err(_) => return,
                }
            }
        }
    });
}

/// The revision a watch re-established after `batch` starts from: the one after the newest
/// change it brought (`None`: it brought none, the resume point stays).
fn resume_after(batch: &WatchBatch) -> Option<i64> {
    let last = batch.events.iter().map(|e| e.mod_revision).max();
    last.map(|rev| rev + 1)
}

/// A thread that sleeps on the domain's table and reports every local change.
pub(super) fn spawn_local(dir: PathBuf, domain: Domain, tx: Sender<Msg>) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::WatchEvent;

    fn batch(revisions: &[i64]) -> WatchBatch {
        WatchBatch {
            events: revisions
                .iter()
                .map(|&mod_revision| WatchEvent {
                    key: b"/mcshm/domains/a".to_vec(),
                    value: None,
                    mod_revision,
                })
                .collect(),
            revision: 100,
        }
    }

    #[test]
    fn a_lost_watch_resumes_after_the_newest_change_it_delivered() {
        assert_eq!(resume_after(&batch(&[5])), Some(6));
        assert_eq!(resume_after(&batch(&[5, 9, 7])), Some(10));
        // A batch without changes (progress, or the stream's first answer) moves nothing,
        // though the cluster's revision is further: other keys' changes are not ours.
        assert_eq!(resume_after(&batch(&[])), None);
    }
}
