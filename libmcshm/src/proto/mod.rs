//! The memcached text protocol as pure code over bytes, one wire layer for every front end:
//! requests are encoded into a buffer ([`Request`]); replies are decoded from one for the
//! blocking client ([`parse_reply`]: "complete, with the bytes it used" / "incomplete, read
//! more" / "malformed") or framed for a proxy ([`frame`]: where a reply ends, its items), both
//! over one grammar. No I/O here; connections live in [`crate::conn`].
//!
//! Every line read is bounded ([`MAX_LINE`]) and every value length is bounded
//! ([`MAX_VALUE_LEN`]), so a broken or hostile peer cannot make us buffer without limit. Keys
//! are checked before anything is encoded: a key like `a\r\nflush_all` never reaches a server.

/// Longest reply line (VALUE/STAT/VERSION/error lines are far shorter).
pub const MAX_LINE: usize = 8192;
/// Largest value we accept in a reply (memcached's item size limit is at most 1 GiB).
pub const MAX_VALUE_LEN: usize = 1 << 30;

pub use crate::key::{KeyError, MAX_KEY_LEN, check_key};

pub mod frame;
mod grammar;
mod reply;
mod request;

pub use grammar::{Malformed, is_error};
pub use reply::{Item, Parsed, Reply, parse_reply};
pub use request::{Encoded, Expect, MetaVerb, Request, StoreVerb};
