//! Building a C program against the C library as a user does: `make install` into a prefix,
//! pkg-config, the system compiler.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `make install PREFIX=<prefix> PROFILE=debug` (builds the C library first).
pub fn install(prefix: &Path) {
    let out = Command::new("make")
        .args(["install", "PROFILE=debug"])
        .arg(format!("PREFIX={}", prefix.display()))
        .current_dir(ROOT)
        .output()
        .expect("run make (apt-get install -y make)");
    assert!(
        out.status.success(),
        "make install failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn pkg_config(prefix: &Path, args: &[&str]) -> String {
    let out = Command::new("pkg-config")
        .args(args)
        .arg("mcshm")
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .output()
        .expect("run pkg-config (apt-get install -y pkg-config)");
    assert!(
        out.status.success(),
        "pkg-config {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `tests/c/<source>` compiled with `flags` against the library installed into `prefix`,
/// into `out_dir`: the executable.
pub fn compile(prefix: &Path, source: &str, flags: &[&str], out_dir: &Path) -> PathBuf {
    let exe = out_dir.join(source.trim_end_matches(".c"));
    let link = pkg_config(prefix, &["--cflags", "--libs"]);
    let status = Command::new("cc")
        .args(["-Wall", "-Werror"])
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(Path::new(ROOT).join("tests/c").join(source))
        .args(link.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()))
        .status()
        .expect("run cc");
    assert!(status.success(), "compiling tests/c/{source} failed");
    exe
}

/// Compiles `tests/c/NAME.c` against the system's libmemcached into `dir` (the oracles of
/// tests/ketama.rs and tests/vbucket.rs); panics with the install command when it is missing.
pub fn libmemcached_oracle(dir: &Path, name: &str) -> PathBuf {
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "libmemcached"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .unwrap_or_else(|| {
            panic!("libmemcached not found: apt-get install -y libmemcached-dev pkg-config")
        });
    let exe = dir.join(name);
    let status = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(Path::new(ROOT).join("tests/c").join(format!("{name}.c")))
        .args(String::from_utf8(flags.stdout).unwrap().split_whitespace())
        .status()
        .expect("run cc");
    assert!(status.success(), "compiling {name} failed");
    exe
}

/// Runs an oracle (`cmd`, its arguments given) on `input` (one key a line): its answers, a
/// line a key, `keys` of them; panics with what it said on stderr when it fails.
pub fn ask_oracle(cmd: &mut Command, input: Vec<u8>, keys: usize) -> Vec<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "the oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(answers.len(), keys);
    answers
}
