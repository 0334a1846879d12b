//! Replacing a table's file by a new one beside it: how a table grows, is upgraded to the
//! current format, escapes a reader's lock, and is repaired when its header is unusable.
//!
//! Why a file is replaced rather than edited: every process using the domain has it mapped,
//! at the length and layout its header gave when the process opened it. Shrinking a mapped file
//! would SIGBUS those readers, and a new layout written in place (a larger capacity, a newer
//! format, a repaired header) would no longer match the mappings they hold. A reader's read
//! lock keeps every writer out of the file it locked, but not out of a new one. So the new
//! image goes into a new file, and the old one stays as it was (but for its MOVED bit) until
//! nobody maps it.
//!
//! The order that keeps every reader safe, in every process:
//!
//! 1. The new image is written to a temporary file beside the table ([`Temp::write`]: same
//!    directory, so that the rename is atomic; a name no domain has). A writer that escapes a
//!    reader's lock also takes the new file's write lock now ([`Temp::lock`]), so that it
//!    holds the lock of the table from the moment the table is at the path.
//! 2. MOVED is set in the old mapping's committed word: a reader that sees it re-opens the
//!    path. If the path still names the old file (the writer died before its rename), the old
//!    table is still the current one and the next writer clears the bit.
//! 3. The temporary file is renamed over the path. If that fails, the temporary file is
//!    removed and the old committed word is put back (MOVED cleared): nothing changed.
//! 4. Waiters on the old file's futex are woken, to re-open the path.
//! 5. The writer's handle adopts the new file (growth and the escape; a repair has no handle).
//!
//! [`Temp::put_in_place`] alone does steps 2 to 4: no path stores MOVED, renames or wakes on its
//! own, and a temp dropped before it is put in place is removed. Each path says which committed word announces the move on the old
//! file ([`Leaving`]): the handle's own seal for growth and the escape, and for a repair
//! (whose header's format is unknown) a checked word that readers of either format follow.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::files::{FileOwnership, write_temp};
use super::{Registry, wake_waiters};
use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::format;
use crate::seqlock::Words;
use crate::shm::{SharedMap, monotonic_ns};

/// The file a table leaves, as the move is announced on it.
pub(super) struct Leaving<'a> {
    /// Its mapping; `None` when not even its header maps (a repair of a truncated file): then
    /// there is nobody to tell.
    pub(super) map: Option<&'a SharedMap>,
    /// Its committed word with MOVED set: stored before the rename.
    pub(super) moved: u64,
    /// Its committed word as it was: stored back when the rename fails.
    pub(super) restored: u64,
}

/// A new image of a table in a temporary file beside it, not yet in place. Dropped before it
/// is put in place, the file is removed.
pub(super) struct Temp {
    path: Option<PathBuf>,
    /// The new file, write-locked ([`Temp::lock`]).
    locked: Option<File>,
}

/// What [`Temp::put_in_place`] did: the new file is at the path.
pub(super) struct Placed {
    /// Its descriptor, holding its write lock, when the temp was locked.
    pub(super) locked: Option<File>,
    /// [`crate::monotonic_ns`] right after the rename (when readers can see the new file).
    pub(super) renamed_ns: u64,
}

impl Temp {
    /// Writes `words`, a complete registry file, under a temporary name in `dir`, owned like
    /// `ownership`.
    pub(super) fn write(
        dir: &Path,
        domain: &Domain,
        words: &[u64],
        ownership: FileOwnership,
    ) -> Result<Temp> {
        Ok(Temp {
            path: Some(write_temp(dir, domain, words, ownership)?),
            locked: None,
        })
    }

    /// Opens the new file and takes its write lock (no link followed); false when it cannot.
    pub(super) fn lock(&mut self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path);
        match opened {
            Ok(file) if crate::shm::try_write_lock(&file).unwrap_or(false) => {
                self.locked = Some(file);
                true
            }
            _ => false,
        }
    }

    /// Puts the new file in place of the table at `path`: MOVED set on the file it leaves,
    /// the rename, then the waiters woken. A failed rename removes the new file and puts the
    /// old committed word back.
    pub(super) fn put_in_place(mut self, path: &Path, leaving: Leaving<'_>) -> Result<Placed> {
        let tmp = self.path.take().expect("a temp is put in place once");
        let locked = self.locked.take();
        if let Some(old) = leaving.map {
            old.store(format::COMMITTED_WORD, leaving.moved, Ordering::Release);
        }
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            if let Some(old) = leaving.map {
                old.store(format::COMMITTED_WORD, leaving.restored, Ordering::Release);
            }
            return Err(Error::io("replace", path, e));
        }
        let renamed_ns = monotonic_ns();
        if let Some(old) = leaving.map {
            wake_waiters(old);
        }
        Ok(Placed { locked, renamed_ns })
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(tmp) = &self.path {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// What [`Registry::move_copy`] came to.
pub(super) enum Copied {
    /// The table is in a new file, which this handle now has open and holds the lock of.
    Moved,
    /// Not possible here: no right to create files beside the table, or the new file could not
    /// be locked.
    Unable,
}

impl Registry {
    /// The file this handle maps, leaving at committed `version`: MOVED and its undoing in the
    /// file's own seal.
    fn leaving(&self, version: u64) -> Leaving<'_> {
        Leaving {
            map: Some(&self.map),
            moved: self.geometry.seal.encode(version, true),
            restored: self.geometry.seal.encode(version, false),
        }
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Growth and format upgrade, under the writer lock: puts `words` (a new file holding
    /// version `current + 1`) in place of this handle's file (committed at `current`), then
    /// opens the file the path names.
    pub(super) fn replace_file(&mut self, words: &[u64], current: u64) -> Result<()> {
        let temp = Temp::write(
            self.dir(),
            &self.domain,
            words,
            FileOwnership::of(&self.file),
        )?;
        temp.put_in_place(&self.path, self.leaving(current))?;
        self.reopen()
    }

    /// The escape from a reader's lock (see `lock`), taking turns on the lock file and with no
    /// writer able to hold the table: copies the file whole, as it stands, to a new file
    /// owned like `ownership`, write-locked before it is put in place; this handle then has it
    /// open. Clients may still count failures meanwhile: a count lost is counted again.
    pub(super) fn move_copy(&mut self, ownership: FileOwnership) -> Result<Copied> {
        let len = self
            .file
            .metadata()
            .map_err(|e| Error::io("inspect", &self.path, e))?
            .len();
        let mut words = vec![0u64; (len / 8) as usize];
        self.map
            .copy_out(0, &mut words)
            .ok_or_else(|| self.corrupt("shorter than its header says".into()))?;
        let (version, _) = self.committed()?;
        let mut temp = match Temp::write(self.dir(), &self.domain, &words, ownership) {
            Ok(temp) => temp,
            Err(Error::PermissionDenied { .. }) => return Ok(Copied::Unable),
            Err(e) => return Err(e),
        };
        if !temp.lock() {
            return Ok(Copied::Unable);
        }
        let placed = temp.put_in_place(&self.path, self.leaving(version))?;
        let file = placed.locked.expect("locked before it was put in place");
        let fresh = Registry::from_file(self.path.clone(), self.domain.clone(), file, true)?;
        self.adopt(fresh);
        Ok(Copied::Moved)
    }
}

#[cfg(test)]
mod tests {
    //! The steps around the rename on real files: what a reader of the old mapping sees, and
    //! that a temp never outlives a failed or abandoned move.
    use super::*;
    use crate::domain::Domain;

    const OLD: u64 = 0x11;
    const MOVED: u64 = 0x22;

    /// A table directory holding an "old file" of one header, mapped as its readers map it.
    fn old_file(dir: &Path) -> (PathBuf, SharedMap) {
        let path = dir.join("d.mcshm");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.set_len(format::HEADER_LEN as u64).unwrap();
        let map = SharedMap::map(&file, format::HEADER_LEN, true).unwrap();
        map.store(format::COMMITTED_WORD, OLD, Ordering::Release);
        (path, map)
    }

    fn temp(dir: &Path) -> Temp {
        let domain = Domain::new("d").unwrap();
        Temp::write(dir, &domain, &[7; 4], FileOwnership::default()).unwrap()
    }

    fn leaving(map: &SharedMap) -> Leaving<'_> {
        Leaving {
            map: Some(map),
            moved: MOVED,
            restored: OLD,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_new_file_takes_the_path_the_old_one_says_moved_and_its_waiters_are_woken() {
        let dir = tempfile::tempdir().unwrap();
        let (path, map) = old_file(dir.path());
        let wakes = map.load_u32(format::WAKE_OFFSET).unwrap();
        let placed = temp(dir.path()).put_in_place(&path, leaving(&map)).unwrap();
        assert!(placed.locked.is_none());
        assert_eq!(fs::read(&path).unwrap(), bytemuck::cast_slice(&[7u64; 4]));
        assert_eq!(
            map.load(format::COMMITTED_WORD, Ordering::Acquire),
            Some(MOVED)
        );
        assert_eq!(map.load_u32(format::WAKE_OFFSET), Some(wakes + 1));
        assert_eq!(names(dir.path()), ["d.mcshm"]);
    }

    #[test]
    fn a_failed_rename_removes_the_temp_and_puts_the_old_word_back() {
        let dir = tempfile::tempdir().unwrap();
        let (_, map) = old_file(dir.path());
        // A directory in the way: the rename fails.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        let wakes = map.load_u32(format::WAKE_OFFSET).unwrap();
        assert!(
            temp(dir.path())
                .put_in_place(&blocked, leaving(&map))
                .is_err()
        );
        assert_eq!(
            map.load(format::COMMITTED_WORD, Ordering::Acquire),
            Some(OLD)
        );
        assert_eq!(
            map.load_u32(format::WAKE_OFFSET),
            Some(wakes),
            "nobody woken"
        );
        assert_eq!(names(dir.path()), ["blocked", "d.mcshm"]);
    }

    #[test]
    fn a_temp_abandoned_before_its_move_is_removed_and_a_locked_one_hands_over_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (path, map) = old_file(dir.path());
        let mut abandoned = temp(dir.path());
        assert!(abandoned.lock());
        drop(abandoned);
        assert_eq!(names(dir.path()), ["d.mcshm"]);
        let mut locked = temp(dir.path());
        assert!(locked.lock());
        let placed = locked.put_in_place(&path, leaving(&map)).unwrap();
        let file = placed.locked.expect("the lock handed over");
        // Another descriptor of the new file cannot take its lock: this one holds it.
        let other = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert!(!crate::shm::try_write_lock(&other).unwrap_or(false));
        drop(file);
    }
}
