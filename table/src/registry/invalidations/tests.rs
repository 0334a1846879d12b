//! The log's promises: keys come back as appended, each once; a full, damaged, torn or stale
//! log reads as overflowed, never as other keys; clearing loses nothing appended after the
//! read; sections are claimed by id, one per server, and reused; hostile words never make it
//! panic; and real processes appending at once, or killed in the middle of an append, leave a
//! whole log or an overflowed one.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Child, Command, Stdio};

use super::*;
use crate::registry::Registry;

/// Four sections of one page: 512 words each.
const SMALL: LogCapacity = LogCapacity {
    sections: 4,
    section_bytes: 4096,
};

/// A registry directory with domain `app`'s table in it.
struct Fixture {
    dir: tempfile::TempDir,
    domain: Domain,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(FileOwnership::default())
    }

    fn with(ownership: FileOwnership) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let domain = Domain::new("app").unwrap();
        Registry::open_writer_with(dir.path(), &domain, true, ownership).unwrap();
        Fixture { dir, domain }
    }

    /// The log, created with `capacity` if new; reads wait 20 ms for a record to be committed.
    fn log(&self, capacity: LogCapacity) -> Invalidations {
        let mut log =
            Invalidations::open_or_create(self.dir.path(), &self.domain, capacity).unwrap();
        log.commit_wait = Duration::from_millis(20);
        log
    }

    fn path(&self) -> PathBuf {
        log_path(self.dir.path(), &self.domain)
    }
}

fn keys(names: &[&str]) -> Option<Vec<Vec<u8>>> {
    Some(names.iter().map(|n| n.as_bytes().to_vec()).collect())
}

fn tail(log: &Invalidations, section: usize) -> Tail {
    Tail::decode(
        log.map
            .load(log.layout.tail_word(section), Ordering::Acquire)
            .unwrap(),
    )
}

#[test]
fn keys_read_back_each_once_in_the_order_first_logged() {
    let f = Fixture::new();
    let log = f.log(SMALL);
    assert!(log.is_writable());
    assert_eq!(log.read(7).keys, Some(vec![]), "no section: nothing missed");
    assert_eq!(log.stats(7).since_ms, None);
    let long = "k".repeat(MAX_KEY_LEN);
    for key in ["a", "b", "a", "exactly8", "nine-byte", "b", &long] {
        assert_eq!(log.append(7, key.as_bytes()), Appended::Logged, "{key}");
    }
    let read = log.read(7);
    assert_eq!(read.server(), 7);
    assert!(!read.overflowed());
    assert_eq!(read.keys, keys(&["a", "b", "exactly8", "nine-byte", &long]));
    let stats = log.stats(7);
    // 2 + 2 + 2 + 2 + 3 + 2 + 33 words.
    assert_eq!(
        (stats.keys, stats.bytes, stats.overflowed),
        (7, 46 * 8, false)
    );
    assert!(stats.since_ms.is_some_and(|t| t > 0));
    assert_eq!(log.servers(), [7]);
    // Another server's log is its own.
    assert_eq!(log.append(8, b"other"), Appended::Logged);
    assert_eq!(log.read(8).keys, keys(&["other"]));
    assert_eq!(log.read(7).keys.unwrap().len(), 5);
    assert_eq!(log.servers(), [7, 8]);
    // A second handle (another process, as far as the file knows) sees the same.
    let again = f.log(LogCapacity::default());
    assert_eq!(
        again.capacity(),
        SMALL,
        "an existing log keeps its capacity"
    );
    assert_eq!(again.read(8).keys, keys(&["other"]));
}

#[test]
fn a_full_section_overflows_and_records_nothing_more() {
    let f = Fixture::new();
    let log = f.log(SMALL);
    // Keys of 8 bytes take 2 words: 256 fill a section of 512 words exactly.
    assert_eq!(SMALL.keys_per_section(8), 256);
    for i in 0..256 {
        let key = format!("key{i:05}");
        assert_eq!(log.append(3, key.as_bytes()), Appended::Logged, "{i}");
    }
    assert_eq!(log.read(3).keys.unwrap().len(), 256);
    assert_eq!(log.append(3, b"key00256"), Appended::Overflowed);
    // Once overflowed, nothing more is counted, even a key that would fit.
    assert_eq!(log.append(3, b"k"), Appended::Overflowed);
    let stats = log.stats(3);
    assert_eq!(
        (stats.keys, stats.bytes, stats.overflowed),
        (256, 4096, true)
    );
    let read = log.read(3);
    assert!(read.overflowed());
    assert_eq!(read.keys, None);
    // The other servers' logs are not affected.
    assert_eq!(log.append(4, b"fine"), Appended::Logged);
    assert_eq!(log.read(4).keys, keys(&["fine"]));
    // Cleared (after the flush the overflow asks for), the section takes keys again.
    assert_eq!(log.clear(&read).unwrap(), Cleared::Done);
    assert_eq!(log.append(3, b"again"), Appended::Logged);
    assert_eq!(log.read(3).keys, keys(&["again"]));
}

#[test]
fn a_key_the_log_cannot_hold_overflows_it() {
    let f = Fixture::new();
    let log = f.log(SMALL);
    assert_eq!(log.append(1, b""), Appended::Overflowed);
    assert!(log.read(1).overflowed());
    let long = vec![b'k'; MAX_KEY_LEN + 1];
    assert_eq!(log.append(2, b"before"), Appended::Logged);
    assert_eq!(log.append(2, &long), Appended::Overflowed);
    assert!(log.read(2).overflowed());
    assert!(log.stats(2).overflowed);
    // Server 0 is no server: nothing is recorded, and no log is touched.
    assert_eq!(log.append(0, b"zero"), Appended::Unavailable);
    assert_eq!(log.servers(), [1, 2]);
}

#[test]
fn a_reserved_record_never_committed_reads_as_overflowed() {
    let f = Fixture::new();
    let log = f.log(SMALL);
    assert_eq!(log.append(5, b"first"), Appended::Logged);
    let section = log.find_open(5).unwrap();
    // A process killed after reserving its record and before committing it.
    let Reserved::At { offset, epoch } = log.reserve(section, 5, Some(2)) else {
        panic!("reserved");
    };
    assert_eq!(log.append(5, b"after"), Appended::Logged);
    let started = Instant::now();
    assert_eq!(log.read(5).keys, None);
    assert!(
        started.elapsed() >= log.commit_wait,
        "waited for the commit"
    );
    // The flag says nothing of it: only a read finds a torn record.
    assert!(!log.stats(5).overflowed);
    // The same record committed late (its process was only slow): the log is whole.
    let (words, count) = key_words(b"late");
    assert_eq!(
        log.write_record(section, offset, 5, epoch, b"late", &words[..count]),
        Appended::Logged
    );
    assert_eq!(log.read(5).keys, keys(&["first", "late", "after"]));
}

#[test]
fn a_damaged_record_reads_as_overflowed_never_as_another_key() {
    let f = Fixture::new();
    let mut log = f.log(SMALL);
    log.commit_wait = Duration::ZERO;
    assert_eq!(log.append(5, b"first"), Appended::Logged);
    assert_eq!(log.append(5, b"thirteen-byte"), Appended::Logged);
    let section = log.find_open(5).unwrap();
    let record = log.layout.data_word(section) + 2;
    // Every bit of the second record: its commit word (CRC, length, epoch) and its key words,
    // padding included.
    for word in record..record + 3 {
        let good = log.map.load(word, Ordering::Acquire).unwrap();
        for bit in 0..64 {
            log.map
                .store(word, good ^ (1 << bit), Ordering::Release)
                .unwrap();
            assert_eq!(log.read(5).keys, None, "word {word} bit {bit}");
        }
        log.map.store(word, good, Ordering::Release).unwrap();
    }
    assert_eq!(log.read(5).keys, keys(&["first", "thirteen-byte"]));
    // A tail that claims more records than the words hold, or more words than the section.
    let word = log.layout.tail_word(section);
    let good = log.map.load(word, Ordering::Acquire).unwrap();
    for damaged in [
        Tail {
            keys: 3,
            ..Tail::decode(good)
        },
        Tail {
            used: 4,
            ..Tail::decode(good)
        },
        Tail {
            used: 513,
            ..Tail::decode(good)
        },
    ] {
        log.map
            .store(word, damaged.encode(), Ordering::Release)
            .unwrap();
        assert_eq!(log.read(5).keys, None, "{damaged:?}");
    }
}

#[test]
fn a_record_left_from_an_earlier_owner_or_epoch_reads_as_overflowed() {
    let f = Fixture::new();
    let log = f.log(LogCapacity {
        sections: 1,
        section_bytes: 4096,
    });
    assert_eq!(log.append(5, b"old-key"), Appended::Logged);
    // A process reserves a record for server 5, then stalls; server 5 is deleted and its
    // section goes to server 6.
    let Reserved::At { offset, epoch } = log.reserve(0, 5, Some(2)) else {
        panic!("reserved");
    };
    log.forget(5).unwrap();
    assert_eq!(log.read(5).keys, Some(vec![]));
    assert_eq!(log.append(6, b"new-key"), Appended::Logged);
    assert_eq!(
        log.read(6).keys,
        keys(&["new-key"]),
        "5's records are not 6's"
    );
    assert_eq!(tail(&log, 0).epoch, epoch + 1);
    // The stalled process writes its record where 6's now is (same offset: both at 0 and 2).
    assert_eq!(offset, 2);
    let (words, count) = key_words(b"stale-5");
    let _ = log.write_record(0, 0, 5, epoch, b"stale-5", &words[..count]);
    assert_eq!(log.read(6).keys, None, "never read as 6's key");
    // 6's stale writer of the same server but an earlier epoch: the same.
    log.forget(6).unwrap();
    assert_eq!(log.append(6, b"newer"), Appended::Logged);
    let (words, count) = key_words(b"older");
    let _ = log.write_record(0, 0, 6, epoch + 1, b"older", &words[..count]);
    assert_eq!(log.read(6).keys, None);
    // A stalled append's swap fails once the section moved on: it looks for 6's section again.
    let seen = log.read(6);
    log.forget(6).unwrap();
    assert!(matches!(log.reserve(0, 6, Some(2)), Reserved::Moved));
    assert_eq!(
        log.clear(&seen).unwrap(),
        Cleared::Done,
        "nothing left to clear"
    );
}

#[test]
fn clear_releases_a_log_only_as_it_was_read() {
    let f = Fixture::new();
    let log = f.log(SMALL);
    let empty = log.read(2);
    assert_eq!(log.append(2, b"a"), Appended::Logged);
    // Read before the server had a log: clearing now would lose "a".
    assert_eq!(log.clear(&empty).unwrap(), Cleared::Grew);
    let first = log.read(2);
    assert_eq!(first.keys, keys(&["a"]));
    assert_eq!(log.append(2, b"b"), Appended::Logged);
    assert_eq!(log.clear(&first).unwrap(), Cleared::Grew);
    assert_eq!(log.read(2).keys, keys(&["a", "b"]));
    // Overflowing since the read is a change too.
    let second = log.read(2);
    assert_eq!(log.append(2, b""), Appended::Overflowed);
    assert_eq!(log.clear(&second).unwrap(), Cleared::Grew);
    let third = log.read(2);
    assert!(third.overflowed());
    assert_eq!(log.clear(&third).unwrap(), Cleared::Done);
    assert_eq!(log.read(2).keys, Some(vec![]));
    assert_eq!(
        log.stats(2),
        LogStats {
            keys: 0,
            bytes: 0,
            overflowed: false,
            since_ms: None,
        }
    );
    assert!(log.servers().is_empty());
    // Clearing twice, or a log of another server's read, changes nothing.
    assert_eq!(log.clear(&third).unwrap(), Cleared::Done);
    assert_eq!(log.append(2, b"c"), Appended::Logged);
    assert_eq!(log.clear(&third).unwrap(), Cleared::Grew);
    assert_eq!(log.read(2).keys, keys(&["c"]), "a new log, from its start");
}

#[test]
fn forget_drops_a_log_whatever_it_holds() {
    let f = Fixture::new();
    let log = f.log(SMALL);
    for key in ["a", "b"] {
        assert_eq!(log.append(9, key.as_bytes()), Appended::Logged);
    }
    assert_eq!(log.append(10, b"kept"), Appended::Logged);
    log.forget(9).unwrap();
    log.forget(9).unwrap();
    log.forget(11).unwrap();
    assert_eq!(log.read(9).keys, Some(vec![]));
    assert_eq!(log.read(10).keys, keys(&["kept"]));
    assert_eq!(log.servers(), [10]);
}

#[test]
fn sections_are_claimed_by_server_id_and_reused() {
    let f = Fixture::new();
    let log = f.log(SMALL);
    for server in [11, 12, 13, 14] {
        assert_eq!(log.append(server, b"k"), Appended::Logged);
        assert_eq!(log.append(server, b"l"), Appended::Logged);
    }
    assert_eq!(log.servers(), [11, 12, 13, 14]);
    let sections: Vec<usize> = [11, 12, 13, 14]
        .iter()
        .map(|&s| log.find_open(s).unwrap())
        .collect();
    assert_eq!(sections, [0, 1, 2, 3]);
    assert!(!log.unlogged());
    // A fifth server finds every section taken: its key is in no log, and it is not known
    // whose it was, so no log can be trusted until the domain has been flushed.
    assert_eq!(log.append(15, b"lost"), Appended::Overflowed);
    assert!(log.unlogged());
    assert!(log.read(15).overflowed());
    assert!(log.read(11).overflowed());
    assert!(log.stats(11).overflowed && log.stats(15).overflowed);
    // A freed section is not claimed meanwhile.
    log.forget(12).unwrap();
    assert_eq!(log.append(15, b"again"), Appended::Overflowed);
    assert_eq!(log.servers(), [11, 13, 14]);
    log.reset_unlogged().unwrap();
    assert!(!log.unlogged());
    assert_eq!(log.read(11).keys, keys(&["k", "l"]));
    // 15 takes the freed section, from its start, in a new epoch.
    let epoch = tail(&log, 1).epoch;
    assert_eq!(log.append(15, b"fresh"), Appended::Logged);
    assert_eq!(log.find_open(15), Some(1));
    assert_eq!(tail(&log, 1).epoch, epoch.wrapping_add(1));
    assert_eq!(log.read(15).keys, keys(&["fresh"]));
    // A clear or forget killed between closing a section and freeing it: the server's next
    // claim frees it and takes a section anew.
    let section = log.find_open(13).unwrap();
    log.close(section).unwrap();
    assert_eq!(log.read(13).keys, Some(vec![]), "closed: no log");
    assert_eq!(log.append(13, b"after"), Appended::Logged);
    assert_eq!(log.read(13).keys, keys(&["after"]));
    assert_eq!(log.servers().len(), 4);
}

#[test]
fn a_read_only_handle_reads_and_records_nothing() {
    let f = Fixture::new();
    assert!(
        Invalidations::open(f.dir.path(), &f.domain)
            .unwrap()
            .is_none()
    );
    let log = f.log(SMALL);
    assert_eq!(log.append(4, b"k"), Appended::Logged);
    let reader = Invalidations::open(f.dir.path(), &f.domain)
        .unwrap()
        .unwrap();
    assert!(!reader.is_writable());
    assert_eq!(reader.read(4).keys, keys(&["k"]));
    assert_eq!(reader.stats(4).keys, 1);
    assert_eq!(reader.append(4, b"l"), Appended::Unavailable);
    assert_eq!(reader.append(5, b"l"), Appended::Unavailable);
    let read = reader.read(4);
    for refused in [
        reader.clear(&read).unwrap_err(),
        reader.forget(4).unwrap_err(),
        reader.reset_unlogged().unwrap_err(),
    ] {
        assert!(
            matches!(refused, Error::PermissionDenied { .. }),
            "{refused}"
        );
    }
    assert_eq!(log.read(4).keys, keys(&["k"]));
    assert_eq!(log.servers(), [4]);
}

#[test]
fn the_log_takes_its_tables_mode_and_group_and_needs_the_table() {
    let gid = if crate::shm::effective_uid() == 0 {
        1
    } else {
        std::fs::metadata(std::env::temp_dir()).unwrap().gid()
    };
    let f = Fixture::with(FileOwnership {
        mode: 0o640,
        gid: Some(gid),
        from_dir: false,
    });
    let log = f.log(SMALL);
    let meta = std::fs::metadata(log.path()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(meta.gid(), gid);
    assert_eq!(log.path(), f.dir.path().join("app.ilog"));
    assert_eq!(meta.len(), 4096 + 4 * 4096);
    // Sparse: only the header page is written.
    assert!(meta.blocks() * 512 <= 4096 * 2, "{} blocks", meta.blocks());
    // No temporaries are left beside it.
    let names: Vec<String> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");

    let other = Domain::new("other").unwrap();
    let err = Invalidations::open_or_create(f.dir.path(), &other, SMALL)
        .err()
        .unwrap();
    assert!(matches!(err, Error::NoDomain { .. }), "{err}");
    assert!(!log_path(f.dir.path(), &other).exists());
    let bad = LogCapacity {
        sections: 0,
        ..SMALL
    };
    let err = Invalidations::open_or_create(f.dir.path(), &f.domain, bad)
        .err()
        .unwrap();
    assert!(err.to_string().contains("sections"), "{err}");
}

#[test]
fn a_damaged_or_foreign_header_is_refused() {
    let f = Fixture::new();
    drop(f.log(SMALL));
    let path = f.path();
    let pristine = std::fs::read(&path).unwrap();
    let open = || Invalidations::open(f.dir.path(), &f.domain).map(|_| ());
    assert!(open().is_ok());
    // Every byte of the checked header.
    for at in 0..HEADER_CRC_OFFSET + 4 {
        let mut damaged = pristine.clone();
        damaged[at] ^= 0x20;
        std::fs::write(&path, &damaged).unwrap();
        let err = open().unwrap_err();
        assert!(matches!(err, Error::Unusable { .. }), "byte {at}: {err}");
    }
    // A newer format that this reader may not use, with a valid checksum.
    let mut newer = pristine.clone();
    newer[8..12].copy_from_slice(&2u32.to_le_bytes());
    newer[12..16].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&newer[..HEADER_CRC_OFFSET]);
    newer[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &newer).unwrap();
    assert!(matches!(
        open().unwrap_err(),
        Error::NewerFormat {
            found: 2,
            needs: 2,
            ..
        }
    ));
    // Cut short, or longer than its header says.
    for len in [0, 100, pristine.len() - 8, pristine.len() + 4096] {
        let mut resized = pristine.clone();
        resized.resize(len, 0);
        std::fs::write(&path, &resized).unwrap();
        let err = open().unwrap_err();
        assert!(matches!(err, Error::Unusable { .. }), "{len}: {err}");
    }
    // Another domain's log under this name.
    let foreign = header_image(&Domain::new("other").unwrap(), SMALL, 1);
    let mut renamed = pristine.clone();
    renamed[..HEADER_LEN].copy_from_slice(&foreign);
    std::fs::write(&path, &renamed).unwrap();
    let err = open().unwrap_err().to_string();
    assert!(err.contains("the log of domain 'other'"), "{err}");
    assert!(
        err.contains("remove it when no server of the domain is down"),
        "{err}"
    );
    // A link is never followed.
    std::fs::remove_file(&path).unwrap();
    let elsewhere = f.dir.path().join("elsewhere");
    std::fs::write(&elsewhere, &pristine).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    assert!(matches!(open().unwrap_err(), Error::UnsafeFile { .. }));
    let err = Invalidations::open_or_create(f.dir.path(), &f.domain, SMALL)
        .err()
        .unwrap();
    assert!(matches!(err, Error::UnsafeFile { .. }), "{err}");
}

#[test]
fn a_claim_lock_left_by_a_dead_process_is_taken_over_and_a_live_one_waited_for() {
    let f = Fixture::new();
    let log = f.log(SMALL);
    let mut exited = Command::new("true").spawn().unwrap();
    let dead = ProcessId::from_word(u64::from(exited.id()));
    exited.wait().unwrap();
    assert!(!dead.is_alive());
    log.map
        .store(CLAIM_LOCK_WORD, dead.to_word(), Ordering::Release)
        .unwrap();
    assert_eq!(log.append(1, b"k"), Appended::Logged);
    assert_eq!(log.map.load(CLAIM_LOCK_WORD, Ordering::Acquire), Some(0));

    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let live = loop {
        // Its start time is in /proc once it runs.
        let word = std::fs::read_to_string(format!("/proc/{}/stat", sleeper.id()))
            .ok()
            .and_then(|stat| {
                let after = &stat[stat.rfind(')')? + 2..];
                let ticks: u64 = after.split(' ').nth(19)?.parse().ok()?;
                Some((ticks as u32 as u64) << 32 | u64::from(sleeper.id()))
            });
        if let Some(word) = word {
            break ProcessId::from_word(word);
        }
    };
    assert!(live.is_alive());
    log.map
        .store(CLAIM_LOCK_WORD, live.to_word(), Ordering::Release)
        .unwrap();
    // Appends to a claimed section take no lock.
    assert_eq!(log.append(1, b"l"), Appended::Logged);
    // A claim waits, then gives up: the key is in no log.
    let started = Instant::now();
    assert_eq!(log.append(2, b"k"), Appended::Overflowed);
    assert!(started.elapsed() >= CLAIM_WAIT);
    assert!(log.unlogged());
    let read = log.read(1);
    let err = log.clear(&read).unwrap_err();
    assert!(
        err.to_string().contains(&format!("pid {}", sleeper.id())),
        "{err}"
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert_eq!(log.clear(&read).unwrap(), Cleared::Done);
}

/// xorshift64*: random words for the hostile-memory test, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64
            | 1;
        eprintln!("seed {seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn hostile_words_never_make_it_panic_or_read_what_was_not_appended() {
    let f = Fixture::new();
    let mut log = f.log(SMALL);
    log.commit_wait = Duration::ZERO;
    let mut rng = Rng::seeded();
    let words = (log.layout.data_word(SMALL.sections as usize)) as u64;
    for round in 0..300 {
        for server in 1..=4 {
            let _ = log.append(server, format!("r{round}").as_bytes());
        }
        // Damage: random words anywhere, and plausible owners and tails.
        for _ in 0..rng.below(8) {
            let at = (rng.below(words) as usize).max(HEADER_LEN / 8);
            let value = match rng.below(4) {
                0 => rng.next(),
                1 => rng.below(6),
                2 => rng.next() & !(Tail::CLOSED | Tail::OVERFLOWED),
                _ => rng.next() & 0xffff_ffff_ffff,
            };
            log.map.store(at, value, Ordering::Release).unwrap();
        }
        for server in 0..=6 {
            let read = log.read(server);
            for key in read.keys.iter().flatten() {
                // What this test appends: "r{round}" and "k".
                let text = String::from_utf8(key.clone()).unwrap();
                assert!(text.starts_with('r') || text == "k", "{text:?}");
            }
            let _ = log.stats(server);
            let _ = log.append(server, b"k");
            if rng.below(4) == 0 {
                let _ = log.clear(&read);
            }
        }
        let _ = log.servers();
        if rng.below(8) == 0 {
            log.reset_unlogged().unwrap();
        }
    }
}

#[test]
fn tails_and_capacities_say_what_they_hold() {
    let tail = Tail {
        used: Tail::FIELD,
        keys: 12345,
        overflowed: true,
        closed: false,
        epoch: 0xfffe,
    };
    assert_eq!(Tail::decode(tail.encode()), tail);
    assert_eq!(
        Tail::decode(0),
        Tail {
            used: 0,
            keys: 0,
            overflowed: false,
            closed: false,
            epoch: 0
        }
    );
    // The numbers in the module's documentation.
    let default = LogCapacity::default();
    assert_eq!(default.check().unwrap(), default);
    assert_eq!(default.keys_per_section(8), 524_288);
    assert_eq!(default.keys_per_section(32), 209_715);
    assert_eq!(default.keys_per_section(250), 31_775);
    assert_eq!(default.file_len(), 4096 + 32 * (8 << 20));
    assert_eq!(
        LogCapacity {
            sections: LogCapacity::MAX_SECTIONS,
            section_bytes: LogCapacity::MAX_SECTION_BYTES
        }
        .data_offset(),
        12288
    );
    // The largest section's words and records fit their fields.
    const { assert!(LogCapacity::MAX_SECTION_BYTES / 8 <= Tail::FIELD) };
    for bad in [
        LogCapacity {
            sections: LogCapacity::MAX_SECTIONS + 1,
            ..default
        },
        LogCapacity {
            section_bytes: 4095,
            ..default
        },
        LogCapacity {
            section_bytes: LogCapacity::MAX_SECTION_BYTES + 4096,
            ..default
        },
        LogCapacity {
            section_bytes: 6000,
            ..default
        },
    ] {
        assert!(bad.check().is_err(), "{bad:?}");
    }
}

#[test]
fn threads_appending_at_once_lose_nothing() {
    let f = Fixture::new();
    let log = f.log(LogCapacity {
        sections: 2,
        section_bytes: 1 << 20,
    });
    std::thread::scope(|scope| {
        for t in 0..8 {
            let log = &log;
            scope.spawn(move || {
                for i in 0..2000 {
                    let key = format!("t{t}-{i}");
                    assert_eq!(log.append(1, key.as_bytes()), Appended::Logged);
                }
            });
        }
    });
    check_each_writer_in_order(&log.read(1), 8, 2000, 't');
}

/// `logged` holds `writers` × `count` keys `{prefix}{w}-{i}`, each once, each writer's in
/// the order it appended them.
fn check_each_writer_in_order(logged: &Logged, writers: usize, count: usize, prefix: char) {
    let keys = logged.keys.as_ref().expect("not overflowed");
    assert_eq!(keys.len(), writers * count);
    let mut next = vec![0usize; writers];
    for key in keys {
        let text = std::str::from_utf8(key).unwrap();
        let (w, i) = text[1..].split_once('-').unwrap();
        assert!(text.starts_with(prefix), "{text}");
        let (w, i): (usize, usize) = (w.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[w], "writer {w}'s keys out of order");
        next[w] += 1;
    }
    assert_eq!(next, vec![count; writers]);
}

const CHILD_VAR: &str = "MCSHM_ILOG_CHILD";

/// Not a test on its own: an appending process (`MCSHM_ILOG_CHILD=dir|server|prefix|count`)
/// that says it is ready (`dir/ready-{prefix}`) and appends `count` keys `{prefix}-{i}` to
/// `server`'s log once `dir/go` exists; with count 0, keys of varying length for as long as it
/// lives.
#[test]
fn appender_child() {
    let Ok(spec) = std::env::var(CHILD_VAR) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let dir = Path::new(parts[0]);
    let domain = Domain::new("app").unwrap();
    let log = Invalidations::open_or_create(dir, &domain, LogCapacity::default()).unwrap();
    let server: u32 = parts[1].parse().unwrap();
    let count: usize = parts[3].parse().unwrap();
    std::fs::write(dir.join(format!("ready-{}", parts[2])), "").unwrap();
    while !dir.join("go").exists() {
        std::thread::yield_now();
    }
    if count == 0 {
        for i in 0.. {
            let _ = log.append(server, &killed_key(i));
        }
    }
    for i in 0..count {
        let key = format!("{}-{i}", parts[2]);
        assert_eq!(log.append(server, key.as_bytes()), Appended::Logged);
    }
}

/// The `i`th key the child killed in the middle of its appends appends: 9 to 45 bytes.
fn killed_key(i: usize) -> Vec<u8> {
    format!("k{i:07}-{}", "x".repeat(i % 37)).into_bytes()
}

fn child(dir: &Path, server: u32, prefix: &str, count: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "registry::invalidations::tests::appender_child",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(
            CHILD_VAR,
            format!("{}|{server}|{prefix}|{count}", dir.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn processes_appending_at_once_lose_nothing_and_tear_nothing() {
    let f = Fixture::new();
    let log = f.log(LogCapacity {
        sections: 2,
        section_bytes: 1 << 20,
    });
    let children: Vec<Child> = (0..4)
        .map(|c| child(f.dir.path(), 21, &format!("p{c}"), 10_000))
        .collect();
    // All four are started and wait for this, so that their appends overlap.
    let started = Instant::now();
    while (0..4).any(|c| !f.dir.path().join(format!("ready-p{c}")).exists()) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "children did not start"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    std::fs::write(f.dir.path().join("go"), "").unwrap();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let logged = log.read(21);
    check_each_writer_in_order(&logged, 4, 10_000, 'p');
    // They did append at once: the log interleaves their keys.
    let writers: Vec<u8> = logged.keys.iter().flatten().map(|k| k[1]).collect();
    let switches = writers.windows(2).filter(|w| w[0] != w[1]).count();
    eprintln!("{switches} switches between writers in the log");
    assert!(switches >= 4, "{switches}");
    let stats = log.stats(21);
    assert_eq!((stats.keys, stats.overflowed), (40_000, false));
    assert_eq!(log.servers(), [21]);
}

#[test]
fn a_process_killed_while_appending_leaves_a_whole_log_or_an_overflowed_one() {
    let f = Fixture::new();
    let log = f.log(LogCapacity {
        sections: 2,
        section_bytes: 1 << 20,
    });
    std::fs::write(f.dir.path().join("go"), "").unwrap();
    let mut rng = Rng::seeded();
    let (mut whole, mut overflowed) = (0, 0);
    for round in 0..30 {
        let server = 100 + round;
        let mut appender = child(f.dir.path(), server, "k", 0);
        // Until it has appended, then a moment more: 0 to 3 ms.
        let started = Instant::now();
        while log.stats(server).keys == 0 && started.elapsed() < Duration::from_secs(20) {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        appender.kill().unwrap();
        appender.wait().unwrap();
        let logged = log.read(server);
        match &logged.keys {
            Some(keys) => {
                whole += 1;
                assert!(!keys.is_empty(), "round {round}");
                for (i, key) in keys.iter().enumerate() {
                    assert_eq!(*key, killed_key(i), "round {round}: key {i}");
                }
                assert_eq!(keys.len() as u64, log.stats(server).keys);
            }
            None => overflowed += 1,
        }
        assert_eq!(log.clear(&logged).unwrap(), Cleared::Done);
    }
    eprintln!("{whole} whole, {overflowed} overflowed");
    assert_eq!(whole + overflowed, 30);
}
