//! Requests: one server's pipeline (a bounded window of requests in flight, replies in order),
//! and what its replies mean.

use mcshm_route::Outcome;

use crate::address::Address;
use crate::clock::now_ms;
use crate::conn::{Conn, ConnError};
use crate::error::{Error, Result};
use crate::prefix::KeyPrefix;
use crate::proto::{Encoded, Expect, MAX_LINE, Reply, Request};

use std::collections::VecDeque;

use super::fenced::{push_fence_read, read_fence};
use super::{Client, PIPELINE_WINDOW, QUIET_WINDOWS, Stored};
use crate::fence::Verdict;

impl Client {
    /// One request to one server, its answer judged by the server's fence when the domain
    /// fences ([`Error::TableBehind`] when it is not usable).
    pub(super) fn call(&mut self, server: usize, request: &Request<'_>) -> Result<Reply> {
        let mut replies = self.pipeline(server, std::slice::from_ref(request))?;
        Ok(replies.pop().expect("one reply per request"))
    }

    /// [`Client::call`] without the fence read: what no table decides (a flush, `stats`) and
    /// what cannot leave a stale copy (the undo of a fenced write).
    pub(super) fn call_plain(&mut self, server: usize, request: &Request<'_>) -> Result<Reply> {
        self.plain(|client| client.call(server, request))
    }

    /// One request to each of several servers, all sent before any reply is read (so their
    /// round trips overlap): a write with its invalidations. One result per call, in order;
    /// each outcome counts for or against its server as [`Client::pipeline`]'s do.
    pub(super) fn fan_out(&mut self, calls: &[(usize, &Request<'_>)]) -> Vec<Result<Reply>> {
        if calls.len() == 1 {
            let (server, request) = calls[0];
            return vec![self.call(server, request)];
        }
        let snapshot = self.router.snapshot().clone();
        let prefix = snapshot.policy.prefix;
        let fence = self.fence_of(&snapshot);
        // Sent: Ok(()) or the send's error; then the reply or the receive's error.
        let mut sent: Vec<Result<(), ConnError>> = Vec::with_capacity(calls.len());
        for &(server, request) in calls {
            let address = &snapshot.servers[server].address;
            sent.push(self.send_one(address, request, &prefix, fence));
        }
        let mut results = Vec::with_capacity(calls.len());
        for (&(server, request), sent) in calls.iter().zip(sent) {
            let address = &snapshot.servers[server].address;
            let received = sent.and_then(|()| {
                let conn = self.conns.get_mut(address).expect("connected by send_one");
                let reply = conn.receive(request.expects())?;
                Ok((reply, read_fence(conn, fence)?))
            });
            results.push(self.judged(server, address, received, fence));
        }
        results
    }

    /// Several servers' pipelines at once, as libmemcached's mget works: every server is sent
    /// its first window of requests ([`PIPELINE_WINDOW`] bytes, at least one request) before
    /// any reply is read; then, server by server in turn, the replies to its window are read
    /// and its next window sent at once, so each server works on its next window while the
    /// others' replies are read (never more than one window unread per server, which its
    /// socket buffers hold). One result per group, in order; each outcome counts for or
    /// against its server.
    pub(super) fn pipelines(
        &mut self,
        groups: &[(usize, Vec<Request<'_>>)],
    ) -> Vec<Result<Vec<Reply>>> {
        self.windows(groups, false)
    }

    /// [`Client::pipelines`] of sets and deletes as quiet meta commands (see
    /// [`Encoded::push_quiet`]), every window ended by `mn`, [`QUIET_WINDOWS`] windows in
    /// flight per server: the server writes a reply only for a failure, so it and this client
    /// spend nothing on the successes' replies. Every
    /// server of `groups` must speak the meta protocol ([`Client::speaks_meta`]). One result
    /// per group: a [`Reply::Quiet`] per window, whose opaques are positions in the group.
    pub(super) fn quiet_pipelines(
        &mut self,
        groups: &[(usize, Vec<Request<'_>>)],
    ) -> Vec<Result<Vec<Reply>>> {
        self.windows(groups, true)
    }

    /// Whether server `server` speaks the meta protocol (memcached 1.6+), which quiet
    /// commands need: it answers `mn` with `MN` (an older one with `ERROR`). Asked once per
    /// connection; a server that cannot be asked is taken not to, its connection dropped and
    /// the failure not counted here: the caller's usual requests meet it and count it once.
    pub(super) fn speaks_meta(&mut self, server: usize) -> bool {
        let snapshot = self.router.snapshot().clone();
        let address = &snapshot.servers[server].address;
        if self.connect(address).is_err() {
            return false;
        }
        let conn = self.conns.get_mut(address).expect("connected above");
        if let Some(known) = conn.speaks_meta() {
            return known;
        }
        if !conn.is_idle() {
            // Replies owed to requests given up on come first: ask another time.
            return false;
        }
        let deadline = std::time::Instant::now() + self.timeouts.io;
        let answer = conn
            .send(b"mn\r\n")
            .and_then(|()| conn.receive_until(MAX_LINE, deadline, |got| got.ends_with(b"\r\n")));
        match answer {
            Ok(answer) => {
                let speaks = answer == b"MN\r\n";
                conn.set_speaks_meta(speaks);
                speaks
            }
            Err(_) => {
                self.conns.remove(address);
                false
            }
        }
    }

    /// [`Client::pipelines`]; `quiet`: as [`Client::quiet_pipelines`].
    fn windows(
        &mut self,
        groups: &[(usize, Vec<Request<'_>>)],
        quiet: bool,
    ) -> Vec<Result<Vec<Reply>>> {
        if groups.len() < 2 && !quiet {
            return groups
                .iter()
                .map(|(server, requests)| self.pipeline(*server, requests))
                .collect();
        }
        let snapshot = self.router.snapshot().clone();
        let prefix = snapshot.policy.prefix;
        let fence = self.fence_of(&snapshot);
        let mut verdicts = vec![Verdict::Current; groups.len()];
        let mut replies: Vec<Vec<Reply>> = groups
            .iter()
            .map(|(_, requests)| Vec::with_capacity(requests.len()))
            .collect();
        let mut errors: Vec<Option<ConnError>> = groups.iter().map(|_| None).collect();
        // Where each server's last window sent ends (its requests before it are sent), how
        // many of its requests are answered, and where its windows in flight end (quiet: up
        // to QUIET_WINDOWS of them).
        let mut window_end = vec![0; groups.len()];
        let mut answered = vec![0; groups.len()];
        // Only quiet windows are tracked (a text window's replies are read request by request):
        // a multi-get allocates nothing here.
        let mut in_flight: Vec<VecDeque<usize>> = groups.iter().map(|_| VecDeque::new()).collect();
        let windows = if quiet { QUIET_WINDOWS } else { 1 };
        for (n, (server, requests)) in groups.iter().enumerate() {
            let address = &snapshot.servers[*server].address;
            for first in (0..windows).map(|w| w == 0) {
                if errors[n].is_some() || (!first && window_end[n] == requests.len()) {
                    break;
                }
                match self.send_window(address, requests, window_end[n], &prefix, quiet, fence) {
                    Ok(end) => {
                        window_end[n] = end;
                        if quiet {
                            in_flight[n].push_back(end);
                        }
                    }
                    Err(err) => errors[n] = Some(err),
                }
            }
        }
        loop {
            let mut waiting = false;
            for (n, (server, requests)) in groups.iter().enumerate() {
                if errors[n].is_some() || answered[n] == window_end[n] {
                    continue;
                }
                waiting = true;
                let address = &snapshot.servers[*server].address;
                let conn = self.conns.get_mut(address).expect("connected to send");
                if quiet {
                    // The oldest window's one reply: its failures, up to MN.
                    match conn.receive(Expect::Quiet) {
                        Ok(reply) => {
                            replies[n].push(reply);
                            answered[n] = in_flight[n].pop_front().expect("a window in flight");
                        }
                        Err(err) => errors[n] = Some(err),
                    }
                } else {
                    for request in &requests[answered[n]..window_end[n]] {
                        match conn.receive(request.expects()) {
                            Ok(mut reply) => {
                                unprefix(&mut reply, &prefix);
                                replies[n].push(reply);
                                answered[n] += 1;
                            }
                            Err(err) => {
                                errors[n] = Some(err);
                                break;
                            }
                        }
                    }
                }
                if errors[n].is_none() && answered[n] == requests.len() {
                    // The last window's fence read, sent after it.
                    match read_fence(conn, fence) {
                        Ok(verdict) => verdicts[n] = verdict,
                        Err(err) => errors[n] = Some(err),
                    }
                }
                if errors[n].is_none() && window_end[n] < requests.len() {
                    match self.send_window(address, requests, window_end[n], &prefix, quiet, fence)
                    {
                        Ok(end) => {
                            window_end[n] = end;
                            if quiet {
                                in_flight[n].push_back(end);
                            }
                        }
                        Err(err) => errors[n] = Some(err),
                    }
                }
            }
            if !waiting {
                break;
            }
        }
        let mut results = Vec::with_capacity(groups.len());
        let answers = replies.into_iter().zip(errors).zip(verdicts);
        for ((server, _), ((replies, error), verdict)) in groups.iter().zip(answers) {
            let address = &snapshot.servers[*server].address;
            let received = match error {
                Some(err) => Err(err),
                None => Ok((replies, verdict)),
            };
            results.push(self.judged(*server, address, received, fence));
        }
        results
    }

    /// Sends the window of `requests` that starts at `start` (at least one request, at most
    /// [`PIPELINE_WINDOW`] bytes beyond it); where it ends. `quiet`: as quiet meta commands
    /// (opaque: a request's position in `requests`) ended by `mn`. The last window ends with
    /// the fence read when the domain fences.
    fn send_window(
        &mut self,
        address: &Address,
        requests: &[Request<'_>],
        start: usize,
        prefix: &KeyPrefix,
        quiet: bool,
        fence: Option<u64>,
    ) -> Result<usize, ConnError> {
        let mut encoded = std::mem::take(&mut self.scratch);
        encoded.clear();
        let mut end = start;
        while end < requests.len() && (end == start || encoded.len() < PIPELINE_WINDOW) {
            if !quiet {
                encoded.push(&requests[end], prefix.as_bytes());
            } else if !encoded.push_quiet(&requests[end], end, prefix.as_bytes()) {
                unreachable!("only sets and deletes are sent quiet");
            }
            end += 1;
        }
        if quiet {
            encoded.push_quiet_end();
        }
        if end == requests.len() {
            self.push_fence(&mut encoded, fence);
        }
        let sent = self.send_encoded(address, &encoded);
        self.scratch = encoded;
        sent.map(|()| end)
    }

    /// A new connection to `address` (TLS and credentials as the domain's files say now).
    fn open(&self, address: &Address) -> Result<Conn, ConnError> {
        Conn::connect_as(address, self.timeouts, &self.access()?)
    }

    /// Opens a connection to `address` unless there is one.
    fn connect(&mut self, address: &Address) -> Result<(), ConnError> {
        if !self.conns.contains_key(address) {
            let conn = self.open(address)?;
            self.conns.insert(address.clone(), conn);
        }
        Ok(())
    }

    /// Sends `requests` to `address` (connecting first if need be).
    fn send_encoded(&mut self, address: &Address, requests: &Encoded) -> Result<(), ConnError> {
        self.connect(address)?;
        self.conns
            .get_mut(address)
            .expect("connected")
            .send_requests(requests)
    }

    /// Encodes and sends one request to `address` (connecting first if need be), and the
    /// fence read after it when the domain fences.
    fn send_one(
        &mut self,
        address: &Address,
        request: &Request<'_>,
        prefix: &KeyPrefix,
        fence: Option<u64>,
    ) -> Result<(), ConnError> {
        self.connect(address)?;
        let mut encoded = std::mem::take(&mut self.scratch);
        encoded.clear();
        encoded.push(request, prefix.as_bytes());
        self.push_fence(&mut encoded, fence);
        let conn = self.conns.get_mut(address).expect("inserted above");
        let sent = conn.send_requests(&encoded);
        self.scratch = encoded;
        sent
    }

    /// What a request's exchange with server `server` came to, counted for or against it.
    pub(super) fn outcome<T>(
        &mut self,
        server: usize,
        address: &Address,
        result: Result<T, ConnError>,
    ) -> Result<T> {
        let at = self.router.server_ref(server);
        match result {
            Ok(value) => {
                self.router.report(at, Outcome::Answered, now_ms());
                Ok(value)
            }
            Err(err) => {
                // A reply that timed out keeps its connection (see `Conn::abandon`): a later
                // write on a new one could land before the one given up on.
                let kept = self.conns.get_mut(address).map(|conn| conn.abandon(&err));
                let text = match kept {
                    Some(true) => self.conns[address].explain(&err),
                    Some(false) => {
                        let conn = self.conns.remove(address).expect("found above");
                        conn.explain(&err)
                    }
                    None => err.to_string(),
                };
                let errno = errno(&err);
                let failed = Outcome::Failed {
                    error: &text,
                    errno,
                };
                if let Some(failure) = self.router.report(at, failed, now_ms()) {
                    self.carry_out(&failure);
                }
                Err(Error::Network {
                    server: address.to_string(),
                    error: text,
                })
            }
        }
    }

    /// Sends `requests` to one server, keeping at most [`PIPELINE_WINDOW`] request bytes in
    /// flight, and reads their replies in order. A connection failure counts against the
    /// server and fails the whole pipeline.
    pub(super) fn pipeline(
        &mut self,
        server: usize,
        requests: &[Request<'_>],
    ) -> Result<Vec<Reply>> {
        // The snapshot (an Arc) lends the address: no copy of it per operation.
        let snapshot = self.router.snapshot().clone();
        let address = &snapshot.servers[server].address;
        let fence = self.fence_of(&snapshot);
        let result = self.exchange(address, requests, &snapshot.policy.prefix, fence);
        self.judged(server, address, result, fence)
    }

    /// Sends `requests` with their keys under `prefix`, and reads their replies, keys given
    /// back without it; with `fence` (the fleet revision routed on), the fence read after
    /// the last request, in its write, and its verdict.
    pub(super) fn exchange(
        &mut self,
        address: &Address,
        requests: &[Request<'_>],
        prefix: &KeyPrefix,
        fence: Option<u64>,
    ) -> Result<(Vec<Reply>, Verdict), ConnError> {
        // One lookup when connected (every operation of a warm client).
        let conn = match self.conns.get_mut(address) {
            Some(conn) => conn,
            None => {
                let conn = self.open(address)?;
                self.conns.entry(address.clone()).or_insert(conn)
            }
        };
        let mut replies = Vec::with_capacity(requests.len());
        let (mut sent, mut in_flight) = (0, std::collections::VecDeque::new());
        let mut in_flight_bytes = 0;
        while replies.len() < requests.len() {
            // Fill the window (always at least one request in flight).
            self.scratch.clear();
            while sent < requests.len()
                && (in_flight.is_empty() || in_flight_bytes + self.scratch.len() < PIPELINE_WINDOW)
            {
                let before = self.scratch.len();
                self.scratch.push(&requests[sent], prefix.as_bytes());
                in_flight.push_back((requests[sent].expects(), self.scratch.len() - before));
                sent += 1;
                if sent == requests.len()
                    && let (Some(_), Some(key)) = (fence, &self.fence_key)
                {
                    push_fence_read(&mut self.scratch, key);
                }
            }
            if !self.scratch.is_empty() {
                conn.send_requests(&self.scratch)?;
                in_flight_bytes += self.scratch.len();
            }
            let (expect, len) = in_flight.pop_front().expect("a request is in flight");
            let mut reply = conn.receive(expect)?;
            unprefix(&mut reply, prefix);
            replies.push(reply);
            in_flight_bytes -= len;
        }
        let verdict = read_fence(conn, fence)?;
        Ok((replies, verdict))
    }

    pub(super) fn stored(&self, server: usize, reply: Reply) -> Result<Stored> {
        match reply {
            Reply::Stored => Ok(Stored::Stored),
            Reply::NotStored => Ok(Stored::NotStored),
            Reply::Exists => Ok(Stored::Exists),
            Reply::NotFound => Ok(Stored::NotFound),
            other => Err(self.unexpected(server, other)),
        }
    }

    /// A reply that is an error from the server, or not the kind the request expects.
    pub(super) fn unexpected(&self, server: usize, reply: Reply) -> Error {
        let server = self.address(server).to_string();
        match reply {
            Reply::ServerError(message) => Error::ServerError { server, message },
            // What memcached -Y answers a connection that did not authenticate first (a
            // `set` is taken as an authentication attempt).
            Reply::ClientError(message)
                if matches!(
                    message.as_str(),
                    "unauthenticated"
                        | "bad authentication token format"
                        | "authentication failure"
                ) =>
            {
                Error::ClientError {
                    server,
                    message: format!(
                        "{message}: the server requires authentication (memcached -Y); give the domain its credentials with `mcadmin auth`"
                    ),
                }
            }
            Reply::ClientError(message) => Error::ClientError { server, message },
            Reply::Error => Error::UnknownCommand { server },
            Reply::Refused(message) => Error::Refused { server, message },
            other => Error::Network {
                server,
                error: format!("unexpected reply {other:?}"),
            },
        }
    }
}

/// Gives the keys of a retrieval reply back without the domain's prefix.
fn unprefix(reply: &mut Reply, prefix: &KeyPrefix) {
    if let Reply::Values(items) = reply
        && !prefix.is_empty()
    {
        for item in items.iter_mut() {
            if item.key.starts_with(prefix.as_bytes()) {
                item.key.drain(..prefix.as_bytes().len());
            }
        }
    }
}

/// A connection failure as an errno value (see [`mcshm_route::FailureEvent::errno`]).
fn errno(err: &ConnError) -> i32 {
    match err {
        ConnError::Io(e) => mcshm_route::io_errno(e),
        ConnError::Protocol(_) => libc::EPROTO,
        ConnError::Auth(_) => libc::EACCES,
        ConnError::Tls(_) => libc::EPROTO,
    }
}
