//! bulk-get and bulk-set: many keys as fast as the servers take them. Keys are read from
//! stdin and fetched in batches (every server's share of a batch pipelined at once), records
//! are written through one buffered stdout, and JSON is built only when `--json` asks for it;
//! so 100 000 keys cost about as much as the network needs, process start included.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, BufRead, BufWriter, Write};
use std::sync::mpsc;
use std::thread;

use anyhow::{Context, Result, bail};
use libmcshm::{Client, Item, MultiGet, StoreItem, StoreVerb, Stored};
use serde_json::json;

use crate::cli::Cli;
use crate::{Exit, item_json, report};
use mcshm_cli::UsageError;

/// Keys (records) per batch: large enough that each server gets full pipeline windows, small
/// enough that the output starts early, memory stays flat, and the first batch (read while
/// nothing is on the wire) is a small part of the whole.
const BATCH: usize = 10_000;

/// Batches in flight at once, each on a client (connections and routing) and thread of its
/// own ([`Lanes`]).
const LANES: usize = 2;

/// Makes another client like the one the command was given (a lane's own).
pub type Connect<'a> = &'a (dyn Fn() -> Result<Client> + Sync);

/// Batches run on [`LANES`] threads, each with its own client, taken in turn: while one
/// batch is on the wire (the servers working, its client waiting), the next one is read
/// (this thread), planned (MD5 of every key) and sent by the other, so neither the servers
/// nor mclient wait for each other, which is what left the 2 cores idle a third of the time
/// when one thread read, planned, then waited. The results come back in the batches' order.
/// The first lane runs on the command's client; the second makes its own when it gets its
/// first batch (an input of one batch never pays for it).
struct Lanes<J, R> {
    jobs: Vec<mpsc::Sender<J>>,
    results: Vec<mpsc::Receiver<Result<R>>>,
    /// The lanes with a batch in flight, oldest first.
    in_flight: VecDeque<usize>,
    /// The lane the next batch goes to.
    next: usize,
}

impl<J: Send, R: Send> Lanes<J, R> {
    fn spawn<'scope, 'env: 'scope>(
        scope: &'scope thread::Scope<'scope, 'env>,
        client: &'env mut Client,
        connect: Connect<'env>,
        work: impl Fn(&mut Client, J) -> Result<R> + Send + Copy + 'env,
    ) -> Self
    where
        J: 'env,
        R: 'env,
    {
        let (mut jobs, mut results) = (Vec::new(), Vec::new());
        let mut first = Some(client);
        for _ in 0..LANES {
            let (job_tx, job_rx) = mpsc::channel::<J>();
            let (result_tx, result_rx) = mpsc::channel();
            let mut given = first.take();
            scope.spawn(move || {
                let mut own = None;
                for job in job_rx {
                    let client = match (&mut given, &mut own) {
                        (Some(client), _) => &mut **client,
                        (None, Some(client)) => client,
                        (None, None) => match connect() {
                            Ok(client) => own.insert(client),
                            Err(err) => {
                                let _ = result_tx.send(Err(err));
                                continue;
                            }
                        },
                    };
                    if result_tx.send(work(client, job)).is_err() {
                        break;
                    }
                }
            });
            jobs.push(job_tx);
            results.push(result_rx);
        }
        Lanes {
            jobs,
            results,
            in_flight: VecDeque::new(),
            next: 0,
        }
    }

    /// Whether the next batch's lane is still busy ([`Lanes::collect`] the oldest first).
    fn next_busy(&self) -> bool {
        self.in_flight.contains(&self.next)
    }

    /// Starts a batch on the next lane, which must not be busy.
    fn submit(&mut self, job: J) {
        debug_assert!(!self.next_busy());
        self.jobs[self.next]
            .send(job)
            .expect("a lane runs until its jobs end");
        self.in_flight.push_back(self.next);
        self.next = (self.next + 1) % LANES;
    }

    /// The oldest batch's result (waiting for it); `None` when none is in flight.
    fn collect(&mut self) -> Option<Result<R>> {
        let lane = self.in_flight.pop_front()?;
        Some(
            self.results[lane]
                .recv()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a bulk worker thread ended"))),
        )
    }
}

/// What a bulk-get found, across its batches.
#[derive(Default)]
struct Tally {
    misses: usize,
    errors: usize,
    rows: usize,
}

/// Keys read and not yet fetched: their bytes in one buffer, and where each ends.
#[derive(Default)]
struct Keys {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Keys {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    fn push(&mut self, key: &[u8]) {
        self.bytes.extend_from_slice(key);
        self.ends.push(self.bytes.len());
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, &end)| &self.bytes[start..end])
    }
}

/// `bulk-get`: one key per stdin line; a record per hit on stdout, in input order. Batches
/// are fetched on two lanes ([`Lanes`]) while this thread reads the next one and writes out
/// the last.
pub fn get(cli: &Cli, client: &mut Client, connect: Connect<'_>) -> Result<Exit> {
    let mut input = io::BufReader::with_capacity(1 << 16, io::stdin().lock());
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let (mut line, mut number, mut bad) = (Vec::new(), 0usize, 0usize);
    let mut tally = Tally::default();
    if cli.json {
        out.write_all(b"[")?;
    }
    // What the library refuses whole batches for is reported on its line instead.
    let prefix = client.snapshot()?.policy.prefix;
    let check = |key: &[u8]| -> Result<(), String> {
        libmcshm::proto::check_key(key).map_err(|why| why.to_string())?;
        prefix.check_fits(key).map_err(|e| e.to_string())?;
        match libmcshm::fence::is_reserved_with(prefix.as_bytes(), key) {
            true => Err(libmcshm::proto::KeyError::Reserved.to_string()),
            false => Ok(()),
        }
    };
    thread::scope(|scope| -> Result<()> {
        let mut lanes = Lanes::spawn(scope, client, connect, |client, keys: Keys| {
            let refs: Vec<&[u8]> = keys.iter().collect();
            let result = client.get_many(&refs, false)?;
            Ok((keys, result))
        });
        let mut spare: Vec<Keys> = Vec::new();
        let mut keys = Keys::default();
        let mut written = |(keys, result), spare: &mut Vec<Keys>| -> Result<()> {
            write_batch(cli, &keys, result, &mut out, &mut tally)?;
            spare.push(keys);
            Ok(())
        };
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
                    match check(key) {
                        Ok(()) => keys.push(key),
                        Err(why) => {
                            let shown = String::from_utf8_lossy(key);
                            eprintln!("mclient: line {number}: invalid key '{shown}': {why}");
                            bad += 1;
                        }
                    }
                }
            }
            if keys.len() == BATCH || (n == 0 && keys.len() > 0) {
                while lanes.next_busy() {
                    let done = lanes.collect().expect("a batch in flight")?;
                    written(done, &mut spare)?;
                }
                let mut next = spare.pop().unwrap_or_default();
                next.clear();
                lanes.submit(std::mem::replace(&mut keys, next));
            }
            if n == 0 {
                break;
            }
        }
        while let Some(done) = lanes.collect() {
            written(done?, &mut spare)?;
        }
        Ok(())
    })?;
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

/// One batch's outcome: its hits written in key order (misses counted, errors reported).
fn write_batch(
    cli: &Cli,
    keys: &Keys,
    result: MultiGet,
    out: &mut impl Write,
    tally: &mut Tally,
) -> Result<()> {
    for (server, err) in &result.errors {
        eprintln!("mclient: {server}: {err}");
        tally.errors += 1;
    }
    let mut by_key: HashMap<&[u8], &Item, KeyHash> =
        HashMap::with_capacity_and_hasher(result.items.len(), KeyHash::default());
    for item in &result.items {
        by_key.insert(&item.key, item);
    }
    for key in keys.iter() {
        let found = by_key.get(key);
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
/// server at once), on two lanes ([`Lanes`]) while this thread reads the next batch. Two
/// batches in flight never share a key: a batch with a key of the one before it waits for
/// that one to be stored (a key written twice keeps its last value, as if stored one by
/// one). A malformed record stops the load: the records before it are stored, and the error
/// says how many.
pub fn set(cli: &Cli, client: &mut Client, connect: Connect<'_>, ttl: i64) -> Result<Exit> {
    let mut input = io::BufReader::with_capacity(1 << 16, io::stdin().lock());
    let mut tally = Stores::default();
    // A key that the library would refuse (its batch fails whole, nothing of it sent) is
    // run alone: nothing after it is sent, as when batches ran one after the other.
    let prefix = client.snapshot()?.policy.prefix;
    let refused = |key: &[u8]| {
        libmcshm::proto::check_key(key).is_err()
            || key.len() + prefix.as_bytes().len() > libmcshm::proto::MAX_KEY_LEN
            || libmcshm::fence::is_reserved_with(prefix.as_bytes(), key)
    };
    thread::scope(|scope| -> Result<Exit> {
        let mut lanes = Lanes::spawn(scope, client, connect, move |client, batch: Batch| {
            let results = client.store_many(StoreVerb::Set, &batch.items(ttl))?;
            Ok((batch, results))
        });
        let mut spare: Vec<Batch> = Vec::new();
        // The hashes of the keys of the batch sent last, and of the one being read.
        let mut last_keys: HashSet<u64, Hashed> = HashSet::default();
        let mut keys: HashSet<u64, Hashed> = HashSet::default();
        let mut number = 0;
        loop {
            let mut batch = spare.pop().unwrap_or_default();
            batch.clear();
            keys.clear();
            let (mut shares_a_key, mut alone, mut malformed) = (false, false, None);
            while batch.len() < BATCH {
                match batch.read_record(&mut input, number + 1) {
                    Ok(true) => {
                        number += 1;
                        let key = batch.last_key();
                        let hash = key_hash(key);
                        shares_a_key |= last_keys.contains(&hash);
                        keys.insert(hash);
                        alone |= refused(key);
                    }
                    Ok(false) => break,
                    Err(err) => {
                        malformed = Some(err);
                        break;
                    }
                }
            }
            let last = batch.len() < BATCH;
            // The batches in flight finish first where this one must wait for them; else
            // only the one on this batch's lane.
            while lanes.next_busy() || ((shares_a_key || alone) && !lanes.in_flight.is_empty()) {
                tally.done(lanes.collect().expect("a batch in flight")?, &mut spare);
            }
            if batch.len() > 0 {
                lanes.submit(batch);
            }
            std::mem::swap(&mut keys, &mut last_keys);
            if alone || last {
                while let Some(done) = lanes.collect() {
                    tally.done(done?, &mut spare);
                }
            }
            if let Some(err) = malformed {
                // Every record before the bad one is stored; then the load stops.
                return match tally.stored {
                    0 => Err(err),
                    n => Err(
                        UsageError(format!("{err}; the {n} records before it are stored")).into(),
                    ),
                };
            }
            if last {
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
    })
}

/// A key's hash ([`KeyHash`]), to tell whether two batches share a key.
fn key_hash(key: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    KeyHash::default().hash_one(key)
}

/// A set of [`key_hash`]es hashes each as itself: it is mixed already.
type Hashed = std::hash::BuildHasherDefault<Unhashed>;

#[derive(Default)]
struct Unhashed(u64);

impl std::hash::Hasher for Unhashed {
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 hashes are kept");
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// What bulk-set stored, across its batches.
#[derive(Default)]
struct Stores {
    stored: usize,
    failed: usize,
    errors: bool,
}

impl Stores {
    /// Counts each outcome of a stored batch; its buffers go back to `spare`.
    fn done(
        &mut self,
        (batch, results): (Batch, Vec<libmcshm::Result<Stored>>),
        spare: &mut Vec<Batch>,
    ) {
        for (record, result) in batch.records.iter().zip(&results) {
            let key = || String::from_utf8_lossy(&batch.bytes[record.0.clone()]);
            match result {
                Ok(Stored::Stored) => self.stored += 1,
                Ok(other) => {
                    self.failed += 1;
                    eprintln!("mclient: {}: {other:?}", key());
                }
                Err(err) => {
                    self.failed += 1;
                    self.errors = true;
                    eprintln!("mclient: {}: {err}", key());
                }
            }
        }
        spare.push(batch);
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

    /// The key of the record read last.
    fn last_key(&self) -> &[u8] {
        let (key, _, _) = self.records.last().expect("a record read");
        &self.bytes[key.clone()]
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
    // Bytes split by hand: `str::split` was a tenth of the reading thread's time.
    std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let mut fields = header.split(|&b| b == b' ');
    let (Some(key), Some(flags), Some(len)) = (fields.next(), fields.next(), fields.next()) else {
        return Err("header needs 3 or 4 fields");
    };
    if fields.next().is_some() && fields.next().is_some() {
        return Err("header needs 3 or 4 fields");
    }
    let flags: u32 = decimal(flags).ok_or("bad FLAGS")?;
    let len: usize = decimal(len).ok_or("bad LENGTH")?;
    Ok((key, flags, len))
}

/// A decimal number as `str::parse` reads one (an optional `+`, digits, no overflow).
fn decimal<T: std::str::FromStr>(field: &[u8]) -> Option<T> {
    std::str::from_utf8(field).ok()?.parse().ok()
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
