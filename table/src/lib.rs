//! mcshm-table: a domain's versioned memcached server table, in a file every process on a host
//! maps. No sockets: this crate is what `mcadmin add/list/dump/load/wait` and the fleet's mirror
//! need, and what the routing and client layers build on (most programs use it through the
//! `libmcshm` facade).
//!
//! Layers, each importing only those before it:
//! - [`error`], [`key`] (what a memcached key may be), [`hash`] (every key hash), [`clock`],
//!   [`work`] (what a change costs a reader, counted): leaves;
//! - [`address`], [`domain`], [`prefix`]: names and their validation;
//! - [`placement`]: where a key goes (ketama, ketama-spy, ketama-unweighted, modula, PECL), from
//!   members (position, address, weight), knowing nothing of the table;
//! - [`table`]: the model (servers, states, policy, snapshots) and [`coherence`], the rule that
//!   marks servers which may keep stale copies when the placement changes, and the servers a
//!   fleet commit fences ([`fence`]: the fencing epoch's key, value and verdict);
//! - the file, from the bytes up, private to this crate: `shm` (the only `unsafe`: atomic access
//!   to the mapping, fcntl locks, futexes), `seqlock` (the publish/read protocol), `format` (the
//!   byte layout, drawn in `mcshm(5)`), `shared_ring` (each version's ring, written once by the
//!   writer); then [`registry`], the public face of the file (open, snapshots, transactions,
//!   the shared failure view, process records, and beside the table each server's invalidation
//!   log), and [`processes`] (which processes have a domain open);
//! - operations on a table: [`edit`] and [`dump`] (what `mcadmin` offers).

#![deny(unsafe_code)]

pub mod address;
pub mod clock;
pub mod coherence;
pub mod domain;
pub mod dump;
pub mod edit;
pub mod error;
pub mod fence;
mod format;
pub mod hash;
pub mod key;
pub mod placement;
pub mod prefix;
pub mod processes;
pub mod registry;
mod seqlock;
mod shared_ring;
#[allow(unsafe_code)]
mod shm;
pub mod table;
pub mod work;

pub use address::Address;
pub use domain::{DEFAULT_DOMAIN, Domain, default_dir};
pub use error::{Error, ErrorKind, Result};
pub use registry::{AgentLink, Commit, LockWait, Registry};
pub use shm::{map_large_allocations_apart, monotonic_ns, peer_uid, release_free_heap};
pub use table::{Server, Snapshot, State};
pub use work::WorkCounters;
