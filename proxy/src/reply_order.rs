//! A client's replies in the order it sent its commands. Commands run concurrently (a direct
//! request on one server, a job on several, an answer the session gives itself) and finish in
//! any order; each has a slot, numbered in the order the client sent it, and a reply is written
//! out only once every reply before it is. Pure: the session hands it the bytes and takes the
//! output; no socket, no clock.

use std::collections::VecDeque;

/// What becomes of a reply before the client gets it.
pub enum Then {
    Plain,
    /// Turned into something else (a binary response).
    Map(Box<dyn FnOnce(Vec<u8>) -> Vec<u8>>),
}

enum Slot {
    Done(Vec<u8>),
    Waiting(Then),
}

/// A reply for a slot: borrowed from a server connection's buffer, or owned.
pub enum Reply<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

/// The slots of the commands a client has sent and not yet been answered, oldest first.
#[derive(Default)]
pub struct ReplyOrder {
    slots: VecDeque<Slot>,
    /// The number of the oldest slot.
    head_seq: u64,
}

impl ReplyOrder {
    /// The number the next slot will have.
    pub fn next_seq(&self) -> u64 {
        self.head_seq + self.slots.len() as u64
    }

    /// Opens the next slot ([`ReplyOrder::next_seq`]), its reply to become what `then` says.
    pub fn open(&mut self, then: Then) -> u64 {
        let seq = self.next_seq();
        self.slots.push_back(Slot::Waiting(then));
        seq
    }

    /// Commands waiting for their reply, or for an older one to be written.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The reply of slot `seq`: appended to `out` at once when it is the oldest (a borrowed
    /// reply is copied once, straight from the server's buffer), else kept until those before
    /// it are answered; then every finished slot after it goes out too. A slot that is not
    /// waiting (answered already, or never opened) is left as it is.
    pub fn complete(&mut self, seq: u64, reply: Reply<'_>, out: &mut Vec<u8>) {
        let Some(at) = seq.checked_sub(self.head_seq).map(|n| n as usize) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(at) else {
            return;
        };
        let Slot::Waiting(then) = std::mem::replace(slot, Slot::Done(Vec::new())) else {
            return;
        };
        match (then, reply) {
            (Then::Plain, Reply::Borrowed(bytes)) if at == 0 => {
                out.extend_from_slice(bytes);
                self.slots.pop_front();
                self.head_seq += 1;
            }
            (Then::Plain, Reply::Borrowed(bytes)) => *slot = Slot::Done(bytes.to_vec()),
            (Then::Plain, Reply::Owned(bytes)) => *slot = Slot::Done(bytes),
            (Then::Map(map), Reply::Borrowed(bytes)) => *slot = Slot::Done(map(bytes.to_vec())),
            (Then::Map(map), Reply::Owned(bytes)) => *slot = Slot::Done(map(bytes)),
        }
        while let Some(Slot::Done(bytes)) = self.slots.front() {
            out.extend_from_slice(bytes);
            self.slots.pop_front();
            self.head_seq += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_go_out_in_the_order_their_commands_came() {
        let (mut order, mut out) = (ReplyOrder::default(), Vec::new());
        let (a, b, c) = (
            order.open(Then::Plain),
            order.open(Then::Plain),
            order.open(Then::Plain),
        );
        assert_eq!((a, b, c), (0, 1, 2));
        order.complete(c, Reply::Owned(b"C".to_vec()), &mut out);
        order.complete(b, Reply::Borrowed(b"B"), &mut out);
        assert!(out.is_empty(), "the first is still waiting");
        order.complete(a, Reply::Borrowed(b"A"), &mut out);
        assert_eq!(out, b"ABC");
        assert!(order.is_empty());
        assert_eq!(order.next_seq(), 3, "numbers go on");
    }

    #[test]
    fn a_mapped_reply_is_mapped_and_stray_completions_are_ignored() {
        let (mut order, mut out) = (ReplyOrder::default(), Vec::new());
        let first = order.open(Then::Map(Box::new(|mut r| {
            r.insert(0, b'>');
            r
        })));
        let second = order.open(Then::Plain);
        order.complete(first, Reply::Borrowed(b"x"), &mut out);
        assert_eq!(out, b">x");
        order.complete(first, Reply::Borrowed(b"again"), &mut out);
        order.complete(99, Reply::Borrowed(b"never opened"), &mut out);
        assert_eq!(out, b">x", "answered already, or no such slot: nothing");
        assert_eq!(order.len(), 1);
        order.complete(second, Reply::Owned(b"y".to_vec()), &mut out);
        assert_eq!(out, b">xy");
    }
}
