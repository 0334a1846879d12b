//! Command-line definitions of mcadmin (also used to generate `man/mcadmin.8`), with the value
//! parsers that check what the library checks (a weight, a reason, a policy value), so that a
//! verb receives values it can use and bad input is refused before anything is read or written.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use libmcshm::Address;
use libmcshm::edit::PolicyChange;
use libmcshm::placement::Distribution;
use libmcshm::prefix::KeyPrefix;
use libmcshm::registry::LockWait;
use libmcshm::table::{self, Failover, Fence, Rejoin};
use mcshm_cli::UsageError;

macro_rules! exit_status {
    () => {
        "\
Exit status:
  0  success; `status`: the server is up; `wait`: the version changed
  1  the answer is no: `status`: down or draining; `wait`: timed out; `drain`: interrupted;
     `buckets`: a move interrupted, or this host's table did not mirror the staged map
     within --mirror-timeout (the moves stay staged); `domains remove`: processes use the
     domain (nothing removed)
  2  usage error or bad input (address, domain name, weight, list line; a list cut short, too
     large or empty; `add` of a server that holds items without --flush or --no-flush);
     nothing changed
  3  not found: no such domain or server, or `add` of a server already present (under its name
     or another that resolves to it); nothing changed
  4  registry failure: permission denied, corrupt or unsafe file, newer format, I/O error
  5  a server failed: `up` could not flush it (it stays down), `drain` could not reach it,
     `buckets` could not move some keys (the moves stay staged)
  6  etcd failure (with --etcd): unreachable, refused the request, or holds an invalid value;
     nothing changed"
    };
}

/// The exit status table, shown after `--help` and in the man page.
pub const EXIT_STATUS: &str = exit_status!();

pub const AFTER_LONG_HELP: &str = concat!(
    "\
Examples:
  mcadmin --domain myapp add cache1:11211 cache2:11211 --weight 2
  mcadmin --domain myapp down cache1:11211 --reason 'disk failure'
  mcadmin --domain myapp list --json
  mcadmin --domain myapp dump > myapp.list; mcadmin --domain myapp load myapp.list
  mcadmin --domain myapp load --partial hand-written.list
  mcadmin --etcd http://10.0.0.5:2379 --domain myapp add cache3:11211   (the whole fleet)
  mcadmin sync --etcd http://10.0.0.5:2379,http://10.0.0.6:2379 --all   (on every host)
  mcadmin --domain myapp explain user:42         (which server owns the key, and why)
  mcadmin metrics > mcshm.prom                   (every domain, for node_exporter's textfile)
  mcadmin --domain myapp watch --metrics 127.0.0.1:9152   (the same page over HTTP)

Durations (--lock-timeout, --etcd-timeout, --interval, --timeout, --retry-interval, ...) take a
unit: 500ms, 2s, 1m, 1h; a bare number is seconds.

",
    exit_status!()
);

/// Manage the memcached server lists that every process on this host shares.
///
/// Each domain (e.g. `myapp`, `default`) is a versioned server table in a memory-mapped file,
/// DIR/DOMAIN.mcshm. Every change is one new version, seen by every process that uses the domain
/// on its next operation. Readers never block; writers take turns on a file lock.
///
/// The registry directory is --dir, else $MCSHM_DIR, else /run/mcshm when it exists or you are
/// root, else $XDG_RUNTIME_DIR/mcshm. It is tmpfs: keep your list in a config file and replay it
/// at boot with `mcadmin load`.
#[derive(Parser, Debug)]
#[command(name = "mcadmin", version, after_long_help = AFTER_LONG_HELP, after_help = EXIT_STATUS)]
pub struct Cli {
    /// Registry directory [default: $MCSHM_DIR, /run/mcshm or $XDG_RUNTIME_DIR/mcshm]
    #[arg(long, global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Domain (server list) to work on: 1-64 characters of A-Z a-z 0-9 . _ - (`watch` takes
    /// several)
    #[arg(long, global = true, env = "MCSHM_DOMAIN", default_value = "default", action = clap::ArgAction::Append)]
    pub domain: Vec<String>,

    /// Print machine-readable JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,

    /// Mode of a domain file this command creates (octal; the owner must keep read and write)
    /// [default: 664 with the directory's group in a group-writable directory, such as the
    /// packaged /run/mcshm, so that the units and that group may write it; else 644]
    #[arg(long, global = true, value_name = "OCTAL")]
    pub mode: Option<String>,

    /// Group of a domain file this command creates (name or number), e.g. to let a group of
    /// clients count failures with --mode 664
    #[arg(long, global = true, value_name = "GROUP")]
    pub group: Option<String>,

    /// Seconds to wait for another writer of the domain before giving up with "locked by pid
    /// N" (exit 4); 0: do not wait
    #[arg(value_parser = lock_wait, long, global = true, default_value = "10", value_name = "S")]
    pub lock_timeout: LockWait,

    #[command(flatten)]
    pub etcd: EtcdArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Where the fleet's tables are: with --etcd, editing verbs change the fleet's list in etcd (one
/// transaction, seen by every host's `mcadmin sync`) and list/dump/status/domains read it.
#[derive(Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated (e.g. http://10.0.0.5:2379,http://10.0.0.6:2379):
    /// work on the fleet's tables instead of this host's
    #[arg(long, global = true, env = "MCSHM_ETCD", value_name = "ENDPOINTS")]
    pub etcd: Option<String>,
    /// Key prefix of mcshm's keys in etcd
    #[arg(
        long,
        global = true,
        env = "MCSHM_ETCD_PREFIX",
        default_value = "/mcshm/",
        value_name = "PREFIX"
    )]
    pub etcd_prefix: String,
    /// CA certificate (PEM) that signed the etcd members' certificates (https:// endpoints)
    #[arg(long, global = true, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's TLS client authentication
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Key (PEM) of --cert
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// etcd user and password, USER:PASSWORD (etcd authentication; etcdctl's --user)
    #[arg(
        long = "etcd-user",
        global = true,
        env = "MCSHM_ETCD_USER",
        value_name = "USER:PASSWORD",
        hide_env_values = true
    )]
    pub user: Option<String>,
    /// Seconds an etcd request may take, over all endpoints (each endpoint gets its share, so
    /// a frozen member costs one share before the next is asked); `sync` shows CUT OFF within it
    #[arg(value_parser = positive("--etcd-timeout"), long, global = true, default_value = "5", value_name = "S")]
    pub etcd_timeout: Duration,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a shell completion script (make install puts them in place).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Add servers (creating the domain on first use); several servers commit as one version.
    ///
    /// ADDR is HOST[:PORT], IPV4[:PORT], [IPV6][:PORT] or an absolute unix socket path; the port
    /// defaults to 11211. Servers keep the order they were added in (clients hash in that order).
    /// A new server is flushed (flush_all) before it joins, so that nothing it kept from an
    /// earlier time in the domain is served; if it cannot be flushed nothing changes (exit 5).
    /// With --down it is flushed when it is brought up instead.
    ///
    /// A new server that holds items (memcached's curr_items) is a cache in use: add refuses it
    /// (exit 2, nothing changed) until you choose --flush (empty it) or --no-flush (adopt its
    /// contents as they are: the caches an application already uses, with its keys); with --down
    /// it is not asked, and is flushed when brought up. A server
    /// that is the same memcached as one of the domain's under another name (localhost:11211
    /// and 127.0.0.1:11211: names are resolved) is refused (exit 3).
    Add(AddArgs),
    /// Remove servers.
    #[command(visible_alias = "rm")]
    Delete {
        #[arg(required = true, value_name = "ADDR", value_parser = address)]
        servers: Vec<Address>,
        /// Skip servers not present instead of failing
        #[arg(long)]
        if_present: bool,
    },
    /// Bring servers back (a down one is flushed first).
    ///
    /// A down server is flushed (flush_all) first and marked up only if that succeeds, so it can
    /// serve nothing stale (rejoin policy flush/warm; trust skips the flush; replay deletes only
    /// the keys it missed: with --etcd, every host's agent deletes what its own clients wrote,
    /// and the server is flushed if one cannot or does not answer within 10 s). A draining
    /// server stops draining.
    Up {
        #[arg(required = true, value_name = "ADDR", value_parser = address)]
        servers: Vec<Address>,
        /// Mark up without flushing (unsafe for data that changed while the server was away)
        #[arg(long)]
        no_flush: bool,
    },
    /// Mark servers down (clients stop using them) until an operator's `up`.
    ///
    /// An operator's down is held: no client retry probe, `watch` or fleet agent brings the
    /// servers back, only `mcadmin up` (which flushes them first). A server that clients or
    /// `watch` marked down after failures is shown as `down (failures)` and is retried
    /// automatically every retry interval.
    Down {
        #[arg(required = true, value_name = "ADDR", value_parser = address)]
        servers: Vec<Address>,
        /// Why (shown by `list` and `status`)
        #[arg(long, value_name = "TEXT", default_value = "", value_parser = reason)]
        reason: String,
        /// Down as after failures: the retry probe and `watch` bring the servers back (flushed)
        /// once they answer, every retry interval
        #[arg(long)]
        retry: bool,
    },
    /// Change a server's weight or retry interval.
    Set {
        #[arg(value_name = "ADDR", value_parser = address)]
        server: Address,
        /// New share of keys (1-65535)
        #[arg(long, value_name = "N", value_parser = weight)]
        weight: Option<u16>,
        /// New seconds between automatic retries while down; -1: never
        #[arg(value_parser = retry_interval, long, value_name = "S", allow_negative_numbers = true)]
        retry_interval: Option<i32>,
    },
    /// Show or set the domain's client policy (failover, failure limit, rejoin, replicas).
    ///
    /// failover none (default): a key whose server is down is a miss on read and an error on
    /// write; no other server is tried, so none can later serve it stale. failover rehash: keys
    /// of down servers move to the up ones (libmemcached's REMOVE_FAILED_SERVERS). Clients mark a
    /// server down for every process on the host after failure-limit consecutive
    /// connect/timeout/I-O failures (default 2).
    Policy(PolicyArgs),
    /// Show the servers of the domain with its version.
    #[command(visible_alias = "ls")]
    List,
    /// Show one server's state; exit status 0 when up, 1 when down or draining.
    Status {
        #[arg(value_name = "ADDR", value_parser = address)]
        server: Address,
    },
    /// List every domain in the registry directory; `domains remove D` removes one.
    ///
    /// `domains remove DOMAIN [--force]` removes a domain's table and the files beside it
    /// (lock, invalidation log, credentials, TLS settings) from this host's registry. It is
    /// refused (exit 1, nothing removed) while processes use the domain (those `mcadmin clients`
    /// lists, a running `watch` or `sync`) unless --force; they keep the removed table until
    /// they open the domain again.
    Domains {
        #[command(subcommand)]
        action: Option<DomainsAction>,
    },
    /// Write the server list as text, one server per line (the input of `load`).
    ///
    /// The last line, `# end: N servers, crc32 0xXXXXXXXX`, counts the servers and sums every
    /// byte before it (CRC-32, as zlib's): `load` refuses a list without it, so a list cut short
    /// changes nothing.
    ///
    /// Only an operator's reasons are written: the reason of a server held down (`down
    /// --reason`), which says why the list keeps it down. The reasons the run time writes
    /// (`rejoined after flush_all (mcadmin up, pid 330)`, failures, a drain) describe a moment,
    /// not the list; --reasons writes them too. Loading a dump back keeps the reasons of the
    /// servers whose state it does not change.
    Dump {
        /// Also write the reasons the run time wrote (rejoins, failures, drains, failed flushes)
        #[arg(long)]
        reasons: bool,
    },
    /// Make the server list equal to FILE (or - for stdin), in one version.
    ///
    /// Lines: `ADDR [weight=N] [retry-interval=S] [state=up|down] [down-by=operator|failures]
    /// [reason="TEXT"]`; blank lines and lines starting with # are ignored. A bad line changes
    /// nothing. The list must be whole: it ends with the end line `dump` writes (`# end: N
    /// servers, crc32 0xXXXXXXXX`, with the right count and checksum, and only blank lines
    /// after it), else it was cut short or edited and is refused (exit 2); a list written or
    /// edited by hand needs --partial. A list of no servers is refused unless --allow-empty.
    /// At most 64 MiB, lines of at most 4096 bytes. The changes are the same transitions the
    /// other verbs make: a server the file has up that joins the domain or was down is flushed
    /// first (as `add` and `up` do; one that cannot be flushed is loaded down after failures
    /// and retried, exit 5); a down line is held down by the operator unless it says
    /// down-by=failures. Into a new domain (the boot-time replay) the list is taken as it
    /// stands. Also repairs a damaged registry file.
    Load {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Only when the domain does not exist yet (the boot-time replay: a restart of the unit
        /// keeps the changes made since); the file is checked either way
        #[arg(long)]
        initial: bool,
        /// Take the list as it stands: flush no server (only for servers known to hold nothing
        /// stale, e.g. all new and empty)
        #[arg(long)]
        no_flush: bool,
        /// A list written or edited by hand: no end line needed, and one that is there is not
        /// checked (a list cut short is then taken as far as it goes)
        #[arg(long)]
        partial: bool,
        /// Take a list of no servers: it removes every server of the domain
        #[arg(long)]
        allow_empty: bool,
        /// Change nothing: check the list and print what loading it would change (servers
        /// added, removed and changed, the policy; exit 0), with --json as JSON
        #[arg(long)]
        dry_run: bool,
    },
    /// Health daemon: mark failing servers down, bring answering ones back.
    ///
    /// Probes each server every interval, marks one down after N failed probes, and brings one
    /// that answers again back through the rejoin policy (flush first). Sweeps marked servers
    /// (what `mcadmin settle` does) at --settle-rate, so that writes stop paying a delete on
    /// them soon after a change. One watcher acts on a domain per host; others stand by and
    /// take over when it dies. Every transition is a line
    /// on stdout (JSON lines with --json) and runs --exec. Stops cleanly on SIGTERM and SIGINT.
    /// `mcadmin --domain a --domain b watch` watches both. A domain that does not exist, or is
    /// removed while watched, ends the watch with exit 3 (a configuration error: the systemd
    /// unit does not restart it); with --all a removed domain is no longer watched.
    Watch {
        /// Watch every domain in the registry directory (new ones are picked up)
        #[arg(long)]
        all: bool,
        /// Seconds between probe rounds
        #[arg(value_parser = positive("interval"), long, default_value = "2", value_name = "S")]
        interval: Duration,
        /// Failed probes in a row that mark a server down [default: the domain's failure limit]
        #[arg(long, value_name = "N")]
        failures: Option<u32>,
        /// Also set and get this key on each probe (checks that the server stores data)
        #[arg(long, value_name = "KEY", value_parser = check_key)]
        check_key: Option<Vec<u8>>,
        /// Run this shell command on every transition, with MCSHM_EVENT (down, up,
        /// rejoin-failed, settled, active, standby), MCSHM_DOMAIN, MCSHM_SERVER, MCSHM_REASON
        /// and MCSHM_TIME in its environment
        #[arg(long, value_name = "CMD")]
        exec: Option<String>,
        /// Probe timeout in seconds
        #[arg(value_parser = positive("timeout"), long, default_value = "1", value_name = "S")]
        timeout: Duration,
        /// Serve the watched domains' metrics page (what `mcadmin metrics` prints; with --all
        /// every domain's) over HTTP at http://IP:PORT/metrics, e.g. 127.0.0.1:9152
        #[arg(long, value_name = "IP:PORT", value_parser = listen_address)]
        metrics: Option<std::net::SocketAddr>,
        /// Keys per second the sweep of marked servers looks at (0: as fast as possible)
        #[arg(long, default_value_t = 10_000, value_name = "KEYS_PER_S")]
        settle_rate: u32,
        /// Leave marked servers to `mcadmin settle`
        #[arg(long)]
        no_settle: bool,
    },
    /// Retire a server gently, moving its keys to their new owners.
    ///
    /// Marks it draining (clients send its keys to their new owners and move what they find on
    /// it), moves its keys at --rate keeping flags and TTL, then removes it. Ctrl-C leaves it
    /// draining (run drain again to resume); `mcadmin up` cancels.
    Drain {
        #[arg(value_name = "ADDR", value_parser = address)]
        server: Address,
        /// Keys moved per second (0: as fast as possible)
        #[arg(long, default_value_t = 1000, value_name = "KEYS_PER_S")]
        rate: u32,
    },
    /// Sweep servers that may hold stale copies of keys they no longer own, so writes stop
    /// deleting their keys there.
    ///
    /// A change that moves keys between servers (add, a weight, a rejoin under rehash, ...)
    /// marks the servers that lost keys (`strays_since` in `list --json`): until they are swept,
    /// every write deletes its key from them too, so that no old copy can ever be served. This
    /// lists each marked server's keys (`lru_crawler metadump all`), deletes those it does not
    /// own in the current table, at --rate, and clears its mark (kept if a change during the
    /// sweep marked it again: run settle again). Without ADDR: every marked server that is up.
    Settle {
        #[arg(value_name = "ADDR", value_parser = address)]
        servers: Vec<Address>,
        /// Keys looked at per second (0: as fast as possible)
        #[arg(long, default_value_t = 10_000, value_name = "KEYS_PER_S")]
        rate: u32,
    },
    /// A vbucket domain's bucket map: show it, load or dump it as libvbucket JSON, balance
    /// it, move buckets.
    ///
    /// A vbucket domain (`policy --distribution vbucket [--hash H]`, libmemcached's
    /// MEMCACHED_DISTRIBUTION_VIRTUAL_BUCKET) hashes each key to one of a power-of-two number of
    /// buckets; the map names each bucket's owner and replicas. Adding or removing servers moves
    /// no key: buckets move when you say (`move`, `balance`), as a drain moves a server's keys:
    /// clients send a moving bucket's keys to its new owner at once and fill what they miss from
    /// the old one, while the move copies the bucket's keys over at --rate (flags and TTL kept,
    /// never over a newer value) and deletes them from the old owner. Ctrl-C leaves the moves
    /// staged (still served correctly): `buckets finish` completes them.
    Buckets {
        #[command(subcommand)]
        action: BucketsAction,
    },
    /// The processes on this host that have the domain open.
    ///
    /// Pid, command, the table version they last used and when. Records of dead processes are
    /// dropped.
    Clients,
    /// Host agent: mirror the fleet's domains (etcd) into this host's tables.
    ///
    /// Needs --etcd. Mirrors the domains given with --domain (repeatable), or with --all every
    /// domain of the fleet, into this host's tables, each recording the fleet revision it
    /// mirrors; pushes this host's own marks (a server a client marked down, one brought back
    /// after its flush, a drain) to the fleet unless the fleet decided otherwise since. Probes
    /// down servers for the whole fleet: one probe per retry interval across every host. While
    /// etcd is away the host serves its last tables and pushes its marks when etcd is back.
    /// Under rejoin replay, a down server comes back keeping its cache once every host's agent
    /// has deleted on it the keys that host's clients logged (else it is flushed), and this
    /// agent does that part for its host. One agent acts on a domain per host; others stand by. Every event is a line on stdout
    /// (JSON lines with --json). Stops cleanly on SIGTERM and SIGINT.
    Sync {
        /// Mirror every domain of the fleet (new ones are picked up)
        #[arg(long)]
        all: bool,
        /// This host's name in the fleet [default: the hostname]
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Timeout of a probe's flush, seconds
        #[arg(value_parser = positive("probe timeout"), long, default_value = "1", value_name = "S")]
        probe_timeout: Duration,
        /// Seconds the host record outlives a dead agent in `hosts`
        #[arg(value_parser = lease_ttl, long, default_value_t = 10, value_name = "S")]
        lease_ttl: i64,
        /// Under rejoin replay: seconds a fleet probe waits for every host that mirrors the
        /// domain to replay its log on the server, before it flushes the server instead
        #[arg(value_parser = positive("replay deadline"), long, default_value = "10", value_name = "S")]
        replay_deadline: Duration,
        /// In domains that fence: seconds between looks at the servers' fences (a missing one,
        /// after a restart or a flush, is repaired; one a failed commit left above the fleet is
        /// healed). Each host looks at a phase of its own, so a fleet of N hosts looks every
        /// S/N seconds
        #[arg(value_parser = positive("fence interval"), long, default_value = "10", value_name = "S")]
        fence_interval: Duration,
    },
    /// The fleet's hosts: every live `mcadmin sync` agent (needs --etcd).
    ///
    /// Per host and domain: the fleet revision applied, whether it is the fleet's table now
    /// (LAG: current, or behind with the fleet's revision), when it was applied, and how many
    /// processes on the host use the domain.
    Hosts,
    /// The domain's credentials for memcached's ASCII authentication (memcached -Y)
    ///
    /// Stores USER and the password (the first line of FILE, or - for stdin) in DIR/DOMAIN.auth,
    /// mode 0640 with the table's group: readable by the clients in that group, never by every
    /// user as the table is. Every connection to the domain's servers then authenticates
    /// (clients, probes, flushes, drains). Without options, shows the user; --clear removes
    /// them.
    #[command(group(clap::ArgGroup::new("change").args(["user", "clear"])))]
    Auth {
        /// The user memcached's auth file names
        #[arg(long, value_name = "USER", requires = "password_file")]
        user: Option<String>,
        /// A file whose first line is the password (- for stdin); never on the command line,
        /// where every user could read it with ps
        #[arg(long, value_name = "FILE", requires = "user")]
        password_file: Option<PathBuf>,
        /// Remove the domain's credentials
        #[arg(long)]
        clear: bool,
    },
    /// The domain's TLS settings: speak TLS to its servers (memcached -Z)
    ///
    /// Stores the CA certificates that sign the servers' certificates (and, for servers that
    /// require one, a client certificate and its key) in DIR/DOMAIN.tls, mode 0640 with the
    /// table's group, like the credentials: the file holds the certificates themselves, so
    /// rotating one is running this again. Every new connection to the domain's TCP servers then
    /// speaks TLS (clients, mcproxy, probes, flushes, drains; unix sockets stay in clear). Without
    /// options, shows the settings (exit 1 when there are none); --clear removes them.
    ///
    /// Example: mcadmin --domain app tls --ca /etc/ssl/cache-ca.pem --verify ca
    ///
    /// A new domain of TLS servers: `add --down ADDR…` (nothing is sent to them), `tls`, then
    /// `up ADDR…` (their flush before they join goes over TLS).
    #[command(group(clap::ArgGroup::new("change").args(["ca", "clear"])))]
    Tls {
        /// PEM file of the CA certificates that sign the servers' certificates
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// PEM file of the client certificate (chain), for servers that require one
        /// (memcached -o ssl_verify_mode=2)
        #[arg(long, value_name = "FILE", requires_all = ["key", "ca"])]
        cert: Option<PathBuf>,
        /// PEM file of the client certificate's private key
        #[arg(long, value_name = "FILE", requires = "cert")]
        key: Option<PathBuf>,
        /// The name the servers' certificates must carry (and the SNI sent) [default: each
        /// server's host or IP address]
        #[arg(long, value_name = "NAME", requires = "ca")]
        server_name: Option<String>,
        /// full: the CA signed the certificate and it names the server; ca: the CA signed it,
        /// whatever name it carries [default: full]
        #[arg(long, value_name = "MODE", value_parser = verify_mode, requires = "ca")]
        verify: Option<libmcshm::tls::Verify>,
        /// Remove the domain's TLS settings (speak to its servers in clear)
        #[arg(long)]
        clear: bool,
    },
    /// Print this host's domains as Prometheus metrics, for node_exporter's textfile collector.
    ///
    /// Every domain in the registry directory, or the one --domain (or $MCSHM_DOMAIN) names.
    /// Per server (labels domain, server): mcshm_server_up, mcshm_server_state{state=up|down|
    /// draining}, mcshm_server_held_down, mcshm_server_state_change_timestamp_seconds,
    /// mcshm_server_weight, mcshm_server_consecutive_failures, mcshm_server_marked (may hold
    /// stale copies until `settle`), and in a domain that keeps an invalidation log
    /// mcshm_server_missed_keys, _bytes and _overflowed, and in a vbucket domain
    /// mcshm_server_buckets, _replica_buckets, _buckets_moving_off and _buckets_moving_on. Per
    /// domain: mcshm_table_readable, mcshm_table_version, mcshm_table_change_timestamp_seconds,
    /// mcshm_table_servers, mcshm_domain_processes (what `clients` lists),
    /// mcshm_domain_policy_info; in a vbucket domain mcshm_bucket_map_buckets, _moving (staged,
    /// not completed) and _unassigned (no server); in a domain the fleet mirrors, mcshm_fleet_revision (the revision applied here) and the agent's
    /// mcshm_fleet_agent_running, _connected and _link_change_timestamp_seconds. A host's lag
    /// behind the fleet is not known on the host: compare mcshm_fleet_revision across hosts.
    /// An unreadable table is mcshm_table_readable 0 (and a line on stderr), not a failure.
    /// `watch --metrics IP:PORT` serves the same page over HTTP.
    ///
    /// Example: mcadmin metrics > /var/lib/prometheus/node-exporter/mcshm.prom.tmp &&
    /// mv /var/lib/prometheus/node-exporter/mcshm.prom.tmp
    /// /var/lib/prometheus/node-exporter/mcshm.prom
    Metrics,
    /// Show which server owns KEY in the domain and why, and what a get and a set of it do.
    ///
    /// The domain's distribution and hash, the key's hash value, the ring point it lands on
    /// and whose point it is (modula: the hash modulo the number of servers; pecl-memcache:
    /// its bucket), its replicas in order, each server's state (down and by whom, draining,
    /// marked as holding stale copies), and under the domain's failover policy what a get
    /// asks and what a set stores and deletes (under rehash, the interim owner of a down
    /// server's key). Read from the table's current version (shown), as every client routes
    /// it; the same key checks as elsewhere (no spaces or control characters, at most 250
    /// bytes with the domain's prefix). --json for scripts.
    Explain {
        /// The key (without the domain's prefix, as the application gives it)
        // Its own id: `key` is --key's (the etcd client key), global.
        #[arg(id = "explained_key", value_name = "KEY")]
        key: String,
    },
    /// Wait until the domain's version changes, then print the new version
    Wait {
        /// Wait for a version greater than V [default: the current version]
        #[arg(long, value_name = "V")]
        since: Option<u64>,
        /// Give up after S seconds (exit status 1) [default: wait forever]
        #[arg(value_parser = duration, long, value_name = "S")]
        timeout: Option<Duration>,
    },
}

/// `buckets`.
#[derive(Subcommand, Debug)]
pub enum BucketsAction {
    /// Buckets per server: owned, replicas held, moving off and onto it.
    #[command(visible_alias = "ls")]
    List,
    /// Write the map as libvbucket JSON (moxi's, Couchbase's: hashAlgorithm, numReplicas,
    /// serverList, vBucketMap, vBucketMapForward while moves are under way).
    Dump,
    /// Make the map the one of a libvbucket JSON FILE (or - for stdin).
    ///
    /// Every server of its serverList must be in the domain (add them first). The file is
    /// checked whole first: a map that is not a power of two of rows, has a row of the wrong
    /// width, a server index out of range or too many replicas is refused (exit 2) and the
    /// table stays as it was. A server named twice in a row is read as -1 the second time,
    /// with a note on stderr. On a vbucket domain of the same bucket count, the buckets whose
    /// owner changes move as `buckets move` moves them, at --rate; otherwise the map is taken
    /// at once (every key is placed anew).
    Load {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        pace: Pace,
    },
    /// Make the map even over the servers that are up: each owns as many buckets as the
    /// others, to one; only the buckets that must move do (a new server's share, a down or
    /// draining server's buckets). Makes the domain a vbucket domain when it is not, with
    /// --buckets buckets (default 1024) and --replicas replica columns (default 0).
    Balance {
        /// Buckets of a new map: a power of two up to 65536
        #[arg(long, value_name = "N")]
        buckets: Option<usize>,
        /// Replica columns of a new map (0-4)
        #[arg(long, value_name = "N")]
        replicas: Option<usize>,
        #[command(flatten)]
        pace: Pace,
    },
    /// Move --count buckets from FROM to TO, with their keys.
    Move {
        /// How many of FROM's buckets move
        #[arg(long, value_name = "N")]
        count: usize,
        #[arg(value_name = "FROM", value_parser = address)]
        from: Address,
        #[arg(value_name = "TO", value_parser = address)]
        to: Address,
        #[command(flatten)]
        pace: Pace,
    },
    /// Complete the moves under way (a move interrupted, a loaded forward map): move their
    /// keys, then make the forward rows the rows.
    Finish {
        #[command(flatten)]
        pace: Pace,
    },
}

/// How a bucket change moves keys: its rate, and (with --etcd) how long it waits for this
/// host's agent to mirror the staged map before it moves any.
#[derive(Args, Debug, Clone, Copy)]
pub struct Pace {
    /// Keys moved per second (0: as fast as possible)
    #[arg(long, default_value_t = 1000, value_name = "KEYS_PER_S")]
    pub rate: u32,
    /// With --etcd: seconds to wait for this host's `mcadmin sync` to mirror the staged map
    /// (the keys move by the table this host's clients route with); after them exit 1, the
    /// moves staged, to be completed by `mcadmin buckets finish`
    #[arg(value_parser = positive("--mirror-timeout"), long, default_value = "30", value_name = "S")]
    pub mirror_timeout: Duration,
}

/// `domains remove`.
#[derive(Subcommand, Debug)]
pub enum DomainsAction {
    /// Remove a domain from this host's registry: its table and the files beside it (lock,
    /// invalidation log, credentials, TLS settings).
    ///
    /// Refused (exit 1, nothing removed) while processes use the domain (as `mcadmin clients`
    /// lists them: mcproxy, a watcher, applications) unless --force; those processes keep the
    /// removed table until they open the domain again. Works on this host's registry only: a
    /// domain the fleet agent (`mcadmin sync`) mirrors is made again from the fleet's table.
    Remove {
        /// The domain to remove
        #[arg(value_name = "DOMAIN")]
        domain: String,
        /// Remove it even while processes use it
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
pub struct RetryArg {
    /// Seconds between automatic retries while down; -1: never retried automatically
    #[arg(
        long,
        value_parser = retry_interval,
        value_name = "S",
        default_value_t = 15,
        allow_negative_numbers = true
    )]
    pub retry_interval: i32,
}

/// `--verify full|ca`.
fn verify_mode(text: &str) -> Result<libmcshm::tls::Verify, String> {
    libmcshm::tls::Verify::parse(text).map_err(|_| "expected full or ca".to_string())
}

// The values of `add` (a `//` comment, as for `PolicyArgs`).
#[derive(Args, Debug)]
pub struct AddArgs {
    #[arg(required = true, value_name = "ADDR", value_parser = address)]
    pub servers: Vec<Address>,
    /// Share of keys relative to the other servers (1-65535)
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = weight)]
    pub weight: u16,
    /// Add in the down state (clients will not use the servers until `mcadmin up`)
    #[arg(long)]
    pub down: bool,
    /// Why (shown by `list`); with --down, why the servers are down
    #[arg(long, value_name = "TEXT", default_value = "", value_parser = reason)]
    pub reason: String,
    #[command(flatten)]
    pub retry: RetryArg,
    /// Skip servers already present instead of failing
    #[arg(long)]
    pub if_missing: bool,
    /// Do not flush the new servers: adopt what they hold as it is (caches the application
    /// already uses, or servers known to be empty); without it an empty server is flushed and
    /// one that holds items is refused
    #[arg(long, conflicts_with = "flush")]
    pub no_flush: bool,
    /// Flush the new servers even if they hold items (empty a cache in use before it joins)
    #[arg(long)]
    pub flush: bool,
}

// The values of `policy` (none: show the policy). A `//` comment: clap would take a doc
// comment for the subcommand's help.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// none or rehash
    #[arg(long, value_name = "POLICY", value_parser = checked::<Failover>)]
    pub failover: Option<Failover>,
    /// Consecutive failures that mark a server down (1-255)
    #[arg(long, value_name = "N", value_parser = failure_limit)]
    pub failure_limit: Option<u8>,
    /// How a down server comes back: flush (flush_all, then up), warm (flush, then fill
    /// misses from the interim owner for the warm window), trust (no flush: unsafe for data
    /// that changes while it is away), replay (delete only the keys written while it was away,
    /// from the host's invalidation log, then up: it keeps its cache; flushed when the log
    /// cannot say, e.g. while a process has the table open read-only: use replay when every
    /// writer goes through libmcshm's client, mclient or mcproxy)
    #[arg(long, value_name = "POLICY", value_parser = checked::<Rejoin>)]
    pub rejoin: Option<Rejoin>,
    /// Servers each write goes to, along the ring (reads fall back along the same servers)
    #[arg(long, value_name = "N", value_parser = replicas)]
    pub replicas: Option<u8>,
    /// Seconds of warm-up after a rejoin with --rejoin warm
    #[arg(long, value_name = "S", value_parser = warm_window)]
    pub warm_window: Option<u32>,
    /// How keys map to servers, as the domain's other clients map them: ketama
    /// (libmemcached's KETAMA_WEIGHTED, PHP memcached's LIBKETAMA_COMPATIBLE; the default),
    /// ketama-spy (libmemcached's CONSISTENT_KETAMA_SPY with weights, spymemcached's
    /// KetamaNodeLocator), ketama-unweighted (libmemcached's BEHAVIOR_KETAMA, pylibmc's
    /// "ketama": 100 points per server, weights ignored), modula (libmemcached's default:
    /// the key's hash modulo the number of servers), pecl-memcache (PHP's PECL memcache,
    /// memcache.hash_strategy=consistent) or vbucket (libmemcached's VIRTUAL_BUCKET and
    /// libvbucket's maps: the key's hash masked to a bucket, a map naming each bucket's owner;
    /// made with an even map of 1024 buckets over the up servers, see `mcadmin buckets`)
    #[arg(long, value_name = "NAME")]
    pub distribution: Option<String>,
    /// The key hash of modula, ketama-unweighted and vbucket, as libmemcached's
    /// MEMCACHED_BEHAVIOR_HASH: one-at-a-time (its default), md5, crc, fnv1_64, fnv1a_64,
    /// fnv1_32, fnv1a_32, murmur, jenkins or murmur3; pecl-memcache's, as memcache.hash_function: crc32 (its default) or fnv
    #[arg(long, value_name = "H", requires = "distribution")]
    pub hash: Option<String>,
    /// Key prefix: sent before every key, never hashed, as PHP memcached's OPT_PREFIX_KEY
    /// and libmemcached's NAMESPACE (up to 30 bytes, no whitespace or control characters;
    /// "" removes it). Every process of the domain switches with the same version
    #[arg(long, value_name = "P", value_parser = key_prefix)]
    pub prefix: Option<KeyPrefix>,
    /// Fencing, for a domain mirrored from etcd: on (a fleet commit that moves keys off a
    /// server first raises the domain's fence there, item mcshm.fence.DOMAIN, so that a host
    /// still on the older table cannot use that server's answers: a read is a miss, a write
    /// fails; the default of a domain created with --etcd), off, or auto (what domains from
    /// before fencing have: off; turning it on fences every server first)
    #[arg(long, value_name = "auto|on|off", value_parser = checked::<Fence>)]
    pub fence: Option<Fence>,
}

impl PolicyArgs {
    /// The change these options ask for (the distribution is checked here: it takes --hash).
    pub fn change(&self) -> libmcshm::Result<PolicyChange> {
        let distribution = self.distribution.as_deref();
        Ok(PolicyChange {
            failover: self.failover,
            failure_limit: self.failure_limit,
            rejoin: self.rejoin,
            replicas: self.replicas,
            warm_window_s: self.warm_window,
            distribution: distribution
                .map(|d| Distribution::parse(d, self.hash.as_deref()))
                .transpose()?,
            prefix: self.prefix,
            fence: self.fence,
        })
    }
}

/// A value parser's error: a [`UsageError`] is printed on one line, as the library words it
/// (`mcadmin: invalid weight '0': must be from 1 to 65535`, exit 2; see [`mcshm_cli::parse`]);
/// any other error (not a number, not a duration) as clap prints it.
type Checked<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn usage(err: libmcshm::Error) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(UsageError(err.to_string()))
}

/// A value the library parses (`--failover`, `--rejoin`).
fn checked<T: std::str::FromStr<Err = libmcshm::Error>>(text: &str) -> Checked<T> {
    text.parse().map_err(usage)
}

fn address(text: &str) -> Checked<Address> {
    Address::parse(text).map_err(usage)
}

fn weight(text: &str) -> Checked<u16> {
    table::check_weight(text.parse()?).map_err(usage)
}

fn retry_interval(text: &str) -> Checked<i32> {
    table::check_retry_interval(mcshm_cli::whole_seconds(text)?).map_err(usage)
}

fn reason(text: &str) -> Checked<String> {
    table::check_reason(text).map_err(usage)?;
    Ok(text.to_string())
}

fn failure_limit(text: &str) -> Checked<u8> {
    table::check_failure_limit(text).map_err(usage)
}

fn replicas(text: &str) -> Checked<u8> {
    table::check_replicas(text).map_err(usage)
}

fn warm_window(text: &str) -> Checked<u32> {
    table::check_warm_window(text).map_err(usage)
}

fn key_prefix(text: &str) -> Checked<KeyPrefix> {
    KeyPrefix::parse(text).map_err(usage)
}

fn duration(text: &str) -> Checked<Duration> {
    Ok(mcshm_cli::duration(text, Duration::from_secs(1))?)
}

/// `--lock-timeout`: 0 waits for no other writer, but still moves a table away from a reader's
/// lock (what `LockWait::Never`, the clients' setting, does not).
fn lock_wait(text: &str) -> Checked<LockWait> {
    let seconds = mcshm_cli::seconds(text)?;
    if !(0.0..=86_400.0).contains(&seconds) {
        let why = format!("invalid --lock-timeout '{seconds}': expected seconds from 0 to 86400");
        return Err(Box::new(UsageError(why)));
    }
    Ok(LockWait::For(Duration::from_secs_f64(seconds)))
}

/// Seconds above 0 (`what` names the value in the error).
fn positive(what: &'static str) -> impl Fn(&str) -> Checked<Duration> + Clone + Send + Sync {
    move |text| {
        let duration = mcshm_cli::duration(text, Duration::from_secs(1))?;
        if duration.is_zero() {
            let why = format!("invalid {what} '{text}': expected seconds > 0");
            return Err(Box::new(UsageError(why)));
        }
        Ok(duration)
    }
}

/// `watch --check-key`: a key memcached takes.
fn check_key(text: &str) -> Checked<Vec<u8>> {
    let key = text.as_bytes().to_vec();
    match libmcshm::proto::check_key(&key) {
        // Written raw (no prefix): it must not overwrite a fence.
        Ok(()) if libmcshm::fence::is_reserved(&key) => Err(Box::new(UsageError(format!(
            "invalid check key: {}",
            libmcshm::proto::KeyError::Reserved
        )))),
        Ok(()) => Ok(key),
        Err(why) => Err(Box::new(UsageError(format!("invalid check key: {why}")))),
    }
}

/// `watch --metrics`: an IP address and port to listen on.
fn listen_address(text: &str) -> Checked<std::net::SocketAddr> {
    text.parse().map_err(|_| {
        let why = format!("invalid --metrics '{text}': expected IP:PORT (127.0.0.1:9152)");
        Box::new(UsageError(why)) as Box<dyn std::error::Error + Send + Sync>
    })
}

/// `sync --lease-ttl`: 2 to 3600 seconds.
fn lease_ttl(text: &str) -> Checked<i64> {
    let seconds = mcshm_cli::whole_seconds(text)?;
    if !(2..=3600).contains(&seconds) {
        let why = format!("invalid --lease-ttl '{seconds}': expected 2 to 3600 seconds");
        return Err(Box::new(UsageError(why)));
    }
    Ok(seconds)
}
