//! mclient: memcached for shell scripts, routed through a shared mcshm server list. Glue only:
//! parse arguments, call libmcshm's client, print, map outcomes to the documented exit codes.

// Doc comments in cli.rs are clap help text (with [OPTIONAL] syntax), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod bulk;
mod cli;

use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use libmcshm::placement::Distribution;
use libmcshm::placement::buckets::key_bucket;
use libmcshm::{Address, Client, Domain, ErrorKind, Item, MarkedDown, StoreVerb, Stored, Timeouts};
use serde_json::{Value, json};

use cli::{Cli, StoreArgs, Verb};
use mcshm_cli::UsageError;

mcshm_cli::exit_codes! {
    /// Exit codes (documented in `--help` and mclient(1)).
    pub(crate) enum Exit {
        Success = 0,
        No = 1,
        BadInput = 2,
        Failure = 3,
    }
}

fn main() -> ExitCode {
    let cli: Cli = mcshm_cli::parse("mclient");
    mcshm_cli::finish("mclient", run(&cli), Exit::Success, exit_for)
}

fn exit_for(err: &anyhow::Error) -> Exit {
    if err.downcast_ref::<UsageError>().is_some() {
        return Exit::BadInput;
    }
    match err.downcast_ref::<libmcshm::Error>() {
        Some(libmcshm::Error::NoDomain { .. }) => Exit::BadInput,
        // The server's CLIENT_ERROR: the request was sent, so not "nothing was sent" (2).
        Some(libmcshm::Error::ClientError { .. }) => Exit::Failure,
        Some(e) if e.kind() == ErrorKind::BadInput => Exit::BadInput,
        _ => Exit::Failure,
    }
}

fn seconds(value: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| UsageError(format!("invalid {what} '{value}': expected seconds > 0")).into())
}

fn connect(cli: &Cli) -> Result<Client> {
    let timeouts = Timeouts {
        connect: seconds(cli.connect_timeout, "connect timeout")?,
        io: seconds(cli.timeout, "timeout")?,
    };
    let mut client = match &cli.servers {
        Some(list) => Client::for_weighted_servers(&Address::parse_weighted_list(list)?, timeouts)?,
        None => {
            let domain = Domain::new(&cli.domain)?;
            let dir = match &cli.dir {
                Some(dir) => dir.clone(),
                None => libmcshm::default_dir()?,
            };
            Client::for_domain(dir, &domain, timeouts)?
        }
    };
    // The failing command reports its own error; say what the failure changed.
    client.on_failure(|event| {
        let what = match event.marked_down {
            MarkedDown::No => return,
            MarkedDown::ForEveryone => "marked down for every process on this host",
            MarkedDown::LocallyOnly => {
                "treated as down by this process only (it cannot write the registry)"
            }
        };
        eprintln!(
            "mclient: {}: {} consecutive failures: {what}",
            event.server, event.failures
        );
    });
    Ok(client)
}

fn run(cli: &Cli) -> Result<Exit> {
    if let Verb::Completions { shell } = &cli.verb {
        clap_complete::generate(
            *shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "mclient",
            &mut io::stdout(),
        );
        return Ok(Exit::Success);
    }
    let mut client = connect(cli)?;
    match &cli.verb {
        Verb::Get { keys } if keys.len() == 1 && !cli.json => get_one(&mut client, &keys[0]),
        Verb::Get { keys } => get_many(cli, &mut client, keys, false),
        Verb::Gets { keys } => get_many(cli, &mut client, keys, true),
        Verb::Set(args) => store(cli, &mut client, StoreVerb::Set, args),
        Verb::Add(args) => store(cli, &mut client, StoreVerb::Add, args),
        Verb::Replace(args) => store(cli, &mut client, StoreVerb::Replace, args),
        Verb::Append(args) => store(cli, &mut client, StoreVerb::Append, args),
        Verb::Prepend(args) => store(cli, &mut client, StoreVerb::Prepend, args),
        Verb::Cas {
            key,
            cas,
            value,
            store: options,
        } => {
            let args = StoreArgs {
                key: key.clone(),
                value: value.clone(),
                store: cli::StoreOptions {
                    ttl: options.ttl,
                    flags: options.flags,
                },
            };
            store(cli, &mut client, StoreVerb::Cas(*cas), &args)
        }
        Verb::Delete { key } => {
            let deleted = client.delete(key.as_bytes())?;
            let json = json!({"key": key, "deleted": deleted});
            yes_or_no(cli, json, deleted, "DELETED")
        }
        Verb::Incr { key, delta } => arith(cli, key, client.incr(key.as_bytes(), *delta)?),
        Verb::Decr { key, delta } => arith(cli, key, client.decr(key.as_bytes(), *delta)?),
        Verb::Touch { key, ttl } => {
            let touched = client.touch(key.as_bytes(), *ttl)?;
            let json = json!({"key": key, "touched": touched});
            yes_or_no(cli, json, touched, "TOUCHED")
        }
        Verb::Flush { server, delay } => {
            let only = server.as_deref().map(Address::parse).transpose()?;
            let results = client.flush_all(only.as_ref(), *delay)?;
            per_server(cli, results, |server, ()| {
                (json!("OK"), format!("{server} OK\n"))
            })
        }
        Verb::Version { server } => {
            let only = server.as_deref().map(Address::parse).transpose()?;
            let results = client.versions(only.as_ref())?;
            per_server(cli, results, |server, v| {
                (json!(v), format!("{server} {v}\n"))
            })
        }
        Verb::Stats { group, server } => {
            let only = server.as_deref().map(Address::parse).transpose()?;
            let results = client.stats(group.as_deref(), only.as_ref())?;
            per_server(cli, results, stats_text)
        }
        Verb::Keys { server } => {
            let only = server.as_deref().map(Address::parse).transpose()?;
            let results = client.keys(only.as_ref())?;
            per_server(cli, results, |_, keys| {
                let names: Vec<String> = keys
                    .iter()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect();
                let text: String = names.iter().map(|k| format!("{k}\n")).collect();
                (json!(names), text)
            })
        }
        Verb::Which { keys } => {
            let mut out = Vec::new();
            let mut rows = Vec::new();
            for key in keys {
                let replicas = client.replicas_for(key.as_bytes())?;
                let names: Vec<String> = replicas.iter().map(ToString::to_string).collect();
                let mut row = json!({"key": key, "server": names[0], "replicas": names});
                write!(out, "{key} {}", names.join(" "))?;
                // A vbucket domain: the key's bucket too.
                let snapshot = client.snapshot()?;
                if let (Some(map), Distribution::VBucket(hash)) =
                    (&snapshot.buckets, snapshot.policy.distribution)
                {
                    let (_, bucket) = key_bucket(map, hash, snapshot.servers.len(), key.as_bytes());
                    write!(out, " bucket={bucket}")?;
                    row["bucket"] = json!(bucket);
                }
                writeln!(out)?;
                rows.push(row);
            }
            emit(cli, Value::Array(rows), &out)?;
            Ok(Exit::Success)
        }
        Verb::BulkGet => bulk::get(cli, &mut client, &|| connect(cli)),
        Verb::BulkSet { ttl } => bulk::set(cli, &mut client, &|| connect(cli), *ttl),
        Verb::Completions { .. } => unreachable!("handled above"),
    }
}

fn get_one(client: &mut Client, key: &str) -> Result<Exit> {
    match client.get(key.as_bytes())? {
        Some(item) => {
            let mut out = io::stdout().lock();
            out.write_all(&item.value)?;
            out.flush()?;
            Ok(Exit::Success)
        }
        None => {
            explain_miss(client, key);
            Ok(Exit::No)
        }
    }
}

/// A miss because no server that holds the key is up is not an ordinary miss: say so on
/// stderr (a write to that key would fail and say why; a read is a miss by design, so that a
/// down server never delays the reader).
fn explain_miss(client: &mut Client, key: &str) {
    let (Ok(replicas), Ok(snapshot)) = (client.replicas_for(key.as_bytes()), client.snapshot())
    else {
        return;
    };
    let down: Vec<String> = replicas
        .iter()
        .filter_map(|address| snapshot.find(address))
        .filter(|server| server.state == libmcshm::State::Down)
        .map(|server| match server.reason.is_empty() {
            true => format!("{} is {}", server.address, server.state),
            false => format!("{} is {} ({})", server.address, server.state, server.reason),
        })
        .collect();
    if !down.is_empty() && down.len() == replicas.len() {
        eprintln!("mclient: {key}: a miss: {}", down.join("; "));
    }
}

fn get_many(cli: &Cli, client: &mut Client, keys: &[String], cas: bool) -> Result<Exit> {
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let result = client.get_many(&refs, cas)?;
    for (server, err) in &result.errors {
        eprintln!("mclient: {server}: {err}");
    }
    let mut by_key: std::collections::HashMap<&[u8], &Item> = std::collections::HashMap::new();
    for item in &result.items {
        by_key.insert(&item.key, item);
    }
    let mut out = Vec::new();
    let mut rows = Vec::new();
    let mut misses = 0;
    for key in keys {
        match by_key.get(key.as_bytes()) {
            Some(item) => {
                write!(out, "{key} {} {}", item.flags, item.value.len())?;
                if let Some(unique) = item.cas {
                    write!(out, " {unique}")?;
                }
                out.push(b'\n');
                out.extend_from_slice(&item.value);
                out.push(b'\n');
                rows.push(item_json(item));
            }
            None => {
                misses += 1;
                rows.push(json!({"key": key, "miss": true}));
            }
        }
    }
    emit(cli, Value::Array(rows), &out)?;
    Ok(if !result.errors.is_empty() {
        Exit::Failure
    } else if misses > 0 {
        Exit::No
    } else {
        Exit::Success
    })
}

pub(crate) fn item_json(item: &Item) -> Value {
    let mut value = json!({"key": String::from_utf8_lossy(&item.key), "flags": item.flags});
    match std::str::from_utf8(&item.value) {
        Ok(text) => value["value"] = json!(text),
        Err(_) => value["value_base64"] = json!(base64(&item.value)),
    }
    if let Some(unique) = item.cas {
        value["cas"] = json!(unique);
    }
    value
}

/// Standard base64 with padding (for binary values in JSON).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn store(cli: &Cli, client: &mut Client, verb: StoreVerb, args: &StoreArgs) -> Result<Exit> {
    let value = match &args.value {
        Some(v) => v.clone().into_bytes(),
        None => {
            let mut buf = Vec::new();
            io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .context("cannot read the value from stdin")?;
            buf
        }
    };
    let outcome = client.store(
        verb,
        args.key.as_bytes(),
        &value,
        args.store.flags,
        args.store.ttl,
    )?;
    let word = match outcome {
        Stored::Stored => "STORED",
        Stored::NotStored => "NOT_STORED",
        Stored::Exists => "EXISTS",
        Stored::NotFound => "NOT_FOUND",
    };
    if let (StoreVerb::Cas(_), Stored::Exists) = (verb, outcome)
        && let Ok(Some(item)) = client.gets(args.key.as_bytes())
        && item.cas == Some(0)
    {
        // memcached -C keeps no CAS values: gets says 0 and every cas fails.
        bail!(
            "{}: the server keeps no CAS values (memcached -C): gets returns CAS 0 and cas always fails; not stored",
            client.server_for(args.key.as_bytes())?
        );
    }
    if cli.json {
        report(cli, json!({"key": args.key, "result": word}), word)?;
    }
    Ok(if outcome == Stored::Stored {
        Exit::Success
    } else {
        Exit::No
    })
}

fn arith(cli: &Cli, key: &str, result: Option<u64>) -> Result<Exit> {
    match result {
        Some(n) => {
            report(cli, json!({"key": key, "value": n}), &n.to_string())?;
            Ok(Exit::Success)
        }
        None => {
            report(cli, json!({"key": key, "value": null}), "NOT_FOUND")?;
            Ok(Exit::No)
        }
    }
}

/// Prints one result per server: `show` gives its JSON value and its text (errors go to stderr).
fn per_server<T>(
    cli: &Cli,
    results: Vec<(Address, libmcshm::Result<T>)>,
    show: impl Fn(&Address, T) -> (Value, String),
) -> Result<Exit> {
    let mut out = String::new();
    let mut rows = serde_json::Map::new();
    let mut failed = false;
    for (server, result) in results {
        match result {
            Ok(value) => {
                let (j, text) = show(&server, value);
                out += &text;
                rows.insert(server.to_string(), j);
            }
            Err(err) => {
                eprintln!("mclient: {err}");
                rows.insert(server.to_string(), json!({"error": err.to_string()}));
                failed = true;
            }
        }
    }
    emit(cli, Value::Object(rows), out.as_bytes())?;
    Ok(if failed { Exit::Failure } else { Exit::Success })
}

/// `server ADDR` then its `STAT name value` lines.
fn stats_text(server: &Address, stats: libmcshm::client::Stats) -> (Value, String) {
    let mut text = format!("server {server}\n");
    for (name, value) in &stats {
        text += &format!("STAT {name} {value}\n");
    }
    let map: serde_json::Map<String, Value> =
        stats.into_iter().map(|(k, v)| (k, json!(v))).collect();
    (Value::Object(map), text)
}

/// Prints one line of text (or the JSON document).
/// The answer of a command that did its job or found no key: `yes` (exit 0), or `NOT_FOUND`
/// (exit 1), as memcached words it.
fn yes_or_no(cli: &Cli, json: Value, done: bool, yes: &str) -> Result<Exit> {
    report(cli, json, if done { yes } else { "NOT_FOUND" })?;
    Ok(if done { Exit::Success } else { Exit::No })
}

pub(crate) fn report(cli: &Cli, json: Value, text: &str) -> Result<()> {
    let mut line = text.as_bytes().to_vec();
    line.push(b'\n');
    emit(cli, json, &line)
}

fn emit(cli: &Cli, json: Value, text: &[u8]) -> Result<()> {
    let mut out = io::stdout().lock();
    if cli.json {
        writeln!(out, "{json}")?;
    } else {
        out.write_all(text)?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        for (raw, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(raw.as_bytes()), encoded);
        }
    }
}
