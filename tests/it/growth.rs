//! A domain outgrowing its file: the writer replaces the file (never truncating a mapped one)
//! and readers holding the old mapping follow on their next read.

use std::time::Duration;

use crate::common::{Reg, addresses};
use libmcshm::{Domain, Registry};

#[test]
fn growing_past_capacity_is_seen_by_readers_of_the_old_file() {
    let reg = Reg::new();
    reg.ok("g", &["add", "--no-flush", "first:1"]);
    let domain = Domain::new("g").unwrap();
    let mut reader = Registry::open(reg.dir(), &domain).unwrap();
    let mut waiter = Registry::open(reg.dir(), &domain).unwrap();
    assert_eq!(reader.capacity(), 256);
    let small = reg.bytes("g").len();

    let hosts: Vec<String> = (0..300).map(|i| format!("h{i}:11211")).collect();
    let mut args = vec!["add", "--no-flush"];
    args.extend(hosts.iter().map(String::as_str));
    let waiting = std::thread::spawn(move || waiter.wait_for_change(1, Duration::from_secs(20)));
    reg.ok("g", &args);

    assert_eq!(
        waiting.join().unwrap(),
        Some(2),
        "a waiter on the old file is woken"
    );
    assert_eq!(reader.version(), 2);
    let snap = reader.snapshot().unwrap();
    assert_eq!(snap.servers.len(), 301);
    assert!(reader.capacity() >= 301, "the reader now maps the new file");
    assert!(reg.bytes("g").len() > small);
    let list = reg.list_json("g");
    assert_eq!(list["version"], 2, "growth is still one version");
    assert_eq!(addresses(&list)[0], "first:1");
    let mut leftovers: Vec<_> = std::fs::read_dir(reg.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    leftovers.sort();
    assert_eq!(leftovers, ["g.lock", "g.mcshm"], "no temporary files left");
}

#[test]
fn a_grower_that_died_before_its_rename_leaves_a_readable_file_the_next_writer_fixes() {
    let reg = Reg::new();
    reg.ok("m", &["add", "--no-flush", "a:1"]);
    // Set MOVED (bit 63 of the committed word) as a grower killed before its rename would.
    let mut bytes = reg.bytes("m");
    bytes[143] |= 0x80;
    std::fs::write(reg.file("m"), &bytes).unwrap();
    let mut reader = Registry::open(reg.dir(), &Domain::new("m").unwrap()).unwrap();
    assert_eq!(reader.version(), 1);
    assert_eq!(addresses(&reg.list_json("m")), ["a:1"]);
    reg.ok("m", &["add", "--no-flush", "b:1"]);
    assert_eq!(
        reg.bytes("m")[143] & 0x80,
        0,
        "the next writer cleared MOVED"
    );
    assert_eq!(reader.version(), 2);
}

#[test]
fn failure_counts_and_clients_records_survive_growth() {
    let reg = Reg::new();
    reg.ok("c", &["add", "--no-flush", "127.0.0.1:1"]);
    let domain = Domain::new("c").unwrap();
    let registry = Registry::open_writer(reg.dir(), &domain, false).unwrap();
    let mut reader = Registry::open(reg.dir(), &domain).unwrap();
    let server = reader.snapshot().unwrap().servers[0].clone();
    assert_eq!(
        registry
            .live()
            .record_failure(&server, libmcshm::clock::now_ms()),
        Some(1)
    );
    let slot = registry.register_client().expect("a clients record");
    registry.touch_client(slot, 1);
    let hosts: Vec<String> = (0..300).map(|i| format!("h{i}:11211")).collect();
    let mut args = vec!["add", "--no-flush"];
    args.extend(hosts.iter().map(String::as_str));
    reg.ok("c", &args); // grows into a new file
    let list = reg.list_json("c");
    assert_eq!(
        list["servers"][0]["failures"], 1,
        "the failure count was lost in growth"
    );
    let clients = reg.ok("c", &["--json", "clients"]);
    assert!(
        clients.contains(&format!("\"pid\":{}", std::process::id())),
        "{clients}"
    );
}

/// Writers SIGKILLed while creating or growing a table leave `.DOMAIN.PID.tmp` files; the next
/// writer removes those whose process is gone (and never one of a live process).
#[test]
fn temp_files_of_killed_writers_are_removed_by_the_next_writer() {
    use std::process::{Command, Stdio};
    let reg = Reg::new();
    reg.ok("k", &["add", "--no-flush", "seed:1"]);
    let temps = |reg: &Reg| -> Vec<String> {
        std::fs::read_dir(reg.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    };
    // 40 writers growing the table (each adds 300 servers: a file rewrite), SIGKILLed at
    // staggered moments; some die mid-write.
    for round in 0..40u64 {
        let hosts: Vec<String> = (0..300).map(|i| format!("r{round}h{i}:11211")).collect();
        let mut child = reg
            .cmd("k", &["add", "--no-flush"])
            .args(&hosts)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(500 * (round % 8)));
        let _ = child.kill();
        let _ = child.wait();
    }
    // And two for certain: a dead writer's file, and a live process's file.
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let mut live = Command::new("sleep").arg("30").spawn().unwrap();
    let dead_file = reg.dir().join(format!(".k.{dead_pid}.tmp"));
    let live_file = reg.dir().join(format!(".k.{}.tmp", live.id()));
    std::fs::write(&dead_file, vec![0u8; 256 * 1024]).unwrap();
    std::fs::write(&live_file, b"being written").unwrap();
    assert!(temps(&reg).len() >= 2);

    reg.ok("k", &["add", "--no-flush", "after:1"]);
    let left = temps(&reg);
    assert_eq!(
        left,
        [format!(".k.{}.tmp", live.id())],
        "only the live process's file is left"
    );
    let _ = live.kill();
    let _ = live.wait();
    assert!(addresses(&reg.list_json("k")).contains(&"after:1".to_string()));
}
