//! memcached's ASCII authentication (`memcached -Y FILE`, memcached 1.5.15 and later): a new
//! connection's first command is a `set` whose data is `USER PASSWORD`; the server answers
//! `STORED`, or `CLIENT_ERROR authentication failure` and closes the connection.
//!
//! A domain's credentials live beside its table, in `DIR/DOMAIN.auth` (see [`crate::access`]
//! for who may read it and when it is read). Format: the user on the first line, the password
//! on the second. Every connection the library opens for the domain (client operations,
//! probes, flushes, drains) authenticates with them.

use std::path::{Path, PathBuf};

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::proto::{Encoded, Request, StoreVerb};

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

    /// The request that authenticates a new connection (a `set` of `USER PASSWORD`).
    pub fn request(&self) -> Encoded {
        let data = format!("{} {}", self.user, self.password);
        let set = Request::Store {
            verb: StoreVerb::Set,
            key: b"auth",
            flags: 0,
            exptime: 0,
            value: data.as_bytes(),
        };
        Encoded::of(&set, b"")
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
    let Some(text) = crate::beside::read(&path, "read the credentials in")? else {
        return Ok(None);
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

/// Stores the domain's credentials (replacing any; see the crate's `beside` module).
pub fn save(dir: &Path, domain: &Domain, credentials: &Credentials) -> Result<PathBuf> {
    let text = format!("{}\n{}\n", credentials.user, credentials.password);
    crate::beside::save(dir, domain, "auth", &text)
}

/// Removes the domain's credentials; whether there were any.
pub fn clear(dir: &Path, domain: &Domain) -> Result<bool> {
    crate::beside::clear(&path(dir, domain))
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
        assert_eq!(ok.request().bytes(), b"set auth 0 0 11\r\napp s3cret!\r\n");
        assert!(!format!("{ok:?}").contains("s3cret"));
        for (user, password) in [("", "p"), ("a b", "p"), ("u", "p\r\nflush_all"), ("u", "")] {
            let err = Credentials::new(user, password).unwrap_err().to_string();
            assert!(!err.contains("flush_all"), "{err}");
        }
        assert!(Credentials::new(&"u".repeat(251), "p").is_err());
    }
}
