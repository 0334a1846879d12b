//! `--distribution pecl-memcache`: where PHP's PECL memcache extension puts keys
//! (`memcache.hash_strategy=consistent`, `memcache.hash_function` crc32 and fnv, weights as
//! `addServer` takes them), checked against the real extension (Debian `php-memcache`): PHP
//! stores the keys on real servers, and mcshm must name, for every key, the server that has it.

mod common;

use std::process::Command;

use common::Reg;
use common::memcached::Memcached;
use libmcshm::{Address, Client, Timeouts};

#[test]
fn keys_go_where_the_pecl_memcache_extension_puts_them() {
    let reg = Reg::new();
    let servers = [Memcached::start(), Memcached::start(), Memcached::start()];
    let weights = [1, 2, 3];
    for (mc, weight) in servers.iter().zip(weights) {
        reg.ok(
            "php",
            &["add", &mc.address(), "--weight", &weight.to_string()],
        );
    }
    let mut keys: Vec<String> = (0..600).map(|i| format!("pk:{i}")).collect();
    keys.extend((0..100).map(|i| format!("ключ:{i}:é")));
    for hash in ["crc32", "fnv"] {
        reg.ok(
            "php",
            &["policy", "--distribution", "pecl-memcache", "--hash", hash],
        );
        for mc in &servers {
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
        for mc in &servers {
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
            .args(["--domain", "php", "which"])
            .args(&keys)
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
}
