//! Process records in the file: each process that routes with the domain takes a slot and
//! notes the version it uses (`mcadmin clients` reads them; see [`crate::processes`]).

use std::sync::atomic::Ordering;

use super::Registry;
use crate::clock::now_ms;
use crate::format;
use crate::seqlock::Words;

impl Registry {
    /// Claims a record in the clients region for this process (see `mcadmin clients`); `None`
    /// when read-only or all records are taken by live processes.
    pub fn register_client(&self) -> Option<usize> {
        let me = crate::processes::ProcessId::current()?;
        for slot in 0..format::CLIENT_SLOTS {
            let word = self.layout.client_word(slot)?;
            let seen = self.map.load(word, Ordering::Acquire)?;
            let free = seen == 0 || !crate::processes::ProcessId::from_word(seen).is_alive();
            if free
                && matches!(
                    self.map.compare_exchange(word, seen, me.to_word()),
                    Some(Ok(_))
                )
            {
                self.map
                    .copy_in(word + 3, &crate::processes::comm_words())?;
                return Some(slot);
            }
        }
        None
    }

    /// Records that this process used table `version` now (its clients record `slot`).
    pub fn touch_client(&self, slot: usize, version: u64) {
        if let Some(word) = self.layout.client_word(slot) {
            self.map.store(word + 1, version, Ordering::Relaxed);
            self.map.store(word + 2, now_ms(), Ordering::Relaxed);
        }
    }

    /// Releases a clients record claimed by [`Registry::register_client`].
    pub fn release_client(&self, slot: usize) {
        if let (Some(word), Some(me)) = (
            self.layout.client_word(slot),
            crate::processes::ProcessId::current(),
        ) {
            let _ = self.map.compare_exchange(word, me.to_word(), 0);
        }
    }

    /// The processes that have the domain open, one each (a process that routes on several
    /// threads, as mcproxy does, holds a record per thread: its latest use stands for it);
    /// records of dead processes are freed (when this handle may write) and left out.
    pub fn process_records(&self) -> Vec<crate::processes::ProcessRecord> {
        let mut out: Vec<crate::processes::ProcessRecord> = Vec::new();
        for slot in 0..format::CLIENT_SLOTS {
            let Some(word) = self.layout.client_word(slot) else {
                break;
            };
            let mut record = [0u64; 8];
            if self.map.copy_out(word, &mut record).is_none() || record[0] == 0 {
                continue;
            }
            let id = crate::processes::ProcessId::from_word(record[0]);
            if !id.is_alive() {
                let _ = self.map.compare_exchange(word, record[0], 0);
                continue;
            }
            let found = crate::processes::ProcessRecord::from_record(id, &record);
            match out.iter_mut().find(|r| r.pid == found.pid) {
                Some(same) if same.last_used_ms < found.last_used_ms => *same = found,
                Some(_) => {}
                None => out.push(found),
            }
        }
        out
    }
}
