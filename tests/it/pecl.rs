//! `--distribution pecl-memcache`: where PHP's PECL memcache extension puts keys
//! (`memcache.hash_strategy=consistent`, `memcache.hash_function` crc32 and fnv, weights as
//! `addServer` takes them), checked against the real extension (Debian `php-memcache`): PHP
//! stores 10 000 keys (1 000 of them UTF-8) on real servers, for two weighted lists and both
//! hashes, and mcshm must name, for every key, the server that has it.

use std::process::Command;

use crate::common::Reg;
use crate::common::memcached::Memcached;
use libmcshm::{Address, Client, Timeouts};

#[test]
fn keys_go_where_the_pecl_memcache_extension_puts_them() {
    let reg = Reg::new();
    let servers = [Memcached::start(), Memcached::start(), Memcached::start()];
    let mut keys: Vec<String> = (0..9000).map(|i| format!("pk:{i}")).collect();
    keys.extend((0..1000).map(|i| format!("ключ:{i}:é")));
    for (list, weights) in [[1, 2, 3], [5, 1, 1]].into_iter().enumerate() {
        let domain = format!("php{list}");
        for (mc, weight) in servers.iter().zip(weights) {
            // The second list re-adds servers full of the first's keys: emptied, as before.
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
        for hash in ["crc32", "fnv"] {
            placed_as_php_places(&reg, &domain, &servers, weights, hash, &keys);
        }
    }
}

/// PHP stores `keys` through the extension on `servers` of `weights` with `hash`; the domain
/// (the same list) must name, for every key, the server that has it.
fn placed_as_php_places(
    reg: &Reg,
    domain: &str,
    servers: &[Memcached],
    weights: [u16; 3],
    hash: &str,
    keys: &[String],
) {
    reg.ok(
        domain,
        &["policy", "--distribution", "pecl-memcache", "--hash", hash],
    );
    for mc in servers {
        let mut one = Client::for_servers(
            &[Address::parse(&mc.address()).unwrap()],
            Timeouts::default(),
        )
        .unwrap();
        one.flush_all(None, None).unwrap();
    }
    // PHP stores every key through the extension, as a PHP page would.
    let adds: String = servers
        .iter()
        .zip(weights)
        .map(|(mc, w)| format!("$m->addServer('127.0.0.1', {}, true, {w});", mc.port))
        .collect();
    let program = format!(
        "$m = new Memcache(); {adds} foreach (file('php://stdin', FILE_IGNORE_NEW_LINES) as $k) {{ if (!$m->set($k, 'v', 0, 0)) {{ fwrite(STDERR, \"set $k failed\\n\"); exit(1); }} }} echo 'ok';"
    );
    let mut php = Command::new("php")
        .args(["-d", "memcache.hash_strategy=consistent"])
        .args(["-d", &format!("memcache.hash_function={hash}")])
        .args(["-r", &program])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("php: apt-get install -y php-cli php-memcache");
    use std::io::Write;
    php.stdin
        .take()
        .unwrap()
        .write_all((keys.join("\n") + "\n").as_bytes())
        .unwrap();
    let out = php.wait_with_output().unwrap();
    assert_eq!(
        out.stdout,
        b"ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Where each key landed, asked of each server directly.
    let mut landed = std::collections::HashMap::new();
    for mc in servers {
        let mut one = Client::for_servers(
            &[Address::parse(&mc.address()).unwrap()],
            Timeouts::default(),
        )
        .unwrap();
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        for item in one.get_many(&refs, false).unwrap().items {
            landed.insert(String::from_utf8(item.key).unwrap(), mc.address());
        }
    }
    assert_eq!(landed.len(), keys.len(), "every key landed once");
    let which = Command::new(env!("CARGO_BIN_EXE_mclient"))
        .arg("--dir")
        .arg(reg.dir())
        .args(["--domain", domain, "which", "--"])
        .args(keys)
        .output()
        .unwrap();
    assert!(which.status.success());
    let text = String::from_utf8(which.stdout).unwrap();
    let differ: Vec<&str> = text
        .lines()
        .filter(|line| {
            let (key, server) = line.rsplit_once(' ').unwrap();
            landed[key] != server
        })
        .collect();
    assert!(
        differ.is_empty(),
        "hash {hash}: {} of {} keys elsewhere than PECL memcache put them, e.g. {:?}",
        differ.len(),
        keys.len(),
        &differ[..differ.len().min(3)]
    );
}
