//! The rustls client: the configuration a set of PEM texts makes (the CAs trusted, how a
//! server's name is checked, an optional client certificate), and the connection it opens to a
//! memcached server.
//!
//! Why a file of its own: this is the one place mcshm builds a rustls `ClientConfig`, for a
//! domain's servers and (through [`client_config`]) for the fleet's etcd, so the provider, the
//! protocol versions and the wording of a bad certificate or key are the same everywhere.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ConfigBuilder, DigitallySignedStruct, RootCertStore,
    SignatureScheme, WantsVerifier,
};

use super::settings::{Part, TlsSettings, Unusable, Verify};
use crate::address::Address;

/// The cryptography of every mcshm TLS client: ring's.
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration's start: `provider`, with rustls's safe protocol versions (TLS 1.2
/// and 1.3).
pub(super) fn builder(provider: Arc<CryptoProvider>) -> ConfigBuilder<ClientConfig, WantsVerifier> {
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
}

/// A client configuration from PEM texts: `roots` (the certificates of the CAs trusted to sign
/// the servers'; at least one), a client certificate chain and its key when the servers want
/// one, and how a server's certificate is checked. An error names the part that cannot be used.
pub fn client_config(
    roots: &str,
    client: Option<(&str, &str)>,
    verify: Verify,
) -> std::result::Result<ClientConfig, Unusable> {
    let mut store = RootCertStore::empty();
    for ca in certificates(roots, Part::Ca)? {
        store.add(ca).map_err(|e| Unusable {
            part: Part::Ca,
            why: format!("not a CA certificate rustls can use ({e})"),
        })?;
    }
    let provider = provider();
    let builder = builder(provider.clone());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| Unusable {
            part: Part::Ca,
            why: e.to_string(),
        })?;
    let builder = match verify {
        Verify::Full => builder.with_webpki_verifier(webpki),
        Verify::Ca => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(webpki))),
    };
    let mut config = match client {
        Some((cert, key)) => {
            let chain = certificates(cert, Part::Cert)?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| Unusable {
                part: Part::Key,
                why: format!(
                    "no private key in it (expected PEM: -----BEGIN PRIVATE KEY-----; {e})"
                ),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Unusable {
                    part: Part::Key,
                    why: match e {
                        rustls::Error::InconsistentKeys(_) => {
                            "it is not the key of the client certificate".to_string()
                        }
                        other => other.to_string(),
                    },
                })?
        }
        None => builder.with_no_client_auth(),
    };
    config.enable_sni = true;
    Ok(config)
}

/// The certificates of a PEM text (at least one).
fn certificates(
    pem: &str,
    part: Part,
) -> std::result::Result<Vec<CertificateDer<'static>>, Unusable> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Unusable {
            part,
            why: format!("unreadable PEM ({e})"),
        })?;
    if certs.is_empty() {
        return Err(Unusable {
            part,
            why: "no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

/// `verify ca`: the chain must lead to the CA; the name is not checked (rustls checks the
/// chain first, so a name error means the chain was good).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A domain's TLS client: the configuration its settings make (built once per version of the
/// file, so sessions are resumed across connections) and the name to check.
#[derive(Debug)]
pub struct Tls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl Tls {
    pub fn new(settings: &TlsSettings) -> std::result::Result<Tls, Unusable> {
        Ok(Tls {
            config: Arc::new(settings.client_config()?),
            server_name: settings.name()?,
        })
    }

    /// A client connection to `address` (its handshake not begun). Plaintext written before
    /// the handshake ends is kept and sent after it, however much there is.
    pub fn connect(&self, address: &Address) -> std::io::Result<rustls::ClientConnection> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => match address {
                Address::Ipv4 { ip, .. } => ServerName::IpAddress((*ip).into()),
                Address::Ipv6 { ip, .. } => ServerName::IpAddress((*ip).into()),
                other => ServerName::try_from(other.host().to_string()).map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{} is not a name TLS can check", other.host()),
                    )
                })?,
            },
        };
        let mut conn = rustls::ClientConnection::new(self.config.clone(), name)
            .map_err(std::io::Error::other)?;
        conn.set_buffer_limit(None);
        Ok(conn)
    }
}

/// Settings are checked by building their client: here, so that the settings module (the
/// model and its text) needs nothing of this one.
impl TlsSettings {
    /// Settings from PEM texts (the CA certificates; a client certificate chain and its key,
    /// both or neither), checked as a connection would use them: every certificate and the key
    /// parse, the key is the certificate's, the name is a DNS name or an IP address.
    pub fn new(
        ca: String,
        client: Option<(String, String)>,
        server_name: Option<String>,
        verify: Verify,
    ) -> std::result::Result<TlsSettings, Unusable> {
        TlsSettings::built(ca, client, server_name, verify).map(|(settings, _)| settings)
    }

    /// [`TlsSettings::new`], and the client they make (the check is building it).
    fn built(
        ca: String,
        client: Option<(String, String)>,
        server_name: Option<String>,
        verify: Verify,
    ) -> std::result::Result<(TlsSettings, Tls), Unusable> {
        let settings = TlsSettings::unchecked(ca, client, server_name, verify);
        let tls = Tls::new(&settings)?;
        Ok((settings, tls))
    }

    /// Settings from the file's text (see the module's table).
    pub fn parse(text: &str) -> std::result::Result<TlsSettings, String> {
        TlsSettings::read(text).map(|(settings, _)| settings)
    }

    /// [`TlsSettings::parse`], and the client the settings make.
    pub(super) fn read(text: &str) -> std::result::Result<(TlsSettings, Tls), String> {
        let settings = TlsSettings::read_unchecked(text)?;
        let tls = Tls::new(&settings).map_err(|e| e.to_string())?;
        Ok((settings, tls))
    }

    /// The rustls client configuration of these settings.
    pub(super) fn client_config(&self) -> std::result::Result<ClientConfig, Unusable> {
        let client = self.cert.as_deref().zip(self.key.as_deref());
        client_config(&self.ca, client, self.verify)
    }
}
