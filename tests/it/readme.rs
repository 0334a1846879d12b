//! The README's test command is the one CI runs, and on a machine where it cannot install what
//! the tests need it says exactly what to run instead of failing later in a test.

use crate::common;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn the_readme_test_command_is_what_ci_runs() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let after = readme
        .split_once("Run the whole test suite")
        .expect("the README says how to run the tests")
        .1;
    let block = after.split("```sh\n").nth(1).unwrap();
    let command = block.split_once("\n```").unwrap().0.trim();
    assert_eq!(command, "./test.sh");
    let ci = std::fs::read_to_string(Path::new(ROOT).join(".ci/run")).unwrap();
    assert_eq!(
        ci.lines().rfind(|l| !l.starts_with('#')),
        Some("exec ./test.sh")
    );
}

/// Without the packages, and without root to install them: the exact `apt-get install` line,
/// exit 2, and no test run.
#[test]
fn without_root_it_names_the_packages_to_install() {
    let bin = tempfile::tempdir().unwrap();
    // Only what the script itself needs: no compiler, no memcached, no cargo.
    for tool in ["dirname", "id", "grep"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap();
        std::os::unix::fs::symlink(found, bin.path().join(tool)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut script = Command::new("/bin/bash");
    script
        .arg(Path::new(ROOT).join("test.sh"))
        .env_clear()
        .env("PATH", bin.path());
    if common::is_root() {
        script.uid(65534).gid(65534);
    }
    let out = script.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("install them with: sudo apt-get install -y gcc libc6-dev")
            && stderr.contains("memcached"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no test ran");
}

/// The packaged mcproxy example listens where nothing of the README's first session does (its
/// memcached servers), and those servers listen on loopback only, as the README tells.
#[test]
fn the_example_proxy_port_cannot_collide_with_the_first_session() {
    let root = Path::new(ROOT);
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("packaging/mcproxy-example.conf")).unwrap();
    let listen = example
        .split("--listen ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the example's --listen");
    let port = listen.rsplit(':').next().unwrap();
    let session = readme
        .split("## A first session")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let servers: Vec<&str> = session
        .lines()
        .filter(|l| l.starts_with("memcached "))
        .collect();
    assert!(!servers.is_empty(), "the first session starts memcached");
    for line in servers {
        assert!(
            !line.contains(&format!("-p {port} ")),
            "the example proxy's port {port} is the first session's: {line}"
        );
        assert!(
            line.contains("-l 127.0.0.1"),
            "memcached on loopback only: {line}"
        );
    }
    assert!(
        readme.contains(listen),
        "the README shows the example's address {listen}"
    );
}

/// The README names every package `./test.sh` installs (each `need+=(…)` of the script), and
/// what a build needs beyond Rust.
#[test]
fn the_readme_lists_what_test_sh_installs_and_what_a_build_needs() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let script = std::fs::read_to_string(Path::new(ROOT).join("test.sh")).unwrap();
    let development = readme
        .split_once("## Development")
        .expect("a Development section")
        .1
        .split("\n## ")
        .next()
        .unwrap();
    let mut packages = Vec::new();
    for rest in script.split("need+=(").skip(1) {
        let list = rest.split_once(')').unwrap().0;
        packages.extend(list.split_whitespace().map(String::from));
    }
    assert!(packages.len() > 15, "{packages:?}");
    for package in &packages {
        assert!(
            development.contains(&format!("`{package}`")),
            "the README's Development section does not name `{package}`, which test.sh installs"
        );
    }
    let install = readme.split_once("## Install").unwrap().1;
    let install = install.split("\n## ").next().unwrap();
    for needed in ["C compiler", "`make`", "`dpkg-dev`", "`binutils`"] {
        assert!(install.contains(needed), "Install names {needed}");
    }
    assert!(
        readme.contains("unset MCSHM_DIR"),
        "Deploy says to leave the first session's dir"
    );
}
