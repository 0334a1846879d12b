//! The fleet over TLS, with certificates made here by openssl: a CA, etcd's certificate for
//! 127.0.0.1, a client certificate, one without a CommonName, and another CA. One etcd member
//! requires client certificates (--client-cert-auth); mcadmin reaches it with --cacert, --cert
//! and --key, and each way of getting it wrong is named: no client certificate, another CA,
//! and, once etcd has authentication enabled, a missing user, a wrong password and a client
//! certificate whose CommonName etcd's JSON gateway refuses. With --etcd-user and a client
//! certificate without a CommonName, it works.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::certs::{authority, certificate};
use crate::common::etcd::free_port;
use crate::common::memcached::Memcached;
use crate::common::wait_until;

struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One etcd member in `dir` serving TLS with certificate `cert`, requiring client
/// certificates; returns once its client port accepts connections.
fn start_etcd(dir: &Path, cert: &str) -> (Etcd, String) {
    let (port, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let etcd = Etcd(
        Command::new("etcd")
            .args(["--name", "tls", "--data-dir"])
            .arg(dir.join(format!("data-{cert}")))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("tls={peer_url}")])
            .args([
                "--cert-file",
                &format!("{cert}.crt"),
                "--key-file",
                &format!("{cert}.key"),
            ])
            .args(["--client-cert-auth", "--trusted-ca-file", "ca.crt"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let up = wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "etcd did not start");
    (etcd, url)
}

/// `mcadmin --etcd URL --domain f ARGS…` in `dir`: its exit status and stderr.
fn mcadmin(dir: &Path, url: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcadmin"))
        .args(["--etcd", url, "--etcd-timeout", "2", "--domain", "f"])
        .args(args)
        .current_dir(dir)
        .env_remove("MCSHM_ETCD")
        .env_remove("MCSHM_ETCD_USER")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr)
}

#[test]
fn mcadmin_reaches_etcd_over_tls_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("ext.cnf"),
        "[server]\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n\
         [server_only]\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n\
         [client]\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    authority(d, "ca");
    authority(d, "other-ca");
    certificate(d, "etcd", "ca", "etcd", "server");
    certificate(d, "client", "ca", "root", "client");
    certificate(d, "anonymous", "ca", "", "client");
    certificate(d, "etcd-server-only", "ca", "etcd", "server_only");
    let tls = [
        "--cacert",
        "ca.crt",
        "--cert",
        "client.crt",
        "--key",
        "client.key",
    ];
    // etcd's own certificate must allow client authentication too: its JSON gateway connects
    // to etcd with it. Without, every request is a closed connection, which mcadmin explains.
    {
        let (_etcd, url) = start_etcd(d, "etcd-server-only");
        let (code, stderr) = mcadmin(d, &url, &[&tls[..], &["list"]].concat());
        assert_eq!(code, Some(6), "{stderr}");
        assert!(stderr.contains("extendedKeyUsage clientAuth"), "{stderr}");
    }
    let (_etcd, url) = start_etcd(d, "etcd");
    let mcadmin = |args: &[&str]| mcadmin(d, &url, args);
    let list = || mcadmin(&[&tls[..], &["list"]].concat());
    assert!(
        wait_until(Duration::from_secs(20), || list().0 != Some(6)),
        "etcd did not start: {:?}",
        list()
    );
    // Client certificates, no authentication: it works (the add fences the servers it adds,
    // so they are real ones).
    let servers = [Memcached::start(), Memcached::start()];
    let (one, two) = (servers[0].address(), servers[1].address());
    let (code, stderr) = mcadmin(&[&tls[..], &["add", "--no-flush", &one]].concat());
    assert_eq!(code, Some(0), "{stderr}");
    // Each mistake named.
    let (code, stderr) = mcadmin(&["--cacert", "ca.crt", "list"]);
    assert_eq!(code, Some(6), "{stderr}");
    assert!(
        stderr.contains("wants a client certificate")
            || stderr.contains("want a client certificate"),
        "{stderr}"
    );
    let (code, stderr) = mcadmin(&[
        "--cacert",
        "other-ca.crt",
        "--cert",
        "client.crt",
        "--key",
        "client.key",
        "list",
    ]);
    assert_eq!(code, Some(6), "{stderr}");
    assert!(
        stderr.contains("not signed by the CA of --cacert"),
        "{stderr}"
    );

    // Authentication on (a root user), through the JSON API as an operator would with curl.
    let enable = concat!(
        "import json, ssl, sys, urllib.request\n",
        "ctx = ssl.create_default_context(cafile='ca.crt')\n",
        "ctx.load_cert_chain('anonymous.crt', 'anonymous.key')\n",
        "post = lambda path, body: urllib.request.urlopen(urllib.request.Request(",
        "sys.argv[1] + '/v3/auth/' + path, json.dumps(body).encode()), context=ctx).read()\n",
        "post('role/add', {'name': 'root'})\n",
        "post('user/add', {'name': 'root', 'password': 'pw'})\n",
        "post('user/grant', {'user': 'root', 'role': 'root'})\n",
        "post('enable', {})\n",
    );
    let status = Command::new("/usr/bin/python3")
        .args(["-c", enable, &url])
        .current_dir(d)
        .status()
        .unwrap();
    assert!(status.success());
    let anonymous = [
        "--cacert",
        "ca.crt",
        "--cert",
        "anonymous.crt",
        "--key",
        "anonymous.key",
    ];
    let (code, stderr) = mcadmin(&[&anonymous[..], &["list"]].concat());
    assert_eq!(code, Some(6), "{stderr}");
    assert!(
        stderr.contains("give --etcd-user USER:PASSWORD"),
        "{stderr}"
    );
    let (code, stderr) =
        mcadmin(&[&anonymous[..], &["--etcd-user", "root:wrong", "list"]].concat());
    assert_eq!(code, Some(6), "{stderr}");
    assert!(stderr.contains("authentication failed"), "{stderr}");
    let (code, stderr) = mcadmin(&[&tls[..], &["--etcd-user", "root:pw", "list"]].concat());
    assert_eq!(code, Some(6), "{stderr}");
    assert!(
        stderr.contains("a client certificate without a CommonName"),
        "{stderr}"
    );
    let (code, stderr) = mcadmin(
        &[
            &anonymous[..],
            &["--etcd-user", "root:pw", "add", "--no-flush", &two],
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = mcadmin(
        &[
            &anonymous[..],
            &["--etcd-user", "root:pw", "--json", "list"],
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{stderr}");
}
