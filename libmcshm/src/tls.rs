//! TLS to memcached (`memcached -Z`): a domain's settings, and the rustls client they make.
//!
//! A domain's TLS settings live beside its table, in `DIR/DOMAIN.tls` (mode 0640, the table's
//! group, like its credentials: it may hold a client key), written by `mcadmin tls` and read when
//! a connection opens, so a change applies to every new connection without a restart. The file
//! holds the certificates themselves, not paths to them: one file, replaced by one rename, is
//! one version of the settings (a path could change under it, or be readable by fewer users than
//! the table's group); rotating a certificate is `mcadmin tls` again.
//!
//! | line                     | meaning                                                     |
//! |--------------------------|-------------------------------------------------------------|
//! | `verify full` or `ca`    | `full`: the CA signed it and it names the server; `ca`: the CA signed it |
//! | `server-name NAME`       | optional: the name checked (and sent as SNI), instead of each server's host |
//! | `[ca]` then PEM          | the certificates of the CAs trusted to sign the servers'    |
//! | `[cert]` then PEM        | optional: the client certificate chain                      |
//! | `[key]` then PEM         | with `[cert]`: its private key                              |
//!
//! TLS applies to TCP servers; a server on a unix socket is local and spoken to in clear.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::address::Address;
use crate::domain::Domain;
use crate::error::{Error, Result};

/// How a server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Signed by the CA and valid for the server's name (its host, or `server-name`).
    Full,
    /// Signed by the CA, whatever name it carries (servers addressed by IPs their
    /// certificates do not list).
    Ca,
}

impl Verify {
    pub fn parse(text: &str) -> Result<Verify> {
        match text {
            "full" => Ok(Verify::Full),
            "ca" => Ok(Verify::Ca),
            other => Err(Error::invalid("verify mode", other, "expected full or ca")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verify::Full => "full",
            Verify::Ca => "ca",
        }
    }
}

/// A domain's TLS settings, as stored (PEM text) and checked.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub verify: Verify,
    pub server_name: Option<String>,
    ca: String,
    cert: Option<String>,
    key: Option<String>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("verify", &self.verify)
            .field("server_name", &self.server_name)
            .field("client_certificate", &self.cert.is_some())
            .finish_non_exhaustive()
    }
}

/// What `mcadmin tls` shows of the settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub verify: Verify,
    pub server_name: Option<String>,
    pub ca_certificates: usize,
    pub client_certificate: bool,
}

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
        let (cert, key) = client.unzip();
        let settings = TlsSettings {
            verify,
            server_name,
            ca,
            cert,
            key,
        };
        let tls = Tls::new(&settings)?;
        Ok((settings, tls))
    }

    /// The name every server's certificate must carry, if one is set.
    fn name(&self) -> std::result::Result<Option<ServerName<'static>>, Unusable> {
        let Some(name) = &self.server_name else {
            return Ok(None);
        };
        ServerName::try_from(name.clone())
            .map(Some)
            .map_err(|_| Unusable {
                part: Part::ServerName,
                why: format!("'{name}' is not a DNS name or an IP address"),
            })
    }

    pub fn summary(&self) -> Summary {
        Summary {
            verify: self.verify,
            server_name: self.server_name.clone(),
            ca_certificates: CertificateDer::pem_slice_iter(self.ca.as_bytes()).count(),
            client_certificate: self.cert.is_some(),
        }
    }

    /// The settings as the file holds them.
    pub fn to_text(&self) -> String {
        let mut text = format!("verify {}\n", self.verify.as_str());
        if let Some(name) = &self.server_name {
            text.push_str(&format!("server-name {name}\n"));
        }
        let mut section = |name: &str, pem: &str| {
            text.push_str(&format!("[{name}]\n{}\n", pem.trim_end()));
        };
        section("ca", &self.ca);
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            section("cert", cert);
            section("key", key);
        }
        text
    }

    /// Settings from the file's text (see the module's table).
    pub fn parse(text: &str) -> std::result::Result<TlsSettings, String> {
        TlsSettings::read(text).map(|(settings, _)| settings)
    }

    /// [`TlsSettings::parse`], and the client the settings make.
    fn read(text: &str) -> std::result::Result<(TlsSettings, Tls), String> {
        let (mut verify, mut server_name) = (None, None);
        let mut sections: HashMap<&str, String> = HashMap::new();
        let mut current: Option<&str> = None;
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let name = match name {
                    "ca" => "ca",
                    "cert" => "cert",
                    "key" => "key",
                    other => return Err(format!("line {line_no}: unknown section [{other}]")),
                };
                if sections.contains_key(name) {
                    return Err(format!("line {line_no}: section [{name}] given twice"));
                }
                sections.insert(name, String::new());
                current = Some(name);
            } else if let Some(name) = current {
                let pem = sections.get_mut(name).expect("inserted with current");
                pem.push_str(line);
                pem.push('\n');
            } else if let Some(mode) = line.strip_prefix("verify ") {
                verify = Some(Verify::parse(mode).map_err(|e| format!("line {line_no}: {e}"))?);
            } else if let Some(name) = line.strip_prefix("server-name ") {
                server_name = Some(name.to_string());
            } else if !line.trim().is_empty() && !line.starts_with('#') {
                return Err(format!(
                    "line {line_no}: expected verify, server-name or a [section]"
                ));
            }
        }
        let ca = sections.remove("ca").ok_or("no [ca] section")?;
        let client = match (sections.remove("cert"), sections.remove("key")) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err("a [cert] section needs a [key] section, and the reverse".into()),
        };
        TlsSettings::built(ca, client, server_name, verify.unwrap_or(Verify::Full))
            .map_err(|e| e.to_string())
    }

    /// The rustls client configuration of these settings.
    fn client_config(&self) -> std::result::Result<ClientConfig, Unusable> {
        let mut roots = RootCertStore::empty();
        for ca in certificates(&self.ca, Part::Ca)? {
            roots.add(ca).map_err(|e| Unusable {
                part: Part::Ca,
                why: format!("not a CA certificate rustls can use ({e})"),
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| Unusable {
                part: Part::Ca,
                why: e.to_string(),
            })?;
        let builder = match self.verify {
            Verify::Full => builder.with_webpki_verifier(webpki),
            Verify::Ca => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName(webpki))),
        };
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
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
            _ => builder.with_no_client_auth(),
        };
        config.enable_sni = true;
        Ok(config)
    }
}

/// A part of the settings, as an error names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Ca,
    Cert,
    Key,
    ServerName,
}

impl Part {
    /// The part as the file names it (`[ca]`, `server-name`).
    pub fn in_file(self) -> &'static str {
        match self {
            Part::Ca => "[ca]",
            Part::Cert => "[cert]",
            Part::Key => "[key]",
            Part::ServerName => "server-name",
        }
    }
}

/// Why settings cannot make a client: which part, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unusable {
    pub part: Part,
    pub why: String,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.part.in_file(), self.why)
    }
}

impl std::error::Error for Unusable {}

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

/// Writes requests (whole ones, encoded by mcshm) into a TLS session, ending a record after each
/// storage request's data block.
///
/// Why: memcached (1.6.18, Debian 12's, and others) reads a value that does not fit its read
/// buffer straight from the TLS session, asking for exactly the value's bytes; when the same
/// record carried requests after it, OpenSSL keeps them decrypted, memcached waits for the
/// socket to become readable again, and the connection hangs (any client: Python's `ssl`
/// pipelining 20 sets of 1 kB hangs it too). A record that ends where a value ends leaves
/// nothing behind. Other requests share records, so a pipeline of gets stays one record.
pub fn write_requests(
    session: &mut rustls::ClientConnection,
    requests: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    let mut start = 0;
    while start < requests.len() {
        let end = start + record_len(&requests[start..]);
        session.writer().write_all(&requests[start..end])?;
        start = end;
    }
    Ok(())
}

/// The bytes of `requests` one record takes: up to the end of the first storage request's data
/// block (`set`, `add`, `replace`, `append`, `prepend`, `cas`, meta `ms`), or all of them.
fn record_len(requests: &[u8]) -> usize {
    let mut at = 0;
    while let Some(eol) = requests[at..].windows(2).position(|w| w == b"\r\n") {
        let line = &requests[at..at + eol];
        at += eol + 2;
        let mut words = line.split(|&b| b == b' ');
        let data_len = match words.next() {
            Some(b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas") => words.nth(3),
            Some(b"ms") => words.nth(1),
            _ => continue,
        };
        let Some(len) = data_len
            .and_then(|w| std::str::from_utf8(w).ok())
            .and_then(|w| w.parse::<usize>().ok())
        else {
            continue;
        };
        return (at + len + 2).min(requests.len());
    }
    requests.len()
}

/// Where a domain's TLS settings are kept: `DIR/DOMAIN.tls`.
pub fn path(dir: &Path, domain: &Domain) -> PathBuf {
    dir.join(format!("{}.tls", domain.as_str()))
}

/// Stores the domain's TLS settings (replacing any; see the crate's `beside` module).
pub fn save(dir: &Path, domain: &Domain, settings: &TlsSettings) -> Result<PathBuf> {
    crate::beside::save(dir, domain, "tls", &settings.to_text())
}

/// Removes the domain's TLS settings (its servers are then spoken to in clear); whether there
/// were any.
pub fn clear(dir: &Path, domain: &Domain) -> Result<bool> {
    crate::beside::clear(&path(dir, domain))
}

/// The domain's TLS settings; `None` when it has none (its servers are spoken to in clear).
pub fn load_settings(dir: &Path, domain: &Domain) -> Result<Option<TlsSettings>> {
    let path = path(dir, domain);
    let Some(text) = crate::beside::read(&path, "read the TLS settings in")? else {
        return Ok(None);
    };
    Ok(Some(read_file(path, &text)?.0))
}

/// The domain's TLS client, `None` when it has none: built once per version of the file
/// (the file is read each time; its text decides whether the built client still holds).
pub fn load(dir: &Path, domain: &Domain) -> Result<Option<Arc<Tls>>> {
    /// Per file: the text a client was built from, and the client.
    type Built = HashMap<PathBuf, (String, Arc<Tls>)>;
    static BUILT: OnceLock<Mutex<Built>> = OnceLock::new();
    let path = path(dir, domain);
    let Some(text) = crate::beside::read(&path, "read the TLS settings in")? else {
        return Ok(None);
    };
    let built = BUILT.get_or_init(Default::default);
    if let Some((seen, tls)) = built.lock().expect("not poisoned").get(&path)
        && *seen == text
    {
        return Ok(Some(tls.clone()));
    }
    let tls = Arc::new(read_file(path.clone(), &text)?.1);
    built
        .lock()
        .expect("not poisoned")
        .insert(path, (text, tls.clone()));
    Ok(Some(tls))
}

/// The settings in the file at `path` (its text `text`) and the client they make; an error
/// naming the file and the fix when they cannot be used.
fn read_file(path: PathBuf, text: &str) -> Result<(TlsSettings, Tls)> {
    TlsSettings::read(text).map_err(|why| Error::Unusable {
        path,
        why: format!("{why} (set them again with `mcadmin tls`)"),
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_ends_where_a_storage_request_s_data_ends() {
        let requests =
            b"get a b\r\nset k 0 0 4 noreply\r\nx\r\ny\r\nget c\r\nms m 2 T0\r\nab\r\nmn\r\n";
        let mut ends = Vec::new();
        let mut start = 0;
        while start < requests.len() {
            start += record_len(&requests[start..]);
            ends.push(start);
        }
        let set_end = b"get a b\r\nset k 0 0 4 noreply\r\nx\r\ny\r\n".len();
        let ms_end = set_end + b"get c\r\nms m 2 T0\r\nab\r\n".len();
        assert_eq!(ends, vec![set_end, ms_end, requests.len()]);
        assert_eq!(record_len(b"cas k 0 0 1 99\r\nz\r\nget a\r\n"), 19);
        assert_eq!(record_len(b"set k 0 0 nope\r\nget a\r\n"), 23);
    }

    #[test]
    fn a_settings_file_without_a_ca_or_with_half_a_client_is_refused() {
        assert_eq!(
            TlsSettings::parse("verify full\n").unwrap_err(),
            "no [ca] section"
        );
        assert!(
            TlsSettings::parse("verify sometimes\n[ca]\n")
                .unwrap_err()
                .contains("expected full or ca")
        );
        assert!(
            TlsSettings::parse("[ca]\nx\n[cert]\ny\n")
                .unwrap_err()
                .contains("needs a [key]")
        );
        assert!(
            TlsSettings::parse("[ca]\nnot pem\n")
                .unwrap_err()
                .contains("no certificate in it")
        );
        assert!(
            TlsSettings::parse("hello\n")
                .unwrap_err()
                .starts_with("line 1:")
        );
    }
}
