//! Connections to one memcached server, shared by every client connection of the proxy.
//!
//! Each server gets a few connections ([`Upstream::new`]'s `width`); requests from any number
//! of clients are queued on one of them, written in batches, and their replies read back in
//! order (memcached answers a connection's requests in the order it got them). So 500 client
//! connections cost the server a few connections, and a burst of small requests costs a few
//! writes. A connection that fails (connect, timeout, reset, a reply that is not the protocol)
//! fails exactly the requests it carried; the next request opens a new one.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use libmcshm::auth::Credentials;
use libmcshm::{Address, Timeouts};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::reply::{Frame, frame_len};
use crate::stats::ServerStats;
use std::sync::Arc;

/// Requests queued on one connection before senders wait.
const QUEUE: usize = 1024;
/// Requests written but not yet answered on one connection.
const IN_FLIGHT: usize = 512;
/// Bytes written per batch (below the kernel's socket buffers).
const BATCH: usize = 64 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// Why a request got no reply; counts against the server in the router.
#[derive(Clone, Debug)]
pub struct Failure {
    pub error: String,
    pub errno: i32,
}

impl Failure {
    fn new(error: impl Into<String>, errno: i32) -> Failure {
        Failure {
            error: error.into(),
            errno,
        }
    }

    fn io(context: &str, err: &std::io::Error) -> Failure {
        Failure::new(format!("{context}: {err}"), libmcshm::client::io_errno(err))
    }
}

type Reply = oneshot::Sender<Result<Vec<u8>, Failure>>;

struct Job {
    bytes: Vec<u8>,
    frame: Frame,
    reply: Reply,
}

/// The connections to one server.
pub struct Upstream {
    address: Address,
    timeouts: Timeouts,
    credentials: CredentialSource,
    slots: Vec<Mutex<Option<mpsc::Sender<Job>>>>,
    pub stats: Arc<ServerStats>,
}

impl Upstream {
    pub fn new(
        address: Address,
        timeouts: Timeouts,
        credentials: CredentialSource,
        width: usize,
        stats: Arc<ServerStats>,
    ) -> Upstream {
        Upstream {
            stats,
            address,
            timeouts,
            credentials,
            slots: (0..width.max(1)).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Queues one request (complete, CRLF-terminated) on connection `lane` (modulo the
    /// width): requests queued on one lane reach the server in the order they were queued,
    /// which is how a client's pipeline keeps its order through the proxy.
    pub async fn send(&self, bytes: Vec<u8>, frame: Frame, lane: usize) -> Sent {
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        let queue = self.queue(lane);
        let answer = match queue
            .send(Job {
                bytes,
                frame,
                reply,
            })
            .await
        {
            Ok(()) => Some(answer),
            Err(_) => None,
        };
        Sent {
            answer,
            started,
            stats: self.stats.clone(),
        }
    }

    /// The queue of connection `lane` (modulo the width); a new connection where the last one
    /// ended.
    fn queue(&self, lane: usize) -> mpsc::Sender<Job> {
        let n = lane % self.slots.len();
        let mut slot = self.slots[n].lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some(queue) if !queue.is_closed() => queue.clone(),
            _ => {
                let (queue, jobs) = mpsc::channel(QUEUE);
                tokio::spawn(connection(
                    self.address.clone(),
                    self.timeouts,
                    self.credentials.clone(),
                    jobs,
                    self.stats.clone(),
                ));
                *slot = Some(queue.clone());
                queue
            }
        }
    }
}

/// A request on its way: await its reply.
pub struct Sent {
    answer: Option<oneshot::Receiver<Result<Vec<u8>, Failure>>>,
    started: Instant,
    stats: Arc<ServerStats>,
}

impl Sent {
    pub async fn reply(self) -> Result<Vec<u8>, Failure> {
        let lost = || Failure::new("connection lost", libc::ECONNRESET);
        let result = match self.answer {
            Some(answer) => answer.await.unwrap_or_else(|_| Err(lost())),
            None => Err(lost()),
        };
        self.stats.record(self.started.elapsed(), result.is_ok());
        result
    }
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

async fn connect(address: &Address, timeouts: Timeouts) -> Result<(Reader, Writer), Failure> {
    let connecting = async {
        match address {
            Address::Unix { path } => {
                let stream = tokio::net::UnixStream::connect(path).await?;
                let (r, w) = stream.into_split();
                Ok::<(Reader, Writer), std::io::Error>((Box::new(r), Box::new(w)))
            }
            other => {
                let port = other.port().unwrap_or(0);
                let stream = match other {
                    Address::Ipv4 { ip, .. } => tokio::net::TcpStream::connect((*ip, port)).await,
                    Address::Ipv6 { ip, .. } => tokio::net::TcpStream::connect((*ip, port)).await,
                    _ => tokio::net::TcpStream::connect((other.host().as_str(), port)).await,
                }?;
                stream.set_nodelay(true)?;
                let (r, w) = stream.into_split();
                Ok::<(Reader, Writer), std::io::Error>((Box::new(r), Box::new(w)))
            }
        }
    };
    match tokio::time::timeout(timeouts.connect, connecting).await {
        Ok(Ok(halves)) => Ok(halves),
        Ok(Err(err)) => Err(Failure::io("connect", &err)),
        Err(_) => Err(Failure::new(
            format!("connect: timed out after {:?}", timeouts.connect),
            libc::ETIMEDOUT,
        )),
    }
}

/// Where a new connection finds the domain's credentials (`mcadmin auth`): read for each new
/// connection, so a change applies without a restart.
pub type CredentialSource =
    Arc<dyn Fn() -> libmcshm::Result<Option<Credentials>> + Send + Sync + 'static>;

/// memcached's ASCII authentication (`set` of "user password") on a new connection, before
/// anything else is sent, when the domain has credentials.
async fn authenticate(
    reader: &mut Reader,
    writer: &mut Writer,
    credentials: &CredentialSource,
    timeouts: Timeouts,
) -> Result<(), Failure> {
    let credentials = match credentials() {
        Ok(Some(credentials)) => credentials,
        Ok(None) => return Ok(()),
        Err(err) => return Err(Failure::new(err.to_string(), libc::EACCES)),
    };
    let exchange = async {
        writer.write_all(&credentials.request()).await?;
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\n") && answer.len() < 512 {
            if reader.read(&mut byte).await? == 0 {
                break;
            }
            answer.push(byte[0]);
        }
        Ok::<Vec<u8>, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout(timeouts.io, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(err)) => return Err(Failure::io("authenticate", &err)),
        Err(_) => {
            return Err(Failure::new(
                format!("authenticate: timed out after {:?}", timeouts.io),
                libc::ETIMEDOUT,
            ));
        }
    };
    match answer.as_slice() {
        b"STORED\r\n" => Ok(()),
        other => Err(Failure::new(
            format!(
                "the server refused the credentials of user '{}' ({}): check them with `mcadmin auth`",
                credentials.user,
                String::from_utf8_lossy(other).trim_end()
            ),
            libc::EACCES,
        )),
    }
}

/// One server connection: batches queued requests into writes, hands replies back in order,
/// and on any failure fails what it carried and ends (its queue closes with it).
async fn connection(
    address: Address,
    timeouts: Timeouts,
    credentials: CredentialSource,
    mut jobs: mpsc::Receiver<Job>,
    stats: Arc<ServerStats>,
) {
    let connected = async {
        let (mut reader, mut writer) = connect(&address, timeouts).await?;
        authenticate(&mut reader, &mut writer, &credentials, timeouts).await?;
        Ok((reader, writer))
    };
    let (mut reader, mut writer) = match connected.await {
        Ok(halves) => halves,
        Err(failure) => return fail_all(&mut jobs, VecDeque::new(), failure),
    };
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut in_flight: VecDeque<(Frame, Reply, Instant)> = VecDeque::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    // One timer for the connection, moved to the oldest request's deadline. (A new timer per
    // request would be earlier than the runtime's next wake-up each time, and cost a wake-up
    // write of the runtime's eventfd per request.)
    let timer = tokio::time::sleep(timeouts.io);
    tokio::pin!(timer);
    let mut armed = None;
    let mut closing = false;
    let failure = loop {
        if let Some((_, _, sent)) = in_flight.front() {
            let deadline = *sent + timeouts.io;
            if armed != Some(deadline) {
                timer.as_mut().reset(deadline.into());
                armed = Some(deadline);
            }
        }
        tokio::select! {
            job = jobs.recv(), if !closing && in_flight.len() < IN_FLIGHT => {
                let Some(job) = job else {
                    // The server left the table: answer what is in flight, then close.
                    closing = true;
                    if in_flight.is_empty() {
                        break None;
                    }
                    continue;
                };
                batch.clear();
                let now = Instant::now();
                let mut next = Some(job);
                while let Some(job) = next.take() {
                    batch.extend_from_slice(&job.bytes);
                    in_flight.push_back((job.frame, job.reply, now));
                    if batch.len() < BATCH && in_flight.len() < IN_FLIGHT {
                        next = jobs.try_recv().ok();
                    }
                }
                if let Err(failure) = write_batch(&mut writer, &batch, timeouts.io).await {
                    break Some(failure);
                }
            }
            read = reader.read(&mut chunk) => {
                match read {
                    Ok(0) => break Some(Failure::new("the server closed the connection", libc::ECONNRESET)),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(err) => break Some(Failure::io("read", &err)),
                }
                if let Err(failure) = deliver(&mut buf, &mut in_flight) {
                    break Some(failure);
                }
                if closing && in_flight.is_empty() {
                    break None;
                }
            }
            _ = &mut timer, if !in_flight.is_empty() => {
                break Some(Failure::new(
                    format!("no reply within {:?}", timeouts.io),
                    libc::ETIMEDOUT,
                ));
            }
        }
    };
    stats.connections.fetch_sub(1, Ordering::Relaxed);
    if let Some(failure) = failure {
        fail_all(&mut jobs, in_flight, failure);
    }
}

/// Writes a batch; a timer only when the socket cannot take it at once (the common case
/// needs none).
async fn write_batch(writer: &mut Writer, batch: &[u8], limit: Duration) -> Result<(), Failure> {
    let mut write = std::pin::pin!(writer.write_all(batch));
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    let result = match first {
        Poll::Ready(result) => result,
        Poll::Pending => match tokio::time::timeout(limit, write).await {
            Ok(result) => result,
            Err(_) => return Err(Failure::new("write: timed out", libc::ETIMEDOUT)),
        },
    };
    result.map_err(|err| Failure::io("write", &err))
}

/// Hands every complete reply in `buf` to its request.
fn deliver(
    buf: &mut Vec<u8>,
    in_flight: &mut VecDeque<(Frame, Reply, Instant)>,
) -> Result<(), Failure> {
    let mut at = 0;
    while at < buf.len() {
        let Some((frame, _, _)) = in_flight.front() else {
            return Err(Failure::new(
                "the server sent a reply nobody asked for",
                libc::EPROTO,
            ));
        };
        match frame_len(*frame, &buf[at..]) {
            Ok(Some(len)) => {
                let (_, reply, _) = in_flight.pop_front().expect("checked above");
                let _ = reply.send(Ok(buf[at..at + len].to_vec()));
                at += len;
            }
            Ok(None) => break,
            Err(malformed) => return Err(Failure::new(malformed.0, libc::EPROTO)),
        }
    }
    buf.drain(..at);
    Ok(())
}

fn fail_all(
    jobs: &mut mpsc::Receiver<Job>,
    in_flight: VecDeque<(Frame, Reply, Instant)>,
    failure: Failure,
) {
    jobs.close();
    for (_, reply, _) in in_flight {
        let _ = reply.send(Err(failure.clone()));
    }
    while let Ok(job) = jobs.try_recv() {
        let _ = job.reply.send(Err(failure.clone()));
    }
}
