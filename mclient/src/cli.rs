//! Command-line definitions of mclient (also used to generate `man/mclient.1`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

macro_rules! exit_status {
    () => {
        "\
Exit status:
  0  hit / stored / deleted / touched (for several keys: every key hit)
  1  miss, not stored, not found, or cas mismatch (for several keys: some missed)
  2  usage error or bad input (bad key, a key in mcshm's reserved namespace mcshm.fence.,
     bad number, unknown domain); nothing was sent
     (bulk-set: nothing from the malformed record on)
  3  server, network or registry error once something was sent (down server, timeout,
     SERVER_ERROR, CLIENT_ERROR, a refused connection, a server that does not speak the
     text protocol, cas on a server without CAS values, a write to a server fenced above
     this host's table: the host lags the fleet)
bulk-get reports a bad key with its line number on stderr and leaves it out (exit 1).
bulk-set stores records as it reads them: a malformed record stops it (exit 2) with every
record before it stored, and the error says how many."
    };
}

/// The exit status table, shown after `--help` and in the man page.
pub const EXIT_STATUS: &str = exit_status!();

pub const AFTER_LONG_HELP: &str = concat!(
    "\
Several keys (get, gets, bulk-get) are written as records, binary-safe:
  KEY FLAGS LENGTH [CAS]\\n<LENGTH bytes>\\n
Missing keys are left out. bulk-set reads the same records, so
  mclient get a b c | mclient --domain other bulk-set
copies keys.

Examples:
  echo hello | mclient --domain myapp set greeting      # stores \"hello\\n\"
  mclient --domain myapp get greeting
  mclient --servers 127.0.0.1:11211,127.0.0.1:11212 incr visits 1
  mclient which user:42
  seq 1 100000 | sed 's/^/k/' | mclient bulk-get > values.records

Durations (--timeout, --connect-timeout, --ttl) take a unit: 500ms, 2s, 1m, 1h; a bare number is
seconds. --timeout bounds the whole command.

",
    exit_status!()
);

/// Get and set memcached keys from shell scripts, through a shared mcshm server list.
///
/// Keys go to the server the domain's ketama ring picks (the same one libmemcached picks), so
/// mclient agrees with every other client of the domain. With --servers (or $MEMCACHED_SERVERS)
/// it uses that list instead of a registry.
#[derive(Parser, Debug)]
#[command(name = "mclient", version, after_long_help = AFTER_LONG_HELP, after_help = EXIT_STATUS)]
pub struct Cli {
    /// Registry directory [default: $MCSHM_DIR, /run/mcshm or $XDG_RUNTIME_DIR/mcshm]
    #[arg(long, global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Domain whose server list to use
    #[arg(long, global = true, env = "MCSHM_DOMAIN", default_value = "default")]
    pub domain: String,

    /// Use these servers instead of a domain: HOST[:PORT][,HOST[:PORT]...], each optionally
    /// weighted as libmemcached reads it (`HOST:PORT:WEIGHT` or `HOST:PORT WEIGHT`)
    #[arg(long, global = true, env = "MEMCACHED_SERVERS", value_name = "LIST")]
    pub servers: Option<String>,

    /// Seconds a server has for each request: sending it and its whole reply, however the
    /// bytes trickle in (a server that misses it counts as failed). A write that timed out is
    /// waited for once more before mclient exits, so that a later mclient's write cannot be
    /// run before it when a frozen server thaws
    #[arg(value_parser = mcshm_cli::seconds, long, global = true, default_value_t = 1.0, value_name = "S")]
    pub timeout: f64,

    /// Connect timeout in seconds
    #[arg(value_parser = mcshm_cli::seconds, long, global = true, default_value_t = 1.0, value_name = "S")]
    pub connect_timeout: f64,

    /// Print JSON instead of raw values and text
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Print a shell completion script (make install puts them in place).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Get keys: one key writes its value's bytes and nothing else; several keys write records.
    Get {
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Get keys with their cas uniques (always records: KEY FLAGS LENGTH CAS).
    Gets {
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Store a value (the argument, else all of stdin, byte-exact).
    Set(StoreArgs),
    /// Store only if the key does not exist.
    Add(StoreArgs),
    /// Store only if the key exists.
    Replace(StoreArgs),
    /// Append to an existing value.
    Append(StoreArgs),
    /// Prepend to an existing value.
    Prepend(StoreArgs),
    /// Store only if the item is unchanged since `gets` returned CAS.
    Cas {
        key: String,
        /// The cas unique from `gets`
        cas: u64,
        /// The value; without it, all of stdin (byte-exact)
        value: Option<String>,
        #[command(flatten)]
        store: StoreOptions,
    },
    /// Delete a key.
    Delete { key: String },
    /// Increment a counter (prints the new value).
    Incr {
        key: String,
        #[arg(default_value_t = 1)]
        delta: u64,
    },
    /// Decrement a counter (stops at 0; prints the new value).
    Decr {
        key: String,
        #[arg(default_value_t = 1)]
        delta: u64,
    },
    /// Set a key's expiration time.
    Touch {
        key: String,
        /// Seconds (or a Unix time); 0: never expires; negative: expires at once
        #[arg(value_parser = mcshm_cli::whole_seconds, allow_negative_numbers = true)]
        ttl: i64,
    },
    /// Invalidate every item on every up server (or one).
    Flush {
        /// Only this server
        #[arg(long, value_name = "ADDR")]
        server: Option<String>,
        /// Flush in S seconds
        #[arg(long, value_name = "S")]
        delay: Option<u32>,
    },
    /// Server statistics, labelled per server.
    Stats {
        /// A stats group (items, slabs, settings, conns, ...)
        group: Option<String>,
        /// Only this server
        #[arg(long, value_name = "ADDR")]
        server: Option<String>,
    },
    /// The version of every up server (or one).
    Version {
        /// Only this server
        #[arg(long, value_name = "ADDR")]
        server: Option<String>,
    },
    /// The domain's keys each up server (or one) holds, one per line (what memcdump lists:
    /// memcached's `lru_crawler metadump all`; without the domain's key prefix). With --json:
    /// per server, its keys
    Keys {
        /// Only this server
        #[arg(long, value_name = "ADDR")]
        server: Option<String>,
    },
    /// The servers each key maps to: its owner, then its other replicas (KEY OWNER [REPLICA...]),
    /// and in a vbucket domain its bucket (bucket=N)
    Which {
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Get many keys read from stdin (one per line), in batches, every server's share pipelined
    /// at once, two batches in flight (two connections per server); writes records in input
    /// order.
    BulkGet,
    /// Store many records read from stdin (KEY FLAGS LENGTH\n<bytes>\n, as get writes them),
    /// in batches as they are read, every server's share pipelined at once, two batches in
    /// flight (two connections per server; a batch that shares a key with the one before it
    /// waits for it).
    BulkSet {
        /// Expiration time of every record (seconds, or a Unix time); 0: never; negative:
        /// expired at once
        #[arg(
            long,
            value_parser = mcshm_cli::whole_seconds,
            default_value_t = 0,
            value_name = "S",
            allow_negative_numbers = true
        )]
        ttl: i64,
    },
}

#[derive(Args, Debug)]
pub struct StoreArgs {
    pub key: String,
    /// The value; without it, all of stdin (byte-exact)
    pub value: Option<String>,
    #[command(flatten)]
    pub store: StoreOptions,
}

#[derive(Args, Debug)]
pub struct StoreOptions {
    /// Expiration time: seconds (up to 30 days) or a Unix time; 0: never; negative: expired at
    /// once (as memcached takes it)
    #[arg(
        long,
        value_parser = mcshm_cli::whole_seconds,
        default_value_t = 0,
        value_name = "S",
        allow_negative_numbers = true
    )]
    pub ttl: i64,
    /// Opaque 32-bit flags stored with the value
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub flags: u32,
}
