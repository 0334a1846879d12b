//! Domains (one server table per application, e.g. `myapp`, `default`) and where their files
//! live.
//!
//! A domain's table is the file `<dir>/<domain>.mcshm`. The directory is, in order: the caller's
//! explicit choice (`--dir`), `$MCSHM_DIR`, `/run/mcshm` when it exists or the caller is root
//! (the system-wide registry, created 0755), else `$XDG_RUNTIME_DIR/mcshm` for an unprivileged
//! user. All of these are tmpfs: the durable source of truth is a config file replayed at boot
//! with `mcadmin load`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The domain used when none is named.
pub const DEFAULT_DOMAIN: &str = "default";
/// The system-wide registry directory.
pub const SYSTEM_DIR: &str = "/run/mcshm";
/// Suffix of registry files.
pub const FILE_SUFFIX: &str = ".mcshm";
/// Longest domain name.
pub const MAX_DOMAIN_LEN: usize = 64;

/// A validated domain name: 1–64 characters of `[A-Za-z0-9._-]`, not starting with `.`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Domain(String);

impl Domain {
    pub fn new(name: &str) -> Result<Domain> {
        let bad = |why: &str| Error::invalid("domain name", name, why);
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.len() > MAX_DOMAIN_LEN {
            return Err(bad(&format!("longer than {MAX_DOMAIN_LEN} characters")));
        }
        if name.starts_with('.') {
            return Err(bad("starts with '.'"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(bad(&format!(
                "character {c:?} not allowed (use letters, digits, '.', '_', '-')"
            )));
        }
        Ok(Domain(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The registry file of this domain in `dir`.
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}{FILE_SUFFIX}", self.0))
    }
}

impl Default for Domain {
    fn default() -> Domain {
        Domain(DEFAULT_DOMAIN.to_string())
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Domain {
    type Err = Error;
    fn from_str(s: &str) -> Result<Domain> {
        Domain::new(s)
    }
}

/// The registry directory when the caller named none: `$MCSHM_DIR`, else `/run/mcshm` if it
/// exists or we are root, else `$XDG_RUNTIME_DIR/mcshm`.
pub fn default_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MCSHM_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if Path::new(SYSTEM_DIR).is_dir() || crate::shm::effective_uid() == 0 {
        return Ok(PathBuf::from(SYSTEM_DIR));
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => Ok(Path::new(&dir).join("mcshm")),
        None => Err(Error::NoDirectory),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses_names() {
        for ok in ["default", "myapp", "a", "A.b_c-9", &"x".repeat(64)] {
            assert!(Domain::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "../x", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(Domain::new(bad).is_err(), "{bad}");
        }
    }
}
