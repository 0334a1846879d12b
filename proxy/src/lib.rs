//! mcproxy's engine: a local memcached proxy over libmcshm domains, so that every memcached
//! client on the host — PHP, Python, anything that speaks the text protocol — uses the shared
//! server table, failure view and rejoin rules with no code change. Point the client at the
//! proxy's address; `mcproxy(8)` is the manual.
//!
//! Modules, from the bytes up: [`command`] (what clients send, sans I/O), [`reply`] (framing
//! what servers answer, sans I/O), [`upstream`] (shared, pipelined server connections),
//! [`service`] (one domain: routing by libmcshm's [`Router`](libmcshm::client::Router), the
//! same decisions as the blocking client), [`session`] (one client connection), [`stats`].
//! This crate is the only one that links tokio; libmcshm's blocking path links none of it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use libmcshm::{Domain, Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

pub mod binary;
pub mod client_auth;
pub mod command;
pub mod reply;
pub mod service;
pub mod session;
pub mod stats;
pub mod upstream;

pub use session::Settings;

/// Where the proxy listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Listen {
    /// `host:port`, `[v6]:port`, or `unix:/path`.
    pub fn parse(text: &str) -> Result<Listen, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!(
                    "'{text}': a unix socket path must be absolute (unix:/run/mcshm/app.sock)"
                ));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        text.parse::<SocketAddr>().map(Listen::Tcp).map_err(|_| {
            format!("'{text}' is not a listen address: expected IP:PORT (127.0.0.1:11211, [::1]:11211) or unix:/PATH")
        })
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "{addr}"),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Everything `mcproxy` was asked to do.
#[derive(Clone, Debug)]
pub struct Config {
    pub dir: PathBuf,
    /// Which domain each address serves.
    pub listen: Vec<(Domain, Listen)>,
    pub metrics: Option<SocketAddr>,
    pub timeouts: Timeouts,
    /// Connections per server.
    pub server_connections: usize,
    pub max_connections: usize,
    pub settings: Settings,
    /// How long a shutdown waits for requests in flight.
    pub shutdown_timeout: Duration,
    pub threads: usize,
}

/// Why the proxy could not start (the exit code is the caller's).
#[derive(Debug)]
pub enum StartError {
    /// The domain cannot be opened (missing, corrupt, no permission).
    Domain(libmcshm::Error),
    /// An address cannot be listened on.
    Listen(String),
}

/// Runs the proxy until SIGTERM or SIGINT; then it stops accepting, answers what it has read,
/// and returns.
///
/// One worker thread per CPU (`threads`), each with its own single-threaded runtime, its own
/// sessions, router and server connections (`server_connections` divided among them, at least
/// one each), all accepting on the same sockets: a request is read, routed, sent, answered and
/// written by one thread, with no hand-over between threads (memcached's own worker model).
/// The main thread waits for signals and serves the metrics page.
pub fn run(config: Config, ready: impl FnOnce(&[String])) -> Result<(), StartError> {
    let threads = config.threads.max(1);
    let width = (config.server_connections / threads).max(1);
    let mut domains: Vec<(String, Arc<stats::ProxyStats>)> = Vec::new();
    let mut workers: Vec<Vec<(StdListener, Arc<service::Service>)>> =
        (0..threads).map(|_| Vec::new()).collect();
    let mut services: Vec<Vec<(String, Arc<service::Service>)>> =
        (0..threads).map(|_| Vec::new()).collect();
    let mut lines = Vec::new();
    let mut sockets = Vec::new();
    for (domain, listen) in &config.listen {
        let stats = match domains.iter().find(|(d, _)| d == domain.as_str()) {
            Some((_, stats)) => stats.clone(),
            None => {
                let stats = Arc::new(stats::ProxyStats::new(domain.to_string()));
                domains.push((domain.to_string(), stats.clone()));
                stats
            }
        };
        let listener = bind(listen)?;
        lines.push(format!(
            "serving domain '{domain}' on {}",
            listener.shown(listen)
        ));
        if let Listen::Unix(path) = listen {
            sockets.push(path.clone());
        }
        for (worker, services) in workers.iter_mut().zip(&mut services) {
            let service = match services.iter().find(|(d, _)| d == domain.as_str()) {
                Some((_, service)) => service.clone(),
                None => {
                    let service = service::Service::new(
                        &config.dir,
                        domain,
                        config.timeouts,
                        width,
                        stats.clone(),
                    )
                    .map_err(StartError::Domain)?;
                    let service = Arc::new(service);
                    services.push((domain.to_string(), service.clone()));
                    service
                }
            };
            worker.push((listener.try_clone()?, service));
        }
    }
    let metrics = match config.metrics {
        Some(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| StartError::Listen(format!("cannot serve metrics on {addr}: {e}")))?;
            if let Ok(bound) = listener.local_addr() {
                lines.push(format!("metrics on http://{bound}/metrics"));
            }
            Some(listener)
        }
        None => None,
    };
    ready(&lines);

    let (stop, stopped) = watch::channel(false);
    let open = Arc::new(AtomicI64::new(0));
    let mut handles = Vec::new();
    for (n, listeners) in workers.into_iter().enumerate() {
        let (config, open, stopped) = (config.clone(), open.clone(), stopped.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("mcproxy-{n}"))
            .spawn(move || worker(listeners, config, open, stopped));
        handles
            .push(spawned.map_err(|e| StartError::Listen(format!("cannot start a worker: {e}")))?);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::Listen(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        if let Some(listener) = metrics
            && let Ok(listener) = tokio::net::TcpListener::from_std(listener)
        {
            let all = domains.iter().map(|(_, s)| s.clone()).collect();
            tokio::spawn(serve_metrics(listener, all));
        }
        let all = domains.iter().map(|(_, s)| s.clone()).collect();
        tokio::spawn(trim_after_bursts(all));
        wait_for_signal().await;
    });
    let _ = stop.send(true);
    for handle in handles {
        let _ = handle.join();
    }
    for path in sockets {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Connections closed since the last trim that make the heap worth trimming.
const TRIM_AFTER_CLOSED: u64 = 256;

/// Gives memory back after bursts of connections: the allocator keeps what closed connections
/// freed (glibc's per-thread arenas), so without this RSS grows with every burst and stays.
/// Once a second, when at least [`TRIM_AFTER_CLOSED`] connections closed since the last look,
/// the free heap is released (on the blocking pool: it walks every arena).
async fn trim_after_bursts(domains: Vec<Arc<stats::ProxyStats>>) {
    let closed = || -> u64 {
        domains
            .iter()
            .map(|s| {
                let total = s.total_connections.load(Ordering::Relaxed);
                let open = s.curr_connections.load(Ordering::Relaxed).max(0) as u64;
                total.saturating_sub(open)
            })
            .sum()
    };
    let mut last = closed();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = closed();
        if now.saturating_sub(last) >= TRIM_AFTER_CLOSED {
            last = now;
            let _ = tokio::task::spawn_blocking(libmcshm::release_free_heap).await;
        }
    }
}

/// A bound listening socket, before a runtime takes it.
enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl StdListener {
    fn try_clone(&self) -> Result<StdListener, StartError> {
        let fail = |e: std::io::Error| StartError::Listen(format!("cannot share a listener: {e}"));
        Ok(match self {
            StdListener::Tcp(l) => StdListener::Tcp(l.try_clone().map_err(fail)?),
            StdListener::Unix(l) => StdListener::Unix(l.try_clone().map_err(fail)?),
        })
    }

    /// The address as bound (a port 0 becomes the one the kernel chose).
    fn shown(&self, asked: &Listen) -> Listen {
        match self {
            StdListener::Tcp(l) => l.local_addr().map_or(asked.clone(), Listen::Tcp),
            StdListener::Unix(_) => asked.clone(),
        }
    }
}

fn bind(listen: &Listen) -> Result<StdListener, StartError> {
    let fail = |e: std::io::Error| StartError::Listen(format!("cannot listen on {listen}: {e}"));
    let listener = match listen {
        Listen::Tcp(addr) => StdListener::Tcp(std::net::TcpListener::bind(addr).map_err(fail)?),
        Listen::Unix(path) => {
            // A socket file left by a proxy that is gone: nobody accepts on it any more.
            if std::os::unix::net::UnixStream::connect(path).is_err()
                && std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                let _ = std::fs::remove_file(path);
            }
            StdListener::Unix(std::os::unix::net::UnixListener::bind(path).map_err(fail)?)
        }
    };
    match &listener {
        StdListener::Tcp(l) => l.set_nonblocking(true).map_err(fail)?,
        StdListener::Unix(l) => l.set_nonblocking(true).map_err(fail)?,
    }
    Ok(listener)
}

/// One worker thread: its own runtime, accepting on every listener until the stop, then
/// waiting (bounded) for the sessions to answer what they read.
fn worker(
    listeners: Vec<(StdListener, Arc<service::Service>)>,
    config: Config,
    open: Arc<AtomicI64>,
    stopped: watch::Receiver<bool>,
) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("mcproxy: cannot start a worker runtime");
        return;
    };
    runtime.block_on(async {
        let mut accepting = Vec::new();
        for (listener, service) in listeners {
            let listener = match listener {
                StdListener::Tcp(l) => tokio::net::TcpListener::from_std(l).map(Listener::Tcp),
                StdListener::Unix(l) => tokio::net::UnixListener::from_std(l).map(Listener::Unix),
            };
            let Ok(listener) = listener else { continue };
            let task = accept(
                listener,
                service,
                config.clone(),
                open.clone(),
                stopped.clone(),
            );
            accepting.push(tokio::spawn(task));
        }
        for task in accepting {
            let _ = task.await;
        }
        let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
        while open.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn accept(
    listener: Listener,
    service: Arc<service::Service>,
    config: Config,
    open: Arc<AtomicI64>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => break,
            accepted = accept_one(&listener) => accepted,
        };
        let Some(stream) = accepted else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let stats = service.stats.clone();
        // Admission is one atomic step: worker threads accept at the same time.
        if open.fetch_add(1, Ordering::AcqRel) >= config.max_connections as i64 {
            open.fetch_sub(1, Ordering::AcqRel);
            stats.rejected_connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let (_reader, mut writer) = stream;
                let _ = writer
                    .write_all(b"ERROR Too many open connections\r\n")
                    .await;
                let _ = writer.shutdown().await;
            });
            continue;
        }
        stats.curr_connections.fetch_add(1, Ordering::Relaxed);
        stats.total_connections.fetch_add(1, Ordering::Relaxed);
        let (service, open, stopped) = (service.clone(), open.clone(), stopped.clone());
        let settings = config.settings.clone();
        let lane = stats.total_connections.load(Ordering::Relaxed) as usize;
        tokio::spawn(async move {
            let (reader, writer) = stream;
            session::serve(reader, writer, service, settings, lane, stopped).await;
            stats.curr_connections.fetch_sub(1, Ordering::Relaxed);
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// A client connection's two halves (owned halves: no lock between reading and writing).
type Halves = (
    Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
);

async fn accept_one(listener: &Listener) -> Option<Halves> {
    match listener {
        Listener::Tcp(l) => {
            let (stream, _) = l.accept().await.ok()?;
            let _ = stream.set_nodelay(true);
            let (r, w) = stream.into_split();
            Some((Box::new(r), Box::new(w)))
        }
        Listener::Unix(l) => {
            let (r, w) = l.accept().await.ok()?.0.into_split();
            Some((Box::new(r), Box::new(w)))
        }
    }
}

/// `GET /metrics` in Prometheus' text format; anything else is 404.
async fn serve_metrics(listener: tokio::net::TcpListener, domains: Vec<Arc<stats::ProxyStats>>) {
    let domains = Arc::new(domains);
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let domains = domains.clone();
        tokio::spawn(async move {
            let mut request = vec![0u8; 4096];
            let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await
            else {
                return;
            };
            let first = request[..n]
                .split(|&b| b == b'\n')
                .next()
                .unwrap_or_default();
            let (status, body) =
                if first.starts_with(b"GET /metrics ") || first.starts_with(b"GET / ") {
                    ("200 OK", stats::prometheus(&domains))
                } else {
                    ("404 Not Found", "try GET /metrics\n".to_string())
                };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
