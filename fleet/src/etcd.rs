//! A small blocking client of etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/kv/txn`,
//! `/v3/watch`, `/v3/lease/*`, `/v3/auth/authenticate`), served by etcd 3.4 and later on its
//! client URLs.
//!
//! Why not the `etcd-client` crate: it speaks gRPC and its build script needs `protoc`, which a
//! fresh Debian machine with only Rust does not have; the gateway speaks JSON over HTTP/1.1,
//! which `ureq` (blocking, rustls for TLS) covers with no build-time tools. Keys and values are
//! base64 in both directions; 64-bit integers arrive as JSON strings; fields at their zero value
//! are left out of answers (a failed txn has no `succeeded`).
//!
//! Endpoints are tried in turn: a transport failure or an "unavailable" answer (no leader, a
//! member stopping) moves on to the next, until every endpoint failed within the call's time.
//! Each endpoint gets its share of that time ([`Etcd::attempt_timeout`]): a frozen member (a
//! SIGSTOP, a partition that drops packets) accepts the connection and never answers, and must
//! cost one short wait, not the whole call, while the others have elected a new leader.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// How to reach etcd: what `mcadmin --etcd … --cacert … --user …` says.
#[derive(Clone, Debug, Default)]
pub struct EtcdConfig {
    /// Client URLs, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// CA bundle that signs the members' certificates (PEM).
    pub cacert: Option<PathBuf>,
    /// Client certificate and key for TLS client authentication (PEM).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `USER:PASSWORD` for etcd's authentication.
    pub user: Option<String>,
    /// Longest time one call may take over every endpoint (and each request's own timeout).
    pub timeout: Duration,
}

impl EtcdConfig {
    /// Parses a comma-separated endpoint list (as `--etcd` and `$MCSHM_ETCD` give it).
    pub fn parse_endpoints(text: &str) -> Result<Vec<String>, EtcdError> {
        let endpoints: Vec<String> = text
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| e.trim_end_matches('/').to_string())
            .collect();
        if endpoints.is_empty() {
            return Err(EtcdError::Config(format!(
                "no etcd endpoint in '{text}': expected http://HOST:PORT[,http://HOST:PORT…]"
            )));
        }
        for e in &endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .ok_or_else(|| {
                    EtcdError::Config(format!(
                        "etcd endpoint '{e}' must start with http:// or https://"
                    ))
                })?;
            if rest.is_empty() || rest.contains(['/', ' ']) {
                return Err(EtcdError::Config(format!(
                    "etcd endpoint '{e}': expected http://HOST:PORT"
                )));
            }
        }
        Ok(endpoints)
    }
}

/// Why a call failed.
#[derive(Debug)]
pub enum EtcdError {
    /// No endpoint answered (all down, partitioned, or every answer "unavailable").
    Unreachable(String),
    /// A revision needed was compacted away; the oldest one kept is this.
    Compacted(i64),
    /// etcd refused the request (permission, bad request, authentication).
    Refused(String),
    /// A bad `--etcd`, certificate or user option.
    Config(String),
    /// An answer that is not what the gateway sends.
    Protocol(String),
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Unreachable(why) => write!(f, "etcd unreachable: {why}"),
            EtcdError::Compacted(rev) => write!(
                f,
                "etcd compacted the revision needed (oldest kept: {rev}); a full resync follows"
            ),
            EtcdError::Refused(why) => write!(f, "etcd refused the request: {why}"),
            EtcdError::Config(why) => f.write_str(why),
            EtcdError::Protocol(why) => write!(f, "unexpected answer from etcd: {why}"),
        }
    }
}

impl std::error::Error for EtcdError {}

/// One key as etcd holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// A change seen by a watch: the key's new value, or `None` when it was deleted.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub mod_revision: i64,
}

/// The outcome of a conditional put.
#[derive(Clone, Debug)]
pub enum PutIf {
    /// Written at this revision.
    Written(i64),
    /// The condition failed; this is the key now (`None`: absent).
    Conflict(Option<Kv>),
    /// The condition failed when the request was sent again after a member failed to answer
    /// it: that member may have written it, and another writer on top since (the key's
    /// history says; see `store::Fleet::transact_with`).
    Resent(Option<Kv>),
}

/// A connection to an etcd cluster (cheap to share between threads).
pub struct Etcd {
    config: EtcdConfig,
    agent: ureq::Agent,
    /// For watches: no read timeout shorter than the watch's own idle limit.
    watch_agent: ureq::Agent,
    /// The endpoint that answered last; calls start there (shared with [`Etcd::within`]'s
    /// copies).
    current: Arc<Mutex<usize>>,
    token: Arc<Mutex<Option<String>>>,
}

/// The least time one endpoint is given to answer, however many endpoints share a call's.
const MIN_ATTEMPT: Duration = Duration::from_millis(250);

/// How long a watch stream may stay silent before it is re-established (etcd sends nothing on
/// an idle watch; re-watching from the last revision is cheap and finds dead connections).
pub const WATCH_IDLE: Duration = Duration::from_secs(30);

/// The read of keys: safe to ask again of another member when an answer is cut off.
const RANGE: &str = "/v3/kv/range";

impl Etcd {
    pub fn new(config: EtcdConfig) -> Result<Etcd, EtcdError> {
        let tls = tls_config(&config)?;
        let build = |read: Duration, whole: Option<Duration>| {
            let mut b = ureq::AgentBuilder::new()
                .timeout_connect(config.timeout.min(Duration::from_secs(2)))
                .timeout_read(read)
                .timeout_write(config.timeout);
            // A request's whole time is bounded too: ureq does not apply the read timeout to a
            // pooled connection, and a hung member (SIGSTOP, a partition that drops packets)
            // accepts the request and never answers.
            if let Some(whole) = whole {
                b = b.timeout(whole);
            }
            if let Some(tls) = &tls {
                b = b.tls_config(tls.clone());
            }
            b.build()
        };
        Ok(Etcd {
            agent: build(config.timeout, Some(config.timeout)),
            watch_agent: build(WATCH_IDLE, None),
            config,
            current: Arc::default(),
            token: Arc::default(),
        })
    }

    /// The same connection with calls bounded by `timeout` instead of the configured one
    /// (the agent's periodic calls, which must fail in time to show a cut link within
    /// `--etcd-timeout`); which endpoint answered last and the auth token are shared.
    pub fn within(&self, timeout: Duration) -> Etcd {
        Etcd {
            config: EtcdConfig {
                timeout,
                ..self.config.clone()
            },
            agent: self.agent.clone(),
            watch_agent: self.watch_agent.clone(),
            current: self.current.clone(),
            token: self.token.clone(),
        }
    }

    /// The longest one call may take over every endpoint (`--etcd-timeout`).
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// The longest one endpoint may take to answer one request of a call with `left` of its
    /// time: the call's time shared among the endpoints (at least 250 ms), so a
    /// frozen member costs one such wait, then the next is tried. With 3 endpoints and the
    /// default 5 s: 1.7 s, longer than an election (1 s by default).
    /// The last attempt that fits takes all that is left.
    pub fn attempt_timeout(&self, left: Duration) -> Duration {
        let n = u32::try_from(self.config.endpoints.len().max(1)).unwrap_or(u32::MAX);
        let share = (self.config.timeout / n).max(MIN_ATTEMPT);
        match left.saturating_sub(share) < MIN_ATTEMPT {
            true => left,
            false => share,
        }
    }

    /// Starts with endpoint `seed` modulo their number (instead of the first) and stays with it
    /// while it answers. A fleet's agents each pass their own seed (the host's name hashed),
    /// so that their watches and requests are spread over the members instead of all on the
    /// first one: every member then carries its share of the watchers' fan-out.
    pub fn start_at(&self, seed: u64) {
        let n = self.config.endpoints.len().max(1) as u64;
        *lock(&self.current) = (seed % n) as usize;
    }

    /// POSTs `body` to `path`, trying every endpoint until one answers within the timeout.
    fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        self.call_resent(path, body).map(|(answer, _)| answer)
    }

    /// [`Etcd::call`], and whether the answer came after the request was sent to a member
    /// that did not answer it (which may have carried it out).
    fn call_resent(&self, path: &str, body: &Value) -> Result<(Value, bool), EtcdError> {
        let deadline = Instant::now() + self.config.timeout;
        let mut resent = false;
        let n = self.config.endpoints.len();
        let mut last = String::new();
        let mut tries = 0usize;
        let mut reauthenticated = false;
        loop {
            let index = (*lock(&self.current) + tries) % n;
            let endpoint = &self.config.endpoints[index];
            let left = deadline.saturating_duration_since(Instant::now());
            if tries > 0 && left < MIN_ATTEMPT {
                // Too little time for an answer: the last failure says more than a time-out.
                return Err(EtcdError::Unreachable(last));
            }
            let attempt = self.attempt_timeout(left);
            match self.post(&self.agent, endpoint, path, body, Some(attempt)) {
                Ok(response) => match response.into_json::<Value>() {
                    Ok(answer) => {
                        *lock(&self.current) = index;
                        return Ok((answer, resent));
                    }
                    // A member that died in the middle of its answer: a read is asked of the
                    // next one; a write's outcome is unknown, so it is not sent again.
                    Err(e) if path == RANGE => last = format!("{endpoint}: {path}: {e}"),
                    Err(e) => return Err(EtcdError::Protocol(format!("{path}: {e}"))),
                },
                Err(ureq::Error::Status(code, response)) => {
                    let text = error_body(response);
                    let message = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v.get("error").and_then(Value::as_str).map(String::from))
                        .unwrap_or(text);
                    if is_auth_expiry(&message) && !reauthenticated && self.config.user.is_some() {
                        *lock(&self.token) = None;
                        reauthenticated = true;
                        continue;
                    }
                    if !is_unavailable(code, &message) {
                        let why = explain_refusal(&message).unwrap_or_default();
                        let message = message.trim();
                        return Err(EtcdError::Refused(format!("{path}: {message}{why}")));
                    }
                    // "leader changed", "request timed out": a proposal may still commit.
                    resent = true;
                    let hint = gateway_hint(endpoint, &message, self.config.cert.is_some());
                    last = format!("{endpoint}: {}{hint}", message.trim());
                }
                Err(ureq::Error::Transport(t)) => {
                    // Sent, unanswered (a time-out, a reset): the member may have written it.
                    resent = true;
                    last = format!(
                        "{endpoint}: {}",
                        transport_text(&t, endpoint, self.config.cert.is_some())
                    );
                }
            }
            tries += 1;
            if Instant::now() >= deadline {
                return Err(EtcdError::Unreachable(last));
            }
            if tries.is_multiple_of(n) {
                // Every endpoint failed once: an election takes a moment.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    // ureq's error is large, but it is built only on a failed request: not worth boxing.
    #[allow(clippy::result_large_err)]
    fn post(
        &self,
        agent: &ureq::Agent,
        endpoint: &str,
        path: &str,
        body: &Value,
        attempt: Option<Duration>,
    ) -> Result<ureq::Response, ureq::Error> {
        let mut request = agent.post(&format!("{endpoint}{path}"));
        if let Some(attempt) = attempt {
            request = request.timeout(attempt);
        }
        if let Some(token) = self.token_for(agent, endpoint, attempt)? {
            request = request.set("Authorization", &token);
        }
        request.send_json(body)
    }

    /// The auth token (authenticating first when `--user` was given and none is held).
    #[allow(clippy::result_large_err)]
    fn token_for(
        &self,
        agent: &ureq::Agent,
        endpoint: &str,
        attempt: Option<Duration>,
    ) -> Result<Option<String>, ureq::Error> {
        let Some(user) = &self.config.user else {
            return Ok(None);
        };
        if let Some(token) = lock(&self.token).clone() {
            return Ok(Some(token));
        }
        let (name, password) = user.split_once(':').unwrap_or((user, ""));
        let mut request = agent.post(&format!("{endpoint}/v3/auth/authenticate"));
        if let Some(attempt) = attempt {
            request = request.timeout(attempt);
        }
        let answer: Value = request
            .send_json(json!({"name": name, "password": password}))?
            .into_json()
            .map_err(|e| ureq::Error::from(std::io::Error::other(e)))?;
        let token = answer
            .get("token")
            .and_then(Value::as_str)
            .map(String::from);
        lock(&self.token).clone_from(&token);
        Ok(token)
    }

    /// The value of `key` and the cluster's revision; `at` reads an older revision (may fail
    /// with [`EtcdError::Compacted`]).
    pub fn get(&self, key: &str, at: Option<i64>) -> Result<(Option<Kv>, i64), EtcdError> {
        let mut body = json!({"key": b64(key.as_bytes())});
        if let Some(rev) = at {
            body["revision"] = json!(rev.to_string());
        }
        let answer = self.call(RANGE, &body).map_err(compacted)?;
        let kvs = kvs(&answer)?;
        Ok((kvs.into_iter().next(), header_revision(&answer)?))
    }

    /// Every key under `prefix`, and the cluster's revision.
    pub fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64), EtcdError> {
        let body = json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
        });
        let answer = self.call(RANGE, &body)?;
        Ok((kvs(&answer)?, header_revision(&answer)?))
    }

    /// The newest modification revision of any key under `prefix` (0: none), read through the
    /// leader (linearizable): what a watch of `prefix` must have delivered by now. The
    /// agent compares it with what its watch delivered, to notice a watch on a frozen or
    /// lagging member, which stays silent as an idle one does.
    pub fn newest_under(&self, prefix: &str) -> Result<i64, EtcdError> {
        let body = json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
            "limit": "1",
            "sort_order": "DESCEND",
            "sort_target": "MOD",
            "keys_only": true,
        });
        let answer = self.call(RANGE, &body)?;
        Ok(kvs(&answer)?.first().map_or(0, |kv| kv.mod_revision))
    }

    /// Writes `value` at `key` if its modification revision is still `expected` (`None`: if the
    /// key does not exist), optionally attached to `lease`: etcd's compare-and-swap.
    pub fn put_if(
        &self,
        key: &str,
        value: &[u8],
        expected: Option<i64>,
        lease: Option<i64>,
    ) -> Result<PutIf, EtcdError> {
        let k = b64(key.as_bytes());
        let compare = match expected {
            Some(rev) => {
                json!({"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string()})
            }
            None => {
                json!({"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
            }
        };
        let mut put = json!({"key": k, "value": b64(value)});
        if let Some(lease) = lease {
            put["lease"] = json!(lease.to_string());
        }
        let body = json!({
            "compare": [compare],
            "success": [{"request_put": put}],
            "failure": [{"request_range": {"key": k}}],
        });
        let (answer, resent) = self.call_resent("/v3/kv/txn", &body)?;
        let revision = header_revision(&answer)?;
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            return Ok(PutIf::Written(revision));
        }
        let current = answer
            .get("responses")
            .and_then(|r| r.get(0))
            .and_then(|r| r.get("response_range"))
            .map(kvs)
            .transpose()?
            .and_then(|kvs| kvs.into_iter().next());
        Ok(match resent {
            true => PutIf::Resent(current),
            false => PutIf::Conflict(current),
        })
    }

    /// Writes `value` at `key` unconditionally (attached to `lease` if given).
    pub fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<i64, EtcdError> {
        let mut body = json!({"key": b64(key.as_bytes()), "value": b64(value)});
        if let Some(lease) = lease {
            body["lease"] = json!(lease.to_string());
        }
        header_revision(&self.call("/v3/kv/put", &body)?)
    }

    /// A new lease of `ttl_s` seconds; returns its id.
    pub fn lease_grant(&self, ttl_s: i64) -> Result<i64, EtcdError> {
        let answer = self.call("/v3/lease/grant", &json!({"TTL": ttl_s.to_string()}))?;
        int(answer.get("ID")).ok_or_else(|| EtcdError::Protocol("lease grant without ID".into()))
    }

    /// Renews a lease; `false` when it has expired (its keys are gone).
    pub fn lease_keepalive(&self, id: i64) -> Result<bool, EtcdError> {
        let answer = self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()}))?;
        let ttl = answer.get("result").and_then(|r| int(r.get("TTL")));
        Ok(ttl.is_some_and(|t| t > 0))
    }

    /// Ends a lease now (deleting its keys).
    pub fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({"ID": id.to_string()}))
            .map(drop)
    }

    /// Starts watching every key under `prefix` from revision `start` (inclusive).
    pub fn watch(&self, prefix: &str, start: i64) -> Result<Watch, EtcdError> {
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
            "start_revision": start.to_string(),
        }});
        let n = self.config.endpoints.len();
        let mut last = String::new();
        for tries in 0..n {
            let index = (*lock(&self.current) + tries) % n;
            let endpoint = &self.config.endpoints[index];
            match self.post(&self.watch_agent, endpoint, "/v3/watch", &body, None) {
                Ok(response) => {
                    let mut watch = Watch {
                        lines: BufReader::new(Box::new(response.into_reader())),
                        line: Vec::new(),
                    };
                    // The first message says the watch exists, or why not (compacted).
                    let first = watch.next()?;
                    if !first.events.is_empty() {
                        return Err(EtcdError::Protocol("events before the watch began".into()));
                    }
                    return Ok(watch);
                }
                Err(ureq::Error::Status(_, r)) => last = error_body(r),
                Err(ureq::Error::Transport(t)) => {
                    last = format!(
                        "{endpoint}: {}",
                        transport_text(&t, endpoint, self.config.cert.is_some())
                    );
                }
            }
        }
        Err(EtcdError::Unreachable(last))
    }
}

/// A watch stream: one JSON message per line.
pub struct Watch {
    lines: BufReader<Box<dyn Read + Send>>,
    line: Vec<u8>,
}

/// One message of a watch stream.
#[derive(Debug, Default)]
pub struct WatchBatch {
    pub events: Vec<WatchEvent>,
    /// The cluster revision when the message was sent.
    pub revision: i64,
}

/// The longest line a watch message may have (a fleet table is at most
/// [`crate::document::MAX_DOCUMENT`]; base64 and JSON add a third).
const MAX_WATCH_LINE: usize = 8 << 20;

impl Watch {
    /// Blocks for the next message (at most [`WATCH_IDLE`]; then an error: re-watch).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<WatchBatch, EtcdError> {
        self.line.clear();
        let read = (&mut self.lines)
            .take(MAX_WATCH_LINE as u64)
            .read_until(b'\n', &mut self.line)
            .map_err(|e| EtcdError::Unreachable(format!("watch: {e}")))?;
        if read == 0 {
            return Err(EtcdError::Unreachable("watch: stream closed".into()));
        }
        if !self.line.ends_with(b"\n") && self.line.len() >= MAX_WATCH_LINE {
            return Err(EtcdError::Protocol("watch message too long".into()));
        }
        let message: Value = serde_json::from_slice(&self.line)
            .map_err(|e| EtcdError::Protocol(format!("watch: {e}")))?;
        if let Some(error) = message.get("error") {
            return Err(EtcdError::Unreachable(format!("watch: {error}")));
        }
        let result = message
            .get("result")
            .ok_or_else(|| EtcdError::Protocol("watch message without result".into()))?;
        if let Some(rev) = int(result.get("compact_revision")).filter(|r| *r > 0) {
            return Err(EtcdError::Compacted(rev));
        }
        if result.get("canceled").and_then(Value::as_bool) == Some(true) {
            return Err(EtcdError::Unreachable("watch canceled by etcd".into()));
        }
        let mut batch = WatchBatch {
            revision: int(result.get("header").and_then(|h| h.get("revision"))).unwrap_or(0),
            events: Vec::new(),
        };
        for event in result
            .get("events")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let kv = decode_kv(event.get("kv").unwrap_or(&Value::Null))?;
            let deleted = event.get("type").and_then(Value::as_str) == Some("DELETE");
            batch.events.push(WatchEvent {
                key: kv.key,
                value: (!deleted).then_some(kv.value),
                mod_revision: kv.mod_revision,
            });
        }
        Ok(batch)
    }
}

/// The body of an error answer. The gateway ends it with a gRPC trailer that ureq's chunked
/// decoder stops at; what was read before that is the JSON error.
fn error_body(response: ureq::Response) -> String {
    let code = response.status();
    let mut body = Vec::new();
    let _ = response.into_reader().take(64 << 10).read_to_end(&mut body);
    let text = String::from_utf8_lossy(&body).into_owned();
    match text.trim().is_empty() {
        true => format!("HTTP status {code}"),
        false => text,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Answers worth trying another endpoint for: no leader, a member stopping, overload.
fn is_unavailable(code: u16, message: &str) -> bool {
    code == 503
        || code >= 500
            && [
                "leader",
                "unavailable",
                "stopped",
                "timed out",
                "timeout",
                "too many",
            ]
            .iter()
            .any(|w| message.to_ascii_lowercase().contains(w))
}

fn is_auth_expiry(message: &str) -> bool {
    message.contains("invalid auth token")
}

/// Turns the gateway's "required revision has been compacted" into [`EtcdError::Compacted`].
fn compacted(e: EtcdError) -> EtcdError {
    match e {
        EtcdError::Refused(why) if why.contains("compacted") => EtcdError::Compacted(0),
        other => other,
    }
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The end of the key range holding every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A 64-bit integer as the gateway writes it: a JSON string, or a number.
fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn header_revision(answer: &Value) -> Result<i64, EtcdError> {
    int(answer.get("header").and_then(|h| h.get("revision")))
        .ok_or_else(|| EtcdError::Protocol("answer without a header revision".into()))
}

fn kvs(answer: &Value) -> Result<Vec<Kv>, EtcdError> {
    answer
        .get("kvs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(decode_kv)
        .collect()
}

fn decode_kv(kv: &Value) -> Result<Kv, EtcdError> {
    let bytes = |field: &str| -> Result<Vec<u8>, EtcdError> {
        match kv.get(field).and_then(Value::as_str) {
            None => Ok(Vec::new()),
            Some(text) => B64
                .decode(text)
                .map_err(|e| EtcdError::Protocol(format!("{field} is not base64: {e}"))),
        }
    };
    Ok(Kv {
        key: bytes("key")?,
        value: bytes("value")?,
        mod_revision: int(kv.get("mod_revision")).unwrap_or(0),
    })
}

/// The rustls configuration for `https://` endpoints: `--cacert` (else nothing is trusted:
/// etcd clusters use their own CA), and `--cert`/`--key` for client authentication. Built by
/// libmcshm's one TLS client ([`libmcshm::tls::client_config`]), which checks each file's PEM
/// and names the part that cannot be used; here that part is given its option and file.
fn tls_config(config: &EtcdConfig) -> Result<Option<Arc<rustls::ClientConfig>>, EtcdError> {
    use libmcshm::tls::{Part, Verify};
    let https = config.endpoints.iter().any(|e| e.starts_with("https://"));
    if !https {
        return Ok(None);
    }
    let Some(cacert) = &config.cacert else {
        return Err(EtcdError::Config(
            "https:// etcd endpoints need --cacert (the CA that signed the members' certificates)"
                .into(),
        ));
    };
    let read = |option: &str, path: &PathBuf| {
        std::fs::read_to_string(path)
            .map_err(|e| EtcdError::Config(format!("cannot read {option} {}: {e}", path.display())))
    };
    let roots = read("--cacert", cacert)?;
    let client = match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => Some((read("--cert", cert)?, read("--key", key)?)),
        (None, None) => None,
        _ => {
            return Err(EtcdError::Config(
                "--cert and --key go together (client certificate and its key)".into(),
            ));
        }
    };
    let pems = client.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
    let tls = libmcshm::tls::client_config(&roots, pems, Verify::Full).map_err(|e| {
        let (option, path) = match e.part {
            Part::Ca => ("--cacert", Some(cacert)),
            Part::Cert => ("--cert", config.cert.as_ref()),
            Part::Key => ("--key", config.key.as_ref()),
            // Not a part of etcd's configuration: the name checked is the endpoint's host.
            Part::ServerName => return EtcdError::Config(format!("TLS: {e}")),
        };
        let path = path.map(|p| p.display().to_string()).unwrap_or_default();
        EtcdError::Config(format!("{option} {path}: {}", e.why))
    })?;
    Ok(Some(Arc::new(tls)))
}

/// What to do about an etcd refusal whose text alone does not say (appended to it).
fn explain_refusal(message: &str) -> Option<&'static str> {
    if message.contains("CommonName of client sending a request against gateway") {
        return Some(
            " (etcd's JSON gateway refuses a client certificate that carries a CommonName while \
             authentication is enabled: authenticate with --etcd-user and a client certificate \
             without a CommonName, or run etcd without --client-cert-auth)",
        );
    }
    if message.contains("user name is empty") {
        return Some(" (etcd has authentication enabled: give --etcd-user USER:PASSWORD)");
    }
    None
}

/// etcd, as libmcshm's explanation of a TLS failure names it.
const ETCD: libmcshm::tls::Peer<'static> = libmcshm::tls::Peer {
    who: "etcd",
    host: "the endpoint's host",
    trusted: "the CA of --cacert",
};

/// What mcadmin's options can change about a TLS failure's cause (appended to its words).
fn etcd_advice(cause: libmcshm::tls::Cause) -> &'static str {
    use libmcshm::tls::Cause;
    match cause {
        Cause::ClientCertificateWanted | Cause::ClientCertificateRefused => " (--cert, --key)",
        Cause::ClientCertificateExpired => " (--cert)",
        Cause::NotTls => " (is the endpoint http://?)",
        _ => "",
    }
}

/// The rustls error behind a transport failure: ureq passes it on as the source of an I/O
/// error, sometimes one wrapped in another (a failure while reading the answer).
fn rustls_error(t: &ureq::Transport) -> Option<&rustls::Error> {
    let mut source = std::error::Error::source(t);
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(libmcshm::tls::rustls_error)
        }) {
            return Some(tls);
        }
        source = err.source();
    }
    None
}

/// The cause of a TLS failure in the operator's words, with what to check (libmcshm's
/// explanation, for [`ETCD`]); `None` when rustls's error has no cause we name (its own text,
/// already in ureq's, says it then).
fn explain_tls(err: &rustls::Error) -> Option<String> {
    libmcshm::tls::Cause::of(err)?;
    Some(libmcshm::tls::explain_to(err, &ETCD, etcd_advice))
}

/// A transport failure said once: ureq's kind, message and source chain often repeat each
/// other ("Network Error: Network Error: ...") and the URL, which the caller names already; a
/// TLS failure ends with its cause in words.
fn transport_text(t: &ureq::Transport, endpoint: &str, client_certificate: bool) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut say = |text: String| {
        let mut text = text.trim().to_string();
        // "Network Error: Network Error: ...": a part that repeats an earlier one as its start.
        while let Some(rest) = parts.iter().find_map(|p| {
            text.strip_prefix(p.as_str())
                .and_then(|r| r.strip_prefix(':'))
                .map(|r| r.trim().to_string())
        }) {
            text = rest;
        }
        let known = parts
            .iter()
            .any(|p| p.to_lowercase().contains(&text.to_lowercase()));
        if !text.is_empty() && !known {
            parts.push(text);
        }
    };
    say(t.kind().to_string());
    if let Some(message) = t.message() {
        say(message.to_string());
    }
    let mut source = std::error::Error::source(t);
    while let Some(err) = source {
        say(err.to_string());
        source = err.source();
    }
    let text = parts.join(": ");
    if let Some(cause) = rustls_error(t).and_then(explain_tls) {
        return format!("{text}: {cause}");
    }
    format!(
        "{text}{}",
        gateway_hint(endpoint, &text, client_certificate)
    )
}

/// Why an https endpoint closed the connection after the handshake (or its gateway could not
/// reach etcd): without a client certificate, most likely it wants one (TLS 1.3 says so only
/// after the handshake); with one, [`GATEWAY_CERTIFICATE`]. Nothing for other failures.
fn gateway_hint(endpoint: &str, text: &str, client_certificate: bool) -> &'static str {
    let text = text.to_lowercase();
    let symptom = [
        "connection closed",
        "connection reset",
        "broken pipe",
        "client preface",
        "authentication handshake failed",
    ]
    .iter()
    .any(|s| text.contains(s));
    match (endpoint.starts_with("https") && symptom, client_certificate) {
        (false, _) => "",
        (true, false) => {
            " (etcd may want a client certificate its CA signed, as with --client-cert-auth: \
             --cert, --key)"
        }
        (true, true) => GATEWAY_CERTIFICATE,
    }
}

/// Why an etcd over TLS may close the connection after the handshake: with
/// --client-cert-auth, its JSON gateway (what mcadmin speaks) connects to etcd itself with
/// etcd's own certificate, which must then allow client authentication too (etcdctl, which
/// speaks gRPC directly, works either way).
const GATEWAY_CERTIFICATE: &str = " (an etcd started with --client-cert-auth serves its JSON \
    gateway, which mcadmin uses, only when its own certificate, --cert-file, also allows client \
    authentication: extendedKeyUsage clientAuth)";

#[cfg(test)]
mod tests {
    #[test]
    fn a_closed_tls_connection_is_explained_by_what_was_given() {
        let https = "https://127.0.0.1:2379";
        for symptom in [
            "Connection closed",
            "Broken pipe (os error 32)",
            "client preface",
        ] {
            assert!(super::gateway_hint(https, symptom, false).contains("--cert, --key"));
            assert_eq!(
                super::gateway_hint(https, symptom, true),
                super::GATEWAY_CERTIFICATE
            );
            assert_eq!(
                super::gateway_hint("http://127.0.0.1:2379", symptom, true),
                ""
            );
        }
        assert_eq!(super::gateway_hint(https, "Connection refused", false), "");
    }

    #[test]
    fn a_tls_failure_is_said_with_the_option_that_changes_it() {
        use rustls::{AlertDescription as Alert, CertificateError, Error as E};
        let said = |err: E| explain_tls(&err).unwrap();
        assert_eq!(
            said(E::InvalidCertificate(CertificateError::UnknownIssuer)),
            "etcd's certificate is not signed by the CA of --cacert"
        );
        assert_eq!(
            said(E::InvalidCertificate(CertificateError::NotValidForName)),
            "etcd's certificate does not name the endpoint's host (its subjectAltName)"
        );
        assert_eq!(
            said(E::AlertReceived(Alert::CertificateRequired)),
            "etcd wants a client certificate (--cert, --key)"
        );
        assert!(said(E::AlertReceived(Alert::BadCertificate)).ends_with("(--cert, --key)"));
        assert_eq!(explain_tls(&E::DecryptError), None, "rustls's text says it");
    }

    #[test]
    fn the_rustls_error_is_found_however_deep_ureq_wraps_it() {
        let tls = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
            )
        };
        // The handshake: the I/O error itself is the source.
        let ureq::Error::Transport(handshake) = ureq::Error::from(tls()) else {
            unreachable!()
        };
        assert!(rustls_error(&handshake).is_some());
        // Reading the answer: ureq wraps it in an error of its own, inside another I/O error.
        let wrapper = ureq::Error::from(tls());
        let ureq::Error::Transport(read) = ureq::Error::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            wrapper,
        )) else {
            unreachable!()
        };
        assert!(rustls_error(&read).is_some());
        let ureq::Error::Transport(socket) =
            ureq::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
        else {
            unreachable!()
        };
        assert!(rustls_error(&socket).is_none());
    }

    use super::*;

    #[test]
    fn a_seed_picks_the_endpoint_a_client_starts_with() {
        let etcd = Etcd::new(EtcdConfig {
            endpoints: EtcdConfig::parse_endpoints("http://a:1,http://b:2,http://c:3").unwrap(),
            timeout: Duration::from_secs(1),
            ..EtcdConfig::default()
        })
        .unwrap();
        assert_eq!(*lock(&etcd.current), 0, "the first endpoint by default");
        for (seed, index) in [(0, 0), (4, 1), (5, 2), (u64::MAX, 0)] {
            etcd.start_at(seed);
            assert_eq!(*lock(&etcd.current), index, "seed {seed}");
        }
    }

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/mcshm/"), b"/mcshm0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn each_endpoint_gets_a_share_of_the_call_and_the_last_one_the_rest() {
        let etcd = |n: usize, timeout_ms: u64| {
            Etcd::new(EtcdConfig {
                endpoints: vec!["http://127.0.0.1:1".into(); n],
                timeout: Duration::from_millis(timeout_ms),
                ..EtcdConfig::default()
            })
            .unwrap()
        };
        let ms = Duration::from_millis;
        let three = etcd(3, 6000);
        assert_eq!(three.attempt_timeout(ms(6000)), ms(2000));
        assert_eq!(three.attempt_timeout(ms(4000)), ms(2000));
        assert_eq!(
            three.attempt_timeout(ms(2100)),
            ms(2100),
            "no room for another: all"
        );
        assert_eq!(etcd(1, 5000).attempt_timeout(ms(5000)), ms(5000));
        // Many endpoints or a short timeout: never less than 250 ms a try.
        assert_eq!(etcd(100, 1000).attempt_timeout(ms(1000)), ms(250));
    }

    #[test]
    fn endpoints_are_checked() {
        assert_eq!(
            EtcdConfig::parse_endpoints("http://a:1, https://b:2/").unwrap(),
            vec!["http://a:1", "https://b:2"]
        );
        for bad in ["", ",", "a:1", "http://", "http://a:1/x", "ftp://a"] {
            assert!(EtcdConfig::parse_endpoints(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn integers_come_as_strings_or_numbers() {
        assert_eq!(int(Some(&json!("12"))), Some(12));
        assert_eq!(int(Some(&json!(12))), Some(12));
        assert_eq!(int(Some(&json!(true))), None);
        assert_eq!(int(None), None);
    }
}
