//! `mcadmin policy --prefix P`: every key is sent as P + key and hashed without P, as PHP
//! memcached's `OPT_PREFIX_KEY` (libmemcached's NAMESPACE) does, so an mcshm process and a PHP
//! page with the same prefix share their keys, on the same servers, checked with the real
//! extension (Debian `php-memcached`) on real memcached servers.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::Reg;
use crate::common::memcached::Memcached;
use libmcshm::{Client, Timeouts};

const MCLIENT: &str = env!("CARGO_BIN_EXE_mclient");

/// Runs PHP with php-memcached on `servers` (port, weight) with `options` (PHP statements on
/// `$m`), `program` reading the keys from stdin into `$keys`; returns its stdout.
fn php_with(servers: &[(u16, u16)], options: &str, program: &str, keys: &[String]) -> String {
    let adds: String = servers
        .iter()
        .map(|(port, weight)| format!("$m->addServer('127.0.0.1', {port}, {weight});"))
        .collect();
    let setup = format!(
        "$m = new Memcached(); {options} {adds} $keys = file('php://stdin', FILE_IGNORE_NEW_LINES);"
    );
    let mut child = Command::new("php")
        .args(["-r", &format!("{setup} {program}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("php: apt-get install -y php-cli php-memcached");
    let input = keys.join("\n") + "\n";
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "php failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// PHP options for ketama as libmemcached's KETAMA_WEIGHTED, with key prefix `prefix`.
fn ketama_with_prefix(prefix: &str) -> String {
    format!(
        "$m->setOption(Memcached::OPT_LIBKETAMA_COMPATIBLE, true); $m->setOption(Memcached::OPT_PREFIX_KEY, '{prefix}');"
    )
}

/// [`php_with`] on `servers` of weight 1, ketama, prefix `prefix`.
fn php(servers: &[Memcached], prefix: &str, program: &str, keys: &[String]) -> String {
    let list: Vec<(u16, u16)> = servers.iter().map(|mc| (mc.port, 1)).collect();
    php_with(&list, &ketama_with_prefix(prefix), program, keys)
}

/// PHP stores 500 keys under the prefix; mcshm reads every one (one by one and in one
/// multi-get, keys given back without the prefix), each from the server it names, where the
/// key lies prefixed and not bare. mcshm stores 500 keys; PHP reads every one. A mclient
/// without the domain's prefix (the servers given directly) finds none of them bare.
#[test]
fn mcshm_and_php_memcached_share_keys_under_a_prefix() {
    let reg = Reg::new();
    let servers = [Memcached::start(), Memcached::start(), Memcached::start()];
    for mc in &servers {
        reg.ok("pfx", &["add", &mc.address()]);
    }
    reg.ok("pfx", &["policy", "--prefix", "shop:"]);
    let keys: Vec<String> = (0..500).map(|i| format!("cart:{i}")).collect();
    let stored = php(
        &servers,
        "shop:",
        "foreach ($keys as $k) { if (!$m->set($k, \"v-$k\")) { fwrite(STDERR, \"set $k failed\\n\"); exit(1); } } echo 'ok';",
        &keys,
    );
    assert_eq!(stored, "ok");
    let mut client = Client::for_domain(reg.dir(), &"pfx".parse().unwrap(), Timeouts::default())
        .expect("open the domain");
    for key in &keys {
        let item = client.get(key.as_bytes()).unwrap();
        let value = item.map(|i| String::from_utf8(i.value).unwrap());
        assert_eq!(value.as_deref(), Some(format!("v-{key}").as_str()), "{key}");
        let owner = client.server_for(key.as_bytes()).unwrap().port().unwrap();
        let mc = servers.iter().find(|mc| mc.port == owner).unwrap();
        assert_eq!(mc.raw_get(&format!("shop:{key}")), Some(format!("v-{key}")));
        assert_eq!(mc.raw_get(key), None, "{key} stored bare");
    }
    let wanted: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let multi = client.get_many(&wanted, false).unwrap();
    assert!(multi.errors.is_empty());
    let mut got: Vec<String> = multi
        .items
        .iter()
        .map(|i| String::from_utf8(i.key.clone()).unwrap())
        .collect();
    got.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(got, expected, "multi-get names the keys without the prefix");

    let ours: Vec<String> = (0..500).map(|i| format!("sess:{i}")).collect();
    for key in &ours {
        client
            .set(key.as_bytes(), format!("s-{key}").as_bytes(), 0, 0)
            .unwrap();
    }
    let read = php(
        &servers,
        "shop:",
        "$n = 0; foreach ($keys as $k) { if ($m->get($k) === \"s-$k\") { $n++; } } echo $n;",
        &ours,
    );
    assert_eq!(read, "500", "PHP reads what mcshm stored under the prefix");
    let list: Vec<String> = servers.iter().map(Memcached::address).collect();
    let bare = Command::new(MCLIENT)
        .args(["--servers", &list.join(","), "get", "sess:1"])
        .output()
        .unwrap();
    assert_eq!(bare.status.code(), Some(1), "no bare sess:1 on any server");
}

/// The prefix is versioned policy: shown by `policy`, `--json`, `dump` (and loaded back);
/// refused when it could not be part of a key, leaving the table as it was; `--prefix ""`
/// removes it. A key that no longer fits memcached's 250 bytes once prefixed is refused before
/// anything is sent.
#[test]
fn prefixes_are_checked_kept_and_removed() {
    let reg = Reg::new();
    let mc = Memcached::start();
    reg.ok("p", &["add", &mc.address()]);
    reg.ok("p", &["policy", "--prefix", "app-7:"]);
    assert!(reg.ok("p", &["policy"]).contains("prefix=app-7:"));
    let json: serde_json::Value =
        serde_json::from_str(&reg.ok("p", &["--json", "policy"])).unwrap();
    assert_eq!(json["prefix"], "app-7:");
    let version = reg.list_json("p")["version"].clone();
    for bad in ["a b", "tab\there", "x\r\ny", &"p".repeat(31)] {
        let run = reg.run("p", &["policy", "--prefix", bad]);
        assert_eq!(run.code(), 2, "{bad:?}: {}", run.stderr());
        assert!(run.stderr().contains("key prefix"), "{}", run.stderr());
        assert_eq!(run.stderr().lines().count(), 1, "{}", run.stderr());
        assert_eq!(reg.list_json("p")["version"], version, "{bad:?} changed it");
    }
    let dump = reg.ok("p", &["dump"]);
    reg.ok("p", &["policy", "--prefix", ""]);
    assert!(!reg.ok("p", &["policy"]).contains("prefix="));
    let file = reg.dir().join("p.list");
    std::fs::write(&file, dump).unwrap();
    reg.ok("p", &["load", file.to_str().unwrap()]);
    assert!(reg.ok("p", &["policy"]).contains("prefix=app-7:"), "load");

    let mclient = |args: &[&str]| {
        Command::new(MCLIENT)
            .arg("--dir")
            .arg(reg.dir())
            .args(["--domain", "p"])
            .args(args)
            .output()
            .unwrap()
    };
    let fits = "k".repeat(250 - "app-7:".len());
    assert!(mclient(&["set", &fits, "v"]).status.success());
    assert_eq!(mc.raw_get(&format!("app-7:{fits}")).as_deref(), Some("v"));
    let long = "k".repeat(250 - "app-7:".len() + 1);
    let run = mclient(&["set", &long, "v"]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("key prefix 'app-7:'"), "{stderr}");
}

/// Draining a server of a prefixed domain moves the domain's keys (found there prefixed) to
/// their new owners, and leaves keys outside the prefix, which belong to no process of the
/// domain, saying how many.
#[test]
fn a_drain_moves_the_prefixed_keys_and_leaves_the_others() {
    let reg = Reg::new();
    let (a, b) = (Memcached::start(), Memcached::start());
    reg.ok("d", &["add", &a.address(), &b.address()]);
    reg.ok("d", &["policy", "--prefix", "ns:"]);
    let mut client = Client::for_domain(reg.dir(), &"d".parse().unwrap(), Timeouts::default())
        .expect("open the domain");
    let keys: Vec<String> = (0..200).map(|i| format!("key:{i}")).collect();
    for key in &keys {
        client.set(key.as_bytes(), key.as_bytes(), 0, 0).unwrap();
    }
    for i in 0..7 {
        a.raw_set(&format!("other:{i}"), "x");
    }
    let on_a = |key: &String| a.raw_get(&format!("ns:{key}")).is_some();
    let were_on_a = keys.iter().filter(|k| on_a(k)).count();
    assert!(were_on_a > 0);
    let out = reg.ok("d", &["--json", "drain", &a.address()]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["outside_prefix"], 7, "{report}");
    assert_eq!(report["moved"], were_on_a, "{report}");
    assert_eq!(keys.iter().filter(|k| on_a(k)).count(), 0, "all left a");
    for key in &keys {
        let value = client.get(key.as_bytes()).unwrap().map(|i| i.value);
        assert_eq!(value.as_deref(), Some(key.as_bytes()), "{key}");
        assert_eq!(
            b.raw_get(&format!("ns:{key}")).as_deref(),
            Some(key.as_str())
        );
    }
    assert_eq!(a.raw_get("other:3").as_deref(), Some("x"), "left alone");
}

/// At size, for several lists and two distributions: PHP stores 10 000 keys under
/// the prefix and mcshm reads every one from the server it picks; mcshm stores 10 000 and PHP
/// reads every one; and each server holds exactly the keys mcshm assigns it. Lists: three
/// servers of equal weight and of weights 1, 2, 3 (ketama, PHP's LIBKETAMA_COMPATIBLE), and
/// three of weight 1 with ketama-unweighted (PHP's DISTRIBUTION_CONSISTENT, its default hash).
#[test]
fn prefixed_keys_agree_with_php_memcached_at_size() {
    let reg = Reg::new();
    let servers = [Memcached::start(), Memcached::start(), Memcached::start()];
    let unweighted = "$m->setOption(Memcached::OPT_DISTRIBUTION, Memcached::DISTRIBUTION_CONSISTENT); $m->setOption(Memcached::OPT_PREFIX_KEY, 'ns-9|');";
    let cases: [(&str, [u16; 3], String); 3] = [
        ("ketama", [1, 1, 1], ketama_with_prefix("ns-9|")),
        ("ketama", [1, 2, 3], ketama_with_prefix("ns-9|")),
        ("ketama-unweighted", [1, 1, 1], unweighted.to_string()),
    ];
    // (php-memcached refuses keys with bytes over 0x7f: ASCII keys only.)
    let theirs: Vec<String> = (0..10_000)
        .map(|i| format!("php:{i}/#{}", i % 97))
        .collect();
    let ours: Vec<String> = (0..10_000).map(|i| format!("rust:{i}")).collect();
    for (n, (distribution, weights, options)) in cases.iter().enumerate() {
        let domain = format!("size{n}");
        for (mc, weight) in servers.iter().zip(weights) {
            // Each case re-adds servers full of the last one's keys: emptied, as before.
            reg.ok(
                &domain,
                &[
                    "add",
                    "--flush",
                    &mc.address(),
                    "--weight",
                    &weight.to_string(),
                ],
            );
        }
        reg.ok(
            &domain,
            &[
                "policy",
                "--distribution",
                distribution,
                "--prefix",
                "ns-9|",
            ],
        );
        let mut client =
            Client::for_domain(reg.dir(), &domain.parse().unwrap(), Timeouts::default())
                .expect("open the domain");
        client.flush_all(None, None).unwrap();
        let list: Vec<(u16, u16)> = servers.iter().map(|mc| mc.port).zip(*weights).collect();
        let stored = php_with(
            &list,
            options,
            "foreach ($keys as $k) { if (!$m->set($k, \"v-$k\")) { fwrite(STDERR, \"set $k failed\\n\"); exit(1); } } echo 'ok';",
            &theirs,
        );
        assert_eq!(stored, "ok");
        let wanted: Vec<&[u8]> = theirs.iter().map(|k| k.as_bytes()).collect();
        let multi = client.get_many(&wanted, false).unwrap();
        assert!(multi.errors.is_empty());
        let right = multi
            .items
            .iter()
            .filter(|i| i.value == [b"v-", i.key.as_slice()].concat())
            .count();
        assert_eq!(right, theirs.len(), "case {n}: mcshm reads PHP's keys");
        for key in &ours {
            client.set(key.as_bytes(), key.as_bytes(), 0, 0).unwrap();
        }
        let read = php_with(
            &list,
            options,
            "$got = $m->getMulti($keys); $n = 0; foreach ($keys as $k) { if (($got[$k] ?? null) === $k) { $n++; } } echo $n;",
            &ours,
        );
        assert_eq!(read, "10000", "case {n}: PHP reads mcshm's keys");
        for mc in &servers {
            let assigned = theirs
                .iter()
                .chain(&ours)
                .filter(|k| client.server_for(k.as_bytes()).unwrap().port() == Some(mc.port))
                .count();
            assert_eq!(mc.stat("curr_items"), assigned as u64, "case {n}");
        }
    }
}
