//! Diagnosis: whether a server speaks TLS at all ([`client_hello`], [`is_record`]), and why a
//! TLS connection failed, in words ([`explain`], [`explain_io`]).
//!
//! Why a file of its own: these answer the operator's question "why does this server not
//! answer", asked by the blocking client, the proxy and the fleet's etcd client alike; they need
//! no settings and open no connection.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, RootCertStore};

/// The first bytes a TLS client sends (a `ClientHello`), to ask a server that does not answer
/// in clear whether it speaks TLS.
pub fn client_hello() -> Vec<u8> {
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
    let name = ServerName::try_from("mcshm.invalid").expect("a DNS name");
    let mut hello = Vec::new();
    if let Ok(mut conn) = rustls::ClientConnection::new(Arc::new(config), name) {
        let _ = conn.write_tls(&mut hello);
    }
    hello
}

/// Whether `bytes` begin a TLS record: a handshake or an alert, TLS 1.x.
pub fn is_record(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, ..])
}

/// The TLS failure rustls reported through an I/O error, in words (see [`explain`]); `None`
/// for an I/O error of the socket.
pub fn explain_io(err: &std::io::Error) -> Option<String> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(explain)
}

/// Why a TLS connection failed, in words, from rustls's error: what the operator checks next.
pub fn explain(err: &rustls::Error) -> String {
    use rustls::AlertDescription as Alert;
    use rustls::Error as E;
    let cause = match err {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "the server's certificate is not signed by the domain's CA (mcadmin tls --ca)"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server's certificate does not name the server (its subjectAltName): give the name it has with `mcadmin tls --server-name`, or check only the CA with `--verify ca`"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (check the clocks)"
            }
            CertificateError::Revoked => "the server's certificate is revoked",
            _ => "the server's certificate was refused",
        },
        E::AlertReceived(Alert::CertificateRequired) => {
            "the server wants a client certificate: give one with `mcadmin tls --cert FILE --key FILE`"
        }
        E::AlertReceived(
            Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::HandshakeFailure
            | Alert::CertificateUnknown
            | Alert::AccessDenied,
        ) => {
            "the server refused the handshake: it wants a client certificate signed by a CA it trusts (mcadmin tls --cert --key)"
        }
        E::AlertReceived(Alert::CertificateExpired) => {
            "the server refused the client certificate: it has expired"
        }
        E::InvalidMessage(_) => {
            "the server does not speak TLS (its answer is not a TLS record): start memcached with -Z, or speak to it in clear with `mcadmin tls --clear`"
        }
        _ => "",
    };
    match cause {
        "" => format!("TLS: {err}"),
        cause => format!("TLS: {cause}"),
    }
}
