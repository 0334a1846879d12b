//! The fleet's propagation time and what it costs, run by `bench/fleet.sh` (which starts a
//! 3-member etcd and one `mcadmin sync --all` agent per host directory):
//!
//! 1. from an acknowledged fleet edit (the transaction `mcadmin --etcd … set ADDR --weight N`
//!    runs: one server's weight, the domain's size unchanged) to the change being visible in
//!    the local table of every host;
//! 2. from a mark-down in one host's table (what a client does at its failure limit) to the
//!    other hosts' tables showing it (their clients route around the server from then on);
//! 3. what the edits cost: the agents' and etcd's CPU (utime + stime from `/proc`) over the
//!    edits, less what the same processes spend over a window without changes, which is
//!    reported too (host-record leases, re-established watches, the agents' ticks); etcd's
//!    memory, its watchers and the connections on its client ports.
//!
//! `propagation ENDPOINTS ROUNDS WORK [SERVERS [GAP_MS]]`: the domain has SERVERS servers
//! (default 50), so that every row sends the same document; ROUNDS weight changes, then as many
//! mark-downs (at most one per server), each once the one before has reached every host and
//! GAP_MS more have passed (default 0): with a gap longer than what a change sets off (the
//! agents' host records follow it by 1 to 2 s), each change meets a quiet fleet. WORK holds `agents.pids` (one agent per line; the
//! agent of line i mirrors into `WORK/host<i>`) and `etcd.pids` (the members, in the order of
//! ENDPOINTS). Every wait has a deadline; a change not seen by every host within it ends the
//! phase, and the hosts that missed it are named. Servers are closed loopback ports with retry
//! interval -1: nothing here ever connects to them.
//!
//! The tables are watched by polling each host's version word (a few ns per host) every
//! N µs (100 µs to 1 ms): one thread for any number of hosts, so that the driver's own cost
//! does not grow with a thread per host. The last line, `row …`, is what `bench/fleet.sh`
//! puts in its table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libmcshm::table::{CommitInfo, State};
use libmcshm::{Address, Domain, Registry, Server, Snapshot, edit};
use mcshm_fleet::{Etcd, EtcdConfig, Fleet};

/// How long one change may take to reach every host before the phase is given up.
const CHANGE_DEADLINE: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (endpoints, rounds, work, servers, gap) = match args.as_slice() {
        [e, r, w] => (e, r, w, "50", "0"),
        [e, r, w, s] => (e, r, w, s.as_str(), "0"),
        [e, r, w, s, g] => (e, r, w, s.as_str(), g.as_str()),
        _ => {
            eprintln!("usage: propagation ENDPOINTS ROUNDS WORK [SERVERS [GAP_MS]]");
            std::process::exit(2);
        }
    };
    let rounds: usize = rounds.parse().expect("ROUNDS");
    let servers: usize = servers.parse().expect("SERVERS");
    let gap = Duration::from_millis(gap.parse().expect("GAP_MS"));
    assert!((2..=60_000).contains(&servers), "2 to 60 000 servers");
    let work = PathBuf::from(work);
    let agents = read_pids(&work.join("agents.pids"));
    let members = read_pids(&work.join("etcd.pids"));
    let urls = EtcdConfig::parse_endpoints(endpoints).unwrap();
    let n = agents.len();
    let dirs: Vec<PathBuf> = (1..=n).map(|i| work.join(format!("host{i}"))).collect();
    let etcd = Etcd::new(EtcdConfig {
        endpoints: urls.clone(),
        timeout: Duration::from_secs(10),
        ..EtcdConfig::default()
    })
    .unwrap();
    let fleet = Fleet::new(etcd, "/mcshm/").unwrap();
    let domain = Domain::new("bench").unwrap();
    let started = Instant::now();

    // Every agent has written its host record: it reached etcd and its watches are set up
    // (the record is written after the first full read is handled, or within its tick).
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(60) * n as u32;
    loop {
        let up = fleet
            .etcd
            .list(&fleet.keys().hosts_prefix())
            .map_or(0, |(kvs, _)| kvs.len());
        if up >= n {
            break;
        }
        if Instant::now() > deadline {
            fail(&format!("only {up} of {n} agents wrote their host record"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "{n} agents registered in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The domain, all its servers at once, is created on every host; then the tables are
    // opened once.
    let seen_first = Instant::now();
    let revision = create(&fleet, &domain, servers);
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(60) * n as u32;
    let mut hosts = Vec::with_capacity(n);
    for dir in &dirs {
        loop {
            if let Ok(r) = Registry::open(dir, &domain) {
                hosts.push(r);
                break;
            }
            if Instant::now() > deadline {
                fail(&format!("no table in {}", dir.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut watch = Hosts::new(hosts);
    if let Err(missing) = watch.wait(|s| s.fleet_revision >= revision as u64, deadline) {
        fail(&format!("the domain never reached {}", names(&missing)));
    }
    println!(
        "domain created on every host in {:.1} s",
        seen_first.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));

    let procs = Procs {
        agents: agents.clone(),
        members: members.clone(),
        urls: urls.clone(),
    };

    // Edits.
    let before = procs.sample();
    let mut every = Vec::new();
    let mut half = Vec::new();
    for i in 1..=rounds {
        let revision = set_weight(&fleet, &domain, i % servers, (200 + i).min(65_535) as u16);
        let acknowledged = Instant::now();
        let deadline = acknowledged + CHANGE_DEADLINE;
        match watch.wait(|s| s.fleet_revision >= revision as u64, deadline) {
            Ok(times) => {
                every.push(times[times.len() - 1] - acknowledged);
                half.push(times[times.len() / 2] - acknowledged);
            }
            Err(missing) => {
                println!(
                    "change {i}: not seen within {CHANGE_DEADLINE:?} by {}",
                    names(&missing)
                );
                break;
            }
        }
        std::thread::sleep(gap);
    }
    // What the last change set off belongs to the edits: the agents write their host records
    // 1 to 2 s after a change (see fleet's sync/host.rs).
    std::thread::sleep(Duration::from_secs(3));
    let edits = procs.sample();

    // The same processes with nothing changing, at least 10 s (a host record is rewritten
    // every 2 s) and as long as the edits took, up to a minute.
    let idle_for = (edits.at - before.at).clamp(Duration::from_secs(10), Duration::from_secs(60));
    std::thread::sleep(idle_for);
    let idle = procs.sample();

    // Mark-downs on the first host, seen by the others.
    let mut down = Vec::new();
    let mut writer = Registry::open_writer(&dirs[0], &domain, false).unwrap();
    let others = n - 1;
    for i in 1..=rounds.min(every.len()).min(servers - 1) {
        let address = server_address(i);
        let marked = Instant::now();
        writer
            .transact(|t| {
                edit::set_down(
                    &mut t.servers,
                    std::slice::from_ref(&address),
                    "bench: failure limit",
                    true,
                    CommitInfo::now(),
                    "bench",
                )
            })
            .unwrap();
        let deadline = marked + CHANGE_DEADLINE;
        let result = watch.wait(
            |s| s.find(&address).is_some_and(|x| x.state == State::Down),
            deadline,
        );
        match result {
            Ok(times) => {
                down.push(times[times.len() - 1] - marked);
                std::thread::sleep(gap);
            }
            Err(missing) => {
                println!(
                    "mark-down {i}: not seen within {CHANGE_DEADLINE:?} by {}",
                    names(&missing)
                );
                break;
            }
        }
    }

    // Report.
    println!();
    let add_every = Stats::of(&mut every);
    let add_half = Stats::of(&mut half);
    let down_all = Stats::of(&mut down);
    println!("acknowledged weight change -> visible on all {n} hosts: {add_every}");
    println!("acknowledged weight change -> visible on half of the hosts: {add_half}");
    println!("mark-down on one host -> seen on the other {others}: {down_all}");

    let changes = every.len().max(1) as f64;
    let edit_s = (edits.at - before.at).as_secs_f64();
    let idle_s = (idle.at - edits.at).as_secs_f64();
    let agent_idle_rate = (idle.agents_cpu - edits.agents_cpu) / idle_s; // CPU s per s
    let etcd_idle_rate = (idle.etcd_cpu() - edits.etcd_cpu()) / idle_s;
    let agent_edit = (edits.agents_cpu - before.agents_cpu) - agent_idle_rate * edit_s;
    let etcd_edit = (edits.etcd_cpu() - before.etcd_cpu()) - etcd_idle_rate * edit_s;
    let per_agent_change_us = agent_edit / changes / n as f64 * 1e6;
    let etcd_change_ms = etcd_edit / changes * 1e3;
    let machine_idle = idle.machine_busy(&edits);
    let machine_edit = edits.machine_busy(&before);
    println!(
        "edits: {} changes in {edit_s:.1} s ({} ms apart once seen); machine busy {:.0} % of {} cores",
        every.len(),
        gap.as_millis(),
        machine_edit * 100.0,
        cores()
    );
    let (softirq, other) = edits.elsewhere(&before);
    println!(
        "  outside the processes measured: softirq {softirq:.2} CPU s/s, other {other:.2} CPU s/s (other load on the machine: a disturbed run if large)"
    );
    println!(
        "  agents' CPU per change, less idle: {:.1} ms in all, {per_agent_change_us:.0} µs per agent",
        agent_edit / changes * 1e3
    );
    println!("  etcd's CPU per change, less idle: {etcd_change_ms:.1} ms (3 members)");
    println!(
        "idle ({idle_s:.1} s, no change): agents {:.3} CPU s/s in all ({:.0} µs/s per agent), etcd {:.3} CPU s/s ({}), machine busy {:.0} %",
        agent_idle_rate,
        agent_idle_rate / n as f64 * 1e6,
        etcd_idle_rate,
        per_member(&edits, &idle, idle_s),
        machine_idle * 100.0
    );
    let (softirq_idle, other_idle) = idle.elsewhere(&edits);
    println!(
        "  outside the processes measured: softirq {softirq_idle:.2} CPU s/s, other {other_idle:.2} CPU s/s"
    );
    println!(
        "memory: agent RSS {:.1} MiB mean (PSS {:.1} MiB; {} of {n} alive); etcd RSS {}",
        idle.agent_rss_kib / 1024.0 / idle.agents_alive.max(1) as f64,
        idle.agent_pss_kib / 1024.0 / idle.agents_alive.max(1) as f64,
        idle.agents_alive,
        idle.members
            .iter()
            .map(|m| format!("{:.0}", m.rss_kib / 1024.0))
            .collect::<Vec<_>>()
            .join(" / ")
            + " MiB"
    );
    for (i, m) in idle.members.iter().enumerate() {
        println!(
            "etcd m{i}: {} client connections, {} watch streams, {} watchers ({} unsynced)",
            m.connections,
            m.metric("etcd_debugging_mvcc_watch_stream_total"),
            m.metric("etcd_debugging_mvcc_watcher_total"),
            m.metric("etcd_debugging_mvcc_slow_watcher_total"),
        );
    }
    println!("etcd counters per change (edits, less idle) and per second (idle), all members:");
    for name in COUNTERS {
        let during = edits.counter(name) - before.counter(name);
        let quiet = idle.counter(name) - edits.counter(name);
        let per_change = (during - quiet / idle_s * edit_s) / changes;
        println!(
            "  {name}: {per_change:.1} per change, {:.1}/s idle",
            quiet / idle_s
        );
    }
    for method in edits.grpc_methods() {
        let during = edits.grpc(&method) - before.grpc(&method);
        let quiet = idle.grpc(&method) - edits.grpc(&method);
        if during == 0.0 && quiet == 0.0 {
            continue;
        }
        let per_change = (during - quiet / idle_s * edit_s) / changes;
        println!(
            "  gRPC {method}: {per_change:.1} per change, {:.1}/s idle",
            quiet / idle_s
        );
    }
    let document = fleet
        .etcd
        .get(&fleet.domain_key(&domain), None)
        .ok()
        .and_then(|(kv, _)| kv)
        .map_or(0, |kv| kv.value.len());
    println!(
        "the domain's document (what each change sends every watcher): {document} bytes, {servers} servers"
    );
    println!(
        "driver (this process): {:.1} % of a core while watching the tables",
        (edits.own_cpu - before.own_cpu) / edit_s * 100.0
    );
    println!(
        "anchors: mcrouter config reload settles in ~1 s; ElastiCache auto-discovery polls every 60 s"
    );
    println!(
        "row hosts={n} changes={} doc_bytes={document} p50_ms={:.1} p99_ms={:.1} half_p50_ms={:.1} down_p50_ms={:.1} down_p99_ms={:.1} agent_us_per_change={per_agent_change_us:.0} etcd_ms_per_change={etcd_change_ms:.1} etcd_rss_mib={} agent_rss_mib={:.1} agent_pss_mib={:.1} watchers={} conns={} idle_agents_cpu={agent_idle_rate:.3} idle_etcd_cpu={etcd_idle_rate:.3} idle_machine_pct={:.0} edit_machine_pct={:.0} other_cpu={:.2}/{:.2}",
        every.len(),
        add_every.p50_ms(),
        add_every.p99_ms(),
        add_half.p50_ms(),
        down_all.p50_ms(),
        down_all.p99_ms(),
        idle.members
            .iter()
            .map(|m| format!("{:.0}", m.rss_kib / 1024.0))
            .collect::<Vec<_>>()
            .join("/"),
        idle.agent_rss_kib / 1024.0 / idle.agents_alive.max(1) as f64,
        idle.agent_pss_kib / 1024.0 / idle.agents_alive.max(1) as f64,
        idle.members
            .iter()
            .map(|m| m.metric("etcd_debugging_mvcc_watcher_total").to_string())
            .collect::<Vec<_>>()
            .join("/"),
        idle.members
            .iter()
            .map(|m| m.connections.to_string())
            .collect::<Vec<_>>()
            .join("/"),
        machine_idle * 100.0,
        machine_edit * 100.0,
        other,
        other_idle,
    );
    if every.len() < rounds {
        std::process::exit(1);
    }
}

/// etcd counters worth a line (summed over the members).
const COUNTERS: &[&str] = &[
    "etcd_server_proposals_committed_total",
    "etcd_mvcc_put_total",
    "etcd_mvcc_txn_total",
    "etcd_mvcc_range_total",
    "etcd_debugging_mvcc_events_total",
    "etcd_debugging_mvcc_db_compaction_keys_total",
    "etcd_disk_wal_fsync_duration_seconds_count",
];

fn fail(why: &str) -> ! {
    eprintln!("propagation: {why}");
    std::process::exit(1);
}

fn read_pids(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())))
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect()
}

/// Server `i` (ports from 2000 up: closed, never connected to).
fn server_address(i: usize) -> Address {
    Address::parse(&format!("127.0.0.1:{}", 2000 + i)).unwrap()
}

/// Creates the fleet's domain with `n` servers in one transaction; returns the revision
/// acknowledged.
fn create(fleet: &Fleet, domain: &Domain, n: usize) -> i64 {
    let servers: Vec<Server> = (0..n)
        .map(|i| Server {
            retry_interval: -1,
            ..Server::new(server_address(i))
        })
        .collect();
    fleet
        .transact(domain, true, "bench", |t| {
            edit::add(&mut t.servers, &servers, true, CommitInfo::now(), "bench")
        })
        .unwrap_or_else(|e| fail(&format!("create: {e}")))
        .revision
}

/// Sets server `i`'s weight (what `mcadmin --etcd … set ADDR --weight W` does); returns the
/// revision acknowledged.
fn set_weight(fleet: &Fleet, domain: &Domain, i: usize, weight: u16) -> i64 {
    let address = server_address(i);
    let commit = fleet
        .transact(domain, false, "bench", |t| {
            edit::modify(&mut t.servers, &address, Some(weight), None, "bench")
        })
        .unwrap_or_else(|e| fail(&format!("set weight: {e}")));
    if !commit.changed {
        fail("a weight change that changed nothing");
    }
    commit.revision
}

fn names(missing: &[usize]) -> String {
    let shown: Vec<String> = missing
        .iter()
        .take(10)
        .map(|i| format!("host{}", i + 1))
        .collect();
    let more = missing.len().saturating_sub(shown.len());
    match more {
        0 => shown.join(", "),
        _ => format!("{} and {more} more", shown.join(", ")),
    }
}

/// Every host's table, watched from one thread.
struct Hosts {
    tables: Vec<Registry>,
    poll: Duration,
}

impl Hosts {
    fn new(tables: Vec<Registry>) -> Hosts {
        let poll = Duration::from_micros(tables.len() as u64)
            .clamp(Duration::from_micros(100), Duration::from_millis(1));
        Hosts { tables, poll }
    }

    /// When each host first showed a table for which `done` holds, sorted; or the hosts
    /// (indexes) that did not by `deadline`.
    fn wait(
        &mut self,
        done: impl Fn(&Snapshot) -> bool,
        deadline: Instant,
    ) -> Result<Vec<Instant>, Vec<usize>> {
        let mut seen: Vec<Option<Instant>> = vec![None; self.tables.len()];
        let mut version = vec![u64::MAX; self.tables.len()];
        let mut left = self.tables.len();
        loop {
            for (i, table) in self.tables.iter_mut().enumerate() {
                if seen[i].is_some() {
                    continue;
                }
                let v = table.version();
                if v == version[i] {
                    continue;
                }
                version[i] = v;
                if table.snapshot().is_ok_and(|s| done(&s)) {
                    seen[i] = Some(Instant::now());
                    left -= 1;
                }
            }
            if left == 0 {
                let mut times: Vec<Instant> = seen.into_iter().flatten().collect();
                times.sort();
                return Ok(times);
            }
            if Instant::now() > deadline {
                return Err((0..seen.len()).filter(|&i| seen[i].is_none()).collect());
            }
            std::thread::sleep(self.poll);
        }
    }
}

struct Stats {
    sorted: Vec<Duration>,
}

impl Stats {
    fn of(samples: &mut [Duration]) -> Stats {
        samples.sort();
        Stats {
            sorted: samples.to_vec(),
        }
    }

    fn at(&self, q: f64) -> Option<Duration> {
        let n = self.sorted.len();
        (n > 0).then(|| self.sorted[((n as f64 * q) as usize).min(n - 1)])
    }

    fn p50_ms(&self) -> f64 {
        self.at(0.5).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }

    fn p99_ms(&self) -> f64 {
        self.at(0.99).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let max = self.at(1.0).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        write!(
            f,
            "n={} p50={:.2} ms p99={:.2} ms max={max:.2} ms",
            self.sorted.len(),
            self.p50_ms(),
            self.p99_ms()
        )
    }
}

/// The processes measured.
struct Procs {
    agents: Vec<u32>,
    members: Vec<u32>,
    urls: Vec<String>,
}

/// One look at the processes: CPU seconds so far, memory, etcd's metrics and connections.
struct Sample {
    at: Instant,
    agents_cpu: f64,
    agents_alive: usize,
    agent_rss_kib: f64,
    agent_pss_kib: f64,
    members: Vec<Member>,
    own_cpu: f64,
    /// The machine's busy, total and softirq jiffies (`/proc/stat`).
    machine: (u64, u64, u64),
}

struct Member {
    cpu: f64,
    rss_kib: f64,
    connections: usize,
    metrics: BTreeMap<String, f64>,
}

impl Member {
    fn metric(&self, name: &str) -> f64 {
        self.metrics.get(name).copied().unwrap_or(0.0)
    }
}

impl Procs {
    fn sample(&self) -> Sample {
        let mut agents_cpu = 0.0;
        let mut agents_alive = 0;
        let mut agent_rss_kib = 0.0;
        let mut agent_pss_kib = 0.0;
        for &pid in &self.agents {
            if let Some(cpu) = cpu_s(pid) {
                agents_cpu += cpu;
                agents_alive += 1;
                agent_rss_kib += status_kib(pid, "/status", "VmRSS:");
                agent_pss_kib += status_kib(pid, "/smaps_rollup", "Pss:");
            }
        }
        let members = self
            .members
            .iter()
            .zip(&self.urls)
            .map(|(&pid, url)| Member {
                cpu: cpu_s(pid).unwrap_or(0.0),
                rss_kib: status_kib(pid, "/status", "VmRSS:"),
                connections: established_on(port_of(url)),
                metrics: metrics(url),
            })
            .collect();
        Sample {
            at: Instant::now(),
            agents_cpu,
            agents_alive,
            agent_rss_kib,
            agent_pss_kib,
            members,
            own_cpu: cpu_s(std::process::id()).unwrap_or(0.0),
            machine: machine_jiffies(),
        }
    }
}

impl Sample {
    fn etcd_cpu(&self) -> f64 {
        self.members.iter().map(|m| m.cpu).sum()
    }

    fn counter(&self, name: &str) -> f64 {
        self.members.iter().map(|m| m.metric(name)).sum()
    }

    /// gRPC calls handled, by method (`grpc_server_handled_total`, every code).
    fn grpc(&self, method: &str) -> f64 {
        self.counter(&format!("grpc_server_handled_total/{method}"))
    }

    fn grpc_methods(&self) -> Vec<String> {
        let mut methods: Vec<String> = self
            .members
            .iter()
            .flat_map(|m| m.metrics.keys())
            .filter_map(|k| k.strip_prefix("grpc_server_handled_total/"))
            .map(String::from)
            .collect();
        methods.sort();
        methods.dedup();
        methods
    }

    /// CPU seconds per second between `earlier` and this sample spent outside the processes
    /// measured (the agents, etcd, this driver): the kernel's softirq work (loopback
    /// networking, mostly theirs) and, apart from it, anything else running on the machine.
    fn elsewhere(&self, earlier: &Sample) -> (f64, f64) {
        let seconds = (self.at - earlier.at).as_secs_f64();
        let busy = self.machine.0.saturating_sub(earlier.machine.0) as f64 / ticks_per_s();
        let softirq = self.machine.2.saturating_sub(earlier.machine.2) as f64 / ticks_per_s();
        let measured = (self.agents_cpu - earlier.agents_cpu)
            + (self.etcd_cpu() - earlier.etcd_cpu())
            + (self.own_cpu - earlier.own_cpu);
        (
            softirq / seconds,
            (busy - softirq - measured).max(0.0) / seconds,
        )
    }

    /// The machine's busy share between `earlier` and this sample.
    fn machine_busy(&self, earlier: &Sample) -> f64 {
        let busy = self.machine.0.saturating_sub(earlier.machine.0) as f64;
        let total = self.machine.1.saturating_sub(earlier.machine.1) as f64;
        if total > 0.0 { busy / total } else { 0.0 }
    }
}

fn per_member(earlier: &Sample, later: &Sample, seconds: f64) -> String {
    earlier
        .members
        .iter()
        .zip(&later.members)
        .enumerate()
        .map(|(i, (a, b))| format!("m{i} {:.3}", (b.cpu - a.cpu) / seconds))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `/proc`'s clock ticks (USER_HZ: 100 on every Linux architecture this runs on).
fn ticks_per_s() -> f64 {
    100.0
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// utime + stime of every thread of `pid` so far, seconds (`None`: the process is gone).
fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command's closing parenthesis: state is field 3, utime 14.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some((utime + stime) as f64 / ticks_per_s())
}

fn status_kib(pid: u32, file: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}{file}"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0.0)
}

fn machine_jiffies() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return (0, 0, 0);
    };
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total, v.get(6).copied().unwrap_or(0))
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// Established TCP connections whose local port is `port` (etcd's side of its clients').
fn established_on(port: u16) -> usize {
    let mut n = 0;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && f.get(3) == Some(&"01") {
                n += 1;
            }
        }
    }
    n
}

/// etcd's Prometheus page, summed by metric name (labels dropped), with
/// `grpc_server_handled_total` kept by method as `grpc_server_handled_total/METHOD`.
fn metrics(url: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(response) = ureq::get(&format!("{url}/metrics"))
        .timeout(Duration::from_secs(10))
        .call()
    else {
        return out;
    };
    let Ok(text) = response.into_string() else {
        return out;
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        *out.entry(name.to_string()).or_default() += value;
        if name == "grpc_server_handled_total"
            && let Some(method) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("grpc_method=\""))
        {
            let method = method.trim_end_matches(['"', '}']);
            *out.entry(format!("{name}/{method}")).or_default() += value;
        }
    }
    out
}
