//! The verbs that work on one domain's table through the [`crate::store::Store`], so that
//! each is written once for this host's registry and the fleet: those that change it and
//! those that show it.

pub mod preview;
pub mod read;
pub mod write;
