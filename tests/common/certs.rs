//! Certificates made at run time with openssl, for the TLS tests (etcd's and memcached's): a
//! CA, certificates it signs with the extensions of the test's `ext.cnf`, an expired one.

use std::path::Path;
use std::process::Command;

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

/// `NAME.key` and `NAME.crt` signed by `ca` (CN `cn`, or no CommonName when empty).
pub fn certificate(dir: &Path, name: &str, ca: &str, cn: &str, extensions: &str) {
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
            "2",
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
    let (key, csr, crt) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    ec_key(dir, &key);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
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
            "0",
            "-extfile",
            "ext.cnf",
            "-extensions",
            extensions,
        ],
    );
}
