//! A domain's fleet table as etcd stores it: one JSON document per domain at
//! `PREFIX/domains/DOMAIN`, its etcd `mod_revision` being the fleet version.
//!
//! ```json
//! {"servers": [{"address": "cache1:11211", "weight": 1, "state": "down", "retry_interval": 15,
//!               "reason": "2 consecutive failures", "since_ms": 1764000000000,
//!               "warm_until_ms": 0, "down_by": "failures"}],
//!  "policy": {"failover": "none", "failure_limit": 2, "rejoin": "flush", "replicas": 1,
//!             "warm_window_s": 600, "distribution": "ketama", "hash": "md5", "prefix": "app1:"},
//!  "changed": {"by": "mcadmin", "host": "web1", "pid": 4242, "ms": 1764000000000}}
//! ```
//!
//! A `vbucket` domain's document has its bucket map too, as libvbucket writes one (server
//! indexes into `servers`, -1 for none; `vBucketMapForward` while a move is under way):
//! `"buckets": {"numReplicas": 1, "vBucketMap": [[0, 1], [1, 0]], "vBucketMapForward": …}`.
//!
//! Anything under the prefix may have been written by anyone with access to etcd, so a document
//! is hostile input: it is size-limited, and every field goes through the checks `mcadmin`
//! applies to its own arguments (address, weight, state, retry interval, reason, policy,
//! duplicates). A bad document is refused as a whole, naming the key and the field. Unknown
//! fields are ignored (a newer mcshm may add some; `prefix`, absent when there is none, is one
//! that agents older than prefixes ignore: upgrade every agent before setting a prefix). Server ids and live records are per host and
//! are not part of the document.

use mcshm_table::Address;
use mcshm_table::placement::Distribution;
use mcshm_table::placement::buckets::{BucketMap, Shape, from_signed_cell, signed_cell};
use mcshm_table::prefix::KeyPrefix;
use mcshm_table::table::{
    Policy, Server, State, Table, check_failure_limit, check_reason, check_replicas,
    check_retry_interval, check_warm_window, check_weight, first_duplicate,
};
use serde::{Deserialize, Serialize};

/// The largest document accepted (etcd's default request limit is 1.5 MiB).
pub const MAX_DOCUMENT: usize = 4 << 20;

/// Who wrote a document (for `list` and for recognising one's own write after a lost answer).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Document {
    servers: Vec<ServerDoc>,
    #[serde(default)]
    policy: PolicyDoc,
    #[serde(default)]
    changed: Changed,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    buckets: Option<BucketsDoc>,
}

/// A bucket map, as libvbucket names its fields.
#[derive(Serialize, Deserialize)]
struct BucketsDoc {
    #[serde(rename = "numReplicas")]
    replicas: usize,
    #[serde(rename = "vBucketMap")]
    map: Vec<Vec<i64>>,
    #[serde(
        rename = "vBucketMapForward",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    forward: Option<Vec<Vec<i64>>>,
}

fn buckets_doc(map: &BucketMap) -> BucketsDoc {
    let rows = |cells: &[u16]| -> Vec<Vec<i64>> {
        cells
            .chunks_exact(map.width())
            .map(|row| row.iter().map(|&c| signed_cell(c)).collect())
            .collect()
    };
    BucketsDoc {
        replicas: map.shape().replicas,
        map: rows(map.cells()),
        forward: map.forward_cells().map(rows),
    }
}

fn decode_buckets(doc: &BucketsDoc, servers: usize) -> Result<BucketMap, String> {
    let shape = Shape::new(doc.map.len(), doc.replicas)?;
    let cells = |rows: &[Vec<i64>]| -> Result<Vec<u16>, String> {
        let mut cells = Vec::with_capacity(shape.cells());
        for (b, row) in rows.iter().enumerate() {
            if row.len() != shape.width() {
                return Err(format!(
                    "bucket {b}: a row of {} cells, not {}",
                    row.len(),
                    shape.width()
                ));
            }
            for &c in row {
                cells.push(
                    from_signed_cell(c, servers)
                        .ok_or_else(|| format!("bucket {b}: server index {c} out of range"))?,
                );
            }
        }
        Ok(cells)
    };
    let forward = match &doc.forward {
        Some(rows) if rows.len() != doc.map.len() => {
            return Err("vBucketMapForward and vBucketMap differ in length".into());
        }
        Some(rows) => Some(cells(rows)?),
        None => None,
    };
    BucketMap::new(shape, cells(&doc.map)?, forward, servers)
}

#[derive(Serialize, Deserialize)]
struct ServerDoc {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default = "up")]
    state: String,
    #[serde(default = "default_retry")]
    retry_interval: i64,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    since_ms: u64,
    #[serde(default)]
    warm_until_ms: u64,
    /// A down server's: "operator" (held until an operator's up) or "failures" (retried
    /// automatically); absent in documents of mcshm before it, which meant "failures".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    down_by: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct PolicyDoc {
    failover: String,
    failure_limit: u32,
    rejoin: String,
    replicas: u32,
    warm_window_s: u32,
    /// Absent in documents of mcshm before distributions: ketama.
    #[serde(default = "ketama")]
    distribution: String,
    #[serde(default)]
    hash: Option<String>,
    /// The key prefix; absent or "" for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    prefix: String,
    /// Fencing: "on" or "off"; absent for "auto" (documents before fencing, and those that
    /// leave it to the release).
    #[serde(default = "auto", skip_serializing_if = "is_auto")]
    fence: String,
}

fn auto() -> String {
    "auto".into()
}

fn is_auto(fence: &str) -> bool {
    fence == "auto"
}

fn ketama() -> String {
    "ketama".into()
}

impl Default for PolicyDoc {
    fn default() -> PolicyDoc {
        policy_doc(&Policy::default())
    }
}

fn one() -> u32 {
    1
}
fn up() -> String {
    "up".into()
}
fn default_retry() -> i64 {
    i64::from(mcshm_table::table::DEFAULT_RETRY_INTERVAL)
}

fn policy_doc(p: &Policy) -> PolicyDoc {
    PolicyDoc {
        failover: p.failover.as_str().into(),
        failure_limit: u32::from(p.failure_limit),
        rejoin: p.rejoin.as_str().into(),
        replicas: u32::from(p.replicas),
        warm_window_s: p.warm_window_s,
        distribution: p.distribution.as_str().into(),
        hash: Some(p.distribution.hash_name().into()),
        prefix: p.prefix.to_string(),
        fence: p.fence.as_str().into(),
    }
}

/// The JSON document of `table` (its `fleet_revision`, ids and live records are left out).
pub fn encode(table: &Table, changed: &Changed) -> Vec<u8> {
    let document = Document {
        servers: table
            .servers
            .iter()
            .map(|s| ServerDoc {
                address: s.address.to_string(),
                weight: u32::from(s.weight),
                state: s.state.as_str().into(),
                retry_interval: i64::from(s.retry_interval),
                reason: s.reason.clone(),
                since_ms: s.since_ms,
                warm_until_ms: s.warm_until_ms,
                down_by: (s.state == State::Down).then(|| match s.held {
                    true => "operator".into(),
                    false => "failures".into(),
                }),
            })
            .collect(),
        policy: policy_doc(&table.policy),
        changed: changed.clone(),
        buckets: table.buckets.as_deref().map(buckets_doc),
    };
    serde_json::to_vec(&document).expect("a table always serializes")
}

/// Decodes and validates a document; the error names the field (the caller adds the key).
pub fn decode(bytes: &[u8]) -> Result<(Table, Changed), String> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(format!(
            "{} bytes, more than the {MAX_DOCUMENT} a fleet table may have",
            bytes.len()
        ));
    }
    let document: Document =
        serde_json::from_slice(bytes).map_err(|e| format!("not a fleet table: {e}"))?;
    if document.servers.len() > mcshm_table::registry::MAX_SERVERS as usize {
        return Err(format!(
            "{} servers, more than the {} a domain may have",
            document.servers.len(),
            mcshm_table::registry::MAX_SERVERS
        ));
    }
    let servers = document
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| decode_server(s).map_err(|e| format!("server #{}: {e}", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(dup) = first_duplicate(&servers) {
        return Err(format!("server {} listed twice", dup.address));
    }
    let p = &document.policy;
    let policy = Policy {
        failover: p.failover.parse().map_err(|e| format!("policy: {e}"))?,
        failure_limit: check_failure_limit(&p.failure_limit.to_string())
            .map_err(|e| format!("policy: {e}"))?,
        rejoin: p.rejoin.parse().map_err(|e| format!("policy: {e}"))?,
        replicas: check_replicas(&p.replicas.to_string()).map_err(|e| format!("policy: {e}"))?,
        warm_window_s: check_warm_window(&p.warm_window_s.to_string())
            .map_err(|e| format!("policy: {e}"))?,
        distribution: Distribution::parse(&p.distribution, p.hash.as_deref())
            .map_err(|e| format!("policy: {e}"))?,
        prefix: KeyPrefix::parse(&p.prefix).map_err(|e| format!("policy: {e}"))?,
        fence: p.fence.parse().map_err(|e| format!("policy: {e}"))?,
    };
    let buckets = document
        .buckets
        .as_ref()
        .map(|doc| decode_buckets(doc, servers.len()).map_err(|e| format!("buckets: {e}")))
        .transpose()?
        .map(std::sync::Arc::new);
    if buckets.is_some() != policy.distribution.has_buckets() {
        return Err(
            "buckets: a bucket map goes with the vbucket distribution, and only with it".into(),
        );
    }
    Ok((
        Table {
            servers,
            policy,
            fleet_revision: 0,
            buckets,
        },
        document.changed,
    ))
}

fn decode_server(s: &ServerDoc) -> Result<Server, String> {
    let address = Address::parse(&s.address).map_err(|e| e.to_string())?;
    let weight = check_weight(s.weight).map_err(|e| e.to_string())?;
    let state: State = s
        .state
        .parse()
        .map_err(|e: mcshm_table::Error| e.to_string())?;
    let retry_interval = check_retry_interval(s.retry_interval).map_err(|e| e.to_string())?;
    check_reason(&s.reason).map_err(|e| e.to_string())?;
    let held = match s.down_by.as_deref() {
        None | Some("failures") => false,
        Some("operator") => true,
        Some(other) => {
            return Err(format!(
                "invalid down_by '{other}': expected 'operator' or 'failures'"
            ));
        }
    };
    Ok(Server {
        weight,
        state,
        retry_interval,
        reason: s.reason.clone(),
        since_ms: s.since_ms,
        warm_until_ms: s.warm_until_ms,
        held: held && state == State::Down,
        ..Server::new(address)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcshm_table::table::Fence;

    fn table() -> Table {
        let mut b = Server::new(Address::parse("[::1]:11212").unwrap());
        b.state = State::Down;
        b.reason = "disk \"failure\"".into();
        b.weight = 3;
        b.retry_interval = -1;
        b.since_ms = 12;
        Table {
            servers: vec![Server::new(Address::parse("cache1").unwrap()), b],
            policy: Policy {
                replicas: 2,
                distribution: mcshm_table::placement::Distribution::parse(
                    "ketama-unweighted",
                    Some("murmur"),
                )
                .unwrap(),
                prefix: KeyPrefix::parse("app1:").unwrap(),
                ..Policy::default()
            },
            fleet_revision: 0,
            buckets: None,
        }
    }

    #[test]
    fn documents_round_trip() {
        let changed = Changed {
            by: "mcadmin".into(),
            host: "h".into(),
            pid: 1,
            ms: 2,
        };
        let (back, who) = decode(&encode(&table(), &changed)).unwrap();
        assert_eq!(back, table());
        assert_eq!(who, changed);
        // Fencing: absent (and not written) for auto, as in documents before it.
        let auto = String::from_utf8(encode(&table(), &changed)).unwrap();
        assert!(!auto.contains("fence"), "{auto}");
        for fence in [Fence::On, Fence::Off] {
            let mut t = table();
            t.policy.fence = fence;
            let text = encode(&t, &changed);
            assert!(String::from_utf8_lossy(&text).contains(&format!(r#""fence":"{fence}""#)));
            assert_eq!(decode(&text).unwrap().0, t);
        }
    }

    #[test]
    fn hostile_documents_are_refused_naming_the_field() {
        let cases: &[(&str, &str)] = &[
            ("{", "not a fleet table"),
            ("[]", "not a fleet table"),
            (r#"{"servers":[{"address":"a b"}]}"#, "server #1"),
            (r#"{"servers":[{"address":"a","weight":0}]}"#, "weight"),
            (
                r#"{"servers":[{"address":"a","state":"sideways"}]}"#,
                "state",
            ),
            (
                r#"{"servers":[{"address":"a","retry_interval":-5}]}"#,
                "retry",
            ),
            (
                r#"{"servers":[{"address":"a","reason":"x\ny"}]}"#,
                "control",
            ),
            (
                r#"{"servers":[{"address":"a"},{"address":"a:11211"}]}"#,
                "twice",
            ),
            (
                r#"{"servers":[],"policy":{"failover":"x","failure_limit":2,"rejoin":"flush","replicas":1,"warm_window_s":600}}"#,
                "policy",
            ),
            (
                r#"{"servers":[],"policy":{"failover":"none","failure_limit":0,"rejoin":"flush","replicas":1,"warm_window_s":600}}"#,
                "failure limit",
            ),
            (
                r#"{"servers":[],"policy":{"failover":"none","failure_limit":2,"rejoin":"flush","replicas":1,"warm_window_s":600,"prefix":"a b"}}"#,
                "key prefix",
            ),
            (
                r#"{"servers":[],"policy":{"failover":"none","failure_limit":2,"rejoin":"flush","replicas":1,"warm_window_s":600,"fence":"maybe"}}"#,
                "fence",
            ),
        ];
        for (text, expect) in cases {
            let err = decode(text.as_bytes()).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
        }
        let big = vec![b' '; MAX_DOCUMENT + 1];
        assert!(decode(&big).unwrap_err().contains("more than"));
    }

    #[test]
    fn a_bucket_map_round_trips_and_a_hostile_one_is_refused() {
        let mut t = table();
        t.policy.distribution = Distribution::parse("vbucket", Some("crc")).unwrap();
        let mut map = BucketMap::balanced(Shape::new(8, 1).unwrap(), &[0, 1]);
        map.stage(3, 0);
        t.buckets = Some(std::sync::Arc::new(map));
        let (back, _) = decode(&encode(&t, &Changed::default())).unwrap();
        assert_eq!(back, t);
        let policy = r#""policy":{"failover":"none","failure_limit":2,"rejoin":"flush","replicas":1,"warm_window_s":600,"distribution":"vbucket","hash":"crc"}"#;
        let servers = r#""servers":[{"address":"a"},{"address":"b"}]"#;
        let cases: &[(&str, &str)] = &[
            (
                r#""buckets":{"numReplicas":0,"vBucketMap":[[0],[1],[0]]}"#,
                "power of two",
            ),
            (
                r#""buckets":{"numReplicas":0,"vBucketMap":[[0],[2]]}"#,
                "out of range",
            ),
            (
                r#""buckets":{"numReplicas":1,"vBucketMap":[[0],[1]]}"#,
                "a row of 1 cells",
            ),
            (
                r#""buckets":{"numReplicas":5,"vBucketMap":[[0,1,-1,-1,-1,-1]]}"#,
                "at most 4",
            ),
            (
                r#""buckets":{"numReplicas":0,"vBucketMap":[[0],[1]],"vBucketMapForward":[[0]]}"#,
                "differ in length",
            ),
            (r#""buckets":null"#, "goes with the vbucket distribution"),
        ];
        for (buckets, expect) in cases {
            let text = format!("{{{servers},{policy},{buckets}}}");
            let err = decode(text.as_bytes()).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }
}
