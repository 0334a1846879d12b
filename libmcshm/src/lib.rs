//! libmcshm: one versioned memcached server table per domain, shared by every process on a host.
//!
//! A domain's table lives in a memory-mapped file (`/run/mcshm/<domain>.mcshm` by default, see
//! [`domain`]). Readers never block and never see a torn table; writers are serialized by a file
//! lock, and a writer killed at any instruction leaves the last published table readable. A
//! change made by `mcadmin` (or any [`Registry::transact`]) is seen by every process on its next
//! [`Registry::snapshot`].
//!
//! ```no_run
//! use libmcshm::{Address, Domain, Registry, Server};
//! # fn main() -> libmcshm::Result<()> {
//! let dir = libmcshm::default_dir()?;
//! let domain = Domain::new("myapp")?;
//! let mut writer = Registry::open_writer(&dir, &domain, true)?;
//! writer.transact(|table| {
//!     table.servers.push(Server::new(Address::parse("cache1:11211")?));
//!     Ok(())
//! })?;
//! let mut reader = Registry::open(&dir, &domain)?;
//! for server in &reader.snapshot()?.servers {
//!     println!("{} {}", server.address, server.state);
//! }
//! # Ok(()) }
//! ```
//!
//! Modules, from the bytes up: `shm` (the only `unsafe`: atomic access to the mapping),
//! [`seqlock`] (publish/read protocol), [`format`](mod@crate::format) (the byte layout),
//! [`registry`] (files, snapshots, transactions, failure counters, process records), [`edit`]
//! and [`dump`] (the operations `mcadmin` offers); [`hash`] (every key hash, a leaf) and
//! [`ring`] (ketama, libmemcached-compatible); then the memcached side: [`proto`] (the text
//! protocol), [`conn`], [`client`] (routing, failover, replication, warm-up, drain fallback),
//! [`lifecycle`] (probe and rejoin), [`health`] (the watch daemon), [`drain`]; and
//! [`processes`] (which processes have a domain open).

#![deny(unsafe_code)]

pub mod address;
pub mod auth;
pub mod client;
pub mod coherence;
pub mod conn;
pub mod domain;
pub mod drain;
pub mod dump;
pub mod edit;
pub mod error;
pub mod format;
pub mod hash;
pub mod health;
pub mod lifecycle;
pub mod placement;
pub mod prefix;
pub mod processes;
pub mod proto;
pub mod registry;
pub mod seqlock;
pub mod shared_ring;
#[allow(unsafe_code)]
mod shm;
pub mod table;

pub use address::Address;
pub use client::{Client, FailureEvent, MarkedDown, MultiGet, StoreItem, Stored};
pub use conn::Timeouts;
pub use domain::{DEFAULT_DOMAIN, Domain, default_dir};
pub use error::{Error, ErrorKind, Result};
pub use proto::{Item, StoreVerb};
pub use registry::{AgentLink, Commit, LockWait, Registry};
pub use shm::{monotonic_ns, release_free_heap};
pub use table::{Server, Snapshot, State};
