//! Process records: which processes have a domain open (`mcadmin clients`). Each process that
//! opens a domain claims a 64-byte record in the file's clients region, identified by pid and
//! process start time (so a recycled pid is not mistaken for the old process), and notes the
//! table version it last used and when. (Not to be confused with `libmcshm::client`, the
//! memcached client: these are the processes, whatever they use the table for.)

/// A process: pid plus its start time (clock ticks since boot, from /proc), packed in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    start: u32,
}

impl ProcessId {
    /// This process (`None` without /proc).
    pub fn current() -> Option<ProcessId> {
        let pid = std::process::id();
        Some(ProcessId {
            pid,
            start: start_time(pid)?,
        })
    }

    pub(crate) fn to_word(self) -> u64 {
        (u64::from(self.start) << 32) | u64::from(self.pid)
    }

    pub(crate) fn from_word(word: u64) -> ProcessId {
        ProcessId {
            pid: word as u32,
            start: (word >> 32) as u32,
        }
    }

    /// Whether the process still runs (same pid, same start time). A pid that /proc does not
    /// show may belong to a process hidden from this user (a unit's `ProtectProc=invisible`, a
    /// /proc mounted with `hidepid`): it counts as alive while it exists, so that a hardened
    /// daemon never takes a live process's record or lock for a dead one's (a record kept for
    /// a recycled pid until /proc shows it costs a slot, never a live process's state).
    pub fn is_alive(self) -> bool {
        if self.pid == 0 {
            return false;
        }
        match start_time(self.pid) {
            Some(start) => start == self.start,
            None => !proc_shows(self.pid) && crate::shm::process_exists(self.pid),
        }
    }
}

/// Whether /proc shows `pid` (it exists and is not hidden from this user).
fn proc_shows(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Field 22 of /proc/PID/stat (start time in clock ticks), truncated to 32 bits.
fn start_time(pid: u32) -> Option<u32> {
    stat_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The start time in a /proc/PID/stat line (see [`start_time`]).
fn stat_start_time(stat: &str) -> Option<u32> {
    // The command name (field 2) is in parentheses and may contain spaces: skip past it.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let ticks: u64 = after.split(' ').nth(19)?.parse().ok()?;
    Some(ticks as u32)
}

/// This process's name (/proc/self/comm, at most 15 bytes), as two words.
pub(crate) fn comm_words() -> [u64; 2] {
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    let mut bytes = [0u8; 16];
    let name = comm.trim_end().as_bytes();
    let len = name.len().min(15);
    bytes[..len].copy_from_slice(&name[..len]);
    [
        u64::from_le_bytes(bytes[..8].try_into().unwrap()),
        u64::from_le_bytes(bytes[8..].try_into().unwrap()),
    ]
}

/// One process using a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessRecord {
    pub pid: u32,
    pub command: String,
    /// The table version it last used, and when (ms since the epoch; 0: not yet or unknown).
    pub version: u64,
    pub last_used_ms: u64,
    /// Whether it holds a clients record (false: found only by its mapping of the file; it
    /// opened it read-only, or every record was taken).
    pub recorded: bool,
    /// Whether it may write the file: a record (only a writer makes one), or a writable
    /// mapping of it. A process that maps it read-only cannot log the writes it routes (see
    /// `registry::invalidations`).
    pub writable: bool,
}

/// Every process (other than this one) that has `file` mapped, as /proc shows it: the live
/// file, or an older one it replaced (" (deleted)": the process follows on its next read).
/// Only the processes whose maps this user may read (all of them for root).
pub fn processes_mapping(file: &std::path::Path) -> Vec<ProcessRecord> {
    processes_mapping_each(&[file]).pop().unwrap_or_default()
}

/// [`processes_mapping`] of several files in one walk of /proc (each process's maps read once,
/// not once per file): per file, in the order given.
pub fn processes_mapping_each(files: &[&std::path::Path]) -> Vec<Vec<ProcessRecord>> {
    let mut found: Vec<Vec<ProcessRecord>> = vec![Vec::new(); files.len()];
    // Per file: its path, and the name of an older file it replaced, as maps lines end.
    let names: Vec<Option<(String, String)>> = files
        .iter()
        .map(|file| {
            let canonical = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
            let path = canonical.to_str()?.to_string();
            let replaced = format!("{path} (deleted)");
            Some((path, replaced))
        })
        .collect();
    if names.iter().all(Option::is_none) {
        return found;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(maps) = std::fs::read_to_string(entry.path().join("maps")) else {
            continue;
        };
        let mut command = None;
        for (n, name) in names.iter().enumerate() {
            let Some((path, replaced)) = name else {
                continue;
            };
            let mut mappings = maps
                .lines()
                .filter(|line| line.ends_with(path.as_str()) || line.ends_with(replaced.as_str()))
                .peekable();
            if mappings.peek().is_some() {
                // The second field of a maps line is the mapping's permissions ("rw-s").
                let writable = mappings.any(|line| {
                    line.split_whitespace()
                        .nth(1)
                        .is_some_and(|p| p.contains('w'))
                });
                let command = command.get_or_insert_with(|| {
                    let comm =
                        std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                    comm.trim_end().to_string()
                });
                found[n].push(ProcessRecord {
                    pid,
                    command: command.clone(),
                    version: 0,
                    last_used_ms: 0,
                    recorded: false,
                    writable,
                });
            }
        }
    }
    found
}

impl ProcessRecord {
    pub(crate) fn from_record(id: ProcessId, record: &[u64; 8]) -> ProcessRecord {
        let mut name = [0u8; 16];
        name[..8].copy_from_slice(&record[3].to_le_bytes());
        name[8..].copy_from_slice(&record[4].to_le_bytes());
        let len = name.iter().position(|&b| b == 0).unwrap_or(16);
        ProcessRecord {
            pid: id.pid,
            command: String::from_utf8_lossy(&name[..len]).into_owned(),
            version: record[1],
            last_used_ms: record[2],
            recorded: true,
            writable: true,
        }
    }
}

/// This host's name (the kernel's, as `hostname` prints it; `localhost` when unreadable): what
/// a reason written into a table shared across hosts names with a pid.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_id_is_one_word_pid_low_start_time_high() {
        let id = ProcessId {
            pid: 4242,
            start: 0xdead_beef,
        };
        assert_eq!(id.to_word(), 0xdead_beef_0000_1092);
        assert_eq!(ProcessId::from_word(id.to_word()), id);
        let max = ProcessId {
            pid: u32::MAX,
            start: u32::MAX,
        };
        assert_eq!(ProcessId::from_word(max.to_word()), max);
    }

    #[test]
    fn the_start_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        // Fields 3.. after the name; the start time is field 22 (the 20th after the name).
        let rest = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21";
        for comm in ["memcached", "a b", "x) (y", ") ) "] {
            let stat = format!("4242 ({comm}) {rest}\n");
            assert_eq!(stat_start_time(&stat), Some(987654), "{comm:?}");
        }
        // 64-bit tick counts are kept to their low 32 bits (compared, never shown).
        let big = format!("1 (sh) {}", rest.replace("987654", "4294967297"));
        assert_eq!(stat_start_time(&big), Some(1));
        for bad in [
            "",
            "4242 (x)",
            "4242 (x) S 1 2",
            "4242 no parens at all",
            "1 (x) S ñ",
        ] {
            assert_eq!(stat_start_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn this_process_is_alive_and_a_process_with_another_start_time_is_not() {
        let me = ProcessId::current().expect("/proc");
        assert_eq!(me.pid, std::process::id());
        assert!(me.is_alive());
        let recycled = ProcessId {
            start: me.start.wrapping_add(1),
            ..me
        };
        assert!(!recycled.is_alive(), "a recycled pid is another process");
        assert!(!ProcessId::from_word(0).is_alive());
    }

    #[test]
    fn a_clients_record_gives_the_command_its_version_and_last_use() {
        let id = ProcessId { pid: 7, start: 1 };
        let name = *b"mcproxy-worker-1";
        let record = [
            id.to_word(),
            12,
            34,
            u64::from_le_bytes(name[..8].try_into().unwrap()),
            u64::from_le_bytes(name[8..].try_into().unwrap()),
            0,
            0,
            0,
        ];
        let read = ProcessRecord::from_record(id, &record);
        assert_eq!(read.pid, 7);
        assert_eq!(read.command, "mcproxy-worker-1", "16 bytes, no terminator");
        assert_eq!((read.version, read.last_used_ms), (12, 34));
        assert!(read.recorded);
        // This process's own name, as it writes it, reads back as /proc shows it.
        let [a, b] = comm_words();
        let mine = ProcessRecord::from_record(id, &[0, 0, 0, a, b, 0, 0, 0]);
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(mine.command, comm.trim_end());
    }
}
