//! The writer lock: how writers exclude each other, and why no reader can keep them waiting.
//!
//! Writers take an open-file-description `fcntl` write lock on the whole table file. Only a
//! descriptor opened for writing can take that lock, but `fcntl` lets any reader take a *read*
//! lock through a read-only descriptor, and a read lock keeps every writer out. No mcshm process
//! ever takes one, so a read lock on a table is a stray or hostile reader's: a writer that finds
//! one moves the table to a new file instead of waiting (as the table grows, see `relocate`: a
//! copy beside it, locked before it is renamed into place, MOVED set on the old file, which
//! every process follows), and the reader's lock is left on a file nobody uses any more. This
//! module decides when to move and takes the turns; `relocate` moves.
//!
//! Writers that find a read lock at the same moment must not both move the table. They take
//! turns on the domain's lock file, `DIR/DOMAIN.lock`, whose mode gives read and write to just
//! those who may write the table (0600 for a 0644 table, 0660 for a 0664 one): a reader cannot
//! open it, so cannot hold it. Without the lock file (a table made before it existed, in a
//! directory this process cannot create it in), a writer waits as before, up to its
//! [`LockWait`], and names the reader in its error.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Registry;
use super::files::{FileOwnership, check_trusted};
use super::relocate::Copied;
use crate::error::{Error, Result};
use crate::format;
use crate::seqlock::Words;

/// How long a writer waits for the writer lock held by another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockWait {
    /// Not at all: [`Error::Locked`] at once, even when a reader's lock is in the way (a
    /// client's setting: it retries its change on a later operation).
    Never,
    /// Up to this long, then [`Error::Locked`].
    For(Duration),
    /// Until it is free.
    Forever,
}

impl Default for LockWait {
    fn default() -> LockWait {
        LockWait::For(Duration::from_secs(10))
    }
}

/// What [`acquire_lock`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Acquired {
    /// The write lock.
    Held,
    /// Nothing: a reader's read lock is in the way (only when asked to report one).
    ByAReader,
}

/// Takes the writer lock of `file` (see [`crate::shm::try_write_lock`]) within `wait`,
/// polling with a growing pause (1 to 50 ms): the kernel offers no timed wait for it. With
/// `report_readers`, returns at once when what is in the way is a read lock.
pub(super) fn acquire_lock(
    file: &File,
    path: &Path,
    wait: LockWait,
    report_readers: bool,
    holder: impl Fn(&File) -> Option<String>,
) -> Result<Acquired> {
    let started = Instant::now();
    let limit = match wait {
        LockWait::Never => Duration::ZERO,
        LockWait::For(limit) => limit,
        LockWait::Forever => Duration::MAX,
    };
    let mut pause = Duration::from_millis(1);
    loop {
        if crate::shm::try_write_lock(file).map_err(|e| Error::io("lock", path, e))? {
            return Ok(Acquired::Held);
        }
        if report_readers && crate::shm::read_locked(file) {
            return Ok(Acquired::ByAReader);
        }
        let waited = started.elapsed();
        if waited >= limit {
            return Err(Error::Locked {
                path: path.to_path_buf(),
                holder: holder(file),
                waited,
            });
        }
        std::thread::sleep(pause.min(limit - waited));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// The domain's lock file beside `table`: `DIR/DOMAIN.lock`.
pub(super) fn lock_file_path(table: &Path) -> PathBuf {
    table.with_extension("lock")
}

/// The mode of the lock file of a table of `mode`: read and write for each class that may
/// write the table, nothing for the others.
fn lock_file_mode(mode: u32) -> u32 {
    let writers = mode & 0o222;
    writers | writers << 1
}

/// Refuses a lock file beside `table` that this process may not trust (a link, or another
/// user's in a world-writable directory: one who may not write the table could hold it and
/// stall every writer). No lock file is fine: a writer makes it.
pub(super) fn check_lock_file(table: &Path) -> Result<()> {
    let path = lock_file_path(table);
    match fs::symlink_metadata(&path) {
        Err(_) => Ok(()),
        Ok(meta) if meta.file_type().is_symlink() => Err(Error::UnsafeFile {
            path,
            why: "it is a symbolic link".into(),
        }),
        Ok(meta) => check_trusted(&path, &meta),
    }
}

/// Opens (creating it when it is missing and this process can) the lock file of the table
/// at `table`, owned like `ownership`. `None` when it cannot be had; an error when the one
/// there may not be trusted (see [`check_lock_file`]).
pub(super) fn open_lock_file(table: &Path, ownership: FileOwnership) -> Result<Option<File>> {
    let path = lock_file_path(table);
    let ownership = ownership.in_dir(table.parent().unwrap_or(Path::new(".")));
    let open = |create: bool| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .mode(lock_file_mode(ownership.mode))
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
    };
    let file = match open(false) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Ok(file) = open(true).or_else(|_| open(false)) else {
                return Ok(None);
            };
            // The creator's umask must not narrow it, and its group is the table's.
            let _ =
                file.set_permissions(fs::Permissions::from_mode(lock_file_mode(ownership.mode)));
            if let Some(gid) = ownership.gid {
                let _ = std::os::unix::fs::fchown(&file, None, Some(gid));
            }
            file
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::UnsafeFile {
                path,
                why: "it is a symbolic link".into(),
            });
        }
        Err(_) => return Ok(None),
    };
    let Ok(meta) = file.metadata() else {
        return Ok(None);
    };
    check_trusted(&path, &meta)?;
    // A lock file that those who may not write the table can read would let them hold it:
    // not one to trust.
    let readable_by = meta.mode() & 0o444;
    let writers_read = (ownership.mode & 0o222) << 1;
    Ok((meta.file_type().is_file() && readable_by & !writers_read == 0).then_some(file))
}

/// What moving the table away from a reader's lock came to.
enum Move {
    /// The table is in a new file, which this handle now has open and holds the lock of.
    Done,
    /// The write lock came free meanwhile: this handle holds it.
    Held,
    /// The path names another file, or a writer has the lock now: start again.
    Retry,
    /// Not possible here (no lock file, or no right to create files beside the table).
    Unable,
}

impl Registry {
    /// How long a transaction waits for another writer to finish (default: 10 s). A client
    /// marking a server down does not wait at all (it tries again on a later operation).
    pub fn set_lock_wait(&mut self, wait: LockWait) {
        self.lock_wait = wait;
    }

    /// Who holds the writer lock, for messages: the process a classic POSIX lock names, else
    /// the writer that recorded itself in the header, if it still runs.
    fn lock_holder(&self, file: &File) -> Option<String> {
        let pid = crate::shm::lock_holder(file).or_else(|| {
            let word = self.map.load(format::LOCKER_WORD, Ordering::Acquire)?;
            let holder = crate::processes::ProcessId::from_word(word);
            holder.is_alive().then_some(holder.pid)
        })?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        Some(match comm.trim() {
            "" => format!("pid {pid}"),
            name => format!("pid {pid}, {name}"),
        })
    }

    /// Runs `work` holding the exclusive lock on the file that the path names now.
    pub(super) fn locked<T>(&mut self, work: impl FnOnce(&mut Registry) -> Result<T>) -> Result<T> {
        if !self.writable {
            return Err(Error::PermissionDenied {
                op: "write (opened read-only)",
                path: self.path.clone(),
            });
        }
        for _ in 0..16 {
            let mut guard = self
                .file
                .try_clone()
                .map_err(|e| Error::io("lock", &self.path, e))?;
            // Clients, which never wait, do not move tables either: they retry later.
            let movable = self.lock_wait != LockWait::Never;
            let acquired = acquire_lock(&guard, &self.path, self.lock_wait, movable, |file| {
                self.lock_holder(file)
            })?;
            if acquired == Acquired::ByAReader {
                match self.move_away_from_reader()? {
                    Move::Done => {
                        guard = self
                            .file
                            .try_clone()
                            .map_err(|e| Error::io("lock", &self.path, e))?;
                    }
                    Move::Held => {}
                    Move::Retry => {
                        drop(guard);
                        self.reopen()?;
                        continue;
                    }
                    Move::Unable => {
                        acquire_lock(&guard, &self.path, self.lock_wait, false, |file| {
                            self.lock_holder(file)
                        })?;
                    }
                }
            }
            let current = fs::symlink_metadata(&self.path)
                .map_err(|e| Error::io("inspect", &self.path, e))?;
            if (current.dev(), current.ino()) == self.file_id {
                if self.map.is_poisoned() {
                    // Truncated under us, maybe whole again: map it anew (on a duplicate of our
                    // descriptor: `guard` keeps holding the lock). If it is still short, the
                    // work says so or repairs it.
                    self.recover();
                }
                let me = crate::processes::ProcessId::current().map_or(0, |p| p.to_word());
                self.map.store(format::LOCKER_WORD, me, Ordering::Release);
                // A grower that died before its rename left MOVED set on the current file.
                if let Ok((version, true)) = self.committed() {
                    self.store_committed(version, false);
                }
                let result = work(self);
                self.map.store(format::LOCKER_WORD, 0, Ordering::Release);
                let _ = crate::shm::write_unlock(&guard);
                return result;
            }
            let _ = crate::shm::write_unlock(&guard);
            drop(guard);
            self.reopen()?;
        }
        Err(Error::Io {
            op: "lock",
            path: self.path.clone(),
            source: std::io::Error::other(
                "the file kept being replaced while waiting for its lock",
            ),
        })
    }

    /// A reader's read lock keeps writers out of the table: under the domain's lock file, copy
    /// the table as it is to a new file, take that file's write lock, and put it in place
    /// ([`Registry::move_copy`]). This handle moves to the new file.
    fn move_away_from_reader(&mut self) -> Result<Move> {
        let ownership = FileOwnership::of(&self.file);
        let Some(turn) = open_lock_file(&self.path, ownership)? else {
            return Ok(Move::Unable);
        };
        let turn_path = lock_file_path(&self.path);
        acquire_lock(&turn, &turn_path, self.lock_wait, false, |_| None)?;
        let moved = self.move_holding_turn(ownership);
        let _ = crate::shm::write_unlock(&turn);
        moved
    }

    fn move_holding_turn(&mut self, ownership: FileOwnership) -> Result<Move> {
        let current =
            fs::symlink_metadata(&self.path).map_err(|e| Error::io("inspect", &self.path, e))?;
        if (current.dev(), current.ino()) != self.file_id {
            return Ok(Move::Retry);
        }
        if crate::shm::try_write_lock(&self.file).map_err(|e| Error::io("lock", &self.path, e))? {
            return Ok(Move::Held);
        }
        if !crate::shm::read_locked(&self.file) {
            return Ok(Move::Retry);
        }
        // No writer can hold the table now (the read lock keeps them all out).
        Ok(match self.move_copy(ownership)? {
            Copied::Moved => Move::Done,
            Copied::Unable => Move::Unable,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_those_who_may_write_the_table_may_open_its_lock_file() {
        assert_eq!(super::lock_file_mode(0o644), 0o600);
        assert_eq!(super::lock_file_mode(0o664), 0o660);
        assert_eq!(super::lock_file_mode(0o666), 0o666);
        assert_eq!(super::lock_file_mode(0o444), 0);
    }
}
