//! The registry's files: opened only when safe (a regular file, not a link, owned as it must
//! be), created with their mode and group, and written beside the live file as temporaries
//! that are renamed into place.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::clock::now_ms;
use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::format::{self, Layout};
use crate::shared_ring;
use crate::shm::effective_uid;
use crate::table::{CommitInfo, Table};

/// Mode of new registry files and directories.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// Mode and group of a new registry file. A file that is rewritten (growth, format migration,
/// repair) keeps the mode and group it had.
///
/// The default follows the directory: in a group-writable one (the packaged /run/mcshm, 0775
/// mcshm:mcshm) a new file is 0664 with the directory's group, so that the units (user mcshm)
/// and the applications in that group can write a table whoever created it first (root
/// adding a domain before the units ran); elsewhere 0644 with the creator's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOwnership {
    pub mode: u32,
    pub gid: Option<u32>,
    /// Chosen by the directory a file is created in (see above), not by `mode` and `gid`.
    pub from_dir: bool,
}

impl Default for FileOwnership {
    fn default() -> FileOwnership {
        FileOwnership {
            mode: FILE_MODE,
            gid: None,
            from_dir: true,
        }
    }
}

impl FileOwnership {
    /// The mode and group of an existing file.
    pub(super) fn of(file: &File) -> FileOwnership {
        file.metadata().map_or_else(
            |_| FileOwnership::default(),
            |m| FileOwnership {
                mode: m.mode() & 0o7777,
                gid: Some(m.gid()),
                from_dir: false,
            },
        )
    }

    /// The mode and group a file created in `dir` gets (see [`FileOwnership`]).
    pub(super) fn in_dir(self, dir: &Path) -> FileOwnership {
        if !self.from_dir {
            return self;
        }
        match fs::metadata(dir) {
            Ok(m) if m.mode() & 0o020 != 0 => FileOwnership {
                mode: 0o664,
                gid: Some(m.gid()),
                from_dir: false,
            },
            _ => FileOwnership {
                from_dir: false,
                ..self
            },
        }
    }

    /// From `--mode` (octal permission bits with owner read and write) and `--group` (a name
    /// in /etc/group, or a numeric gid).
    pub fn parse(mode: &str, group: Option<&str>) -> Result<FileOwnership> {
        let bits = u32::from_str_radix(mode, 8)
            .ok()
            .filter(|m| *m <= 0o777 && m & 0o600 == 0o600)
            .ok_or_else(|| {
                Error::invalid(
                    "mode",
                    mode,
                    "octal permission bits with owner read and write, e.g. 644",
                )
            })?;
        let gid = match group {
            None => None,
            Some(name) => Some(
                name.parse::<u32>()
                    .ok()
                    .or_else(|| group_id(name))
                    .ok_or_else(|| {
                        Error::invalid(
                            "group",
                            name,
                            "unknown group: not in /etc/group (give a group name or a numeric gid)",
                        )
                    })?,
            ),
        };
        Ok(FileOwnership {
            mode: bits,
            gid,
            from_dir: false,
        })
    }
}

/// The id of group `name`, from /etc/group.
fn group_id(name: &str) -> Option<u32> {
    let groups = fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name))
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

/// Opens a registry file without following symlinks, refusing anything but a regular file, and
/// in a world-writable directory anything not owned by us or root.
pub(super) fn open_checked(path: &Path, domain: &Domain, writable: bool) -> Result<File> {
    open_trusted(path, writable).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::NoDomain {
                domain: domain.to_string(),
                path: path.to_path_buf(),
            }
        }
        other => other,
    })
}

/// Opens a file mcshm trusts (a table, credentials): never through a symbolic link, only a
/// regular file, and in a world-writable directory only the caller's or root's (see
/// [`check_trusted`]). A missing file is an [`Error::Io`] whose source is `NotFound`.
pub fn open_trusted(path: &Path, writable: bool) -> Result<File> {
    // O_NONBLOCK: opening a FIFO planted at the path must not wait for a writer (it is then
    // refused below as not a regular file); on a regular file the flag changes nothing.
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::UnsafeFile {
                path: path.to_path_buf(),
                why: "it is a symbolic link".into(),
            },
            _ if writable => Error::io("open for writing", path, e),
            _ => Error::io("open for reading", path, e),
        })?;
    let meta = file.metadata().map_err(|e| Error::io("inspect", path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::UnsafeFile {
            path: path.to_path_buf(),
            why: "not a regular file".into(),
        });
    }
    check_trusted(path, &meta)?;
    Ok(file)
}

/// Whether this process may trust the file at `path` (its metadata `meta`): in a
/// world-writable directory (a sticky one, as /tmp) anyone could have made it, so only files of
/// this user or root are trusted there. Every file mcshm trusts goes through this: the table,
/// its lock file, its credentials.
pub fn check_trusted(path: &Path, meta: &fs::Metadata) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir_meta = fs::metadata(dir).map_err(|e| Error::io("inspect", dir, e))?;
    let me = effective_uid();
    if dir_meta.mode() & 0o002 == 0 || meta.uid() == me || meta.uid() == 0 {
        return Ok(());
    }
    let trusted = match me {
        0 => "root's files".to_string(),
        _ => format!("files of {} or root", user_name(me)),
    };
    Err(Error::UnsafeFile {
        path: path.to_path_buf(),
        why: format!(
            "owned by {} in the world-writable directory {}, where only {trusted} are trusted \
             (anyone could have made it): remove it (root or the directory's owner can), or keep \
             the registry in a directory only its users may write",
            user_name(meta.uid()),
            dir.display(),
        ),
    })
}

/// `uid N (NAME)`, the name from /etc/passwd when it has one.
fn user_name(uid: u32) -> String {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid.to_string()).then(|| name.to_string())
    });
    match name {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

/// Creates `dir` if needed and an empty table for `domain` in it; losing a creation race to
/// another process is fine (the file is complete before it gets its name).
pub(super) fn create_empty(dir: &Path, domain: &Domain, ownership: FileOwnership) -> Result<()> {
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| Error::io("create directory", dir, e))?;
    }
    let layout = Layout::new(format::DEFAULT_CAPACITY, now_ms());
    let words = new_file(&layout, domain, 0, &Table::default(), 1);
    let tmp = write_temp(dir, domain, &words, ownership)?;
    let path = domain.path_in(dir);
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(Error::io("create", &path, e))
        }
        _ => Ok(()),
    }
}

/// The words of a new file laid out as `layout` holding `table` as version `version`, with its
/// shared ring in region 0.
pub(super) fn new_file(
    layout: &Layout,
    domain: &Domain,
    version: u64,
    table: &Table,
    next_id: u32,
) -> Vec<u64> {
    // A modula domain has no ring.
    let distribution = table.policy.distribution;
    let ringed = distribution.has_ring();
    let pending = layout.ring_words(0).filter(|_| ringed).and_then(|at| {
        let members = crate::table::routed(&table.servers, table.policy.failover);
        let ring = distribution.ring(&crate::table::members(&table.servers, &members));
        shared_ring::RingToWrite::new(ring, members, version, at, 0)
    });
    let reference = pending.as_ref().map(shared_ring::RingToWrite::reference);
    let image = format::encode_slot(version, CommitInfo::now(), table, next_id, reference, None);
    let mut words = layout.file_image(domain.as_str(), version, &image, &table.servers);
    if let Some(pending) = pending {
        let written = pending.write(|at, chunk| {
            words.get_mut(at..at + chunk.len())?.copy_from_slice(chunk);
            Some(())
        });
        debug_assert!(written.is_some(), "the layout holds its rings");
    }
    words
}

/// Removes the temporary files (see [`write_temp`], and [`create_beside`]'s of the invalidation
/// log) of `domain` left by writers that were killed while writing one: those whose process is
/// gone. A live process's file is its own business (it is writing it now); a reused pid only
/// delays the removal. Best effort: errors are ignored (the files are garbage, never read).
pub(super) fn remove_orphan_temps(dir: &Path, domain: &Domain) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{}.", domain.as_str());
    for entry in entries.flatten() {
        let name = entry.file_name();
        // `.DOMAIN.PID.tmp` (the table's) or `.DOMAIN.PID.ilog.tmp` (its invalidation log's);
        // never `.DOMAIN.N.PID.tmp`, which is domain `DOMAIN.N`'s.
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.strip_suffix(".tmp"))
            .map(|n| n.strip_suffix(".ilog").unwrap_or(n))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Writes a complete registry file under a temporary name in `dir` (leading '.', which no domain
/// name has) and returns that name.
pub(super) fn write_temp(
    dir: &Path,
    domain: &Domain,
    words: &[u64],
    ownership: FileOwnership,
) -> Result<PathBuf> {
    let tmp = dir.join(format!(".{}.{}.tmp", domain.as_str(), std::process::id()));
    // The rings' unused point space is zeros: leave it a hole.
    let used = words.iter().rposition(|&w| w != 0).map_or(0, |i| i + 1);
    write_new(
        dir,
        &tmp,
        bytemuck::cast_slice(&words[..used]),
        words.len() as u64 * 8,
        ownership,
    )?;
    Ok(tmp)
}

/// Creates the file `DIR/DOMAIN.extension` beside the domain's table whole or not at all:
/// `image`, then zeros up to `len` bytes (a hole, which costs no memory until written), with
/// `ownership`, under a temporary name (`.DOMAIN.PID.extension.tmp`) that is then linked into
/// place. `Ok(false)`: another process made it first, and theirs is kept.
pub(super) fn create_beside(
    dir: &Path,
    domain: &Domain,
    extension: &str,
    image: &[u8],
    len: u64,
    ownership: FileOwnership,
) -> Result<bool> {
    let path = dir.join(format!("{}.{extension}", domain.as_str()));
    let tmp = dir.join(format!(
        ".{}.{}.{extension}.tmp",
        domain.as_str(),
        std::process::id()
    ));
    write_new(dir, &tmp, image, len, ownership)?;
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io("create", &path, e)),
    }
}

/// Writes a new file at `tmp` in `dir` (replacing a leftover of this process): `bytes`, then
/// zeros up to `len` as a hole, with `ownership`'s mode (whatever the umask) and group. Removed
/// again on failure.
fn write_new(
    dir: &Path,
    tmp: &Path,
    bytes: &[u8],
    len: u64,
    ownership: FileOwnership,
) -> Result<()> {
    let ownership = ownership.in_dir(dir);
    let _ = fs::remove_file(tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(tmp)
        .map_err(|e| Error::io("create a registry file in", dir, e))?;
    let written = file
        .set_permissions(fs::Permissions::from_mode(ownership.mode))
        .and_then(|()| match ownership.gid {
            Some(gid) => std::os::unix::fs::fchown(&file, None, Some(gid)),
            None => Ok(()),
        })
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| file.set_len(len));
    if let Err(e) = written {
        let _ = fs::remove_file(tmp);
        return Err(Error::io("write", tmp, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{FileOwnership, remove_orphan_temps};
    use crate::domain::Domain;

    #[test]
    fn orphan_temporaries_of_the_table_and_its_log_go_and_no_other_domains() {
        let dir = tempfile::tempdir().unwrap();
        // No process has pid 999999999 (pid_max is at most 2^22).
        let dead = ".app.999999999";
        let live = format!(".app.{}", std::process::id());
        let names = [
            format!("{dead}.tmp"),
            format!("{dead}.ilog.tmp"),
            format!("{live}.tmp"),
            format!("{live}.ilog.tmp"),
            // Domain app.12's, and a file mcshm does not make.
            ".app.12.999999999.tmp".to_string(),
            ".app.12.999999999.ilog.tmp".to_string(),
            format!("{dead}.other.tmp"),
        ];
        for name in &names {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        remove_orphan_temps(dir.path(), &Domain::new("app").unwrap());
        let kept: Vec<bool> = names.iter().map(|n| dir.path().join(n).exists()).collect();
        assert_eq!(kept, [false, false, true, true, true, true, true]);
    }

    #[test]
    fn ownership_takes_octal_modes_with_owner_read_write_and_groups_by_name_or_id() {
        let own = FileOwnership::parse("640", Some("0")).unwrap();
        assert_eq!((own.mode, own.gid), (0o640, Some(0)));
        assert_eq!(
            FileOwnership::parse("644", Some("root")).unwrap().gid,
            Some(0)
        );
        assert_eq!(FileOwnership::parse("600", None).unwrap().gid, None);
        for bad in ["9", "1777", "444", "64x", ""] {
            let err = FileOwnership::parse(bad, None).unwrap_err().to_string();
            assert!(err.starts_with("invalid mode"), "{bad}: {err}");
        }
        let err = FileOwnership::parse("644", Some("no-such-group-here"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown group"), "{err}");
    }
}
