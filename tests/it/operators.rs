//! What an operator meets first (issue 32): `dump` keeps the run time's reasons out of the
//! durable list, `add` does not empty a cache in use unless told to, one memcached under two
//! names is refused, "no such domain" names the directory looked in, a watcher of a missing
//! domain exits, `domains remove`, `load --dry-run`, and the systemd units' restart and mode
//! settings. Real mcadmin against real memcached on loopback.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::memcached::Memcached;
use crate::common::{Reg, Run};

/// Waits (with a deadline) for `child` to exit; its exit code.
fn exit_of(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The server lines of a dump (without its header and end line, which name the version).
fn server_lines(dump: &str) -> Vec<String> {
    let lines: Vec<&str> = dump.lines().collect();
    assert!(lines.last().unwrap().starts_with("# end: "), "{dump}");
    lines[1..lines.len() - 1]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

fn load_file(reg: &Reg, domain: &str, args: &[&str], text: &str) -> Run {
    let file = reg.dir().join(format!("{domain}.list"));
    std::fs::write(&file, text).unwrap();
    let mut all = args.to_vec();
    all.push(file.to_str().unwrap());
    reg.run(domain, &all)
}

#[test]
fn dump_writes_only_an_operators_reasons_and_loads_back() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok("d", &["add", &a.address(), &b.address()]);
    reg.ok("d", &["down", &b.address(), "--reason", "disk failure"]);
    reg.ok("d", &["down", "--retry", &a.address()]);
    reg.ok("d", &["up", &a.address()]);
    let list = reg.list_json("d");
    let rejoined = list["servers"][0]["reason"].as_str().unwrap().to_string();
    assert!(
        rejoined.starts_with("rejoined after flush_all (mcadmin up, pid "),
        "{list}"
    );

    let dump = reg.ok("d", &["dump"]);
    assert!(!dump.contains("rejoined"), "no run-time reason: {dump}");
    assert_eq!(
        server_lines(&dump)[1..],
        [
            format!("{} weight=1 retry-interval=15 state=up", a.address()),
            format!(
                "{} weight=1 retry-interval=15 state=down reason=\"disk failure\"",
                b.address()
            ),
        ]
    );
    let all = reg.ok("d", &["dump", "--reasons"]);
    assert!(all.contains(&format!("reason=\"{rejoined}\"")), "{all}");

    // Into a new domain (the boot-time replay) and back out: the same list.
    let run = load_file(&reg, "copy", &["load", "--initial"], &dump);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(
        server_lines(&reg.ok("copy", &["dump"])),
        server_lines(&dump)
    );
    // Into the domain it came from: nothing changes, the run time's reason stays.
    let run = load_file(&reg, "d", &["--json", "load"], &dump);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(
        run.stdout().contains("\"changed\":false"),
        "{}",
        run.stdout()
    );
    assert_eq!(
        reg.list_json("d")["servers"][0]["reason"],
        rejoined.as_str()
    );
}

#[test]
fn add_asks_before_it_empties_a_server_that_holds_items() {
    let (used, other, empty) = (Memcached::start(), Memcached::start(), Memcached::start());
    for key in ["k1", "k2", "k3"] {
        used.raw_set(key, "v");
    }
    other.raw_set("k", "v");
    let reg = Reg::new();
    let run = reg.run("d", &["add", &empty.address(), &used.address()]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    let stderr = run.stderr();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{} holds 3 items", used.address()))
            && stderr.contains("--flush")
            && stderr.contains("--no-flush")
            && stderr.contains("nothing changed"),
        "{stderr}"
    );
    assert!(!reg.file("d").exists(), "no domain made");
    assert_eq!(used.stat("curr_items"), 3, "nothing flushed");
    assert_eq!(empty.stat("cmd_flush"), 0, "nothing flushed");

    // Adopted as it is.
    reg.ok("d", &["add", "--no-flush", &used.address()]);
    assert_eq!(used.raw_get("k1").as_deref(), Some("v"));
    // An empty server is flushed and added, as always.
    reg.ok("d", &["add", &empty.address()]);
    assert_eq!(empty.stat("cmd_flush"), 1);
    // Emptied on request.
    reg.ok("d", &["add", "--flush", &other.address()]);
    assert_eq!(other.raw_get("k"), None);
    assert_eq!(reg.list_json("d")["servers"].as_array().unwrap().len(), 3);
    let both = reg.run("d", &["add", "--flush", "--no-flush", "127.0.0.1:1"]);
    assert_eq!(both.code(), 2, "{}", both.stderr());
}

#[test]
fn one_memcached_under_two_names_is_refused() {
    let mc = Memcached::start();
    let reg = Reg::new();
    let by_ip = format!("127.0.0.1:{}", mc.port);
    let by_name = format!("localhost:{}", mc.port);
    reg.ok("d", &["add", &by_ip]);
    let before = reg.bytes("d");
    let run = reg.run("d", &["add", &by_name]);
    assert_eq!(run.code(), 3, "{}", run.stderr());
    assert!(
        run.stderr().contains(&format!(
            "server {by_name} is {by_ip} of domain 'd' under another name"
        )),
        "{}",
        run.stderr()
    );
    assert_eq!(reg.bytes("d"), before, "table unchanged");

    // Two names in one list: refused whole, dry run or not.
    let list = format!("{by_ip}\n{by_name}\n");
    for args in [
        &["load", "--partial"][..],
        &["load", "--partial", "--dry-run"][..],
    ] {
        let run = load_file(&reg, "d", args, &list);
        assert_eq!(run.code(), 2, "{args:?}: {}", run.stderr());
        assert!(
            run.stderr().contains(&format!(
                "{by_ip} and {by_name} are one memcached under two names"
            )),
            "{}",
            run.stderr()
        );
    }
    assert_eq!(reg.bytes("d"), before, "table unchanged");
}

#[test]
fn no_such_domain_names_the_directory_looked_in() {
    let reg = Reg::new();
    let run = reg.run("nodomain", &["list"]);
    assert_eq!(run.code(), 3);
    assert!(
        run.stderr().starts_with(&format!(
            "mcadmin: no such domain 'nodomain' in {} (no file nodomain.mcshm)",
            reg.dir().display()
        )),
        "{}",
        run.stderr()
    );
}

#[test]
fn a_watcher_of_a_domain_that_does_not_exist_exits_3() {
    let reg = Reg::new();
    let mut watch = reg
        .cmd("mistyped", &["watch", "--interval", "0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(exit_of(&mut watch, Duration::from_secs(10)), Some(3));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("no such domain 'mistyped'"), "{stderr}");
}

#[test]
fn domains_remove_refuses_a_domain_in_use_unless_forced() {
    let mc = Memcached::start();
    let reg = Reg::new();
    reg.ok("gone", &["add", &mc.address()]);
    reg.ok("kept", &["add", "--no-flush", &mc.address()]);
    let names = |reg: &Reg| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(reg.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let mut watch = reg
        .cmd("gone", &["watch", "--interval", "0.5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Active once its lock is taken.
    let lock = reg.dir().join(".gone.watch");
    assert!(crate::common::wait_until(Duration::from_secs(10), || {
        lock.exists()
            && libmcshm::health::try_daemon_lock(
                reg.dir(),
                &libmcshm::Domain::new("gone").unwrap(),
                "watch",
            )
            .unwrap()
            .is_none()
    }));
    let before = names(&reg);
    let run = reg.run("kept", &["domains", "remove", "gone"]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(
        run.stderr().contains("domain 'gone' is in use by ")
            && run.stderr().contains("mcadmin watch")
            && run.stderr().contains("--force; nothing removed"),
        "{}",
        run.stderr()
    );
    assert_eq!(names(&reg), before);

    let out = reg.ok("kept", &["--json", "domains", "remove", "gone", "--force"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["processes"].as_u64() >= Some(1), "{out}");
    assert_eq!(names(&reg), ["kept.lock", "kept.mcshm"]);
    // The watcher of a removed domain stops (exit 3), not watches nothing for ever.
    assert_eq!(exit_of(&mut watch, Duration::from_secs(10)), Some(3));

    assert_eq!(reg.run("kept", &["domains", "remove", "gone"]).code(), 3);
    let out = reg.ok("x", &["domains", "remove", "kept"]);
    assert!(out.contains("domain kept: removed"), "{out}");
    assert!(names(&reg).is_empty(), "{:?}", names(&reg));
}

#[test]
fn load_dry_run_prints_the_changes_and_makes_none() {
    let (a, b, c) = (Memcached::start(), Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok("d", &["add", &a.address(), &b.address()]);
    let before = reg.bytes("d");
    let list = format!(
        "policy: failover=rehash\n{} weight=2\n{} state=down reason=\"moved\"\n",
        c.address(),
        a.address()
    );
    let run = load_file(&reg, "d", &["load", "--partial", "--dry-run"], &list);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let text = run.stdout();
    for line in [
        "domain d: load ",
        &format!(
            "+ {} weight=2 retry-interval=15 state=up (flushed first)",
            c.address()
        ),
        &format!("- {}", b.address()),
        &format!(
            "~ {}: state up -> down (operator), reason \"\" -> \"moved\"",
            a.address()
        ),
        "~ policy: failover=none ",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    assert_eq!(reg.bytes("d"), before, "nothing changed");
    assert_eq!(c.stat("cmd_flush"), 0, "nothing flushed");

    let run = load_file(
        &reg,
        "d",
        &["--json", "load", "--partial", "--dry-run"],
        &list,
    );
    let v: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(v["changes"], true);
    assert_eq!(v["added"][0]["server"], c.address().as_str());
    assert_eq!(v["added"][0]["flushed_first"], true);
    assert_eq!(v["removed"][0], b.address().as_str());
    assert_eq!(v["changed"][0]["server"], a.address().as_str());
    assert_eq!(v["reordered"], false, "a is the only server kept: {v}");
    // The same servers in another order: clients hash in order.
    let swapped = format!("{}\n{}\n", b.address(), a.address());
    let run = load_file(&reg, "d", &["load", "--partial", "--dry-run"], &swapped);
    assert!(
        run.stdout().contains("~ the servers' order changes"),
        "{}",
        run.stdout()
    );

    // The table's own dump changes nothing; a new domain would be made.
    let dump = reg.ok("d", &["dump"]);
    let run = load_file(&reg, "d", &["load", "--dry-run"], &dump);
    assert!(
        run.stdout().contains("would change nothing"),
        "{}",
        run.stdout()
    );
    let run = load_file(&reg, "new", &["load", "--dry-run"], &dump);
    assert!(
        run.stdout().contains("domain new does not exist: load ") && run.stdout().contains("+ "),
        "{}",
        run.stdout()
    );
    assert!(!reg.file("new").exists());
    assert_eq!(reg.bytes("d"), before);
}

/// The exit codes a daemon gives for its configuration, from its unit file.
fn unit(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contrib")
            .join(name),
    )
    .unwrap()
}

#[test]
fn units_stop_on_configuration_errors_and_make_tables_group_writable() {
    // mcadmin: 2 usage, 3 no such domain; mcproxy: 2 bad arguments, 5 cannot listen.
    for (name, codes) in [
        ("mcadmin-watch@.service", "RestartPreventExitStatus=2 3\n"),
        ("mcproxy@.service", "RestartPreventExitStatus=2 5\n"),
        ("mcadmin-sync.service", "RestartPreventExitStatus=2\n"),
    ] {
        let text = unit(name);
        assert!(text.contains(codes), "{name}: {codes}");
        assert!(!text.contains("keep trying for a minute"), "{name}");
    }
    // Whoever creates a table makes it group-writable.
    for name in ["mcadmin-sync.service", "mcshm-restore@.service"] {
        let text = unit(name);
        let exec = text.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert!(exec.contains(" --mode 664 "), "{name}: {exec}");
    }
    assert!(
        unit("mcadmin-watch@.service").contains("An --exec hook runs inside this unit's sandbox"),
        "the hooks' sandbox is documented"
    );
}

/// `load --dry-run` with --etcd compares a list with the fleet's table: the changes printed,
/// the fleet's revision unchanged, and a domain the fleet does not have is one the load would
/// create.
#[test]
fn load_dry_run_compares_a_list_with_the_fleets_table() {
    use crate::common::etcd::{EtcdCluster, fleet_cmd};
    let cluster = EtcdCluster::start(3);
    let fleet = |domain: &str, args: &[&str]| -> Run {
        Run(fleet_cmd(&cluster.endpoints(), domain, args)
            .output()
            .unwrap())
    };
    let json = |run: Run| -> serde_json::Value {
        assert_eq!(run.code(), 0, "{}", run.stderr());
        serde_json::from_str(&run.stdout()).unwrap()
    };
    let servers = ["10.9.0.1:11211", "10.9.0.2:11211"];
    crate::common::etcd::create_unfenced(&cluster.endpoints(), "dry");
    json(fleet(
        "dry",
        &[&["--json", "add", "--no-flush"][..], &servers].concat(),
    ));
    let revision = json(fleet("dry", &["--json", "list"]))["revision"].clone();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("dry.list");
    std::fs::write(&list, "10.9.0.1:11211 weight=4\n").unwrap();
    let list = list.to_str().unwrap();
    let run = fleet("dry", &["load", "--partial", "--dry-run", list]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let out = run.stdout();
    assert!(
        out.contains("~ 10.9.0.1:11211: weight 1 -> 4") && out.contains("- 10.9.0.2:11211"),
        "{out}"
    );
    let now = json(fleet("dry", &["--json", "list"]))["revision"].clone();
    assert_eq!(now, revision, "nothing changed");
    let new = json(fleet(
        "none",
        &["--json", "load", "--partial", "--dry-run", list],
    ));
    assert_eq!(new["exists"], false, "{new}");
    assert_eq!(new["added"][0]["server"], "10.9.0.1:11211", "{new}");
    assert_eq!(fleet("none", &["list"]).code(), 3, "no domain made");
}

/// After a change that moves keys, `list` names the marked servers, and the watcher sweeps
/// them unasked: the strays go, the keys the server still owns stay, the mark is cleared, and
/// a `settled` event says what was done.
#[test]
fn the_watcher_sweeps_marked_servers_and_list_shows_the_marks() {
    use libmcshm::{Client, Domain, Timeouts};
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok("sw", &["add", &a.address()]);
    let domain = Domain::new("sw").unwrap();
    let mut client = Client::for_domain(reg.dir(), &domain, Timeouts::default()).unwrap();
    let keys: Vec<String> = (0..300).map(|n| format!("sweep:{n}")).collect();
    for key in &keys {
        client.set(key.as_bytes(), b"v", 0, 0).unwrap();
    }
    reg.ok("sw", &["add", &b.address()]);
    let marked = |reg: &Reg| reg.list_json("sw")["servers"][0]["strays_since"] != 0;
    assert!(marked(&reg), "a lost keys to b: marked");
    let text = reg.ok("sw", &["list"]);
    assert!(
        text.contains(&format!("{} marked since", a.address())),
        "{text}"
    );
    let moved: Vec<&String> = keys
        .iter()
        .filter(|k| client.server_for(k.as_bytes()).unwrap().to_string() == b.address())
        .collect();
    assert!(!moved.is_empty() && moved.len() < keys.len());

    let log = reg.dir().join("watch.log");
    let mut watch = reg
        .cmd("sw", &["--json", "watch", "--interval", "0.1"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let settled = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("\"event\":\"settled\"")
    };
    let swept = crate::common::wait_until(Duration::from_secs(20), || settled() && !marked(&reg));
    let _ = watch.kill();
    let _ = watch.wait();
    let events = std::fs::read_to_string(&log).unwrap();
    assert!(swept, "the watcher never swept a: {events}");
    assert!(
        events.contains("\"event\":\"settled\"")
            && events.contains(&format!("deleted {} strays", moved.len()))
            && events.contains("mark cleared"),
        "{events}"
    );
    for key in &keys {
        let on_a = a.raw_get(key).is_some();
        assert_eq!(on_a, !moved.contains(&key), "{key} on a after the sweep");
    }
    assert!(!reg.ok("sw", &["list"]).contains("marked since"));
}
