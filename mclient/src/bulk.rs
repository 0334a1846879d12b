//! bulk-get and bulk-set: many keys as fast as the servers take them. Keys are read from
//! stdin and fetched in batches (every server's share of a batch pipelined at once), records
//! are written through one buffered stdout, and JSON is built only when `--json` asks for it;
//! so 100 000 keys cost about as much as the network needs, process start included.

use std::collections::HashMap;
use std::io::{self, BufRead, BufWriter, Read, Write};

use anyhow::{Context, Result, bail};
use libmcshm::{Client, Item, StoreItem, StoreVerb, Stored};
use serde_json::json;

use crate::bin_common::UsageError;
use crate::cli::Cli;
use crate::{Exit, item_json, report};

/// Keys fetched per batch: large enough that each server gets full pipeline windows, small
/// enough that the output starts early and memory stays flat.
const BATCH: usize = 20_000;

/// What a bulk-get found, across its batches.
#[derive(Default)]
struct Tally {
    misses: usize,
    errors: usize,
    rows: usize,
}

/// `bulk-get`: one key per stdin line; a record per hit on stdout, in input order.
pub fn get(cli: &Cli, client: &mut Client) -> Result<Exit> {
    let mut input = io::BufReader::with_capacity(1 << 16, io::stdin().lock());
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let (mut keys, mut line, mut number, mut bad) = (Vec::new(), Vec::new(), 0usize, 0usize);
    let mut tally = Tally::default();
    if cli.json {
        out.write_all(b"[")?;
    }
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .context("cannot read keys from stdin")?;
        if n > 0 {
            number += 1;
            let key = line.strip_suffix(b"\n").unwrap_or(&line);
            let key = key.strip_suffix(b"\r").unwrap_or(key);
            if !key.is_empty() {
                // A bad key is reported on its line and left out; the batch goes on.
                match libmcshm::proto::check_key(key) {
                    Ok(()) => keys.push(key.to_vec()),
                    Err(why) => {
                        let shown = String::from_utf8_lossy(key);
                        eprintln!("mclient: line {number}: invalid key '{shown}': {why}");
                        bad += 1;
                    }
                }
            }
        }
        if keys.len() == BATCH || (n == 0 && !keys.is_empty()) {
            fetch(cli, client, &keys, &mut out, &mut tally)?;
            keys.clear();
        }
        if n == 0 {
            break;
        }
    }
    if cli.json {
        out.write_all(b"]\n")?;
    }
    out.flush()?;
    Ok(if tally.errors > 0 {
        Exit::Failure
    } else if tally.misses > 0 || bad > 0 {
        Exit::No
    } else {
        Exit::Success
    })
}

/// One batch: its hits written in key order (misses counted, errors reported).
fn fetch(
    cli: &Cli,
    client: &mut Client,
    keys: &[Vec<u8>],
    out: &mut impl Write,
    tally: &mut Tally,
) -> Result<()> {
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let result = client.get_many(&refs, false)?;
    for (server, err) in &result.errors {
        eprintln!("mclient: {server}: {err}");
        tally.errors += 1;
    }
    let mut by_key: HashMap<&[u8], &Item> = HashMap::with_capacity(result.items.len());
    for item in &result.items {
        by_key.insert(&item.key, item);
    }
    for key in keys {
        let found = by_key.get(key.as_slice());
        if found.is_none() {
            tally.misses += 1;
        }
        if cli.json {
            let row = match found {
                Some(item) => item_json(item),
                None => json!({"key": String::from_utf8_lossy(key), "miss": true}),
            };
            if tally.rows > 0 {
                out.write_all(b",")?;
            }
            write!(out, "{row}")?;
            tally.rows += 1;
        } else if let Some(item) = found {
            out.write_all(key)?;
            writeln!(out, " {} {}", item.flags, item.value.len())?;
            out.write_all(&item.value)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// `bulk-set`: `KEY FLAGS LENGTH\n<bytes>\n` records from stdin, all checked before any is
/// stored (a malformed record stores nothing), then stored pipelined.
pub fn set(cli: &Cli, client: &mut Client, ttl: i64) -> Result<Exit> {
    let mut input = Vec::new();
    io::stdin()
        .lock()
        .read_to_end(&mut input)
        .context("cannot read records from stdin")?;
    let records = parse_records(&input)?;
    let items: Vec<StoreItem> = records
        .iter()
        .map(|&(key, flags, value)| StoreItem {
            key,
            value,
            flags,
            ttl,
        })
        .collect();
    let (mut stored, mut failed, mut errors) = (0, 0, false);
    for batch in items.chunks(BATCH) {
        let results = client.store_many(StoreVerb::Set, batch)?;
        for (item, result) in batch.iter().zip(&results) {
            match result {
                Ok(Stored::Stored) => stored += 1,
                Ok(other) => {
                    failed += 1;
                    eprintln!("mclient: {}: {other:?}", String::from_utf8_lossy(item.key));
                }
                Err(err) => {
                    failed += 1;
                    errors = true;
                    eprintln!("mclient: {}: {err}", String::from_utf8_lossy(item.key));
                }
            }
        }
    }
    report(
        cli,
        json!({"stored": stored, "failed": failed}),
        &format!("stored {stored}, failed {failed}"),
    )?;
    Ok(if errors {
        Exit::Failure
    } else if failed > 0 {
        Exit::No
    } else {
        Exit::Success
    })
}

/// One input record of bulk-set: key, flags, value.
type Record<'a> = (&'a [u8], u32, &'a [u8]);

/// Parses records: `KEY FLAGS LENGTH [CAS]\n<LENGTH bytes>\n`; errors name the record.
fn parse_records(input: &[u8]) -> Result<Vec<Record<'_>>> {
    let mut records = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = records.len() + 1;
        let bad = |why: &str| {
            UsageError(format!(
                "record {n}: {why} (expected KEY FLAGS LENGTH, a newline, LENGTH bytes, a newline)"
            ))
        };
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("no newline after the header"))?;
        let header = std::str::from_utf8(&rest[..end]).map_err(|_| bad("header is not text"))?;
        let mut fields = header.split(' ');
        let (Some(key), Some(flags), Some(len)) = (fields.next(), fields.next(), fields.next())
        else {
            bail!(bad("header needs 3 or 4 fields"));
        };
        if fields.next().is_some() && fields.next().is_some() {
            bail!(bad("header needs 3 or 4 fields"));
        }
        let flags: u32 = flags.parse().map_err(|_| bad("bad FLAGS"))?;
        let len: usize = len.parse().map_err(|_| bad("bad LENGTH"))?;
        let body = &rest[end + 1..];
        if body.len() < len + 1 || body[len] != b'\n' {
            bail!(bad(
                "value shorter than LENGTH or not followed by a newline"
            ));
        }
        records.push((key.as_bytes(), flags, &body[..len]));
        rest = &body[len + 1..];
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    #[test]
    fn records_parse_and_refuse_garbage() {
        let records = super::parse_records(b"a 1 3\nx\ny\nbb 0 0\n\n").unwrap();
        assert_eq!(
            records,
            [(&b"a"[..], 1, &b"x\ny"[..]), (&b"bb"[..], 0, &b""[..])]
        );
        assert!(super::parse_records(b"a 1 5\nxx\n").is_err());
        assert!(super::parse_records(b"a x 1\nx\n").is_err());
        assert!(super::parse_records(b"a 1 1 2 3\nx\n").is_err());
    }
}
