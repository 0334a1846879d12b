//! A domain's file truncated under the processes that map it (`ftruncate` to 0, 8, 64 or 4096
//! bytes, half, or all but 8 bytes; the same bytes written back 0 to 0.3 s later), while two
//! long-lived library readers (a `Router` and a `Client`, each with a `Registry` handle too) and
//! an mcproxy use it: none dies, every answer is right (for the table version it was made with)
//! or a clear error, and each follows a change made after the file is restored.
//!
//! 264 truncations by default (about a minute); `MCSHM_TRUNCATION_ROUNDS=N` runs N, and
//! `MCSHM_TRUNCATION_SEED=S` replays a run's delays (its seed is printed).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::common::memcached::Memcached;
use crate::common::proxy::{Proxy, Wire, owner_port};
use crate::common::{Reg, Rng, wait_until};
use libmcshm::client::Router;
use libmcshm::{Client, Domain, Error, Registry, Snapshot, State, Timeouts};

const DOMAIN: &str = "app";
const ROUNDS: usize = 264;
/// Longest a file stays cut before its bytes are written back.
const MAX_CUT_MS: usize = 300;
/// How long a process may take to see a change made after a restore.
const FOLLOW_LIMIT: Duration = Duration::from_secs(10);
/// A reader child's longest life (it stops when its stdin closes).
const CHILD_LIFE: Duration = Duration::from_secs(1800);

/// Whether the first server (A) is up at `version`: up at the base version, and toggled by each
/// version after it (the test makes one change per round, A down or A up).
fn a_is_up(base: u64, version: u64) -> bool {
    (version - base).is_multiple_of(2)
}

/// A table any reader may hold: servers A and B, A's state the one its version says.
fn check(snapshot: &Snapshot, base: u64, a: &str, b: &str) -> Result<(), String> {
    let addresses: Vec<String> = snapshot
        .servers
        .iter()
        .map(|s| s.address.to_string())
        .collect();
    if snapshot.version < base || addresses != [a, b] {
        return Err(format!(
            "version {}: servers {addresses:?}",
            snapshot.version
        ));
    }
    let up = snapshot.servers[0].state == State::Up;
    if up != a_is_up(base, snapshot.version) {
        return Err(format!("version {}: A up is {up}", snapshot.version));
    }
    Ok(())
}

/// What a reader child counts: errors by what they say (the truncation's error, or the message
/// itself), kept to a few distinct messages.
#[derive(Default)]
struct Counts {
    loops: u64,
    answers: u64,
    errors: BTreeMap<String, u64>,
}

impl Counts {
    fn error(&mut self, err: &Error) {
        // Only a damaged file may be an error here: a clear one, of its kind.
        assert!(
            matches!(err, Error::Corrupt { .. }),
            "an error that is not about a damaged file: {err}"
        );
        let text = err.to_string();
        let class = if text.contains("truncated it under this one") {
            "truncated".to_string()
        } else {
            text
        };
        if self.errors.len() < 8 || self.errors.contains_key(&class) {
            *self.errors.entry(class).or_default() += 1;
        }
    }
}

/// A long-lived library reader (run as a child process of this test binary): loops over a
/// routing answer for `key` (a `Router` lookup, or a `Client` get through real memcached) and
/// its `Registry` handle's current table (and every 16th loop a whole copy of it), checking
/// each; prints `seen V` when it routes with a new version, and a summary when its stdin closes.
#[test]
fn reader_child() {
    let Ok(spec) = std::env::var("MCSHM_TRUNCATION_READER") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [dir, kind, key, a, b, base] = parts[..] else {
        panic!("reader spec {spec}");
    };
    let base: u64 = base.parse().unwrap();
    let domain = Domain::new(DOMAIN).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut registry = Registry::open(dir, &domain).unwrap();
    let mut router = (kind == "router").then(|| Router::for_domain(dir, &domain).unwrap());
    let mut client =
        (kind == "client").then(|| Client::for_domain(dir, &domain, Timeouts::default()).unwrap());
    let want = |snapshot: &Snapshot| {
        if snapshot.servers[0].state == State::Up {
            (a, "a")
        } else {
            (b, "b")
        }
    };
    let mut counts = Counts::default();
    let (mut printed, mut raced) = (0, 0u64);
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < CHILD_LIFE {
        counts.loops += 1;
        let version = if let Some(router) = &mut router {
            let owner = router
                .owner(key.as_bytes(), libmcshm::clock::now_ms())
                .expect("a lookup");
            let snapshot = router.snapshot().clone();
            check(&snapshot, base, a, b).unwrap();
            let address = snapshot.servers[owner].address.to_string();
            assert_eq!(address, want(&snapshot).0, "version {}", snapshot.version);
            snapshot.version
        } else {
            let client = client.as_mut().unwrap();
            let before = client.snapshot().expect("a table").version;
            let got = client.get(key.as_bytes()).expect("a get");
            let after = client.snapshot().expect("a table");
            check(&after, base, a, b).unwrap();
            let value = got.map(|item| String::from_utf8_lossy(&item.value).into_owned());
            if before == after.version {
                assert_eq!(value.as_deref(), Some(want(&after).1), "version {before}");
            } else {
                raced += 1; // the table changed during the get: either value is right
                assert!(matches!(value.as_deref(), Some("a" | "b")), "{value:?}");
            }
            after.version
        };
        counts.answers += 1;
        let read = if counts.loops.is_multiple_of(16) {
            registry.read_uncached().map(Arc::new)
        } else {
            registry.current_snapshot()
        };
        match read {
            Ok(snapshot) => check(&snapshot, base, a, b).unwrap(),
            Err(err) => counts.error(&err),
        }
        if version > printed {
            println!("seen {version}");
            printed = version;
        }
        // Pacing, so that two readers, mcproxy and the test share two cores.
        std::thread::sleep(Duration::from_micros(100));
    }
    println!(
        "summary {kind}: {} loops, {} answers ({raced} across a change), {} faults caught, errors {:?}",
        counts.loops,
        counts.answers,
        libmcshm::registry::truncation_faults(),
        counts.errors,
    );
}

/// A reader child, its `seen` lines read as they come.
struct Reader {
    kind: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: u64,
    summary: Option<String>,
    stderr: Arc<Mutex<String>>,
}

impl Reader {
    fn start(reg: &Reg, kind: &'static str, key: &str, a: &str, b: &str, base: u64) -> Reader {
        let spec = format!("{}|{kind}|{key}|{a}|{b}|{base}", reg.dir().display());
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "truncation::reader_child", "--nocapture"])
            .arg("--test-threads=1")
            .env("MCSHM_TRUNCATION_READER", spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (pipe, text) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = text.lock().unwrap();
                if text.len() < 64 * 1024 {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        Reader {
            kind,
            child,
            lines,
            seen: 0,
            summary: None,
            stderr,
        }
    }

    /// One line of its stdout (the harness's `test … ` may begin the first one).
    fn take_line(&mut self, line: String) {
        if let Some((_, v)) = line.split_once("seen ") {
            self.seen = self.seen.max(v.trim().parse().unwrap());
        } else if let Some(at) = line.find("summary ") {
            self.summary = Some(line[at..].to_string());
        }
    }

    /// Waits (at most `limit`) until it has routed with `version` or a later one.
    fn wait_for(&mut self, version: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.seen < version {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => self.take_line(line),
                Err(_) if Instant::now() >= deadline => self.fail(&format!(
                    "did not see version {version} within {limit:?} (saw {})",
                    self.seen
                )),
                Err(_) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        self.fail(&format!("exited ({status})"));
                    }
                }
            }
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!(
            "the {} reader {what}:\n{}",
            self.kind,
            self.stderr.lock().unwrap()
        );
    }

    /// Closes its stdin (it stops), waits for it (bounded) and returns its summary.
    fn finish(mut self) -> String {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                self.fail("did not stop within 30 s");
            }
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => self.take_line(line),
                Err(_) => continue,
            }
        };
        // The rest of its stdout (the pipe closes with it; bounded all the same).
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.take_line(line);
        }
        if !status.success() {
            self.fail(&format!("exited ({status})"));
        }
        match self.summary.take() {
            Some(summary) => summary,
            None => self.fail("printed no summary"),
        }
    }
}

/// The value mcproxy must answer, as the test last confirmed it (`None` while a change is
/// being made), and a generation that moves with every setting.
type Expected = Arc<Mutex<(u64, Option<&'static str>)>>;

fn set(expected: &Expected, value: Option<&'static str>) {
    let mut e = expected.lock().unwrap();
    *e = (e.0 + 1, value);
}

/// What the thread asking mcproxy all along counted.
#[derive(Debug, Default)]
struct Asked {
    answers: u64,
    checked: u64,
    errors: BTreeMap<String, u64>,
    wrong: Vec<String>,
}

/// Asks mcproxy for `key` all along, on one connection: each reply must be the value the test
/// confirmed last (when no change was under way while it was asked), or a clear error line.
fn ask_all_along(
    address: String,
    key: String,
    expected: Expected,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Asked> {
    std::thread::spawn(move || {
        let mut wire = Wire::connect(&address);
        let mut asked = Asked::default();
        let started = Instant::now();
        let value = |v: &str| format!("VALUE {key} 0 1\r\n{v}\r\nEND\r\n");
        while !stop.load(Ordering::Relaxed) && started.elapsed() < CHILD_LIFE {
            let before = *expected.lock().unwrap();
            let reply = wire.ask(&format!("get {key}\r\n"));
            let after = *expected.lock().unwrap();
            asked.answers += 1;
            if reply.starts_with("SERVER_ERROR") || reply.starts_with("CLIENT_ERROR") {
                *asked
                    .errors
                    .entry(reply.trim_end().to_string())
                    .or_default() += 1;
            } else if let (Some(v), true) = (before.1, before == after) {
                asked.checked += 1;
                if reply != value(v) && asked.wrong.len() < 8 {
                    asked.wrong.push(format!("{reply:?}, not {v}"));
                }
            } else if reply != value("a") && reply != value("b") && asked.wrong.len() < 8 {
                asked.wrong.push(format!("{reply:?} during a change"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        asked
    })
}

#[test]
fn readers_and_mcproxy_survive_their_file_truncated_and_follow_it_restored() {
    if std::env::var_os("MCSHM_TRUNCATION_READER").is_some() {
        return; // a reader child runs `reader_child` only
    }
    let rounds = std::env::var("MCSHM_TRUNCATION_ROUNDS")
        .ok()
        .map_or(ROUNDS, |n| n.parse().expect("MCSHM_TRUNCATION_ROUNDS=N"));
    let seed = std::env::var("MCSHM_TRUNCATION_SEED")
        .ok()
        .map_or_else(libmcshm::monotonic_ns, |s| {
            s.parse().expect("MCSHM_TRUNCATION_SEED=S")
        });
    println!("{rounds} truncations, seed {seed} (MCSHM_TRUNCATION_SEED={seed} replays them)");
    let mut rng = Rng(seed | 1);

    let reg = Reg::new();
    let (a, b) = (Memcached::start(), Memcached::start());
    let (a_address, b_address) = (a.address(), b.address());
    reg.ok(DOMAIN, &["add", "--no-flush", &a_address, &b_address]);
    // Under rehash a key of A's is B's while A is down: each change moves the answer.
    reg.ok(DOMAIN, &["policy", "--failover", "rehash"]);
    let key = (0..10_000)
        .map(|i| format!("cut:{i}"))
        .find(|k| owner_port(&reg, k) == a.port)
        .expect("a key of A's");
    a.raw_set(&key, "a");
    b.raw_set(&key, "b");
    let base = reg.list_json(DOMAIN)["version"].as_u64().unwrap();

    let mut readers: Vec<Reader> = ["router", "client"]
        .into_iter()
        .map(|kind| Reader::start(&reg, kind, &key, &a_address, &b_address, base))
        .collect();
    for reader in &mut readers {
        reader.wait_for(base, FOLLOW_LIMIT);
    }
    // Each version of the test's must be one it made (A down, A up, ...): mcproxy's sweep of
    // the servers a rejoin under rehash marks would commit versions of its own.
    let mut proxy = Proxy::start(&reg, DOMAIN, &["--no-settle"]);
    let mut wire = proxy.connect();
    let get = format!("get {key}\r\n");
    let answer = |v: &str| format!("VALUE {key} 0 1\r\n{v}\r\nEND\r\n");
    assert_eq!(wire.ask(&get), answer("a"));
    let expected: Expected = Arc::new(Mutex::new((0, Some("a"))));
    let stop = Arc::new(AtomicBool::new(false));
    let asker = ask_all_along(
        proxy.address.clone(),
        key.clone(),
        expected.clone(),
        stop.clone(),
    );

    let path = reg.file(DOMAIN);
    let (mut version, mut a_up) = (base, true);
    let mut cuts: BTreeMap<u64, usize> = BTreeMap::new();
    let started = Instant::now();
    for round in 0..rounds {
        let bytes = std::fs::read(&path).unwrap();
        let len = bytes.len() as u64;
        let cut = [0, 8, 64, 4096, len / 2 / 8 * 8, len - 8][round % 6];
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(cut).unwrap();
        *cuts.entry(cut).or_default() += 1;
        // How long the file stays cut: the damage being injected, not a wait for anything.
        std::thread::sleep(Duration::from_millis(rng.below(MAX_CUT_MS + 1) as u64));
        file.write_all_at(&bytes, 0).unwrap();
        drop(file);

        // A change after the restore: every process must follow it.
        set(&expected, None);
        let value = if a_up {
            reg.ok(DOMAIN, &["down", &a_address]);
            "b"
        } else {
            reg.ok(DOMAIN, &["up", "--no-flush", &a_address]);
            "a"
        };
        (version, a_up) = (version + 1, !a_up);
        for reader in &mut readers {
            reader.wait_for(version, FOLLOW_LIMIT);
        }
        let followed = wait_until(FOLLOW_LIMIT, || wire.ask(&get) == answer(value));
        assert!(
            followed,
            "round {round}: mcproxy does not answer {value} after the change"
        );
        set(&expected, Some(value));
        if let Some(status) = proxy.wait_exit(Duration::ZERO) {
            panic!("round {round}: mcproxy exited ({status})");
        }
    }
    let elapsed = started.elapsed();

    stop.store(true, Ordering::Relaxed);
    let asked = asker.join().expect("the thread asking mcproxy");
    assert!(proxy.wait_exit(Duration::ZERO).is_none(), "mcproxy exited");
    let summaries: Vec<String> = readers.into_iter().map(Reader::finish).collect();
    println!(
        "{rounds} truncations in {:.1} s (to bytes: count {cuts:?})",
        elapsed.as_secs_f64()
    );
    for summary in &summaries {
        println!("{summary}");
    }
    println!(
        "mcproxy: {} answers, {} checked against the table, errors {:?}",
        asked.answers, asked.checked, asked.errors
    );
    assert!(
        asked.wrong.is_empty(),
        "mcproxy answered wrong: {:?}",
        asked.wrong
    );
    assert!(asked.checked > 0, "{asked:?}");
}
