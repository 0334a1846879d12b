//! What a new connection to a domain's servers presents besides its address: the domain's TLS
//! settings ([`crate::tls`], `DIR/DOMAIN.tls`) and credentials ([`crate::auth`],
//! `DIR/DOMAIN.auth`).
//!
//! Both are files beside the table (written by the crate's `beside` module), read when a connection opens, so a
//! change applies to every new connection of every process without a restart.

use std::path::Path;
use std::sync::Arc;

use crate::auth::Credentials;
use crate::domain::Domain;
use crate::error::Result;
use crate::tls::Tls;

/// A domain's TLS client and credentials, as a new connection uses them; the default is
/// neither (clear text, no authentication: a private server list).
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub tls: Option<Arc<Tls>>,
    pub credentials: Option<Credentials>,
}

impl Access {
    /// What the domain's files say now. A file this process may not read is an error that
    /// says so (the domain's servers would refuse every connection without it).
    pub fn load(dir: &Path, domain: &Domain) -> Result<Access> {
        Ok(Access {
            tls: crate::tls::load(dir, domain)?,
            credentials: crate::auth::load(dir, domain)?,
        })
    }
}
