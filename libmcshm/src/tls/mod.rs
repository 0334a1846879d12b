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
//!
//! The parts, each in a file of its own because each changes for its own reasons:
//! [`settings`] (the model and its text file), [`client`] (the rustls client they make),
//! [`records`] (where a TLS record must end for memcached), [`storage`] (where the file is kept,
//! and the process-wide cache of the clients built from it) and [`diagnose`] (whether a server
//! speaks TLS, and why a connection failed, in words). Everything is re-exported here:
//! `libmcshm::tls::TlsSettings`, `libmcshm::tls::load`, and so on.

pub mod client;
pub mod diagnose;
pub mod records;
pub mod settings;
pub mod storage;

pub use client::{Tls, client_config};
pub use diagnose::{
    Cause, Peer, client_hello, explain, explain_io, explain_to, is_record, rustls_error,
};
pub use records::write_requests;
pub use settings::{Part, Summary, TlsSettings, Unusable, Verify};
pub use storage::{clear, load, load_settings, path, save};
