//! The plain-text server list of `mcadmin dump` and `mcadmin load`: one server per line,
//!
//! ```text
//! # comment
//! cache1:11211 weight=1 retry-interval=15 state=up
//! cache2:11211 weight=2 retry-interval=-1 state=down reason="disk failure"
//! cache3:11211 state=down down-by=failures reason="2 consecutive failures, last: …"
//! ```
//!
//! A down server is held down by an operator (no automatic retry) unless the line says
//! `down-by=failures` (a server clients or `watch` marked down, retried automatically).
//!
//! A line `policy: failover=none|rehash failure-limit=N rejoin=flush|warm|trust replicas=N
//! warm-window=S [distribution=ketama|ketama-spy|ketama-unweighted|modula|pecl-memcache hash=H]
//! [prefix=P]` sets the domain policy (defaults: none, 2, flush, 1, 600, ketama, no prefix;
//! modula's and ketama-unweighted's hash defaults to one-at-a-time). Otherwise the address
//! comes first; attributes may be omitted (defaults: weight 1, retry-interval 15,
//! state up, no reason) and come in any order. `reason` is double-quoted with `\"` and `\\`
//! escapes. Blank lines and lines starting with `#` are ignored. `dump` output loads back to the
//! same list (state change times are not part of it: they record when, not what).

use std::collections::HashSet;
use std::fmt::Write;

use crate::address::Address;
use crate::error::{Error, Result};
use crate::placement::Distribution;
use crate::prefix::KeyPrefix;
use crate::table::{
    Policy, Server, Snapshot, Table, check_failure_limit, check_reason, check_replicas,
    check_retry_interval, check_warm_window, check_weight,
};

/// The text form of a snapshot.
pub fn to_text(snapshot: &Snapshot) -> String {
    let mut out = format!(
        "# mcshm server list of domain '{}', version {}\npolicy: {}\n",
        snapshot.domain,
        snapshot.version,
        policy_text(&snapshot.policy)
    );
    for server in &snapshot.servers {
        let _ = write!(
            out,
            "{} weight={} retry-interval={} state={}",
            server.address, server.weight, server.retry_interval, server.state
        );
        if server.state == crate::table::State::Down && !server.held {
            out.push_str(" down-by=failures");
        }
        if !server.reason.is_empty() {
            let quoted = server.reason.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = write!(out, " reason=\"{quoted}\"");
        }
        out.push('\n');
    }
    out
}

/// Parses a server list; errors name the line. Duplicate addresses are refused.
pub fn parse(text: &str) -> Result<Table> {
    let mut policy = Policy::default();
    let mut servers: Vec<Server> = Vec::new();
    let mut line_numbers = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |e: Error| Error::BadLine {
            line: index + 1,
            why: e.to_string(),
        };
        if let Some(rest) = line.strip_prefix("policy:") {
            policy = parse_policy(rest).map_err(bad)?;
            continue;
        }
        let server = parse_line(line).map_err(bad)?;
        servers.push(server);
        line_numbers.push(index + 1);
    }
    let mut seen = HashSet::new();
    if let Some(i) = servers
        .iter()
        .position(|s| !seen.insert(s.address.identity()))
    {
        return Err(Error::BadLine {
            line: line_numbers[i],
            why: format!("server {} listed twice", servers[i].address),
        });
    }
    Ok(Table {
        servers,
        policy,
        fleet_revision: 0,
    })
}

/// The attributes of a `policy:` line (the distribution only when it is not ketama).
pub fn policy_text(p: &Policy) -> String {
    let mut text = format!(
        "failover={} failure-limit={} rejoin={} replicas={} warm-window={}",
        p.failover.as_str(),
        p.failure_limit,
        p.rejoin.as_str(),
        p.replicas,
        p.warm_window_s
    );
    if p.distribution != Distribution::Ketama {
        let _ = write!(
            text,
            " distribution={} hash={}",
            p.distribution.as_str(),
            p.distribution.hash_name()
        );
    }
    if !p.prefix.is_empty() {
        let _ = write!(text, " prefix={}", p.prefix);
    }
    text
}

fn parse_policy(text: &str) -> Result<Policy> {
    let mut policy = Policy::default();
    let (mut distribution, mut hash) = (None, None);
    for pair in text.split_whitespace() {
        match pair.split_once('=') {
            Some(("distribution", v)) => distribution = Some(v),
            Some(("hash", v)) => hash = Some(v),
            Some(("failover", v)) => policy.failover = v.parse()?,
            Some(("failure-limit", v)) => policy.failure_limit = check_failure_limit(v)?,
            Some(("rejoin", v)) => policy.rejoin = v.parse()?,
            Some(("replicas", v)) => policy.replicas = check_replicas(v)?,
            Some(("warm-window", v)) => policy.warm_window_s = check_warm_window(v)?,
            Some(("prefix", v)) => policy.prefix = KeyPrefix::parse(v)?,
            _ => {
                return Err(Error::invalid(
                    "policy attribute",
                    pair,
                    "expected failover=, failure-limit=, rejoin=, replicas=, warm-window=, distribution=, hash= or prefix=",
                ));
            }
        }
    }
    if distribution.is_some() || hash.is_some() {
        policy.distribution = Distribution::parse(distribution.unwrap_or("ketama"), hash)?;
    }
    Ok(policy)
}

fn parse_line(line: &str) -> Result<Server> {
    let (address, mut rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let mut server = Server::new(Address::parse(address)?);
    // A list says what an operator wants: its down servers stay down until `up`, unless the
    // line says they were marked down after failures.
    server.held = true;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            server.held &= server.state == crate::table::State::Down;
            return Ok(server);
        }
        let (key, after) = rest
            .split_once('=')
            .ok_or_else(|| Error::invalid("attribute", rest, "expected KEY=VALUE"))?;
        let (value, after) = if key == "reason" {
            take_quoted(after)?
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        apply(&mut server, key, &value)?;
        rest = after;
    }
}

fn apply(server: &mut Server, key: &str, value: &str) -> Result<()> {
    let number = |what: &'static str| {
        value
            .parse::<i64>()
            .map_err(|_| Error::invalid(what, value, "not a number"))
    };
    match key {
        "weight" => {
            server.weight = check_weight(number("weight")?.clamp(0, u32::MAX as i64) as u32)?
        }
        "retry-interval" => {
            server.retry_interval = check_retry_interval(number("retry interval")?)?
        }
        "state" => server.state = value.parse()?,
        "down-by" => {
            server.held = match value {
                "operator" => true,
                "failures" => false,
                _ => {
                    return Err(Error::invalid(
                        "down-by",
                        value,
                        "expected 'operator' or 'failures'",
                    ));
                }
            }
        }
        "reason" => {
            check_reason(value)?;
            server.reason = value.to_string();
        }
        _ => {
            return Err(Error::invalid(
                "attribute",
                key,
                "unknown (expected weight, retry-interval, state, down-by or reason)",
            ));
        }
    }
    Ok(())
}

/// Takes a `"…"` string with `\"` and `\\` escapes off the front of `text`.
fn take_quoted(text: &str) -> Result<(String, &str)> {
    let body = text
        .strip_prefix('"')
        .ok_or_else(|| Error::invalid("reason", text, "must be double-quoted"))?;
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &body[i + 1..])),
            '\\' => match chars.next() {
                Some((_, e @ ('"' | '\\'))) => value.push(e),
                _ => {
                    return Err(Error::invalid(
                        "reason",
                        text,
                        "bad escape (only \\\" and \\\\)",
                    ));
                }
            },
            c => value.push(c),
        }
    }
    Err(Error::invalid("reason", text, "missing closing '\"'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::State;

    #[test]
    fn round_trips() {
        let mut a = Server::new(Address::parse("cache1:11211").unwrap());
        a.weight = 3;
        let mut b = Server::new(Address::parse("[::1]:5").unwrap());
        b.state = State::Down;
        b.retry_interval = -1;
        b.reason = r#"said "no" \ twice"#.into();
        let snapshot = Snapshot {
            domain: "d".into(),
            version: 4,
            changed_ms: 0,
            writer_pid: 0,
            writer_uid: 0,
            servers: vec![a, b],
            policy: Policy {
                failover: crate::table::Failover::Rehash,
                failure_limit: 7,
                ..Policy::default()
            },
            next_id: 3,
            fleet_revision: 0,
        };
        assert_eq!(parse(&to_text(&snapshot)).unwrap(), snapshot.table());
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("a:1\nb:0\n", "line 2:"),
            ("a:1 weight=0", "weight"),
            ("a:1 color=red", "unknown"),
            ("a:1 reason=\"open", "closing"),
            ("a:1 reason=bare", "double-quoted"),
            ("a:1\n# x\na:1", "line 3: server a:1 listed twice"),
            ("a:1 state=sideways", "state"),
            ("a:1 retry-interval=-2", "retry"),
            ("policy: failover=sometimes", "line 1: invalid failover"),
            ("policy: failure-limit=0", "failure limit"),
            ("policy: color=red", "policy attribute"),
        ];
        for (text, needle) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
