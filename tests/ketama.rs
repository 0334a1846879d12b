//! Key → server must be what libmemcached itself picks (MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED), so
//! mcshm and libmemcached clients of one fleet agree. The oracle is the real library: a small C
//! program (tests/c/ketama_oracle.c) compiled here against the system's libmemcached.

mod common;

use std::process::Command;

use libmcshm::Address;
use libmcshm::hash::KeyHash;
use libmcshm::placement::{Ring, point_name};

/// Compiles the oracle (see `common::cbuild`).
fn oracle(dir: &std::path::Path) -> std::path::PathBuf {
    common::cbuild::libmemcached_oracle(dir, "ketama_oracle")
}

/// What libmemcached answers for `keys` on the servers `specs` (`HOST:PORT:WEIGHT` each): one
/// `host:port` per key.
fn ask_oracle(exe: &std::path::Path, specs: &[String], keys: &[String]) -> Vec<String> {
    let input = keys.join("\n") + "\n";
    common::cbuild::ask_oracle(
        Command::new(exe).args(specs),
        input.into_bytes(),
        keys.len(),
    )
}

/// `mclient ARGS which -- KEYS…` (keys may start with `-`): the server of each key, brackets removed (as libmemcached
/// names IPv6 hosts).
fn mclient_which(args: &[&std::ffi::OsStr], keys: &[String]) -> Vec<String> {
    let which = Command::new(env!("CARGO_BIN_EXE_mclient"))
        .args(args)
        .args(["which", "--"])
        .args(keys)
        .output()
        .unwrap();
    assert!(which.status.success());
    let servers: Vec<String> = String::from_utf8(which.stdout)
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().1.replace(['[', ']'], ""))
        .collect();
    assert_eq!(servers.len(), keys.len());
    servers
}

/// `mcadmin --dir DIR --domain DOMAIN ARGS…`, which must succeed; its stdout.
fn mcadmin_in(dir: &std::path::Path, domain: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mcadmin"))
        .arg("--dir")
        .arg(dir)
        .args(["--domain", domain])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// [`mclient_which`] on a domain of `dir`.
fn which_in(dir: &std::path::Path, domain: &str, keys: &[String]) -> Vec<String> {
    mclient_which(
        &[
            "--dir".as_ref(),
            dir.as_os_str(),
            "--domain".as_ref(),
            domain.as_ref(),
        ],
        keys,
    )
}

fn assert_same(got: &[String], expected: &[String]) {
    let differ = got.iter().zip(expected).filter(|(a, b)| a != b).count();
    assert_eq!(
        differ,
        0,
        "{differ} of {} keys differ from libmemcached",
        got.len()
    );
}

fn compare(servers: &[(&str, u16)], keys: &[String]) {
    let tmp = tempfile::tempdir().unwrap();
    let exe = oracle(tmp.path());
    let specs: Vec<String> = servers
        .iter()
        .map(|(a, w)| {
            let address = Address::parse(a).unwrap();
            format!("{}:{}:{w}", address.host(), address.port().unwrap())
        })
        .collect();
    let expected = ask_oracle(&exe, &specs, keys);

    let addresses: Vec<Address> = servers
        .iter()
        .map(|(a, _)| Address::parse(a).unwrap())
        .collect();
    let names: Vec<String> = addresses.iter().map(point_name).collect();
    let ring = Ring::build(
        names
            .iter()
            .map(String::as_str)
            .zip(servers.iter().map(|s| s.1)),
    );
    // The same servers as a domain: the ring the writer puts in the file, looked up in place.
    let domain = libmcshm::Domain::new("ketama").unwrap();
    let table = libmcshm::table::Table {
        servers: addresses
            .iter()
            .zip(servers)
            .map(|(a, (_, weight))| libmcshm::Server {
                weight: *weight,
                ..libmcshm::Server::new(a.clone())
            })
            .collect(),
        ..Default::default()
    };
    libmcshm::Registry::open_writer(tmp.path(), &domain, true)
        .unwrap()
        .replace(&table)
        .unwrap();
    let mut router = libmcshm::client::Router::for_domain(tmp.path(), &domain).unwrap();
    let mut mismatches = 0;
    for (key, want) in keys.iter().zip(&expected) {
        let owner = router
            .owner(key.as_bytes(), libmcshm::clock::now_ms())
            .unwrap();
        let shared = router.address(owner).clone();
        let shared = format!("{}:{}", shared.host(), shared.port().unwrap());
        assert_eq!(
            &shared, want,
            "key {key:?}: the shared ring differs from libmemcached"
        );
        let got = &addresses[ring.server_for(key.as_bytes()).unwrap()];
        let got = format!("{}:{}", got.host(), got.port().unwrap());
        if &got != want {
            mismatches += 1;
            assert!(
                mismatches > 5,
                "key {key:?}: mcshm picks {got}, libmemcached {want}"
            );
        }
    }
    assert_eq!(
        mismatches,
        0,
        "{mismatches} of {} keys differ from libmemcached",
        keys.len()
    );
    assert_eq!(router.ring_builds(), 0, "the domain's router built no ring");
}

fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("user:{i}:profile{}", "x".repeat(i % 40)))
        .collect()
}

#[test]
fn three_weighted_servers_agree_with_libmemcached() {
    compare(
        &[
            ("cache-a.example.com", 1),
            ("10.0.0.2:11212", 2),
            ("cache-c:11211", 5),
        ],
        &keys(5000),
    );
}

#[test]
fn a_hundred_servers_of_mixed_weights_agree_with_libmemcached() {
    let names: Vec<String> = (0..100)
        .map(|i| format!("mc{i}.example.net:{}", 11211 + i % 3))
        .collect();
    let servers: Vec<(&str, u16)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), 1 + (i % 7) as u16))
        .collect();
    compare(&servers, &keys(5000));
}

#[test]
fn equal_weights_and_a_single_server_agree_with_libmemcached() {
    compare(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)], &keys(2000));
    compare(&[("only:4000", 3)], &keys(100));
}

/// `--servers` in libmemcached's own syntax with weights (`host:port weight`,
/// `host:port:weight`): mclient sends every key where libmemcached sends it on that list.
#[test]
fn weighted_server_lists_route_as_libmemcached_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = oracle(tmp.path());
    let spec = "cache-a.example.com:11211 3, cache-b.example.com:11212:2,cache-c.example.com";
    let keys = keys(3000);
    let specs = [
        "cache-a.example.com:11211:3",
        "cache-b.example.com:11212:2",
        "cache-c.example.com:11211:1",
    ]
    .map(String::from);
    let expected = ask_oracle(&exe, &specs, &keys);
    let got = mclient_which(&["--servers".as_ref(), spec.as_ref()], &keys);
    assert_same(&got, &expected);
}

/// IPv6 addresses hash as written, as libmemcached hashes them: `[2001:db8:0:0::1]` is hashed
/// as "2001:db8:0:0::1", not as its canonical form; `mcadmin` shows it as written and still
/// knows `[2001:db8::1]` for the same server.
#[test]
fn ipv6_addresses_hash_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = oracle(tmp.path());
    let written = [
        "[2001:db8:0:0::1]:11211",
        "[2001:DB8::0:2]:11212",
        "10.0.0.3:11211",
    ];
    let keys = keys(3000);
    let specs: Vec<String> = written
        .iter()
        .map(|a| format!("{}:1", a.replace(['[', ']'], "")))
        .collect();
    let expected = ask_oracle(&exe, &specs, &keys);
    let mcadmin = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mcadmin"))
            .arg("--dir")
            .arg(tmp.path())
            .args(["--domain", "v6"])
            .args(args)
            .output()
            .unwrap()
    };
    let mut add = vec!["add", "--no-flush"];
    add.extend(written);
    assert!(mcadmin(&add).status.success());
    let list = String::from_utf8(mcadmin(&["list"]).stdout).unwrap();
    assert!(list.contains("[2001:db8:0:0::1]:11211"), "{list}");
    assert!(list.contains("[2001:DB8::0:2]:11212"), "{list}");
    let again = mcadmin(&["add", "--no-flush", "[2001:db8::1]:11211"]);
    assert_eq!(
        again.status.code(),
        Some(3),
        "the same server, written otherwise"
    );
    let got = mclient_which(
        &[
            "--dir".as_ref(),
            tmp.path().as_os_str(),
            "--domain".as_ref(),
            "v6".as_ref(),
        ],
        &keys,
    );
    assert_same(&got, &expected);
}

/// `mcadmin policy --distribution modula --hash H`: every key goes where libmemcached sends it
/// with `MEMCACHED_DISTRIBUTION_MODULA` and that `MEMCACHED_BEHAVIOR_HASH`, for each hash of
/// `KeyHash::ALL` (every libhashkit hash this machine's libmemcached has, hsieh being compiled
/// out of it), on lists of 1, 3 and 50 servers (10 000 keys each, some with bytes over 0x7f,
/// which libhashkit's FNVs and one-at-a-time add as signed chars); `dump` keeps the
/// distribution.
#[test]
fn modula_distributions_agree_with_libmemcached() {
    hashed_distribution_agrees("modula", "--modula");
}

/// `mcadmin policy --distribution ketama-unweighted --hash H`: every key goes where libmemcached
/// sends it with `MEMCACHED_BEHAVIOR_KETAMA` and that `MEMCACHED_BEHAVIOR_HASH` (100 points per
/// server, each its label's hash), as for modula above, read through the ring the writer put
/// in the file (some servers on 11211, whose labels drop the port).
#[test]
fn unweighted_ketama_agrees_with_libmemcached() {
    hashed_distribution_agrees("ketama-unweighted", "--ketama");
}

/// The distribution `name` with each libhashkit hash against the oracle run with `flag HASH`.
/// One domain per list length, its servers added once (each add resolves every name, which is
/// what takes the time), then each hash in turn set with `policy`. On the 50-server list one
/// server is removed and added back (to the end of the list) under each hash before comparing:
/// the writer derives that ring from the previous one, and it must still agree.
fn hashed_distribution_agrees(name: &str, flag: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let exe = oracle(tmp.path());
    let mut keys = keys(9000);
    keys.extend((0..1000).map(|i| format!("ключ:{i}:é")));
    let names: Vec<String> = (0..50)
        .map(|i| format!("mc{i}.example.net:{}", 11211 + i % 3))
        .collect();
    for count in [1, 3, 50] {
        let domain = format!("{name}-{count}");
        let mcadmin = |args: &[&str]| mcadmin_in(tmp.path(), &domain, args);
        let mut order: Vec<&String> = names[..count].iter().collect();
        let mut add = vec!["add", "--no-flush"];
        add.extend(order.iter().map(|n| n.as_str()));
        mcadmin(&add);
        for hash in KeyHash::ALL.map(KeyHash::as_str) {
            mcadmin(&["policy", "--distribution", name, "--hash", hash]);
            assert!(
                mcadmin(&["dump"]).contains(&format!("distribution={name} hash={hash}")),
                "dump keeps the distribution"
            );
            if count == 50 {
                let back = order.remove(7);
                mcadmin(&["rm", back]);
                mcadmin(&["add", "--no-flush", back]);
                order.push(back);
            }
            let mut specs = vec![flag.to_string(), hash.to_string()];
            specs.extend(order.iter().map(|n| format!("{n}:1")));
            let expected = ask_oracle(&exe, &specs, &keys);
            let got = which_in(tmp.path(), &domain, &keys);
            let differ = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
            assert_eq!(
                differ,
                0,
                "{name} --hash {hash} on {count} servers: {differ} of {} keys differ from \
                 libmemcached",
                keys.len()
            );
        }
    }
}

/// `--distribution ketama-spy`: every key goes where libmemcached sends it with
/// `MEMCACHED_DISTRIBUTION_CONSISTENT_KETAMA_SPY` (weighted), on weighted lists of 3 and 60
/// servers (10 000 keys each), read through the ring the writer put in the file.
#[test]
fn ketama_spy_agrees_with_libmemcached() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = oracle(tmp.path());
    let keys = keys(10_000);
    let names: Vec<(String, u16)> = (0..60)
        .map(|i| {
            (
                format!("mc{i}.example.net:{}", 11211 + i % 2),
                1 + (i % 4) as u16,
            )
        })
        .collect();
    for (distribution, flag) in [("ketama-spy", "--spy")] {
        for count in [3, 60] {
            let domain = format!("{distribution}-{count}");
            let mcadmin = |args: &[&str]| mcadmin_in(tmp.path(), &domain, args);
            for (name, weight) in &names[..count] {
                mcadmin(&["add", "--no-flush", name, "--weight", &weight.to_string()]);
            }
            mcadmin(&["policy", "--distribution", distribution]);
            let mut specs = vec![flag.to_string()];
            specs.extend(names[..count].iter().map(|(n, w)| format!("{n}:{w}")));
            let expected = ask_oracle(&exe, &specs, &keys);
            let got = which_in(tmp.path(), &domain, &keys);
            assert_same(&got, &expected);
        }
    }
}

/// libmemcached's own published vectors (tests/data/ketama_test_cases.tsv, from its
/// `tests/ketama_test_cases.h`): for each of 99 keys on its 8-server weighted list, the key's
/// hash and the continuum point it lands on hold exactly. The server column is not what
/// libmemcached itself answers on that list with ketama (it agrees with mcshm, not with the
/// column: the column is the ketama-spy answer, see the next test), so the servers are checked
/// against the real library instead.
#[test]
fn libmemcached_s_published_vectors_hold() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ketama_test_cases.tsv"),
    )
    .unwrap();
    let servers = [
        ("10.0.1.1", 600),
        ("10.0.1.2", 300),
        ("10.0.1.3", 200),
        ("10.0.1.4", 350),
        ("10.0.1.5", 1000),
        ("10.0.1.6", 800),
        ("10.0.1.7", 950),
        ("10.0.1.8", 100),
    ];
    let ring = Ring::build(servers.iter().copied());
    let (points, _, _) = ring.parts_for_tests();
    let mut keys = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split('\t').collect();
        let (key, hash, point) = (fields[0], fields[1], fields[2]);
        let h = libmcshm::hash::ketama_md5(key.as_bytes());
        assert_eq!(h.to_string(), hash, "key {key:?}: hash");
        let at = points.partition_point(|&(v, _)| v < h) % points.len();
        assert_eq!(
            points[at].0.to_string(),
            point,
            "key {key:?}: continuum point"
        );
        keys.push(key.to_string());
    }
    assert_eq!(keys.len(), 99);
    let tmp = tempfile::tempdir().unwrap();
    let specs: Vec<String> = servers
        .iter()
        .map(|(host, weight)| format!("{host}:11211:{weight}"))
        .collect();
    let expected = ask_oracle(&oracle(tmp.path()), &specs, &keys);
    let got: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{}:11211",
                servers[ring.server_for(k.as_bytes()).unwrap()].0
            )
        })
        .collect();
    assert_same(&got, &expected);
}

/// libmemcached's published ketama-spy vectors (tests/data/ketama_test_cases_spy.tsv, from its
/// `tests/ketama_test_cases_spy.h`): a domain of its 8-server weighted list with
/// `--distribution ketama-spy` sends each of the 99 keys to the server the file names, as
/// libmemcached's own test checks (its hash columns repeat the ketama file's).
#[test]
fn libmemcached_s_published_spy_vectors_hold() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/ketama_test_cases_spy.tsv"),
    )
    .unwrap();
    let (keys, servers): (Vec<String>, Vec<String>) = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            (fields[0].to_string(), format!("{}:11211", fields[3]))
        })
        .unzip();
    assert_eq!(keys.len(), 99);
    let tmp = tempfile::tempdir().unwrap();
    let mcadmin = |args: &[&str]| mcadmin_in(tmp.path(), "spy", args);
    for (n, weight) in [600, 300, 200, 350, 1000, 800, 950, 100].iter().enumerate() {
        let host = format!("10.0.1.{}", n + 1);
        mcadmin(&["add", "--no-flush", &host, "--weight", &weight.to_string()]);
    }
    mcadmin(&["policy", "--distribution", "ketama-spy"]);
    assert_same(&which_in(tmp.path(), "spy", &keys), &servers);
}
