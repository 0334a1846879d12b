//! The read buffer of a connection: bytes read and not yet consumed, in one initialised `Vec`
//! read into directly (no copy through a scratch buffer), compacted when its free end runs
//! short, and given back when a large value has passed.

use std::io::{self, Read};

#[derive(Default)]
pub struct Inbox {
    buf: Vec<u8>,
    head: usize,
    tail: usize,
}

impl Inbox {
    /// The bytes read and not consumed.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.head..self.tail]
    }

    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// Drops the first `n` bytes of [`Inbox::data`].
    pub fn consume(&mut self, n: usize) {
        self.head = self.head.saturating_add(n).min(self.tail);
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
        }
    }

    /// One read of at most `room` bytes (at least half of it free): the bytes read (0 at the
    /// end of the stream), and whether they filled the buffer (more may be waiting).
    pub fn read_from(&mut self, source: &mut impl Read, room: usize) -> io::Result<(usize, bool)> {
        if self.buf.len() - self.tail < room / 2 {
            if self.head > 0 {
                self.buf.copy_within(self.head..self.tail, 0);
                self.tail -= self.head;
                self.head = 0;
            }
            if self.buf.len() - self.tail < room / 2 {
                self.buf.resize(self.tail + room, 0);
            }
        }
        let free = self.buf.len() - self.tail;
        let n = source.read(&mut self.buf[self.tail..])?;
        self.tail += n;
        Ok((n, n == free))
    }

    /// Gives back a buffer grown past `keep` bytes once it is empty (a large value passed).
    pub fn shrink_when_empty(&mut self, keep: usize) {
        if self.is_empty() && self.buf.len() > keep {
            self.buf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_consumes_and_compacts() {
        let mut inbox = Inbox::default();
        let mut source: &[u8] = b"get a\r\nget b\r\n";
        assert_eq!(inbox.read_from(&mut source, 16).unwrap(), (14, false));
        assert_eq!(inbox.data(), b"get a\r\nget b\r\n");
        inbox.consume(7);
        assert_eq!(inbox.data(), b"get b\r\n");
        let mut more: &[u8] = b"get c\r\n";
        inbox.read_from(&mut more, 16).unwrap();
        assert_eq!(inbox.data(), b"get b\r\nget c\r\n");
        inbox.consume(14);
        assert!(inbox.is_empty());
        inbox.shrink_when_empty(4);
        assert!(inbox.buf.is_empty());
    }

    #[test]
    fn consuming_everything_with_a_partly_consumed_buffer_empties_it() {
        let mut inbox = Inbox::default();
        let mut source: &[u8] = b"get a\r\nget b";
        inbox.read_from(&mut source, 16).unwrap();
        inbox.consume(7);
        inbox.consume(usize::MAX);
        assert!(inbox.is_empty());
    }
}
