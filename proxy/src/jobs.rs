//! The requests that take more than one round trip (a multi-get over several servers, reads
//! along replicas, fills, writes with invalidations, a binary increment that creates its
//! counter): each is a future, run by its worker's event loop, with no runtime and no waker
//! machinery. A future waits only on [`Await`], a server's reply that the worker fills in when
//! it arrives; the worker then polls the job that waited on it.
//!
//! Everything here is one thread's: a job is polled at once when it starts (so its first
//! requests are queued before the client's next command is even parsed, and a client's
//! commands reach each server in the order it sent them), and again each time a reply it waits
//! on arrives.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use slab::Slab;

use crate::failure::Failure;

/// A job's work: its output is the text reply its command gets.
pub type Work = Pin<Box<dyn Future<Output = Vec<u8>>>>;

thread_local! {
    /// The job being polled, so that an [`Await`] that is not ready knows whom to wake.
    static CURRENT: Cell<Option<JobId>> = const { Cell::new(None) };
    /// The jobs waiting for the worker's next tick ([`Tick`]).
    static SLEEPING: RefCell<Vec<JobId>> = const { RefCell::new(Vec::new()) };
}

/// A job, as the slot it runs in and the generation that tells it from the slot's later jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobId {
    key: usize,
    generation: u64,
}

/// One server reply that a job waits for.
#[derive(Default)]
pub struct ReplyCell {
    value: RefCell<Option<Result<Vec<u8>, Failure>>>,
    waiter: Cell<Option<JobId>>,
}

impl ReplyCell {
    /// Fills in the reply; the job to poll again, if one waits on it.
    pub fn fill(&self, result: Result<Vec<u8>, Failure>) -> Option<JobId> {
        *self.value.borrow_mut() = Some(result);
        self.waiter.take()
    }
}

/// The future of a [`ReplyCell`].
pub struct Await(pub Rc<ReplyCell>);

impl Future for Await {
    type Output = Result<Vec<u8>, Failure>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(value) = self.0.value.borrow_mut().take() {
            return Poll::Ready(value);
        }
        self.0.waiter.set(CURRENT.get());
        Poll::Pending
    }
}

/// A wait for the worker's next tick: the job is polled again on the next turn of its loop
/// that [`Jobs::wake_sleepers`] runs in (at most [`TICK`] later). What a job waits for that is
/// no server's reply (this host's table catching up with a fence) is looked at again each tick.
#[derive(Default)]
pub struct Tick(bool);

/// How long the worker's loop waits at most while a job sleeps on a [`Tick`].
pub const TICK: std::time::Duration = std::time::Duration::from_millis(5);

impl Future for Tick {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        if let Some(id) = CURRENT.get() {
            SLEEPING.with_borrow_mut(|sleeping| sleeping.push(id));
        }
        Poll::Pending
    }
}

/// Whether a job of this thread sleeps on a [`Tick`].
pub fn sleeping() -> bool {
    SLEEPING.with_borrow(|sleeping| !sleeping.is_empty())
}

/// The jobs of one worker, each with `T` telling where its output goes.
pub struct Jobs<T> {
    running: Slab<(Work, T, u64)>,
    ready: Vec<JobId>,
    generation: u64,
}

impl<T> Default for Jobs<T> {
    fn default() -> Self {
        Jobs {
            running: Slab::new(),
            ready: Vec::new(),
            generation: 0,
        }
    }
}

impl<T> Jobs<T> {
    /// Starts `work` and polls it once: its output at once if it needed no server, else `None`
    /// (the output comes from [`Jobs::run_ready`]).
    pub fn start(&mut self, mut work: Work, owner: T) -> Option<(T, Vec<u8>)> {
        self.generation += 1;
        let entry = self.running.vacant_entry();
        let id = JobId {
            key: entry.key(),
            generation: self.generation,
        };
        match poll(&mut work, id) {
            Poll::Ready(output) => Some((owner, output)),
            Poll::Pending => {
                entry.insert((work, owner, id.generation));
                None
            }
        }
    }

    /// A reply that `id` waited on has arrived.
    pub fn wake(&mut self, id: JobId) {
        self.ready.push(id);
    }

    /// Wakes the jobs that sleep on a [`Tick`], to be polled in the order they went to sleep
    /// (a client's commands that wait for the table resume in the order it sent them).
    pub fn wake_sleepers(&mut self) {
        SLEEPING.with_borrow_mut(|sleeping| self.ready.extend(sleeping.drain(..).rev()));
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Polls the woken jobs: `done` gets each finished job's output, `polled` runs after each
    /// poll (the worker sends the requests the job queued).
    pub fn run_ready(&mut self, mut done: impl FnMut(T, Vec<u8>), mut polled: impl FnMut()) {
        while let Some(id) = self.ready.pop() {
            let Some((work, _, generation)) = self.running.get_mut(id.key) else {
                continue;
            };
            if *generation != id.generation {
                continue;
            }
            let result = poll(work, id);
            polled();
            if let Poll::Ready(output) = result {
                let (_, owner, _) = self.running.remove(id.key);
                done(owner, output);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

fn poll(work: &mut Work, id: JobId) -> Poll<Vec<u8>> {
    let before = CURRENT.replace(Some(id));
    let result = work.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    CURRENT.set(before);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_runs_again_when_the_reply_it_waits_on_arrives() {
        let mut jobs: Jobs<&str> = Jobs::default();
        let cell = Rc::new(ReplyCell::default());
        let waited = cell.clone();
        let work: Work = Box::pin(async move {
            let reply = Await(waited).await.unwrap_or_default();
            [b"got ".as_slice(), &reply].concat()
        });
        assert!(jobs.start(work, "client").is_none());
        assert_eq!(jobs.len(), 1);
        let woken = cell.fill(Ok(b"x".to_vec())).expect("the job waits");
        jobs.wake(woken);
        let mut outputs = Vec::new();
        jobs.run_ready(|owner, out| outputs.push((owner, out)), || {});
        assert_eq!(outputs, vec![("client", b"got x".to_vec())]);
        assert!(jobs.is_empty());
    }

    #[test]
    fn a_job_that_sleeps_on_a_tick_runs_again_when_the_sleepers_are_woken() {
        let mut jobs: Jobs<u8> = Jobs::default();
        let work: Work = Box::pin(async {
            Tick::default().await;
            b"later".to_vec()
        });
        assert!(jobs.start(work, 1).is_none());
        assert!(sleeping() && !jobs.has_ready());
        jobs.wake_sleepers();
        assert!(!sleeping() && jobs.has_ready());
        let mut outputs = Vec::new();
        jobs.run_ready(|owner, out| outputs.push((owner, out)), || {});
        assert_eq!(outputs, vec![(1, b"later".to_vec())]);
    }

    #[test]
    fn a_job_that_needs_no_server_is_done_at_once() {
        let mut jobs: Jobs<u8> = Jobs::default();
        let work: Work = Box::pin(async { b"now".to_vec() });
        assert_eq!(jobs.start(work, 7), Some((7, b"now".to_vec())));
        assert!(jobs.is_empty());
    }
}
