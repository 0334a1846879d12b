//! The C library as a user gets it: `make install` into a temporary prefix, pkg-config, the
//! system compiler, and a C daemon (tests/c/daemon.c) that sees an mcadmin change, talks to a
//! real memcached, gets the failure callback when it is killed, and refuses bad arguments. The
//! daemon also runs under valgrind: no errors, no leaks definitely lost; and once more against a
//! server that speaks only TLS, the domain given its TLS settings by `mcadmin tls`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::Reg;
use crate::common::certs::Certs;
use crate::common::memcached::Memcached;

/// Compiles tests/c/daemon.c against the installed library, as a user would.
fn compile_daemon(prefix: &Path, out_dir: &Path) -> PathBuf {
    crate::common::cbuild::compile(prefix, "daemon.c", &["-g"], out_dir)
}

/// Drives the daemon through its scenario (see daemon.c); `wrapper` runs it (e.g. valgrind).
/// With `tls`, the server speaks only TLS and the domain has TLS settings: the C API's
/// connections (and `up`'s flush) go through them unchanged.
fn scenario(daemon: &Path, wrapper: &[&str], tls: Option<&Certs>) {
    let reg = Reg::new();
    let mut mc = match tls {
        Some(certs) => certs.memcached("server", ""),
        None => Memcached::start(),
    };
    reg.ok(
        "capp",
        &["add", &mc.address(), "--down", "--retry-interval", "-1"],
    );
    if let Some(certs) = tls {
        reg.ok("capp", &["tls", "--ca", &certs.path("ca.crt")]);
    }
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(daemon);
            c
        }
        None => Command::new(daemon),
    };
    let mut child = cmd
        .arg(reg.dir())
        .arg("capp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().map(|l| l.unwrap()).unwrap_or_default();
    let ready = next();
    assert_eq!(ready, "ready 1", "daemon did not start");
    reg.ok("capp", &["up", &mc.address()]); // flushes, then marks up: version 2
    assert_eq!(next(), "changed 2");
    assert_eq!(
        next(),
        format!("server 127.0.0.1:{} weight 1 state 0", mc.port)
    );
    assert_eq!(next(), format!("roundtrip ok 127.0.0.1:{}", mc.port));
    mc.kill();
    writeln!(child.stdin.as_mut().unwrap(), "killed").unwrap();
    assert_eq!(next(), format!("callback 127.0.0.1:{}", mc.port));
    assert_eq!(next(), "args ok");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "daemon failed ({:?}): {stderr}",
        out.status
    );
}

#[test]
fn install_pkg_config_and_a_c_daemon_under_valgrind() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    crate::common::cbuild::install(&prefix);
    for file in [
        "bin/mcadmin",
        "bin/mclient",
        "bin/mcproxy",
        "lib/libmcshm.so",
        "lib/libmcshm.a",
        "include/mcshm.h",
        "lib/pkgconfig/mcshm.pc",
        "share/man/man1/mclient.1",
        "share/man/man3/libmcshm.3",
        "share/man/man5/mcshm.5",
        "share/man/man8/mcadmin.8",
        "share/man/man8/mcproxy.8",
        "share/bash-completion/completions/mcadmin",
        "share/zsh/site-functions/_mclient",
        "share/fish/vendor_completions.d/mcadmin.fish",
        "share/bash-completion/completions/mcproxy",
        "lib/systemd/system/mcadmin-watch@.service",
        "lib/systemd/system/mcadmin-sync.service",
        "lib/systemd/system/mcproxy@.service",
    ] {
        assert!(prefix.join(file).is_file(), "{file} not installed");
    }
    let flags = crate::common::cbuild::pkg_config(&prefix, &["--cflags", "--libs"]);
    assert!(
        flags.contains(&format!("-I{}/include", prefix.display())) && flags.contains("-lmcshm"),
        "{flags}"
    );
    let daemon = compile_daemon(&prefix, tmp.path());
    scenario(&daemon, &[], None);
    scenario(&daemon, &[], Some(&Certs::new()));
    let valgrind = [
        "valgrind",
        "-q",
        "--error-exitcode=99",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite",
        "--show-leak-kinds=definite",
    ];
    if Command::new("valgrind").arg("--version").output().is_err() {
        panic!("valgrind not found: apt-get install -y valgrind");
    }
    scenario(&daemon, &valgrind, None);
}
