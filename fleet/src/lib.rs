//! mcshm's fleet: every host's server tables mirrored from etcd, and every host's failures
//! seen by all.
//!
//! Only the daemons and `mcadmin` link this crate; libmcshm's per-operation path (the client,
//! the C API) knows nothing of etcd: a host's processes keep reading their local table, which
//! the agent ([`sync`]) keeps equal to the fleet's.
//!
//! Modules, from the wire up: [`etcd`] (a blocking client of etcd's v3 JSON gateway),
//! [`document`] (a domain's table as JSON, validated as hostile input), [`store`] (the key
//! layout, fleet transactions, the fleet-wide probe lease, host records), [`mirror`] (the
//! three-way merge of a host's marks and the fleet's table), [`replay`] (a down server's
//! rejoin without a flush: every host replays its own invalidation log) and [`sync`] (the host
//! agent).

pub mod document;
pub mod etcd;
pub mod mirror;
pub mod replay;
pub mod store;
pub mod sync;

pub use etcd::{Etcd, EtcdConfig, EtcdError};
pub use store::{Fencing, Fleet, FleetCommit, FleetError, FleetTable, HostRecord};
pub use sync::{Agent, SyncEvent, SyncOptions};
