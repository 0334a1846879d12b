//! The integration tests, in one test binary: real mcadmin, mclient and mcproxy processes
//! against real memcached (and etcd) processes started by the tests. One binary, so the shared
//! helpers (`tests/common`) and the libraries are compiled and linked once, not once per file.
//! Kept apart as their own binaries: `coherence` (the randomized checker, long), `drain` (a
//! rate measured, so it runs alone), `man` (`MCSHM_UPDATE_MAN=1 cargo test --test man`
//! regenerates the manuals), `ketama` (against libmemcached, needs no helpers).
//!
//! Run one file's tests with `cargo test --test it proxy::`, one test by its name.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod buckets;
mod capi;
mod cli;
mod client;
mod concurrency;
mod conformance;
mod corruption;
mod explain;
mod fleet;
mod fleet_fence;
mod fleet_fence_proxy;
mod fleet_lag;
mod fleet_replay;
mod fleet_tls;
mod growth;
mod help;
mod layers;
mod lifecycle;
mod lists;
mod locking;
mod mclient;
mod metrics;
mod operators;
mod package;
mod pecl;
mod permissions;
mod prefix;
mod proxy;
mod proxy_binary;
mod proxy_clients;
mod readme;
mod replay;
mod reserved;
mod shared_ring;
mod tls;
mod truncation;
