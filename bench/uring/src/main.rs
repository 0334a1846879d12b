//! A measured try of io_uring for mcproxy's data path (issue 20). The same minimal relay, one
//! thread, each client connection paired with its own connection to one memcached, bytes
//! copied both ways as they come:
//!
//!   uring-try epoll LISTEN UPSTREAM   readiness (mio over epoll) and a read/write system call
//!                                     per message, as mcproxy's event loop does
//!   uring-try uring LISTEN UPSTREAM   completions (tokio-uring): reads and writes queued and
//!                                     submitted together, one io_uring_enter per loop turn
//!
//! Neither routes nor parses: the difference between them is the I/O mechanism alone, which is
//! what io_uring would change in mcproxy. bench/uring.sh runs both beside mcproxy and twemproxy.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: uring-try epoll|uring LISTEN UPSTREAM";
    let (Some(mode), Some(listen), Some(upstream)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN is IP:PORT");
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM is IP:PORT");
    match mode.as_str() {
        "epoll" => epoll(listen, upstream),
        "uring" => uring(listen, upstream),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}

/// One side of a pair: its socket, and bytes read from the other side not yet written to it.
struct Side {
    stream: mio::net::TcpStream,
    pending: Vec<u8>,
}

fn epoll(listen: SocketAddr, upstream: SocketAddr) {
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().expect("epoll");
    let mut listener = mio::net::TcpListener::bind(listen).expect("listen");
    println!("listening on {}", listener.local_addr().expect("bound"));
    poll.registry()
        .register(&mut listener, Token(usize::MAX), Interest::READABLE)
        .expect("register");
    // Token 2n: a client; 2n + 1: its upstream.
    let mut sides: Vec<Option<Side>> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        poll.poll(&mut events, None).expect("poll");
        for event in &events {
            let Token(t) = event.token();
            if t == usize::MAX {
                while let Ok((client, _)) = listener.accept() {
                    let _ = client.set_nodelay(true);
                    let server = mio::net::TcpStream::connect(upstream).expect("connect");
                    let _ = server.set_nodelay(true);
                    let n = sides.len();
                    sides.push(Some(Side { stream: client, pending: Vec::new() }));
                    sides.push(Some(Side { stream: server, pending: Vec::new() }));
                    for (i, side) in sides[n..].iter_mut().enumerate() {
                        let side = side.as_mut().expect("just made");
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        poll.registry().register(&mut side.stream, Token(n + i), interest).expect("register");
                    }
                }
                continue;
            }
            let (from, to) = (t, t ^ 1);
            if event.is_writable()
                && let Some(Some(side)) = sides.get_mut(from)
            {
                flush(side);
            }
            if !(event.is_readable() || event.is_read_closed()) {
                continue;
            }
            let Some(Some(side)) = sides.get_mut(from) else { continue };
            let mut got = Vec::new();
            let mut closed = false;
            loop {
                match side.stream.read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if let Some(Some(other)) = sides.get_mut(to) {
                other.pending.extend_from_slice(&got);
                flush(other);
            }
            if closed {
                sides[from] = None;
                sides[to] = None;
            }
        }
    }
}

/// Writes what a side has pending, as far as its socket takes it.
fn flush(side: &mut Side) {
    while !side.pending.is_empty() {
        match side.stream.write(&side.pending) {
            Ok(n) => {
                side.pending.drain(..n);
            }
            Err(_) => return,
        }
    }
}

fn uring(listen: SocketAddr, upstream: SocketAddr) {
    use std::rc::Rc;
    tokio_uring::start(async move {
        let listener = tokio_uring::net::TcpListener::bind(listen).expect("listen");
        println!("listening on {}", listener.local_addr().expect("bound"));
        loop {
            let Ok((client, _)) = listener.accept().await else { continue };
            let _ = client.set_nodelay(true);
            let Ok(server) = tokio_uring::net::TcpStream::connect(upstream).await else { continue };
            let _ = server.set_nodelay(true);
            let (client, server) = (Rc::new(client), Rc::new(server));
            tokio_uring::spawn(copy(client.clone(), server.clone()));
            tokio_uring::spawn(copy(server, client));
        }
    });
}

/// Copies bytes from one stream to the other until either ends.
async fn copy(from: std::rc::Rc<tokio_uring::net::TcpStream>, to: std::rc::Rc<tokio_uring::net::TcpStream>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (read, back) = from.read(buf).await;
        buf = back;
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = buf[..n].to_vec();
        let (written, _) = to.write_all(chunk).await;
        if written.is_err() {
            return;
        }
    }
}
