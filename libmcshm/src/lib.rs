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
//! Layers (each a crate that imports only the ones before it): [`mcshm_table`] (the table, its
//! placement and its file: no sockets), then this crate's memcached side: [`proto`] (the text
//! protocol), [`auth`] and [`tls`] (what a domain's connections present, together [`access`]),
//! [`conn`], [`client`] (the blocking client: it executes the plans and sequences of
//! mcshm-route's router, as mcproxy does: failover, replication, warm-up, drain fallback),
//! [`lifecycle`] (probe and the one rejoin rule), [`fence`] (raising a domain's fencing epoch
//! on its servers before a fleet commit), [`health`] (the watch daemon), [`drain`],
//! [`rebucket`] and [`settle`] (the workflows); [`metrics`] (the host's domains as a Prometheus page, read from
//! the registry, and its HTTP server). The table
//! crate's modules are re-exported here under their names, so `libmcshm::registry` and
//! `libmcshm::table` are what programs use.

#![deny(unsafe_code)]

pub use mcshm_table::{
    address, clock, coherence, domain, dump, edit, error, hash, key, placement, prefix, processes,
    registry, table, work,
};

pub mod access;
pub mod auth;
mod beside;
pub mod client;
pub mod conn;
pub mod drain;
pub mod fence;
pub mod health;
pub mod lifecycle;
pub mod metadump;
pub mod metrics;
pub mod proto;
pub mod rebucket;
pub mod settle;
pub mod tls;

pub use client::{Client, FailureEvent, MarkedDown, MultiGet, StoreItem, Stored};
pub use conn::Timeouts;
pub use mcshm_table::{
    Address, AgentLink, Commit, DEFAULT_DOMAIN, Domain, Error, ErrorKind, LockWait, Registry,
    Result, Server, Snapshot, State, WorkCounters, default_dir, map_large_allocations_apart,
    monotonic_ns, peer_uid, release_free_heap,
};
pub use proto::{Item, StoreVerb};
