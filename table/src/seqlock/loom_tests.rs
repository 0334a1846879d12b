//! Model check of the publish/read protocol (`crate::seqlock`) with loom: one writer committing
//! twice while one reader copies, over every interleaving and every value the memory model lets
//! a relaxed load see. The reader must only ever accept a consistent, committed image.

use std::sync::atomic::Ordering;

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, fence};

use crate::seqlock::{Geometry, ReadError, Seal, Words};

/// Memory of loom atomics, standing in for the shared mapping.
struct Model(Vec<AtomicU64>);

impl Words for Model {
    fn load(&self, index: usize, order: Ordering) -> Option<u64> {
        Some(self.0.get(index)?.load(order))
    }
    fn store(&self, index: usize, value: u64, order: Ordering) -> Option<()> {
        self.0.get(index)?.store(value, order);
        Some(())
    }
    fn compare_exchange(&self, index: usize, current: u64, new: u64) -> Option<Result<u64, u64>> {
        Some(
            self.0
                .get(index)?
                .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire),
        )
    }
    fn fence(&self, order: Ordering) {
        fence(order);
    }
}

// Layout: word 0 committed; slot k at 1 + 5k: [seq, generation, payload_len, a, b].
const GEOMETRY: Geometry = Geometry {
    committed: 0,
    seal: Seal::Checked,
    slots: [1, 6],
    slot_words: 5,
    slot_header_words: 3,
};

/// An image of version `v`: both payload words are `v * 10 + 1`, so a torn copy shows.
fn image(v: u64) -> Vec<u64> {
    vec![0, v, 2, v * 10 + 1, v * 10 + 1]
}

fn image_words(header: &[u64]) -> Option<usize> {
    Some(3 + header[2] as usize)
}

#[test]
fn reader_never_accepts_a_torn_or_uncommitted_slot() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let words: Vec<AtomicU64> = (0..11).map(|_| AtomicU64::new(0)).collect();
        let memory = Arc::new(Model(words));
        // Version 0 published in slot 0.
        let initial = image(0);
        for (i, w) in initial.iter().enumerate().skip(1) {
            memory.0[1 + i].store(*w, Ordering::Relaxed);
        }
        let writer = {
            let memory = memory.clone();
            loom::thread::spawn(move || {
                assert_eq!(GEOMETRY.publish(&*memory, 0, &image(1)), Some(1));
                assert_eq!(GEOMETRY.publish(&*memory, 1, &image(2)), Some(2));
            })
        };
        let mut out = Vec::new();
        match GEOMETRY.read(&*memory, &mut out, image_words) {
            Ok(version) => {
                assert_eq!(out[1], version, "accepted a slot of another version");
                assert_eq!(out[3..], [version * 10 + 1; 2], "accepted a torn copy");
            }
            Err(ReadError::Lapped) => {}
            Err(ReadError::Corrupt(why)) => panic!("a live writer looked like corruption: {why}"),
        }
        writer.join().unwrap();
        // After the writer, a read sees version 2.
        assert_eq!(GEOMETRY.read(&*memory, &mut out, image_words), Ok(2));
    });
}
