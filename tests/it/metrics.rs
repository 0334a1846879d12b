//! The host as metrics (issue 32): `mcadmin metrics` and `mcadmin watch --metrics`, real
//! mcadmin, mclient and memcached processes. Every page is read whole by a strict reader of
//! the format (`tests/common/prometheus.rs`: each family with one HELP and one TYPE, its
//! samples together, names valid, values numbers, labels escaped) and compared, server by
//! server, with what `mcadmin list --json` says of the same table.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::memcached::Memcached;
use crate::common::prometheus::{self, Page};
use crate::common::{MCADMIN, Reg, closed_port_address, wait_until};

/// `mcadmin --dir DIR ARGS…` with no domain named (metrics then shows every domain).
fn mcadmin(reg: &Reg, args: &[&str]) -> std::process::Output {
    Command::new(MCADMIN)
        .arg("--dir")
        .arg(reg.dir())
        .args(args)
        .env_remove("MCSHM_DIR")
        .env_remove("MCSHM_DOMAIN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn read_page(text: &str) -> Page {
    prometheus::parse(text).unwrap_or_else(|why| panic!("{why}\n{text}"))
}

/// The page says what `list --json` says of `domain`: its version and change time, and per
/// server its state (one state at 1, every state named), who holds it down, weight, failures,
/// mark, and what it missed.
fn agrees_with_list(page: &Page, reg: &Reg, domain: &str) {
    let list = reg.list_json(domain);
    let d = [("domain", domain)];
    assert_eq!(page.value("mcshm_table_readable", &d), 1.0);
    assert_eq!(
        page.value("mcshm_table_version", &d),
        list["version"].as_u64().unwrap() as f64
    );
    let changed = page.value("mcshm_table_change_timestamp_seconds", &d);
    assert!((changed - list["changed_ms"].as_u64().unwrap() as f64 / 1000.0).abs() < 0.002);
    let servers = list["servers"].as_array().unwrap();
    assert_eq!(page.value("mcshm_table_servers", &d), servers.len() as f64);
    for server in servers {
        let address = server["address"].as_str().unwrap();
        let labels = [("domain", domain), ("server", address)];
        let state = server["state"].as_str().unwrap();
        assert_eq!(
            page.value("mcshm_server_up", &labels),
            f64::from(state == "up"),
            "{address}"
        );
        for each in ["up", "down", "draining"] {
            let with_state = [labels[0], labels[1], ("state", each)];
            assert_eq!(
                page.value("mcshm_server_state", &with_state),
                f64::from(each == state),
                "{address} {each}"
            );
        }
        assert_eq!(
            page.value("mcshm_server_held_down", &labels),
            f64::from(server["down_by"] == "operator")
        );
        assert_eq!(
            page.value("mcshm_server_weight", &labels),
            server["weight"].as_f64().unwrap()
        );
        assert_eq!(
            page.value("mcshm_server_consecutive_failures", &labels),
            server["failures"].as_f64().unwrap()
        );
        assert_eq!(
            page.value("mcshm_server_marked", &labels),
            f64::from(server["strays_since"].as_u64().unwrap() != 0),
            "{address}"
        );
        let since = page.value("mcshm_server_state_change_timestamp_seconds", &labels);
        assert!((since - server["since_ms"].as_u64().unwrap() as f64 / 1000.0).abs() < 0.002);
        if let Some(missed) = server["missed_keys"].as_u64() {
            assert_eq!(
                page.value("mcshm_server_missed_keys", &labels),
                missed as f64
            );
            assert_eq!(
                page.value("mcshm_server_missed_overflowed", &labels),
                f64::from(server["missed_overflowed"] == true)
            );
        }
    }
}

#[test]
fn the_page_parses_and_names_every_servers_state() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let c = closed_port_address();
    let reg = Reg::new();
    // app: two servers up, a third held down by an operator (which marks the two: under
    // failover none a down server keeps its share of the ring, so they lost keys to it).
    reg.ok("app", &["add", &a.address(), &b.address()]);
    reg.ok("app", &["add", &c, "--down"]);
    reg.ok("app", &["down", &c, "--reason", "not yet \"racked\""]);
    // web: the replay rejoin policy, b down after failures, three writes it missed.
    reg.ok("web", &["add", &a.address(), &b.address()]);
    reg.ok("web", &["policy", "--rejoin", "replay"]);
    reg.ok(
        "web",
        &["down", &b.address(), "--retry", "--reason", "blip"],
    );
    let keys: Vec<String> = (0..60).map(|n| format!("k{n}")).collect();
    let mut which_args = vec!["--json", "which"];
    which_args.extend(keys.iter().map(String::as_str));
    let which: serde_json::Value =
        serde_json::from_slice(&reg.mclient("web", &which_args).stdout).unwrap();
    let on_b: Vec<&str> = which
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["server"] == b.address().as_str())
        .map(|row| row["key"].as_str().unwrap())
        .take(3)
        .collect();
    assert_eq!(on_b.len(), 3, "b owns keys of 60");
    for key in &on_b {
        let out = reg.mclient("web", &["set", key, "v"]);
        assert_ne!(out.status.code(), Some(0), "b is down, failover none");
    }
    // A domain mirrored from the fleet (the revision the agent records), and a damaged one.
    {
        use libmcshm::{Domain, Registry};
        let mut writer =
            Registry::open_writer(reg.dir(), &Domain::new("app").unwrap(), false).unwrap();
        writer
            .transact(|t| {
                t.fleet_revision = 42;
                Ok(())
            })
            .unwrap();
    }
    // old: b being drained (as `mcadmin drain` marks it, without moving keys here).
    reg.ok("old", &["add", &a.address(), &b.address()]);
    reg.mark_draining("old", 1);
    std::fs::write(reg.dir().join("broken.mcshm"), b"not a table").unwrap();
    // A process that has app open.
    let mut waiter = reg
        .cmd("app", &["wait", "--timeout", "60"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    let mut out = None;
    let opened = wait_until(Duration::from_secs(10), || {
        let run = mcadmin(&reg, &["metrics"]);
        let page = read_page(&String::from_utf8(run.stdout.clone()).unwrap());
        let seen = page.value("mcshm_domain_processes", &[("domain", "app")]) >= 1.0;
        out = Some(run);
        seen
    });
    let _ = waiter.kill();
    let _ = waiter.wait();
    assert!(opened, "the waiting mcadmin is counted");
    let out = out.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "an unreadable domain is a sample, not a failure"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken"), "{stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    let page = read_page(&text);
    agrees_with_list(&page, &reg, "app");
    agrees_with_list(&page, &reg, "web");
    agrees_with_list(&page, &reg, "old");
    let b_address = b.address();
    let old_b = [
        ("domain", "old"),
        ("server", b_address.as_str()),
        ("state", "draining"),
    ];
    assert_eq!(page.value("mcshm_server_state", &old_b), 1.0);
    assert_eq!(
        page.value("mcshm_table_readable", &[("domain", "broken")]),
        0.0
    );
    assert!(
        page.find("mcshm_table_version", &[("domain", "broken")])
            .is_empty()
    );
    // What the scenario set up, named.
    let app_c = [("domain", "app"), ("server", c.as_str())];
    assert_eq!(page.value("mcshm_server_held_down", &app_c), 1.0);
    let marked = page.find("mcshm_server_marked", &[("domain", "app")]);
    assert!(marked.iter().any(|s| s.value == 1.0), "{text}");
    let b_address = b.address();
    let web_b = [("domain", "web"), ("server", b_address.as_str())];
    assert_eq!(page.value("mcshm_server_missed_keys", &web_b), 3.0);
    assert_eq!(page.value("mcshm_server_missed_overflowed", &web_b), 0.0);
    assert_eq!(
        page.value("mcshm_server_held_down", &web_b),
        0.0,
        "down after failures"
    );
    assert_eq!(
        page.value("mcshm_fleet_revision", &[("domain", "app")]),
        42.0
    );
    assert_eq!(
        page.value("mcshm_fleet_agent_running", &[("domain", "app")]),
        0.0
    );
    assert!(
        page.find("mcshm_fleet_revision", &[("domain", "web")])
            .is_empty()
    );
    for family in ["mcshm_bucket_map_buckets", "mcshm_server_buckets"] {
        assert!(
            page.find(family, &[("domain", "app")]).is_empty(),
            "no {family} for a ketama domain"
        );
    }
    let policy = page.find("mcshm_domain_policy_info", &[("domain", "web")]);
    assert_eq!(policy[0].labels["rejoin"], "replay");
    assert_eq!(policy[0].labels["distribution"], "ketama");

    // One domain, named as every verb names it: only its samples.
    let one = reg.ok("web", &["metrics"]);
    let page = read_page(&one);
    assert!(
        page.samples.iter().all(|s| s.labels["domain"] == "web"),
        "{one}"
    );
    agrees_with_list(&page, &reg, "web");
    let missing = reg.run("nope", &["metrics"]);
    assert_eq!(missing.code(), 3, "{}", missing.stderr());
    let fleet = reg.run("web", &["--etcd", "http://127.0.0.1:1", "metrics"]);
    assert_eq!(fleet.code(), 2, "{}", fleet.stderr());
}

/// A vbucket domain's page counts its map as `buckets list --json` does: the map's buckets,
/// the moves staged and the buckets no server owns, and per server the buckets it owns, holds
/// a replica of, and has moving off and on. The map is loaded with moves staged (a libvbucket
/// config with forward rows, of a new shape: taken at once, nothing moved).
#[test]
fn a_vbucket_domains_page_counts_its_buckets_as_buckets_list_does() {
    let servers = [Memcached::start(), Memcached::start(), Memcached::start()];
    let addresses: Vec<String> = servers.iter().map(Memcached::address).collect();
    let reg = Reg::new();
    let mut add = vec!["add"];
    add.extend(addresses.iter().map(String::as_str));
    reg.ok("vb", &add);
    let config = serde_json::json!({
        "hashAlgorithm": "CRC", "numReplicas": 1, "serverList": addresses,
        "vBucketMap": [[0, 1], [1, 2], [2, 0], [-1, -1]],
        "vBucketMapForward": [[1, 0], [2, 1], [2, 0], [-1, -1]],
    });
    let file = reg.dir().join("staged.json");
    std::fs::write(&file, config.to_string()).unwrap();
    reg.ok("vb", &["buckets", "load", file.to_str().unwrap()]);

    let page = read_page(&reg.ok("vb", &["metrics"]));
    agrees_with_list(&page, &reg, "vb");
    let out = reg
        .cmd("vb", &["--json", "buckets", "list"])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = [("domain", "vb")];
    for (family, field, expected) in [
        ("mcshm_bucket_map_buckets", "buckets", 4.0),
        ("mcshm_bucket_map_moving", "moving", 2.0),
        ("mcshm_bucket_map_unassigned", "unassigned", 1.0),
    ] {
        assert_eq!(page.value(family, &d), expected, "{family}");
        assert_eq!(list[field].as_f64(), Some(expected), "{field}");
    }
    // Owned (a staged bucket counts for its new owner), replicas, moving off, moving on.
    let expected = [
        (0.0, 2.0, 1.0, 0.0),
        (1.0, 1.0, 1.0, 1.0),
        (2.0, 0.0, 0.0, 1.0),
    ];
    let listed = list["servers"].as_array().unwrap();
    for ((address, want), server) in addresses.iter().zip(expected).zip(listed) {
        let labels = [("domain", "vb"), ("server", address.as_str())];
        let got = (
            page.value("mcshm_server_buckets", &labels),
            page.value("mcshm_server_replica_buckets", &labels),
            page.value("mcshm_server_buckets_moving_off", &labels),
            page.value("mcshm_server_buckets_moving_on", &labels),
        );
        assert_eq!(got, want, "{address}");
        let field = |name: &str| server[name].as_f64().unwrap();
        assert_eq!(server["server"], address.as_str());
        assert_eq!(
            (
                field("buckets"),
                field("replicas"),
                field("moving_off"),
                field("moving_on")
            ),
            want,
            "{address}: buckets list"
        );
    }
}

/// A request to the watcher's metrics server, and the whole answer.
fn http(address: &str, request: &str) -> Option<String> {
    let mut conn = TcpStream::connect(address).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    conn.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    Some(answer)
}

#[test]
fn watch_serves_the_page_over_http() {
    let a = Memcached::start();
    let c = closed_port_address();
    let reg = Reg::new();
    reg.ok("app", &["add", &a.address()]);
    reg.ok("app", &["add", &c, "--no-flush"]);
    let port = crate::common::etcd::free_port();
    let address = format!("127.0.0.1:{port}");
    let mut watcher = reg
        .cmd(
            "app",
            &[
                "watch",
                "--interval",
                "200ms",
                "--timeout",
                "200ms",
                "--metrics",
                &address,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The listener comes up, and the watcher marks the unreachable server down.
    let mut text = String::new();
    let c_down = [("domain", "app"), ("server", c.as_str()), ("state", "down")];
    let seen = wait_until(Duration::from_secs(20), || {
        let Some(answer) = http(&address, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") else {
            return false;
        };
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
        text = body.to_string();
        read_page(&text).value("mcshm_server_state", &c_down) == 1.0
    });
    let head = http(&address, "HEAD /metrics HTTP/1.1\r\n\r\n").unwrap();
    let not_found = http(&address, "GET / HTTP/1.1\r\n\r\n").unwrap();
    let post = http(&address, "POST /metrics HTTP/1.1\r\n\r\n").unwrap();
    let huge = http(
        &address,
        &format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(20_000)),
    );
    crate::common::signal(watcher.id(), libc::SIGTERM);
    let status = watcher.wait().unwrap();
    assert!(seen, "the watcher's page shows {c} down:\n{text}");
    assert!(
        status.success(),
        "SIGTERM stops the watcher cleanly: {status}"
    );
    let page = read_page(&text);
    agrees_with_list(&page, &reg, "app");
    assert_eq!(
        page.value(
            "mcshm_server_up",
            &[("domain", "app"), ("server", &a.address())]
        ),
        1.0
    );
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    assert!(not_found.starts_with("HTTP/1.1 404 "), "{not_found}");
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    assert!(
        huge.as_ref().is_none_or(|h| h.starts_with("HTTP/1.1 431 ")),
        "{huge:?}"
    );
}

/// Every metric the example alert rules and dashboard use is one the page has.
#[test]
fn contrib_alerts_and_dashboard_use_the_pages_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let families: Vec<&str> = libmcshm::metrics::FAMILIES.iter().map(|f| f.name).collect();
    let alerts = std::fs::read_to_string(root.join("contrib/mcshm-alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(root.join("contrib/mcshm-dashboard.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(json["panels"].as_array().is_some_and(|p| !p.is_empty()));
    for (file, text) in [
        ("mcshm-alerts.yml", &alerts),
        ("mcshm-dashboard.json", &dashboard),
    ] {
        let mut used = 0;
        for (at, _) in text.match_indices("mcshm_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                families.contains(&name.as_str()),
                "{file}: {name} is not on the page"
            );
            used += 1;
        }
        assert!(used > 3, "{file} uses the page's metrics");
    }
    for alert in [
        "McshmServerDown",
        "McshmInvalidationLogOverflowed",
        "McshmHostLagsFleet",
        "McshmBucketMoveStalled",
        "McshmBucketsUnassigned",
    ] {
        assert!(alerts.contains(&format!("alert: {alert}")), "{alert}");
    }
}
#[test]
fn the_reader_refuses_what_prometheus_refuses() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 1\na_total 2.5 1700000000000\n";
    let page = prometheus::parse(good).unwrap();
    assert_eq!(page.value("a_total", &[("x", "q\"\\\n")]), 1.0);
    for bad in [
        "# HELP a A.\n# HELP a A.\n# TYPE a gauge\na 1\n",
        "# HELP a A.\n# TYPE a gauge\n# TYPE a gauge\na 1\n",
        "a 1\n",
        "# HELP a A.\n# TYPE a gauge\na{x=\"1} 1\n",
        "# HELP a A.\n# TYPE a gauge\na{x=\"\\t\"} 1\n",
        "# HELP a A.\n# TYPE a gauge\na{x=1} 1\n",
        "# HELP a A.\n# TYPE a gauge\na one\n",
        "# HELP a A.\n# TYPE a gauge\na 1\na 1\n",
        "# HELP a A.\n# TYPE a counter\na 1\n",
        "# HELP a_total A.\n# TYPE a_total gauge\na_total 1\n",
        "# TYPE a gauge\na 1\n",
        "# HELP a A.\n# TYPE a gauge\n# HELP b B.\n# TYPE b gauge\na{x=\"1\"} 1\nb 1\na{x=\"2\"} 1\n",
        "# HELP a A.\n# TYPE a gauge\na 1",
        "# HELP 2a A.\n# TYPE 2a gauge\n2a 1\n",
    ] {
        assert!(prometheus::parse(bad).is_err(), "accepted: {bad:?}");
    }
}
