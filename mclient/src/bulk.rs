//! bulk-get and bulk-set: many keys as fast as the servers take them. Keys are read from
//! stdin and fetched in batches (every server's share of a batch pipelined at once), records
//! are written through one buffered stdout, and JSON is built only when `--json` asks for it;
//! so 100 000 keys cost about as much as the network needs, process start included.

use std::collections::HashMap;
use std::io::{self, BufRead, BufWriter, Write};

use anyhow::{Context, Result, bail};
use libmcshm::{Client, Item, StoreItem, StoreVerb, Stored};
use serde_json::json;

use crate::cli::Cli;
use crate::{Exit, item_json, report};
use mcshm_cli::UsageError;

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
    let mut by_key: HashMap<&[u8], &Item, KeyHash> =
        HashMap::with_capacity_and_hasher(result.items.len(), KeyHash::default());
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

/// Hashes the keys of one batch's hits to find each asked key's: a multiply-rotate over 8
/// bytes at a time, which cost a tenth of what the default SipHash did here (keys are the
/// user's own, so its resistance to chosen collisions buys nothing).
type KeyHash = std::hash::BuildHasherDefault<FastHasher>;

#[derive(Default)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut mix =
            |word: u64| self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            mix(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let mut last = [0u8; 8];
        last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        mix(u64::from_le_bytes(last) ^ bytes.len() as u64);
    }

    /// Mixed so that every bit depends on every byte (murmur3's finalizer): the table takes
    /// its bucket from the low bits, which a multiplication alone leaves to the first bytes.
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// `bulk-set`: `KEY FLAGS LENGTH [CAS]\n<bytes>\n` records from stdin, stored in batches as
/// they are read (each batch checked whole before any of it is sent, then pipelined to every
/// server at once). A malformed record stops the load: the records before it are stored, and
/// the error says how many.
pub fn set(cli: &Cli, client: &mut Client, ttl: i64) -> Result<Exit> {
    let mut input = io::BufReader::with_capacity(1 << 16, io::stdin().lock());
    let mut batch = Batch::default();
    let mut tally = Stores::default();
    let mut number = 0;
    loop {
        let more = match batch.read_record(&mut input, number + 1) {
            Ok(more) => more,
            Err(err) => {
                // Every record before the bad one is stored; then the load stops.
                tally.store(client, &batch.items(ttl))?;
                return match tally.stored {
                    0 => Err(err),
                    n => Err(
                        UsageError(format!("{err}; the {n} records before it are stored")).into(),
                    ),
                };
            }
        };
        if more {
            number += 1;
        }
        if batch.len() == BATCH || !more {
            tally.store(client, &batch.items(ttl))?;
            batch.clear();
        }
        if !more {
            break;
        }
    }
    let Stores {
        stored,
        failed,
        errors,
    } = tally;
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

/// What bulk-set stored, across its batches.
#[derive(Default)]
struct Stores {
    stored: usize,
    failed: usize,
    errors: bool,
}

impl Stores {
    /// Stores one batch (every server's share pipelined at once), counting each outcome.
    fn store(&mut self, client: &mut Client, items: &[StoreItem<'_>]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let results = client.store_many(StoreVerb::Set, items)?;
        for (item, result) in items.iter().zip(&results) {
            match result {
                Ok(Stored::Stored) => self.stored += 1,
                Ok(other) => {
                    self.failed += 1;
                    eprintln!("mclient: {}: {other:?}", String::from_utf8_lossy(item.key));
                }
                Err(err) => {
                    self.failed += 1;
                    self.errors = true;
                    eprintln!("mclient: {}: {err}", String::from_utf8_lossy(item.key));
                }
            }
        }
        Ok(())
    }
}

/// Records read and not yet stored: their bytes in one buffer, and where each lies in it.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// Key range, flags, value range.
    records: Vec<(std::ops::Range<usize>, u32, std::ops::Range<usize>)>,
    header: Vec<u8>,
}

impl Batch {
    fn len(&self) -> usize {
        self.records.len()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
    }

    fn items(&self, ttl: i64) -> Vec<StoreItem<'_>> {
        self.records
            .iter()
            .map(|(key, flags, value)| StoreItem {
                key: &self.bytes[key.clone()],
                value: &self.bytes[value.clone()],
                flags: *flags,
                ttl,
            })
            .collect()
    }

    /// Reads record `n` (`KEY FLAGS LENGTH [CAS]\n<LENGTH bytes>\n`); false at the end of the
    /// input. Errors name the record.
    fn read_record(&mut self, input: &mut impl BufRead, n: usize) -> Result<bool> {
        let bad = |why: &str| {
            UsageError(format!(
                "record {n}: {why} (expected KEY FLAGS LENGTH, a newline, LENGTH bytes, a newline)"
            ))
        };
        self.header.clear();
        let read = input
            .read_until(b'\n', &mut self.header)
            .context("cannot read records from stdin")?;
        if read == 0 {
            return Ok(false);
        }
        let Some(header) = self.header.strip_suffix(b"\n") else {
            bail!(bad("no newline after the header"));
        };
        let (key, flags, len) = parse_header(header).map_err(bad)?;
        let key_at = self.bytes.len();
        self.bytes.extend_from_slice(key);
        let value_at = self.bytes.len();
        self.bytes.resize(value_at + len + 1, 0);
        input
            .read_exact(&mut self.bytes[value_at..])
            .map_err(|_| bad("value shorter than LENGTH or not followed by a newline"))?;
        if self.bytes.pop() != Some(b'\n') {
            bail!(bad(
                "value shorter than LENGTH or not followed by a newline"
            ));
        }
        self.records
            .push((key_at..value_at, flags, value_at..value_at + len));
        Ok(true)
    }
}

/// A record's header: key, flags, value length (an optional CAS after them is ignored).
fn parse_header(header: &[u8]) -> Result<(&[u8], u32, usize), &'static str> {
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let mut fields = header.split(' ');
    let (Some(key), Some(flags), Some(len)) = (fields.next(), fields.next(), fields.next()) else {
        return Err("header needs 3 or 4 fields");
    };
    if fields.next().is_some() && fields.next().is_some() {
        return Err("header needs 3 or 4 fields");
    }
    let flags: u32 = flags.parse().map_err(|_| "bad FLAGS")?;
    let len: usize = len.parse().map_err(|_| "bad LENGTH")?;
    Ok((key.as_bytes(), flags, len))
}

#[cfg(test)]
mod tests {
    use super::Batch;

    #[test]
    fn records_parse_and_refuse_garbage() {
        let mut batch = Batch::default();
        let mut input: &[u8] = b"a 1 3\nx\ny\nbb 0 0 77\n\n";
        assert!(batch.read_record(&mut input, 1).unwrap());
        assert!(batch.read_record(&mut input, 2).unwrap());
        assert!(!batch.read_record(&mut input, 3).unwrap());
        let items = batch.items(0);
        let got: Vec<(&[u8], u32, &[u8])> =
            items.iter().map(|i| (i.key, i.flags, i.value)).collect();
        assert_eq!(
            got,
            [(&b"a"[..], 1, &b"x\ny"[..]), (&b"bb"[..], 0, &b""[..])]
        );
        for garbage in [
            &b"a 1 5\nxx\n"[..],
            b"a x 1\nx\n",
            b"a 1 1 2 3\nx\n",
            b"a 1 1\nxy",
            b"a 1 1",
        ] {
            let mut input = garbage;
            let err = Batch::default().read_record(&mut input, 9).unwrap_err();
            assert!(err.to_string().starts_with("record 9: "), "{err}");
        }
    }
}
