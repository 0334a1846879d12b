//! The server table as callers see it: owned, validated values copied out of the shared file.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use crate::address::Address;
use crate::error::{Error, Result};
use crate::placement::{BucketMap, Distribution, Member};

/// `retry_interval` of a server added without one (seconds; PECL memcache's default).
pub const DEFAULT_RETRY_INTERVAL: i32 = 15;
/// Longest state reason (bytes of UTF-8).
pub const MAX_REASON_LEN: usize = 192;

/// Whether clients may use a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Up,
    Down,
    /// Being retired: clients write its keys to their new owner and move what they read from it
    /// (`mcadmin drain`).
    Draining,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Draining => "draining",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            State::Up => 0,
            State::Down => 1,
            State::Draining => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<State> {
        match code {
            0 => Some(State::Up),
            1 => Some(State::Down),
            2 => Some(State::Draining),
            _ => None,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for State {
    type Err = Error;
    fn from_str(s: &str) -> Result<State> {
        match s {
            "up" => Ok(State::Up),
            "down" => Ok(State::Down),
            "draining" => Ok(State::Draining),
            _ => Err(Error::invalid(
                "state",
                s,
                "expected 'up', 'down' or 'draining'",
            )),
        }
    }
}

/// One server of a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub address: Address,
    /// Relative share of keys, 1..=65535.
    pub weight: u16,
    pub state: State,
    /// Seconds between automatic retries of a down server; -1: never retried automatically.
    pub retry_interval: i32,
    /// When the state last changed (ms since the Unix epoch).
    pub since_ms: u64,
    /// Process and user that last changed the state.
    pub changed_by_pid: u32,
    pub changed_by_uid: u32,
    /// Free text: why the server is in its state.
    pub reason: String,
    /// Unique in the domain and never reused (0 until the writer assigns one when publishing).
    pub id: u32,
    /// Index of the server's record (failure counter) in the file's live region; assigned with
    /// the id.
    pub live: u32,
    /// After a rejoin with the `warm` policy: until when (ms since the epoch) a miss on this
    /// server is looked up on the server that owned the key while it was away. 0: no warm-up.
    pub warm_until_ms: u64,
    /// Down by an operator (`mcadmin down`): it stays down until an operator brings it up; no
    /// retry probe, `watch` or fleet agent brings it back. A server marked down after failures
    /// (by clients, `watch` or the fleet) has this false and keeps its automatic retry.
    pub held: bool,
    /// The table version at which this server was marked: it lost keys to other servers (0:
    /// never since it was last flushed or swept). Until `mcadmin settle` sweeps it, it may hold copies of
    /// keys it no longer owns, so every write and delete of a key it does not own deletes the
    /// key there too (see [`crate::coherence`]). A mark stays as it was set when the server
    /// loses keys again (the entry, and so what every reader copies, is unchanged), unless a
    /// sweep of the server is under way ([`Server::sweeping`]).
    pub strays_since: u64,
    /// A sweep of the server's strays is under way (`mcadmin settle`, the watch daemon): a change
    /// that makes it lose keys again sets [`Server::strays_since`] anew, so that the sweep, which
    /// judged keys by an older table, does not clear the mark.
    pub sweeping: bool,
}

impl Server {
    /// A server that is up, with weight 1 and the default retry interval.
    pub fn new(address: Address) -> Server {
        Server {
            address,
            weight: 1,
            state: State::Up,
            retry_interval: DEFAULT_RETRY_INTERVAL,
            since_ms: 0,
            changed_by_pid: 0,
            changed_by_uid: 0,
            reason: String::new(),
            id: 0,
            live: 0,
            warm_until_ms: 0,
            held: false,
            strays_since: 0,
            sweeping: false,
        }
    }

    /// Whether it is down by an operator's decision (see [`Server::held`]).
    pub fn is_held_down(&self) -> bool {
        self.state == State::Down && self.held
    }

    /// Whether it is down and may be brought back up: by anyone (a retry probe, `watch`, the
    /// fleet agent) after failures, only by an `operator` when held down.
    pub fn may_rejoin(&self, operator: bool) -> bool {
        self.state == State::Down && (operator || !self.held)
    }

    /// Its retry interval in ms when a retry probe may ever bring it back: down, not held by an
    /// operator, and an interval other than -1 (never retried automatically).
    pub fn retry_interval_ms(&self) -> Option<u64> {
        let interval = u64::try_from(self.retry_interval).ok()?;
        self.may_rejoin(false).then_some(interval * 1000)
    }

    /// The one rule of when a retry probe is due, for every prober (each process's router
    /// through the host's probe lease, the fleet agent through etcd's): at `now_ms`, the
    /// retry interval has passed since it went down and since the last probe (`last_ms`, 0 for
    /// none). The interval in ms when due.
    pub fn probe_due(&self, now_ms: u64, last_ms: u64) -> Option<u64> {
        let interval = self.retry_interval_ms()?;
        let waited = now_ms >= self.since_ms.saturating_add(interval)
            && now_ms >= last_ms.saturating_add(interval);
        waited.then_some(interval)
    }
}

/// Checks a weight given by a user (1..=65535).
pub fn check_weight(weight: u32) -> Result<u16> {
    match u16::try_from(weight) {
        Ok(w) if w >= 1 => Ok(w),
        _ => Err(Error::invalid(
            "weight",
            &weight.to_string(),
            "must be from 1 to 65535",
        )),
    }
}

/// Checks a retry interval given by a user (-1, or 0 and more seconds).
pub fn check_retry_interval(seconds: i64) -> Result<i32> {
    match i32::try_from(seconds) {
        Ok(s) if s >= -1 => Ok(s),
        _ => Err(Error::invalid(
            "retry interval",
            &seconds.to_string(),
            "must be -1 (never retry automatically) or 0 and more seconds",
        )),
    }
}

/// Checks a failure limit given by a user (1..=255).
pub fn check_failure_limit(text: &str) -> Result<u8> {
    count_1_to_255("failure limit", text)
}

/// Checks a replica count given by a user (1..=255).
pub fn check_replicas(text: &str) -> Result<u8> {
    count_1_to_255("replica count", text)
}

fn count_1_to_255(what: &'static str, text: &str) -> Result<u8> {
    match text.parse::<u8>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(Error::invalid(what, text, "must be from 1 to 255")),
    }
}

/// Checks a warm-up window given by a user (1..=86400 seconds).
pub fn check_warm_window(text: &str) -> Result<u32> {
    match text.parse::<u32>() {
        Ok(n @ 1..=86_400) => Ok(n),
        _ => Err(Error::invalid(
            "warm window",
            text,
            "must be from 1 to 86400 seconds",
        )),
    }
}

/// Checks a state reason: at most 192 bytes, no control characters.
/// A reason the library writes itself (a failure, a load that could not flush): `head`,
/// `detail` and `tail`, with `detail` (an error's text, of any length) cut at a character
/// boundary and its control characters made spaces so that the whole fits
/// [`MAX_REASON_LEN`]; `head` and `tail` (who did it, and how it ends) are kept whole.
pub fn fit_reason(head: &str, detail: &str, tail: &str) -> String {
    let room = MAX_REASON_LEN.saturating_sub(head.len() + tail.len());
    let mut end = detail.len().min(room);
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    let detail: String = detail[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("{head}{detail}{tail}")
}

pub fn check_reason(reason: &str) -> Result<()> {
    if reason.len() > MAX_REASON_LEN {
        return Err(Error::invalid(
            "reason",
            reason,
            format!("longer than {MAX_REASON_LEN} bytes"),
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err(Error::invalid(
            "reason",
            reason,
            "contains control characters",
        ));
    }
    Ok(())
}

/// The first server whose address repeats an earlier one's, if any (linear time).
pub fn first_duplicate(servers: &[Server]) -> Option<&Server> {
    let mut seen = HashSet::with_capacity(servers.len());
    servers.iter().find(|s| !seen.insert(s.address.identity()))
}

/// What clients do when a key's server is down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Failover {
    /// The ring keeps every configured server; a key whose server is down is a miss on read and
    /// an error on write. No other server ever holds it, so none can serve it stale later.
    #[default]
    None,
    /// The ring is built over up servers only (libmemcached's REMOVE_FAILED_SERVERS): a down
    /// server's keys move to the others while it is down.
    Rehash,
}

impl Failover {
    pub fn as_str(self) -> &'static str {
        match self {
            Failover::None => "none",
            Failover::Rehash => "rehash",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Failover::None => 0,
            Failover::Rehash => 1,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Failover> {
        match code {
            0 => Some(Failover::None),
            1 => Some(Failover::Rehash),
            _ => None,
        }
    }
}

impl std::str::FromStr for Failover {
    type Err = Error;
    fn from_str(s: &str) -> Result<Failover> {
        match s {
            "none" => Ok(Failover::None),
            "rehash" => Ok(Failover::Rehash),
            _ => Err(Error::invalid(
                "failover policy",
                s,
                "expected 'none' or 'rehash'",
            )),
        }
    }
}

/// How a server that was down comes back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rejoin {
    /// flush_all first (successfully) and only then mark it up: it can hold nothing stale.
    #[default]
    Flush,
    /// Flush, then for the warm window fill its misses from the server that owned each key
    /// while it was away (with `add`, never over a newer write).
    Warm,
    /// Mark it up as it is. Unsafe for data that changes while a server is away.
    Trust,
    /// Delete the keys it missed while away (the host's invalidation log: every write that
    /// should have reached it and did not), then mark it up; flush instead when the log
    /// cannot say (it overflowed, or it began after the server went down).
    Replay,
}

impl Rejoin {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejoin::Flush => "flush",
            Rejoin::Warm => "warm",
            Rejoin::Trust => "trust",
            Rejoin::Replay => "replay",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Rejoin::Flush => 0,
            Rejoin::Warm => 1,
            Rejoin::Trust => 2,
            Rejoin::Replay => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Rejoin> {
        match code {
            0 => Some(Rejoin::Flush),
            1 => Some(Rejoin::Warm),
            2 => Some(Rejoin::Trust),
            3 => Some(Rejoin::Replay),
            _ => None,
        }
    }
}

impl std::str::FromStr for Rejoin {
    type Err = Error;
    fn from_str(s: &str) -> Result<Rejoin> {
        match s {
            "flush" => Ok(Rejoin::Flush),
            "warm" => Ok(Rejoin::Warm),
            "trust" => Ok(Rejoin::Trust),
            "replay" => Ok(Rejoin::Replay),
            _ => Err(Error::invalid(
                "rejoin policy",
                s,
                "expected 'flush', 'warm', 'trust' or 'replay'",
            )),
        }
    }
}

/// Whether a domain's fleet commits fence the servers they move keys off, and its hosts read
/// the fences (see [`crate::fence`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fence {
    /// What a table that does not say has: files and fleet documents from before fencing, and
    /// host-local tables. Off: an existing fleet domain is turned on by an operator's commit
    /// (`policy --fence on`), which writes every server's fence before any host reads one; a
    /// domain created through the fleet is created `On`.
    #[default]
    Auto,
    On,
    /// Off: no fence raised or read (a host that lags the fleet may read superseded copies
    /// until it mirrors the change).
    Off,
}

impl Fence {
    pub fn as_str(self) -> &'static str {
        match self {
            Fence::Auto => "auto",
            Fence::On => "on",
            Fence::Off => "off",
        }
    }

    /// Whether fences are raised and read: `auto` resolved.
    pub fn is_on(self) -> bool {
        self == Fence::On
    }

    /// The file's policy-flag bits (0 for `auto`, so that every older file reads as it).
    pub(crate) fn code(self) -> u16 {
        match self {
            Fence::Auto => 0,
            Fence::On => 1,
            Fence::Off => 2,
        }
    }

    /// From the file's bits; `None` for a value no mcshm writes.
    pub(crate) fn from_code(code: u16) -> Option<Fence> {
        match code {
            0 => Some(Fence::Auto),
            1 => Some(Fence::On),
            2 => Some(Fence::Off),
            _ => None,
        }
    }
}

impl std::str::FromStr for Fence {
    type Err = Error;
    fn from_str(s: &str) -> Result<Fence> {
        match s {
            "auto" => Ok(Fence::Auto),
            "on" => Ok(Fence::On),
            "off" => Ok(Fence::Off),
            _ => Err(Error::invalid("fence", s, "expected 'auto', 'on' or 'off'")),
        }
    }
}

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Seconds of warm-up after a rejoin, when the domain does not say.
pub const DEFAULT_WARM_WINDOW_S: u32 = 600;

/// Consecutive failures that mark a server down, when the domain does not say.
pub const DEFAULT_FAILURE_LIMIT: u8 = 2;

/// A domain's client policy (versioned with its server list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub failover: Failover,
    /// Consecutive connect/timeout/I-O failures after which a server is marked down (1..=255).
    pub failure_limit: u8,
    pub rejoin: Rejoin,
    /// Servers each write goes to (1..=255), along the ring.
    pub replicas: u8,
    /// Seconds of warm-up after a rejoin (`warm` policy).
    pub warm_window_s: u32,
    /// How keys map to servers.
    pub distribution: Distribution,
    /// Prepended to every key sent, never hashed (none by default).
    pub prefix: crate::prefix::KeyPrefix,
    /// Fencing of fleet commits (see [`crate::fence`]).
    pub fence: Fence,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            failover: Failover::None,
            failure_limit: DEFAULT_FAILURE_LIMIT,
            rejoin: Rejoin::Flush,
            replicas: 1,
            warm_window_s: DEFAULT_WARM_WINDOW_S,
            distribution: Distribution::Ketama,
            prefix: crate::prefix::KeyPrefix::NONE,
            fence: Fence::Auto,
        }
    }
}

/// The servers (positions) a domain's ring is built over: all but draining ones under failover
/// `none`, the up ones under `rehash`.
pub fn routed(servers: &[Server], failover: Failover) -> Vec<usize> {
    (0..servers.len())
        .filter(|&i| routes(&servers[i], failover))
        .collect()
}

/// Whether `server` is on the domain's ring (see [`routed`]).
pub fn routes(server: &Server, failover: Failover) -> bool {
    match failover {
        Failover::None => server.state != State::Draining,
        Failover::Rehash => server.state == State::Up,
    }
}

/// The servers at `positions` as a placement takes them (see [`crate::placement`]).
pub fn members<'a>(servers: &'a [Server], positions: &[usize]) -> Vec<Member<'a>> {
    positions
        .iter()
        .map(|&position| Member {
            position,
            address: &servers[position].address,
            weight: servers[position].weight,
        })
        .collect()
}

/// Who committed a version (or changed a server), and when: ms since the Unix epoch, the
/// process and its user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    pub changed_ms: u64,
    pub pid: u32,
    pub uid: u32,
}

impl CommitInfo {
    /// This process as a writer: now, its pid, its effective uid.
    pub fn now() -> CommitInfo {
        CommitInfo::at(crate::clock::now_ms())
    }

    /// This process as a writer at `changed_ms` (ms since the Unix epoch): for callers that
    /// are given the time rather than reading the clock (the router).
    pub fn at(changed_ms: u64) -> CommitInfo {
        CommitInfo {
            changed_ms,
            pid: std::process::id(),
            uid: crate::shm::effective_uid(),
        }
    }
}

/// What a transaction edits: the server list and the policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub servers: Vec<Server>,
    pub policy: Policy,
    /// The etcd revision of the fleet table this one mirrors (`mcadmin sync` sets it); 0 for a
    /// host-local table. Local edits keep it, so the agent can tell them from the fleet's.
    pub fleet_revision: u64,
    /// The bucket map of a `vbucket` domain (positions in `servers`); `None` otherwise.
    pub buckets: Option<Arc<BucketMap>>,
}

impl Table {
    /// Removes the servers `gone` says, and renumbers the bucket map's positions; refused
    /// (nothing removed) when the map names one of them: its buckets must move first.
    pub fn remove_servers(&mut self, mut gone: impl FnMut(&Server) -> bool) -> Result<()> {
        let leaving: Vec<bool> = self.servers.iter().map(&mut gone).collect();
        if !leaving.contains(&true) {
            return Ok(());
        }
        if let Some(map) = &self.buckets {
            let renumbered = map.without_positions(&leaving).map_err(|(i, bucket)| {
                Error::BadBuckets {
                    why: format!(
                        "server {} owns or replicates bucket {bucket}: move its buckets to other servers first (`mcadmin buckets move`)",
                        self.servers[i].address
                    ),
                }
            })?;
            self.buckets = Some(Arc::new(renumbered));
        }
        let mut leaves = leaving.into_iter();
        self.servers.retain(|_| !leaves.next().unwrap_or(false));
        Ok(())
    }
}

/// A validated copy of one published version of a domain's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub domain: String,
    /// The table version; it grows by one per committed transaction.
    pub version: u64,
    /// When the version was committed (ms since the Unix epoch), and by which process and user.
    pub changed_ms: u64,
    pub writer_pid: u32,
    pub writer_uid: u32,
    /// The servers in the order they were added (the order clients hash in).
    pub servers: Vec<Server>,
    pub policy: Policy,
    /// The id the next added server gets.
    pub next_id: u32,
    /// The etcd revision of the fleet table this version mirrors (0: a host-local table).
    pub fleet_revision: u64,
    /// The bucket map of a `vbucket` domain (positions in `servers`), shared by the versions
    /// that did not change it.
    pub buckets: Option<Arc<BucketMap>>,
}

impl Snapshot {
    /// The editable part: servers and policy.
    pub fn table(&self) -> Table {
        Table {
            servers: self.servers.clone(),
            policy: self.policy,
            fleet_revision: self.fleet_revision,
            buckets: self.buckets.clone(),
        }
    }

    /// The server with this address, if any.
    pub fn find(&self, address: &Address) -> Option<&Server> {
        self.servers.iter().find(|s| s.address.same_server(address))
    }

    /// The server with this address, or the error that names it and the domain.
    pub fn server(&self, address: &Address) -> Result<&Server> {
        Ok(&self.servers[self.position(address)?])
    }

    /// The position of the server with this address, or the error that names it.
    pub fn position(&self, address: &Address) -> Result<usize> {
        self.servers
            .iter()
            .position(|s| s.address.same_server(address))
            .ok_or_else(|| Error::NoServer {
                server: address.to_string(),
                domain: self.domain.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down_since(since_ms: u64, retry_interval: i32) -> Server {
        Server {
            state: State::Down,
            since_ms,
            retry_interval,
            ..Server::new(Address::parse("10.0.0.1:11211").unwrap())
        }
    }

    #[test]
    fn a_probe_is_due_an_interval_after_the_down_and_after_the_last_probe() {
        let s = down_since(10_000, 2);
        assert_eq!(s.probe_due(11_999, 0), None, "not yet 2 s down");
        assert_eq!(s.probe_due(12_000, 0), Some(2000));
        assert_eq!(s.probe_due(13_000, 12_000), None, "probed 1 s ago");
        assert_eq!(s.probe_due(14_000, 12_000), Some(2000));
    }

    #[test]
    fn no_probe_for_a_server_up_held_or_never_retried() {
        assert_eq!(down_since(0, -1).probe_due(u64::MAX, 0), None, "-1: never");
        assert_eq!(down_since(0, -1).retry_interval_ms(), None);
        let held = Server {
            held: true,
            ..down_since(0, 1)
        };
        assert_eq!(held.probe_due(u64::MAX, 0), None, "an operator's down");
        let up = Server {
            state: State::Up,
            ..down_since(0, 1)
        };
        assert_eq!(up.retry_interval_ms(), None);
        assert_eq!(down_since(0, 0).probe_due(0, 0), Some(0), "0: at once");
    }

    #[test]
    fn a_fitted_reason_keeps_its_ends_and_cuts_the_detail_on_a_character() {
        let tail = " (pid 42 on host-a)";
        let long = "é".repeat(300);
        let reason = fit_reason("3 consecutive failures, last: ", &long, tail);
        assert!(reason.len() <= MAX_REASON_LEN, "{}", reason.len());
        assert!(reason.starts_with("3 consecutive failures, last: é"));
        assert!(reason.ends_with(tail));
        assert!(check_reason(&reason).is_ok());
        let short = fit_reason("a ", "line\nbreak", " b");
        assert_eq!(short, "a line break b");
    }
}
