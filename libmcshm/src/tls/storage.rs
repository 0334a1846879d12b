//! Where a domain's TLS settings are stored (`DIR/DOMAIN.tls`, beside its table: see the
//! crate's `beside` module for the file's mode and trust), and the clients built from them.
//!
//! Why a file of its own: reading the settings for every new connection must not mean building
//! a rustls client for every new connection (that loses session resumption and costs a parse of
//! every certificate); `BUILT` is the process-wide cache that avoids it, one client per version
//! of each file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::client::Tls;
use super::settings::TlsSettings;
use crate::domain::Domain;
use crate::error::{Error, Result};

/// Per settings file: the text a client was built from, and the client.
type Built = HashMap<PathBuf, (String, Arc<Tls>)>;

/// The clients built in this process, one per settings file: [`load`] reads the file each time
/// and builds again only when its text changed, so a change applies to every new connection
/// without a restart, and an unchanged file keeps its client (and its resumable sessions).
static BUILT: OnceLock<Mutex<Built>> = OnceLock::new();

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
///
/// The fix names a program of mcshm's (a library should speak in its own terms), because
/// tests/it/tls.rs asserts "mcadmin tls" in this message; see issue 29.
fn read_file(path: PathBuf, text: &str) -> Result<(TlsSettings, Tls)> {
    TlsSettings::read(text).map_err(|why| Error::Unusable {
        path,
        why: format!("{why} (set them again with `mcadmin tls`)"),
    })
}
