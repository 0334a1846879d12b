//! mcadmin as a user runs it: every command, its output, exit codes, and bad input refused with
//! the table left byte-for-byte as it was.

use crate::common;
use crate::common::{Reg, addresses};
use std::io::Write;
use std::process::Stdio;

#[test]
fn add_list_status_and_order() {
    let reg = Reg::new();
    reg.ok(
        "myapp",
        &[
            "add",
            "--no-flush",
            "cache1:11211",
            "cache2",
            "--weight",
            "3",
        ],
    );
    reg.ok(
        "myapp",
        &[
            "add",
            "--no-flush",
            "10.0.0.7:11212",
            "[::1]:11213",
            "/run/mc.sock",
            "--down",
            "--reason",
            "maintenance",
            "--retry-interval",
            "-1",
        ],
    );
    let list = reg.list_json("myapp");
    assert_eq!(list["version"], 2, "two calls, two versions: {list}");
    assert_eq!(
        addresses(&list),
        [
            "cache1:11211",
            "cache2:11211",
            "10.0.0.7:11212",
            "[::1]:11213",
            "/run/mc.sock"
        ]
    );
    let cache2 = &list["servers"][1];
    assert_eq!(
        (cache2["weight"].as_u64(), cache2["state"].as_str()),
        (Some(3), Some("up"))
    );
    assert_eq!(cache2["retry_interval"], 15);
    let sock = &list["servers"][4];
    assert_eq!(sock["state"], "down");
    assert_eq!(sock["reason"], "maintenance");
    assert_eq!(sock["retry_interval"], -1);
    assert_eq!(sock["changed_by_pid"].as_u64().map(|p| p > 0), Some(true));

    let text = reg.ok("myapp", &["list"]);
    assert!(text.starts_with("domain myapp  version 2"), "{text}");
    assert!(
        text.contains("[::1]:11213") && text.contains("maintenance"),
        "{text}"
    );

    assert_eq!(reg.run("myapp", &["status", "cache1"]).code(), 0);
    let down = reg.run("myapp", &["status", "/run/mc.sock"]);
    assert_eq!(down.code(), 1, "down is exit 1");
    assert!(down.stdout().contains("down") && down.stdout().contains("maintenance"));
    assert_eq!(reg.run("myapp", &["status", "cache9"]).code(), 3);
}

#[test]
fn up_down_set_delete_each_bump_the_version_once() {
    let reg = Reg::new();
    reg.ok("d", &["add", "--no-flush", "a", "b", "c"]);
    assert_eq!(
        reg.list_json("d")["version"],
        1,
        "three servers in one call: one version"
    );
    reg.ok("d", &["down", "a", "b", "--reason", "disk"]);
    let list = reg.list_json("d");
    assert_eq!(list["version"], 2);
    assert_eq!(list["servers"][1]["state"], "down");
    assert_eq!(list["servers"][1]["reason"], "disk");
    reg.ok("d", &["up", "a", "--no-flush"]);
    reg.ok(
        "d",
        &["set", "c", "--weight", "9", "--retry-interval", "-1"],
    );
    let list = reg.list_json("d");
    assert_eq!(list["version"], 4);
    assert_eq!(list["servers"][0]["state"], "up");
    assert_eq!(list["servers"][2]["weight"], 9);
    assert_eq!(list["servers"][2]["retry_interval"], -1);
    reg.ok("d", &["delete", "b", "a"]);
    let list = reg.list_json("d");
    assert_eq!(
        (list["version"].as_u64(), addresses(&list)),
        (Some(5), vec!["c:11211".to_string()])
    );
    // Flags for idempotent scripts: nothing to do, no new version.
    let out = reg.ok("d", &["--json", "add", "--no-flush", "c", "--if-missing"]);
    assert!(out.contains("\"changed\":false"), "{out}");
    reg.ok("d", &["delete", "zz", "--if-present"]);
    assert_eq!(reg.list_json("d")["version"], 5);
}

#[test]
fn bad_input_is_refused_and_leaves_the_file_untouched() {
    let reg = Reg::new();
    reg.ok("d", &["add", "--no-flush", "a:1", "b:2", "--down"]);
    let before = reg.bytes("d");
    let list_file = reg.dir().join("bad.list");
    std::fs::write(&list_file, "x:1\ny:0 weight=2\n").unwrap();
    let list_arg = list_file.to_str().unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["add", "--no-flush", "host:0"],
            2,
            "port must be a number from 1 to 65535",
        ),
        (&["add", "--no-flush", "host:65536"], 2, "port must be"),
        (
            &["add", "--no-flush", "bad host"],
            2,
            "not allowed in a hostname",
        ),
        (&["add", "--no-flush", "::1"], 2, "brackets"),
        (&["add", "--no-flush", ""], 2, "empty"),
        (&["add", "--no-flush", "ok:1", "bad:0"], 2, "'bad:0'"),
        (&["add", "--no-flush", "c:3", "--weight", "0"], 2, "weight"),
        (
            &["add", "--no-flush", "c:3", "--weight", "65536"],
            2,
            "weight",
        ),
        (
            &["add", "--no-flush", "c:3", "--retry-interval", "-2"],
            2,
            "retry interval",
        ),
        (
            &["add", "--no-flush", "c:3", "--reason", "two\nlines"],
            2,
            "control characters",
        ),
        (&["add", "--no-flush", "a:1"], 3, "already in domain"),
        (&["add", "--no-flush", "c:3", "a:1"], 3, "already in domain"),
        (&["delete", "zz:1"], 3, "not in domain"),
        (&["up", "a:1", "zz:1"], 3, "not in domain"),
        (&["down", "zz:1"], 3, "not in domain"),
        (&["set", "zz:1", "--weight", "2"], 3, "not in domain"),
        (&["set", "a:1"], 2, "nothing to change"),
        (&["load", "--no-flush", "--partial", list_arg], 2, "line 2"),
        (&["load", "--no-flush", list_arg], 2, "no end line"),
        (
            &["load", "--no-flush", "/nonexistent/list"],
            2,
            "cannot read",
        ),
        (&["frobnicate"], 2, "unrecognized subcommand"),
    ];
    for (args, code, needle) in cases {
        let run = reg.run("d", args);
        let err = run.stderr();
        assert_eq!(run.code(), *code, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        if *code != 2 || !needle.contains("unrecognized") {
            assert_eq!(
                err.trim_end().lines().count(),
                1,
                "one-line error for {args:?}: {err}"
            );
        }
        assert_eq!(reg.bytes("d"), before, "{args:?} changed the file");
    }
    for domain in ["../x", "a/b", "", ".hidden", &"x".repeat(65), "a b"] {
        let run = reg.run(domain, &["add", "--no-flush", "c:3"]);
        assert_eq!(run.code(), 2, "{domain:?}");
        assert!(
            run.stderr().contains("invalid domain name"),
            "{}",
            run.stderr()
        );
    }
    let mut names: Vec<_> = std::fs::read_dir(reg.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    // The table, its writers' lock file, and the test's input: no stray files.
    assert_eq!(names, ["bad.list", "d.lock", "d.mcshm"]);
}

#[test]
fn dump_load_round_trips_in_one_version() {
    let reg = Reg::new();
    reg.ok("src", &["add", "--no-flush", "a:1", "b:2", "--weight", "7"]);
    reg.ok(
        "src",
        &[
            "add",
            "--no-flush",
            "[::1]:3",
            "--down",
            "--reason",
            "said \"no\" \\ twice",
            "--retry-interval",
            "-1",
        ],
    );
    let dump = reg.ok("src", &["dump"]);
    let mut child = reg
        .cmd("dst", &["load", "--no-flush", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dump.as_bytes())
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    // The same list; the header (and so the end line's checksum) names the version.
    let servers = |dump: &str| {
        let lines: Vec<String> = dump.lines().map(String::from).collect();
        assert!(
            lines
                .last()
                .unwrap()
                .starts_with("# end: 3 servers, crc32 0x")
        );
        lines[1..lines.len() - 1].to_vec()
    };
    assert_eq!(servers(&reg.ok("dst", &["dump"])), servers(&dump));
    assert_eq!(reg.list_json("dst")["version"], 1);

    // Replacing a whole list is one version, and loading the same list again changes nothing.
    let file = reg.dir().join("new.list");
    std::fs::write(
        &file,
        "# new list\n\nz:9 weight=2\na:1 weight=7 state=down reason=\"gone\"\n",
    )
    .unwrap();
    reg.ok(
        "dst",
        &["load", "--no-flush", "--partial", file.to_str().unwrap()],
    );
    let list = reg.list_json("dst");
    assert_eq!(list["version"], 2);
    assert_eq!(addresses(&list), ["z:9", "a:1"]);
    reg.ok(
        "dst",
        &["load", "--no-flush", "--partial", file.to_str().unwrap()],
    );
    assert_eq!(reg.list_json("dst")["version"], 2);
}

#[test]
fn domains_lists_every_domain() {
    let reg = Reg::new();
    assert_eq!(reg.ok("x", &["--json", "domains"]).trim(), "[]");
    reg.ok("alpha", &["add", "--no-flush", "a", "b"]);
    reg.ok("beta", &["add", "--no-flush", "c", "--down"]);
    reg.ok("beta", &["up", "c", "--no-flush"]);
    let rows: serde_json::Value =
        serde_json::from_str(&reg.ok("x", &["--json", "domains"])).unwrap();
    assert_eq!(rows[0]["domain"], "alpha");
    assert_eq!(
        (rows[0]["servers"].as_u64(), rows[0]["up"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        (rows[1]["domain"].as_str(), rows[1]["version"].as_u64()),
        (Some("beta"), Some(2))
    );
    let text = reg.ok("x", &["domains"]);
    assert!(text.contains("alpha") && text.contains("2/2 up"), "{text}");
}

#[test]
fn missing_domain_is_exit_3_with_the_fix() {
    let reg = Reg::new();
    let run = reg.run("ghost", &["list"]);
    assert_eq!(run.code(), 3);
    assert!(
        run.stderr().contains("mcadmin --domain ghost add"),
        "{}",
        run.stderr()
    );
    assert_eq!(reg.run("ghost", &["up", "a"]).code(), 3);
    assert!(
        !reg.file("ghost").exists(),
        "only add and load create a domain"
    );
}

#[test]
fn domain_and_dir_come_from_the_environment() {
    let reg = Reg::new();
    let out = std::process::Command::new(common::MCADMIN)
        .args(["add", "--no-flush", "envhost:1"])
        .env("MCSHM_DIR", reg.dir())
        .env("MCSHM_DOMAIN", "fromenv")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(addresses(&reg.list_json("fromenv")), ["envhost:1"]);
}

#[test]
fn help_documents_exit_codes() {
    let out = std::process::Command::new(common::MCADMIN)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Exit status:",
        "3  not found",
        "4  registry failure",
        "Examples:",
        "MCSHM_DOMAIN",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}");
    }
}

#[test]
fn policy_is_shown_set_dumped_and_loaded() {
    let reg = Reg::new();
    reg.ok("p", &["add", "--no-flush", "a:1"]);
    let shown: serde_json::Value =
        serde_json::from_str(&reg.ok("p", &["--json", "policy"])).unwrap();
    assert_eq!(
        (shown["failover"].as_str(), shown["failure_limit"].as_u64()),
        (Some("none"), Some(2))
    );
    reg.ok(
        "p",
        &["policy", "--failover", "rehash", "--failure-limit", "5"],
    );
    let list = reg.list_json("p");
    assert_eq!(list["version"], 2, "a policy change is one version");
    assert_eq!(list["policy"]["failover"], "rehash");
    assert_eq!(list["policy"]["failure_limit"], 5);
    assert_eq!(list["servers"][0]["failures"], 0);
    let dump = reg.ok("p", &["dump"]);
    assert!(
        dump.contains("policy: failover=rehash failure-limit=5"),
        "{dump}"
    );
    let before = reg.bytes("p");
    for (args, needle) in [
        (
            &["policy", "--failover", "sometimes"][..],
            "failover policy",
        ),
        (&["policy", "--failure-limit", "0"], "failure limit"),
        (&["policy", "--failure-limit", "300"], "failure limit"),
    ] {
        let run = reg.run("p", args);
        assert_eq!(run.code(), 2, "{args:?}");
        assert!(run.stderr().contains(needle), "{}", run.stderr());
    }
    assert_eq!(reg.bytes("p"), before);
    let file = reg.dir().join("p.list");
    std::fs::write(&file, dump).unwrap();
    reg.ok("q", &["load", "--no-flush", file.to_str().unwrap()]);
    assert_eq!(reg.list_json("q")["policy"]["failover"], "rehash");
}

/// A failed first command creates nothing: no file, no empty domain; an argument given twice is
/// named as such (not "already in domain").
#[test]
fn a_failed_first_add_leaves_no_domain_and_names_the_repeated_argument() {
    let reg = Reg::new();
    let run = reg.run(
        "fresh",
        &["add", "--no-flush", "10.1.1.1", "10.1.1.2", "10.1.1.1"],
    );
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert_eq!(
        run.stderr(),
        "mcadmin: invalid server '10.1.1.1:11211': listed twice\n"
    );
    assert!(
        !reg.file("fresh").exists(),
        "an empty domain was left behind"
    );
    assert_eq!(reg.ok("x", &["domains", "--json"]).trim(), "[]");
    // Already present on a second command: still "already in domain", exit 3.
    reg.ok("fresh", &["add", "--no-flush", "10.1.1.1"]);
    let run = reg.run("fresh", &["add", "--no-flush", "10.1.1.1"]);
    assert_eq!(run.code(), 3);
    assert!(
        run.stderr().contains("already in domain"),
        "{}",
        run.stderr()
    );
    // --if-missing skips both kinds.
    reg.ok(
        "fresh",
        &[
            "add",
            "--no-flush",
            "--if-missing",
            "10.1.1.1",
            "10.1.1.3",
            "10.1.1.3",
        ],
    );
    assert_eq!(
        addresses(&reg.list_json("fresh")),
        ["10.1.1.1:11211", "10.1.1.3:11211"]
    );
}

/// One call adds tens of thousands of servers and another deletes half of them (duplicate
/// detection is a hash set: linear, where it was quadratic).
#[test]
fn adding_and_deleting_thousands_of_servers_in_one_call() {
    let reg = Reg::new();
    let servers: Vec<String> = (0..20_000)
        .map(|n| format!("10.{}.{}.{}:11211", n >> 16, (n >> 8) & 255, n & 255))
        .collect();
    let mut add = vec!["add", "--no-flush"];
    add.extend(servers.iter().map(String::as_str));
    reg.ok("big", &add);
    let mut delete = vec!["delete"];
    delete.extend(servers.iter().step_by(2).map(String::as_str));
    reg.ok("big", &delete);
    let left = addresses(&reg.list_json("big"));
    let expected: Vec<&String> = servers.iter().skip(1).step_by(2).collect();
    assert_eq!(left.len(), 10_000);
    assert!(left.iter().zip(expected).all(|(a, b)| a == b), "order kept");
    // A missing one among many: refused, nothing deleted.
    let run = reg.run("big", &["delete", &servers[1], &servers[0]]);
    assert_eq!(run.code(), 3, "{}", run.stderr());
    assert_eq!(addresses(&reg.list_json("big")).len(), 10_000);
}
