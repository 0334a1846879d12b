//! What the proxy counts, and the two ways it tells: `stats` in memcached's format (for the
//! tools that already read memcached) and Prometheus' text format on `--metrics`. Counters are
//! relaxed atomics: a request costs a few uncontended increments, and a reader sees each
//! counter exact though not all at one instant.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bounds (µs) of the server latency histogram buckets.
const BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// One server, as the proxy sees it.
pub struct ServerStats {
    pub address: String,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub connections: AtomicI64,
    latency_us_sum: AtomicU64,
    buckets: [AtomicU64; BUCKETS_US.len()],
}

impl ServerStats {
    pub fn new(address: String) -> ServerStats {
        ServerStats {
            address,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            connections: AtomicI64::new(0),
            latency_us_sum: AtomicU64::new(0),
            buckets: Default::default(),
        }
    }

    /// One request to the server, answered (`ok`) or failed, after `took`.
    pub fn record(&self, took: Duration, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        self.latency_us_sum.fetch_add(us, Ordering::Relaxed);
        if let Some(b) = BUCKETS_US.iter().position(|&bound| us <= bound) {
            self.buckets[b].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The proxy's own counters, for one listening domain.
pub struct ProxyStats {
    pub domain: String,
    started: Instant,
    pub curr_connections: AtomicI64,
    pub total_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
    /// Idle connections closed at --max-connections to admit new ones.
    pub evicted_connections: AtomicU64,
    pub commands: AtomicU64,
    pub get_keys: AtomicU64,
    pub get_hits: AtomicU64,
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
    /// Clients closed for taking none of their replies for --client-timeout.
    pub clients_not_reading: AtomicU64,
    /// Server replies not used because the server's fence said this host's table is behind
    /// (see [`libmcshm::fence`]).
    pub fenced_answers: AtomicU64,
    pub servers: Mutex<Vec<Arc<ServerStats>>>,
}

impl ProxyStats {
    pub fn new(domain: String) -> ProxyStats {
        ProxyStats {
            domain,
            started: Instant::now(),
            curr_connections: AtomicI64::new(0),
            total_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            evicted_connections: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            get_keys: AtomicU64::new(0),
            get_hits: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            clients_not_reading: AtomicU64::new(0),
            fenced_answers: AtomicU64::new(0),
            servers: Mutex::new(Vec::new()),
        }
    }

    /// The counters of the server at `address`, shared by every worker thread.
    pub fn server(&self, address: &str) -> Arc<ServerStats> {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = servers.iter().find(|s| s.address == address) {
            return found.clone();
        }
        let created = Arc::new(ServerStats::new(address.to_string()));
        servers.push(created.clone());
        created
    }

    fn totals(&self) -> Vec<(&'static str, String)> {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        vec![
            ("pid", std::process::id().to_string()),
            ("uptime", self.started.elapsed().as_secs().to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("domain", self.domain.clone()),
            (
                "curr_connections",
                self.curr_connections.load(Ordering::Relaxed).to_string(),
            ),
            ("total_connections", n(&self.total_connections)),
            ("rejected_connections", n(&self.rejected_connections)),
            ("evicted_connections", n(&self.evicted_connections)),
            ("cmd_total", n(&self.commands)),
            ("get_keys", n(&self.get_keys)),
            ("get_hits", n(&self.get_hits)),
            ("client_errors", n(&self.client_errors)),
            ("server_errors", n(&self.server_errors)),
            ("clients_not_reading", n(&self.clients_not_reading)),
            ("fenced_answers", n(&self.fenced_answers)),
        ]
    }

    fn servers(&self) -> Vec<Arc<ServerStats>> {
        self.servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The `stats` reply: memcached's `STAT name value` lines, then `END`.
    pub fn memcached_text(&self) -> Vec<u8> {
        let mut out = String::new();
        for (name, value) in self.totals() {
            let _ = write!(out, "STAT {name} {value}\r\n");
        }
        for server in self.servers() {
            let requests = server.requests.load(Ordering::Relaxed);
            let sum = server.latency_us_sum.load(Ordering::Relaxed);
            let a = &server.address;
            let _ = write!(out, "STAT server:{a}:requests {requests}\r\n");
            let errors = server.errors.load(Ordering::Relaxed);
            let _ = write!(out, "STAT server:{a}:errors {errors}\r\n");
            let conns = server.connections.load(Ordering::Relaxed);
            let _ = write!(out, "STAT server:{a}:connections {conns}\r\n");
            let mean = sum.checked_div(requests).unwrap_or(0);
            let _ = write!(out, "STAT server:{a}:latency_mean_us {mean}\r\n");
        }
        out.push_str("END\r\n");
        out.into_bytes()
    }
}

/// The domain-wide counters and gauges as Prometheus names them (units in the name, counters
/// ending `_total`), from the `stats` names memcached's clients know: (stats name, metric,
/// type, help).
const FAMILIES: [(&str, &str, &str, &str); 12] = [
    (
        "uptime",
        "uptime_seconds",
        "gauge",
        "Seconds since mcproxy started",
    ),
    (
        "curr_connections",
        "connections",
        "gauge",
        "Client connections open now",
    ),
    (
        "total_connections",
        "connections_total",
        "counter",
        "Client connections accepted",
    ),
    (
        "rejected_connections",
        "rejected_connections_total",
        "counter",
        "Client connections refused (--max-connections)",
    ),
    (
        "evicted_connections",
        "evicted_connections_total",
        "counter",
        "Idle client connections closed at --max-connections to admit new ones",
    ),
    ("cmd_total", "commands_total", "counter", "Commands served"),
    (
        "get_keys",
        "get_keys_total",
        "counter",
        "Keys asked for by retrievals",
    ),
    (
        "get_hits",
        "get_hits_total",
        "counter",
        "Keys found by retrievals",
    ),
    (
        "client_errors",
        "client_errors_total",
        "counter",
        "Requests refused as malformed",
    ),
    (
        "server_errors",
        // Not mcproxy_server_errors_total: that is the per-server family's name (a second
        // HELP line for one name fails `promtool check metrics`).
        "server_error_replies_total",
        "counter",
        "Requests answered SERVER_ERROR",
    ),
    (
        "clients_not_reading",
        "clients_not_reading_total",
        "counter",
        "Clients closed for taking none of their replies for --client-timeout",
    ),
    (
        "fenced_answers",
        "fenced_answers_total",
        "counter",
        "Server replies not used: the server's fence is above this host's table",
    ),
];

/// Prometheus' text exposition format for every domain served: each family once, with its
/// HELP and TYPE lines, its samples labelled by domain (and server).
pub fn prometheus(domains: &[Arc<ProxyStats>]) -> String {
    let mut out = String::new();
    let totals: Vec<Vec<(&'static str, String)>> = domains.iter().map(|d| d.totals()).collect();
    for (stat, metric, kind, help) in FAMILIES {
        let _ = writeln!(out, "# HELP mcproxy_{metric} {help}");
        let _ = writeln!(out, "# TYPE mcproxy_{metric} {kind}");
        for (domain, values) in domains.iter().zip(&totals) {
            let d = &domain.domain;
            if let Some((_, value)) = values.iter().find(|(name, _)| *name == stat) {
                let _ = writeln!(out, "mcproxy_{metric}{{domain=\"{d}\"}} {value}");
            }
        }
    }
    let servers: Vec<(String, Arc<ServerStats>)> = domains
        .iter()
        .flat_map(|d| {
            d.servers().into_iter().map(move |s| {
                (
                    format!("domain=\"{}\",server=\"{}\"", d.domain, s.address),
                    s,
                )
            })
        })
        .collect();
    let family =
        |out: &mut String, name: &str, kind: &str, value: &dyn Fn(&ServerStats) -> String| {
            let help = match name {
                "requests_total" => "Requests sent to the server",
                "errors_total" => "Requests to the server that failed (connect, timeout, I/O)",
                _ => "Connections open to the server now",
            };
            let _ = writeln!(out, "# HELP mcproxy_server_{name} {help}");
            let _ = writeln!(out, "# TYPE mcproxy_server_{name} {kind}");
            for (labels, server) in &servers {
                let _ = writeln!(out, "mcproxy_server_{name}{{{labels}}} {}", value(server));
            }
        };
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
    family(&mut out, "requests_total", "counter", &|s| {
        load(&s.requests)
    });
    family(&mut out, "errors_total", "counter", &|s| load(&s.errors));
    family(&mut out, "connections", "gauge", &|s| {
        s.connections.load(Ordering::Relaxed).to_string()
    });
    let _ = writeln!(
        out,
        "# HELP mcproxy_server_latency_seconds Time from a request's send to its reply"
    );
    let _ = writeln!(out, "# TYPE mcproxy_server_latency_seconds histogram");
    for (labels, server) in &servers {
        let mut cumulative = 0;
        for (bound, count) in BUCKETS_US.iter().zip(&server.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "mcproxy_server_latency_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        let requests = server.requests.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "mcproxy_server_latency_seconds_bucket{{{labels},le=\"+Inf\"}} {requests}"
        );
        let sum = server.latency_us_sum.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "mcproxy_server_latency_seconds_sum{{{labels}}} {sum}");
        let _ = writeln!(
            out,
            "mcproxy_server_latency_seconds_count{{{labels}}} {requests}"
        );
    }
    out
}
