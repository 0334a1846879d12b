//! Opening refuses symlinks and, in world-writable directories, other users' files; a reader
//! needs only read permission; a writer without write permission gets "permission denied"
//! naming the file. Runs the real mcadmin as an unprivileged user where the test is root.

use crate::common;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use crate::common::{Reg, addresses, is_root};

const NOBODY: u32 = 65534;

fn chmod(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn new_files_are_0644_in_a_0755_directory() {
    let reg = Reg::new();
    let dir = reg.dir().join("fresh");
    let run = std::process::Command::new(common::MCADMIN)
        .arg("--dir")
        .arg(&dir)
        .args(["add", "--no-flush", "a:1"])
        .output()
        .unwrap();
    assert!(run.status.success());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dir), 0o755);
    assert_eq!(mode(&dir.join("default.mcshm")), 0o644);
}

#[test]
fn symlinks_are_refused() {
    let reg = Reg::new();
    reg.ok("real", &["add", "--no-flush", "a:1"]);
    std::os::unix::fs::symlink(reg.file("real"), reg.file("link")).unwrap();
    let before = reg.bytes("real");
    for args in [
        &["list"][..],
        &["add", "--no-flush", "b:2"],
        &["down", "a:1"],
    ] {
        let run = reg.run("link", args);
        assert_eq!(run.code(), 4, "{args:?}");
        assert!(
            run.stderr().contains("symbolic link") && run.stderr().contains("link.mcshm"),
            "{}",
            run.stderr()
        );
    }
    assert_eq!(reg.bytes("real"), before);
}

#[test]
#[ignore = "needs root to create a file owned by another user: ./test.sh runs it when root"]
fn foreign_files_in_a_world_writable_directory_are_refused() {
    assert!(
        is_root(),
        "needs root to create a file owned by another user"
    );
    let reg = Reg::new();
    reg.ok("planted", &["add", "--no-flush", "evil:1"]);
    std::os::unix::fs::chown(reg.file("planted"), Some(NOBODY), Some(NOBODY)).unwrap();
    chmod(reg.dir(), 0o1777);
    let run = reg.run("planted", &["list"]);
    assert_eq!(run.code(), 4);
    assert!(
        run.stderr().contains("owned by uid 65534") && run.stderr().contains("world-writable"),
        "{}",
        run.stderr()
    );
    // The same file in a directory only its owner (and root) can write is trusted.
    chmod(reg.dir(), 0o755);
    assert_eq!(addresses(&reg.list_json("planted")), ["evil:1"]);
}

#[test]
#[ignore = "needs root to run mcadmin as another user: ./test.sh runs it when root"]
fn a_reader_needs_only_read_permission_and_a_writer_is_told_permission_denied() {
    assert!(is_root(), "needs root to run mcadmin as another user");
    let reg = Reg::new();
    chmod(reg.dir(), 0o755);
    reg.ok("ro", &["add", "--no-flush", "a:1"]);
    let before = reg.bytes("ro");
    let (_bin, mcadmin) = common::runnable_by_anyone(common::MCADMIN);
    let as_nobody_in = |domain: &str, args: &[&str]| {
        let mut cmd = std::process::Command::new(&mcadmin);
        cmd.arg("--dir")
            .arg(reg.dir())
            .args(["--domain", domain])
            .args(args);
        cmd.uid(NOBODY).gid(NOBODY);
        common::Run(common::output_of_fresh_binary(&mut cmd))
    };
    let as_nobody = |args: &[&str]| as_nobody_in("ro", args);
    let list = as_nobody(&["--json", "list"]);
    assert_eq!(list.code(), 0, "{}", list.stderr());
    assert!(list.stdout().contains("a:1"));
    for args in [
        &["add", "--no-flush", "b:2"][..],
        &["down", "a:1"],
        &["delete", "a:1"],
    ] {
        let run = as_nobody(args);
        assert_eq!(run.code(), 4, "{args:?}: {}", run.stderr());
        assert!(
            run.stderr().contains("permission denied")
                && run.stderr().contains("ro.mcshm")
                && run
                    .stderr()
                    .contains("run as its owner or a member of its group"),
            "{}",
            run.stderr()
        );
    }
    let create = as_nobody_in("new", &["add", "--no-flush", "b:2"]);
    assert_eq!(create.code(), 4);
    assert!(
        create.stderr().contains("permission denied"),
        "{}",
        create.stderr()
    );
    assert_eq!(reg.bytes("ro"), before);
}

#[test]
fn mode_and_group_of_new_files_are_chosen_and_kept_through_growth() {
    let reg = Reg::new();
    reg.ok(
        "g",
        &[
            "--mode",
            "640",
            "--group",
            "65534",
            "add",
            "--no-flush",
            "a:1",
        ],
    );
    let meta = |r: &Reg| std::fs::metadata(r.file("g")).unwrap();
    assert_eq!(meta(&reg).permissions().mode() & 0o7777, 0o640);
    if is_root() {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta(&reg).gid(), 65534);
        let hosts: Vec<String> = (0..300).map(|i| format!("h{i}:1")).collect();
        let mut args = vec!["add", "--no-flush"];
        args.extend(hosts.iter().map(String::as_str));
        reg.ok("g", &args); // grows: a new file replaces the old one
        assert!(reg.bytes("g").len() > 300 * 512);
        assert_eq!(
            (meta(&reg).permissions().mode() & 0o7777, meta(&reg).gid()),
            (0o640, 65534)
        );
    }
    for (args, needle) in [
        (
            &["--mode", "400", "add", "--no-flush", "b:1"][..],
            "invalid mode",
        ),
        (&["--mode", "9", "add", "--no-flush", "b:1"], "invalid mode"),
        (
            &["--group", "no-such-group-here", "add", "--no-flush", "b:1"],
            "unknown group",
        ),
    ] {
        let run = reg.run("h", args);
        assert_eq!(run.code(), 2, "{args:?}");
        assert!(run.stderr().contains(needle), "{}", run.stderr());
    }
}

/// A FIFO planted at a domain's path (any local user can, in a world-writable sticky
/// directory): every command refuses it at once as "not a regular file" instead of blocking in
/// open(2), and `domains` skips it.
#[test]
fn a_fifo_at_a_domain_path_is_refused_without_blocking() {
    let reg = Reg::new();
    reg.ok("real", &["add", "--no-flush", "a:1"]);
    let status = std::process::Command::new("mkfifo")
        .arg(reg.file("pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    let finished = |mut child: std::process::Child, what: &str| {
        let exited = common::wait_until(std::time::Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} blocked on the FIFO");
        }
        child.wait_with_output().unwrap()
    };
    for args in [
        &["list"][..],
        &["status", "a:1"],
        &["dump"],
        &["policy"],
        &["wait", "--timeout", "5"],
        &["add", "--no-flush", "b:2"],
    ] {
        let child = reg
            .cmd("pipe", args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = finished(child, &format!("mcadmin {args:?}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {stderr}");
        assert!(
            stderr.contains("not a regular file") && stderr.contains("pipe.mcshm"),
            "{args:?}: {stderr}"
        );
    }
    // A client that may only read (the FIFO is root's, 0644): its read-only open must not block.
    let mut mclient = std::process::Command::new(env!("CARGO_BIN_EXE_mclient"));
    mclient
        .arg("--dir")
        .arg(reg.dir())
        .args(["--domain", "pipe", "get", "k"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if is_root() {
        mclient.uid(NOBODY).gid(NOBODY);
    }
    let out = finished(mclient.spawn().unwrap(), "mclient get");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a regular file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = reg
        .cmd("real", &["domains", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = finished(child, "mcadmin domains");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("\"real\"") && !listed.contains("pipe"),
        "{listed}"
    );
}

/// Under a unit's `ProtectProc=invisible` (here: /proc mounted with `hidepid=invisible` in a
/// mount namespace of its own), a process of another user does not see a live root client in
/// /proc; it must still not take that client's process record for a dead one's.
#[test]
#[ignore = "needs root to mount /proc with hidepid and run as another user: ./test.sh runs it when root"]
fn a_client_hidden_from_another_user_keeps_its_process_record() {
    assert!(is_root(), "needs root");
    let reg = Reg::new();
    chmod(reg.dir(), 0o755);
    reg.ok(
        "hid",
        &["--mode", "666", "add", "--no-flush", "127.0.0.1:1"],
    );
    let domain = libmcshm::Domain::new("hid").unwrap();
    let _root_client =
        libmcshm::Client::for_domain(reg.dir(), &domain, libmcshm::Timeouts::default()).unwrap();
    let me = std::process::id();
    let recorded = |reg: &Reg| -> bool {
        let clients: serde_json::Value =
            serde_json::from_str(&reg.ok("hid", &["--json", "clients"])).unwrap();
        clients
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["pid"] == me && c["recorded"] == true)
    };
    assert!(recorded(&reg), "the root client holds a record");
    // mclient as nobody, in a mount namespace whose /proc hides other users' processes: it
    // opens the domain for writing and claims a record of its own.
    let (_bin, mclient) = common::runnable_by_anyone(env!("CARGO_BIN_EXE_mclient"));
    let script = format!(
        "mount -t proc -o hidepid=invisible proc /proc && \
         exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups sh -c \
         'test ! -e /proc/{me} && exec {} --dir {} --domain hid --timeout 0.2 which some-key'",
        mclient.display(),
        reg.dir().display()
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let run = common::Run(common::output_of_fresh_binary(&mut cmd));
    assert_eq!(run.code(), 0, "{}{}", run.stdout(), run.stderr());
    assert!(
        recorded(&reg),
        "a process that could not see the root client took its record"
    );
}

/// In a group-writable directory (the packaged /run/mcshm: 0775, the units' user and group) a
/// table root creates is 0664 with the directory's group, so that the units can write it.
#[test]
#[ignore = "needs root to create a table another user must write: ./test.sh runs it when root"]
fn a_table_root_creates_in_a_group_writable_directory_is_the_groups_to_write() {
    assert!(is_root(), "needs root");
    let reg = Reg::new();
    let dir = reg.dir().join("run-mcshm");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    chmod(reg.dir(), 0o755);
    chmod(&dir, 0o775);
    let run = std::process::Command::new(common::MCADMIN)
        .arg("--dir")
        .arg(&dir)
        .args(["--domain", "rootmade", "add", "--no-flush", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let meta = std::fs::metadata(dir.join("rootmade.mcshm")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o664, 0, NOBODY)
    );
    // The units' user (here nobody, in the directory's group) writes it.
    let (_bin, mcadmin) = common::runnable_by_anyone(common::MCADMIN);
    let mut cmd = std::process::Command::new(&mcadmin);
    cmd.arg("--dir")
        .arg(&dir)
        .args(["--domain", "rootmade", "down", "127.0.0.1:1"]);
    cmd.uid(NOBODY).gid(NOBODY);
    let down = common::Run(common::output_of_fresh_binary(&mut cmd));
    assert_eq!(down.code(), 0, "{}", down.stderr());
    // An explicit --mode is what it says.
    let explicit = std::process::Command::new(common::MCADMIN)
        .arg("--dir")
        .arg(&dir)
        .args([
            "--domain",
            "mine",
            "--mode",
            "644",
            "add",
            "--no-flush",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(explicit.status.success());
    let meta = std::fs::metadata(dir.join("mine.mcshm")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o644);
}
