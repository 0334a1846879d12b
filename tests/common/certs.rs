//! Certificates made at run time with openssl, for the TLS tests (etcd's and memcached's): a
//! CA, certificates it signs with the extensions of the test's `ext.cnf`, an expired one.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::memcached::Memcached;

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A P-256 private key in `dir/key`.
pub fn ec_key(dir: &Path, key: &str) {
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            key,
        ],
    );
}

/// `NAME.key` and `NAME.crt` signed by `ca` (CN `cn`, or no CommonName when empty), valid for
/// two days, with the `extensions` section of the directory's `ext.cnf`.
pub fn certificate(dir: &Path, name: &str, ca: &str, cn: &str, extensions: &str) {
    signed(dir, name, ca, cn, extensions, "2");
}

fn signed(dir: &Path, name: &str, ca: &str, cn: &str, extensions: &str, days: &str) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let crt = format!("{name}.crt");
    let subject = match cn {
        "" => "/O=mcshm-tests".to_string(),
        cn => format!("/CN={cn}"),
    };
    ec_key(dir, &key);
    openssl(
        dir,
        &["req", "-new", "-key", &key, "-out", &csr, "-subj", &subject],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            days,
            "-extfile",
            "ext.cnf",
            "-extensions",
            extensions,
        ],
    );
}

pub fn authority(dir: &Path, name: &str) {
    let key = format!("{name}.key");
    ec_key(dir, &key);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

/// `NAME.key` and `NAME.crt` signed by `ca`, whose validity ends the second it begins: expired
/// from the next second on.
pub fn expired_certificate(dir: &Path, name: &str, ca: &str, extensions: &str) {
    signed(dir, name, ca, name, extensions, "0");
}

/// The certificates of a memcached TLS test, in a directory of their own: `ca`, `other-ca`,
/// `server` (for 127.0.0.1), `named` (for cache.example), `client`.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("ext.cnf"),
            "[server]\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n\
             [named]\nsubjectAltName=DNS:cache.example\nextendedKeyUsage=serverAuth\n\
             [client]\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        authority(d, "ca");
        authority(d, "other-ca");
        certificate(d, "server", "ca", "server", "server");
        certificate(d, "named", "ca", "named", "named");
        certificate(d, "client", "ca", "client", "client");
        // memcached runs as another user when the tests run as root (-u root keeps root);
        // either way the key files must be readable by it.
        for key in ["server.key", "named.key"] {
            std::fs::set_permissions(d.join(key), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// `memcached -Z` with certificate `cert`, plus `extra` options.
    pub fn memcached(&self, cert: &str, extra: &str) -> Memcached {
        let options = format!(
            "ssl_chain_cert={},ssl_key={}{extra}",
            self.path(&format!("{cert}.crt")),
            self.path(&format!("{cert}.key"))
        );
        Memcached::start_with(&["-Z", "-o", &options])
    }

    /// A server that requires a client certificate signed by the CA.
    pub fn memcached_requiring_clients(&self) -> Memcached {
        let extra = format!(",ssl_ca_cert={},ssl_verify_mode=2", self.path("ca.crt"));
        self.memcached("server", &extra)
    }
}
