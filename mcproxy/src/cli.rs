//! Command-line definitions of mcproxy (also used to generate `man/mcproxy.8`).

use std::path::PathBuf;

use clap::Parser;

macro_rules! exit_status {
    () => {
        "\
Exit status:
  0  stopped by SIGTERM or SIGINT after answering the requests in flight
  2  usage error or bad input (listen address, domain name, size, duration)
  3  a domain to serve does not exist (create it with mcadmin add)
  4  registry failure: permission denied, corrupt or unsafe file, newer format
  5  an address cannot be listened on (in use, permission denied)"
    };
}

/// The exit status table, shown after `--help` and in the man page.
pub const EXIT_STATUS: &str = exit_status!();

pub const AFTER_LONG_HELP: &str = concat!(
    "\
Examples:
  mcproxy --domain myapp --listen 127.0.0.1:11211
  mcproxy --listen myapp=127.0.0.1:11211 --listen sessions=127.0.0.1:11212 --metrics 127.0.0.1:9150
  mcproxy --domain myapp --listen unix:/run/mcshm/myapp.sock
  printf 'config get cluster\\r\\n' | nc -q1 127.0.0.1 11211     (the list, ElastiCache style)

Durations take a unit: 500ms, 2s, 1m, 1h; a bare number is milliseconds for --timeout and
--connect-timeout (a warning says so below 100: mclient's --timeout 1 is a second), seconds
for the others.

",
    exit_status!()
);

/// A local memcached proxy over the host's shared server lists.
///
/// Point any memcached client (PHP memcache/memcached, pymemcache, libmemcached, ...) at the
/// proxy and it uses the domain's table as every libmcshm process does: ketama, the failover
/// policy, the host-wide failure view and retry probe, flush before rejoin, replicas, warm-up
/// and drain. A change made with mcadmin (or by the fleet agent) is used by the next request.
///
/// It speaks the memcached text protocol (get/gets/gat/gats with many keys, set/add/replace/
/// append/prepend/cas, delete, incr/decr, touch, flush_all, noreply, version, verbosity, quit),
/// the meta commands (mg ms md ma me mn, with quiet mode), `stats` (the proxy's own counters)
/// and `config get cluster` (ElastiCache auto-discovery: the table version and its up servers).
/// Requests pipelined on one connection are answered in order; the connections of all clients
/// share a few pipelined connections per server.
#[derive(Parser, Debug)]
#[command(name = "mcproxy", version, after_long_help = AFTER_LONG_HELP, after_help = EXIT_STATUS)]
pub struct Cli {
    /// Print a shell completion script (bash, zsh, fish, ...) and exit (make install puts them
    /// in place)
    #[arg(long, value_name = "SHELL", hide = true)]
    pub completions: Option<clap_complete::Shell>,

    /// Registry directory [default: $MCSHM_DIR, /run/mcshm or $XDG_RUNTIME_DIR/mcshm]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Domain served on the --listen addresses that do not name one
    #[arg(long, env = "MCSHM_DOMAIN", default_value = "default")]
    pub domain: String,

    // The help text is clap's, not markdown: `[IPv6]` is literal.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Address to serve on: IP:PORT, [IPv6]:PORT or unix:/PATH, optionally DOMAIN=ADDRESS to
    /// serve another domain there; repeat to listen on several
    #[arg(
        long,
        value_name = "[DOMAIN=]ADDRESS",
        default_value = "127.0.0.1:11211"
    )]
    pub listen: Vec<String>,

    /// Serve Prometheus metrics over HTTP on IP:PORT (GET /metrics)
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<String>,

    /// Time to wait for a server connection: milliseconds, or a duration with a unit (2s)
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = mcshm_cli::millis)]
    pub connect_timeout: u64,

    /// Time to wait for a server's reply: milliseconds, or a duration with a unit (2s); then
    /// the request gets SERVER_ERROR and the failure counts against the server
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = mcshm_cli::millis)]
    pub timeout: u64,

    /// Connections to each server, shared by all clients (divided among the worker threads,
    /// at least one each)
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub server_connections: usize,

    /// Client connections at most. At the limit the connection idle longest is closed to admit
    /// a new one (so idle connections cannot lock clients out); when none is idle, a new one
    /// is answered `ERROR Too many open connections`
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_connections: usize,

    /// Client connections one user may hold (0: no share). The user is the kernel's: the peer
    /// of a unix socket, the owner of a local TCP peer's socket. At the share that user's idle
    /// connection is closed to admit its new one, else the new one is refused. Off by default:
    /// the application's workers usually share one user (www-data)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_connections_per_uid: usize,

    /// Connections the kernel queues on each listening socket until mcproxy accepts them
    /// (memcached's -b); the kernel caps it at net.core.somaxconn (4096 on current kernels).
    /// Connections of a burst larger than the queue are dropped or reset by the kernel
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub backlog: u32,

    /// Largest value a client may store (k and m suffixes; memcached's -I)
    #[arg(long, value_name = "BYTES", default_value = "1m")]
    pub max_item_size: String,

    /// Seconds a client may take to finish a command it started, or to take any of the
    /// replies the proxy has for it; then it is disconnected (and those replies dropped)
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = mcshm_cli::whole_seconds_unsigned)]
    pub client_timeout: u64,

    /// Clients must authenticate with one of these credentials (memcached's -Y format: one
    /// user:password per line): SASL PLAIN on binary connections, memcached's ASCII
    /// authentication (a `set` whose value is `user password`) on text ones. Without it,
    /// anyone who can connect is served, and SASL requests get "auth error"
    #[arg(long, value_name = "FILE")]
    pub client_auth: Option<std::path::PathBuf>,

    /// Seconds an idle client connection is kept (0: for ever)
    #[arg(long, value_name = "SECS", default_value_t = 0, value_parser = mcshm_cli::whole_seconds_unsigned)]
    pub idle_timeout: u64,

    /// Commands one client connection may have in flight before the proxy stops reading it
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub pipeline: usize,

    /// Reply bytes one client connection may be owed (unread, or estimated for the commands in
    /// flight) before the proxy stops reading its commands (k and m suffixes). A client owed
    /// nothing may always send one command, whatever the size of its reply; the connections
    /// to the servers are read at full speed whatever a client does
    #[arg(long, value_name = "BYTES", default_value = "64m")]
    pub client_reply_limit: String,

    /// Seconds to finish the requests in flight after SIGTERM
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = mcshm_cli::whole_seconds_unsigned)]
    pub shutdown_timeout: u64,

    /// Worker threads, each one event loop with its own server connections [default: half the
    /// CPUs, at least one: the other half is the application's and memcached's]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}
