//! memcached's ASCII authentication (`memcached -Y FILE`): a domain's credentials are kept
//! beside its table (mode 0640, the table's group) by `mcadmin auth`, and every connection the
//! tools open to its servers authenticates: mclient's operations, `mcadmin up`'s flush, a drain.
//! A wrong password and missing credentials are each reported as such.

use crate::common;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use crate::common::Reg;
use crate::common::memcached::Memcached;

fn mclient(reg: &Reg, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mclient"))
        .arg("--dir")
        .arg(reg.dir())
        .args(["--domain", "sec"])
        .args(args)
        .output()
        .unwrap()
}

/// `mcadmin auth --user app --password-file FILE`, FILE holding `password`.
fn give_password(reg: &Reg, password: &str) -> common::Run {
    let file = reg.dir().join("password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    reg.run(
        "sec",
        &[
            "auth",
            "--user",
            "app",
            "--password-file",
            file.to_str().unwrap(),
        ],
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn credentials_authenticate_every_connection_and_a_wrong_password_is_named() {
    let reg = Reg::new();
    std::fs::create_dir_all(reg.dir()).unwrap();
    let users = reg.dir().join("memcached.users");
    std::fs::write(&users, "app:s3cret\n").unwrap();
    let (a, b) = (
        Memcached::start_with(&["-Y", users.to_str().unwrap()]),
        Memcached::start_with(&["-Y", users.to_str().unwrap()]),
    );
    reg.ok("sec", &["add", "--no-flush", &a.address(), &b.address()]);

    // Without credentials the servers refuse, and the message says what to do.
    let out = mclient(&reg, &["set", "k", "v"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("mcadmin auth"), "{}", stderr(&out));

    let set = give_password(&reg, "s3cret");
    assert_eq!(set.code(), 0, "{}", set.stderr());
    let set = set.stdout();
    assert!(set.contains("credentials of user app"), "{set}");
    let file = reg.dir().join("sec.auth");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "readable by the table's group only");
    assert!(reg.ok("sec", &["auth"]).contains("user app"));

    for i in 0..20 {
        let out = mclient(&reg, &["set", &format!("k{i}"), "v"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let out = mclient(&reg, &["get", "k3"]);
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), &b"v"[..])
    );

    // mcadmin up flushes through an authenticated connection.
    reg.ok("sec", &["down", &a.address()]);
    reg.ok("sec", &["up", &a.address()]);
    assert_eq!(reg.list_json("sec")["servers"][0]["state"], "up");
    // A drain lists and moves the keys through authenticated connections.
    for i in 0..20 {
        assert_eq!(
            mclient(&reg, &["set", &format!("d{i}"), "w"]).status.code(),
            Some(0)
        );
    }
    let run = reg.run("sec", &["--json", "drain", &b.address(), "--rate", "0"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let out = mclient(&reg, &["get", "d7"]);
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), &b"w"[..])
    );

    // A wrong password is reported as the server refusing the credentials.
    assert_eq!(give_password(&reg, "wrong").code(), 0);
    let out = mclient(&reg, &["get", "k3"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("refused the credentials of user 'app'"),
        "{}",
        stderr(&out)
    );
    // Credentials memcached could not take are refused before anything is written.
    let bad = give_password(&reg, "two words");
    assert_eq!(bad.code(), 2, "{}", bad.stderr());
    assert!(
        !bad.stderr().contains("two words"),
        "the password is not echoed"
    );
    assert!(reg.run("sec", &["auth", "--clear"]).code() == 0);
    assert!(!file.exists());
    assert_eq!(
        reg.run("sec", &["auth"]).code(),
        1,
        "no credentials: exit 1"
    );
}

/// mcproxy's connections to the servers authenticate with the domain's credentials, read when
/// a connection opens (so `mcadmin auth` applies without a restart); a wrong password is named
/// in the `SERVER_ERROR` its clients get.
#[test]
fn mcproxy_authenticates_its_server_connections() {
    let reg = Reg::new();
    std::fs::create_dir_all(reg.dir()).unwrap();
    let users = reg.dir().join("memcached.users");
    std::fs::write(&users, "app:s3cret\n").unwrap();
    let server = Memcached::start_with(&["-Y", users.to_str().unwrap()]);
    reg.ok("sec", &["add", "--no-flush", &server.address()]);
    assert_eq!(give_password(&reg, "wrong").code(), 0);
    let proxy = common::proxy::Proxy::start(&reg, "sec", &[]);
    let mut wire = proxy.connect();
    let refused = wire.ask("get k\r\n");
    assert!(refused.starts_with("SERVER_ERROR "), "{refused}");
    assert!(
        refused.contains("refused the credentials of user 'app'"),
        "{refused}"
    );
    assert_eq!(give_password(&reg, "s3cret").code(), 0);
    // Whether or not that failure marked it down, it is up now.
    reg.ok("sec", &["up", &server.address(), "--no-flush"]);
    let mut wire = proxy.connect();
    assert_eq!(wire.ask("set k 0 0 1\r\nv\r\n"), "STORED\r\n");
    assert_eq!(wire.ask("get k\r\n"), "VALUE k 0 1\r\nv\r\nEND\r\n");
}
