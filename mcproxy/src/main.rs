//! mcproxy: a thin front end over `mcshm-proxy`: parse arguments, open the domains, listen,
//! and map what went wrong to the documented exit codes.

mod cli;

use std::process::ExitCode;
use std::time::Duration;

use libmcshm::{Domain, ErrorKind, Timeouts};
use mcshm_proxy::command::Limits;
use mcshm_proxy::{Config, Listen, Settings, StartError};

mcshm_cli::exit_codes! {
    /// Exit codes (documented in `--help` and mcproxy(8)).
    enum Exit {
        /// A clean stop (SIGTERM or SIGINT).
        Stopped = 0,
        BadArguments = 2,
        NoDomain = 3,
        Registry = 4,
        CannotListen = 5,
    }
}

fn main() -> ExitCode {
    let cli: cli::Cli = mcshm_cli::parse("mcproxy");
    if let Some(shell) = cli.completions {
        let mut command = <cli::Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "mcproxy", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    for warning in bare_millis_warnings(std::env::args().skip(1)) {
        eprintln!("mcproxy: warning: {warning}");
    }
    let config = match config(&cli) {
        Ok(config) => config,
        Err(message) => return mcshm_cli::fail("mcproxy", &message, Exit::BadArguments),
    };
    let ready = |lines: &[String]| {
        for line in lines {
            mcshm_proxy::log(format_args!("{line}"));
        }
    };
    match mcshm_proxy::run(config, ready) {
        Ok(()) => ExitCode::from(u8::from(Exit::Stopped)),
        Err(StartError::Domain(err)) => {
            let code = match err.kind() {
                ErrorKind::BadInput => Exit::BadArguments,
                ErrorKind::NotFound => Exit::NoDomain,
                _ => Exit::Registry,
            };
            mcshm_cli::fail("mcproxy", &err, code)
        }
        Err(StartError::Listen(message)) => {
            mcshm_cli::fail("mcproxy", &message, Exit::CannotListen)
        }
    }
}

/// The options whose bare numbers are milliseconds (mclient's and mcadmin's are seconds).
const MILLISECOND_OPTIONS: [&str; 2] = ["--timeout", "--connect-timeout"];

/// A warning for each millisecond option given a bare number under 100: `--timeout 1` is a
/// millisecond here, a second in mclient, and almost certainly meant as a second.
fn bare_millis_warnings(args: impl Iterator<Item = String>) -> Vec<String> {
    let args: Vec<String> = args.collect();
    let mut warnings = Vec::new();
    for (n, arg) in args.iter().enumerate() {
        let (option, value) = match arg.split_once('=') {
            Some((option, value)) => (option, Some(value)),
            None => (arg.as_str(), args.get(n + 1).map(String::as_str)),
        };
        let Some(value) = value.filter(|_| MILLISECOND_OPTIONS.contains(&option)) else {
            continue;
        };
        if let Ok(ms) = value.trim().parse::<u64>()
            && ms < 100
        {
            warnings.push(format!(
                "{option} {value} is {ms} ms (a bare number is milliseconds here); write \
                 {value}s for {value} seconds"
            ));
        }
    }
    warnings
}

fn config(cli: &cli::Cli) -> Result<Config, String> {
    let dir = match &cli.dir {
        Some(dir) => dir.clone(),
        None => libmcshm::default_dir().map_err(|e| e.to_string())?,
    };
    let default = Domain::new(&cli.domain).map_err(|e| e.to_string())?;
    let mut listen = Vec::new();
    for spec in &cli.listen {
        let (domain, address) = match spec.split_once('=') {
            Some((domain, address)) => (Domain::new(domain).map_err(|e| e.to_string())?, address),
            None => (default.clone(), spec.as_str()),
        };
        let address = Listen::parse(address)?;
        if listen.iter().any(|(_, a)| *a == address) {
            return Err(format!("--listen {address} is given twice"));
        }
        listen.push((domain, address));
    }
    let metrics = match &cli.metrics {
        Some(text) => Some(text.parse().map_err(|_| {
            format!("--metrics '{text}' is not an address: expected IP:PORT (127.0.0.1:9150)")
        })?),
        None => None,
    };
    let positive = |name: &str, n: usize| match n {
        0 => Err(format!("--{name} must be at least 1")),
        n => Ok(n),
    };
    Ok(Config {
        dir,
        listen,
        metrics,
        timeouts: Timeouts {
            connect: Duration::from_millis(cli.connect_timeout.max(1)),
            io: Duration::from_millis(cli.timeout.max(1)),
        },
        server_connections: positive("server-connections", cli.server_connections)?,
        max_connections: positive("max-connections", cli.max_connections)?,
        backlog: positive("backlog", cli.backlog as usize)? as u32,
        max_per_uid: cli.max_connections_per_uid,
        settings: Settings {
            client_auth: match &cli.client_auth {
                Some(path) => Some(std::sync::Arc::new(
                    mcshm_proxy::client_auth::ClientAuth::load(path)?,
                )),
                None => None,
            },
            limits: Limits {
                max_item: size("max-item-size", &cli.max_item_size)?,
                ..Limits::default()
            },
            client_timeout: Duration::from_secs(cli.client_timeout.max(1)),
            idle_timeout: (cli.idle_timeout > 0).then(|| Duration::from_secs(cli.idle_timeout)),
            pipeline: positive("pipeline", cli.pipeline)?,
            reply_limit: size("client-reply-limit", &cli.client_reply_limit)?,
        },
        shutdown_timeout: Duration::from_secs(cli.shutdown_timeout),
        threads: match cli.threads {
            Some(n) => positive("threads", n)?,
            None => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        },
    })
}

/// `1048576`, `512k`, `1m` (option `--name`): at least 1 byte, at most 1 GiB (memcached's own
/// ceiling).
fn size(name: &str, text: &str) -> Result<usize, String> {
    let lower = text.to_ascii_lowercase();
    let (digits, unit) = match lower.strip_suffix('k') {
        Some(d) => (d, 1 << 10),
        None => match lower.strip_suffix('m') {
            Some(d) => (d, 1 << 20),
            None => (lower.as_str(), 1),
        },
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|n| (1..=1 << 30).contains(n))
        .ok_or_else(|| format!("--{name} '{text}' is not a size from 1 to 1g (e.g. 1m, 512k)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(args: &[&str]) -> Vec<String> {
        bare_millis_warnings(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn a_small_bare_millisecond_value_is_warned_about() {
        let one = warnings(&["--domain", "app", "--timeout", "1"]);
        assert_eq!(
            one,
            ["--timeout 1 is 1 ms (a bare number is milliseconds here); write 1s for 1 seconds"]
        );
        assert_eq!(warnings(&["--connect-timeout=5"]).len(), 1);
        // A unit, or a number that reads as milliseconds, is what it says.
        for quiet in [
            &["--timeout", "1s"][..],
            &["--timeout", "500ms"],
            &["--timeout", "250"],
            &["--client-timeout", "1"],
            &["--listen", "1"],
        ] {
            assert!(warnings(quiet).is_empty(), "{quiet:?}");
        }
    }
}
