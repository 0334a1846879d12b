//! The one module with `unsafe`: a file mapping shared with other processes.
//!
//! Other processes write this memory while we read it, and some of them may be buggy or hostile.
//! So nothing here ever hands out a `&[u8]` or `&T` into the mapping: every access is an atomic
//! operation of one width on an aligned word (`AtomicU64`, or `AtomicU32` for the futex word),
//! which is what Rust's memory model allows for memory that changes under us. Callers copy what
//! they need out through [`SharedMap::copy_out`] and validate the copy; they never trust it.
//!
//! Every word index is bounds-checked here (an out-of-range index is `None`, never a fault), so a
//! corrupt length read from the file cannot make us touch memory outside the mapping.
//!
//! **A file truncated under its mappings.** Anyone who may write a table can shrink it, and the
//! kernel then raises SIGBUS in every process that touches a mapped page past the new end. So
//! every mapping is registered, while it lives, in a fixed table of address ranges ([`Guard`]),
//! and a process-wide SIGBUS handler (installed by the first mapping, chaining to the handler it
//! replaced) serves a fault inside a registered range: it marks that mapping *poisoned*, maps
//! anonymous zero pages over the rest of it (from the faulting page to its end) and returns, so
//! the faulting access runs again on zeros. From then on every access to that mapping answers
//! `None` (after the access, so that whatever it read or wrote in the zero pages counts for
//! nothing), as an access out of range does: readers see damage, keep what they had, and map
//! the file anew once it is whole again (see `registry`). A store into the zero pages never
//! reaches the file, and says so (`None`). A SIGBUS anywhere else, or one sent by a process, goes
//! to the handler installed before ours (by default: the process dies of it, as it would have).

use std::fs::File;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};

/// A shared mapping of a whole registry file, accessed as 64-bit atomic words.
pub struct SharedMap {
    raw: MmapRaw,
    words: usize,
    writable: bool,
    /// Its entry in the [`GUARD`]'s table, for as long as it is mapped.
    guarded: usize,
}

impl SharedMap {
    /// Maps `len` bytes of `file` shared (`MAP_SHARED`), read-only or read-write, registered with
    /// the truncation guard (see the module's documentation).
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
        install_guard()?;
        let mut options = MmapOptions::new();
        options.len(len);
        let raw = if writable {
            options.map_raw(file)?
        } else {
            options.map_raw_read_only(file)?
        };
        // mmap returns page-aligned memory, so every 8-byte offset is 8-byte aligned.
        debug_assert!((raw.as_ptr() as usize).is_multiple_of(8));
        // Registered before anyone can touch it (it is not returned yet); a table full of live
        // mappings is an error rather than a mapping a truncation would kill us through.
        let guarded = GUARD
            .register(raw.as_ptr() as usize, len, writable)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "this process already maps {MAX_MAPPINGS} registry files (one per handle): \
                     close some handles"
                ))
            })?;
        Ok(SharedMap {
            raw,
            words: len / 8,
            writable,
            guarded,
        })
    }

    /// Whether a truncation of the file faulted on this mapping (in any thread): its memory is
    /// partly zeros now, and every access answers `None`. Map the file again once it is whole.
    pub fn is_poisoned(&self) -> bool {
        // Ordered after the accesses before it: a load that read a zero page the handler put in
        // (on any thread: the handler marks the entry before its mmap) sees the mark here.
        std::sync::atomic::fence(Ordering::Acquire);
        GUARD.is_poisoned(self.guarded)
    }

    /// [`SharedMap::is_poisoned`] after a store: a store-to-load order needs the full fence.
    fn poisoned_after_store(&self) -> bool {
        std::sync::atomic::fence(Ordering::SeqCst);
        GUARD.is_poisoned(self.guarded)
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
        let old = self.word32(byte_offset)?.fetch_add(delta, Ordering::AcqRel);
        (!self.poisoned_after_store()).then_some(old)
    }

    pub fn load_u32(&self, byte_offset: usize) -> Option<u32> {
        let value = self.word32(byte_offset)?.load(Ordering::Acquire);
        (!self.is_poisoned()).then_some(value)
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

/// Every access checks the poison mark after it (see [`SharedMap::is_poisoned`]): a value read
/// from, or a store made into, the zero pages a truncation left is `None`, never taken for the
/// file's.
impl Words for SharedMap {
    fn load(&self, index: usize, order: Ordering) -> Option<u64> {
        let value = self.word(index)?.load(order);
        (!self.is_poisoned()).then_some(value)
    }

    fn store(&self, index: usize, value: u64, order: Ordering) -> Option<()> {
        if !self.writable {
            return None;
        }
        self.word(index)?.store(value, order);
        (!self.poisoned_after_store()).then_some(())
    }

    fn compare_exchange(&self, index: usize, current: u64, new: u64) -> Option<Result<u64, u64>> {
        if !self.writable {
            return None;
        }
        let swapped =
            self.word(index)?
                .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire);
        (!self.poisoned_after_store()).then_some(swapped)
    }

    fn fence(&self, order: Ordering) {
        std::sync::atomic::fence(order);
    }

    /// One bounds check for the whole range, then a tight loop of relaxed loads, then one look
    /// at the poison mark.
    fn copy_out(&self, start: usize, dst: &mut [u64]) -> Option<()> {
        let words = self.words_at(start, dst.len())?;
        for (out, word) in dst.iter_mut().zip(words) {
            *out = word.load(Ordering::Relaxed);
        }
        (!self.is_poisoned()).then_some(())
    }

    /// One bounds check, relaxed stores, one fence and look at the poison mark (a writer
    /// publishing a large slot pays one fence, not one per word).
    fn copy_in(&self, start: usize, src: &[u64]) -> Option<()> {
        if !self.writable {
            return None;
        }
        let words = self.words_at(start, src.len())?;
        for (word, value) in words.iter().zip(src) {
            word.store(*value, Ordering::Relaxed);
        }
        (!self.poisoned_after_store()).then_some(())
    }
}

impl SharedMap {
    /// Words `start..start + len` of the mapping, `None` when they leave it.
    fn words_at(&self, start: usize, len: usize) -> Option<&[AtomicU64]> {
        let end = start.checked_add(len)?;
        if end > self.words {
            return None;
        }
        // SAFETY: words `start..end` lie inside the mapping (checked above), which is
        // page-aligned and lives as long as `self`; `AtomicU64` has the size and alignment of
        // `u64`, and every access we make to these words is atomic (see `word`). A read-only
        // mapping's words are only loaded (`copy_in` checks `writable`).
        Some(unsafe {
            std::slice::from_raw_parts(self.raw.as_ptr().cast::<AtomicU64>().add(start), len)
        })
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // Before `raw` unmaps it: no fault can be in flight in it now (every access borrows
        // `self`), and once out of the table its addresses are no longer ours to cover.
        GUARD.unregister(self.guarded);
    }
}

// ---------------------------------------------------------------------------------------------
// The truncation guard: which address ranges are ours, and the SIGBUS handler that serves them.

/// Most mappings one process holds at once: every [`SharedMap`] (one per `Registry` handle,
/// and a writer's short-lived ones) has an entry in the guard's table while it lives.
pub const MAX_MAPPINGS: usize = 4096;

/// An entry's tag (the low two bits of its state): free, being filled, or a live mapping.
const FREE: usize = 0;
const CLAIMED: usize = 1;
const LIVE: usize = 2;
const TAG: usize = 3;

/// One mapping's address range, and whether a truncation faulted on it.
struct Entry {
    /// `generation << 2 | tag`. The range is read only between two equal `LIVE` loads of it (a
    /// seqlock of one entry, the generation moving on at every release), so the handler never
    /// takes a range torn by another thread's registration for one of ours.
    state: AtomicUsize,
    start: AtomicUsize,
    len: AtomicUsize,
    writable: AtomicBool,
    poisoned: AtomicBool,
}

impl Entry {
    const fn new() -> Entry {
        Entry {
            state: AtomicUsize::new(FREE),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            writable: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
        }
    }
}

/// A live entry that holds an address, as [`Guard::find`] read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Found {
    index: usize,
    start: usize,
    len: usize,
    writable: bool,
}

/// A fixed table of `N` address ranges, lock-free and allocation-free, so that a signal handler
/// may search it while other threads add and remove ranges: registration claims a free entry
/// with a compare-and-swap, fills it and publishes it; release moves the entry's generation on.
struct Guard<const N: usize> {
    entries: [Entry; N],
    /// Entries ever claimed: those at and past it are free, so searches stop there.
    used: AtomicUsize,
}

/// The process's table (see the module's documentation).
static GUARD: Guard<MAX_MAPPINGS> = Guard::new();

impl<const N: usize> Guard<N> {
    const fn new() -> Guard<N> {
        Guard {
            entries: [const { Entry::new() }; N],
            used: AtomicUsize::new(0),
        }
    }

    /// Registers `[start, start + len)`; the index of its entry, `None` when all `N` are live.
    fn register(&self, start: usize, len: usize, writable: bool) -> Option<usize> {
        for (index, entry) in self.entries.iter().enumerate() {
            let state = entry.state.load(Ordering::Relaxed);
            if state & TAG != FREE {
                continue;
            }
            let claimed = (state & !TAG) | CLAIMED;
            if entry
                .state
                .compare_exchange(state, claimed, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // The claim is ordered before the new range (a reader of the old one sees the state
            // change), the range before `LIVE`.
            std::sync::atomic::fence(Ordering::Release);
            entry.start.store(start, Ordering::Relaxed);
            entry.len.store(len, Ordering::Relaxed);
            entry.writable.store(writable, Ordering::Relaxed);
            entry.poisoned.store(false, Ordering::Relaxed);
            self.used.fetch_max(index + 1, Ordering::AcqRel);
            entry.state.store((state & !TAG) | LIVE, Ordering::Release);
            return Some(index);
        }
        None
    }

    /// Releases entry `index` (registered by [`Guard::register`]).
    fn unregister(&self, index: usize) {
        let entry = &self.entries[index];
        let state = entry.state.load(Ordering::Relaxed);
        debug_assert_eq!(state & TAG, LIVE);
        entry
            .state
            .store(((state >> 2) + 1) << 2 | FREE, Ordering::Release);
    }

    /// The live entry whose range holds `addr`. Async-signal-safe: loads only.
    fn find(&self, addr: usize) -> Option<Found> {
        let used = self.used.load(Ordering::Acquire).min(N);
        for (index, entry) in self.entries[..used].iter().enumerate() {
            let before = entry.state.load(Ordering::Acquire);
            if before & TAG != LIVE {
                continue;
            }
            let start = entry.start.load(Ordering::Relaxed);
            let len = entry.len.load(Ordering::Relaxed);
            let writable = entry.writable.load(Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Acquire);
            if entry.state.load(Ordering::Relaxed) != before {
                continue; // released (and maybe reused) meanwhile: not the range we read
            }
            if addr >= start && addr - start < len {
                return Some(Found {
                    index,
                    start,
                    len,
                    writable,
                });
            }
        }
        None
    }

    fn poison(&self, index: usize) {
        self.entries[index].poisoned.store(true, Ordering::SeqCst);
    }

    fn is_poisoned(&self, index: usize) -> bool {
        self.entries[index].poisoned.load(Ordering::Relaxed)
    }
}

/// Faults the handler served (pages of truncated files it replaced by zeros).
static FAULTS: AtomicU64 = AtomicU64::new(0);
/// The page size, read once when the handler is installed (`sysconf` is no signal-safe call).
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
/// The SIGBUS action ours replaced: faults that are not ours go there. Leaked, never freed (the
/// handler may read it at any time).
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());

/// How many faults on truncated registry files this process survived (see the module's
/// documentation): each one a mapping read as damaged from then on.
pub fn truncation_faults() -> u64 {
    FAULTS.load(Ordering::Relaxed)
}

/// Installs the SIGBUS handler, once per process (the first mapping does).
fn install_guard() -> io::Result<()> {
    static INSTALLED: OnceLock<Option<i32>> = OnceLock::new();
    let failed = *INSTALLED.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if let Ok(page) = usize::try_from(page)
            && page.is_power_of_two()
        {
            PAGE_SIZE.store(page, Ordering::Relaxed);
        }
        let errno = || {
            io::Error::last_os_error()
                .raw_os_error()
                .or(Some(libc::EINVAL))
        };
        // SAFETY: an all-zero `sigaction` is a valid value (SIG_DFL, no flags, empty mask).
        let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only queries; `current` is ours to write.
        if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut current) } != 0 {
            return errno();
        }
        PREVIOUS.store(Box::into_raw(Box::new(current)), Ordering::Release);
        // SAFETY: as above.
        let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            on_sigbus;
        ours.sa_sigaction = handler as libc::sighandler_t;
        // SA_ONSTACK: on a thread's alternate stack when it has one (Rust's threads do).
        ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: as above.
        let mut replaced: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: sigemptyset writes the mask we own; sigaction reads `ours` and writes
        // `replaced`, both ours.
        let installed = unsafe {
            libc::sigemptyset(&mut ours.sa_mask);
            libc::sigaction(libc::SIGBUS, &ours, &mut replaced)
        };
        if installed != 0 {
            return errno();
        }
        // Another thread changed the action between our query and our install: chain to that
        // one (the first stays leaked: the handler may have read it).
        if replaced.sa_sigaction != current.sa_sigaction || replaced.sa_flags != current.sa_flags {
            PREVIOUS.store(Box::into_raw(Box::new(replaced)), Ordering::Release);
        }
        None
    });
    match failed {
        None => Ok(()),
        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// The SIGBUS handler. A fault past the end of a truncated file (`BUS_ADRERR`) inside one of our
/// mappings is served (see [`cover`]); anything else goes to the action we replaced.
/// Async-signal-safe: atomics, `mmap`, and what [`chain`] calls; no allocation, no lock.
extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    if !info.is_null() {
        // SAFETY: for an SA_SIGINFO handler the kernel passes a valid `siginfo_t`; a SIGBUS
        // fills its fault address (`si_addr`).
        let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
        if code == libc::BUS_ADRERR
            && let Some(found) = GUARD.find(addr)
            && cover(found, addr)
        {
            return;
        }
    }
    // SAFETY: the arguments are the ones this handler received.
    unsafe { chain(signal, info, context) }
}

/// Marks the mapping poisoned, then maps anonymous zero pages (private: nothing reaches the
/// file) over it from the faulting page to its end, with its protection, so that the faulting
/// access runs again and finishes. Every page from there on is past the file's end too (a fault
/// at a page means the file ends before it). False when the kernel refuses the mapping.
fn cover(found: Found, addr: usize) -> bool {
    let page = PAGE_SIZE.load(Ordering::Relaxed);
    // First the mark, then the zeros: whoever reads a zero page sees the mark after it.
    GUARD.poison(found.index);
    let from = addr & !(page - 1);
    let end = (found.start + found.len).next_multiple_of(page);
    let protection = if found.writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    // SAFETY: `errno` is this thread's; saved and put back so that the interrupted code never
    // sees the handler's.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: `[from, end)` lies inside one live mapping of ours (from the faulting page of a
    // registered range to the end of its last page, which the kernel mapped whole; `start` is
    // page-aligned), so MAP_FIXED replaces nothing but that mapping's pages. The mapping cannot
    // be unmapped meanwhile: a fault in it means an access is in progress, which borrows its
    // `SharedMap`. Its memory is only ever accessed through atomics, for which the pages
    // turning to zeros is like another process storing zeros.
    let placed = unsafe {
        libc::mmap(
            from as *mut libc::c_void,
            end - from,
            protection,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
    if placed == libc::MAP_FAILED {
        return false;
    }
    FAULTS.fetch_add(1, Ordering::Relaxed);
    true
}

/// Hands a SIGBUS that is not ours to the action our handler replaced: its handler, called as it
/// asked to be (with or without `siginfo`); or, for the default action, the default restored and
/// the signal raised again (pending until we return: the process dies of it as it would have);
/// an ignored SIGBUS stays ignored unless it is a fault (which the kernel never lets one ignore).
///
/// # Safety
///
/// Called from the SIGBUS handler, with the arguments it received.
unsafe fn chain(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let previous = PREVIOUS.load(Ordering::Acquire);
    // SAFETY: PREVIOUS is null or a leaked `Box`, never freed.
    let (action, flags) = match unsafe { previous.as_ref() } {
        Some(previous) => (previous.sa_sigaction, previous.sa_flags),
        None => (libc::SIG_DFL, 0),
    };
    // SAFETY: a non-null `info` is the kernel's (see `on_sigbus`).
    let code = unsafe { info.as_ref() }.map_or(0, |info| info.si_code);
    let fault = (libc::BUS_ADRALN..=libc::BUS_MCEERR_AR).contains(&code);
    if action == libc::SIG_IGN && !fault {
        return;
    }
    if action == libc::SIG_DFL || action == libc::SIG_IGN {
        // SAFETY: an all-zero `sigaction` is SIG_DFL with no flags and an empty mask; sigaction
        // and raise are async-signal-safe.
        unsafe {
            let default: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, &default, std::ptr::null_mut());
            libc::raise(signal);
        }
        return;
    }
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: an action installed with SA_SIGINFO holds a three-argument handler.
        let handler = unsafe {
            std::mem::transmute::<
                libc::sighandler_t,
                extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
            >(action)
        };
        handler(signal, info, context);
    } else {
        // SAFETY: an action installed without SA_SIGINFO holds a one-argument handler.
        let handler = unsafe {
            std::mem::transmute::<libc::sighandler_t, extern "C" fn(libc::c_int)>(action)
        };
        handler(signal);
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

/// The user id of the process at the other end of a unix socket (`SO_PEERCRED`), as the kernel
/// recorded it when the connection was made; `None` for another kind of socket or an error.
pub fn peer_uid(socket: std::os::fd::BorrowedFd<'_>) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred we own, and `len`,
    // which we own; the descriptor is borrowed, so it stays open for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<libc::ucred>()).then_some(cred.uid)
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

/// Runs the test `name` (its full path, e.g. `shm::tests::x`) whose body is `body` in a child
/// process of this test binary, or, in that child, runs `body`. Tests that take real faults on
/// truncated files need a process of their own: loom's `generator` (a dev-dependency, in the same
/// binary) installs its own SIGBUS handler when a model test runs, and that one is not
/// async-signal-safe (it captures a backtrace, and can deadlock).
#[cfg(test)]
pub(crate) fn in_own_process(name: &str, body: impl FnOnce()) {
    const CHILD: &str = "MCSHM_TEST_OWN_PROCESS";
    if std::env::var_os(CHILD).is_some() {
        body();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} in a process of its own: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether a process with `pid` exists, whoever it belongs to: `kill(pid, 0)` sends nothing and
/// answers ESRCH for no such process, EPERM for another user's. Unlike /proc, it is not hidden
/// by a unit's `ProtectProc=invisible` or a /proc mounted with `hidepid`.
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false; // 0 and negative pids name process groups
    }
    // SAFETY: kill(2) with signal 0 performs only the existence and permission checks; it
    // reads and writes no memory of ours.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
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

    // ---- The guard's range table ----

    #[test]
    fn the_guard_finds_an_address_only_inside_a_live_range() {
        let guard: Guard<4> = Guard::new();
        assert_eq!(guard.find(0x1000), None, "an empty table holds nothing");
        let a = guard.register(0x10_000, 0x3000, false).unwrap();
        let b = guard.register(0x20_000, 8, true).unwrap();
        assert_ne!(a, b);
        let found = |addr| {
            guard
                .find(addr)
                .map(|f| (f.index, f.start, f.len, f.writable))
        };
        assert_eq!(found(0x10_000), Some((a, 0x10_000, 0x3000, false)));
        assert_eq!(found(0x12_fff), Some((a, 0x10_000, 0x3000, false)));
        assert_eq!(found(0x20_007), Some((b, 0x20_000, 8, true)));
        for outside in [0, 0xffff, 0x13_000, 0x1f_fff, 0x20_008, usize::MAX] {
            assert_eq!(found(outside), None, "{outside:#x}");
        }
        guard.unregister(a);
        assert_eq!(found(0x10_000), None, "a released range is no longer ours");
        assert_eq!(found(0x20_000).map(|f| f.0), Some(b));
    }

    #[test]
    fn a_full_guard_refuses_and_a_released_entry_is_reused_with_its_poison_cleared() {
        let guard: Guard<3> = Guard::new();
        let entries: Vec<usize> = (0..3)
            .map(|i| guard.register(0x1000 * (i + 1), 0x1000, false).unwrap())
            .collect();
        assert_eq!(guard.register(0x9000, 0x1000, false), None, "full");
        guard.poison(entries[1]);
        assert!(guard.is_poisoned(entries[1]));
        assert!(!guard.is_poisoned(entries[0]));
        guard.unregister(entries[1]);
        let again = guard.register(0x9000, 0x1000, true).unwrap();
        assert_eq!(again, entries[1], "the free entry is taken again");
        assert!(!guard.is_poisoned(again), "a new mapping starts unpoisoned");
        assert_eq!(
            guard.find(0x2000),
            None,
            "the old range went with its release"
        );
        assert_eq!(guard.find(0x9800).map(|f| f.index), Some(again));
        // The scan bound covers every entry ever used, and no more.
        assert_eq!(guard.used.load(Ordering::Relaxed), 3);
    }

    /// Threads register and release ranges all the time around one that stays: a search for an
    /// address in the one that stays always finds it, exactly, and a search for an address no
    /// live range holds never finds one (a range torn between two registrations would).
    #[test]
    fn the_guard_never_matches_a_range_torn_by_concurrent_registrations() {
        let guard: &'static Guard<16> = Box::leak(Box::new(Guard::new()));
        let kept = guard.register(0x100_000, 0x1000, false).unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let churners: Vec<_> = (0..3)
            .map(|t: usize| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut rounds = 0u64;
                    // Ranges alternate between [0, 0x1000) and [0x200_000, 0x10), so a torn
                    // entry would be [0, 0x10) or [0x200_000, 0x1000): both hold an address
                    // (0x200_800) that no live range ever holds.
                    while !stop.load(Ordering::Relaxed) && rounds < 5_000_000 {
                        let (start, len) = if (rounds + t as u64).is_multiple_of(2) {
                            (0, 0x1000)
                        } else {
                            (0x200_000, 0x10)
                        };
                        if let Some(entry) = guard.register(start, len, false) {
                            guard.unregister(entry);
                        }
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        let started = std::time::Instant::now();
        let mut searches = 0u64;
        while started.elapsed() < Duration::from_millis(300) && searches < 10_000_000 {
            let found = guard
                .find(0x100_800)
                .expect("the range that stays is always found");
            assert_eq!(
                (found.index, found.start, found.len),
                (kept, 0x100_000, 0x1000)
            );
            assert_eq!(guard.find(0x200_800), None, "a torn range matched");
            searches += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let rounds: u64 = churners.into_iter().map(|c| c.join().unwrap()).sum();
        assert!(
            rounds > 100 && searches > 100,
            "{rounds} registrations, {searches} searches"
        );
    }

    // ---- Faults on a truncated file ----

    /// The page size (what a truncation cuts mappings at).
    fn page() -> usize {
        install_guard().unwrap();
        PAGE_SIZE.load(Ordering::Relaxed)
    }

    /// A writable or read-only mapping of a 4-page file of numbered words.
    fn four_pages(writable: bool) -> (File, SharedMap) {
        mapped(4 * page() / 8, 4 * page() / 8, writable)
    }

    /// Truncating the file under the mapping (to nothing, a header's worth, a page, half) and
    /// touching a page past the new end: `None`, the mapping poisoned, the process alive. Once
    /// the file is whole again a new mapping reads it as it is.
    #[test]
    fn a_file_truncated_under_its_mapping_reads_as_none_and_poisons_it_instead_of_killing() {
        in_own_process(
            "shm::tests::a_file_truncated_under_its_mapping_reads_as_none_and_poisons_it_instead_of_killing",
            || {
                for len in [0, 8, 64, page(), 2 * page()] {
                    let (file, map) = four_pages(false);
                    let last = 4 * page() / 8 - 1;
                    assert_eq!(map.load(last, Ordering::Acquire), Some(last as u64 + 1));
                    let faults = truncation_faults();
                    file.set_len(len as u64).unwrap();
                    assert_eq!(map.load(last, Ordering::Acquire), None, "to {len}");
                    assert!(map.is_poisoned(), "to {len}");
                    assert!(truncation_faults() > faults, "to {len}");
                    // Every access answers None from now on, inside the file's remaining words too.
                    assert_eq!(map.load(0, Ordering::Acquire), None);
                    assert_eq!(map.load_u32(0), None);
                    assert_eq!(map.copy_out(0, &mut [0; 4]), None);
                    // Restored (as a restore would: the same bytes written back), and mapped anew.
                    use std::os::unix::fs::FileExt;
                    let bytes: Vec<u8> = (1..=(4 * page() / 8) as u64)
                        .flat_map(u64::to_le_bytes)
                        .collect();
                    file.write_all_at(&bytes, 0).unwrap();
                    assert!(map.is_poisoned(), "a poisoned mapping stays poisoned");
                    let again = SharedMap::map(&file, 4 * page(), false).unwrap();
                    let mut all = vec![0u64; 4 * page() / 8];
                    assert_eq!(again.copy_out(0, &mut all), Some(()));
                    assert_eq!(all, numbered(4 * page() / 8));
                    assert!(!again.is_poisoned());
                }
            },
        );
    }

    /// A store (and a compare-and-swap, and a copy in) past the new end lands in the zero pages
    /// and says it did not reach the file; the file never gets it.
    #[test]
    fn a_store_into_a_truncated_mapping_is_refused_and_never_reaches_the_file() {
        in_own_process(
            "shm::tests::a_store_into_a_truncated_mapping_is_refused_and_never_reaches_the_file",
            || {
                let (file, map) = four_pages(true);
                let at = 3 * page() / 8 + 5;
                file.set_len(page() as u64).unwrap();
                assert_eq!(map.store(at, 77, Ordering::Release), None);
                assert_eq!(map.compare_exchange(at, 0, 78), None);
                assert_eq!(map.copy_in(at, &[79, 80]), None);
                assert_eq!(map.fetch_add_u32(at * 8, 1), None);
                file.set_len(4 * page() as u64).unwrap();
                let words = file_words(&file);
                assert_eq!(words[at], 0, "a store into the zero pages reached the file");
                assert_eq!(
                    words[..page() / 8],
                    numbered(page() / 8)[..],
                    "the first page is intact"
                );
            },
        );
    }

    /// A fault taken by one thread poisons the mapping for every thread: a load by another of
    /// the zero pages it left is `None` too.
    #[test]
    fn every_thread_sees_the_poison_of_a_fault_another_took() {
        in_own_process(
            "shm::tests::every_thread_sees_the_poison_of_a_fault_another_took",
            || {
                let (file, map) = four_pages(false);
                file.set_len(0).unwrap();
                std::thread::scope(|scope| {
                    scope
                        .spawn(|| assert_eq!(map.load(page() / 8, Ordering::Acquire), None))
                        .join()
                        .unwrap();
                });
                assert!(map.is_poisoned());
                assert_eq!(map.load(2 * page() / 8, Ordering::Acquire), None);
            },
        );
    }

    /// Runs this test binary's test `name` (a child below) with `MCSHM_SIGBUS_CHILD` set.
    fn child(name: &str) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("shm::tests::{name}"), "--nocapture"])
            .args(["--test-threads=1"])
            .env("MCSHM_SIGBUS_CHILD", "1")
            .output()
            .unwrap()
    }

    fn in_child() -> bool {
        std::env::var_os("MCSHM_SIGBUS_CHILD").is_some()
    }

    /// A mapping of a truncated file that is not ours (no `SharedMap`): its fault is not ours
    /// to serve. Returns only if the read did not kill the process.
    fn fault_outside_the_guard() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(page() as u64 * 2).unwrap();
        let raw = MmapOptions::new().len(page() * 2).map_raw(&file).unwrap();
        file.set_len(0).unwrap();
        // SAFETY: the pointer is inside a live mapping of two pages; the read faults (the file
        // is empty), which is what the test is after.
        let value = unsafe { std::ptr::read_volatile(raw.as_ptr().add(page())) };
        println!("read {value} past the end of a truncated file and lived");
    }

    fn default_sigbus() {
        // SAFETY: an all-zero `sigaction` is SIG_DFL with no flags and an empty mask.
        unsafe {
            let default: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
        }
    }

    #[test]
    fn child_faults_outside_the_guard() {
        if in_child() {
            default_sigbus();
            let (_file, _map) = four_pages(false); // installs the handler
            fault_outside_the_guard();
        }
    }

    #[test]
    fn child_is_sent_sigbus() {
        if in_child() {
            default_sigbus();
            let (_file, _map) = four_pages(false);
            // SAFETY: raise has no preconditions.
            unsafe { libc::raise(libc::SIGBUS) };
            println!("lived through a SIGBUS sent to it");
        }
    }

    extern "C" fn exit_42(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: _exit is async-signal-safe and ends the process.
        unsafe { libc::_exit(42) }
    }

    #[test]
    fn child_has_a_sigbus_handler_of_its_own() {
        if in_child() {
            // SAFETY: all-zero is a valid `sigaction`; we fill the handler and flags and install
            // it with the mask empty.
            unsafe {
                let mut own: libc::sigaction = std::mem::zeroed();
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    exit_42;
                own.sa_sigaction = handler as libc::sighandler_t;
                own.sa_flags = libc::SA_SIGINFO;
                libc::sigaction(libc::SIGBUS, &own, std::ptr::null_mut());
            }
            // Ours first: served by the guard, not by the handler installed before it.
            let (file, map) = four_pages(false);
            file.set_len(0).unwrap();
            assert_eq!(map.load(page() / 8, Ordering::Acquire), None);
            fault_outside_the_guard();
        }
    }

    /// A SIGBUS that is not a fault on one of our mappings does what it did without the guard:
    /// kills a process with the default action (a fault elsewhere, a signal sent to it), and
    /// goes to the handler a process installed before the guard, after the guard served a
    /// fault of its own.
    #[test]
    fn a_sigbus_that_is_not_ours_goes_where_it_went_before() {
        use std::os::unix::process::ExitStatusExt;
        for name in ["child_faults_outside_the_guard", "child_is_sent_sigbus"] {
            let out = child(name);
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGBUS),
                "{name}: {:?}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
        }
        let out = child("child_has_a_sigbus_handler_of_its_own");
        assert_eq!(
            out.status.code(),
            Some(42),
            "{:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
}
