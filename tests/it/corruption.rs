//! Damaged registry files: a flipped byte anywhere, truncation, a newer format. Each gives a
//! clear error or the intact table, never a wrong table or a panic, and `mcadmin load` repairs.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use crate::common::{Reg, addresses};
use libmcshm::{Domain, Registry, Snapshot};

const HEADER: usize = 256;
const SLOT_HEADER: usize = 128;
const ENTRY: usize = 512;

fn setup() -> (Reg, Snapshot) {
    let reg = Reg::new();
    reg.ok("c", &["add", "--no-flush", "a:1", "b:2", "c:3"]);
    reg.ok("c", &["down", "b:2", "--reason", "flaky"]); // version 2, in slot 0; slot 1 holds 1
    let snap = Registry::open(reg.dir(), &Domain::new("c").unwrap())
        .unwrap()
        .snapshot()
        .unwrap();
    assert_eq!(snap.version, 2);
    (reg, (*snap).clone())
}

fn read(reg: &Reg) -> Result<Snapshot, String> {
    Registry::open(reg.dir(), &Domain::new("c").unwrap())
        .and_then(|mut r| r.current_snapshot())
        .map(|s| (*s).clone())
        .map_err(|e| e.to_string())
}

#[test]
fn a_flipped_byte_anywhere_gives_an_error_or_the_intact_table() {
    let (reg, good) = setup();
    let path = reg.file("c");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let len = file.metadata().unwrap().len() as usize;
    let capacity = u32::from_le_bytes(reg.bytes("c")[20..24].try_into().unwrap()) as usize;
    let slot_len = SLOT_HEADER + capacity * ENTRY;
    let live = HEADER + 2 * slot_len;
    let rings = live + capacity * 32 + 256 * 64;
    let used = SLOT_HEADER + 3 * ENTRY;
    // (region, byte range, what a flip there must give: Some(true) error, Some(false) intact
    // table, None either)
    let regions: Vec<(&str, Vec<usize>, Option<bool>)> = vec![
        (
            "header: static part and its CRC",
            (0..132).collect(),
            Some(true),
        ),
        // Sealed (format 2): the word checks itself, so no flip there can select the other,
        // older slot (a roll-back to version 1 with b:2 "up").
        (
            "header: committed version",
            (136..144).collect(),
            Some(true),
        ),
        (
            "header: wake word and reserved",
            (144..HEADER).step_by(3).collect(),
            Some(false),
        ),
        (
            "committed slot 0: sequence",
            (HEADER..HEADER + 8).collect(),
            None,
        ),
        (
            "committed slot 0: header and entries",
            (HEADER + 8..HEADER + used).collect(),
            Some(true),
        ),
        (
            "slot 0 padding",
            (HEADER + used..HEADER + slot_len).step_by(997).collect(),
            Some(false),
        ),
        (
            "inactive slot 1",
            (HEADER + slot_len..HEADER + slot_len + used).collect(),
            Some(false),
        ),
        (
            "slot 1 padding",
            (HEADER + slot_len + used..live).step_by(997).collect(),
            Some(false),
        ),
        (
            "live region (failure counters) and clients",
            (live..rings).step_by(7).collect(),
            Some(false),
        ),
        // Routing input, never table input: a damaged ring is refused by the lookups that
        // read it (tests/it/shared_ring.rs), and the table is intact.
        (
            "ring regions",
            (rings..len).step_by(4099).collect(),
            Some(false),
        ),
    ];
    for (region, offsets, expect_error) in regions {
        let (mut errors, mut intact) = (0, 0);
        for at in offsets {
            let mut byte = [0u8];
            file.read_exact_at(&mut byte, at as u64).unwrap();
            file.write_all_at(&[byte[0] ^ 0x5a], at as u64).unwrap();
            let result = std::panic::catch_unwind(|| read(&reg))
                .unwrap_or_else(|_| panic!("panic reading with byte {at} flipped"));
            file.write_all_at(&byte, at as u64).unwrap();
            match result {
                Ok(snap) => {
                    assert_eq!(
                        snap, good,
                        "{region}: byte {at} flipped gave a different table"
                    );
                    intact += 1;
                }
                Err(msg) => {
                    assert!(
                        !msg.contains('\n') && msg.contains("c.mcshm"),
                        "{region}: unclear error {msg:?}"
                    );
                    errors += 1;
                }
            }
        }
        match expect_error {
            Some(true) => assert_eq!(intact, 0, "{region}: damage went unnoticed"),
            Some(false) => assert_eq!(errors, 0, "{region}: harmless damage refused"),
            None => {}
        }
        println!("{region}: {errors} errors, {intact} intact");
    }
    assert_eq!(read(&reg).unwrap(), good, "every byte was restored");
}

#[test]
fn mcadmin_reports_damage_refuses_to_build_on_it_and_load_repairs() {
    let (reg, _) = setup();
    let dump = reg.ok("c", &["dump"]);
    let file = OpenOptions::new().write(true).open(reg.file("c")).unwrap();
    file.write_all_at(b"X", (HEADER + SLOT_HEADER + 70) as u64)
        .unwrap(); // inside entry 0
    let damaged = reg.bytes("c");
    let run = reg.run("c", &["list"]);
    assert_eq!(run.code(), 4, "{}", run.stderr());
    assert!(
        run.stderr().contains("is corrupt") && run.stderr().contains("mcadmin load"),
        "{}",
        run.stderr()
    );
    let run = reg.run("c", &["add", "--no-flush", "d:4"]);
    assert_eq!(run.code(), 4);
    assert_eq!(
        reg.bytes("c"),
        damaged,
        "a write on a damaged table changed it"
    );

    let list = reg.dir().join("c.list");
    std::fs::write(&list, dump).unwrap();
    reg.ok("c", &["load", "--no-flush", list.to_str().unwrap()]);
    let repaired = reg.list_json("c");
    assert_eq!(addresses(&repaired), ["a:1", "b:2", "c:3"]);
    assert_eq!(repaired["version"], 3, "the repair is the next version");
    assert_eq!(repaired["servers"][1]["state"], "down");
}

#[test]
fn truncated_files_are_refused_without_a_crash() {
    let (reg, _) = setup();
    let full = reg.bytes("c");
    for len in [0, 7, 100, 255, 256, 1000, full.len() / 2, full.len() - 8] {
        std::fs::write(reg.file("c"), &full[..len]).unwrap();
        let run = reg.run("c", &["list"]);
        assert_eq!(run.code(), 4, "length {len}: {}", run.stderr());
        assert!(
            run.stderr().contains("corrupt"),
            "length {len}: {}",
            run.stderr()
        );
        assert!(read(&reg).is_err());
    }
}

#[test]
fn a_newer_format_is_refused_with_upgrade_advice() {
    let (reg, _) = setup();
    let mut bytes = reg.bytes("c");
    bytes[8..12].copy_from_slice(&5u32.to_le_bytes()); // format_version
    bytes[12..16].copy_from_slice(&5u32.to_le_bytes()); // min_reader_version
    let crc = crc32fast::hash(&bytes[..128]);
    bytes[128..132].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(reg.file("c"), &bytes).unwrap();
    for args in [&["list"][..], &["add", "--no-flush", "z:9"]] {
        let run = reg.run("c", args);
        assert_eq!(run.code(), 4);
        assert!(
            run.stderr().contains("format version 5") && run.stderr().contains("upgrade mcshm"),
            "{}",
            run.stderr()
        );
    }
    assert_eq!(reg.bytes("c"), bytes);

    // A newer writer that stays readable by format 3 (min_reader_version 3) is read normally.
    bytes[12..16].copy_from_slice(&3u32.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..128]);
    bytes[128..132].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(reg.file("c"), &bytes).unwrap();
    assert_eq!(addresses(&reg.list_json("c")).len(), 3);
}

/// The committed word (header offset 136) rolled back from version 2 to 1 with its check bits
/// kept, as a flipped bit would: every reader refuses the file instead of serving version 1
/// (where b:2 is still up), and a write does not build on it.
#[test]
fn a_rolled_back_committed_word_is_an_error_not_an_older_table() {
    let (reg, _) = setup();
    let mut bytes = reg.bytes("c");
    bytes[136] ^= 0b11; // version 2 -> 1, the check bits unchanged
    std::fs::write(reg.file("c"), &bytes).unwrap();
    let run = reg.run("c", &["list"]);
    assert_eq!(run.code(), 4, "{}", run.stdout());
    assert!(
        run.stderr()
            .contains("committed version word fails its check"),
        "{}",
        run.stderr()
    );
    assert!(read(&reg).is_err());
    assert_eq!(reg.run("c", &["up", "b:2"]).code(), 4);
    assert_eq!(reg.bytes("c"), bytes, "nothing built on the damage");
}

#[test]
fn load_repairs_a_damaged_or_truncated_header() {
    let (reg, good) = setup();
    let dump = reg.ok("c", &["dump"]);
    let list = reg.dir().join("c.list");
    std::fs::write(&list, dump).unwrap();
    let mut reader = Registry::open(reg.dir(), &Domain::new("c").unwrap()).unwrap();

    let mut bytes = reg.bytes("c");
    bytes[70] ^= 1; // inside the domain name: header CRC fails
    std::fs::write(reg.file("c"), &bytes).unwrap();
    assert_eq!(reg.run("c", &["list"]).code(), 4);
    assert_eq!(
        reg.run("c", &["add", "--no-flush", "z:1"]).code(),
        4,
        "no change on top of a damaged header"
    );
    reg.ok("c", &["load", "--no-flush", list.to_str().unwrap()]);
    let repaired = reg.list_json("c");
    assert_eq!(
        repaired["version"], 3,
        "the version continues from the damaged file"
    );
    assert_eq!(addresses(&repaired), ["a:1", "b:2", "c:3"]);
    let seen = reader.snapshot().unwrap();
    assert_eq!(
        (seen.version, seen.servers.len()),
        (3, good.servers.len()),
        "old readers follow"
    );

    std::fs::write(reg.file("c"), &reg.bytes("c")[..100]).unwrap();
    reg.ok("c", &["load", "--no-flush", list.to_str().unwrap()]);
    assert_eq!(addresses(&reg.list_json("c")), ["a:1", "b:2", "c:3"]);
}

#[test]
fn a_file_of_an_older_format_is_rewritten_on_the_first_write() {
    let reg = Reg::new();
    std::fs::create_dir_all(reg.dir()).unwrap();
    // Written by format 2 (a:1, b:2 down, c:3; version 2), made format 1 here: the word is the
    // version, without a check.
    let mut bytes = std::fs::read("tests/data/format2-c.mcshm").unwrap();
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes()); // format_version 1
    bytes[12..16].copy_from_slice(&1u32.to_le_bytes()); // min_reader_version 1
    let crc = crc32fast::hash(&bytes[..128]);
    bytes[128..132].copy_from_slice(&crc.to_le_bytes());
    bytes[136..144].copy_from_slice(&2u64.to_le_bytes()); // format 1: the word is the version
    std::fs::write(reg.file("c"), &bytes).unwrap();
    assert_eq!(
        addresses(&reg.list_json("c")).len(),
        3,
        "older formats are read"
    );
    reg.ok("c", &["add", "--no-flush", "d:4"]);
    let now = reg.bytes("c");
    assert_eq!(
        now[8..16],
        [4, 0, 0, 0, 3, 0, 0, 0],
        "rewritten as format 4, readable by format 3"
    );
    let word = u64::from_le_bytes(now[136..144].try_into().unwrap());
    assert_eq!(word & ((1 << 48) - 1), 3);
    assert_ne!(word >> 48, 0, "the committed word is sealed");
    let list = reg.list_json("c");
    assert_eq!(
        (list["version"].as_u64(), addresses(&list).len()),
        (Some(3), 4)
    );

    // A file of format 3 (the release before bucket maps: the same bytes but the header's
    // format) is read, and rewritten as format 4 by the next write; a vbucket domain then
    // keeps min_reader_version 3 (format-3 readers refuse only its vbucket versions).
    let mut bytes = reg.bytes("c");
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..128]);
    bytes[128..132].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(reg.file("c"), &bytes).unwrap();
    assert_eq!(addresses(&reg.list_json("c")).len(), 4, "format 3 is read");
    reg.ok("c", &["policy", "--distribution", "vbucket"]);
    assert_eq!(reg.bytes("c")[8..16], [4, 0, 0, 0, 3, 0, 0, 0]);
    let listed = reg.ok("c", &["--json", "buckets", "list"]);
    assert!(listed.contains("\"buckets\":1024"), "{listed}");
}
