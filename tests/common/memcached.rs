//! A real memcached on a loopback port chosen by the kernel, killed and reaped on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Memcached {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// The memcached binary: $MEMCACHED, else `memcached` on PATH.
fn binary() -> PathBuf {
    std::env::var_os("MEMCACHED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("memcached"))
}

/// `memcached` on 127.0.0.1:`port` (-1: any, reported in the port file), no UDP, one thread,
/// 64 MB, plus `args`; as root, `-u root` (memcached refuses to run as root otherwise).
fn command(port: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args([
        "-l",
        "127.0.0.1",
        "-p",
        port,
        "-U",
        "0",
        "-t",
        "1",
        "-m",
        "64",
    ])
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    if super::is_root() {
        cmd.args(["-u", "root"]);
    }
    cmd
}

impl Memcached {
    pub fn start() -> Memcached {
        Memcached::start_with(&[])
    }

    /// Starts memcached with extra arguments (e.g. `-I 2m`), waiting for its port file.
    pub fn start_with(args: &[&str]) -> Memcached {
        Memcached::start_with_env(args, &[])
    }

    /// [`Memcached::start_with`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &std::path::Path)]) -> Memcached {
        let dir = tempfile::tempdir().unwrap();
        let ports = dir.path().join("ports");
        let mut cmd = command("-1", args);
        cmd.env("MEMCACHED_PORT_FILENAME", &ports);
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start memcached ({e}): install it with apt-get install -y memcached")
        });
        let mut port = 0;
        let found = super::wait_until(Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&ports).unwrap_or_default();
            if let Some(p) = text.lines().find_map(|l| l.strip_prefix("TCP INET: ")) {
                port = p.trim().parse().unwrap();
            }
            port != 0
        });
        assert!(found, "memcached did not report its port");
        Memcached {
            child: Some(child),
            port,
            _dir: dir,
        }
    }

    /// Starts memcached on a unix socket (no TCP); `port` is 0 and `socket()` names it.
    pub fn start_unix() -> (Memcached, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("mc.sock");
        let mut cmd = Command::new(binary());
        cmd.arg("-s")
            .arg(&socket)
            .args(["-a", "0666", "-t", "1", "-m", "64"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if super::is_root() {
            cmd.args(["-u", "root"]);
        }
        let child = cmd
            .spawn()
            .expect("start memcached: apt-get install -y memcached");
        assert!(
            super::wait_until(Duration::from_secs(10), || {
                std::os::unix::net::UnixStream::connect(&socket).is_ok()
            }),
            "memcached did not listen on its socket"
        );
        (
            Memcached {
                child: Some(child),
                port: 0,
                _dir: dir,
            },
            socket,
        )
    }

    /// `127.0.0.1:PORT`
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts memcached again on the same port (after [`Memcached::kill`]), with extra
    /// arguments, and waits until it accepts connections.
    pub fn restart_with(&mut self, args: &[&str]) {
        self.kill();
        let port = self.port.to_string();
        let mut cmd = command(&port, args);
        self.child = Some(cmd.spawn().expect("restart memcached"));
        let up = super::wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
        assert!(up, "memcached did not come back on port {}", self.port);
    }

    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// Sets a key over a raw connection (as if written while the server was away from us).
    pub fn raw_set(&self, key: &str, value: &str) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(stream, "set {key} 0 0 {}\r\n{value}\r\n", value.len()).unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        assert_eq!(line, "STORED\r\n");
    }

    /// Gets a key over a raw connection (`None` on a miss).
    pub fn raw_get(&self, key: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(stream, "get {key}\r\n").unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "END\r\n" {
            return None;
        }
        let mut value = String::new();
        reader.read_line(&mut value).unwrap();
        Some(value.trim_end_matches("\r\n").to_string())
    }

    /// Sends `signal` (e.g. SIGSTOP to freeze it, SIGCONT to thaw it).
    pub fn signal(&self, signal: i32) {
        super::signal(self.child.as_ref().expect("running").id(), signal);
    }

    /// The process id (to signal it from another thread).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGSTOP, and waits (bounded) until the kernel shows every thread stopped, so that no
    /// request sent after this returns is answered before a SIGCONT.
    pub fn freeze(&self) {
        super::stop(self.child.as_ref().expect("running").id());
    }

    /// SIGKILLs the server and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `stats` over a fresh connection.
    pub fn stats(&self) -> std::collections::HashMap<String, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.write_all(b"stats\r\n").unwrap();
        let mut stats = std::collections::HashMap::new();
        for line in BufReader::new(stream).lines() {
            let line = line.unwrap();
            if line == "END" {
                break;
            }
            let mut parts = line.splitn(3, ' ');
            parts.next();
            stats.insert(
                parts.next().unwrap().to_string(),
                parts.next().unwrap_or("").to_string(),
            );
        }
        stats
    }

    pub fn stat(&self, name: &str) -> u64 {
        self.stats()[name].parse().unwrap()
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.kill();
    }
}
