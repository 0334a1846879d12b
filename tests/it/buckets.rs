//! Virtual buckets through the tools: a vbucket domain made, its map listed and balanced, and
//! buckets moved under a read/write load through mclient and mcproxy with no miss of a key
//! that was present and no stale read.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::common::Reg;
use crate::common::memcached::Memcached;
use crate::common::proxy::Proxy;

/// Keys loaded before the move, and how many of them the writers keep rewriting.
const KEYS: usize = 4000;
const WRITTEN: usize = 200;

fn bulk_set(reg: &Reg, domain: &str, records: &[u8]) {
    let mut load = reg.mclient_cmd(domain, &["bulk-set"]);
    let mut child = load.stdin(std::process::Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(records).unwrap();
    assert!(child.wait().unwrap().success());
}

/// A bulk get (`cmd`: `mclient bulk-get`) of the keys in file `keys`: whether it succeeded,
/// and how many keys it found (each a key line and a value line).
fn bulk_get(cmd: &mut std::process::Command, keys: &std::path::Path) -> (bool, usize) {
    let out = cmd
        .stdin(std::fs::File::open(keys).unwrap())
        .output()
        .unwrap();
    (
        out.status.success(),
        out.stdout.split(|&b| b == b'\n').count() / 2,
    )
}

/// The version number a value carries: `v{round}-{i}`.
fn round_of(value: &str) -> u64 {
    value[1..value.find('-').unwrap()].parse().unwrap()
}

/// 64 of 1 024 buckets move from A to C while: a writer rewrites 200 keys through mcproxy
/// with rising rounds, recording each acknowledged round; readers read them through mcproxy
/// and through mclient, each read checked against the round acknowledged before it began
/// (never older, never a miss); mclient's bulk get reads every key over and over (never a
/// miss). Afterwards C owns the 64 buckets, their keys are on C and not on A, and every key
/// reads its last value.
#[test]
fn a_move_of_64_of_1024_buckets_under_load_misses_nothing_and_serves_nothing_stale() {
    let reg = Reg::new();
    let (a, b, c) = (Memcached::start(), Memcached::start(), Memcached::start());
    reg.ok("vb", &["add", &a.address(), &b.address()]);
    reg.ok(
        "vb",
        &["policy", "--distribution", "vbucket", "--hash", "crc"],
    );
    reg.ok("vb", &["add", &c.address()]);
    let mut records = Vec::new();
    let mut names = String::new();
    for i in 0..KEYS {
        let value = format!("v0-{i}");
        records.extend_from_slice(format!("key{i} 0 {}\n{value}\n", value.len()).as_bytes());
        names += &format!("key{i}\n");
    }
    bulk_set(&reg, "vb", &records);
    let keys_file = reg.dir().join("keys");
    std::fs::write(&keys_file, &names).unwrap();

    let proxy = Proxy::start(&reg, "vb", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..WRITTEN).map(|_| AtomicU64::new(0)).collect());
    let writer = {
        let (stop, acked, mut wire) = (stop.clone(), acked.clone(), proxy.connect());
        std::thread::spawn(move || {
            let mut round = 0;
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) || round < 3 {
                round += 1;
                for (i, ack) in acked.iter().enumerate() {
                    let value = format!("v{round}-{i}");
                    let reply = wire.ask(&format!("set key{i} 0 0 {}\r\n{value}\r\n", value.len()));
                    match reply.as_str() {
                        "STORED\r\n" => ack.store(round, Ordering::SeqCst),
                        other => failures.push(format!("set key{i}: {other:?}")),
                    }
                }
            }
            (round, failures)
        })
    };
    // A read of written key i must show the round acknowledged before it began, or a later one.
    let check = |i: usize, floor: u64, got: Option<&str>, via: &str, failures: &mut Vec<String>| {
        match got {
            None => failures.push(format!("{via}: key{i} missed (round {floor} acknowledged)")),
            Some(value) if round_of(value) < floor => failures.push(format!(
                "{via}: key{i} read {value}, round {floor} was acknowledged"
            )),
            Some(_) => {}
        }
    };
    let proxied_reader = {
        let (stop, acked, mut wire) = (stop.clone(), acked.clone(), proxy.connect());
        std::thread::spawn(move || {
            let (mut reads, mut failures) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) || reads < WRITTEN as u64 {
                let i = (reads as usize * 7) % WRITTEN;
                let floor = acked[i].load(Ordering::SeqCst);
                let reply = wire.ask(&format!("get key{i}\r\n"));
                let value = reply.lines().nth(1).filter(|_| reply.starts_with("VALUE "));
                check(i, floor, value, "mcproxy", &mut failures);
                reads += 1;
            }
            (reads, failures)
        })
    };
    let mclient_reader = {
        let (stop, acked) = (stop.clone(), acked.clone());
        let dir = reg.dir().to_path_buf();
        std::thread::spawn(move || {
            let (mut reads, mut failures) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) || reads < 20 {
                let i = (reads as usize * 13) % WRITTEN;
                let floor = acked[i].load(Ordering::SeqCst);
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_mclient"))
                    .arg("--dir")
                    .arg(&dir)
                    .args(["--domain", "vb", "get", &format!("key{i}")])
                    .output()
                    .unwrap();
                let value = String::from_utf8_lossy(&out.stdout).into_owned();
                let value = out.status.success().then_some(value.as_str());
                check(i, floor, value, "mclient", &mut failures);
                reads += 1;
            }
            (reads, failures)
        })
    };
    let passed = Arc::new(AtomicU64::new(0));
    let bulk_reader = {
        let (stop, passed) = (stop.clone(), passed.clone());
        let mut pass = reg.mclient_cmd("vb", &["bulk-get"]);
        let keys_file = keys_file.clone();
        std::thread::spawn(move || {
            let (mut passes, mut failures) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) || passes == 0 {
                let (ok, hits) = bulk_get(&mut pass, &keys_file);
                passes += 1;
                passed.store(passes.into(), Ordering::SeqCst);
                if !ok || hits != KEYS {
                    failures.push(format!("bulk-get pass {passes}: {hits} of {KEYS} keys"));
                }
            }
            (passes, failures)
        })
    };
    // The move begins once a bulk pass has ended (so that another runs during it: the passes
    // and the write rounds go on back to back until the move ends) and the writer has
    // acknowledged a round.
    let loaded = crate::common::wait_until(Duration::from_secs(60), || {
        passed.load(Ordering::SeqCst) >= 1 && acked[WRITTEN - 1].load(Ordering::SeqCst) >= 1
    });
    if !loaded {
        stop.store(true, Ordering::Relaxed);
        panic!("no bulk pass or write round ended in 60 s");
    }
    let moved = reg.run(
        "vb",
        &[
            "--json",
            "buckets",
            "move",
            "--count",
            "64",
            &a.address(),
            &c.address(),
            "--rate",
            "400",
        ],
    );
    stop.store(true, Ordering::Relaxed);
    let (rounds, mut failures) = writer.join().unwrap();
    let (proxied_reads, f) = proxied_reader.join().unwrap();
    failures.extend(f);
    let (mclient_reads, f) = mclient_reader.join().unwrap();
    failures.extend(f);
    let (passes, f) = bulk_reader.join().unwrap();
    failures.extend(f);
    assert_eq!(moved.code(), 0, "{}", moved.stderr());
    let summary: serde_json::Value = serde_json::from_str(&moved.stdout()).unwrap();
    println!(
        "{summary}; meanwhile {rounds} write rounds of {WRITTEN} keys, {proxied_reads} reads through mcproxy, {mclient_reads} through mclient, {passes} bulk passes of {KEYS} keys"
    );
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(summary["buckets_moved"], 64);
    // The move listed the moving buckets' keys on A (the readers' fills may have moved them
    // all before it: then they are `gone` from A when it comes to them).
    let listed: u64 = ["moved", "kept", "gone"]
        .map(|f| summary[f].as_u64().unwrap())
        .iter()
        .sum();
    assert!(listed > KEYS as u64 / 32, "{summary}");

    let listing: serde_json::Value =
        serde_json::from_str(&reg.ok("vb", &["--json", "buckets", "list"])).unwrap();
    let owned: HashMap<String, u64> = listing["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["server"].as_str().unwrap().to_string(),
                s["buckets"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(owned[&c.address()], 64);
    assert_eq!(owned[&a.address()], 512 - 64);
    assert_eq!(listing["moving"], 0);
    // `list` says the same: the map's shape, and each server's buckets in --json.
    let list = reg.list_json("vb");
    assert_eq!(list["bucket_map"]["buckets"], 1024);
    assert_eq!(list["servers"][2]["buckets"], 64);
    let text = reg.ok("vb", &["list"]);
    assert!(
        text.contains("buckets: 1024 (0 replica columns), 0 moving"),
        "{text}"
    );
    // Each key reads its last value, and the keys of C's buckets are on C only.
    let sampled: Vec<String> = (0..KEYS).step_by(37).map(|i| format!("key{i}")).collect();
    let mut args = vec!["--json", "which"];
    args.extend(sampled.iter().map(String::as_str));
    let which = reg.mclient("vb", &args);
    let rows: serde_json::Value = serde_json::from_slice(&which.stdout).unwrap();
    let mut on_c = 0;
    for row in rows.as_array().unwrap() {
        let key = row["key"].as_str().unwrap();
        if row["server"] == c.address().as_str() {
            on_c += 1;
            assert!(c.raw_get(key).is_some(), "{key} moved to C");
            assert!(a.raw_get(key).is_none(), "{key} left on A");
        }
    }
    assert!(on_c > 0, "some sampled key is in a moved bucket");
    let (_, after) = bulk_get(&mut reg.mclient_cmd("vb", &["bulk-get"]), &keys_file);
    assert_eq!(after, KEYS, "no key lost");
}

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/libvbucket");

/// A libvbucket config's map fields, wherever they are (at the top or in vBucketServerMap).
fn map_fields(config: &serde_json::Value) -> serde_json::Value {
    let inner = config.get("vBucketServerMap").unwrap_or(config);
    serde_json::json!({
        "serverList": inner["serverList"],
        "numReplicas": inner["numReplicas"],
        "vBucketMap": inner["vBucketMap"],
        "vBucketMapForward": inner.get("vBucketMapForward").cloned().unwrap_or_default(),
    })
}

/// Every sample map of libvbucket's own tests that mcshm takes is loaded into a domain of its
/// servers and dumped back with the same servers, replicas, rows and forward rows; the two it
/// refuses (5 buckets, a ketama config) are refused with exit 2 and the table byte for byte as
/// it was. The one whose forward rows name a server twice (`[3, 0, 0]`) loads with a note on
/// stderr and dumps with the repeats as -1. The servers are added down: nothing here is ever
/// connected to.
#[test]
fn libvbucket_sample_maps_round_trip_and_the_malformed_ones_are_refused() {
    let refused = ["testapp-config-wrong-num-vbuckets", "ketama-eight-nodes"];
    let repeats = "testapp-config-in-envelope-fft";
    let mut loaded = 0;
    for entry in std::fs::read_dir(SAMPLES).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let config: serde_json::Value = serde_json::from_str(&text).unwrap();
        let reg = Reg::new();
        let inner = config.get("vBucketServerMap").unwrap_or(&config);
        let servers: Vec<String> = inner["serverList"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_else(|| vec!["127.0.0.1:1".to_string()]);
        let mut add = vec!["add", "--down"];
        add.extend(servers.iter().map(String::as_str));
        reg.ok("lv", &add);
        let before = reg.bytes("lv");
        let run = reg.run("lv", &["buckets", "load", path.to_str().unwrap()]);
        if refused.contains(&name.as_str()) {
            assert_eq!(run.code(), 2, "{name}: {}", run.stderr());
            assert!(
                run.stderr().contains("nothing changed"),
                "{name}: {}",
                run.stderr()
            );
            assert_eq!(reg.bytes("lv"), before, "{name}: the table is as it was");
            continue;
        }
        assert_eq!(run.code(), 0, "{name}: {}", run.stderr());
        let dumped: serde_json::Value =
            serde_json::from_str(&reg.ok("lv", &["buckets", "dump"])).unwrap();
        let mut expected = map_fields(&config);
        if name == repeats {
            assert!(
                run.stderr().starts_with("mcadmin: note: in ")
                    && run.stderr().contains(
                        "vBucketMapForward: 2 cells naming a server its row already names \
                         (first in bucket 0, [3,0,0]) read as -1"
                    ),
                "{}",
                run.stderr()
            );
            expected["vBucketMapForward"] =
                serde_json::json!([[3, 0, -1], [2, 1, 3], [1, 2, -1], [0, 3, 1]]);
        } else {
            assert_eq!(run.stderr(), "", "{name}");
        }
        assert_eq!(map_fields(&dumped), expected, "{name}");
        assert_eq!(dumped["hashAlgorithm"], "CRC", "{name}");
        loaded += 1;
    }
    assert!(loaded >= 7, "{loaded} samples loaded");
}

/// Malformed maps and maps that do not fit the domain are refused with exit 2 and a message
/// naming the problem; the table stays byte for byte as it was.
#[test]
fn a_malformed_map_is_refused_naming_the_problem_and_the_table_kept() {
    let reg = Reg::new();
    reg.ok("m", &["add", "--down", "127.0.0.1:1", "127.0.0.1:2"]);
    reg.ok(
        "m",
        &["policy", "--distribution", "vbucket", "--hash", "crc"],
    );
    let before = reg.bytes("m");
    let map = |rows: &str, replicas: u32, servers: &str| {
        format!(
            r#"{{"hashAlgorithm":"CRC","numReplicas":{replicas},"serverList":[{servers}],"vBucketMap":{rows}}}"#
        )
    };
    let two = r#""127.0.0.1:1","127.0.0.1:2""#;
    let cases = [
        (map("[[0],[1],[0]]", 0, two), "power of two"),
        (map("[[0,1],[1]]", 1, two), "bucket 1"),
        (map("[[0],[2]]", 0, two), "out of range"),
        (map("[[0,1,-1,-1,-1,-1]]", 5, two), "numReplicas 5"),
        (map("[[0],[1]]", 0, r#""127.0.0.1:1","127.0.0.1:9""#), "add it first"),
        (map("[[0],[1]]", 0, r#""127.0.0.1:1","not an address""#), "not an address"),
        ("{\"vBucketMap\": [".to_string(), "not JSON"),
        (
            r#"{"hashAlgorithm":"MD5","numReplicas":0,"serverList":["127.0.0.1:1"],"vBucketMap":[[0]]}"#
                .to_string(),
            "CRC",
        ),
    ];
    for (text, expect) in cases {
        let file = reg.dir().join("map.json");
        std::fs::write(&file, &text).unwrap();
        let run = reg.run("m", &["buckets", "load", file.to_str().unwrap()]);
        assert_eq!(run.code(), 2, "{text}: {}", run.stderr());
        assert!(run.stderr().contains(expect), "{text}: {}", run.stderr());
        assert_eq!(run.stderr().trim().lines().count(), 1, "{}", run.stderr());
        assert_eq!(reg.bytes("m"), before, "{text}: the table is as it was");
    }
    // Removing or draining a server that owns buckets is refused the same way.
    let file = reg.dir().join("map.json");
    std::fs::write(&file, map("[[0],[1]]", 0, two)).unwrap();
    reg.ok("m", &["buckets", "load", file.to_str().unwrap()]);
    let before = reg.bytes("m");
    for verb in ["delete", "drain"] {
        let run = reg.run("m", &[verb, "127.0.0.1:1"]);
        assert_eq!(run.code(), 2, "{verb}: {}", run.stderr());
        assert!(
            run.stderr().contains("buckets move"),
            "{verb}: {}",
            run.stderr()
        );
        assert_eq!(reg.bytes("m"), before, "{verb}");
    }
}

/// A vbucket domain in the fleet: made with `--etcd`, mirrored by two hosts' agents, and 16
/// buckets moved with `--etcd` from host 1 (the map staged and completed in etcd, the keys
/// moved by host 1's clients once its agent mirrors the staged map). Both hosts end on the
/// completed map, and host 2's clients read every key written before the move. A move begun
/// on host 2 while its agent hangs stops after `--mirror-timeout` (exit 1) with its buckets
/// staged, and a finish from host 2 once the agent is back completes them.
#[test]
fn a_fleet_vbucket_domain_moves_buckets_for_every_host() {
    use crate::common::etcd::{EtcdCluster, Host, fleet_cmd};
    use crate::common::wait_until;
    let cluster = EtcdCluster::start(1);
    let endpoints = cluster.endpoints();
    let hosts = [
        Host::start("web1", &endpoints),
        Host::start("web2", &endpoints),
    ];
    let (a, b, c) = (Memcached::start(), Memcached::start(), Memcached::start());
    let fleet = |dir: &std::path::Path, args: &[&str]| {
        let out = fleet_cmd(&endpoints, "fv", args)
            .arg("--dir")
            .arg(dir)
            .output()
            .unwrap();
        let run = crate::common::Run(out);
        assert_eq!(run.code(), 0, "{args:?}: {}", run.stderr());
        run.stdout()
    };
    let dir1 = hosts[0].reg.dir();
    fleet(dir1, &["add", "--no-flush", &a.address(), &b.address()]);
    fleet(
        dir1,
        &["policy", "--distribution", "vbucket", "--hash", "crc"],
    );
    fleet(dir1, &["add", "--flush", &c.address()]);
    let mirrored = |host: &Host, servers: usize, on_c: u64| {
        wait_until(Duration::from_secs(20), || {
            let out = host.reg.run("fv", &["--json", "buckets", "list"]);
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&out.stdout()) else {
                return false;
            };
            let list = v["servers"].as_array().cloned().unwrap_or_default();
            list.len() == servers && list[servers - 1]["buckets"] == on_c && v["moving"] == 0
        })
    };
    for host in &hosts {
        assert!(
            mirrored(host, 3, 0),
            "{} mirrors the domain: {}",
            host.name,
            host.log_text()
        );
    }
    let keys: Vec<String> = (0..300).map(|i| format!("fk{i}")).collect();
    for key in &keys {
        assert!(
            hosts[0]
                .reg
                .mclient("fv", &["set", key, key])
                .status
                .success()
        );
    }
    let out = fleet(
        dir1,
        &[
            "--json",
            "buckets",
            "move",
            "--count",
            "16",
            &a.address(),
            &c.address(),
            "--rate",
            "0",
        ],
    );
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["buckets_moved"], 16, "{summary}");
    for host in &hosts {
        assert!(
            mirrored(host, 3, 16),
            "{} ends on the completed map",
            host.name
        );
    }
    for key in &keys {
        let out = hosts[1].reg.mclient("fv", &["get", key]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            *key,
            "{key} through web2"
        );
    }

    // A move begun on web2 while its agent hangs: staged in etcd, but web2's table never
    // gets the staged map; after --mirror-timeout it stops (exit 1, as for a Ctrl-C) saying
    // so, and the moves stay staged for a finish once the agent is back.
    crate::common::stop(hosts[1].agent_pid());
    let out = fleet_cmd(&endpoints, "fv", &["buckets", "move", "--count", "8"])
        .args([
            &a.address(),
            &c.address(),
            "--rate",
            "0",
            "--mirror-timeout",
            "1",
        ])
        .arg("--dir")
        .arg(hosts[1].reg.dir())
        .output()
        .unwrap();
    let run = crate::common::Run(out);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(
        run.stderr()
            .contains("does not hold the staged map after 1 s (--mirror-timeout)")
            && run.stderr().contains("mcadmin buckets finish"),
        "{}",
        run.stderr()
    );
    let staged: serde_json::Value =
        serde_json::from_str(&fleet(dir1, &["--json", "buckets", "list"])).unwrap();
    assert_eq!(staged["moving"], 8, "the moves stay staged: {staged}");
    hosts[1].signal_agent(libc::SIGCONT);
    fleet(
        hosts[1].reg.dir(),
        &["buckets", "finish", "--rate", "0", "--mirror-timeout", "20"],
    );
    for host in &hosts {
        assert!(
            mirrored(host, 3, 24),
            "{} ends on the finished map",
            host.name
        );
    }
    for key in &keys {
        let out = hosts[1].reg.mclient("fv", &["get", key]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), *key, "{key}");
    }
}

/// `mcadmin dump` writes a vbucket domain's map after its servers (`buckets:` lines) and
/// `mcadmin load` takes it back: a second domain loaded from the dump has the same map. A
/// dump whose map names a server it does not list is refused with the table unchanged.
#[test]
fn a_dump_of_a_vbucket_domain_loads_back_with_its_map() {
    let reg = Reg::new();
    reg.ok(
        "one",
        &[
            "add",
            "--down",
            "server1:11211",
            "server2:11210",
            "server3:11211",
        ],
    );
    let sample = format!("{SAMPLES}/testapp-config");
    reg.ok("one", &["buckets", "load", &sample]);
    let text = reg.ok("one", &["dump"]);
    assert!(text.contains("buckets: count=4 replicas=2\n"), "{text}");
    assert!(
        text.contains("buckets-rows: 0 0,1,2 1,2,0 2,1,-1 1,2,0\n"),
        "{text}"
    );
    let file = reg.dir().join("one.list");
    std::fs::write(&file, &text).unwrap();
    reg.ok("two", &["load", file.to_str().unwrap()]);
    assert_eq!(
        reg.ok("two", &["buckets", "dump"]),
        reg.ok("one", &["buckets", "dump"])
    );
    // A map naming a fourth server of a three-server list.
    let bad = text
        .replace("2,1,-1", "3,1,-1")
        .replace("# end:", "# was end:");
    std::fs::write(&file, &bad).unwrap();
    let before = reg.bytes("two");
    let run = reg.run("two", &["load", "--partial", file.to_str().unwrap()]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(run.stderr().contains("out of range"), "{}", run.stderr());
    assert_eq!(reg.bytes("two"), before);
    // Fewer rows than the buckets: line says (a dump cut short or edited).
    let short = text
        .replace("buckets: count=4", "buckets: count=8")
        .replace("# end:", "# was end:");
    std::fs::write(&file, &short).unwrap();
    let run = reg.run("two", &["load", "--partial", file.to_str().unwrap()]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(
        run.stderr()
            .contains("12 cells do not make the 8 rows of 3"),
        "{}",
        run.stderr()
    );
    assert_eq!(reg.bytes("two"), before);
    // A cell is -1 or a server index written plainly: nothing else reads as one.
    for cell in ["-0", "-01", "65535", "x", ""] {
        let bad = text
            .replace("2,1,-1", &format!("2,1,{cell}"))
            .replace("# end:", "# was end:");
        std::fs::write(&file, &bad).unwrap();
        let run = reg.run("two", &["load", "--partial", file.to_str().unwrap()]);
        assert_eq!(run.code(), 2, "{cell:?}: {}", run.stderr());
        assert!(
            run.stderr().contains("expected server indexes or -1"),
            "{cell:?}: {}",
            run.stderr()
        );
        assert_eq!(reg.bytes("two"), before, "{cell:?}");
    }
}

/// With moves staged (here a loaded map's forward rows), `balance` is refused until they are
/// finished: re-planning a staged bucket could send it where its moved keys are not. The
/// table stays as it was.
#[test]
fn balance_waits_for_the_moves_under_way() {
    let reg = Reg::new();
    reg.ok("s", &["add", "--down", "127.0.0.1:1", "127.0.0.1:2"]);
    let file = reg.dir().join("staged.json");
    std::fs::write(
        &file,
        r#"{"hashAlgorithm":"CRC","numReplicas":0,"serverList":["127.0.0.1:1","127.0.0.1:2"],
            "vBucketMap":[[0],[1]],"vBucketMapForward":[[1],[1]]}"#,
    )
    .unwrap();
    reg.ok("s", &["buckets", "load", file.to_str().unwrap()]);
    let listed = reg.ok("s", &["--json", "buckets", "list"]);
    assert!(listed.contains("\"moving\":1"), "{listed}");
    let before = reg.bytes("s");
    let run = reg.run("s", &["buckets", "balance"]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(run.stderr().contains("buckets finish"), "{}", run.stderr());
    assert_eq!(reg.bytes("s"), before);
}
