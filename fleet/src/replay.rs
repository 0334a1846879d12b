//! Replay across a fleet: a down server of a domain under the `replay` rejoin policy comes
//! back keeping its cache only once every host that mirrors the domain has deleted on it the
//! keys its own clients logged while it was away. Each host's invalidation log is its own (it
//! lives in the host's registry, beside the table its clients route with), so no host can
//! vouch for another's writes: each must answer for itself.
//!
//! Whoever brings the server back (the agent that won its fleet probe, or `mcadmin --etcd up`)
//! writes a request; every agent that mirrors the domain replays its own log on the server
//! and answers (`sync`'s replay duty); the server is marked up for the fleet once all have
//! answered that they replayed, and flushed instead as soon as one cannot vouch, or when one
//! does not answer by the deadline (a host cut off from etcd cannot vouch).
//!
//! The request and the answers live on one lease of the requester: revoked when it is done,
//! expired if it dies. A host keeps logging after it answered (its table has the server down
//! until the fleet's mark-up reaches it); it deletes those keys too, when its table has the
//! server up, and then clears the log (`sync`'s settle).

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libmcshm::Timeouts;
use libmcshm::access::Access;
use libmcshm::lifecycle::{self, FleetReplayed, Missed};
use mcshm_table::clock::now_ms;
use mcshm_table::table::Server;
use mcshm_table::{Address, Domain};
use serde::{Deserialize, Serialize};

use crate::etcd::Kv;
use crate::store::{Fleet, Keys};

/// How long a requester waits for every host's answer by default (`mcadmin sync
/// --replay-deadline`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// How often the requester looks at the answers.
const POLL: Duration = Duration::from_millis(50);

/// A request that every host replay its log on one down server (JSON at
/// `PREFIX/replays/DOMAIN/ADDRESS`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRequest {
    /// Hex digits, unique per request: where the answers go.
    pub id: String,
    pub domain: String,
    pub server: String,
    /// When the fleet's table has the server down since (ms): a host's log must be older.
    pub since_ms: u64,
    /// The requester's lease, which the answers are put on.
    pub lease: i64,
    /// Who asks (host name), for the agents' logs.
    pub by: String,
}

/// One host's answer (JSON at `PREFIX/replay-acks/ID/HOST`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayAnswer {
    /// It deleted the `keys` its clients logged.
    Replayed { keys: usize },
    /// It cannot vouch for what its clients wrote (why): the server must be flushed.
    Flush { why: String },
}

impl ReplayRequest {
    /// A request read under `PREFIX/replays/`, checked as hostile input: the key must be the
    /// one its own domain and server name, the id hex digits.
    pub fn decode(keys: &Keys, kv: &Kv) -> Result<(ReplayRequest, Domain, Address), String> {
        let request: ReplayRequest =
            serde_json::from_slice(&kv.value).map_err(|e| format!("not a replay request: {e}"))?;
        let domain = Domain::new(&request.domain).map_err(|e| e.to_string())?;
        let address = Address::parse(&request.server).map_err(|e| e.to_string())?;
        let valid_id = !request.id.is_empty()
            && request.id.len() <= 32
            && request.id.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid_id || request.lease <= 0 {
            return Err("a replay request needs a hex id and a lease".into());
        }
        if kv.key != keys.replay_key(&domain, &address).as_bytes() {
            return Err("a replay request under another domain's or server's key".into());
        }
        Ok((request, domain, address))
    }
}

/// How a requester asks ([`Fleet::replay`]).
#[derive(Clone, Debug)]
pub struct ReplayAsk {
    /// This host's name in the fleet.
    pub by: String,
    /// How long every host has to answer.
    pub deadline: Duration,
    /// Of the requester's health check of the server.
    pub timeouts: Timeouts,
    /// The domain's TLS and credentials, for the health check.
    pub access: Access,
}

impl Fleet {
    /// Asks every host that mirrors `domain` to replay its log on down `server` and waits for
    /// their answers: what they deleted in all, or why the server must be flushed (it does not
    /// answer; a host cannot vouch, or did not answer by the deadline; etcd failed).
    pub fn replay(
        &self,
        domain: &Domain,
        server: &Server,
        ask: &ReplayAsk,
    ) -> Result<FleetReplayed, String> {
        lifecycle::health_check(&server.address, ask.timeouts, None, &ask.access)?;
        let hosts = self.hosts_mirroring(domain)?;
        if hosts.is_empty() {
            return Err("no host mirrors the domain to vouch for what it missed".into());
        }
        let ttl_s = ask.deadline.as_secs() as i64 + 10;
        let lease = self.etcd.lease_grant(ttl_s).map_err(|e| e.to_string())?;
        let request = ReplayRequest {
            id: request_id(),
            domain: domain.to_string(),
            server: server.address.to_string(),
            since_ms: server.since_ms,
            lease,
            by: ask.by.clone(),
        };
        let answers = self.put_and_await(&request, &hosts, ask.deadline);
        let _ = self.etcd.lease_revoke(lease); // the request and answers go with it
        let answers = answers?;
        let keys = answers.iter().map(|(_, keys)| keys).sum();
        Ok(FleetReplayed {
            hosts: answers.len(),
            keys,
        })
    }

    /// The live hosts whose agents mirror `domain` (a record that cannot be read is skipped:
    /// it mirrors nothing this host can know of).
    fn hosts_mirroring(&self, domain: &Domain) -> Result<BTreeSet<String>, String> {
        let records = self.hosts().map_err(|e| e.to_string())?;
        Ok(records
            .into_iter()
            .flatten()
            .filter(|r| r.domains.contains_key(domain.as_str()))
            .map(|r| r.name)
            .collect())
    }

    /// Writes `request` and waits until every one of `hosts` answered: the keys each
    /// replayed, or the first reason to flush.
    fn put_and_await(
        &self,
        request: &ReplayRequest,
        hosts: &BTreeSet<String>,
        deadline: Duration,
    ) -> Result<Vec<(String, usize)>, String> {
        let domain = Domain::new(&request.domain).map_err(|e| e.to_string())?;
        let address = Address::parse(&request.server).map_err(|e| e.to_string())?;
        let key = self.keys().replay_key(&domain, &address);
        let value = serde_json::to_vec(request).expect("serializes");
        self.etcd
            .put(&key, &value, Some(request.lease))
            .map_err(|e| e.to_string())?;
        let prefix = self.keys().replay_acks_prefix(&request.id);
        let until = Instant::now() + deadline;
        loop {
            let mut replayed = Vec::new();
            if let Ok((kvs, _)) = self.etcd.list(&prefix) {
                for kv in kvs {
                    let host = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                    match serde_json::from_slice::<ReplayAnswer>(&kv.value) {
                        Ok(ReplayAnswer::Replayed { keys }) => replayed.push((host, keys)),
                        Ok(ReplayAnswer::Flush { why }) => {
                            return Err(format!("host {host}: {why}"));
                        }
                        Err(e) => return Err(format!("host {host} answered {e}")),
                    }
                }
            }
            let missing: Vec<&String> = hosts
                .iter()
                .filter(|h| !replayed.iter().any(|(r, _)| r == *h))
                .collect();
            if missing.is_empty() {
                return Ok(replayed);
            }
            if Instant::now() >= until {
                let names: Vec<&str> = missing.iter().map(|h| h.as_str()).collect();
                return Err(format!(
                    "host {} did not answer within {} s",
                    names.join(", host "),
                    deadline.as_secs_f64()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// A host's answer to `request`, on the request's lease.
    pub fn answer_replay(
        &self,
        request: &ReplayRequest,
        host: &str,
        answer: &ReplayAnswer,
    ) -> Result<(), String> {
        let key = self.keys().replay_ack_key(&request.id, host);
        let value = serde_json::to_vec(answer).expect("serializes");
        self.etcd
            .put(&key, &value, Some(request.lease))
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// What a rejoin of the fleet's table of `domain` (or of a host's table the fleet mirrors)
/// asks to learn what a down server missed: every host's replay ([`Fleet::replay`]).
pub fn missed(fleet: Arc<Fleet>, domain: Domain, ask: ReplayAsk) -> Missed {
    Missed::Fleet(Box::new(move |server: &Server| {
        fleet.replay(&domain, server, &ask)
    }))
}

/// A request id: the time and a random part, in hex.
fn request_id() -> String {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{:x}{:08x}", now_ms(), random as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, request: &ReplayRequest) -> Kv {
        Kv {
            key: key.as_bytes().to_vec(),
            value: serde_json::to_vec(request).unwrap(),
            mod_revision: 1,
        }
    }

    fn request() -> ReplayRequest {
        ReplayRequest {
            id: request_id(),
            domain: "app".into(),
            server: "10.0.0.1:11211".into(),
            since_ms: 5,
            lease: 7,
            by: "web1".into(),
        }
    }

    #[test]
    fn a_request_decodes_only_under_its_own_key_with_a_hex_id_and_a_lease() {
        let keys = Keys::new("/mcshm/").unwrap();
        let good = request();
        let (decoded, domain, address) =
            ReplayRequest::decode(&keys, &kv("/mcshm/replays/app/10.0.0.1:11211", &good)).unwrap();
        assert_eq!((decoded, domain.as_str()), (good.clone(), "app"));
        assert_eq!(address.to_string(), "10.0.0.1:11211");
        let elsewhere = kv("/mcshm/replays/other/10.0.0.1:11211", &good);
        assert!(ReplayRequest::decode(&keys, &elsewhere).is_err());
        for bad in [
            ReplayRequest {
                id: "../x".into(),
                ..good.clone()
            },
            ReplayRequest {
                id: String::new(),
                ..good.clone()
            },
            ReplayRequest {
                lease: 0,
                ..good.clone()
            },
        ] {
            let kv = kv("/mcshm/replays/app/10.0.0.1:11211", &bad);
            assert!(ReplayRequest::decode(&keys, &kv).is_err(), "{bad:?}");
        }
        let garbage = Kv {
            key: b"/mcshm/replays/app/10.0.0.1:11211".to_vec(),
            value: b"{\"id\": 1".to_vec(),
            mod_revision: 1,
        };
        assert!(ReplayRequest::decode(&keys, &garbage).is_err());
    }

    #[test]
    fn answers_are_tagged_json() {
        let answer = ReplayAnswer::Replayed { keys: 3 };
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(text, r#"{"replayed":{"keys":3}}"#);
        assert_eq!(serde_json::from_str::<ReplayAnswer>(&text).unwrap(), answer);
        assert!(request_id().bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
