//! The host as metrics: every domain of a registry directory as one page of Prometheus' text
//! format, for a monitoring system to graph and alert on (issue 32: "which servers are down
//! and why, failures per server, marks, the table's version and, in a fleet, whether this host
//! lags the others").
//!
//! Why here, and why from the files: everything the page says is already in the registry,
//! shared by every process on the host (the table, the failure counts of the live region, the
//! clients records, the invalidation log, the fleet agent's link), so any process can write the
//! page without asking the others, and two writers of it (`mcadmin metrics` for node_exporter's
//! textfile collector, `mcadmin watch --metrics` over HTTP) cannot disagree: both call
//! [`host_page`]. Reading is what `mcadmin list` and `clients` do: no lock, no write (dead
//! processes' clients records are left for a writer to free).
//!
//! Modules: [`exposition`] (the format: families once, with HELP and TYPE, labels escaped),
//! [`http`] (the minimal server of `watch --metrics`). The families, and what each sample
//! means, are [`FAMILIES`]; the README's Monitoring section shows a page.
//!
//! What the files do not record is not invented: the consecutive failures of a server are a
//! count since its last answer (the live region keeps no running total), and a host's lag
//! behind the fleet is not known on the host (the agent records the revision it applied, not
//! the newest one): compare `mcshm_fleet_revision` across hosts (`contrib/mcshm-alerts.yml`
//! does), and watch `mcshm_fleet_agent_connected`.

pub mod exposition;
pub mod http;

use std::path::Path;
use std::sync::Arc;

use mcshm_table::domain::{Domain, FILE_SUFFIX};
use mcshm_table::error::Result;
use mcshm_table::registry::{AgentLink, Invalidations, LogStats, Registry};
use mcshm_table::table::{Snapshot, State};

use exposition::{Family, Kind, Page};

const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Gauge,
        help,
    }
}

/// The page's families, in the order written. Every sample is labelled `domain`; the
/// `mcshm_server_*` ones `server` too (its address as `mcadmin list` shows it).
pub const FAMILIES: &[Family] = &[
    gauge(
        "mcshm_table_readable",
        "Whether the domain's table could be read (0: unreadable or damaged; its other series are absent)",
    ),
    gauge(
        "mcshm_table_version",
        "The version of the domain's table (one more at every change)",
    ),
    gauge(
        "mcshm_table_change_timestamp_seconds",
        "When the table's current version was committed, in seconds since the Unix epoch",
    ),
    gauge("mcshm_table_servers", "Servers in the domain's table"),
    gauge(
        "mcshm_domain_processes",
        "Processes on this host that have the domain open (what mcadmin clients lists)",
    ),
    gauge(
        "mcshm_domain_policy_info",
        "The domain's client policy, in its labels (always 1)",
    ),
    gauge(
        "mcshm_server_up",
        "Whether the server is up (1) or down or draining (0)",
    ),
    gauge(
        "mcshm_server_state",
        "The server's state: 1 for the state it is in, 0 for the others",
    ),
    gauge(
        "mcshm_server_held_down",
        "Whether an operator holds the server down (1: only mcadmin up brings it back; 0: up, draining, or down after failures and retried)",
    ),
    gauge(
        "mcshm_server_state_change_timestamp_seconds",
        "When the server entered its state, in seconds since the Unix epoch",
    ),
    gauge("mcshm_server_weight", "The server's weight (share of keys)"),
    gauge(
        "mcshm_server_consecutive_failures",
        "Connect, timeout or I/O failures in a row counted on this host since the server last answered (at the domain's failure limit it is marked down)",
    ),
    gauge(
        "mcshm_server_marked",
        "Whether the server may hold stale copies of keys it no longer owns (a coherence mark: writes delete their keys there too until mcadmin settle sweeps it)",
    ),
    gauge(
        "mcshm_server_missed_keys",
        "Writes the server missed while down, in the domain's invalidation log (its rejoin under replay deletes them); only for domains that keep a log",
    ),
    gauge(
        "mcshm_server_missed_bytes",
        "Bytes of the domain's invalidation log the server's missed writes take",
    ),
    gauge(
        "mcshm_server_missed_overflowed",
        "Whether the down server's invalidation log overflowed (1: it will be flushed when it comes back; 0 for a server that is not down)",
    ),
    gauge(
        "mcshm_server_buckets",
        "Buckets the server owns in a vbucket domain's map (a staged move counts for its new owner)",
    ),
    gauge(
        "mcshm_server_replica_buckets",
        "Buckets the server holds a replica column of in a vbucket domain's map",
    ),
    gauge(
        "mcshm_server_buckets_moving_off",
        "Buckets staged to move off the server (mcadmin buckets move, balance or load) whose moves have not completed",
    ),
    gauge(
        "mcshm_server_buckets_moving_on",
        "Buckets staged to move onto the server whose moves have not completed",
    ),
    gauge(
        "mcshm_bucket_map_buckets",
        "Buckets in a vbucket domain's map",
    ),
    gauge(
        "mcshm_bucket_map_moving",
        "Buckets of the map staged to move and not completed (left so by an interrupted move until mcadmin buckets finish)",
    ),
    gauge(
        "mcshm_bucket_map_unassigned",
        "Buckets of the map no server owns: their keys have no server until mcadmin buckets balance or load assigns them",
    ),
    gauge(
        "mcshm_fleet_revision",
        "The fleet revision of the domain this host's table mirrors (only for domains mirrored from the fleet)",
    ),
    gauge(
        "mcshm_fleet_agent_running",
        "Whether the fleet agent (mcadmin sync) that mirrors the domain is running",
    ),
    gauge(
        "mcshm_fleet_agent_connected",
        "Whether the fleet agent reached etcd at its last attempt (0: cut off, this host serves its last table)",
    ),
    gauge(
        "mcshm_fleet_agent_link_change_timestamp_seconds",
        "Since when the fleet agent is connected to, or cut off from, etcd, in seconds since the Unix epoch",
    ),
    Family {
        name: "mcshm_fenced_answers_total",
        kind: Kind::Counter,
        help: "Answers of the domain's servers that the library's clients on this host did not use because the server's fence was above their table (the host lagged the fleet; wraps at 2^32)",
    },
];

/// What the page says of one domain, read from its files.
#[derive(Clone, Debug)]
pub struct DomainMetrics {
    pub snapshot: Arc<Snapshot>,
    /// Consecutive failures of each server (from the live region), in table order.
    pub failures: Vec<u32>,
    /// Each server's invalidation log, in table order, when the domain keeps one.
    pub log: Option<Vec<LogStats>>,
    /// Processes that have the domain open.
    pub processes: usize,
    pub agent: AgentLink,
}

/// Every domain in `dir` (its `*.mcshm` files whose names are domain names; none when `dir`
/// does not exist), sorted by name.
pub fn domains_in(dir: &Path) -> std::io::Result<Vec<Domain>> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other?,
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        // A FIFO, socket or device named like a table is no domain (a symlink is reported).
        if entry
            .file_type()
            .is_ok_and(|t| !t.is_file() && !t.is_symlink())
        {
            continue;
        }
        let name = entry.file_name();
        if let Some(domain) = name
            .to_str()
            .and_then(|n| n.strip_suffix(FILE_SUFFIX))
            .and_then(|n| Domain::new(n).ok())
        {
            found.push(domain);
        }
    }
    found.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(found)
}

/// Reads what the page says of each of `domains` in `dir` (the processes that map their
/// files found in one walk of /proc).
pub fn collect(dir: &Path, domains: &[Domain]) -> Vec<(Domain, Result<DomainMetrics>)> {
    let files: Vec<std::path::PathBuf> = domains.iter().map(|d| d.path_in(dir)).collect();
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let mapping = mcshm_table::processes::processes_mapping_each(&paths);
    domains
        .iter()
        .zip(mapping)
        .map(|(domain, mapping)| (domain.clone(), read_domain(dir, domain, &mapping)))
        .collect()
}

fn read_domain(
    dir: &Path,
    domain: &Domain,
    mapping: &[mcshm_table::processes::ProcessRecord],
) -> Result<DomainMetrics> {
    let mut registry = Registry::open(dir, domain)?;
    let snapshot = registry.snapshot()?;
    let live = registry.live();
    let failures = snapshot.servers.iter().map(|s| live.failures(s)).collect();
    let records = registry.process_records();
    let unrecorded = mapping
        .iter()
        .filter(|p| !records.iter().any(|r| r.pid == p.pid))
        .count();
    let log = Invalidations::open(dir, domain)
        .ok()
        .flatten()
        .map(|log| snapshot.servers.iter().map(|s| log.stats(s.id)).collect());
    Ok(DomainMetrics {
        failures,
        log,
        processes: records.len() + unrecorded,
        agent: registry.agent_link(),
        snapshot,
    })
}

/// The page of `domains` as read by [`collect`].
pub fn render(domains: &[(Domain, Result<DomainMetrics>)]) -> String {
    let mut page = Page::new(FAMILIES);
    for (domain, read) in domains {
        let d = domain.as_str();
        let Ok(m) = read else {
            page.add("mcshm_table_readable", &[("domain", d)], false);
            continue;
        };
        let s = &m.snapshot;
        page.add("mcshm_table_readable", &[("domain", d)], true);
        page.add("mcshm_table_version", &[("domain", d)], s.version);
        page.add(
            "mcshm_table_change_timestamp_seconds",
            &[("domain", d)],
            seconds(s.changed_ms),
        );
        page.add("mcshm_table_servers", &[("domain", d)], s.servers.len());
        page.add("mcshm_domain_processes", &[("domain", d)], m.processes);
        let p = &s.policy;
        let (replicas, limit) = (p.replicas.to_string(), p.failure_limit.to_string());
        page.add(
            "mcshm_domain_policy_info",
            &[
                ("domain", d),
                ("distribution", p.distribution.as_str()),
                ("hash", p.distribution.hash_name()),
                ("failover", p.failover.as_str()),
                ("rejoin", p.rejoin.as_str()),
                ("replicas", &replicas),
                ("failure_limit", &limit),
            ],
            1u8,
        );
        let buckets = s.buckets.as_ref().map(|map| {
            let labels = [("domain", d)];
            page.add("mcshm_bucket_map_buckets", &labels, map.buckets());
            page.add("mcshm_bucket_map_moving", &labels, map.moving());
            page.add("mcshm_bucket_map_unassigned", &labels, map.unassigned());
            (
                map.counts(s.servers.len()),
                map.moving_counts(s.servers.len()),
            )
        });
        for (n, server) in s.servers.iter().enumerate() {
            let address = server.address.to_string();
            let labels = [("domain", d), ("server", address.as_str())];
            page.add("mcshm_server_up", &labels, server.state == State::Up);
            for state in [State::Up, State::Down, State::Draining] {
                page.add(
                    "mcshm_server_state",
                    &[
                        ("domain", d),
                        ("server", &address),
                        ("state", state.as_str()),
                    ],
                    server.state == state,
                );
            }
            page.add(
                "mcshm_server_held_down",
                &labels,
                server.state == State::Down && server.held,
            );
            page.add(
                "mcshm_server_state_change_timestamp_seconds",
                &labels,
                seconds(server.since_ms),
            );
            page.add("mcshm_server_weight", &labels, server.weight);
            page.add(
                "mcshm_server_consecutive_failures",
                &labels,
                m.failures.get(n).copied().unwrap_or(0),
            );
            page.add("mcshm_server_marked", &labels, server.strays_since != 0);
            if let Some((counts, (off, on))) = &buckets {
                page.add("mcshm_server_buckets", &labels, counts[n].0);
                page.add("mcshm_server_replica_buckets", &labels, counts[n].1);
                page.add("mcshm_server_buckets_moving_off", &labels, off[n]);
                page.add("mcshm_server_buckets_moving_on", &labels, on[n]);
            }
            if let Some(stats) = m.log.as_ref().and_then(|log| log.get(n)) {
                page.add("mcshm_server_missed_keys", &labels, stats.keys);
                page.add("mcshm_server_missed_bytes", &labels, stats.bytes);
                // What overflowing means (a flush at the rejoin) is a down server's: an up
                // one's log is empty, or being replayed (and a log every server shares the
                // state of, `unlogged`, says nothing of it).
                let flushed = stats.overflowed && server.state == State::Down;
                page.add("mcshm_server_missed_overflowed", &labels, flushed);
            }
        }
        if s.fleet_revision != 0 || m.agent.agent.is_some() {
            let labels = [("domain", d)];
            page.add("mcshm_fleet_revision", &labels, s.fleet_revision);
            page.add(
                "mcshm_fleet_agent_running",
                &labels,
                m.agent.agent.is_some_and(|p| p.is_alive()),
            );
            page.add("mcshm_fleet_agent_connected", &labels, m.agent.connected);
            page.add(
                "mcshm_fenced_answers_total",
                &labels,
                m.agent.fenced_answers,
            );
            if m.agent.since_ms != 0 {
                page.add(
                    "mcshm_fleet_agent_link_change_timestamp_seconds",
                    &labels,
                    seconds(m.agent.since_ms),
                );
            }
        }
    }
    page.render()
}

/// The page of `domains` in `dir`, or of every domain there (`None`, as listed when the page
/// is made: a domain created since the last page is on the next).
pub fn host_page(dir: &Path, domains: Option<&[Domain]>) -> std::io::Result<String> {
    let all;
    let domains = match domains {
        Some(domains) => domains,
        None => {
            all = domains_in(dir)?;
            &all
        }
    };
    Ok(render(&collect(dir, domains)))
}

/// Milliseconds since the epoch as seconds.
fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}
