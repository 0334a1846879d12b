//! Diagnosis: whether a server speaks TLS at all ([`client_hello`], [`is_record`]), and why a
//! TLS connection failed, in words ([`explain`], [`explain_io`]).
//!
//! Why a file of its own: these answer the operator's question "why does this server not
//! answer", asked by the blocking client, the proxy and the fleet's etcd client alike; they need
//! no settings and open no connection.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{CertificateError, RootCertStore};

use super::client::{builder, provider};

/// The first bytes a TLS client sends (a `ClientHello`), to ask a server that does not answer
/// in clear whether it speaks TLS.
pub fn client_hello() -> Vec<u8> {
    let config = builder(provider())
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

/// The rustls error an I/O error carries (rustls reports a failed handshake or a bad record
/// through `std::io::Error`); `None` for an I/O error of the socket.
pub fn rustls_error(err: &std::io::Error) -> Option<&rustls::Error> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Why a TLS connection failed, sorted by what the operator checks next: the part of rustls's
/// errors that has a cause to name. One sorting for every TLS client mcshm has (a domain's
/// servers, the fleet's etcd); each adds its own advice, since only it knows what can be changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The peer's certificate is not signed by a CA we trust (unknown issuer, bad signature).
    Untrusted,
    /// The peer's certificate is signed by a CA we trust but names other hosts.
    WrongName,
    /// The peer's certificate has expired.
    Expired,
    /// The peer's certificate is not valid yet: a clock is wrong.
    NotValidYet,
    /// The peer's certificate is revoked.
    Revoked,
    /// Another fault of the peer's certificate (rustls's text says which).
    BadCertificate,
    /// The peer wants a client certificate and was given none (alert `certificate_required`).
    ClientCertificateWanted,
    /// The peer refused the handshake, as it does a client certificate it does not trust.
    ClientCertificateRefused,
    /// The peer refused the client certificate because it has expired.
    ClientCertificateExpired,
    /// The peer's answer is not a TLS record: it does not speak TLS on that port.
    NotTls,
}

impl Cause {
    /// The cause of a rustls error, when it is one we can name.
    pub fn of(err: &rustls::Error) -> Option<Cause> {
        use rustls::AlertDescription as Alert;
        use rustls::Error as E;
        Some(match err {
            E::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    Cause::Untrusted
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => Cause::WrongName,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Cause::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Cause::NotValidYet
                }
                CertificateError::Revoked => Cause::Revoked,
                _ => Cause::BadCertificate,
            },
            E::AlertReceived(Alert::CertificateRequired) => Cause::ClientCertificateWanted,
            E::AlertReceived(
                Alert::BadCertificate
                | Alert::UnknownCA
                | Alert::HandshakeFailure
                | Alert::CertificateUnknown
                | Alert::AccessDenied,
            ) => Cause::ClientCertificateRefused,
            E::AlertReceived(Alert::CertificateExpired) => Cause::ClientCertificateExpired,
            E::InvalidMessage(_) => Cause::NotTls,
            _ => return None,
        })
    }

    /// The cause in words, naming `peer`: what happened, not what to change (see [`Peer`]).
    pub fn words(self, peer: &Peer<'_>) -> String {
        let Peer { who, host, trusted } = *peer;
        match self {
            Cause::Untrusted => format!("{who}'s certificate is not signed by {trusted}"),
            Cause::WrongName => {
                format!("{who}'s certificate does not name {host} (its subjectAltName)")
            }
            Cause::Expired => format!("{who}'s certificate has expired"),
            Cause::NotValidYet => {
                format!("{who}'s certificate is not valid yet (check the clocks)")
            }
            Cause::Revoked => format!("{who}'s certificate is revoked"),
            Cause::BadCertificate => format!("{who}'s certificate was refused"),
            Cause::ClientCertificateWanted => format!("{who} wants a client certificate"),
            Cause::ClientCertificateRefused => format!(
                "{who} refused the handshake: it wants a client certificate signed by a CA it trusts"
            ),
            Cause::ClientCertificateExpired => {
                format!("{who} refused the client certificate: it has expired")
            }
            Cause::NotTls => {
                format!("{who} does not speak TLS (its answer is not a TLS record)")
            }
        }
    }
}

/// Who is at the other end of a TLS connection, as explanations name it.
#[derive(Clone, Copy, Debug)]
pub struct Peer<'a> {
    /// The subject of the sentences: "the server", "etcd".
    pub who: &'a str,
    /// What its certificate must name: "the server", "the endpoint's host".
    pub host: &'a str,
    /// The CAs trusted to sign its certificate: "the domain's CA".
    pub trusted: &'a str,
}

/// Why a TLS connection to `peer` failed, in words: the [`Cause`] and `advice`'s addition for
/// it (what the caller's user can change), or rustls's own text when the cause has no name.
pub fn explain_to(
    err: &rustls::Error,
    peer: &Peer<'_>,
    advice: fn(Cause) -> &'static str,
) -> String {
    match Cause::of(err) {
        Some(cause) => format!("{}{}", cause.words(peer), advice(cause)),
        None => err.to_string(),
    }
}

/// A memcached server of a domain, as explanations name it.
const SERVER: Peer<'static> = Peer {
    who: "the server",
    host: "the server",
    trusted: "the domain's CA",
};

/// What a domain's settings can change about a cause (appended to its words). In the words of
/// the settings, not of a program that writes them: C and proxy users read these too.
fn server_advice(cause: Cause) -> &'static str {
    match cause {
        // Kept as it was: tests/it/tls.rs asserts "--server-name" in this message.
        Cause::WrongName => {
            ": give the name it has with `mcadmin tls --server-name`, or check only the CA with `--verify ca`"
        }
        Cause::ClientCertificateWanted => {
            ", and the domain's TLS settings give none ([cert] and [key])"
        }
        Cause::ClientCertificateRefused => " (the domain's TLS settings, [cert] and [key])",
        Cause::NotTls => {
            ": start memcached with -Z, or remove the domain's TLS settings to speak to it in clear"
        }
        _ => "",
    }
}

/// The TLS failure rustls reported through an I/O error, in words (see [`explain`]); `None`
/// for an I/O error of the socket.
pub fn explain_io(err: &std::io::Error) -> Option<String> {
    rustls_error(err).map(explain)
}

/// Why a TLS connection to a memcached server failed, in words, from rustls's error: what the
/// operator checks next.
pub fn explain(err: &rustls::Error) -> String {
    format!("TLS: {}", explain_to(err, &SERVER, server_advice))
}

#[cfg(test)]
mod tests {
    use rustls::{AlertDescription as Alert, Error as E, InvalidMessage};

    use super::*;

    fn certificate(c: CertificateError) -> E {
        E::InvalidCertificate(c)
    }

    #[test]
    fn each_rustls_error_has_its_cause() {
        let cases = [
            (
                certificate(CertificateError::UnknownIssuer),
                Cause::Untrusted,
            ),
            (
                certificate(CertificateError::BadSignature),
                Cause::Untrusted,
            ),
            (
                certificate(CertificateError::NotValidForName),
                Cause::WrongName,
            ),
            (certificate(CertificateError::Expired), Cause::Expired),
            (
                certificate(CertificateError::NotValidYet),
                Cause::NotValidYet,
            ),
            (certificate(CertificateError::Revoked), Cause::Revoked),
            (
                certificate(CertificateError::BadEncoding),
                Cause::BadCertificate,
            ),
            (
                E::AlertReceived(Alert::CertificateRequired),
                Cause::ClientCertificateWanted,
            ),
            (
                E::AlertReceived(Alert::BadCertificate),
                Cause::ClientCertificateRefused,
            ),
            (
                E::AlertReceived(Alert::UnknownCA),
                Cause::ClientCertificateRefused,
            ),
            (
                E::AlertReceived(Alert::HandshakeFailure),
                Cause::ClientCertificateRefused,
            ),
            (
                E::AlertReceived(Alert::CertificateExpired),
                Cause::ClientCertificateExpired,
            ),
            (
                E::InvalidMessage(InvalidMessage::InvalidContentType),
                Cause::NotTls,
            ),
        ];
        for (err, cause) in cases {
            assert_eq!(Cause::of(&err), Some(cause), "{err:?}");
        }
        assert_eq!(Cause::of(&E::DecryptError), None);
        assert_eq!(Cause::of(&E::AlertReceived(Alert::InternalError)), None);
    }

    #[test]
    fn a_memcached_server_s_failure_is_said_in_the_settings_words() {
        let says = |err: E| explain(&err);
        assert_eq!(
            says(certificate(CertificateError::UnknownIssuer)),
            "TLS: the server's certificate is not signed by the domain's CA"
        );
        let name = says(certificate(CertificateError::NotValidForName));
        assert!(name.starts_with("TLS: the server's certificate does not name the server"));
        assert!(name.contains("--server-name"), "tests/it/tls.rs asserts it");
        assert_eq!(
            says(certificate(CertificateError::Expired)),
            "TLS: the server's certificate has expired"
        );
        assert!(says(E::AlertReceived(Alert::CertificateRequired)).contains("[cert] and [key]"));
        assert!(
            says(E::InvalidMessage(InvalidMessage::InvalidContentType))
                .starts_with("TLS: the server does not speak TLS")
        );
        // A cause without a name: rustls's own text.
        assert_eq!(says(E::DecryptError), format!("TLS: {}", E::DecryptError));
        // The library advises in the settings' words, not a program's (the one exception is
        // asserted by tests/it/tls.rs).
        for err in [
            certificate(CertificateError::UnknownIssuer),
            E::AlertReceived(Alert::CertificateRequired),
            E::AlertReceived(Alert::BadCertificate),
            E::InvalidMessage(InvalidMessage::InvalidContentType),
        ] {
            assert!(!says(err.clone()).contains("mcadmin"), "{}", says(err));
        }
    }

    #[test]
    fn another_peer_is_named_with_its_own_words_and_advice() {
        let etcd = Peer {
            who: "etcd",
            host: "the endpoint's host",
            trusted: "the CA of the CA file",
        };
        let advice = |cause: Cause| -> &'static str {
            match cause {
                Cause::ClientCertificateWanted => " (give one)",
                _ => "",
            }
        };
        let said = |err: E| explain_to(&err, &etcd, advice);
        assert_eq!(
            said(certificate(CertificateError::NotValidForName)),
            "etcd's certificate does not name the endpoint's host (its subjectAltName)"
        );
        assert_eq!(
            said(E::AlertReceived(Alert::CertificateRequired)),
            "etcd wants a client certificate (give one)"
        );
        assert_eq!(said(E::DecryptError), E::DecryptError.to_string());
    }

    #[test]
    fn the_rustls_error_in_an_io_error_is_found() {
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            certificate(CertificateError::Expired),
        );
        assert_eq!(
            rustls_error(&tls),
            Some(&certificate(CertificateError::Expired))
        );
        assert_eq!(
            explain_io(&tls).as_deref(),
            Some("TLS: the server's certificate has expired")
        );
        let socket = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(rustls_error(&socket), None);
        assert_eq!(explain_io(&socket), None);
    }

    #[test]
    fn a_client_hello_is_a_tls_record() {
        assert!(is_record(&client_hello()));
        assert!(!is_record(b"VERSION 1.6.18\r\n"));
    }
}
