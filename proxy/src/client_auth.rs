//! Who may use the proxy (`mcproxy --client-auth FILE`): the credentials its clients present,
//! in memcached's `-Y` format (one `user:password` per line), checked the two ways memcached
//! checks them: SASL PLAIN on binary connections, and memcached's ASCII authentication on text
//! connections (a `set` whose value is `user password`, before any other command).

use std::path::Path;

/// The users and passwords clients may present.
#[derive(Clone, Debug)]
pub struct ClientAuth {
    users: Vec<(Vec<u8>, Vec<u8>)>,
}

impl ClientAuth {
    /// Reads a `-Y` file: `user:password` per line; blank lines ignored. An unreadable file,
    /// a line without `:`, or no user at all is an error naming the file and line.
    pub fn load(path: &Path) -> Result<ClientAuth, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--client-auth {}: {e}", path.display()))?;
        let mut users = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let (user, password) = line.split_once(':').ok_or_else(|| {
                format!(
                    "--client-auth {} line {}: expected user:password",
                    path.display(),
                    n + 1
                )
            })?;
            if user.is_empty() {
                return Err(format!(
                    "--client-auth {} line {}: empty user",
                    path.display(),
                    n + 1
                ));
            }
            users.push((user.as_bytes().to_vec(), password.as_bytes().to_vec()));
        }
        if users.is_empty() {
            return Err(format!("--client-auth {}: no user in it", path.display()));
        }
        Ok(ClientAuth { users })
    }

    /// Whether `user` with `password` may use the proxy (compared in time independent of
    /// where a password first differs).
    pub fn check(&self, user: &[u8], password: &[u8]) -> bool {
        self.users
            .iter()
            .any(|(u, p)| u == user && same_secret(p, password))
    }

    /// SASL PLAIN (`[authzid] NUL authcid NUL password`).
    pub fn check_plain(&self, data: &[u8]) -> bool {
        let mut parts = data.split(|&b| b == 0);
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(_authzid), Some(user), Some(password), None) => self.check(user, password),
            _ => false,
        }
    }

    /// memcached's ASCII authentication: a `set` value `user password`.
    pub fn check_ascii(&self, value: &[u8]) -> bool {
        let text = value.strip_suffix(b"\r\n").unwrap_or(value);
        let mut parts = text.splitn(2, |&b| b == b' ');
        match (parts.next(), parts.next()) {
            (Some(user), Some(password)) => self.check(user, password),
            _ => false,
        }
    }
}

fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> ClientAuth {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "app:s3cret\n\nother:pw:with:colons\n").unwrap();
        ClientAuth::load(&path).unwrap()
    }

    #[test]
    fn plain_and_ascii_credentials_are_checked() {
        let a = auth();
        assert!(a.check_plain(b"\0app\0s3cret"));
        assert!(a.check_plain(b"app\0app\0s3cret"));
        assert!(!a.check_plain(b"\0app\0wrong"));
        assert!(!a.check_plain(b"\0app"));
        assert!(a.check_plain(b"\0other\0pw:with:colons"));
        assert!(a.check_ascii(b"app s3cret"));
        assert!(!a.check_ascii(b"app s3cre"));
        assert!(!a.check_ascii(b"nobody x"));
    }

    #[test]
    fn a_bad_file_is_refused_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "app:x\nno-colon\n").unwrap();
        assert!(ClientAuth::load(&path).unwrap_err().contains("line 2"));
        std::fs::write(&path, "\n").unwrap();
        assert!(ClientAuth::load(&path).unwrap_err().contains("no user"));
        assert!(ClientAuth::load(&dir.path().join("missing")).is_err());
    }
}
