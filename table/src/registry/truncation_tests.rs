//! A table file truncated under the handles that map it (see `shm`): readers keep their last
//! good table and say the file was truncated, follow it once it is whole again, and writers
//! refuse to change it in place or, with `replace`, repair it with a new file. The faults are
//! real, served by the guard (the test process would die of them otherwise), each test in a
//! process of its own (see [`in_own_process`]).

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::address::Address;
use crate::domain::Domain;
use crate::error::Error;
use crate::registry::Registry;
use crate::shm::in_own_process;
use crate::table::{Server, State, Table};

const KEY_HASHES: [u32; 4] = [0, 0x4000_0000, 0x8000_0000, 0xc000_0000];

fn server(n: u32) -> Server {
    Server::new(Address::parse(&format!("10.0.0.{n}:11211")).unwrap())
}

/// A domain with three servers, its writer, and a reader that has read it (with its ring).
fn domain(dir: &Path) -> (Domain, Registry, Registry) {
    let domain = Domain::new("cut").unwrap();
    let mut writer = Registry::open_writer(dir, &domain, true).unwrap();
    writer
        .transact(|t| {
            t.servers.extend((1..=3).map(server));
            Ok(())
        })
        .unwrap();
    let mut reader = Registry::open(dir, &domain).unwrap();
    let (snapshot, ring) = reader.snapshot_and_ring().unwrap();
    assert_eq!(snapshot.servers.len(), 3);
    let ring = ring.expect("the file holds its ring");
    assert!(reader.ring_owner(&ring, 0).is_some());
    writer.snapshot().unwrap();
    (domain, writer, reader)
}

fn truncate(dir: &Path, domain: &Domain, len: u64) -> Vec<u8> {
    let path = domain.path_in(dir);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len)
        .unwrap();
    bytes
}

fn restore(dir: &Path, domain: &Domain, bytes: &[u8]) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(domain.path_in(dir))
        .unwrap();
    file.write_all_at(bytes, 0).unwrap();
}

fn says_truncated(err: &Error) -> bool {
    matches!(err, Error::Corrupt { why, .. } if why.contains("truncated it under this one"))
}

#[test]
fn a_reader_keeps_its_table_while_the_file_is_truncated_and_follows_it_once_restored() {
    in_own_process(
        "registry::truncation_tests::a_reader_keeps_its_table_while_the_file_is_truncated_and_follows_it_once_restored",
        || {
            let dir = tempfile::tempdir().unwrap();
            let (domain, mut writer, mut reader) = domain(dir.path());
            let len = std::fs::metadata(domain.path_in(dir.path())).unwrap().len();
            for cut in [0, 8, 64, 4096, len / 2 / 8 * 8, len - 8] {
                let before = reader.snapshot().unwrap();
                let (_, ring) = reader.snapshot_and_ring().unwrap();
                let ring = ring.expect("an intact ring");
                let owners = KEY_HASHES.map(|hash| reader.ring_owner(&ring, hash));
                let bytes = truncate(dir.path(), &domain, cut);
                // A copy of the whole slot touches the truncated pages (unless only the tail is gone).
                match reader.read_uncached() {
                    Ok(read) => assert_eq!(read.table(), before.table(), "to {cut}: another table"),
                    Err(err) => assert!(says_truncated(&err), "to {cut}: {err}"),
                }
                // A lookup in the shared ring: the same owner, or none (then the caller builds the
                // ring from its last good table).
                for (hash, owner) in KEY_HASHES.iter().zip(owners) {
                    let now = reader.ring_owner(&ring, *hash);
                    assert!(
                        now.is_none() || now == owner,
                        "to {cut}: {now:?}, not {owner:?}"
                    );
                }
                assert_eq!(reader.version(), before.version, "to {cut}");
                let kept = reader.snapshot().unwrap();
                assert_eq!(
                    kept.table(),
                    before.table(),
                    "to {cut}: the last good table"
                );
                // The header cut (or zeroed, in a page that is partly left): the version cannot be
                // read, and the reader says why. Further down, only if it read there.
                match reader.current_snapshot() {
                    Ok(now) if cut >= 4096 => assert_eq!(now.table(), before.table(), "to {cut}"),
                    Ok(_) => panic!("to {cut}: the header is gone, and no error"),
                    Err(err) => {
                        assert!(says_truncated(&err), "to {cut}: {err}");
                        assert!(
                            err.to_string().contains(&format!("to {cut} bytes")),
                            "{err}"
                        );
                    }
                }
                // Put back as it was, then changed: the reader follows.
                restore(dir.path(), &domain, &bytes);
                let commit = writer
                    .transact(|t| {
                        let s = &mut t.servers[0];
                        s.state = if s.state == State::Up {
                            State::Down
                        } else {
                            State::Up
                        };
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(commit.version, before.version + 1, "to {cut}");
                let now = reader.current_snapshot().unwrap();
                assert_eq!(now.version, commit.version, "to {cut}");
                assert_ne!(now.servers[0].state, before.servers[0].state, "to {cut}");
                let (_, ring) = reader.snapshot_and_ring().unwrap();
                let ring = ring.expect("an intact ring again");
                assert!(reader.ring_owner(&ring, 0).is_some(), "to {cut}");
            }
        },
    );
}

#[test]
fn a_reader_waiting_for_a_change_sees_the_one_made_after_a_restore() {
    in_own_process(
        "registry::truncation_tests::a_reader_waiting_for_a_change_sees_the_one_made_after_a_restore",
        || {
            let dir = tempfile::tempdir().unwrap();
            let (domain, mut writer, mut reader) = domain(dir.path());
            let since = reader.version();
            let bytes = truncate(dir.path(), &domain, 0);
            assert_eq!(
                reader.wait_for_change(since, std::time::Duration::from_millis(30)),
                None
            );
            restore(dir.path(), &domain, &bytes);
            let waiting = std::thread::spawn(move || {
                reader.wait_for_change(since, std::time::Duration::from_secs(20))
            });
            let commit = writer
                .transact(|t| {
                    t.servers.push(server(4));
                    Ok(())
                })
                .unwrap();
            assert_eq!(waiting.join().unwrap(), Some(commit.version));
        },
    );
}

#[test]
fn a_writer_refuses_a_truncated_file_and_replace_repairs_it_with_a_new_one() {
    in_own_process(
        "registry::truncation_tests::a_writer_refuses_a_truncated_file_and_replace_repairs_it_with_a_new_one",
        || {
            for cut in [0, 4096] {
                let dir = tempfile::tempdir().unwrap();
                let (domain, mut writer, mut reader) = domain(dir.path());
                let before = reader.snapshot().unwrap();
                truncate(dir.path(), &domain, cut);
                let err = writer
                    .transact(|t| {
                        t.servers.push(server(9));
                        Ok(())
                    })
                    .unwrap_err();
                assert!(says_truncated(&err), "to {cut}: {err}");
                let table = Table {
                    servers: (5..=6).map(server).collect(),
                    ..Table::default()
                };
                let commit = writer.replace(&table).unwrap();
                assert!(commit.version > before.version, "to {cut}: {commit:?}");
                // A new file is at the path; the reader follows it there.
                let now = reader.current_snapshot().unwrap();
                assert_eq!(now.version, commit.version, "to {cut}");
                let addresses: Vec<String> =
                    now.servers.iter().map(|s| s.address.to_string()).collect();
                assert_eq!(addresses, ["10.0.0.5:11211", "10.0.0.6:11211"], "to {cut}");
                let fresh = Registry::open(dir.path(), &domain)
                    .unwrap()
                    .snapshot()
                    .unwrap();
                assert_eq!(fresh.table(), now.table());
                // The writer is on the new file: it changes it in place again.
                writer
                    .transact(|t| {
                        t.servers.push(server(7));
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(reader.snapshot().unwrap().servers.len(), 3);
            }
        },
    );
}
