//! A small memcached load generator for bench/proxy.sh: N connections (one thread each), each
//! sending get, set or 10-key multi-get requests back to back (optionally pipelined), for a
//! fixed time; prints one JSON line with throughput and latency percentiles. The same program
//! drives mcproxy, twemproxy and memcached directly, or (with --domain) the libmcshm client
//! in-process, so the figures compare like with like.
//!
//! cargo run --release -p mcshm-proxy --example loadgen -- \
//!     --target 127.0.0.1:11211 --op get --conns 16 --seconds 5 [--protocol binary]
//!
//! `--target unix:/path` connects to a unix socket (mcproxy's `--listen unix:/path`).
//!
//! `--protocol binary` speaks memcached's binary protocol (get, set; a 10-key multi-get is ten
//! quiet getkq and a noop, as libmemcached sends it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libmcshm::{Client, Domain, Timeouts};

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Get,
    Set,
    Mget10,
}

struct Args {
    target: Option<String>,
    domain: Option<(String, String)>,
    op: Op,
    conns: usize,
    seconds: f64,
    keys: usize,
    value_size: usize,
    depth: usize,
    binary: bool,
}

fn args() -> Args {
    let mut a = Args {
        target: None,
        domain: None,
        op: Op::Get,
        conns: 1,
        seconds: 5.0,
        keys: 10_000,
        value_size: 100,
        depth: 1,
        binary: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.chunks(2);
    for pair in &mut it {
        let [flag, value] = pair else {
            panic!("flags take a value")
        };
        match flag.as_str() {
            "--target" => a.target = Some(value.clone()),
            "--domain" => {
                let (dir, domain) = value.split_once(':').expect("--domain DIR:DOMAIN");
                a.domain = Some((dir.into(), domain.into()));
            }
            "--op" => {
                a.op = match value.as_str() {
                    "get" => Op::Get,
                    "set" => Op::Set,
                    "mget10" => Op::Mget10,
                    other => panic!("--op get|set|mget10, not {other}"),
                }
            }
            "--conns" => a.conns = value.parse().unwrap(),
            "--seconds" => a.seconds = value.parse().unwrap(),
            "--keys" => a.keys = value.parse().unwrap(),
            "--value-size" => a.value_size = value.parse().unwrap(),
            "--depth" => a.depth = value.parse().unwrap(),
            "--protocol" => {
                a.binary = match value.as_str() {
                    "text" => false,
                    "binary" => true,
                    other => panic!("--protocol text|binary, not {other}"),
                }
            }
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        a.target.is_some() != a.domain.is_some(),
        "--target ADDR or --domain DIR:DOMAIN"
    );
    a
}

/// A connection to the target: TCP (`host:port`) or a unix socket (`unix:/path`).
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn open(target: &str) -> Conn {
        match target.strip_prefix("unix:") {
            Some(path) => Conn::Unix(UnixStream::connect(path).expect("connect")),
            None => {
                let stream = TcpStream::connect(target).expect("connect");
                stream.set_nodelay(true).unwrap();
                Conn::Tcp(stream)
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn key(n: usize) -> String {
    format!("bench:{n:08}")
}

/// One request of the op, as bytes, and how many reply terminators it gets.
fn request(op: Op, n: usize, keys: usize, value: &[u8], out: &mut Vec<u8>) {
    match op {
        Op::Get => out.extend_from_slice(format!("get {}\r\n", key(n % keys)).as_bytes()),
        Op::Set => {
            out.extend_from_slice(
                format!("set {} 0 0 {}\r\n", key(n % keys), value.len()).as_bytes(),
            );
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        Op::Mget10 => {
            out.extend_from_slice(b"get");
            for k in 0..10 {
                out.extend_from_slice(format!(" {}", key((n * 10 + k) % keys)).as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// A binary request frame.
fn frame(opcode: u8, extras: &[u8], key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x80, opcode]);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(&[extras.len() as u8, 0, 0, 0]);
    let body = (extras.len() + key.len() + value.len()) as u32;
    out.extend_from_slice(&body.to_be_bytes());
    out.extend_from_slice(&[0u8; 12]);
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// One request of the op in the binary protocol; the opcode of the response that ends it.
fn binary_request(op: Op, n: usize, keys: usize, value: &[u8], out: &mut Vec<u8>) -> u8 {
    match op {
        Op::Get => {
            frame(0x00, &[], key(n % keys).as_bytes(), &[], out);
            0x00
        }
        Op::Set => {
            frame(0x01, &[0u8; 8], key(n % keys).as_bytes(), value, out);
            0x01
        }
        Op::Mget10 => {
            for k in 0..10 {
                frame(0x0d, &[], key((n * 10 + k) % keys).as_bytes(), &[], out);
            }
            frame(0x0a, &[], &[], &[], out);
            0x0a
        }
    }
}

/// Reads binary responses until `count` of opcode `end` arrived.
fn read_binary(stream: &mut Conn, buf: &mut Vec<u8>, end: u8, count: usize) {
    let (mut seen, mut at) = (0, 0);
    let mut chunk = [0u8; 65536];
    while seen < count {
        while buf.len() >= at + 24 {
            let body = u32::from_be_bytes(buf[at + 8..at + 12].try_into().unwrap()) as usize;
            if buf.len() < at + 24 + body {
                break;
            }
            seen += usize::from(buf[at + 1] == end);
            at += 24 + body;
        }
        if seen == count {
            break;
        }
        let n = stream.read(&mut chunk).expect("read reply");
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..at);
}

fn terminator(op: Op) -> &'static [u8] {
    match op {
        Op::Set => b"STORED\r\n",
        _ => b"END\r\n",
    }
}

/// Reads until `count` replies ending in `end` arrived (values never contain it here).
fn read_replies(stream: &mut Conn, buf: &mut Vec<u8>, end: &[u8], count: usize) {
    let mut seen = 0;
    let mut chunk = [0u8; 65536];
    let mut scan = 0;
    while seen < count {
        let n = stream.read(&mut chunk).expect("read reply");
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        while let Some(at) = buf[scan..].windows(end.len()).position(|w| w == end) {
            scan += at + end.len();
            seen += 1;
            if seen == count {
                break;
            }
        }
        if buf.len() > 1 << 20 {
            buf.drain(..scan);
            scan = 0;
        }
    }
    buf.clear();
}

fn populate(args: &Args, value: &[u8]) {
    match (&args.target, &args.domain) {
        (Some(target), _) => {
            let mut stream = Conn::open(target);
            for chunk in (0..args.keys).collect::<Vec<_>>().chunks(100) {
                let mut out = Vec::new();
                for &n in chunk {
                    request(Op::Set, n, args.keys, value, &mut out);
                }
                stream.write_all(&out).unwrap();
                read_replies(&mut stream, &mut Vec::new(), b"STORED\r\n", chunk.len());
            }
        }
        (None, Some((dir, domain))) => {
            let mut client =
                Client::for_domain(dir, &Domain::new(domain).unwrap(), Timeouts::default())
                    .unwrap();
            for n in 0..args.keys {
                client.set(key(n).as_bytes(), value, 0, 0).unwrap();
            }
        }
        _ => unreachable!(),
    }
}

fn worker(args: Arc<Args>, id: usize, stop: Arc<AtomicBool>) -> Vec<u32> {
    let value = vec![b'x'; args.value_size];
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut n = id * 7919;
    match (&args.target, &args.domain) {
        (Some(target), _) => {
            let mut stream = Conn::open(target);
            let (mut out, mut buf) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                out.clear();
                let mut end = 0;
                for _ in 0..args.depth {
                    match args.binary {
                        true => end = binary_request(args.op, n, args.keys, &value, &mut out),
                        false => request(args.op, n, args.keys, &value, &mut out),
                    }
                    n += 1;
                }
                let started = Instant::now();
                stream.write_all(&out).unwrap();
                match args.binary {
                    true => read_binary(&mut stream, &mut buf, end, args.depth),
                    false => read_replies(&mut stream, &mut buf, terminator(args.op), args.depth),
                }
                latencies.push(started.elapsed().as_micros() as u32);
            }
        }
        (None, Some((dir, domain))) => {
            let mut client =
                Client::for_domain(dir, &Domain::new(domain).unwrap(), Timeouts::default())
                    .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                for _ in 0..args.depth {
                    match args.op {
                        Op::Get => drop(client.get(key(n % args.keys).as_bytes()).unwrap()),
                        Op::Set => drop(
                            client
                                .set(key(n % args.keys).as_bytes(), &value, 0, 0)
                                .unwrap(),
                        ),
                        Op::Mget10 => {
                            let keys: Vec<String> =
                                (0..10).map(|k| key((n * 10 + k) % args.keys)).collect();
                            let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
                            drop(client.get_many(&refs, false).unwrap());
                        }
                    }
                    n += 1;
                }
                latencies.push(started.elapsed().as_micros() as u32);
            }
        }
        _ => unreachable!(),
    }
    latencies
}

fn main() {
    let args = Arc::new(args());
    populate(&args, &vec![b'x'; args.value_size]);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.conns)
        .map(|id| {
            let (args, stop) = (args.clone(), stop.clone());
            std::thread::spawn(move || worker(args, id, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<u32> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let requests = all.len() * args.depth;
    println!(
        "{{\"requests\":{requests},\"seconds\":{elapsed:.3},\"rps\":{:.0},\"p50_us\":{},\"p99_us\":{}}}",
        requests as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
}
