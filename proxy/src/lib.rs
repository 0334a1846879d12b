//! mcproxy's engine: a local memcached proxy over libmcshm domains, so that every memcached
//! client on the host — PHP, Python, anything that speaks the text protocol — uses the shared
//! server table, failure view and rejoin rules with no code change. Point the client at the
//! proxy's address; `mcproxy(8)` is the manual.
//!
//! Modules, from the bytes up: [`command`] and [`binary`] (what clients send, sans I/O),
//! [`libmcshm::proto::frame`] (framing what servers answer, sans I/O), [`worker`] (one event loop per thread,
//! owning everything below it), [`session`] (one client connection and its reply slots),
//! [`upstream`] (the worker's server connections), [`failure`] (why a request got no reply),
//! [`service`] (one domain: routing by mcshm-route's [`Router`](mcshm_route::Router) and its
//! sequences, the same as the blocking client's, executed directly or as [`jobs`]), [`stats`]. Requests never cross threads; tokio
//! runs only on the main thread (signals, the metrics page), and libmcshm's blocking path links
//! none of it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use libmcshm::{Domain, Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod binary;
mod buffer;
pub mod client_auth;
pub mod command;
pub mod failure;
pub mod jobs;
pub mod log;
mod peers;
mod reply_order;
pub mod service;
pub mod session;
pub mod stats;
mod stream;
mod sweeper;
pub mod upstream;
pub mod worker;

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
    /// Client connections one user may hold (0: no share; see mcproxy's
    /// --max-connections-per-uid).
    pub max_per_uid: usize,
    /// Connections the kernel queues on each listener before they are accepted (memcached's
    /// `-b`; the kernel caps it at net.core.somaxconn).
    pub backlog: u32,
    pub settings: Settings,
    /// How long a shutdown waits for requests in flight.
    pub shutdown_timeout: Duration,
    pub threads: usize,
    /// Sweep the domains' marked servers at this many keys per second when no watcher does
    /// (the `sweeper` module); `None`: never.
    pub settle_rate: Option<u32>,
}

/// Why the proxy could not start (the exit code is the caller's).
#[derive(Debug)]
pub enum StartError {
    /// The domain cannot be opened (missing, corrupt, no permission).
    Domain(libmcshm::Error),
    /// An address cannot be listened on.
    Listen(String),
}

pub use log::log;

/// Runs the proxy until SIGTERM or SIGINT; then it stops accepting, answers what it has read,
/// and returns.
///
/// One worker thread per CPU (`threads`), each one event loop ([`worker`]) with its own
/// clients, routers and server connections (`server_connections` divided among them, at least
/// one each), all accepting on the same sockets: a request is read, routed, sent, answered and
/// written by one thread, with no hand-over between threads (memcached's own worker model).
/// The main thread waits for signals and serves the metrics page.
pub fn run(config: Config, ready: impl FnOnce(&[String])) -> Result<(), StartError> {
    // Replies of a client that reads slowly are held in large buffers: they go back to the
    // kernel when freed, whatever came before (see `trim_after_bursts` for the rest).
    libmcshm::map_large_allocations_apart(LARGE_BUFFER);
    let threads = config.threads.max(1);
    let width = (config.server_connections / threads).max(1);
    let mut domains: Vec<(PathBuf, Domain, Arc<stats::ProxyStats>)> = Vec::new();
    let mut listeners: Vec<(StdListener, usize)> = Vec::new();
    let mut lines = Vec::new();
    let mut sockets = Vec::new();
    for (domain, listen) in &config.listen {
        let number = match domains.iter().position(|(_, d, _)| d == domain) {
            Some(n) => n,
            None => {
                // The domain must open now: a worker's own router opens it again.
                let mut router = mcshm_route::Router::for_domain(&config.dir, domain)
                    .map_err(StartError::Domain)?;
                router
                    .refresh(libmcshm::clock::now_ms())
                    .map_err(StartError::Domain)?;
                let stats = Arc::new(stats::ProxyStats::new(domain.to_string()));
                domains.push((config.dir.clone(), domain.clone(), stats));
                domains.len() - 1
            }
        };
        let listener = bind(listen, config.backlog)?;
        lines.push(format!(
            "serving domain '{domain}' on {}",
            listener.shown(listen)
        ));
        if let Listen::Unix(path) = listen {
            sockets.push(path.clone());
        }
        listeners.push((listener, number));
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
    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicI64::new(0));
    let mut handles = Vec::new();
    let mut wakers = Vec::new();
    let fail = |what: &str, e: std::io::Error| {
        StartError::Listen(format!("cannot start a worker ({what}): {e}"))
    };
    for n in 0..threads {
        let poll = mio::Poll::new().map_err(|e| fail("poll", e))?;
        wakers.push(mio::Waker::new(poll.registry(), worker::WAKER).map_err(|e| fail("waker", e))?);
        let mut own = Vec::new();
        for (listener, domain) in &listeners {
            own.push((listener.try_clone()?.into_mio(), *domain));
        }
        let setup = worker::Setup {
            poll,
            listeners: own,
            domains: domains.clone(),
            timeouts: config.timeouts,
            width,
            settings: config.settings.clone(),
            max_connections: config.max_connections,
            max_per_uid: config.max_per_uid,
            shutdown_timeout: config.shutdown_timeout,
            open: open.clone(),
            stop: stop.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("mcproxy-{n}"))
            .spawn(move || worker::run(setup));
        handles.push(spawned.map_err(|e| fail("thread", e))?);
    }
    drop(listeners);
    if let Some(rate) = config.settle_rate {
        let names = domains.iter().map(|(_, d, _)| d.clone()).collect();
        let sweeper = sweeper::spawn(
            config.dir.clone(),
            names,
            rate,
            config.timeouts,
            stop.clone(),
        );
        handles.push(sweeper.map_err(|e| fail("sweeper thread", e))?);
    }
    ready(&lines);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::Listen(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        if let Some(listener) = metrics
            && let Ok(listener) = tokio::net::TcpListener::from_std(listener)
        {
            let all = domains.iter().map(|(_, _, s)| s.clone()).collect();
            tokio::spawn(serve_metrics(listener, all));
        }
        let all = domains.iter().map(|(_, _, s)| s.clone()).collect();
        tokio::spawn(trim_after_bursts(all));
        let signal = wait_for_signal().await;
        log(format_args!(
            "{signal}: stopping (answering the requests already read, at most {:.1} s)",
            config.shutdown_timeout.as_secs_f64()
        ));
    });
    stop.store(true, Ordering::Release);
    for waker in &wakers {
        let _ = waker.wake();
    }
    for handle in handles {
        let _ = handle.join();
    }
    for path in sockets {
        let _ = std::fs::remove_file(path);
    }
    log(format_args!("stopped"));
    Ok(())
}

/// Gives memory back once clients go: the allocator keeps what closed connections freed
/// (glibc's per-thread arenas, and the large reply buffers it no longer maps apart once its
/// mmap threshold has grown), so without this RSS grows with every burst of connections, or
/// every client that left replies unread, and stays. Once a second, when connections closed
/// since the last look, the free heap is released (on the blocking pool: it walks every
/// arena, a few milliseconds). The same tick sums up the log messages it held back
/// ([`log::summarize`]).
/// Buffers of this size or more are mapped apart, and unmapped when freed (glibc's default
/// before it starts raising the threshold).
const LARGE_BUFFER: usize = 128 * 1024;

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
        log::summarize();
        let now = closed();
        if now > last {
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
    /// The listener for a worker's event loop.
    fn into_mio(self) -> worker::Listener {
        match self {
            StdListener::Tcp(l) => worker::Listener::Tcp(mio::net::TcpListener::from_std(l)),
            StdListener::Unix(l) => worker::Listener::Unix(mio::net::UnixListener::from_std(l)),
        }
    }

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

/// A listener on `listen`, non-blocking, with a queue of `backlog` connections (std's is 128:
/// a burst of 2 000 connects overflowed it, and the kernel reset what did not fit).
fn bind(listen: &Listen, backlog: u32) -> Result<StdListener, StartError> {
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
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    // listen(2) again on a listening socket sets its queue's length (Linux).
    match &listener {
        StdListener::Tcp(l) => {
            l.set_nonblocking(true).map_err(fail)?;
            socket2::SockRef::from(l).listen(backlog).map_err(fail)?;
        }
        StdListener::Unix(l) => {
            l.set_nonblocking(true).map_err(fail)?;
            socket2::SockRef::from(l).listen(backlog).map_err(fail)?;
        }
    }
    Ok(listener)
}

/// Waits for SIGTERM or SIGINT, and names the one that came.
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
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
