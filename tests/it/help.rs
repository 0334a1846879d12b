//! `--help` teaches: every subcommand of every tool says what it does in its parent's command
//! list (a doc comment on the wrong variant once gave `auth` the text of `wait` and `wait`
//! none), and every subcommand's own help starts with that description.

use std::process::Command;

fn help(tool: &str, path: &[&str]) -> String {
    let out = Command::new(tool)
        .args(path)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{tool} {path:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The `Commands:` section of a help text: (name, description) per command.
fn commands(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut lines = text.lines().skip_while(|l| *l != "Commands:").skip(1);
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        // A wrapped description continues on a line indented past the names.
        if line.starts_with("  ") && !line.starts_with("   ") {
            let line = line.trim_start();
            let (name, about) = line.split_once(' ').unwrap_or((line, ""));
            // Visible aliases are listed after the description: `[alias: rm]`.
            let about = about.split(" [alias").next().unwrap_or_default();
            found.push((name.to_string(), about.trim().to_string()));
        }
    }
    found
}

fn check(tool: &str, name: &str, path: &mut Vec<String>, missing: &mut Vec<String>) {
    let args: Vec<&str> = path.iter().map(String::as_str).collect();
    let text = help(tool, &args);
    for (command, about) in commands(&text) {
        if command == "help" {
            continue;
        }
        let shown = format!("{name} {} {command}", path.join(" "));
        if about.is_empty() {
            missing.push(shown);
            continue;
        }
        path.push(command);
        let own = help(tool, &path.iter().map(String::as_str).collect::<Vec<_>>());
        let first = own.lines().next().unwrap_or_default();
        let head: String = about.chars().take(30).collect();
        if !first.starts_with(&head) {
            missing.push(format!(
                "{shown}: its help starts {first:?}, the list says {about:?}"
            ));
        }
        check(tool, name, path, missing);
        path.pop();
    }
}

#[test]
fn every_subcommand_of_every_tool_says_what_it_does() {
    let mut missing = Vec::new();
    for (name, tool) in [
        ("mcadmin", env!("CARGO_BIN_EXE_mcadmin")),
        ("mclient", env!("CARGO_BIN_EXE_mclient")),
    ] {
        check(tool, name, &mut Vec::new(), &mut missing);
        assert!(
            !commands(&help(tool, &[])).is_empty(),
            "{name} lists no commands"
        );
    }
    // mcproxy has no subcommands: its help opens with what it is.
    let proxy = help(env!("CARGO_BIN_EXE_mcproxy"), &[]);
    assert!(proxy.starts_with("A local memcached proxy"), "{proxy}");
    assert!(missing.is_empty(), "without a description: {missing:#?}");
}

/// The global etcd user (`--etcd-user`) no longer hides `auth --user`, the memcached user.
#[test]
fn auth_user_is_the_memcached_user_and_etcd_user_is_global() {
    let tool = env!("CARGO_BIN_EXE_mcadmin");
    let auth = help(tool, &["auth"]);
    assert!(auth.contains("--user <USER>"), "{auth}");
    let main = help(tool, &[]);
    assert!(main.contains("--etcd-user <USER:PASSWORD>"), "{main}");
    // Both at once: the memcached user of `auth`, the etcd user of the fleet (parsed, then
    // refused for want of --etcd: auth works on this host's table).
    let both = Command::new(tool)
        .args([
            "--etcd-user",
            "root:pw",
            "auth",
            "--user",
            "app",
            "--password-file",
            "-",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(
        !stderr.contains("cannot be used") && !stderr.contains("unexpected argument"),
        "{stderr}"
    );
}

/// A mistyped command is answered with the nearest real one (a swap of two letters is one
/// edit), and exit 2, nothing done.
#[test]
fn a_typo_is_answered_with_the_nearest_command() {
    for (tool, typo, meant) in [
        (env!("CARGO_BIN_EXE_mclient"), "gte", "'get'"),
        (env!("CARGO_BIN_EXE_mcadmin"), "lsit", "'list'"),
        (env!("CARGO_BIN_EXE_mcadmin"), "dleete", "'delete'"),
    ] {
        let out = Command::new(tool).arg(typo).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "unrecognized subcommand '{typo}' (did you mean {meant}?)"
            )),
            "{stderr}"
        );
    }
}

/// Durations take a unit everywhere (500ms, 2s, 1m); a bare number keeps its documented
/// meaning; anything else is a usage error (exit 2) that says what is expected.
#[test]
fn durations_take_units_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let run = |tool: &str, args: &[&str]| {
        Command::new(tool)
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let mcadmin = env!("CARGO_BIN_EXE_mcadmin");
    let mclient = env!("CARGO_BIN_EXE_mclient");
    for (tool, args) in [
        (
            mcadmin,
            &["--lock-timeout", "500ms", "add", "--no-flush", "10.0.0.1"][..],
        ),
        (
            mcadmin,
            &[
                "--lock-timeout",
                "1",
                "set",
                "10.0.0.1",
                "--retry-interval",
                "2m",
            ],
        ),
        (mcadmin, &["wait", "--timeout", "10ms", "--since", "99"]),
    ] {
        let out = run(tool, args);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list = String::from_utf8(run(mcadmin, &["--json", "list"]).stdout).unwrap();
    assert!(list.contains("\"retry_interval\":120"), "{list}");
    for (tool, args) in [
        (mcadmin, &["--lock-timeout", "5x", "list"][..]),
        (
            mclient,
            &["--timeout", "1 s", "--servers", "127.0.0.1:1", "get", "k"],
        ),
        (
            env!("CARGO_BIN_EXE_mcproxy"),
            &["--timeout", "2 minutes", "--listen", "127.0.0.1:0"],
        ),
    ] {
        let out = run(tool, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("a number with a unit (500ms, 1s, 2m, 1h)"),
            "{stderr}"
        );
    }
}
