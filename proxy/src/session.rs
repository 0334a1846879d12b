//! One client connection: commands are read and parsed as they arrive, each is started at
//! once (so requests pipelined on one connection run concurrently on the servers), and the
//! replies are written strictly in the order the commands came. Memory per connection is
//! bounded: one command line and one value of input, and at most [`Settings::pipeline`]
//! commands between reading and answering (beyond that the session stops reading, and TCP
//! pushes back on the client).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::command::{Command, Limits, Parsed, parse};
use std::task::{Context, Poll, Waker};

use crate::service::{Pending, Service};

/// What every session of the proxy obeys.
#[derive(Clone, Debug)]
pub struct Settings {
    /// With `--client-auth`: the credentials a client must present before any command (SASL
    /// PLAIN in binary, memcached's ASCII authentication in text).
    pub client_auth: Option<Arc<crate::client_auth::ClientAuth>>,
    pub limits: Limits,
    /// A client that sent part of a command and nothing more for this long is disconnected.
    pub client_timeout: Duration,
    /// A client with nothing pending and silent for this long is disconnected (None: never).
    pub idle_timeout: Option<Duration>,
    /// Commands read but not yet answered, per connection.
    pub pipeline: usize,
}

/// The version mcproxy answers: memcached's numbering first, for clients that parse it.
pub const VERSION_REPLY: &str =
    concat!("VERSION 1.6.0 mcproxy-", env!("CARGO_PKG_VERSION"), "\r\n");

/// Bytes read from a client at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Room an idle connection keeps for its next command: most commands are a line of a few dozen
/// bytes, so 2 000 idle clients cost 8 MB, not the 64 MB of full chunks.
const IDLE_ROOM: usize = 4 * 1024;
/// Reply bytes gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// Serves one client until it quits, disconnects, times out, or the proxy shuts down (then
/// the commands already read are answered first).
pub async fn serve<R, W>(
    mut reader: R,
    writer: W,
    service: Arc<Service>,
    settings: Settings,
    lane: usize,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Send + 'static,
{
    let (replies, pending) = mpsc::channel(settings.pipeline.max(1));
    let writing = tokio::spawn(write_replies(writer, pending));
    let mut buf: Vec<u8> = Vec::new();
    let mut swallow = 0usize;
    // The protocol, from the connection's first byte: 0x80 is the binary protocol's magic.
    let mut binary = None;
    // When the command in `buf` began to arrive: --client-timeout bounds the whole command,
    // however its bytes trickle in (a client sending a byte a second keeps no connection).
    let mut partial_since: Option<tokio::time::Instant> = None;
    // With --client-auth, nothing but authentication is served until it succeeds.
    let auth = settings.client_auth.clone();
    let mut authenticated = auth.is_none();
    'session: loop {
        let mut start = 0;
        loop {
            if swallow > 0 {
                let n = swallow.min(buf.len() - start);
                start += n;
                swallow -= n;
                if swallow > 0 {
                    break;
                }
            }
            if binary.is_none() && start < buf.len() {
                binary = Some(buf[start] == 0x80);
            }
            if binary == Some(true) {
                let reply = match crate::binary::parse(&buf[start..], settings.limits) {
                    crate::binary::Parsed::Incomplete => break,
                    crate::binary::Parsed::Request(request, action, used)
                        if authenticated && crate::binary::is_quiet_get(&request, &action) =>
                    {
                        start += used;
                        service.stats.commands.fetch_add(1, Ordering::Relaxed);
                        // A run of quiet gets (libmemcached's mget) is one multi-get.
                        let (mut run, mut keys) = (vec![request], quiet_get_keys(action));
                        while run.len() < QUIET_GET_RUN {
                            match crate::binary::parse(&buf[start..], settings.limits) {
                                crate::binary::Parsed::Request(r, a, used)
                                    if crate::binary::is_quiet_get(&r, &a) =>
                                {
                                    start += used;
                                    service.stats.commands.fetch_add(1, Ordering::Relaxed);
                                    keys.extend(quiet_get_keys(a));
                                    run.push(r);
                                }
                                _ => break,
                            }
                        }
                        let command = Command::Get {
                            verb: crate::command::GetVerb::Gets,
                            exptime: None,
                            keys,
                        };
                        service
                            .start(command, lane)
                            .await
                            .then(move |text| crate::binary::answer_quiet_gets(&run, &text))
                    }
                    crate::binary::Parsed::Request(request, action, used) => {
                        start += used;
                        service.stats.commands.fetch_add(1, Ordering::Relaxed);
                        let who = (auth.as_deref(), &mut authenticated);
                        match binary_dispatch(&service, request, action, lane, who).await {
                            Ok(reply) => reply,
                            Err(last) => {
                                if let Some(reply) = last {
                                    let _ = replies.send(reply).await;
                                }
                                break 'session;
                            }
                        }
                    }
                    crate::binary::Parsed::Swallow { reply, used, skip } => {
                        start += used;
                        swallow = skip;
                        service.stats.client_errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "mcproxy: binary request of {} bytes refused: value too large",
                            used + skip
                        );
                        Pending::Ready(reply)
                    }
                    crate::binary::Parsed::Close(reply) => {
                        service.stats.client_errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "mcproxy: malformed binary request (bad magic or lengths): connection closed"
                        );
                        let _ = replies.send(Pending::Ready(reply)).await;
                        break 'session;
                    }
                };
                if replies.send(reply).await.is_err() {
                    break 'session;
                }
                continue;
            }
            let reply = match parse(&buf[start..], settings.limits) {
                Parsed::Incomplete => break,
                Parsed::Command(command, used) => {
                    start += used;
                    service.stats.commands.fetch_add(1, Ordering::Relaxed);
                    if let (false, Some(auth)) = (authenticated, auth.as_deref()) {
                        match ascii_auth(auth, command) {
                            Some((reply, ok)) => {
                                authenticated = ok;
                                Pending::Ready(reply.to_vec())
                            }
                            None => break 'session,
                        }
                    } else {
                        match dispatch(&service, command, lane).await {
                            Some(reply) => reply,
                            None => break 'session,
                        }
                    }
                }
                Parsed::Reply(reply, used) => {
                    start += used;
                    service.stats.client_errors.fetch_add(1, Ordering::Relaxed);
                    Pending::Ready(reply.to_vec())
                }
                Parsed::Swallow { reply, used, skip } => {
                    start += used;
                    swallow = skip;
                    service.stats.client_errors.fetch_add(1, Ordering::Relaxed);
                    Pending::Ready(reply.to_vec())
                }
                Parsed::Close(reply) => {
                    service.stats.client_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = replies.send(Pending::Ready(reply.to_vec())).await;
                    break 'session;
                }
            };
            if replies.send(reply).await.is_err() {
                break 'session;
            }
        }
        buf.drain(..start);
        if start > 0 {
            partial_since = None; // a command (or skipped bytes) went through: a new deadline
        }
        if *shutdown.borrow() {
            break;
        }
        let wait = match buf.is_empty() && swallow == 0 {
            true => {
                partial_since = None;
                settings.idle_timeout
            }
            false => {
                let since = *partial_since.get_or_insert_with(tokio::time::Instant::now);
                Some(settings.client_timeout.saturating_sub(since.elapsed()))
            }
        };
        // Read straight into the command buffer: a little room while it is empty, a chunk at a
        // time while a command is arriving; a large value's room is given back once it is done.
        if buf.is_empty() && buf.capacity() > READ_CHUNK {
            buf = Vec::new();
        }
        let room = if buf.is_empty() {
            IDLE_ROOM
        } else {
            READ_CHUNK
        };
        if buf.capacity() - buf.len() < room / 2 {
            buf.reserve(room);
        }
        let read = async {
            match wait {
                Some(limit) => tokio::time::timeout(limit, reader.read_buf(&mut buf)).await,
                None => Ok(reader.read_buf(&mut buf).await),
            }
        };
        tokio::select! {
            read = read => match read {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => {
                    if !buf.is_empty() {
                        service.stats.client_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(replies);
    let _ = writing.await;
}

/// Starts a command: answered here, or queued for the servers on the session's `lane`.
/// `None`: the client quit.
async fn dispatch(service: &Arc<Service>, command: Command, lane: usize) -> Option<Pending> {
    let ready = |bytes: &[u8]| Some(Pending::Ready(bytes.to_vec()));
    match command {
        Command::Quit => None,
        Command::Version => ready(VERSION_REPLY.as_bytes()),
        Command::Verbosity { noreply: true } => ready(b""),
        Command::Verbosity { noreply: false } => ready(b"OK\r\n"),
        Command::MetaNoop => ready(b"MN\r\n"),
        Command::Stats { group: None } => Some(Pending::Ready(service.stats.memcached_text())),
        Command::Stats { group: Some(group) } => Some(Pending::Ready(
            format!(
                "CLIENT_ERROR mcproxy answers 'stats' with its own counters; for 'stats {}' ask a server directly\r\n",
                group.chars().filter(|c| !c.is_control()).collect::<String>()
            )
            .into_bytes(),
        )),
        Command::ConfigGetCluster => Some(Pending::Ready(service.cluster_config())),
        other => Some(service.start(other, lane).await),
    }
}

/// Quiet gets routed as one multi-get at most (a longer run is several).
const QUIET_GET_RUN: usize = 1000;

/// The key of a quiet get's action.
fn quiet_get_keys(action: crate::binary::Action) -> Vec<Vec<u8>> {
    match action {
        crate::binary::Action::Route(Command::Get { keys, .. }) => keys,
        _ => Vec::new(),
    }
}

/// Starts a binary request (see [`crate::binary`]): its text command routed as any other, the
/// text reply turned into the binary response. `Err`: the client quits (with the response to
/// send first, unless quiet).
async fn binary_dispatch(
    service: &Arc<Service>,
    request: crate::binary::Request,
    action: crate::binary::Action,
    lane: usize,
    (auth, authenticated): (Option<&crate::client_auth::ClientAuth>, &mut bool),
) -> Result<Pending, Option<Pending>> {
    use crate::binary::{self, Action};
    match action {
        Action::Quit => Err((!request.quiet).then(|| {
            Pending::Ready(binary::response(
                request.opcode,
                0,
                request.opaque,
                0,
                &[],
                &[],
                &[],
            ))
        })),
        Action::Sasl {
            list,
            mechanism,
            data,
        } => {
            let (reply, ok) = binary::sasl(&request, auth, list, &mechanism, &data);
            if !list && !ok {
                eprintln!("mcproxy: a client's SASL authentication failed");
            }
            *authenticated |= ok;
            Ok(Pending::Ready(reply))
        }
        _ if !*authenticated => Ok(Pending::Ready(binary::error(
            &request,
            binary::status::AUTH_ERROR,
            "Auth failure: authenticate first (SASL PLAIN)",
        ))),
        Action::Answer(bytes) => {
            let status = bytes
                .get(6..8)
                .map_or(0, |s| u16::from_be_bytes([s[0], s[1]]));
            match status {
                binary::status::UNKNOWN => eprintln!(
                    "mcproxy: binary opcode 0x{:02x} is not supported: answered 'unknown command'",
                    request.opcode
                ),
                binary::status::INVALID => eprintln!(
                    "mcproxy: binary opcode 0x{:02x} with invalid arguments (key, extras or value): answered 'invalid arguments'",
                    request.opcode
                ),
                _ => {}
            }
            Ok(Pending::Ready(bytes))
        }
        Action::Stats => Ok(Pending::Ready(binary::stats(
            &request,
            &service.stats.memcached_text(),
        ))),
        Action::Route(command) => {
            let again = request.initial.map(|_| command.clone());
            let pending = service.start(command, lane).await;
            let Some((initial, exptime)) = request.initial else {
                return Ok(pending.then(move |text| binary::answer(&request, &text)));
            };
            // Increment with an initial value: a missing counter is created with it (`add`,
            // so that of two clients creating it one wins and the other increments).
            let service = service.clone();
            Ok(Pending::Later(Box::pin(async move {
                let text = resolve(pending).await;
                if !text.starts_with(b"NOT_FOUND") {
                    return binary::answer(&request, &text);
                }
                let add = Command::Store {
                    verb: "add",
                    key: request.key.clone(),
                    flags: 0,
                    exptime,
                    cas: None,
                    value: initial.to_string().into_bytes(),
                    noreply: false,
                };
                let added = resolve(service.start(add, lane).await).await;
                if added.starts_with(b"STORED") {
                    return binary::answer(&request, format!("{initial}\r\n").as_bytes());
                }
                match (added.starts_with(b"NOT_STORED"), again) {
                    // Created by another client meanwhile: increment it.
                    (true, Some(again)) => {
                        let text = resolve(service.start(again, lane).await).await;
                        binary::answer(&request, &text)
                    }
                    _ => binary::answer(&request, &added),
                }
            })))
        }
    }
}

/// A text command before the client authenticated (memcached's ASCII authentication, as
/// `memcached -Y` takes it): a `set` whose value is `user password` authenticates; anything
/// else is refused. The reply, and whether the client is now authenticated; `None`: it quit.
fn ascii_auth(
    auth: &crate::client_auth::ClientAuth,
    command: Command,
) -> Option<(&'static [u8], bool)> {
    match command {
        Command::Quit => None,
        Command::Store { value, .. } if auth.check_ascii(&value) => Some((b"STORED\r\n", true)),
        Command::Store { .. } => {
            eprintln!("mcproxy: a client's authentication failed");
            Some((b"CLIENT_ERROR authentication failure\r\n", false))
        }
        _ => Some((b"CLIENT_ERROR unauthenticated\r\n", false)),
    }
}

/// Writes replies in command order, gathering those already done into one write.
async fn write_replies<W: AsyncWrite>(writer: W, mut pending: mpsc::Receiver<Pending>) {
    let mut writer = std::pin::pin!(writer);
    let mut out = Vec::new(); // grows to what the replies need (WRITE_BATCH and one reply)
    let mut next = pending.recv().await;
    while let Some(reply) = next.take() {
        out.extend_from_slice(&resolve(reply).await);
        while out.len() < WRITE_BATCH {
            match pending.try_recv() {
                Ok(Pending::Ready(bytes)) => out.extend_from_slice(&bytes),
                Ok(Pending::Later(mut work)) => {
                    // Done already? One poll tells; if not, it is awaited after this write.
                    let mut peek = Context::from_waker(Waker::noop());
                    match work.as_mut().poll(&mut peek) {
                        Poll::Ready(bytes) => out.extend_from_slice(&bytes),
                        Poll::Pending => {
                            next = Some(Pending::Later(work));
                            break;
                        }
                    }
                }
                Err(_) => break,
            }
        }
        if !out.is_empty() && writer.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
        if next.is_none() {
            next = pending.recv().await;
        }
    }
    let _ = writer.shutdown().await;
}

async fn resolve(reply: Pending) -> Vec<u8> {
    match reply {
        Pending::Ready(bytes) => bytes,
        Pending::Later(work) => work.await,
    }
}
