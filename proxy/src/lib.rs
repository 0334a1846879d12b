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
pub fn run(config: Config, ready: impl FnOnce(&[String])) -> Result<(), StartError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| StartError::Listen(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(serve(config, ready))
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

async fn bind(listen: &Listen) -> Result<Listener, StartError> {
    let fail = |e: std::io::Error| StartError::Listen(format!("cannot listen on {listen}: {e}"));
    match listen {
        Listen::Tcp(addr) => Ok(Listener::Tcp(
            tokio::net::TcpListener::bind(addr).await.map_err(fail)?,
        )),
        Listen::Unix(path) => {
            // A socket file left by a proxy that is gone: nobody accepts on it any more.
            if std::os::unix::net::UnixStream::connect(path).is_err()
                && std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                let _ = std::fs::remove_file(path);
            }
            let listener = tokio::net::UnixListener::bind(path).map_err(fail)?;
            Ok(Listener::Unix(listener, path.clone()))
        }
    }
}

async fn serve(config: Config, ready: impl FnOnce(&[String])) -> Result<(), StartError> {
    let mut services: Vec<(String, Arc<service::Service>)> = Vec::new();
    let mut bound = Vec::new();
    for (domain, listen) in &config.listen {
        let service = match services.iter().find(|(d, _)| d == domain.as_str()) {
            Some((_, s)) => s.clone(),
            None => {
                let s = Arc::new(
                    service::Service::new(
                        &config.dir,
                        domain,
                        config.timeouts,
                        config.server_connections,
                    )
                    .map_err(StartError::Domain)?,
                );
                services.push((domain.to_string(), s.clone()));
                s
            }
        };
        bound.push((bind(listen).await?, service));
    }
    let metrics = match config.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Listen(format!("cannot serve metrics on {addr}: {e}")))?,
        ),
        None => None,
    };
    // The bound addresses (a port 0 becomes the one the kernel chose).
    let mut lines: Vec<String> = config
        .listen
        .iter()
        .zip(&bound)
        .map(|((domain, listen), (listener, _))| {
            let listen = match listener {
                Listener::Tcp(l) => l.local_addr().map_or(listen.clone(), Listen::Tcp),
                Listener::Unix(..) => listen.clone(),
            };
            format!("serving domain '{domain}' on {listen}")
        })
        .collect();
    if let Some(addr) = metrics.as_ref().and_then(|m| m.local_addr().ok()) {
        lines.push(format!("metrics on http://{addr}/metrics"));
    }
    ready(&lines);

    let (stop, stopped) = watch::channel(false);
    let open = Arc::new(AtomicI64::new(0));
    let mut accepting = Vec::new();
    for (listener, service) in bound {
        accepting.push(tokio::spawn(accept(
            listener,
            service,
            config.clone(),
            open.clone(),
            stopped.clone(),
        )));
    }
    if let Some(listener) = metrics {
        let all: Vec<Arc<stats::ProxyStats>> =
            services.iter().map(|(_, s)| s.stats.clone()).collect();
        tokio::spawn(serve_metrics(listener, all));
    }
    wait_for_signal().await;
    let _ = stop.send(true);
    for task in accepting {
        let _ = task.await;
    }
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    while open.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
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
        if open.load(Ordering::Acquire) >= config.max_connections as i64 {
            stats.rejected_connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = stream
                    .write_all(b"ERROR Too many open connections\r\n")
                    .await;
                let _ = stream.shutdown().await;
            });
            continue;
        }
        open.fetch_add(1, Ordering::AcqRel);
        stats.curr_connections.fetch_add(1, Ordering::Relaxed);
        stats.total_connections.fetch_add(1, Ordering::Relaxed);
        let (service, open, stopped) = (service.clone(), open.clone(), stopped.clone());
        let settings = config.settings;
        let lane = stats.total_connections.load(Ordering::Relaxed) as usize;
        tokio::spawn(async move {
            session::serve(stream, service, settings, lane, stopped).await;
            stats.curr_connections.fetch_sub(1, Ordering::Relaxed);
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
}

/// A client stream of either kind.
type Stream = Box<dyn AsyncStream>;
trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> AsyncStream for T {}

async fn accept_one(listener: &Listener) -> Option<Stream> {
    match listener {
        Listener::Tcp(l) => {
            let (stream, _) = l.accept().await.ok()?;
            let _ = stream.set_nodelay(true);
            Some(Box::new(stream))
        }
        Listener::Unix(l, _) => Some(Box::new(l.accept().await.ok()?.0)),
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
