//! The files beside a domain's table that its connections read: `DIR/DOMAIN.auth` and
//! `DIR/DOMAIN.tls` (see [`crate::access`]).
//!
//! Never in the table: the table is world-readable (0644) so that every process can route,
//! while these are 0640 with the table's group, so that only the clients the operator put in
//! that group (and root) can read them. Each is replaced whole by a rename (one version at a
//! time). Both are files mcshm trusts: opened without following links, and in a world-writable
//! directory only the caller's or root's.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::domain::Domain;
use crate::error::{Error, Result};

/// Mode of the files: the owner writes, the table's group reads, nobody else.
const MODE: u32 = 0o640;

/// The text of the file at `path` (a file mcshm trusts); `None` when there is none.
pub(crate) fn read(path: &Path, what: &'static str) -> Result<Option<String>> {
    let mut file = match crate::registry::open_trusted(path, false) {
        Ok(file) => file,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| Error::io(what, path, e))?;
    Ok(Some(text))
}

/// Stores `text` as the file of `extension` beside the domain's table (replacing any): written
/// to a temporary file of mode 0640 with the table's group, then renamed into place.
pub(crate) fn save(dir: &Path, domain: &Domain, extension: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{}.{extension}", domain.as_str()));
    let table = fs::metadata(domain.path_in(dir)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NoDomain {
                domain: domain.to_string(),
                path: domain.path_in(dir),
            }
        } else {
            Error::io("inspect", domain.path_in(dir), e)
        }
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.{extension}.tmp",
        domain.as_str(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MODE)
        .open(&tmp)
        .and_then(|mut file| {
            file.set_permissions(fs::Permissions::from_mode(MODE))?;
            std::os::unix::fs::fchown(&file, None, Some(table.gid()))?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("write", &path, e));
    }
    Ok(path)
}

/// Removes the file at `path`; whether there was one.
pub(crate) fn clear(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}
