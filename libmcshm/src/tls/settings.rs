//! The settings model of a domain's TLS and its text file: what `DIR/DOMAIN.tls` holds (see the
//! table in [`super`]), parsed, written back and checked.
//!
//! Why a file of its own: the settings are a value (PEM texts, a verify mode, a name) that is
//! read, shown and compared without a socket; checking them means building the client they make
//! ([`super::client`]), so a file that parses is a file that connects.

use std::collections::HashMap;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

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
    // PEM texts, read by the client module that builds from them.
    pub(super) ca: String,
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
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
    /// Settings as given, not checked yet: [`TlsSettings::new`] and [`TlsSettings::parse`]
    /// check them by building their client (the client module).
    pub(super) fn unchecked(
        ca: String,
        client: Option<(String, String)>,
        server_name: Option<String>,
        verify: Verify,
    ) -> TlsSettings {
        let (cert, key) = client.unzip();
        TlsSettings {
            verify,
            server_name,
            ca,
            cert,
            key,
        }
    }

    /// The name every server's certificate must carry, if one is set.
    pub(super) fn name(&self) -> std::result::Result<Option<ServerName<'static>>, Unusable> {
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

    /// Settings from the file's text (see the module's table), not checked yet (see
    /// [`TlsSettings::parse`]).
    pub(super) fn read_unchecked(text: &str) -> std::result::Result<TlsSettings, String> {
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
        let verify = verify.unwrap_or(Verify::Full);
        Ok(TlsSettings::unchecked(ca, client, server_name, verify))
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Test-only certificates (valid for a century, made with openssl): a CA, a client
    /// certificate it signed with its key, and a key of nothing.
    const CA: &str = include_str!("testdata/ca.pem");
    const CLIENT: &str = include_str!("testdata/client.pem");
    const CLIENT_KEY: &str = include_str!("testdata/client.key");
    const OTHER_KEY: &str = include_str!("testdata/other.key");

    fn client() -> Option<(String, String)> {
        Some((CLIENT.to_string(), CLIENT_KEY.to_string()))
    }

    #[test]
    fn settings_are_read_back_as_written() {
        for (client, name, verify) in [
            (None, None, Verify::Full),
            (client(), Some("cache.example".to_string()), Verify::Ca),
            (None, Some("10.0.0.1".to_string()), Verify::Full),
        ] {
            let settings = TlsSettings::new(CA.to_string(), client, name, verify).unwrap();
            let text = settings.to_text();
            assert_eq!(TlsSettings::parse(&text).unwrap(), settings, "{text}");
        }
        let settings = TlsSettings::new(CA.into(), client(), None, Verify::Ca).unwrap();
        assert_eq!(
            settings.summary(),
            Summary {
                verify: Verify::Ca,
                server_name: None,
                ca_certificates: 1,
                client_certificate: true,
            }
        );
        // The key never shows in a debug print.
        assert!(!format!("{settings:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_settings_file_is_read_as_the_module_s_table_says() {
        let text = format!("# written by hand\n\nserver-name cache.example\n[ca]\n{CA}");
        let settings = TlsSettings::parse(&text).unwrap();
        assert_eq!(settings.verify, Verify::Full, "full unless said");
        assert_eq!(settings.server_name.as_deref(), Some("cache.example"));
        assert!(!settings.summary().client_certificate);
        let twice = format!("[ca]\n{CA}[ca]\n{CA}");
        let line = CA.lines().count() + 2;
        assert_eq!(
            TlsSettings::parse(&twice).unwrap_err(),
            format!("line {line}: section [ca] given twice")
        );
        assert!(
            TlsSettings::parse("[crl]\n")
                .unwrap_err()
                .contains("unknown section [crl]")
        );
    }

    #[test]
    fn each_unusable_part_is_named() {
        let part = |client: Option<(String, String)>, name: Option<&str>| {
            TlsSettings::new(CA.into(), client, name.map(String::from), Verify::Full).unwrap_err()
        };
        let wrong_key = part(Some((CLIENT.into(), OTHER_KEY.into())), None);
        assert_eq!(wrong_key.part, Part::Key);
        assert_eq!(wrong_key.why, "it is not the key of the client certificate");
        let no_key = part(Some((CLIENT.into(), CLIENT.into())), None);
        assert_eq!(no_key.part, Part::Key);
        assert!(no_key.why.starts_with("no private key in it"), "{no_key}");
        let no_cert = part(Some((CLIENT_KEY.into(), CLIENT_KEY.into())), None);
        assert_eq!(no_cert.part, Part::Cert);
        let name = part(None, Some("not a name!"));
        assert_eq!(name.part, Part::ServerName);
        assert_eq!(
            name.to_string(),
            "server-name: 'not a name!' is not a DNS name or an IP address"
        );
        let ca = TlsSettings::new(CLIENT_KEY.into(), None, None, Verify::Full).unwrap_err();
        assert_eq!(ca.part, Part::Ca);
        assert!(
            ca.to_string().starts_with("[ca]: no certificate in it"),
            "{ca}"
        );
    }
}
