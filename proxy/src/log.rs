//! mcproxy's log: one line per message on stderr, with the time, so that a log read outside
//! the journal still says when.
//!
//! Messages a client can cause (a malformed request, a refused value, a failed login) are
//! limited, so that one client cannot flood the log (20 000 bad frames once wrote 19 102 lines
//! in 0.09 s, past journald's rate limit, which then dropped the proxy's real messages):
//! - per connection, each [`Kind`] is logged once ([`Said`]); what the connection does again
//!   is counted, not logged;
//! - per kind, at most [`PER_WINDOW`] lines per [`WINDOW`] across all connections;
//! - what was counted is summed up once the window is over ("N more like it suppressed"), by
//!   the next message of the kind or by [`summarize`], which the proxy runs once a second.
//!
//! So the first occurrence of each kind always reaches the log, and the log holds a few lines
//! per kind per second, whatever the clients do.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines per kind per window.
pub const PER_WINDOW: u32 = 5;
/// The window of the per-kind limit.
pub const WINDOW: Duration = Duration::from_secs(1);

/// What a client caused, as the log limits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ValueTooLarge,
    MalformedBinary,
    UnknownOpcode,
    InvalidArguments,
    FailedLogin,
    ConnectionRefused,
    ConnectionEvicted,
}

const KINDS: usize = 7;

impl Kind {
    fn index(self) -> usize {
        self as usize
    }

    /// The kind as its summary names it.
    fn name(self) -> &'static str {
        match self {
            Kind::ValueTooLarge => "values refused as too large",
            Kind::MalformedBinary => "malformed binary requests",
            Kind::UnknownOpcode => "unsupported binary opcodes",
            Kind::InvalidArguments => "binary requests with invalid arguments",
            Kind::FailedLogin => "failed client authentications",
            Kind::ConnectionRefused => "connections refused (all busy)",
            Kind::ConnectionEvicted => "idle connections closed to admit new ones",
        }
    }
}

/// Prints one line: the time (RFC 3339, UTC, to the millisecond), `mcproxy: ` and the message.
pub fn log(message: std::fmt::Arguments<'_>) {
    let now = libmcshm::clock::utc_millis(libmcshm::clock::now_ms());
    eprintln!("{now} mcproxy: {message}");
}

/// The kinds one connection has logged already.
#[derive(Clone, Copy, Debug, Default)]
pub struct Said(u8);

impl Said {
    /// Logs `message` of `kind` for this connection: its first of the kind, within the kind's
    /// limit; anything else is counted for the kind's summary.
    pub fn log(&mut self, kind: Kind, message: std::fmt::Arguments<'_>) {
        let first = self.first(kind);
        let now = Instant::now();
        let line = LIMITS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(kind, first, now);
        if let Some(summary) = line.summary {
            log(format_args!("{summary}"));
        }
        if line.message {
            log(message);
        }
    }
}

impl Said {
    /// Whether this is the connection's first message of `kind` (then it is no longer).
    fn first(&mut self, kind: Kind) -> bool {
        let bit = 1 << kind.index();
        let first = self.0 & bit == 0;
        self.0 |= bit;
        first
    }
}

/// The fence last logged per (domain, server): a fenced answer is logged once per fence.
static FENCES_LOGGED: Mutex<Vec<(String, String, u64)>> = Mutex::new(Vec::new());

/// Logs that server `server` of `domain` answered behind fence `fence` (`u64::MAX`: no fence)
/// while this host routed on fleet revision `routed`: once per (domain, server, fence), across
/// the workers.
pub fn fenced(domain: &str, server: &str, fence: u64, routed: u64) {
    let mut logged = FENCES_LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    if !first_fence(&mut logged, domain, server, fence) {
        return;
    }
    drop(logged);
    let what = match fence {
        u64::MAX => "has no fence (restarted or flushed since a fleet commit wrote one)".into(),
        fence => format!("is fenced at fleet revision {fence}"),
    };
    log(format_args!(
        "domain '{domain}': server {server} {what} and this host's table is at fleet revision \
         {routed}: its answers are not used until the table catches up (is `mcadmin sync` \
         running and connected to etcd?)"
    ));
}

/// Whether `fence` is news for (`domain`, `server`) in `logged` (then it is no longer).
fn first_fence(
    logged: &mut Vec<(String, String, u64)>,
    domain: &str,
    server: &str,
    fence: u64,
) -> bool {
    match logged
        .iter_mut()
        .find(|(d, s, _)| d == domain && s == server)
    {
        Some((_, _, last)) if *last == fence => false,
        Some((_, _, last)) => {
            *last = fence;
            true
        }
        None => {
            logged.push((domain.to_string(), server.to_string(), fence));
            true
        }
    }
}

/// Logs the summaries of the windows that are over (the proxy calls it once a second).
pub fn summarize() {
    let summaries = LIMITS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .close_windows(Instant::now());
    for summary in summaries {
        log(format_args!("{summary}"));
    }
}

static LIMITS: Mutex<Limits> = Mutex::new(Limits::new());

/// The per-kind windows. Pure (the time is given), so it is tested without a clock.
struct Limits {
    windows: [Window; KINDS],
}

#[derive(Clone, Copy)]
struct Window {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// What to print for one message.
#[derive(Debug, PartialEq, Eq)]
struct Line {
    /// The summary of the kind's window that just ended.
    summary: Option<String>,
    message: bool,
}

impl Limits {
    const fn new() -> Limits {
        const EMPTY: Window = Window {
            started: None,
            logged: 0,
            suppressed: 0,
        };
        Limits {
            windows: [EMPTY; KINDS],
        }
    }

    /// A message of `kind` at `now`, `first` for its connection.
    fn admit(&mut self, kind: Kind, first: bool, now: Instant) -> Line {
        let summary = self.close_window(kind, now);
        let window = &mut self.windows[kind.index()];
        let started = *window.started.get_or_insert(now);
        let message = first && window.logged < PER_WINDOW;
        match message {
            true => window.logged += 1,
            false => window.suppressed += 1,
        }
        window.started = Some(started);
        Line { summary, message }
    }

    /// Ends `kind`'s window if it is over at `now`: its summary, if it suppressed anything.
    fn close_window(&mut self, kind: Kind, now: Instant) -> Option<String> {
        let window = &mut self.windows[kind.index()];
        let started = window.started?;
        let over = now.saturating_duration_since(started) >= WINDOW;
        if !over {
            return None;
        }
        let suppressed = window.suppressed;
        *window = Window {
            started: None,
            logged: 0,
            suppressed: 0,
        };
        let secs = now.saturating_duration_since(started).as_secs_f64();
        (suppressed > 0).then(|| {
            format!(
                "{suppressed} more {} in {secs:.1} s not logged (one line per kind per \
                 connection, {PER_WINDOW} per second)",
                kind.name()
            )
        })
    }

    fn close_windows(&mut self, now: Instant) -> Vec<String> {
        [
            Kind::ValueTooLarge,
            Kind::MalformedBinary,
            Kind::UnknownOpcode,
            Kind::InvalidArguments,
            Kind::FailedLogin,
            Kind::ConnectionRefused,
            Kind::ConnectionEvicted,
        ]
        .into_iter()
        .filter_map(|kind| self.close_window(kind, now))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_logs_the_first_of_each_connection_up_to_its_limit_then_sums_up() {
        let mut limits = Limits::new();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let logged = |line: Line| line.message;
        // One connection, 1 000 times: its first only.
        assert!(logged(limits.admit(Kind::UnknownOpcode, true, at(0))));
        for n in 1..1000 {
            assert!(!logged(limits.admit(
                Kind::UnknownOpcode,
                false,
                at(n / 10)
            )));
        }
        // Another kind has its own window.
        assert!(logged(limits.admit(Kind::InvalidArguments, true, at(100))));
        // Ten new connections: the limit of the window.
        let firsts: usize = (0..10)
            .filter(|n| logged(limits.admit(Kind::UnknownOpcode, true, at(200 + n))))
            .count();
        assert_eq!(firsts as u32, PER_WINDOW - 1);
        // The window ends: the next message brings its summary, and is logged.
        let next = limits.admit(Kind::UnknownOpcode, true, at(1000));
        assert!(next.message);
        let summary = next.summary.expect("a summary");
        assert!(
            summary.starts_with("1005 more unsupported binary opcodes in 1.0 s"),
            "{summary}"
        );
        // A window that suppressed nothing has no summary; one that did is summed up by the
        // periodic call.
        assert_eq!(limits.close_windows(at(2100)), Vec::<String>::new());
        limits.admit(Kind::ValueTooLarge, true, at(3000));
        limits.admit(Kind::ValueTooLarge, false, at(3001));
        assert_eq!(
            limits.close_windows(at(3500)),
            Vec::<String>::new(),
            "not over"
        );
        let summaries = limits.close_windows(at(4000));
        assert_eq!(summaries.len(), 1);
        assert!(summaries[0].starts_with("1 more values refused as too large"));
    }

    #[test]
    fn a_fence_is_logged_once_per_domain_and_server() {
        let mut logged = Vec::new();
        assert!(first_fence(&mut logged, "app", "a:1", 7));
        assert!(!first_fence(&mut logged, "app", "a:1", 7));
        assert!(first_fence(&mut logged, "app", "b:1", 7), "another server");
        assert!(first_fence(&mut logged, "web", "a:1", 7), "another domain");
        assert!(first_fence(&mut logged, "app", "a:1", 9), "a new fence");
        assert!(!first_fence(&mut logged, "app", "a:1", 9));
        assert_eq!(logged.len(), 3);
    }

    #[test]
    fn a_connection_says_each_kind_once() {
        let mut said = Said::default();
        assert!(said.first(Kind::FailedLogin));
        assert!(!said.first(Kind::FailedLogin));
        assert!(said.first(Kind::ValueTooLarge), "kinds apart");
        assert_eq!(
            Kind::ConnectionEvicted.index(),
            KINDS - 1,
            "every kind has a bit"
        );
    }
}
