//! Real concurrent processes on one registry: many writers at once, writers SIGKILLed at random
//! points under a reader that validates every snapshot and every answer of its shared ring, and
//! change notification.

use std::collections::BTreeSet;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{Reg, addresses, wait_until};
use libmcshm::{Domain, Registry};

#[test]
fn thirty_two_concurrent_adds_all_land_as_thirty_two_versions() {
    let reg = Reg::new();
    let children: Vec<Child> = (0..32)
        .map(|i| {
            reg.cmd("busy", &["add", "--no-flush", &format!("host{i}:11211")])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list = reg.list_json("busy");
    let got: BTreeSet<String> = addresses(&list).into_iter().collect();
    let want: BTreeSet<String> = (0..32).map(|i| format!("host{i}:11211")).collect();
    assert_eq!(got, want);
    assert_eq!(
        list["version"], 32,
        "one version per add, from an empty table at 0"
    );
}

use crate::common::Rng;

#[test]
fn writers_killed_at_random_points_never_tear_a_snapshot_or_its_ring() {
    let reg = Reg::new();
    let domain = Domain::new("kill").unwrap();
    reg.ok("kill", &["add", "--no-flush", "seed:1"]);
    // Time a writer, so kill delays spread over its whole life (start, lock, copy, publish):
    // the shortest of three, as one run slowed by the machine's load would put most delays
    // past the writers' end and leave few killed.
    let life = (0..3)
        .map(|n| {
            let started = Instant::now();
            reg.ok("kill", &["add", "--no-flush", &format!("timing{n}:1")]);
            started.elapsed().as_micros() as u64
        })
        .min()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (dir, domain, stop) = (reg.dir().to_path_buf(), domain.clone(), stop.clone());
        thread::spawn(move || {
            let mut registry = Registry::open(&dir, &domain).unwrap();
            let (mut reads, mut invalid, mut last_version) = (0u64, Vec::new(), 0u64);
            let mut longest = Duration::ZERO;
            // Every answer of the shared ring is checked against a ring built from the table
            // read with it (built once per version).
            let mut built: Option<(u64, libmcshm::placement::Ring, Vec<usize>)> = None;
            let (mut routed, mut deltas) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match registry.current_snapshot() {
                    Ok(snap) => {
                        if snap.version < last_version {
                            invalid.push(format!(
                                "version went back {last_version} -> {}",
                                snap.version
                            ));
                        }
                        last_version = snap.version;
                        deltas += u64::from(registry.last_delta().is_some());
                        // A version read as a change of the last one is the table read whole.
                        if reads % 8 == 0
                            && let Ok(whole) = registry.read_uncached()
                            && whole.version == snap.version
                            && whole != *snap
                        {
                            invalid
                                .push(format!("version {}: the change read differs", snap.version));
                        }
                        // The snapshot routed with (writers may have moved on since `snap`).
                        let (snap, ring) = registry.snapshot_and_ring().unwrap();
                        if let Some(view) = ring {
                            if built.as_ref().is_none_or(|(v, _, _)| *v != snap.version) {
                                let members =
                                    libmcshm::table::routed(&snap.servers, snap.policy.failover);
                                let ring = libmcshm::placement::Distribution::Ketama
                                    .ring(&libmcshm::table::members(&snap.servers, &members));
                                built = Some((snap.version, ring, members));
                            }
                            let (_, local, members) = built.as_ref().unwrap();
                            for n in 0..8u32 {
                                let hash = n.wrapping_mul(0x9e37_79b9) ^ reads as u32;
                                // None: writers have moved on twice since the read (retry).
                                if let Some(owner) = registry.ring_owner(&view, hash) {
                                    routed += 1;
                                    let expected = local.server_for_hash(hash).map(|m| members[m]);
                                    if owner != expected {
                                        invalid.push(format!(
                                            "version {}: hash {hash} went to {owner:?}, not {expected:?}",
                                            snap.version
                                        ));
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => invalid.push(e.to_string()),
                }
                longest = longest.max(t.elapsed());
                reads += 1;
            }
            (reads, invalid, longest, routed, deltas)
        })
    };

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}, writer life {life} us");
    let mut rng = Rng(seed);
    let (mut committed, mut killed, mut torn_slots) = (Vec::new(), 0, 0);
    // At least 200 kills, bounded in count (about 1 writer in 2 is killed; 3 000 leave room
    // for a machine slower than the timing said).
    for i in 0..3000 {
        if killed >= 200 {
            break;
        }
        let name = format!("w{i}:1");
        let mut child = reg
            .cmd("kill", &["add", "--no-flush", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_micros(rng.next() % (life + life / 4 + 1)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            committed.push(name);
        } else {
            killed += 1;
            torn_slots += usize::from(slot_left_odd(&reg.bytes("kill")));
        }
    }
    // The next writer proceeds without any repair.
    reg.ok("kill", &["add", "--no-flush", "after:1"]);
    stop.store(true, Ordering::Relaxed);
    let (reads, invalid, longest, routed, deltas) = reader.join().unwrap();
    println!(
        "{killed} writers killed (a slot left odd, i.e. killed mid-copy, after {torn_slots} of them), {} finished, \
         {reads} snapshots, longest read {longest:?}, {routed} keys routed by the shared ring, {deltas} of the snapshots read as a change",
        committed.len()
    );
    assert!(routed > 0, "the shared ring was never used");

    assert!(invalid.is_empty(), "invalid snapshots: {invalid:?}");
    assert!(killed >= 200, "only {killed} writers were killed");
    assert!(reads > 200, "the reader kept reading ({reads} reads)");
    // Liveness, not speed: a reader is never blocked by a writer, dead or alive.
    assert!(longest < Duration::from_secs(2), "a read took {longest:?}");
    let present: BTreeSet<String> = addresses(&reg.list_json("kill")).into_iter().collect();
    for name in &committed {
        assert!(
            present.contains(name),
            "{name} returned success but is missing"
        );
    }
    assert!(present.contains("after:1"));
}

/// Whether a writer died inside a slot (its sequence word is odd); see mcshm(5).
fn slot_left_odd(file: &[u8]) -> bool {
    let word = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().unwrap());
    let capacity = u32::from_le_bytes(file[20..24].try_into().unwrap()) as usize;
    let slot_len = 128 + capacity * 512;
    word(256) % 2 == 1 || word(256 + slot_len) % 2 == 1
}

#[test]
fn wait_returns_soon_after_another_process_changes_the_table() {
    let reg = Reg::new();
    reg.ok("w", &["add", "--no-flush", "a:1"]);
    let version = reg.list_json("w")["version"].as_u64().unwrap();
    let mut waiter = reg
        .cmd(
            "w",
            &["wait", "--since", &version.to_string(), "--timeout", "60"],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    reg.ok("w", &["down", "a:1"]);
    assert!(
        wait_until(Duration::from_secs(10), || waiter
            .try_wait()
            .unwrap()
            .is_some()),
        "wait did not return after a change"
    );
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (version + 1).to_string()
    );

    // Without --since it waits for the next change; --timeout gives up with exit 1.
    let run = reg.run("w", &["wait", "--timeout", "0.2"]);
    assert_eq!(run.code(), 1);
}

#[test]
fn library_wait_sees_a_commit_from_another_process() {
    let reg = Reg::new();
    reg.ok("lw", &["add", "--no-flush", "a:1"]);
    let mut registry = Registry::open(reg.dir(), &Domain::new("lw").unwrap()).unwrap();
    let before = registry.version();
    let mut writer = reg
        .cmd("lw", &["down", "a:1", "--reason", "x"])
        .spawn()
        .unwrap();
    let seen = registry.wait_for_change(before, Duration::from_secs(10));
    writer.wait().unwrap();
    assert_eq!(seen, Some(before + 1));
    assert_eq!(registry.snapshot().unwrap().servers[0].reason, "x");
}

/// One commit wakes every sleeping waiter (the writer wakes one, each woken waiter wakes two
/// more): 50 `mcadmin wait` processes asleep on the futex all return the new version well
/// before the 5 s re-check slice a lost wake-up would fall back on (a delivery check, not a
/// speed figure: the wake-ups take milliseconds; the bench measures them).
#[test]
fn one_commit_wakes_fifty_sleeping_waiters() {
    let reg = Reg::new();
    reg.ok("fifty", &["add", "--no-flush", "a:1"]);
    let version = reg.list_json("fifty")["version"].as_u64().unwrap();
    let since = version.to_string();
    let waiters: Vec<std::process::Child> = (0..50)
        .map(|_| {
            reg.cmd("fifty", &["wait", "--since", &since, "--timeout", "60"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let asleep = wait_until(Duration::from_secs(10), || {
        waiters.iter().all(|w| {
            std::fs::read_to_string(format!("/proc/{}/wchan", w.id()))
                .is_ok_and(|c| c.contains("futex"))
        })
    });
    assert!(asleep, "the waiters did not all go to sleep on the futex");
    reg.ok("fifty", &["down", "a:1"]);
    let committed = std::time::Instant::now();
    for waiter in waiters {
        let out = waiter.wait_with_output().unwrap();
        assert!(
            committed.elapsed() < Duration::from_secs(2),
            "a waiter slept until its re-check slice: its wake-up was lost"
        );
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            (version + 1).to_string()
        );
    }
}
