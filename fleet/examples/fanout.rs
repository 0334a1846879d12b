//! etcd's own share of a fleet change, run by `bench/fleet.sh` with `RAW=1`: N watch streams
//! on etcd's JSON gateway (what each agent holds), spread over the members as the agents
//! spread theirs, held by one process that only counts the messages; ROUNDS puts of a
//! SIZE-byte value under the watched prefix (a domain's document is one such value). Prints
//! p50/p99 from a put's acknowledgement to the last stream's message, and etcd's CPU per put
//! less its idle rate: the floor under `propagation`'s figures, before any agent decodes or
//! applies anything.
//!
//! `fanout ENDPOINTS ROUNDS WORK STREAMS SIZE`; WORK holds `etcd.pids` (the members, in the
//! order of ENDPOINTS). Every wait has a deadline.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use mcshm_fleet::{Etcd, EtcdConfig};

const KEY: &str = "/fanout/k";
const DEADLINE: Duration = Duration::from_secs(60);

enum Seen {
    /// The stream's watch exists.
    Ready,
    /// The stream's `n`-th message with events arrived.
    Event(usize, Instant),
    Failed(String),
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoints, rounds, work, streams, size] = args.as_slice() else {
        eprintln!("usage: fanout ENDPOINTS ROUNDS WORK STREAMS SIZE");
        std::process::exit(2);
    };
    let rounds: usize = rounds.parse().expect("ROUNDS");
    let streams: usize = streams.parse().expect("STREAMS");
    let size: usize = size.parse().expect("SIZE");
    let urls = EtcdConfig::parse_endpoints(endpoints).unwrap();
    let members: Vec<u32> = std::fs::read_to_string(PathBuf::from(work).join("etcd.pids"))
        .expect("etcd.pids")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let etcd = Etcd::new(EtcdConfig {
        endpoints: urls.clone(),
        timeout: Duration::from_secs(10),
        ..EtcdConfig::default()
    })
    .unwrap();

    let (tx, rx) = mpsc::channel();
    for i in 0..streams {
        let url = urls[i % urls.len()].clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            if let Err(e) = follow(&url, &tx) {
                let _ = tx.send(Seen::Failed(e.to_string()));
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + DEADLINE;
    let mut ready = 0;
    while ready < streams {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Seen::Ready) => ready += 1,
            Ok(Seen::Failed(why)) => fail(&format!("a watch stream failed: {why}")),
            Ok(Seen::Event(..)) => fail("an event before any put"),
            Err(_) => fail(&format!("only {ready} of {streams} watch streams set up")),
        }
    }
    println!(
        "{streams} watch streams on {KEY}, spread over {} members",
        urls.len()
    );
    std::thread::sleep(Duration::from_secs(2));

    let value = vec![b'x'; size];
    let before = cpu(&members);
    let started = Instant::now();
    let mut every = Vec::new();
    for round in 1..=rounds {
        etcd.put(KEY, &value, None)
            .unwrap_or_else(|e| fail(&format!("put: {e}")));
        let acknowledged = Instant::now();
        let deadline = acknowledged + DEADLINE;
        let mut seen = 0;
        let mut last = acknowledged;
        while seen < streams {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Seen::Event(n, at)) if n == round => {
                    seen += 1;
                    last = last.max(at);
                }
                Ok(Seen::Event(n, _)) => fail(&format!("message {n} during put {round}")),
                Ok(Seen::Failed(why)) => fail(&format!("a watch stream failed: {why}")),
                Ok(Seen::Ready) => {}
                Err(_) => fail(&format!("put {round} reached {seen} of {streams} streams")),
            }
        }
        every.push(last.max(acknowledged) - acknowledged);
    }
    let edits = cpu(&members);
    let edit_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64(edit_s.clamp(5.0, 30.0)));
    let idle = cpu(&members);
    let idle_s = edit_s.clamp(5.0, 30.0);

    every.sort();
    let at = |q: f64| every[((every.len() as f64 * q) as usize).min(every.len() - 1)];
    let per_put: Vec<f64> = (0..members.len())
        .map(|m| {
            let rate = (idle[m] - edits[m]) / idle_s;
            ((edits[m] - before[m]) - rate * edit_s) / rounds as f64 * 1e3
        })
        .collect();
    let total: f64 = per_put.iter().sum();
    println!(
        "put ({size} bytes) acknowledged -> its message on all {streams} streams: n={rounds} p50={:.2} ms p99={:.2} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    );
    println!(
        "etcd's CPU per put, less idle: {total:.1} ms ({} ms by member), {:.0} µs per stream",
        per_put
            .iter()
            .map(|c| format!("{c:.1}"))
            .collect::<Vec<_>>()
            .join(" / "),
        total / streams as f64 * 1e3
    );
    println!(
        "raw streams={streams} size={size} p50_ms={:.1} p99_ms={:.1} etcd_ms_per_put={total:.1} etcd_us_per_stream={:.0}",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        total / streams as f64 * 1e3
    );
}

/// One watch stream, read until it ends: a message with events is reported with its number.
fn follow(url: &str, tx: &mpsc::Sender<Seen>) -> std::io::Result<()> {
    let address = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address)?;
    let body = format!(
        r#"{{"create_request":{{"key":"{}"}}}}"#,
        B64.encode(KEY.as_bytes())
    );
    write!(
        stream,
        "POST /v3/watch HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    // Counting is enough: a message with events carries `"events"` once, a created or progress
    // message none. The last bytes of a read are kept for a word cut in two.
    let mut buffer = vec![0u8; 1 << 16];
    let mut tail: Vec<u8> = Vec::new();
    let mut created = false;
    let mut events = 0;
    loop {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            return Err(std::io::Error::other("stream closed"));
        }
        let at = Instant::now();
        let mut text = std::mem::take(&mut tail);
        text.extend_from_slice(&buffer[..n]);
        if !created && contains(&text, b"\"created\":true") {
            created = true;
            if tx.send(Seen::Ready).is_err() {
                return Ok(());
            }
        }
        for _ in 0..count(&text, b"\"events\"") {
            events += 1;
            if tx.send(Seen::Event(events, at)).is_err() {
                return Ok(());
            }
        }
        let keep = text.len().min(16);
        tail = text[text.len() - keep..].to_vec();
        // What was counted is not counted again: keep only what cannot hold a whole word.
        if contains(&tail, b"\"events\"") {
            tail.clear();
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn cpu(pids: &[u32]) -> Vec<f64> {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (ticks(11) + ticks(12)) as f64 / 100.0
        })
        .collect()
}

fn fail(why: &str) -> ! {
    eprintln!("fanout: {why}");
    std::process::exit(1);
}
