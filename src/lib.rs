//! What the three command-line tools (mcadmin, mclient, mcproxy) share: the error for bad input
//! they find themselves, how an error is printed (once, as `TOOL: error`), and the quiet exit
//! on a closed pipe (`mcadmin list | head -1`). Each tool names its own exit codes (an enum
//! turned into the process's code); their meanings are in each tool's `--help` and manual.

/// Declares a tool's exit codes: the enum (its meanings documented in the tool's `--help` and
/// manual) and its conversion to the process's exit status.
///
/// ```
/// mcshm_cli::exit_codes! {
///     /// Exit codes.
///     pub enum Exit { Success = 0, No = 1 }
/// }
/// assert_eq!(u8::from(Exit::No), 1);
/// ```
#[macro_export]
macro_rules! exit_codes {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $code:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $name { $($(#[$vmeta])* $variant = $code),+ }

        impl From<$name> for u8 {
            fn from(exit: $name) -> u8 {
                exit as u8
            }
        }
    };
}

/// Bad input found by the tool itself (not by libmcshm); exits with the usage/bad-input code.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A tool's `main`: runs it, prints an error once as `NAME: error` and exits with the code
/// `exit_for` gives it; a closed pipe (`mcadmin list | head -1`) exits 0 quietly.
pub fn finish<E: Copy + Into<u8>>(
    name: &str,
    result: anyhow::Result<E>,
    success: E,
    exit_for: impl Fn(&anyhow::Error) -> E,
) -> std::process::ExitCode {
    let code = match result {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => success,
        Err(err) => {
            eprintln!("{name}: {err:#}");
            exit_for(&err)
        }
    };
    std::process::ExitCode::from(code.into())
}

/// Whether the error is a write to a closed pipe (the reader went away: exit 0 quietly).
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Prints `TOOL: message` on stderr and gives the exit code (for tools without anyhow errors).
pub fn fail<E: Into<u8>>(
    name: &str,
    message: &dyn std::fmt::Display,
    code: E,
) -> std::process::ExitCode {
    eprintln!("{name}: {message}");
    std::process::ExitCode::from(code.into())
}
