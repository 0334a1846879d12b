//! libvbucket's JSON configuration, read and written: what `mcadmin buckets load FILE.json`
//! takes and `mcadmin buckets dump` gives.
//!
//! Why this format: moxi, libvbucket's clients and Couchbase's bucket configs (`/pools/default/
//! buckets/NAME`) all describe a vbucket map this way, so an operator moving such a fleet onto
//! mcshm can load the map they already have, and a map made with mcshm can be handed back to
//! those tools. A map read here places every key on the same server as libvbucket's
//! `vbucket_get_vbucket_by_key` + `vbucket_get_master` would.
//!
//! The form, as libvbucket's `parse_vbucket_config` (src/vbucket.c) reads it:
//!
//! ```text
//! {"hashAlgorithm": "CRC", "numReplicas": 1, "serverList": ["a:11211", "b:11211"],
//!  "vBucketMap": [[0, 1], [1, 0]], "vBucketMapForward": [[1, 0], [1, 0]]}
//! ```
//!
//! optionally inside a Couchbase bucket config, `{"vBucketServerMap": {…}, …}` (libvbucket
//! looks there first, then at the top level; every other key is ignored). A `"nodeLocator"`
//! of `"vbucket"` is accepted, `"ketama"` (a memcached bucket: no map) refused.
//!
//! Where this reader is stricter than libvbucket, it refuses what libvbucket would read into a
//! different map than written or what mcshm's [`BucketMap`] cannot hold: libvbucket never
//! reads `hashAlgorithm` (it hashes every key with CRC, libhashkit's `crc`, whatever the field
//! says), so any name but `CRC` (in any case, as libvbucket's README allows) is refused rather
//! than silently hashed otherwise; it does not check the 65 536-bucket limit its own message
//! names, nor negative or fractional numbers (it truncates), nor duplicate servers, nor a
//! longer forward map (extra rows ignored), nor replicas without an owner. Its `$HOST`
//! placeholder (replaced by the peer's name) is not substituted here: a map loaded into mcshm
//! names its servers.
//!
//! One thing libvbucket takes is read differently, and said: a row that names a server twice
//! (its own `testapp-config-in-envelope-fft` sample has the forward row `[3, 0, 0]`). A row of
//! mcshm's map names a server once, and a replica on a server the row already names adds no
//! copy, so the repeat is read as -1 (`[3, 0, -1]`): every key has the same owner and the same
//! distinct replicas as in libvbucket, and [`parse`] returns a note saying what was read so.

use std::collections::HashMap;

use libmcshm::Address;
use libmcshm::hash::KeyHash;
use libmcshm::placement::buckets::{
    BucketMap, MAX_BUCKETS, MAX_REPLICAS, Shape, UNASSIGNED, from_signed_cell, signed_cell,
};
use serde_json::{Map, Value};

/// Largest input read (libvbucket's own limit is 100 MiB; a full 65 536-bucket map with four
/// replicas and a forward map, one row a line, is about 4 MiB).
pub const MAX_INPUT: usize = 16 << 20;

/// A libvbucket configuration: the hash, the servers as written, and the map whose cells are
/// positions in `servers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VbucketConfig {
    pub hash: KeyHash,
    /// `"host:port"`, as given.
    pub servers: Vec<String>,
    /// Positions index into `servers`.
    pub map: BucketMap,
}

/// libvbucket's name of a hash, if it has one: only CRC (`hash_crc32` in its src/crc32.c,
/// libhashkit's `crc`: bits 16..30 of the CRC-32).
fn libvbucket_name(hash: KeyHash) -> Option<&'static str> {
    match hash {
        KeyHash::Crc => Some("CRC"),
        _ => None,
    }
}

/// Reads a libvbucket configuration; an error is one line naming the problem and what is
/// accepted. What was read otherwise than written (a server named again in its row) is added
/// to `notes`, a line each.
pub fn parse(bytes: &[u8], notes: &mut Vec<String>) -> Result<VbucketConfig, String> {
    if bytes.len() > MAX_INPUT {
        return Err(format!(
            "{} bytes: a libvbucket config is read up to {} MiB",
            bytes.len(),
            MAX_INPUT >> 20
        ));
    }
    let top: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("not JSON ({e}): expected a libvbucket config object"))?;
    let top = top.as_object().ok_or(
        "expected a JSON object: {\"hashAlgorithm\", \"numReplicas\", \"serverList\", \"vBucketMap\"}",
    )?;
    match top.get("nodeLocator") {
        None => {}
        Some(Value::String(s)) if s == "vbucket" => {}
        Some(Value::String(s)) if s == "ketama" => {
            return Err(
                "nodeLocator \"ketama\": a ketama config has no bucket map (use a ketama domain); expected \"vbucket\"".into(),
            );
        }
        Some(other) => {
            return Err(format!(
                "nodeLocator {other}: expected \"vbucket\" (or no nodeLocator)"
            ));
        }
    }
    // libvbucket: the envelope's vBucketServerMap when it is an object, else the top level.
    let config = match top.get("vBucketServerMap") {
        Some(Value::Object(inner)) => inner,
        _ => top,
    };

    let hash = match config.get("hashAlgorithm") {
        // libvbucket does not require the field: it hashes with CRC.
        None => KeyHash::Crc,
        Some(Value::String(name)) if name.eq_ignore_ascii_case("CRC") => KeyHash::Crc,
        Some(other) => {
            return Err(format!(
                "hashAlgorithm {other}: libvbucket hashes every key with CRC whatever this field says; only \"CRC\" is accepted"
            ));
        }
    };

    let replicas = match config.get("numReplicas") {
        None => return Err(missing("numReplicas", "a number from 0 to 4")),
        Some(v) => match v.as_u64() {
            Some(n) if n as usize <= MAX_REPLICAS => n as usize,
            _ => {
                return Err(format!(
                    "numReplicas {v}: expected a whole number from 0 to {MAX_REPLICAS}"
                ));
            }
        },
    };

    let servers = servers(config)?;

    let rows = match config.get("vBucketMap") {
        None => return Err(missing("vBucketMap", "an array of rows")),
        Some(Value::Array(rows)) => rows,
        Some(_) => return Err("vBucketMap: expected an array of rows".into()),
    };
    let shape = Shape::new(rows.len(), replicas).map_err(|_| {
        format!(
            "vBucketMap has {} rows: the bucket count must be a power of two from 1 to {MAX_BUCKETS}",
            rows.len()
        )
    })?;
    let cells = read_rows("vBucketMap", rows, shape, servers.len(), notes)?;
    let forward = match config.get("vBucketMapForward") {
        None => None,
        Some(Value::Array(forward)) if forward.len() != rows.len() => {
            return Err(format!(
                "vBucketMapForward has {} rows, vBucketMap {}: expected as many",
                forward.len(),
                rows.len()
            ));
        }
        Some(Value::Array(forward)) => Some(read_rows(
            "vBucketMapForward",
            forward,
            shape,
            servers.len(),
            notes,
        )?),
        Some(_) => return Err("vBucketMapForward: expected an array of rows".into()),
    };
    let map = BucketMap::new(shape, cells, forward, servers.len()).map_err(|why| {
        // BucketMap names its tables "map" and "forward map": name them as the file does.
        let why = match why.split_once(", bucket ") {
            Some(("map", rest)) => format!("vBucketMap, bucket {rest}"),
            Some(("forward map", rest)) => format!("vBucketMapForward, bucket {rest}"),
            _ => why,
        };
        format!(
            "{why} (mcshm expects a row to name a server once, and no replicas without an owner)"
        )
    })?;
    Ok(VbucketConfig { hash, servers, map })
}

fn missing(field: &str, expected: &str) -> String {
    format!(
        "no {field}: a libvbucket config needs numReplicas, serverList and vBucketMap ({field}: {expected})"
    )
}

/// serverList: one or more distinct addresses mcshm reads.
fn servers(config: &Map<String, Value>) -> Result<Vec<String>, String> {
    let list = match config.get("serverList") {
        None => return Err(missing("serverList", "an array of \"host:port\"")),
        Some(Value::Array(list)) => list,
        Some(_) => return Err("serverList: expected an array of \"host:port\"".into()),
    };
    let mut servers = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let Value::String(text) = entry else {
            return Err(format!(
                "serverList entry {i} ({entry}): expected a \"host:port\" string"
            ));
        };
        servers.push(text.clone());
    }
    check_servers(&servers)?;
    Ok(servers)
}

/// A server list a map can name: one to 65 535 addresses, no two the same server (as the
/// domain compares them: a host name in any case, an IPv6 address in any form).
fn check_servers(servers: &[String]) -> Result<(), String> {
    if servers.is_empty() {
        return Err("serverList is empty: expected at least one \"host:port\"".into());
    }
    if servers.len() > UNASSIGNED as usize {
        return Err(format!(
            "serverList has {} servers: a bucket map names at most {}",
            servers.len(),
            UNASSIGNED
        ));
    }
    let addresses = servers
        .iter()
        .enumerate()
        .map(|(i, text)| server_address(i, text))
        .collect::<Result<Vec<Address>, String>>()?;
    let mut seen = HashMap::with_capacity(addresses.len());
    for (i, address) in addresses.iter().enumerate() {
        if let Some(j) = seen.insert(address.identity(), i) {
            return Err(format!(
                "serverList entries {j} (\"{}\") and {i} (\"{}\") name the same server: expected each server once",
                servers[j], servers[i]
            ));
        }
    }
    Ok(())
}

/// Server `i` of a list, as an address.
fn server_address(i: usize, text: &str) -> Result<Address, String> {
    if text.contains("$HOST") {
        return Err(format!(
            "serverList entry {i} \"{text}\": libvbucket's $HOST placeholder is not substituted; write the host's name"
        ));
    }
    Address::parse(text).map_err(|e| format!("serverList entry {i}: {e}"))
}

/// The cells of a map's rows: each exactly `shape.width()` server indexes, -1 or in range; a
/// server named again in its row is read as -1, and a note says how often and where first.
fn read_rows(
    what: &str,
    rows: &[Value],
    shape: Shape,
    servers: usize,
    notes: &mut Vec<String>,
) -> Result<Vec<u16>, String> {
    let width = shape.width();
    let mut cells = Vec::with_capacity(shape.cells());
    let mut repeated: Option<(usize, String)> = None;
    let mut repeats = 0;
    for (b, row) in rows.iter().enumerate() {
        let row = match row {
            Value::Array(row) if row.len() == width => row,
            Value::Array(row) => {
                return Err(format!(
                    "{what}, bucket {b}: a row of {} entries, expected numReplicas + 1 = {width}",
                    row.len()
                ));
            }
            _ => {
                return Err(format!(
                    "{what}, bucket {b}: expected an array of numReplicas + 1 = {width} server indexes"
                ));
            }
        };
        let start = cells.len();
        for entry in row {
            let Some(c) = entry.as_i64().and_then(|n| from_signed_cell(n, servers)) else {
                return Err(format!(
                    "{what}, bucket {b}: server index {entry} out of range: expected -1 (none) or 0 to {} (serverList has {servers})",
                    servers - 1
                ));
            };
            if c != UNASSIGNED && cells[start..].contains(&c) {
                repeats += 1;
                repeated.get_or_insert_with(|| (b, Value::Array(row.clone()).to_string()));
                cells.push(UNASSIGNED);
            } else {
                cells.push(c);
            }
        }
    }
    if let Some((b, row)) = repeated {
        notes.push(format!(
            "{what}: {repeats} cell{} naming a server its row already names (first in bucket {b}, {row}) read as -1, as a row of mcshm's map names a server once",
            if repeats == 1 { "" } else { "s" }
        ));
    }
    Ok(cells)
}

/// libvbucket's form of a map over `servers`: the top-level fields (no envelope), one row a
/// line, the same text for the same map. Refused when the hash has no libvbucket name or the
/// map or list is not one [`parse`] reads back.
pub fn to_json(hash: KeyHash, servers: &[String], map: &BucketMap) -> Result<String, String> {
    let name = libvbucket_name(hash).ok_or_else(|| {
        format!(
            "a map hashed with {} has no libvbucket form: libvbucket hashes with CRC only",
            hash.as_str()
        )
    })?;
    check_servers(servers)?;
    map.check(servers.len())?;

    let mut out = String::with_capacity(64 + 32 * map.cells().len());
    out.push_str(&format!(
        "{{\n  \"hashAlgorithm\": \"{name}\",\n  \"numReplicas\": {},\n  \"serverList\": [",
        map.shape().replicas
    ));
    for (i, server) in servers.iter().enumerate() {
        let quoted = serde_json::to_string(server).map_err(|e| e.to_string())?;
        out.push_str(if i == 0 { "\n    " } else { ",\n    " });
        out.push_str(&quoted);
    }
    out.push_str("\n  ],\n");
    write_rows(&mut out, "vBucketMap", map.cells(), map.width());
    if let Some(forward) = map.forward_cells() {
        out.push_str(",\n");
        write_rows(&mut out, "vBucketMapForward", forward, map.width());
    }
    out.push_str("\n}\n");
    Ok(out)
}

fn write_rows(out: &mut String, field: &str, cells: &[u16], width: usize) {
    out.push_str(&format!("  \"{field}\": ["));
    for (b, row) in cells.chunks_exact(width).enumerate() {
        out.push_str(if b == 0 { "\n    [" } else { ",\n    [" });
        for (column, &c) in row.iter().enumerate() {
            if column > 0 {
                out.push_str(", ");
            }
            out.push_str(&signed_cell(c).to_string());
        }
        out.push(']');
    }
    out.push_str("\n  ]");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn samples_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/libvbucket")
    }

    fn sample(name: &str) -> Vec<u8> {
        std::fs::read(samples_dir().join(name)).unwrap()
    }

    /// [`super::parse`] where what it notes does not matter.
    fn parse(bytes: &[u8]) -> Result<VbucketConfig, String> {
        super::parse(bytes, &mut Vec::new())
    }

    /// The samples libvbucket's tests use that mcshm refuses, and why.
    const REFUSED: [(&str, &str); 2] = [
        ("testapp-config-wrong-num-vbuckets", "power of two"),
        ("ketama-eight-nodes", "ketama"),
    ];

    /// The one sample read otherwise than written: its forward rows name servers twice.
    const REPEATS: &str = "testapp-config-in-envelope-fft";

    fn round_trip(config: &VbucketConfig) -> String {
        let text = to_json(config.hash, &config.servers, &config.map).unwrap();
        let again = parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(&again, config);
        let text2 = to_json(again.hash, &again.servers, &again.map).unwrap();
        assert_eq!(text, text2, "to_json is a fixpoint after one round");
        text
    }

    #[test]
    fn every_libvbucket_sample_parses_and_round_trips() {
        let mut parsed = 0;
        for entry in std::fs::read_dir(samples_dir()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if name.ends_with(".md") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == name) {
                let err = parse(&bytes).unwrap_err();
                assert!(err.contains(why), "{name}: {err}");
                continue;
            }
            let mut notes = Vec::new();
            let config = super::parse(&bytes, &mut notes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(notes.is_empty(), name != REPEATS, "{name}: {notes:?}");
            assert_eq!(config.hash, KeyHash::Crc);
            round_trip(&config);
            parsed += 1;
        }
        assert!(parsed >= 8, "{parsed} samples parsed");
    }

    #[test]
    fn the_samples_read_as_libvbucket_reads_them() {
        let plain = parse(&sample("testapp-config")).unwrap();
        assert_eq!(
            plain.servers,
            ["server1:11211", "server2:11210", "server3:11211"]
        );
        assert_eq!(plain.map.shape(), Shape::new(4, 2).unwrap());
        assert_eq!(plain.map.row(2), &[2, 1, UNASSIGNED]);
        assert_eq!(plain.map.forward_cells(), None);
        // The same map inside a Couchbase bucket config's vBucketServerMap.
        for wrapped in ["testapp-config-in-envelope", "testapp-config-in-envelope2"] {
            assert_eq!(parse(&sample(wrapped)).unwrap(), plain, "{wrapped}");
        }
        let big = parse(&sample("regression-bug2112")).unwrap();
        assert_eq!(big.map.shape(), Shape::new(1024, 1).unwrap());
        assert_eq!(big.servers, ["10.2.1.12:11210", "10.2.1.13:11210"]);
        let eight = parse(&sample("vbucket-eight-nodes")).unwrap();
        assert_eq!(eight.map.shape(), Shape::new(16, 2).unwrap());
        assert_eq!(eight.servers.len(), 8);
    }

    #[test]
    fn forward_rows_round_trip() {
        // libvbucket's fft sample: forward rows [3, 0, 0] and [1, 2, 2] read as [3, 0, -1]
        // and [1, 2, -1], and said so.
        let mut notes = Vec::new();
        let config = super::parse(&sample(REPEATS), &mut notes).unwrap();
        assert_eq!(config.map.forward_row(0), Some(&[3, 0, UNASSIGNED][..]));
        assert_eq!(config.map.forward_row(1), Some(&[2, 1, 3][..]));
        assert_eq!(config.map.forward_row(2), Some(&[1, 2, UNASSIGNED][..]));
        assert_eq!(config.map.moving(), 4);
        assert_eq!(
            notes,
            [
                "vBucketMapForward: 2 cells naming a server its row already names (first in \
                 bucket 0, [3,0,0]) read as -1, as a row of mcshm's map names a server once"
            ]
        );
        let out = round_trip(&config);
        assert!(out.contains("\"hashAlgorithm\": \"CRC\""), "{out}");
        assert!(out.contains("\n    [3, 0, -1],\n"), "{out}");
    }

    #[test]
    fn a_full_map_with_forward_rows_round_trips() {
        let servers: Vec<String> = (0..40).map(|i| format!("10.0.{i}.1:11211")).collect();
        let positions: Vec<usize> = (0..servers.len()).collect();
        let mut map =
            BucketMap::balanced(Shape::new(MAX_BUCKETS, MAX_REPLICAS).unwrap(), &positions);
        for b in (0..MAX_BUCKETS).step_by(7) {
            map.stage(b, (b / 7) % servers.len());
        }
        assert!(map.moving() > 0);
        let config = VbucketConfig {
            hash: KeyHash::Crc,
            servers,
            map,
        };
        let text = round_trip(&config);
        assert!(text.len() < MAX_INPUT, "{} bytes", text.len());
    }

    fn refused(text: &str) -> String {
        parse(text.as_bytes()).unwrap_err()
    }

    /// A config with `field` replaced (or removed, for `None`).
    fn with(field: &str, value: Option<Value>) -> String {
        let mut config: Value = serde_json::from_slice(&sample("testapp-config")).unwrap();
        let object = config.as_object_mut().unwrap();
        match value {
            Some(v) => object.insert(field.into(), v),
            None => object.remove(field),
        };
        config.to_string()
    }

    #[test]
    fn malformed_configs_are_refused_naming_the_problem() {
        use serde_json::json;
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "not JSON"),
            ("[1, 2]".into(), "expected a JSON object"),
            (with("numReplicas", None), "no numReplicas"),
            (with("serverList", None), "no serverList"),
            (with("vBucketMap", None), "no vBucketMap"),
            (with("vBucketMap", Some(json!([]))), "vBucketMap has 0 rows"),
            (
                with("vBucketMap", Some(json!([[0, 1, 2], [1, 2, 0], [2, 0, 1]]))),
                "vBucketMap has 3 rows: the bucket count must be a power of two from 1 to 65536",
            ),
            (
                with("vBucketMap", Some(json!(vec![[0, 1, 2]; 131_072]))),
                "vBucketMap has 131072 rows",
            ),
            (
                with("vBucketMap", Some(json!([[0, 1, 2], [1, 2]]))),
                "vBucketMap, bucket 1: a row of 2 entries, expected numReplicas + 1 = 3",
            ),
            (
                with("vBucketMap", Some(json!([[0, 1, 2], 7]))),
                "vBucketMap, bucket 1: expected an array",
            ),
            (
                with("vBucketMap", Some(json!([[0, 1, 2], [1, 3, 0]]))),
                "vBucketMap, bucket 1: server index 3 out of range: expected -1 (none) or 0 to 2",
            ),
            (
                with("vBucketMap", Some(json!([[0, 1, 2], [-2, 1, 0]]))),
                "bucket 1: server index -2 out of range",
            ),
            (
                with("vBucketMap", Some(json!([[0, 1, 2], [0.5, 1, 2]]))),
                "bucket 1: server index 0.5 out of range",
            ),
            (
                with("numReplicas", Some(json!(5))),
                "numReplicas 5: expected a whole number from 0 to 4",
            ),
            (with("numReplicas", Some(json!(-1))), "numReplicas -1"),
            (
                with("vBucketMapForward", Some(json!([[0, 1, 2]]))),
                "vBucketMapForward has 1 rows, vBucketMap 4",
            ),
            (
                with(
                    "vBucketMapForward",
                    Some(json!([[0, 1, 2], [1, 2, 0], [2, 1, -1], [1, 2, 9]])),
                ),
                "vBucketMapForward, bucket 3: server index 9 out of range",
            ),
            (
                with("serverList", Some(json!(["a:1", "b:2", "a:1"]))),
                "serverList entries 0 (\"a:1\") and 2 (\"a:1\") name the same server",
            ),
            (
                with("serverList", Some(json!(["[::1]:1", "b:2", "[0::1]:1"]))),
                "entries 0 (\"[::1]:1\") and 2 (\"[0::1]:1\") name the same server",
            ),
            (with("serverList", Some(json!([]))), "serverList is empty"),
            (
                with("serverList", Some(json!(["cache:1", "b:2", "CACHE:1"]))),
                "entries 0 (\"cache:1\") and 2 (\"CACHE:1\") name the same server",
            ),
            (
                with("serverList", Some(json!(["a:1", "b:99999", "c:3"]))),
                "serverList entry 1: invalid address 'b:99999'",
            ),
            (
                with("serverList", Some(json!(["a:1", 2, "c:3"]))),
                "serverList entry 1 (2): expected a \"host:port\" string",
            ),
            (
                with("serverList", Some(json!(["$HOST:1", "b:2", "c:3"]))),
                "$HOST placeholder",
            ),
            (
                with("hashAlgorithm", Some(json!("MD5"))),
                "hashAlgorithm \"MD5\": libvbucket hashes every key with CRC",
            ),
            (
                with("nodeLocator", Some(json!("ketama"))),
                "nodeLocator \"ketama\"",
            ),
            (with("nodeLocator", Some(json!(1))), "nodeLocator 1"),
            (
                with("vBucketMap", Some(json!([[0, 1, 2], [-1, 1, 0]]))),
                "vBucketMap, bucket 1: replicas without an owner",
            ),
            (" ".repeat(MAX_INPUT + 1), "read up to 16 MiB"),
        ];
        for (text, expected) in cases {
            let err = refused(&text);
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }

    #[test]
    fn what_libvbucket_accepts_loosely_is_read_as_it_reads_it() {
        use serde_json::json;
        // No hashAlgorithm: libvbucket hashes with CRC.
        assert_eq!(
            parse(with("hashAlgorithm", None).as_bytes()).unwrap().hash,
            KeyHash::Crc
        );
        assert_eq!(
            parse(with("hashAlgorithm", Some(json!("crc"))).as_bytes())
                .unwrap()
                .hash,
            KeyHash::Crc
        );
        assert!(parse(with("nodeLocator", Some(json!("vbucket"))).as_bytes()).is_ok());
        // A server twice in a row (the owner again as a replica): the repeat read as -1.
        let mut notes = Vec::new();
        let twice = with(
            "vBucketMap",
            Some(json!([[0, 1, 1], [1, 1, 0], [2, 2, 2], [0, 1, 2]])),
        );
        let config = super::parse(twice.as_bytes(), &mut notes).unwrap();
        assert_eq!(config.map.row(0), &[0, 1, UNASSIGNED]);
        assert_eq!(config.map.row(1), &[1, UNASSIGNED, 0]);
        assert_eq!(config.map.row(2), &[2, UNASSIGNED, UNASSIGNED]);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with(
                "vBucketMap: 4 cells naming a server its row already names (first in bucket 0, \
                 [0,1,1])"
            ),
            "{notes:?}"
        );
    }

    #[test]
    fn to_json_refuses_what_has_no_libvbucket_form() {
        let servers = vec!["a:1".to_string(), "b:2".to_string()];
        let map = BucketMap::balanced(Shape::new(4, 1).unwrap(), &[0, 1]);
        let err = to_json(KeyHash::Md5, &servers, &map).unwrap_err();
        assert!(err.contains("md5") && err.contains("CRC only"), "{err}");
        assert!(
            to_json(KeyHash::Crc, &servers[..1], &map)
                .unwrap_err()
                .contains("out of range")
        );
        let twice = vec!["a:1".to_string(), "a:1".to_string()];
        assert!(
            to_json(KeyHash::Crc, &twice, &map)
                .unwrap_err()
                .contains("name the same server")
        );
        let text = to_json(KeyHash::Crc, &servers, &map).unwrap();
        assert_eq!(
            text,
            "{\n  \"hashAlgorithm\": \"CRC\",\n  \"numReplicas\": 1,\n  \"serverList\": [\n    \"a:1\",\n    \"b:2\"\n  ],\n  \"vBucketMap\": [\n    [0, 1],\n    [1, 0],\n    [0, 1],\n    [1, 0]\n  ]\n}\n"
        );
    }
}
