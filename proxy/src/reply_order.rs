//! A client's replies in the order it sent its commands. Commands run concurrently (a direct
//! request on one server, a job on several, an answer the session gives itself) and finish in
//! any order; each has a slot, numbered in the order the client sent it, and a reply is written
//! out only once every reply before it is. Pure: the session hands it the bytes and takes the
//! output; no socket, no clock.
//!
//! It also says how many reply bytes the client is owed ([`ReplyOrder::owed`]): those held
//! here, and an estimate for each reply still to come (the size of a reply is known only when
//! it arrives, and the upstream connections are read whatever a client does). The session stops
//! reading a client's commands past its bound, so one client that does not read its replies
//! cannot grow the proxy without limit. The estimate starts high (a slow start: a new client's
//! first burst is cut to a few commands) and follows the sizes seen: each reply sets it to the
//! larger of its own size and 7/8 of the estimate before.

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
pub struct ReplyOrder {
    slots: VecDeque<Slot>,
    /// The number of the oldest slot.
    head_seq: u64,
    /// Bytes of the replies held until an older one is answered.
    held: usize,
    /// Slots answered and held.
    done: usize,
    /// The bytes a reply still to come is counted as.
    estimate: usize,
}

impl ReplyOrder {
    /// No slot yet; a reply still to come counts as `first_estimate` bytes until replies are
    /// seen.
    pub fn new(first_estimate: usize) -> ReplyOrder {
        ReplyOrder {
            slots: VecDeque::new(),
            head_seq: 0,
            held: 0,
            done: 0,
            estimate: first_estimate,
        }
    }

    /// The reply bytes the client is owed, `unwritten` being those already in its output:
    /// plus those held here, plus the estimate for each reply still to come.
    pub fn owed(&self, unwritten: usize) -> usize {
        let waiting = self.slots.len() - self.done;
        unwritten + self.held + waiting.saturating_mul(self.estimate)
    }

    fn saw_reply(&mut self, len: usize) {
        self.estimate = len.max(self.estimate - self.estimate / 8);
    }

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
        let len = match &reply {
            Reply::Borrowed(bytes) => bytes.len(),
            Reply::Owned(bytes) => bytes.len(),
        };
        let held = match (then, reply) {
            (Then::Plain, Reply::Borrowed(bytes)) if at == 0 => {
                out.extend_from_slice(bytes);
                self.slots.pop_front();
                self.head_seq += 1;
                None
            }
            (Then::Plain, Reply::Borrowed(bytes)) => Some(bytes.to_vec()),
            (Then::Plain, Reply::Owned(bytes)) => Some(bytes),
            (Then::Map(map), Reply::Borrowed(bytes)) => Some(map(bytes.to_vec())),
            (Then::Map(map), Reply::Owned(bytes)) => Some(map(bytes)),
        };
        self.saw_reply(len);
        if let Some(bytes) = held {
            self.held += bytes.len();
            self.done += 1;
            self.slots[at] = Slot::Done(bytes);
        }
        while let Some(Slot::Done(bytes)) = self.slots.front() {
            out.extend_from_slice(bytes);
            self.held -= bytes.len();
            self.done -= 1;
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
        let (mut order, mut out) = (ReplyOrder::new(10), Vec::new());
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
        let (mut order, mut out) = (ReplyOrder::new(10), Vec::new());
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

    #[test]
    fn a_client_is_owed_what_is_held_and_an_estimate_per_reply_to_come() {
        let (mut order, mut out) = (ReplyOrder::new(1000), Vec::new());
        assert_eq!(order.owed(5), 5, "nothing in flight: what is unwritten");
        let slots: Vec<u64> = (0..3).map(|_| order.open(Then::Plain)).collect();
        assert_eq!(order.owed(0), 3000, "a slow start: the first estimate each");
        order.complete(slots[2], Reply::Owned(vec![b'c'; 4000]), &mut out);
        assert_eq!(
            order.owed(0),
            4000 + 2 * 4000,
            "held, and the estimate follows the size"
        );
        order.complete(slots[1], Reply::Borrowed(&[b'b'; 10]), &mut out);
        assert_eq!(
            order.owed(0),
            4000 + 10 + 3500,
            "7/8 of the estimate before"
        );
        order.complete(slots[0], Reply::Borrowed(b"a"), &mut out);
        assert_eq!(out.len(), 4011);
        assert_eq!(order.owed(out.len()), 4011, "written out: owed as output");
        assert!(order.is_empty());
    }
}
