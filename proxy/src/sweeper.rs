//! The marks' sweep where no watcher runs. A change that moves keys marks the servers that
//! lost them, and until one is swept every write to its keys pays a delete there (measured:
//! mcproxy's set throughput fell to 0.57–0.74× twemproxy's after its domain gained a server).
//! The watch daemon sweeps marked servers unasked; a host that runs mcproxy without one would
//! keep the marks until an operator ran `mcadmin settle`. So mcproxy sweeps them itself, on a
//! thread of its own, when no watcher holds the domain: `libmcshm::settle::sweep_marked`, the
//! same sweep (one per domain and host at a time).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use libmcshm::settle::{SWEEP_AGAIN_AFTER, Swept, has_marked, sweep_marked};
use libmcshm::{Domain, Timeouts};

/// How often the sweeper looks for marks.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// Starts the sweeper of `domains` (`rate` keys per second) until `stop`.
pub fn spawn(
    dir: PathBuf,
    domains: Vec<Domain>,
    rate: u32,
    timeouts: Timeouts,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("mcproxy-sweep".into())
        .spawn(move || {
            let mut not_before = vec![std::time::Instant::now(); domains.len()];
            while !stop.load(Ordering::Relaxed) {
                for (domain, next) in domains.iter().zip(&mut not_before) {
                    if std::time::Instant::now() < *next || !needs_sweep(&dir, domain) {
                        continue;
                    }
                    let swept = sweep_marked(&dir, domain, rate, timeouts, &stop);
                    if !log_sweep(domain, swept) {
                        *next = std::time::Instant::now() + SWEEP_AGAIN_AFTER;
                    }
                }
                pause(LOOK_EVERY, &stop);
            }
        })
}

/// A marked server is up and no watcher acts on the domain (it sweeps itself).
fn needs_sweep(dir: &std::path::Path, domain: &Domain) -> bool {
    if !has_marked(dir, domain) {
        return false;
    }
    // Taking the watcher's lock for a moment says whether one holds it.
    matches!(
        libmcshm::health::try_daemon_lock(dir, domain, "watch"),
        Ok(Some(_))
    )
}

/// Logs what a sweep did; whether every mark was cleared.
fn log_sweep(domain: &Domain, swept: libmcshm::Result<Vec<Swept>>) -> bool {
    match swept {
        Err(e) => {
            crate::log(format_args!(
                "domain '{domain}': sweep of marked servers failed: {e}"
            ));
            false
        }
        Ok(swept) => {
            for s in &swept {
                match &s.error {
                    Some(e) => crate::log(format_args!(
                        "domain '{domain}': {} not swept: {e}",
                        s.address
                    )),
                    None => crate::log(format_args!(
                        "domain '{domain}': swept {}: {} keys, {} strays deleted, {} failed; {}",
                        s.address,
                        s.keys,
                        s.counts.deleted,
                        s.counts.failed,
                        if s.cleared {
                            "mark cleared"
                        } else {
                            "mark kept"
                        }
                    )),
                }
            }
            swept.iter().all(|s| s.cleared)
        }
    }
}

fn pause(duration: Duration, stop: &AtomicBool) {
    let end = std::time::Instant::now() + duration;
    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
}
