//! `mcadmin explain KEY`: which server owns a key and why, and what a get and a set of it do,
//! in words or JSON (mcrouter's `__mcrouter__.route`, for mcshm). Nothing is decided here: the
//! routing core answers (`mcshm_route::Router` on the table's current version: the placement,
//! the replicas, the read and write plans), as it answers every client and mcproxy, so the
//! explanation cannot drift from what they do. This module only puts the answers into words.

use anyhow::Result;
use libmcshm::clock::now_ms;
use libmcshm::placement::{Placed, Via};
use libmcshm::table::Failover;
use libmcshm::{Server, Snapshot, State};
use mcshm_route::{FillKind, ReadPlan, Router, WritePlan};
use serde_json::{Value, json};

use crate::show::{down_by, print};
use crate::{Exit, Invocation};

/// What the router answered for one key.
struct Explained {
    snapshot: std::sync::Arc<Snapshot>,
    failures: Vec<u32>,
    key: String,
    /// Where the key lands on the ring the clients route on (under rehash, the up servers').
    placed: Placed,
    /// Its replicas, owner first (what `mclient which` prints).
    chain: Vec<usize>,
    /// Under rehash: where it lands with every server on the ring, and the replicas there.
    natural: Option<(Placed, Vec<usize>)>,
    read: ReadPlan,
    write: std::result::Result<WritePlan, String>,
}

pub fn explain(ctx: &Invocation, key: &str) -> Result<Exit> {
    let reading = ctx.store.read()?;
    let snapshot = reading.snapshot.clone();
    let now = now_ms();
    let in_domain = |err: libmcshm::Error| match err {
        libmcshm::Error::NoServers { .. } => libmcshm::Error::NoServers {
            what: format!("domain '{}'", ctx.local.domain),
        },
        other => other,
    };
    // The rules on this version as it is: no registry handle, so explaining counts no
    // failure, takes no retry lease and holds no clients record.
    let mut router = Router::for_snapshot((*snapshot).clone());
    let placed = router.placement(key.as_bytes(), now).map_err(in_domain)?;
    let chain = router.chain(key.as_bytes(), now).map_err(in_domain)?;
    let read = router.plan_read(key.as_bytes(), now).map_err(in_domain)?;
    let write = router
        .plan_write(key.as_bytes(), false, now)
        .map_err(|e| in_domain(e).to_string());
    let natural = match snapshot.policy.failover {
        Failover::None => None,
        Failover::Rehash => {
            // The placement with every server on the ring, as under failover none: the key's
            // owner when all are up.
            let mut all = (*snapshot).clone();
            all.policy.failover = Failover::None;
            let mut router = Router::for_snapshot(all);
            let placed = router.placement(key.as_bytes(), now).map_err(in_domain)?;
            let chain = router.chain(key.as_bytes(), now).map_err(in_domain)?;
            Some((placed, chain))
        }
    };
    let explained = Explained {
        snapshot,
        failures: reading.failures,
        key: key.to_string(),
        placed,
        chain,
        natural,
        read,
        write,
    };
    print(ctx, || explained.json(), || explained.text())?;
    Ok(Exit::Success)
}

impl Explained {
    fn server(&self, i: usize) -> &Server {
        &self.snapshot.servers[i]
    }

    fn address(&self, i: usize) -> String {
        self.server(i).address.to_string()
    }

    fn addresses(&self, positions: impl IntoIterator<Item = usize>) -> Vec<String> {
        positions.into_iter().map(|i| self.address(i)).collect()
    }

    /// Every server the explanation names, in the order it first names them.
    fn involved(&self) -> Vec<usize> {
        let mut all: Vec<usize> = Vec::new();
        let natural = self
            .natural
            .iter()
            .flat_map(|(p, c)| std::iter::once(p.owner).chain(c.iter().copied()));
        let read = self.read.replicas.iter().map(|r| r.index).chain(
            self.read
                .fills
                .iter()
                .flat_map(|f| [f.from.index, f.to.index]),
        );
        let write = self.write.iter().flat_map(|w| {
            w.targets
                .iter()
                .chain(&w.invalidate)
                .map(|r| r.index)
                .collect::<Vec<_>>()
        });
        for i in std::iter::once(self.placed.owner)
            .chain(self.chain.iter().copied())
            .chain(natural)
            .chain(read)
            .chain(write)
        {
            if !all.contains(&i) {
                all.push(i);
            }
        }
        all
    }

    /// A server's state in words: `up`, `down (operator): why`, `draining`, with its mark and
    /// failures.
    fn state_text(&self, i: usize) -> String {
        let s = self.server(i);
        let mut text = match down_by(s) {
            Some(by) => format!("down ({by})"),
            None => s.state.to_string(),
        };
        if !s.reason.is_empty() && s.state != State::Up {
            text += &format!(": {}", s.reason);
        }
        if s.strays_since != 0 {
            text += &format!(
                "; marked since version {}: may hold stale copies of keys it no longer owns",
                s.strays_since
            );
        }
        match self.failures.get(i).copied().unwrap_or(0) {
            0 => {}
            n => text += &format!("; {n} failures in a row"),
        }
        text
    }

    /// Why a write deletes its key on server `i`.
    fn delete_reason(&self, i: usize) -> &'static str {
        let s = self.server(i);
        if s.state == State::Draining {
            "draining: it owned the key before the drain"
        } else if s.strays_since != 0 {
            "marked: it may hold a stale copy"
        } else {
            "the next server along the ring: under rehash the key goes there if its owners fail"
        }
    }

    /// How `placed` reached its owner: (what decided it, in words).
    fn placement_text(&self, placed: &Placed) -> String {
        let owner = self.address(placed.owner);
        match placed.via {
            Via::Point { point, points } => format!(
                "the first point at or after the hash is {:#010x} (#{} of {points} points, from 0), one of {owner}'s",
                point.value, point.index
            ),
            Via::Modula { members, slot } => format!(
                "{:#010x} % {members} servers = {slot}: the {} server of the list, {owner}",
                placed.hash,
                ordinal(slot + 1)
            ),
            Via::Bucket { bucket, point } => format!(
                "bucket {:#010x} % 1024 = {bucket}, whose point {point:#010x} is one of {owner}'s",
                placed.hash
            ),
            Via::VBucket {
                bucket,
                buckets,
                column,
            } => {
                let masked = match self.snapshot.servers.len() {
                    1 => "one server on the list: bucket 0 whatever the key".to_string(),
                    _ => format!("{:#010x} & {} = bucket {bucket}", placed.hash, buckets - 1),
                };
                match column {
                    Some(0) => format!("{masked}, owned by {owner}"),
                    Some(c) => {
                        format!("{masked}, whose owner is not routed: its replica #{c}, {owner}")
                    }
                    None => format!(
                        "{masked}, none of whose row is routed: the next routed server of the list after its owner, {owner}"
                    ),
                }
            }
        }
    }

    /// What the placement is called: ring, modula or continuum.
    fn placement_kind(&self) -> &'static str {
        match self.placed.via {
            Via::Point { .. } => "ring",
            Via::Modula { .. } => "modula",
            Via::Bucket { .. } => "continuum",
            Via::VBucket { .. } => "bucket map",
        }
    }

    fn text(&self) -> String {
        let s = &self.snapshot;
        let p = &s.policy;
        let mut out = format!(
            "key {} in domain {}, table version {}\n",
            self.key, s.domain, s.version
        );
        if !p.prefix.as_bytes().is_empty() {
            out += &format!(
                "sent as {}{} (the prefix is not hashed)\n",
                p.prefix, self.key
            );
        }
        out += &format!(
            "distribution {}, hash {}: the key hashes to {:#010x} ({})\n",
            p.distribution.as_str(),
            p.distribution.hash_name(),
            self.placed.hash,
            self.placed.hash
        );
        let owner = self.placed.owner;
        match &self.natural {
            Some((natural, chain)) if natural.owner != owner => {
                out += &format!(
                    "{} with every server: {}\n",
                    self.placement_kind(),
                    self.placement_text(natural)
                );
                let (was, state) = (
                    self.address(natural.owner),
                    self.server(natural.owner).state,
                );
                out += &match state {
                    State::Up => format!(
                        "  its owner {was} is up, but failover rehash places keys on the up servers only, and there the key moves (modula: the count of servers changed)\n"
                    ),
                    _ => format!(
                        "  its owner {was} is {state}: failover rehash moves its keys to the up servers while it is away\n"
                    ),
                };
                if chain.len() > 1 {
                    out += &format!(
                        "  replicas there: {}\n",
                        self.addresses(chain.clone()).join(", ")
                    );
                }
                out += &format!(
                    "{} of the up servers: {}\n",
                    self.placement_kind(),
                    self.placement_text(&self.placed)
                );
                out += &format!("interim owner: {}\n", self.address(owner));
            }
            _ => {
                out += &format!(
                    "{}: {}\n",
                    self.placement_kind(),
                    self.placement_text(&self.placed)
                );
                out += &format!("owner: {}\n", self.address(owner));
            }
        }
        out += &format!(
            "replicas ({} wanted): {}\n",
            p.replicas.max(1),
            self.addresses(self.chain.clone()).join(", ")
        );
        out += "servers:\n";
        let rows: Vec<[String; 2]> = self
            .involved()
            .into_iter()
            .map(|i| [self.address(i), self.state_text(i)])
            .collect();
        for line in crate::show::align(&["ADDRESS".into(), "STATE".into()], &rows)
            .lines()
            .skip(1)
        {
            out += &format!("  {line}\n");
        }
        out += &format!("failover {}:\n", p.failover.as_str());
        out += &format!("  get: {}\n", self.get_text());
        for line in self.set_text() {
            out += &format!("  {line}\n");
        }
        out
    }

    fn get_text(&self) -> String {
        let asks = self.addresses(self.read.replicas.iter().map(|r| r.index));
        let mut text = match asks.as_slice() {
            [] => format!(
                "a miss, without asking a server: {} is down, and no other server is asked (none can serve the key stale)",
                self.addresses(self.chain.clone()).join(", ")
            ),
            [one] => format!("asks {one}"),
            many => format!("asks {} in turn; the first hit wins", many.join(", ")),
        };
        for fill in &self.read.fills {
            let (from, to) = (self.address(fill.from.index), self.address(fill.to.index));
            let why = match fill.kind {
                FillKind::Warm => {
                    format!("warm-up: {to} rejoined, and {from} owned the key while it was away")
                }
                FillKind::Drain => format!("{from} is draining"),
            };
            text += &format!("; on a miss, copies the key from {from} to {to} ({why})");
        }
        text
    }

    fn set_text(&self) -> Vec<String> {
        match &self.write {
            Err(why) => vec![format!("set: fails: {why}")],
            Ok(plan) => {
                let stores = self.addresses(plan.targets.iter().map(|r| r.index));
                let mut lines = vec![format!("set: stores on {}", stores.join(", "))];
                for r in &plan.invalidate {
                    lines.push(format!(
                        "     and deletes the key on {} ({})",
                        self.address(r.index),
                        self.delete_reason(r.index)
                    ));
                }
                lines
            }
        }
    }

    fn placement_json(&self, placed: &Placed) -> Value {
        let mut v = match placed.via {
            Via::Point { point, points } => json!({
                "kind": "ring",
                "point": point.value,
                "point_index": point.index,
                "points": points,
            }),
            Via::Modula { members, slot } => json!({
                "kind": "modula",
                "servers": members,
                "slot": slot,
            }),
            Via::Bucket { bucket, point } => json!({
                "kind": "bucket",
                "bucket": bucket,
                "point": point,
            }),
            Via::VBucket {
                bucket,
                buckets,
                column,
            } => json!({
                "kind": "vbucket",
                "bucket": bucket,
                "buckets": buckets,
                "column": column,
            }),
        };
        v["hash"] = json!(placed.hash);
        v["owner"] = json!(self.address(placed.owner));
        v
    }

    fn json(&self) -> Value {
        let s = &self.snapshot;
        let p = &s.policy;
        let servers: Vec<Value> = self
            .involved()
            .into_iter()
            .map(|i| {
                let server = self.server(i);
                json!({
                    "address": self.address(i),
                    "state": server.state.as_str(),
                    "down_by": down_by(server),
                    "reason": server.reason,
                    "marked": server.strays_since != 0,
                    "strays_since": server.strays_since,
                    "failures": self.failures.get(i).copied().unwrap_or(0),
                    "weight": server.weight,
                })
            })
            .collect();
        let set = match &self.write {
            Err(why) => json!({"error": why}),
            Ok(plan) => json!({
                "stores": self.addresses(plan.targets.iter().map(|r| r.index)),
                "deletes": plan.invalidate.iter().map(|r| json!({
                    "server": self.address(r.index),
                    "why": self.delete_reason(r.index),
                })).collect::<Vec<_>>(),
            }),
        };
        let fills: Vec<Value> = self
            .read
            .fills
            .iter()
            .map(|f| {
                json!({
                    "from": self.address(f.from.index),
                    "to": self.address(f.to.index),
                    "kind": match f.kind { FillKind::Warm => "warm", FillKind::Drain => "drain" },
                })
            })
            .collect();
        let mut v = json!({
            "domain": s.domain,
            "version": s.version,
            "key": self.key,
            "prefix": p.prefix.to_string(),
            "distribution": p.distribution.as_str(),
            "hash_function": p.distribution.hash_name(),
            "hash": self.placed.hash,
            "failover": p.failover.as_str(),
            "placement": self.placement_json(&self.placed),
            "owner": self.address(self.placed.owner),
            "replicas": self.addresses(self.chain.clone()),
            "servers": servers,
            "get": {
                "asks": self.addresses(self.read.replicas.iter().map(|r| r.index)),
                "fills": fills,
            },
            "set": set,
        });
        if let Some((natural, chain)) = &self.natural {
            v["natural"] = json!({
                "placement": self.placement_json(natural),
                "owner": self.address(natural.owner),
                "replicas": self.addresses(chain.clone()),
            });
        }
        v
    }
}

/// 1st, 2nd, 3rd, 4th, … 11th, 12th, 13th, … 21st.
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}
