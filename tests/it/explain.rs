//! `mcadmin explain KEY` says what the clients do, because the routing core answers it: for
//! many keys under every distribution, failover none and rehash, one and two replicas and a
//! down server, its owner and replicas are those `mclient which` prints (a client on the
//! shared ring), its placement is the hash and point that decide them, and a value stored
//! through mclient is found on the server it names. Bad keys get the error every tool gives.

use serde_json::{Value, json};

use crate::common::Reg;
use crate::common::memcached::Memcached;

/// `mclient --json which KEYS…`: per key, its owner and replicas.
fn which(reg: &Reg, domain: &str, keys: &[String]) -> Vec<(String, Vec<String>)> {
    let mut args = vec!["--json", "which"];
    args.extend(keys.iter().map(String::as_str));
    let out = reg.mclient(domain, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let replicas = row["replicas"].as_array().unwrap();
            (
                row["server"].as_str().unwrap().to_string(),
                replicas
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn explain(reg: &Reg, domain: &str, key: &str) -> Value {
    let text = reg.ok(domain, &["--json", "explain", key]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn explain_agrees_with_mclient_which() {
    let reg = Reg::new();
    // Addresses nothing listens on: placing keys needs no server (added without a flush).
    let servers: Vec<String> = (1..=5).map(|n| format!("10.99.0.{n}:11211")).collect();
    let mut add = vec!["add", "--no-flush"];
    add.extend(servers.iter().map(String::as_str));
    reg.ok("d", &add);
    let down = servers[2].as_str();
    reg.ok("d", &["down", down, "--reason", "maintenance"]);
    let keys: Vec<String> = (0..40).map(|n| format!("user:{n}")).collect();
    let cases = [
        ("ketama", "none", 1),
        ("ketama", "rehash", 1),
        ("modula", "none", 1),
        ("modula", "rehash", 1),
        ("ketama", "none", 2),
        ("ketama-spy", "rehash", 2),
        ("pecl-memcache", "none", 1),
    ];
    for (distribution, failover, replicas) in cases {
        let n = replicas.to_string();
        reg.ok(
            "d",
            &[
                "policy",
                "--distribution",
                distribution,
                "--failover",
                failover,
                "--replicas",
                &n,
            ],
        );
        let version = reg.list_json("d")["version"].clone();
        let case = format!("{distribution} {failover} replicas {replicas}");
        let mut down_owned = 0;
        for (key, (owner, chain)) in keys.iter().zip(which(&reg, "d", &keys)) {
            let e = explain(&reg, "d", key);
            let at = format!("{case}, {key}: {e}");
            assert_eq!(e["owner"], owner.as_str(), "{at}");
            assert_eq!(e["replicas"], json!(chain), "{at}");
            assert_eq!(e["version"], version, "{at}");
            assert_eq!(e["distribution"], distribution, "{at}");
            assert_eq!(e["failover"], failover, "{at}");
            assert_eq!(e["placement"]["owner"], owner.as_str(), "{at}");
            let hash = e["hash"].as_u64().unwrap();
            let placement = &e["placement"];
            match distribution {
                "modula" => {
                    let on_ring = if failover == "none" { 5 } else { 4 };
                    assert_eq!(placement["servers"], on_ring, "{at}");
                    assert_eq!(placement["slot"], hash % on_ring, "{at}");
                }
                "pecl-memcache" => assert_eq!(placement["bucket"], hash % 1024, "{at}"),
                _ => {
                    let point = placement["point"].as_u64().unwrap();
                    assert!(
                        point >= hash || placement["point_index"] == 0,
                        "the first point at or after the hash, or the first: {at}"
                    );
                }
            }
            let asks = e["get"]["asks"].as_array().unwrap();
            match failover {
                "none" if owner == down => {
                    down_owned += 1;
                    // Its down owner is not asked; a set fails and says why.
                    assert!(!asks.contains(&json!(down)), "{at}");
                    assert_eq!(asks.len(), chain.len() - 1, "{at}");
                    if replicas == 1 {
                        let error = e["set"]["error"].as_str().unwrap();
                        assert!(error.contains("is down (maintenance)"), "{at}");
                    }
                }
                "none" => {
                    assert_eq!(asks[0], owner.as_str(), "{at}");
                    assert_eq!(e["set"]["stores"][0], owner.as_str(), "{at}");
                }
                _ => {
                    // rehash: the owner named is the interim one when the natural is down.
                    let natural = e["natural"]["owner"].as_str().unwrap();
                    if natural == down {
                        down_owned += 1;
                        assert_ne!(owner, down, "{at}");
                    } else if distribution != "modula" {
                        // Consistent placements move only the down server's keys (modula
                        // moves most: the count of servers changed).
                        assert_eq!(natural, owner, "{at}");
                    }
                    assert_eq!(asks[0], owner.as_str(), "{at}");
                    assert_eq!(e["set"]["stores"][0], owner.as_str(), "{at}");
                    assert_eq!(
                        e["set"]["stores"].as_array().unwrap().len(),
                        chain.len(),
                        "{at}"
                    );
                }
            }
            let states: Vec<&Value> = e["servers"].as_array().unwrap().iter().collect();
            for server in states {
                let expected = if server["address"] == down {
                    "down"
                } else {
                    "up"
                };
                assert_eq!(server["state"], expected, "{at}");
            }
        }
        assert!(
            down_owned > 0,
            "{case}: some of 40 keys are the down server's"
        );
    }
}

#[test]
fn explain_names_the_server_that_holds_the_value() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let reg = Reg::new();
    reg.ok("app", &["add", &a.address(), &b.address()]);
    for n in 0..20 {
        let key = format!("item:{n}");
        assert!(reg.mclient("app", &["set", &key, "v"]).status.success());
        let owner = explain(&reg, "app", &key)["owner"]
            .as_str()
            .unwrap()
            .to_string();
        let (holder, other) = if owner == a.address() {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert_eq!(
            holder.raw_get(&key).as_deref(),
            Some("v"),
            "{key} on {owner}"
        );
        assert_eq!(other.raw_get(&key), None, "{key} only on its owner");
    }
    // In words: the owner, the states, what a get and a set do.
    reg.ok("app", &["policy", "--failover", "rehash"]);
    let key = (0..100)
        .map(|n| format!("item:{n}"))
        .find(|k| explain(&reg, "app", k)["owner"] == b.address().as_str())
        .unwrap();
    reg.ok("app", &["down", &b.address(), "--reason", "disk"]);
    let text = reg.ok("app", &["explain", &key]);
    let version = reg.list_json("app")["version"].as_u64().unwrap();
    for line in [
        format!("key {key} in domain app, table version {version}\n"),
        "distribution ketama, hash md5: the key hashes to 0x".to_string(),
        format!("  its owner {} is down", b.address()),
        format!("interim owner: {}\n", a.address()),
        format!("  {}  down (operator): disk", b.address()),
        "failover rehash:\n".to_string(),
        format!("  get: asks {}\n", a.address()),
        format!("  set: stores on {}", a.address()),
    ] {
        assert!(text.contains(&line), "{line:?} in:\n{text}");
    }
}

#[test]
fn explain_refuses_the_keys_every_tool_refuses() {
    let reg = Reg::new();
    reg.ok("d", &["add", "--no-flush", "10.99.0.1:11211"]);
    reg.ok("d", &["policy", "--prefix", "app:"]);
    let long = "k".repeat(251);
    // 250 bytes with the prefix: one more than fits.
    let fits_not = "k".repeat(247);
    for key in [
        "a b",
        "a\r\nflush_all",
        "tab\there",
        long.as_str(),
        fits_not.as_str(),
    ] {
        let run = reg.run("d", &["explain", key]);
        assert_eq!(run.code(), 2, "{key:?}: {}", run.stderr());
        let theirs = reg.mclient("d", &["get", key]);
        let theirs = String::from_utf8_lossy(&theirs.stderr).into_owned();
        assert_eq!(
            run.stderr().strip_prefix("mcadmin: "),
            theirs.strip_prefix("mclient: "),
            "{key:?}: the same words as mclient's"
        );
    }
    let ok = explain(&reg, "d", &"k".repeat(246));
    assert_eq!(ok["prefix"], "app:");
}

/// A key of a server being drained: its new owner is asked, a miss is filled from the
/// draining server, and a set deletes the key there (as the drain's clients do).
#[test]
fn explain_shows_the_drain_fallback() {
    let reg = Reg::new();
    let servers: Vec<String> = (1..=3).map(|n| format!("10.99.1.{n}:11211")).collect();
    let mut add = vec!["add", "--no-flush"];
    add.extend(servers.iter().map(String::as_str));
    reg.ok("d", &add);
    let keys: Vec<String> = (0..60).map(|n| format!("k{n}")).collect();
    let before = which(&reg, "d", &keys);
    reg.mark_draining("d", 1);
    let draining = servers[1].as_str();
    let after = which(&reg, "d", &keys);
    let mut moved = 0;
    for ((key, (was, _)), (owner, chain)) in keys.iter().zip(before).zip(after) {
        let e = explain(&reg, "d", key);
        assert_eq!(e["owner"], owner.as_str(), "{key}: {e}");
        assert_eq!(e["replicas"], json!(chain), "{key}: {e}");
        if was != draining {
            continue;
        }
        moved += 1;
        assert_eq!(e["get"]["asks"], json!([owner]), "{e}");
        assert_eq!(
            e["get"]["fills"],
            json!([{"from": draining, "to": owner, "kind": "drain"}]),
            "{e}"
        );
        let deletes = e["set"]["deletes"].as_array().unwrap();
        assert!(
            deletes
                .iter()
                .any(|d| d["server"] == draining
                    && d["why"].as_str().unwrap().starts_with("draining")),
            "{e}"
        );
        let text = reg.ok("d", &["explain", key]);
        assert!(
            text.contains(&format!(
                "on a miss, copies the key from {draining} to {owner} ({draining} is draining)"
            )),
            "{text}"
        );
    }
    assert!(moved > 0, "some of 60 keys were the draining server's");
}
