//! memcached's ASCII authentication (`memcached -Y FILE`, memcached 1.5.15 and later): a new
//! connection's first command is a `set` whose data is `USER PASSWORD`; the server answers
//! `STORED`, or `CLIENT_ERROR authentication failure` and closes the connection.
//!
//! A domain's credentials live beside its table, in `DIR/DOMAIN.auth`, never in the table:
//! the table is world-readable (0644) so that every process can route, while the credentials
//! file is 0640 with the table's group, so that only the clients the operator put in that
//! group (and root) can read it. Format: the user on the first line, the password on the
//! second. Every connection the library opens for the domain (client operations, probes,
//! flushes, drains) authenticates with them.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::domain::Domain;
use crate::error::{Error, Result};

/// Mode of a credentials file: the owner writes, the table's group reads, nobody else.
const AUTH_MODE: u32 = 0o640;
/// Longest user or password (bytes): the whole `set` data stays one short line.
const MAX_LEN: usize = 250;

/// A user and password for memcached's ASCII authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <hidden> }}",
            self.user
        )
    }
}

impl Credentials {
    /// Checks both parts: 1 to 250 bytes of printable text without spaces (memcached splits
    /// the data at its one space and ends it at CR LF).
    pub fn new(user: &str, password: &str) -> Result<Credentials> {
        for (what, value) in [("user", user), ("password", password)] {
            let shown = if what == "password" {
                "<hidden>"
            } else {
                value
            };
            if value.is_empty() || value.len() > MAX_LEN {
                return Err(Error::invalid(what, shown, "expected 1 to 250 bytes"));
            }
            if value
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(Error::invalid(
                    what,
                    shown,
                    "spaces and control characters cannot be sent in memcached's authentication",
                ));
            }
        }
        Ok(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    /// The bytes that authenticate a new connection (a `set` of `USER PASSWORD`).
    pub fn request(&self) -> Vec<u8> {
        let data = format!("{} {}", self.user, self.password);
        format!("set auth 0 0 {}\r\n{data}\r\n", data.len()).into_bytes()
    }

    /// The server's answer to [`Credentials::request`] (its one line, CRLF included): accepted
    /// on `STORED`; otherwise the message every connection of mcshm gives (the library's, the
    /// proxy's, drain's), naming the user and the fix.
    pub fn check_answer(&self, answer: &[u8]) -> std::result::Result<(), String> {
        if answer == b"STORED\r\n" {
            return Ok(());
        }
        let said = String::from_utf8_lossy(answer);
        let said = said.trim_end();
        Err(self.refused(said.strip_prefix("CLIENT_ERROR ").unwrap_or(said)))
    }

    /// The server refused these credentials, saying `said`: the message naming the user and
    /// the fix.
    pub fn refused(&self, said: &str) -> String {
        format!(
            "the server refused the credentials of user '{}' ({said}): check them with `mcadmin auth`",
            self.user
        )
    }
}

/// Where a domain's credentials are kept: `DIR/DOMAIN.auth`.
pub fn path(dir: &Path, domain: &Domain) -> PathBuf {
    dir.join(format!("{}.auth", domain.as_str()))
}

/// The domain's credentials; `None` when it has none. A file this process may not read is an
/// error that says so (the domain's servers would refuse every connection without them).
pub fn load(dir: &Path, domain: &Domain) -> Result<Option<Credentials>> {
    let path = path(dir, domain);
    let text = match read_trusted(&path) {
        Ok(text) => text,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut lines = text.lines();
    let (Some(user), Some(password)) = (lines.next(), lines.next()) else {
        return Err(Error::Corrupt {
            path,
            why: "expected the user on the first line and the password on the second".into(),
        });
    };
    Credentials::new(user, password)
        .map(Some)
        .map_err(|e| Error::Corrupt {
            path,
            why: e.to_string(),
        })
}

/// The text of a file mcshm trusts (see `registry::open_trusted`).
fn read_trusted(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = crate::registry::open_trusted(path, false)?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| Error::io("read the credentials in", path, e))?;
    Ok(text)
}

/// Stores the domain's credentials (replacing any): written to a temporary file of mode 0640
/// with the table's group, then renamed into place.
pub fn save(dir: &Path, domain: &Domain, credentials: &Credentials) -> Result<PathBuf> {
    let path = path(dir, domain);
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
        ".{}.{}.auth.tmp",
        domain.as_str(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(AUTH_MODE)
        .open(&tmp)
        .and_then(|mut file| {
            file.set_permissions(fs::Permissions::from_mode(AUTH_MODE))?;
            std::os::unix::fs::fchown(&file, None, Some(table.gid()))?;
            let text = format!("{}\n{}\n", credentials.user, credentials.password);
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("write the credentials to", &path, e));
    }
    Ok(path)
}

/// Removes the domain's credentials; whether there were any.
pub fn clear(dir: &Path, domain: &Domain) -> Result<bool> {
    let path = path(dir, domain);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove", &path, e)),
    }
}

#[cfg(test)]
mod answer_tests {
    use super::Credentials;

    #[test]
    fn the_answer_to_the_authentication_is_read_alike_everywhere() {
        let credentials = Credentials::new("app", "s3cret").unwrap();
        assert_eq!(credentials.check_answer(b"STORED\r\n"), Ok(()));
        let refused = credentials
            .check_answer(b"CLIENT_ERROR authentication failure\r\n")
            .unwrap_err();
        assert_eq!(
            refused,
            "the server refused the credentials of user 'app' (authentication failure): check them with `mcadmin auth`"
        );
        assert!(credentials.check_answer(b"ERROR\r\n").is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_refuse_what_memcached_cannot_take_and_hide_the_password() {
        let ok = Credentials::new("app", "s3cret!").unwrap();
        assert_eq!(ok.request(), b"set auth 0 0 11\r\napp s3cret!\r\n");
        assert!(!format!("{ok:?}").contains("s3cret"));
        for (user, password) in [("", "p"), ("a b", "p"), ("u", "p\r\nflush_all"), ("u", "")] {
            let err = Credentials::new(user, password).unwrap_err().to_string();
            assert!(!err.contains("flush_all"), "{err}");
        }
        assert!(Credentials::new(&"u".repeat(251), "p").is_err());
    }
}
