//! mcshm-route: the routing core, sans sockets. For every request a front end makes (the
//! blocking client in libmcshm, mcproxy's event loop) the [`Router`] answers where it goes, as
//! a plan to execute ([`ReadPlan`], [`WritePlan`]: replicas, invalidations, warm-up and drain
//! fills), with the sequences around them ([`Fill::after_add`], [`FollowChange`],
//! [`GetMany`], [`IncrOrCreate`]: what each reply means, what wins, when to ask again), and is
//! told how it went ([`Router::report`], servers named by id). Side effects come back as data
//! for the front end to carry out: a failure at the domain's limit as a [`Failure`] asking for
//! a [`MarkDown`] (carried out with [`Router::carry_out`], the one adapter), a due retry probe
//! as a [`RetryProbe`]. So each rule is written once and no front end can drift from another.
//!
//! It reads no clock (every call that routes is given `now`) and opens no socket: it reads the
//! registry (the table it routes on, and the shared failure counts), and a mark-down is a
//! short file-locked transaction run only when the front end carries it out. A retry probe
//! talks to a server, so the front end runs it where blocking is allowed
//! (`libmcshm::lifecycle::run_probe`).
//!
//! Layering: [`mcshm_table`] (the table, its placement and file) → this crate → the memcached
//! side (libmcshm's protocol, connections and client; mcproxy).

#[cfg(test)]
mod change_cost_tests;
mod failures;
mod missed;
mod plan;
mod report;
mod router;
#[cfg(test)]
mod router_tests;
mod sequence;

pub use plan::{Fill, FillKind, Outcome, PlannedBatch, ReadPlan, Reposition, ServerRef, WritePlan};
pub use report::{Failure, FailureEvent, MarkDown, MarkedDown, io_errno};
pub use router::{RetryProbe, Router};
pub use sequence::{
    AddAnswer, AfterAdd, CounterAsk, CounterNext, CounterReply, FollowChange, FollowRound, GetMany,
    IncrOrCreate, MAX_ADDS, MAX_FOLLOWED,
};

/// Operations between two periodic checks (retry probes of servers off the ring, and the
/// clients record's last-used time).
const PERIODIC_OPS: u64 = 64;
