//! What both command-line tools share: the error for bad input they find themselves, and the
//! quiet exit on a closed pipe (`mcadmin list | head -1`). Included by path in each binary.

/// Bad input found by the tool itself (not by libmcshm); exits with the usage/bad-input code.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Whether the error is a write to a closed pipe (the reader went away: exit 0 quietly).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
