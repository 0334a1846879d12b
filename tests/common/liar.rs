//! A fake memcached on a loopback port that answers every request line with the same reply
//! (say, a `SERVER_ERROR` longer than any field of the table), for the paths that must survive
//! whatever a server says. It serves a bounded number of connections, each for a bounded time.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

pub struct Liar {
    address: String,
}

impl Liar {
    /// Answers each line of the first 64 connections with `reply` (which ends with CRLF), for
    /// at most a minute each.
    pub fn start(reply: String) -> Liar {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(64) {
                let Ok(mut stream) = stream else { return };
                let reply = reply.clone();
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    while Instant::now() < deadline {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if stream.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Liar { address }
    }

    pub fn address(&self) -> &str {
        &self.address
    }
}
