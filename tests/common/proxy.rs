//! A real `mcproxy` process on a kernel-chosen loopback port, and a raw protocol connection to
//! it that reads whole replies (never sleeps: every read has a deadline).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::Reg;

pub const MCPROXY: &str = env!("CARGO_BIN_EXE_mcproxy");

/// Which server (its port) a libmcshm client of domain `app` sends `key` to.
pub fn owner_port(reg: &Reg, key: &str) -> u16 {
    owner_port_in(reg, "app", key)
}

/// Which server (its port) a libmcshm client of `domain` sends `key` to.
pub fn owner_port_in(reg: &Reg, domain: &str, key: &str) -> u16 {
    let domain = libmcshm::Domain::new(domain).unwrap();
    let mut client =
        libmcshm::Client::for_domain(reg.dir(), &domain, libmcshm::Timeouts::default()).unwrap();
    client.server_for(key.as_bytes()).unwrap().port().unwrap()
}

pub struct Proxy {
    child: Option<Child>,
    /// `127.0.0.1:PORT` it serves on.
    pub address: String,
    /// `127.0.0.1:PORT` of --metrics, when asked for with `--metrics 127.0.0.1:0`.
    pub metrics: Option<String>,
    /// Its stderr lines after the ready lines.
    pub log: mpsc::Receiver<String>,
}

impl Proxy {
    /// `mcproxy --dir DIR --domain DOMAIN --listen 127.0.0.1:0 ARGS…`, waiting for its ready
    /// lines.
    pub fn start(reg: &Reg, domain: &str, args: &[&str]) -> Proxy {
        Proxy::start_in(reg.dir(), domain, args)
    }

    /// [`Proxy::start`] on the registry directory `dir`.
    pub fn start_in(dir: &std::path::Path, domain: &str, args: &[&str]) -> Proxy {
        let mut child = Command::new(MCPROXY)
            .arg("--dir")
            .arg(dir)
            .args(["--domain", domain, "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mcproxy");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let want_metrics = args.contains(&"--metrics");
        let (mut address, mut metrics) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while address.is_none() || (want_metrics && metrics.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = log
                .recv_timeout(left)
                .expect("mcproxy did not say it is serving");
            if let Some(at) = line
                .split(" on ")
                .nth(1)
                .filter(|_| line.contains("serving"))
            {
                address = Some(at.to_string());
            }
            if let Some((_, at)) = line.split_once("mcproxy: metrics on http://") {
                metrics = Some(at.trim_end_matches("/metrics").to_string());
            }
        }
        Proxy {
            child: Some(child),
            address: address.unwrap(),
            metrics,
            log,
        }
    }

    pub fn connect(&self) -> Wire {
        Wire::connect(&self.address)
    }

    /// The log lines not read yet, to the end of its stderr (once mcproxy has exited: the
    /// reader thread may still be forwarding the last lines), waiting at most `limit`.
    pub fn log_to_end(&self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => return lines, // the end of stderr, or the limit
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, signal: i32) {
        super::signal(self.pid() as u32, signal);
    }

    /// Waits (bounded) for the proxy to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A raw memcached-protocol connection.
pub struct Wire {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    pub fn connect(address: &str) -> Wire {
        let stream = TcpStream::connect(address).expect("connect to mcproxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to mcproxy");
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) => panic!("no reply from mcproxy within 10 s: {e}"),
        }
    }

    /// One line, CRLF included.
    pub fn line(&mut self) -> String {
        loop {
            if let Some(n) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..n + 2).collect();
                return String::from_utf8_lossy(&line).into_owned();
            }
            assert!(self.fill() > 0, "mcproxy closed the connection mid-reply");
        }
    }

    fn block(&mut self, len: usize) -> String {
        while self.buf.len() < len + 2 {
            assert!(self.fill() > 0, "mcproxy closed the connection mid-value");
        }
        let data: Vec<u8> = self.buf.drain(..len + 2).collect();
        String::from_utf8_lossy(&data).into_owned()
    }

    /// One whole reply (value items to END, stats to END, a meta value, or one line).
    pub fn reply(&mut self) -> String {
        let mut out = self.line();
        let len_of = |line: &str, at: usize| -> usize {
            line.split_whitespace().nth(at).unwrap().parse().unwrap()
        };
        if out.starts_with("VA ") {
            let len = len_of(&out, 1);
            out += &self.block(len);
        } else if out.starts_with("CONFIG ") {
            let len = len_of(&out, 3);
            out += &self.block(len);
            out += &self.line();
        } else if out.starts_with("VALUE ") || out.starts_with("STAT ") {
            let mut line = out.clone();
            out.clear();
            while line != "END\r\n" {
                out += &line;
                if line.starts_with("VALUE ") {
                    out += &self.block(len_of(&line, 3));
                }
                line = self.line();
            }
            out += &line;
        }
        out
    }

    /// Sends `request` and returns its reply.
    pub fn ask(&mut self, request: &str) -> String {
        self.send(request.as_bytes());
        self.reply()
    }

    /// Whether the proxy closes the connection within `limit` (after any bytes it sends).
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let deadline = Instant::now() + limit;
        let mut chunk = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
        false
    }
}
