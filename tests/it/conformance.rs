//! One scenario, every front end: what the library's blocking client does and what mcproxy
//! does must end in the same server contents and the same table, since both only execute the
//! routing core's sequences. Each test here is a place where the two once drifted apart (or
//! where a writer could be made to panic), driven through real processes.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::liar::Liar;
use crate::common::memcached::Memcached;
use crate::common::{MCADMIN, Reg, wait_until};

fn watch(reg: &Reg, domain: &str) -> Child {
    Command::new(MCADMIN)
        .arg("--dir")
        .arg(reg.dir())
        .args(["--domain", domain, "watch", "--interval", "200ms"])
        .args(["--failures", "2", "--timeout", "500ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A server whose every answer is a 300-byte error: `watch` marks it down with a reason cut to
/// the table's 192 bytes (who did it kept whole) and goes on watching; it used to panic inside
/// its transaction and, under systemd, crash-loop with the server never marked down.
#[test]
fn watch_survives_an_error_longer_than_a_reason() {
    let reg = Reg::new();
    let good = Memcached::start();
    let liar = Liar::start(format!("SERVER_ERROR {}\r\n", "e".repeat(300)));
    reg.ok(
        "long",
        &["add", "--no-flush", &good.address(), liar.address()],
    );
    let mut watcher = watch(&reg, "long");
    let state = |i: usize| reg.list_json("long")["servers"][i].clone();
    let down = wait_until(Duration::from_secs(10), || state(1)["state"] == "down");
    let alive = watcher.try_wait().unwrap().is_none();
    let _ = watcher.kill();
    let out = watcher.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(alive, "watch died: {log}");
    assert!(down, "watch did not mark the server down: {log}");
    let reason = state(1)["reason"].as_str().unwrap().to_string();
    assert!(reason.len() <= 192, "{} bytes: {reason}", reason.len());
    assert!(reason.starts_with("2 failed probes"), "{reason}");
    assert!(reason.contains("eeee"), "the error's text, cut: {reason}");
    assert!(
        reason.ends_with(')') && reason.contains("(pid "),
        "{reason}"
    );
    assert_eq!(state(0)["state"], "up", "the good server stays up");
}
