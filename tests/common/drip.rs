//! A hostile memcached on a loopback port: it answers every request, but one byte at a time,
//! `pause` apart, so each read a client makes succeeds well within any timeout while the whole
//! reply takes far longer.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct Drip {
    address: String,
    /// Set once a whole reply was sent (the client waited for all of it).
    finished: Arc<AtomicBool>,
}

impl Drip {
    /// Answers `get`s with a value of `len` bytes, one byte every `pause`.
    pub fn start(len: usize, pause: Duration) -> Drip {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(8) {
                let Ok(mut stream) = stream else { return };
                let done = done.clone();
                std::thread::spawn(move || {
                    let mut line = String::new();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let key = line.split_whitespace().nth(1).unwrap_or("k").to_string();
                    let reply = format!("VALUE {key} 0 {len}\r\n{}\r\nEND\r\n", "x".repeat(len));
                    for byte in reply.as_bytes() {
                        if stream.write_all(&[*byte]).is_err() {
                            return; // the client gave up
                        }
                        std::thread::sleep(pause);
                    }
                    done.store(true, Ordering::SeqCst);
                });
            }
        });
        Drip { address, finished }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether a whole reply went out.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }
}
