//! The one module with `unsafe`: a file mapping shared with other processes.
//!
//! Other processes write this memory while we read it, and some of them may be buggy or hostile.
//! So nothing here ever hands out a `&[u8]` or `&T` into the mapping: every access is an atomic
//! operation of one width on an aligned word (`AtomicU64`, or `AtomicU32` for the futex word),
//! which is what Rust's memory model allows for memory that changes under us. Callers copy what
//! they need out through [`SharedMap::copy_out`] and validate the copy; they never trust it.
//!
//! Every word index is bounds-checked here (an out-of-range index is `None`, never a fault), so a
//! corrupt length read from the file cannot make us touch memory outside the mapping. What this
//! module cannot prevent is another process truncating the file under our mapping (the kernel then
//! raises SIGBUS); that is why registry files are only writable by their owner and opening one in
//! a world-writable directory refuses files of other owners.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};

/// A shared mapping of a whole registry file, accessed as 64-bit atomic words.
pub struct SharedMap {
    raw: MmapRaw,
    words: usize,
    writable: bool,
}

impl SharedMap {
    /// Maps `len` bytes of `file` shared (`MAP_SHARED`), read-only or read-write.
    ///
    /// `len` must be a non-zero multiple of 8 that the file actually has; the caller checked the
    /// file's size with `fstat` just before.
    pub fn map(file: &File, len: usize, writable: bool) -> io::Result<SharedMap> {
        if len == 0 || !len.is_multiple_of(8) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "mapping length must be a non-zero multiple of 8",
            ));
        }
        let mut options = MmapOptions::new();
        options.len(len);
        let raw = if writable {
            options.map_raw(file)?
        } else {
            options.map_raw_read_only(file)?
        };
        // mmap returns page-aligned memory, so every 8-byte offset is 8-byte aligned.
        debug_assert!((raw.as_ptr() as usize).is_multiple_of(8));
        Ok(SharedMap {
            raw,
            words: len / 8,
            writable,
        })
    }

    fn word(&self, index: usize) -> Option<&AtomicU64> {
        if index >= self.words {
            return None;
        }
        // SAFETY: `index < self.words`, so the 8 bytes at `index * 8` lie inside the mapping,
        // which lives as long as `self`. The mapping is page-aligned, so the pointer is aligned
        // for `AtomicU64`. All accesses this process makes to the mapping are atomic (this module
        // is the only way in), which is the requirement of `AtomicU64::from_ptr`. A read-only
        // mapping is only ever loaded from (`store`/`fetch_add` check `writable`), and 8-byte
        // atomic loads from read-only memory are plain loads on every 64-bit target.
        Some(unsafe { AtomicU64::from_ptr(self.raw.as_mut_ptr().add(index * 8).cast::<u64>()) })
    }

    fn word32(&self, byte_offset: usize) -> Option<&AtomicU32> {
        // `checked_add`: an offset near `usize::MAX` would wrap past the check (a fault in a
        // debug build, a pointer outside the mapping in a release one).
        let inside = byte_offset
            .checked_add(4)
            .is_some_and(|end| end <= self.words * 8);
        if !byte_offset.is_multiple_of(4) || !inside {
            return None;
        }
        // SAFETY: the 4 bytes at `byte_offset` are inside the mapping (checked above) and 4-byte
        // aligned (page-aligned base plus a multiple of 4). This word is only ever accessed as an
        // `AtomicU32` by this crate (the futex word); it is never part of a 64-bit access.
        Some(unsafe { AtomicU32::from_ptr(self.raw.as_mut_ptr().add(byte_offset).cast::<u32>()) })
    }

    /// Atomically adds to the 32-bit word at `byte_offset`; `None` if out of range or read-only.
    pub fn fetch_add_u32(&self, byte_offset: usize, delta: u32) -> Option<u32> {
        if !self.writable {
            return None;
        }
        Some(self.word32(byte_offset)?.fetch_add(delta, Ordering::AcqRel))
    }

    pub fn load_u32(&self, byte_offset: usize) -> Option<u32> {
        Some(self.word32(byte_offset)?.load(Ordering::Acquire))
    }

    /// Sleeps until the 32-bit word at `byte_offset` is woken by [`SharedMap::futex_wake`], no
    /// longer holds `expected`, or `timeout` passes (spurious returns are allowed: callers re-check
    /// their condition). A shared (not `FUTEX_PRIVATE_FLAG`) futex keyed on the file page, so
    /// waiters and wakers in different processes meet.
    pub fn futex_wait(&self, byte_offset: usize, expected: u32, timeout: Duration) {
        let Some(word) = self.word32(byte_offset) else {
            return;
        };
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: FUTEX_WAIT reads the aligned u32 at `word` (valid, inside the mapping for the
        // duration of the call) and a `timespec` we own; it writes no memory of ours. Errors
        // (EAGAIN, ETIMEDOUT, EINTR) all mean "go and re-check", so the result is ignored.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT,
                expected,
                &ts as *const libc::timespec,
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }

    /// Wakes up to `count` processes waiting on the 32-bit word at `byte_offset`.
    pub fn futex_wake(&self, byte_offset: usize, count: i32) {
        let Some(word) = self.word32(byte_offset) else {
            return;
        };
        // SAFETY: FUTEX_WAKE only uses the address as a key to find waiters; it reads and writes
        // no memory of ours.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE,
                count,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }
}

/// Word-addressed atomic memory. Every access is bounds-checked: `None` means out of range (or a
/// store to read-only memory), never undefined behaviour.
pub trait Words {
    fn load(&self, index: usize, order: Ordering) -> Option<u64>;
    fn store(&self, index: usize, value: u64, order: Ordering) -> Option<()>;
    /// Strong compare-and-swap (AcqRel/Acquire); the inner result is `compare_exchange`'s.
    fn compare_exchange(&self, index: usize, current: u64, new: u64) -> Option<Result<u64, u64>>;
    fn fence(&self, order: Ordering);

    /// Copies `dst.len()` words starting at `start` with relaxed loads.
    fn copy_out(&self, start: usize, dst: &mut [u64]) -> Option<()> {
        for (offset, word) in dst.iter_mut().enumerate() {
            *word = self.load(start.checked_add(offset)?, Ordering::Relaxed)?;
        }
        Some(())
    }

    /// Writes `src` starting at `start` with relaxed stores.
    fn copy_in(&self, start: usize, src: &[u64]) -> Option<()> {
        for (offset, word) in src.iter().enumerate() {
            self.store(start.checked_add(offset)?, *word, Ordering::Relaxed)?;
        }
        Some(())
    }
}

impl Words for SharedMap {
    fn load(&self, index: usize, order: Ordering) -> Option<u64> {
        Some(self.word(index)?.load(order))
    }

    fn store(&self, index: usize, value: u64, order: Ordering) -> Option<()> {
        if !self.writable {
            return None;
        }
        self.word(index)?.store(value, order);
        Some(())
    }

    fn compare_exchange(&self, index: usize, current: u64, new: u64) -> Option<Result<u64, u64>> {
        if !self.writable {
            return None;
        }
        Some(
            self.word(index)?
                .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire),
        )
    }

    fn fence(&self, order: Ordering) {
        std::sync::atomic::fence(order);
    }

    /// One bounds check for the whole range, then a tight loop of relaxed loads.
    fn copy_out(&self, start: usize, dst: &mut [u64]) -> Option<()> {
        let end = start.checked_add(dst.len())?;
        if end > self.words {
            return None;
        }
        // SAFETY: words `start..end` lie inside the mapping (checked above), which is
        // page-aligned and lives as long as `self`; `AtomicU64` has the size and alignment of
        // `u64`, and every access we make to these words is atomic (see `word`).
        let words: &[AtomicU64] = unsafe {
            std::slice::from_raw_parts(self.raw.as_ptr().cast::<AtomicU64>().add(start), dst.len())
        };
        for (out, word) in dst.iter_mut().zip(words) {
            *out = word.load(Ordering::Relaxed);
        }
        Some(())
    }
}

/// Takes the writer lock of a registry file without waiting: an open-file-description write
/// lock (`F_OFD_SETLK`, `F_WRLCK`) on the whole file. Only a descriptor opened for writing can
/// take it, so a user who may only read the table cannot stall its writers with `flock`, and
/// being bound to the open file description (not the process, as classic POSIX locks are) it
/// survives other descriptors of the same file being closed. `Ok(false)`: another holds it.
pub fn try_write_lock(file: &File) -> io::Result<bool> {
    match ofd_lock(file, libc::F_OFD_SETLK, libc::F_WRLCK as libc::c_short) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Releases the lock [`try_write_lock`] took.
pub fn write_unlock(file: &File) -> io::Result<()> {
    ofd_lock(file, libc::F_OFD_SETLK, libc::F_UNLCK as libc::c_short).map(|_| ())
}

/// The process holding a lock that keeps us from writing, when the kernel says (a classic
/// POSIX lock names its process; an open-file-description lock, ours, does not: `None`).
pub fn lock_holder(file: &File) -> Option<u32> {
    let lock = ofd_lock(file, libc::F_OFD_GETLK, libc::F_WRLCK as libc::c_short).ok()?;
    (lock.l_type != libc::F_UNLCK as libc::c_short && lock.l_pid > 0).then_some(lock.l_pid as u32)
}

/// Whether what keeps us from the write lock is a read lock: a reader's (fcntl lets a
/// read-only descriptor take one; no mcshm process does), never another writer's.
pub fn read_locked(file: &File) -> bool {
    ofd_lock(file, libc::F_OFD_GETLK, libc::F_WRLCK as libc::c_short)
        .is_ok_and(|lock| lock.l_type == libc::F_RDLCK as libc::c_short)
}

fn ofd_lock(file: &File, command: libc::c_int, kind: libc::c_short) -> io::Result<libc::flock> {
    use std::os::fd::AsRawFd;
    let mut lock = libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0, // the whole file, however it grows
        l_pid: 0, // must be 0 for open-file-description locks
    };
    // SAFETY: fcntl with an F_OFD_* command reads and (GETLK) writes the one `flock` we own and
    // pass by pointer; the descriptor is valid for the life of `file`.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), command, &mut lock as *mut libc::flock) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(lock)
}

/// The effective user id of this process (recorded as "last writer" and used for ownership
/// checks).
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process on the host, so a time taken in
/// one process can be compared with a time taken in another (latency measurements).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which we own, and CLOCK_MONOTONIC always
    // exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Gives the C allocator's free memory back to the kernel (glibc's `malloc_trim`, which walks
/// every arena). A daemon whose connections come in bursts (mcproxy) calls it after a burst:
/// glibc keeps freed per-thread arena memory otherwise, and the process's RSS only grows.
/// Elsewhere than glibc it does nothing.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a padding size and touches only the allocator's own state, under
    // its own locks; it is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Has the C allocator map every allocation of `bytes` or more apart and unmap it when freed
/// (glibc's `M_MMAP_THRESHOLD`, which also stops the threshold from growing on its own). A
/// daemon that holds large buffers for a while (mcproxy's replies for a client that reads
/// slowly) calls it once at start: by default glibc raises the threshold after the first large
/// buffer is freed, and later ones then come from the arenas, which keep the memory after the
/// buffers are gone. Elsewhere than glibc it does nothing.
pub fn map_large_allocations_apart(bytes: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt changes a tunable of the allocator under its own lock; any value is
    // accepted or refused (returning 0), never undefined.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, bytes.min(i32::MAX as usize) as i32);
    }
}

#[cfg(test)]
mod tests {
    //! The fence's promises: every access outside the mapping is `None` (or does nothing),
    //! never a fault, and never touches the bytes of the file beyond the mapped length; a
    //! read-only mapping refuses every write.
    use super::*;
    use std::io::Write;

    /// A file of `file_words` words, each word `i` holding `i + 1`, mapped over its first
    /// `mapped_words`.
    fn mapped(file_words: usize, mapped_words: usize, writable: bool) -> (File, SharedMap) {
        let mut file = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (1..=file_words as u64).flat_map(u64::to_le_bytes).collect();
        file.write_all(&bytes).unwrap();
        let map = SharedMap::map(&file, mapped_words * 8, writable).unwrap();
        (file, map)
    }

    /// The file's words, as other processes see them.
    fn file_words(file: &File) -> Vec<u64> {
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0u8; file.metadata().unwrap().len() as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        bytes
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
            .collect()
    }

    fn numbered(n: usize) -> Vec<u64> {
        (1..=n as u64).collect()
    }

    #[test]
    fn a_mapping_is_a_non_zero_multiple_of_a_word() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(64).unwrap();
        for len in [0, 1, 7, 12, 63] {
            let e = SharedMap::map(&file, len, true).err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{len}");
        }
        assert!(SharedMap::map(&file, 8, false).is_ok());
        assert!(SharedMap::map(&file, 64, true).is_ok());
    }

    #[test]
    fn words_inside_the_mapping_are_the_files_and_words_outside_are_none() {
        let (file, map) = mapped(8, 4, true);
        assert_eq!(map.load(0, Ordering::Acquire), Some(1));
        assert_eq!(map.load(3, Ordering::Acquire), Some(4));
        // Word 4 exists in the file, but not in the mapping.
        for index in [4, 5, 1 << 40, usize::MAX / 8, usize::MAX] {
            assert_eq!(map.load(index, Ordering::Acquire), None, "{index}");
            assert_eq!(map.store(index, 99, Ordering::Release), None, "{index}");
            assert_eq!(map.compare_exchange(index, 5, 99), None, "{index}");
        }
        assert_eq!(map.store(3, 40, Ordering::Release), Some(()));
        assert_eq!(file_words(&file), [1, 2, 3, 40, 5, 6, 7, 8]);
    }

    #[test]
    fn compare_exchange_swaps_only_the_expected_value() {
        let (file, map) = mapped(2, 2, true);
        assert_eq!(map.compare_exchange(1, 7, 70), Some(Err(2)));
        assert_eq!(map.compare_exchange(1, 2, 20), Some(Ok(2)));
        assert_eq!(map.load(1, Ordering::Acquire), Some(20));
        assert_eq!(file_words(&file), [1, 20]);
    }

    #[test]
    fn copy_out_copies_a_range_inside_the_mapping_and_refuses_one_that_leaves_it() {
        let (_file, map) = mapped(8, 4, true);
        let mut all = [0u64; 4];
        assert_eq!(map.copy_out(0, &mut all), Some(()));
        assert_eq!(all, [1, 2, 3, 4]);
        let mut tail = [0u64; 2];
        assert_eq!(map.copy_out(2, &mut tail), Some(()));
        assert_eq!(tail, [3, 4]);
        assert_eq!(map.copy_out(4, &mut []), Some(()), "nothing, at the end");
        // One word past the end (the file has it, the mapping does not), a start past the
        // end, and a range whose end overflows: refused before anything is copied.
        for (start, len) in [
            (3, 2),
            (0, 5),
            (4, 1),
            (5, 0),
            (usize::MAX, 2),
            (1 << 61, 1),
        ] {
            let mut out = vec![0xdead_u64; len];
            assert_eq!(map.copy_out(start, &mut out), None, "{start}+{len}");
            assert!(out.iter().all(|&w| w == 0xdead), "{start}+{len}: {out:?}");
        }
    }

    #[test]
    fn copy_in_never_writes_past_the_mapping() {
        let (file, map) = mapped(8, 4, true);
        assert_eq!(map.copy_in(1, &[20, 30]), Some(()));
        assert_eq!(file_words(&file), [1, 20, 30, 4, 5, 6, 7, 8]);
        assert_eq!(map.copy_in(3, &[40, 50, 60]), None);
        assert_eq!(map.copy_in(usize::MAX, &[70, 80]), None);
        // The words after the mapping are the file's own still.
        assert_eq!(file_words(&file)[4..], [5, 6, 7, 8]);
    }

    #[test]
    fn a_read_only_mapping_loads_and_refuses_every_write() {
        let (file, map) = mapped(4, 4, false);
        let mut all = [0u64; 4];
        assert_eq!(map.copy_out(0, &mut all), Some(()));
        assert_eq!(all, [1, 2, 3, 4]);
        assert_eq!(map.load_u32(0), Some(1));
        assert_eq!(map.store(0, 9, Ordering::Release), None);
        assert_eq!(map.compare_exchange(0, 1, 9), None);
        assert_eq!(map.copy_in(0, &[9]), None);
        assert_eq!(map.fetch_add_u32(0, 1), None);
        assert_eq!(file_words(&file), numbered(4));
    }

    #[test]
    fn a_32_bit_word_is_aligned_and_inside_the_mapping_or_none() {
        let (file, map) = mapped(4, 2, true);
        assert_eq!(map.load_u32(0), Some(1));
        assert_eq!(map.load_u32(8), Some(2));
        assert_eq!(map.load_u32(12), Some(0), "the high half of word 1");
        assert_eq!(map.fetch_add_u32(8, 5), Some(2));
        assert_eq!(map.load_u32(8), Some(7));
        for offset in [1, 2, 6, 13] {
            assert_eq!(map.load_u32(offset), None, "unaligned {offset}");
            assert_eq!(map.fetch_add_u32(offset, 1), None, "unaligned {offset}");
        }
        // Past the end, including offsets whose end overflows.
        for offset in [16, 20, usize::MAX - 3, usize::MAX & !3] {
            assert_eq!(map.load_u32(offset), None, "{offset}");
            assert_eq!(map.fetch_add_u32(offset, 1), None, "{offset}");
        }
        assert_eq!(file_words(&file), [1, 7, 3, 4]);
    }

    #[test]
    fn futex_calls_outside_the_mapping_return_at_once() {
        let (_file, map) = mapped(2, 2, true);
        let started = std::time::Instant::now();
        for offset in [2, 16, usize::MAX - 3] {
            map.futex_wait(offset, 0, Duration::from_secs(30));
            map.futex_wake(offset, 1);
        }
        // Inside, a value other than the one expected: no sleep either.
        map.futex_wait(0, 12345, Duration::from_secs(30));
        assert!(started.elapsed() < Duration::from_secs(10));
        // Inside and expected: sleeps until the timeout.
        let started = std::time::Instant::now();
        map.futex_wait(0, 1, Duration::from_millis(20));
        assert!(started.elapsed() >= Duration::from_millis(10));
    }
}
