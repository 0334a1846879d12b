//! Shared helpers of the integration tests: a temporary registry directory and the real
//! `mcadmin` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod cbuild;
pub mod certs;
pub mod drip;
pub mod etcd;
pub mod liar;
pub mod memcached;
pub mod netns;
pub mod prometheus;
pub mod proxy;

pub const MCADMIN: &str = env!("CARGO_BIN_EXE_mcadmin");

/// A registry directory that disappears with the test.
pub struct Reg {
    pub tmp: tempfile::TempDir,
}

impl Reg {
    pub fn new() -> Reg {
        Reg {
            tmp: tempfile::tempdir().expect("create temp dir"),
        }
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn file(&self, domain: &str) -> PathBuf {
        self.dir().join(format!("{domain}.mcshm"))
    }

    /// `mcadmin --dir DIR --domain DOMAIN ARGS…` without stdin.
    pub fn cmd(&self, domain: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(MCADMIN);
        cmd.arg("--dir")
            .arg(self.dir())
            .arg("--domain")
            .arg(domain)
            .args(args)
            .env_remove("MCSHM_DIR")
            .env_remove("MCSHM_DOMAIN")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, domain: &str, args: &[&str]) -> Run {
        Run(self.cmd(domain, args).output().expect("run mcadmin"))
    }

    /// Runs and insists on exit status 0.
    pub fn ok(&self, domain: &str, args: &[&str]) -> String {
        let run = self.run(domain, args);
        assert_eq!(run.code(), 0, "mcadmin {args:?} failed: {}", run.stderr());
        run.stdout()
    }

    /// `mclient --dir DIR --domain DOMAIN ARGS…` (the environment's domain ignored), to be
    /// given its stdin and run.
    pub fn mclient_cmd(&self, domain: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mclient"));
        cmd.arg("--dir")
            .arg(self.dir())
            .args(["--domain", domain])
            .args(args)
            .env_remove("MCSHM_DIR")
            .env_remove("MCSHM_DOMAIN");
        cmd
    }

    /// [`Reg::mclient_cmd`] run with no stdin.
    pub fn mclient(&self, domain: &str, args: &[&str]) -> Output {
        self.mclient_cmd(domain, args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    /// Marks server `index` of `domain` draining, as `mcadmin drain` does before it moves keys
    /// (without moving any).
    pub fn mark_draining(&self, domain: &str, index: usize) {
        use libmcshm::{Domain, Registry, State};
        let mut writer =
            Registry::open_writer(self.dir(), &Domain::new(domain).unwrap(), false).unwrap();
        writer
            .transact(|t| {
                t.servers[index].state = State::Draining;
                Ok(())
            })
            .unwrap();
    }

    pub fn list_json(&self, domain: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(domain, &["--json", "list"])).expect("list --json is JSON")
    }

    pub fn bytes(&self, domain: &str) -> Vec<u8> {
        std::fs::read(self.file(domain)).expect("read registry file")
    }
}

/// The output of one mcadmin run.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
}

/// Addresses in a `list --json` document, in table order.
pub fn addresses(list: &serde_json::Value) -> Vec<String> {
    list["servers"]
        .as_array()
        .expect("servers array")
        .iter()
        .map(|s| s["address"].as_str().unwrap().to_string())
        .collect()
}

/// Polls `done` until it is true or `limit` passes; returns whether it became true.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sends `signal` to process `pid`, a child of this test not yet reaped.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a child we spawned and have not reaped: its pid is still its own.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// SIGSTOPs child `pid`, and waits (bounded) until the kernel shows every thread of it
/// stopped, so that it does nothing after this returns until a SIGCONT.
pub fn stop(pid: u32) {
    signal(pid, libc::SIGSTOP);
    let stopped = wait_until(Duration::from_secs(5), || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        tasks.flatten().all(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // The state follows the parenthesised command name.
            stat.rsplit(") ")
                .next()
                .is_some_and(|rest| rest.starts_with('T'))
        })
    });
    assert!(stopped, "process {pid} did not stop");
}

/// This process's open-file limit raised to its hard limit (the proxy it starts inherits it);
/// the soft limit now.
pub fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit we own.
    #[allow(unsafe_code)]
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid() == 0
    }
}

/// A copy of a binary that any user may run (in a fresh 0755 directory): the checkout itself
/// may sit below a directory other users cannot enter.
pub fn runnable_by_anyone(binary: &str) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join(Path::new(binary).file_name().unwrap());
    std::fs::copy(binary, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, copy)
}

/// `cmd.output()`, retried while the kernel says "text file busy": a binary copied a moment ago
/// can still be open for writing in a child another test thread forked before its exec.
pub fn output_of_fresh_binary(cmd: &mut Command) -> Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other.expect("run the copied binary"),
        }
    }
}

/// xorshift64*: a small deterministic PRNG (the same sequence for the same seed everywhere),
/// for tests that print their seed so a failure can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `127.0.0.1:PORT` of a port nobody listens on (bound, then let go): a server that must be
/// unreachable.
pub fn closed_port_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("127.0.0.1:{port}")
}
