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
        if !byte_offset.is_multiple_of(4) || byte_offset + 4 > self.words * 8 {
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
