//! The plain-text server list of `mcadmin dump` and `mcadmin load`: one server per line,
//!
//! ```text
//! # comment
//! cache1:11211 weight=1 retry-interval=15 state=up
//! cache2:11211 weight=2 retry-interval=-1 state=down reason="disk failure"
//! cache3:11211 state=down down-by=failures
//! ```
//!
//! A down server is held down by an operator (no automatic retry) unless the line says
//! `down-by=failures` (a server clients or `watch` marked down, retried automatically).
//!
//! `dump` writes only an operator's reasons by default ([`Reasons::Operator`]): the reason of a
//! server held down (`mcadmin down --reason`), which says why the list keeps it down. The
//! reasons written at run time (`rejoined after flush_all (mcadmin up, pid 330)`, a count of
//! failures, a drain, a flush that failed) describe a moment, not the list, and would otherwise
//! land in the durable list and come back at every boot; `mcadmin dump --reasons`
//! ([`Reasons::All`]) writes them too.
//!
//! A line `policy: failover=none|rehash failure-limit=N rejoin=flush|warm|trust replicas=N
//! warm-window=S [distribution=ketama|ketama-spy|ketama-unweighted|modula|pecl-memcache hash=H]
//! [prefix=P] [fence=auto|on|off]` sets the domain policy (defaults: none, 2, flush, 1, 600,
//! ketama, no prefix, auto;
//! modula's and ketama-unweighted's hash defaults to one-at-a-time). Otherwise the address
//! comes first; attributes may be omitted (defaults: weight 1, retry-interval 15,
//! state up, no reason) and come in any order. `reason` is double-quoted with `\"` and `\\`
//! escapes. Blank lines and lines starting with `#` are ignored. `dump` output loads back to the
//! same list (state change times are not part of it: they record when, not what).
//!
//! A `vbucket` domain's bucket map follows its servers: a line `buckets: count=N replicas=R`,
//! then lines `buckets-rows: FIRST ROW ROW …` (at most 256 rows a line, from bucket FIRST on)
//! and, while a move is under way, `buckets-forward: FIRST ROW …` lines of the same shape.
//! A row is the owner and replicas, comma-separated, as indexes of the server lines (from 0)
//! or -1 for none: `0,1`.
//!
//! # The end line
//!
//! `dump` starts the list with a comment naming the domain and its version, and ends it with
//! a line such as
//!
//! ```text
//! # end: 3 servers, crc32 0x1c291ca3
//! ```
//!
//! (`1 server` for one; `load` takes either word for any count): the number of server lines before it and the CRC-32 (IEEE, zlib's
//! `crc32`) of every byte before it, comments, blank lines and newlines included, as 8
//! lowercase hex digits. A list cut short has no end line, or one that does not add up: `load`
//! ([`parse_list`]) refuses it, as it refuses a count or checksum that does not match and
//! anything but blank lines after it, so a list cut at any byte changes no table. A list written
//! or edited by hand is taken with [`Accept::partial`] (`mcadmin load --partial`): no end line
//! is needed, and one that is there is not checked (it is a comment like any other). A list of
//! no servers, which would empty the domain, needs [`Accept::allow_empty`] either way.
//!
//! Without `partial`, the first line starting with `# end:` is read as the end line: a comment
//! of your own must not start so.
//!
//! # Bounds
//!
//! A list holds at most [`MAX_LIST_LEN`] bytes (64 MiB: the most servers a table holds at
//! 1 KiB a line, longer than any line [`dump`](to_text) writes) and lines of at most
//! [`MAX_LINE_LEN`] bytes; [`read`] refuses more without reading on.

use std::collections::HashSet;
use std::fmt::Write;
use std::io::{BufRead, Read};
use std::path::Path;

use crate::address::Address;
use crate::error::{Error, Result};
use crate::placement::Distribution;
use crate::placement::buckets::{self, BucketMap, Shape};
use crate::prefix::KeyPrefix;
use crate::registry::MAX_SERVERS;
use crate::table::{
    Fence, Policy, Server, Snapshot, Table, check_failure_limit, check_reason, check_replicas,
    check_retry_interval, check_warm_window, check_weight,
};

/// Which reasons [`to_text`] writes (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reasons {
    /// Only the reasons of servers held down by an operator (`mcadmin dump`).
    Operator,
    /// Every server's reason, the run time's too (`mcadmin dump --reasons`).
    All,
}

/// The text form of a snapshot, with the reasons `reasons` selects.
pub fn to_text(snapshot: &Snapshot, reasons: Reasons) -> String {
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
        let written = reasons == Reasons::All || server.is_held_down();
        if written && !server.reason.is_empty() {
            let quoted = server.reason.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = write!(out, " reason=\"{quoted}\"");
        }
        out.push('\n');
    }
    if let Some(map) = &snapshot.buckets {
        out += &bucket_lines(map);
    }
    out += &end_line(snapshot.servers.len(), &out);
    out
}

/// Rows per `buckets-rows:` line.
const ROWS_PER_LINE: usize = 256;

/// The lines of a bucket map (see the module's documentation).
fn bucket_lines(map: &BucketMap) -> String {
    let shape = map.shape();
    let mut out = format!(
        "buckets: count={} replicas={}\n",
        shape.buckets, shape.replicas
    );
    let tables = std::iter::once(("buckets-rows", map.cells()))
        .chain(map.forward_cells().map(|f| ("buckets-forward", f)));
    for (name, cells) in tables {
        for (line, chunk) in cells.chunks(ROWS_PER_LINE * map.width()).enumerate() {
            let _ = write!(out, "{name}: {}", line * ROWS_PER_LINE);
            for row in chunk.chunks_exact(map.width()) {
                out.push(' ');
                for (i, &c) in row.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{}", buckets::signed_cell(c));
                }
            }
            out.push('\n');
        }
    }
    out
}

/// A bucket map being read from `buckets:` lines.
#[derive(Default)]
struct MapLines {
    shape: Option<Shape>,
    rows: Vec<u16>,
    forward: Vec<u16>,
}

impl MapLines {
    fn shape_line(&mut self, text: &str) -> Result<()> {
        let (mut count, mut replicas) = (None, 0);
        for word in text.split_whitespace() {
            match word.split_once('=') {
                Some(("count", n)) => count = n.parse::<usize>().ok(),
                Some(("replicas", n)) => {
                    replicas = n.parse::<usize>().map_err(|_| {
                        Error::invalid("replicas", n, "expected a count from 0 to 4")
                    })?
                }
                _ => {
                    return Err(Error::invalid(
                        "buckets line",
                        word,
                        "expected count=N replicas=R",
                    ));
                }
            }
        }
        let count = count.ok_or_else(|| Error::invalid("buckets line", text, "no count=N"))?;
        self.shape = Some(
            Shape::new(count, replicas)
                .map_err(|why| Error::invalid("buckets line", text.trim(), why))?,
        );
        Ok(())
    }

    fn rows_line(&mut self, text: &str, forward: bool) -> Result<()> {
        let shape = self.shape.ok_or_else(|| {
            Error::invalid("bucket rows", text.trim(), "before the buckets: line")
        })?;
        let mut words = text.split_whitespace();
        let first: usize = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| Error::invalid("bucket rows", text.trim(), "no first bucket"))?;
        let cells = if forward {
            &mut self.forward
        } else {
            &mut self.rows
        };
        if first.checked_mul(shape.width()) != Some(cells.len()) {
            return Err(Error::invalid(
                "bucket rows",
                &first.to_string(),
                format!("expected rows from bucket {}", cells.len() / shape.width()),
            ));
        }
        for row in words {
            let before = cells.len();
            for c in row.split(',') {
                // The range against the list is checked with the whole map (`finish`).
                let n = match c {
                    "-1" => Some(-1),
                    c => c.parse::<u16>().ok().map(i64::from),
                };
                let cell =
                    n.and_then(|n| buckets::from_signed_cell(n, buckets::UNASSIGNED as usize));
                cells.push(cell.ok_or_else(|| {
                    Error::invalid("bucket row", row, "expected server indexes or -1")
                })?);
            }
            if cells.len() - before != shape.width() {
                return Err(Error::invalid(
                    "bucket row",
                    row,
                    format!("expected {} cells (owner and replicas)", shape.width()),
                ));
            }
        }
        Ok(())
    }

    fn finish(self, servers: usize) -> Result<Option<BucketMap>> {
        let Some(shape) = self.shape else {
            return Ok(None);
        };
        let forward = (!self.forward.is_empty()).then_some(self.forward);
        BucketMap::new(shape, self.rows, forward, servers)
            .map(Some)
            .map_err(|why| Error::BadList {
                why: format!("bucket map: {why}"),
            })
    }
}

/// Most bytes of a list [`read`] takes: [`MAX_SERVERS`] lines of 1 KiB (a line of `dump` is
/// at most about 740 bytes: a 255-byte host name and a reason of 192 escaped quotes).
pub const MAX_LIST_LEN: usize = MAX_SERVERS as usize * 1024;

/// Most bytes of one line (its `\n` or `\r\n` not counted), comments included.
pub const MAX_LINE_LEN: usize = 4096;

/// How [`parse_list`] takes a list (`mcadmin load --partial`, `--allow-empty`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accept {
    /// A list written or edited by hand: no end line is needed, and one that is there is not
    /// checked.
    pub partial: bool,
    /// A list of no servers, which empties the domain.
    pub allow_empty: bool,
}

/// What to do about a list refused for its end line.
const BY_HAND: &str = "a list written or edited by hand: pass --partial";

/// The end line of a list of `servers` servers whose text before it is `before`.
pub fn end_line(servers: usize, before: &str) -> String {
    let plural = if servers == 1 { "" } else { "s" };
    format!(
        "# end: {servers} server{plural}, crc32 0x{:08x}\n",
        crc32fast::hash(before.as_bytes())
    )
}

/// Reads a list from `input` (named `source` in an I/O error), refusing one over
/// [`MAX_LIST_LEN`] bytes, a line over [`MAX_LINE_LEN`] bytes or a line that is not UTF-8 as
/// soon as it sees it: whatever the input, at most the bounds are held in memory.
pub fn read(mut input: impl BufRead, source: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    let mut line = 0;
    loop {
        let start = bytes.len();
        let n = (&mut input)
            .take(MAX_LINE_LEN as u64 + 2)
            .read_until(b'\n', &mut bytes)
            .map_err(|e| Error::io("read", source, e))?;
        if n == 0 {
            break;
        }
        line += 1;
        let text = &bytes[start..];
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.len() > MAX_LINE_LEN {
            return Err(Error::BadLine {
                line,
                why: format!(
                    "longer than {MAX_LINE_LEN} bytes: not a server list (a server line of \
                     `mcadmin dump` is under 1 KiB)"
                ),
            });
        }
        if std::str::from_utf8(text).is_err() {
            return Err(Error::BadLine {
                line,
                why: "not UTF-8 text: not a server list".into(),
            });
        }
        if bytes.len() > MAX_LIST_LEN {
            return Err(Error::BadList {
                why: format!(
                    "larger than {} MiB ({MAX_SERVERS} servers, the most a table holds, at \
                     1 KiB a line): not a server list",
                    MAX_LIST_LEN >> 20
                ),
            });
        }
    }
    // Every line was checked, and a line ends at a newline, never inside a character.
    Ok(String::from_utf8(bytes).expect("checked line by line"))
}

/// Parses a list as `load` takes it: whole, its end line checked (unless `accept.partial`), and
/// with servers (unless `accept.allow_empty`). Errors are one line that names the problem and
/// the flag that takes such a list on purpose.
pub fn parse_list(text: &str, accept: Accept) -> Result<Table> {
    if !accept.partial {
        check_end(text, accept)?;
    }
    let table = parse(text)?;
    if table.servers.is_empty() && !accept.allow_empty {
        return Err(Error::BadList {
            why: "the list has no servers: loading it would remove every server of the \
                  domain; to empty the domain pass --allow-empty"
                .into(),
        });
    }
    Ok(table)
}

/// Checks the end line of `text` (see the module doc).
fn check_end(text: &str, accept: Accept) -> Result<()> {
    let mut servers = 0;
    let mut offset = 0;
    for (index, raw) in text.split_inclusive('\n').enumerate() {
        let line = raw.trim();
        if line.starts_with("# end:") {
            let refused = |why: String| Error::BadLine {
                line: index + 1,
                why,
            };
            let (count, crc) = parse_end(line).ok_or_else(|| {
                refused(format!(
                    "malformed end line '{}' (dump writes `# end: N servers, crc32 \
                     0xXXXXXXXX`): the list was cut short or edited; {BY_HAND}",
                    line.escape_debug()
                ))
            })?;
            if count != servers {
                return Err(refused(format!(
                    "the end line counts {count} but {servers} server lines come before it: \
                     the list was cut short or edited; {BY_HAND}"
                )));
            }
            let actual = crc32fast::hash(&text.as_bytes()[..offset]);
            if crc != actual {
                return Err(refused(format!(
                    "the end line's checksum 0x{crc:08x} does not match the lines before it \
                     (0x{actual:08x}): the list was damaged or edited; {BY_HAND}"
                )));
            }
            let after = &text[offset + raw.len()..];
            if let Some(extra) = after.lines().position(|l| !l.trim().is_empty()) {
                return Err(Error::BadLine {
                    line: index + 2 + extra,
                    why: format!(
                        "text after the end line (line {}): the list was edited or two lists \
                         were joined; {BY_HAND}",
                        index + 1
                    ),
                });
            }
            return Ok(());
        }
        if is_server_line(line) {
            servers += 1;
        }
        offset += raw.len();
    }
    Err(Error::BadList {
        why: match servers == 0 && !accept.allow_empty {
            true => "the list is empty: no servers and no end line (it was cut short, or is \
                     not a list); loading it would remove every server of the domain; to empty \
                     the domain pass --allow-empty --partial"
                .into(),
            false => format!(
                "no end line (dump ends a list with `# end: N servers, crc32 0xXXXXXXXX`): \
                 the list was cut short or edited; {BY_HAND}"
            ),
        },
    })
}

/// The server count and checksum of an end line, if it is well formed.
fn parse_end(line: &str) -> Option<(usize, u32)> {
    let (count, rest) = line.strip_prefix("# end: ")?.split_once(' ')?;
    let hex = rest
        .strip_prefix("servers, crc32 0x")
        .or_else(|| rest.strip_prefix("server, crc32 0x"))?;
    let digits = |text: &str, hex: bool| {
        !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || hex && matches!(b, b'a'..=b'f'))
    };
    match digits(count, false) && hex.len() == 8 && digits(hex, true) {
        true => Some((count.parse().ok()?, u32::from_str_radix(hex, 16).ok()?)),
        false => None,
    }
}

/// A line that names a server (not blank, no comment, no policy).
fn is_server_line(line: &str) -> bool {
    !line.is_empty()
        && !line.starts_with('#')
        && !line.starts_with("policy:")
        && !BUCKET_LINES.iter().any(|p| line.starts_with(p))
}

/// How the lines of a bucket map start.
const BUCKET_LINES: [&str; 3] = ["buckets: ", "buckets-rows: ", "buckets-forward: "];

/// Parses a server list; errors name the line. Duplicate addresses are refused. The end line
/// is not checked (a comment): [`parse_list`] checks it.
pub fn parse(text: &str) -> Result<Table> {
    let mut policy = Policy::default();
    let mut map = MapLines::default();
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
        if let Some(rest) = line.strip_prefix(BUCKET_LINES[0]) {
            map.shape_line(rest).map_err(bad)?;
            continue;
        }
        if let Some(rest) = line.strip_prefix(BUCKET_LINES[1]) {
            map.rows_line(rest, false).map_err(bad)?;
            continue;
        }
        if let Some(rest) = line.strip_prefix(BUCKET_LINES[2]) {
            map.rows_line(rest, true).map_err(bad)?;
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
    let buckets = map.finish(servers.len())?.map(std::sync::Arc::new);
    Ok(Table {
        servers,
        policy,
        fleet_revision: 0,
        buckets,
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
    if p.fence != Fence::Auto {
        let _ = write!(text, " fence={}", p.fence);
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
            Some(("fence", v)) => policy.fence = v.parse()?,
            _ => {
                return Err(Error::invalid(
                    "policy attribute",
                    pair,
                    "expected failover=, failure-limit=, rejoin=, replicas=, warm-window=, distribution=, hash=, prefix= or fence=",
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

    fn to_text_all(snapshot: &Snapshot) -> String {
        to_text(snapshot, Reasons::All)
    }

    #[test]
    fn only_an_operators_reasons_are_dumped_by_default() {
        let mut held = Server::new(Address::parse("a:1").unwrap());
        held.state = State::Down;
        held.held = true;
        held.reason = "disk failure".into();
        let mut failed = Server::new(Address::parse("b:2").unwrap());
        failed.state = State::Down;
        failed.reason = "2 consecutive failures, last: refused".into();
        let mut rejoined = Server::new(Address::parse("c:3").unwrap());
        rejoined.reason = "rejoined after flush_all (mcadmin up, pid 330)".into();
        let mut snapshot = snapshot_of(&[]);
        snapshot.servers = vec![held, failed, rejoined];
        let text = to_text(&snapshot, Reasons::Operator);
        assert!(
            text.contains("a:1 weight=1 retry-interval=15 state=down reason=\"disk failure\"\n"),
            "{text}"
        );
        assert!(
            text.contains("b:2 weight=1 retry-interval=15 state=down down-by=failures\n"),
            "{text}"
        );
        assert!(
            text.contains("c:3 weight=1 retry-interval=15 state=up\n"),
            "{text}"
        );
        let all = to_text(&snapshot, Reasons::All);
        assert!(
            all.contains("(mcadmin up, pid 330)") && all.contains("last: refused"),
            "{all}"
        );
        // Either loads back whole.
        let loaded = parse_list(&text, Accept::default()).unwrap();
        assert_eq!(loaded.servers[0].reason, "disk failure");
        assert_eq!(loaded.servers[1].reason, "");
        assert_eq!(
            parse_list(&all, Accept::default()).unwrap(),
            snapshot.table()
        );
    }

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
            buckets: None,
        };
        assert_eq!(parse(&to_text_all(&snapshot)).unwrap(), snapshot.table());
        let whole = parse_list(&to_text_all(&snapshot), Accept::default()).unwrap();
        assert_eq!(whole, snapshot.table());
    }

    fn snapshot_of(addresses: &[&str]) -> Snapshot {
        Snapshot {
            domain: "d".into(),
            version: 9,
            changed_ms: 0,
            writer_pid: 0,
            writer_uid: 0,
            servers: addresses
                .iter()
                .map(|a| Server::new(Address::parse(a).unwrap()))
                .collect(),
            policy: Policy::default(),
            next_id: 0,
            fleet_revision: 0,
            buckets: None,
        }
    }

    fn refused(text: &str, accept: Accept) -> String {
        match parse_list(text, accept) {
            Ok(table) => panic!("{text:?} was taken: {table:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn the_end_line_counts_the_servers_and_sums_the_bytes_before_it() {
        for (addresses, count) in [
            (
                &["127.0.0.1:25001", "127.0.0.1:25002", "127.0.0.1:25003"][..],
                "3 servers",
            ),
            (&["a:1"], "1 server"),
            (&[], "0 servers"),
        ] {
            let text = to_text_all(&snapshot_of(addresses));
            let body = text.trim_end_matches('\n');
            let (before, last) = body.rsplit_once('\n').unwrap();
            let before = &text[..before.len() + 1];
            assert_eq!(
                last,
                format!(
                    "# end: {count}, crc32 0x{:08x}",
                    crc32fast::hash(before.as_bytes())
                )
            );
            assert!(text.starts_with("# mcshm server list of domain 'd', version 9\n"));
        }
        // A fixed value (Python's zlib.crc32 of the same bytes), so the form cannot drift unseen.
        assert_eq!(
            end_line(1, "policy: failover=none\na:1\n"),
            "# end: 1 server, crc32 0x5781f244\n"
        );
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf43926, "CRC-32/IEEE");
    }

    /// A dump cut at any byte (but its last newline) is refused, whatever it kept.
    #[test]
    fn a_list_cut_anywhere_is_refused() {
        let text = to_text_all(&snapshot_of(&[
            "127.0.0.1:25001",
            "127.0.0.1:25002",
            "127.0.0.1:25003",
        ]));
        for cut in 0..text.len() - 1 {
            let err = refused(&text[..cut], Accept::default());
            assert!(
                err.contains("--partial") || err.contains("--allow-empty"),
                "{cut}: {err}"
            );
            // Even a list allowed to be empty must be whole.
            let allow_empty = Accept {
                allow_empty: true,
                ..Accept::default()
            };
            assert!(parse_list(&text[..cut], allow_empty).is_err(), "{cut}");
        }
        // Only the last newline can go.
        parse_list(&text[..text.len() - 1], Accept::default()).unwrap();
        assert!(refused("", Accept::default()).contains("the list is empty"));
        assert!(refused("a:1\n", Accept::default()).contains("no end line"));
    }

    #[test]
    fn an_end_line_that_does_not_add_up_is_refused() {
        let text = to_text_all(&snapshot_of(&["a:1", "b:2"]));
        let (before, end) = text.split_at(text.rfind("# end:").unwrap());
        let crc = end.trim().rsplit_once("0x").unwrap().1;
        let cases = [
            (
                format!("{before}# end: 3 servers, crc32 0x{crc}\n"),
                "line 5: the end line counts 3 but 2 server lines come before it",
            ),
            (
                format!("{}{end}", before.replace("b:2", "b:3")),
                "does not match the lines before it",
            ),
            (
                format!("{before}# end: 2 servers\n"),
                "line 5: malformed end line",
            ),
            (
                format!("{before}# end: 2 servers, crc32 0x{}\n", &crc[..7]),
                "malformed end line",
            ),
            (
                format!("{before}# end: 2 servers, crc32 0x{}\n", crc.to_uppercase()),
                "malformed end line",
            ),
            (
                format!("{text}c:3\n"),
                "line 6: text after the end line (line 5)",
            ),
            (
                format!("{text}\n# more\n"),
                "line 7: text after the end line",
            ),
            (format!("{text}{text}"), "text after the end line"),
        ];
        for (list, needle) in cases {
            let err = refused(&list, Accept::default());
            assert!(err.contains(needle), "{list:?}: {err}");
            assert!(err.ends_with("pass --partial"), "{err}");
        }
        // Blank lines after it, and an end line of one server written as "servers", are fine.
        parse_list(&format!("{text}\n  \n\r\n"), Accept::default()).unwrap();
        let one = to_text_all(&snapshot_of(&["a:1"]));
        parse_list(&one.replace("1 server,", "1 servers,"), Accept::default()).unwrap();
    }

    #[test]
    fn partial_takes_a_list_as_written_and_empty_needs_allow_empty() {
        let partial = Accept {
            partial: true,
            ..Accept::default()
        };
        let table = parse_list("# by hand\na:1\nb:2 weight=3\n", partial).unwrap();
        assert_eq!(table.servers.len(), 2);
        // An edited dump: its end line is a comment like any other.
        let edited = to_text_all(&snapshot_of(&["a:1", "b:2"])) + "c:3\n";
        assert_eq!(parse_list(&edited, partial).unwrap().servers.len(), 3);
        // Bad lines are still refused, by line.
        assert!(refused("a:1\nb:0\n", partial).starts_with("line 2:"));

        let empty = to_text_all(&snapshot_of(&[]));
        for (text, accept) in [
            (&empty[..], Accept::default()),
            (&empty, partial),
            ("", partial),
            ("# nothing\npolicy: failover=rehash\n", partial),
        ] {
            assert!(
                refused(text, accept).contains("pass --allow-empty"),
                "{text:?} {accept:?}"
            );
        }
        let allow_empty = Accept {
            allow_empty: true,
            ..Accept::default()
        };
        assert!(parse_list(&empty, allow_empty).unwrap().servers.is_empty());
        let both = Accept {
            partial: true,
            allow_empty: true,
        };
        assert!(parse_list("", both).unwrap().servers.is_empty());
        assert!(refused("", allow_empty).contains("no end line"));
    }

    /// An endless input: `line` over and over; counts the bytes read of it.
    struct Endless {
        line: &'static [u8],
        at: usize,
        read: std::rc::Rc<std::cell::Cell<usize>>,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            for b in buf.iter_mut() {
                *b = self.line[self.at % self.line.len()];
                self.at += 1;
            }
            self.read.set(self.read.get() + buf.len());
            Ok(buf.len())
        }
    }

    fn read_endless(line: &'static [u8]) -> (Error, usize) {
        let read = std::rc::Rc::new(std::cell::Cell::new(0));
        let input = Endless {
            line,
            at: 0,
            read: read.clone(),
        };
        let err = super::read(std::io::BufReader::new(input), Path::new("x")).unwrap_err();
        (err, read.get())
    }

    #[test]
    fn read_stops_at_the_bounds() {
        let (err, read) = read_endless(b"x");
        assert_eq!(
            err.to_string(),
            "line 1: longer than 4096 bytes: not a server list (a server line of `mcadmin \
             dump` is under 1 KiB)"
        );
        assert!(
            read <= MAX_LINE_LEN + 8192,
            "read {read} bytes of one long line"
        );
        let (err, read) = read_endless(b"# a comment of some length, again and again\n");
        assert!(err.to_string().starts_with("larger than 64 MiB"), "{err}");
        assert!(read <= MAX_LIST_LEN + 8192, "read {read} bytes");

        let err = super::read(&b"a:1\n\xff\n"[..], Path::new("x")).unwrap_err();
        assert_eq!(err.to_string(), "line 2: not UTF-8 text: not a server list");
        let longest = "#".repeat(MAX_LINE_LEN);
        for text in [
            format!("{longest}\n{longest}\r\n{longest}"),
            "a:1\r\nb:2\r\n".into(),
            String::new(),
        ] {
            assert_eq!(super::read(text.as_bytes(), Path::new("x")).unwrap(), text);
        }
        let over = "#".repeat(MAX_LINE_LEN + 1);
        let err = super::read(format!("a:1\n{over}\n").as_bytes(), Path::new("x"));
        assert!(err.unwrap_err().to_string().starts_with("line 2: longer"));
    }

    /// The bounds hold every list `dump` writes: its longest line is under 1 KiB.
    #[test]
    fn dumps_longest_line_fits_the_bounds() {
        let host = vec!["h".repeat(63); 4].join(".");
        let mut server = Server::new(Address::parse(&format!("{host}:65535")).unwrap());
        server.weight = u16::MAX;
        server.retry_interval = i32::MAX;
        server.state = State::Down;
        server.held = false;
        server.reason = "\"".repeat(crate::table::MAX_REASON_LEN);
        let mut snapshot = snapshot_of(&[]);
        snapshot.servers = vec![server];
        let text = to_text_all(&snapshot);
        let longest = text.lines().map(str::len).max().unwrap();
        assert!(longest < 1024, "{longest}: {text}");
        assert!(longest <= MAX_LINE_LEN);
        assert_eq!(
            parse_list(&text, Accept::default()).unwrap(),
            snapshot.table()
        );
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
