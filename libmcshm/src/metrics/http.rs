//! The smallest HTTP/1.1 server that serves a metrics page correctly: `GET /metrics` (and
//! `HEAD`) answered 200 with the page as `text/plain; version=0.0.4`, any other path 404, any
//! other method 405, a malformed request 400. Each connection gets one answer and is closed.
//!
//! Written on std's `TcpListener`, a thread per connection: libmcshm links no async runtime,
//! and a scrape every few seconds needs none. What a hostile or broken peer can cost is bounded:
//! a request head of at most [`MAX_HEAD`] bytes (more is answered 431), [`DEADLINE`] for the
//! whole exchange (a peer that sends a byte now and then is cut off, not waited for), and at
//! most [`MAX_CONNECTIONS`] at once (more are closed unanswered). The answer is decided by a
//! pure function of the request's bytes ([`answer`]), tested without sockets.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest request head read (request line and headers).
pub const MAX_HEAD: usize = 8192;
/// Time a connection may take, from accept to the last byte of the answer.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// The content type of Prometheus' text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `page` at `/metrics` on `listener`, on a thread of its own (named `metrics`) that
/// runs as long as the process; each connection on a thread of its own.
pub fn serve(
    listener: TcpListener,
    page: impl Fn() -> String + Send + Sync + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let page = Arc::new(page);
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else {
                    // Out of descriptors, or a connection reset before accept: try again soon.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    open.fetch_sub(1, Ordering::AcqRel);
                    continue; // dropped: closed unanswered
                }
                let (page, open) = (page.clone(), open.clone());
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        exchange(stream, &*page);
                        open.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
}

/// One connection: read the request head (bounded in size and time), answer, close.
fn exchange(mut stream: TcpStream, page: &dyn Fn() -> String) {
    let deadline = Instant::now() + DEADLINE;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let reply = loop {
        if let Some(end) = head_end(&head) {
            break answer(&head[..end], page);
        }
        if head.len() > MAX_HEAD {
            break status_only(431, "Request Header Fields Too Large");
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return, // closed, or too slow: no answer
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() || stream.set_write_timeout(Some(left)).is_err() {
        return;
    }
    if stream.write_all(&reply).is_err() {
        return;
    }
    // Closing with unread bytes would reset the connection, and the peer could lose the
    // answer (a head too large was not read to its end): say we are done, then read what
    // is left for a moment, until the peer closes.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let linger = Instant::now() + Duration::from_secs(1);
    let mut left_over = 0;
    while left_over < 1 << 20 {
        let left = deadline
            .min(linger)
            .saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left_over += n,
        }
    }
}

/// Where the request head ends (after its blank line: CRLF CRLF, or LF LF from lenient
/// clients), if it has.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The whole answer (status line, headers, body) to a request `head`; `page` is made only for
/// a request of the page.
pub fn answer(head: &[u8], page: &dyn Fn() -> String) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return status_only(400, "Bad Request");
    };
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return status_only(400, "Bad Request");
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return status_only(400, "Bad Request");
    }
    let path = target.split('?').next().unwrap_or(target);
    if method != "GET" && method != "HEAD" {
        let mut reply = status_only(405, "Method Not Allowed");
        // "Allow" goes with a 405: before the blank line ending the headers.
        let at = reply.len() - 2;
        reply.splice(at..at, b"Allow: GET, HEAD\r\n".iter().copied());
        return reply;
    }
    if path != "/metrics" {
        return with_body(
            404,
            "Not Found",
            "text/plain; charset=utf-8",
            "try /metrics\n",
            method,
        );
    }
    with_body(200, "OK", CONTENT_TYPE, &page(), method)
}

fn status_only(code: u16, reason: &str) -> Vec<u8> {
    format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

fn with_body(code: u16, reason: &str, content_type: &str, body: &str, method: &str) -> Vec<u8> {
    let mut reply = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        reply.extend_from_slice(body.as_bytes());
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(head: &str) -> String {
        String::from_utf8(answer(head.as_bytes(), &|| "m 1\n".to_string())).unwrap()
    }

    #[test]
    fn get_metrics_is_the_page_and_nothing_else_is() {
        let ok = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(
            ok.ends_with("Content-Length: 4\r\nConnection: close\r\n\r\nm 1\n"),
            "{ok}"
        );
        assert!(ask("GET /metrics?x=1 HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200 OK"));
        let head = ask("HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(ask("GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(ask("GET /metricsx HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let post = ask("POST /metrics HTTP/1.1\r\n\r\n");
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );
        assert!(post.ends_with("Allow: GET, HEAD\r\n\r\n"), "{post}");
        for bad in [
            "GET\r\n\r\n",
            "GET /metrics\r\n\r\n",
            "GET metrics HTTP/1.1\r\n\r\n",
            "GET /metrics SPDY/3 x\r\n\r\n",
        ] {
            assert!(
                ask(bad).starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{bad:?}"
            );
        }
        assert!(
            String::from_utf8(answer(b"GET /\xff HTTP/1.1\r\n\r\n", &String::new))
                .unwrap()
                .starts_with("HTTP/1.1 400")
        );
    }

    #[test]
    fn the_head_ends_at_its_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn a_server_answers_over_tcp_and_refuses_an_endless_head() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        serve(listener, || "m 1\n".to_string()).unwrap();
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.ends_with("\r\n\r\nm 1\n"));
        let mut conn = TcpStream::connect(addr).unwrap();
        let _ = conn.write_all(&vec![b'a'; MAX_HEAD + 2048]);
        let mut reply = String::new();
        let _ = conn.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");
    }
}
