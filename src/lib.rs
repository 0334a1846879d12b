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

/// Parses the command line as clap does, but answers an unknown subcommand with the nearest
/// ones by edit distance, a swap of two letters counting one (`gte` is `get`, `lsit` is
/// `list`), among the commands `--help` shows and their visible aliases. Exits 2 then, as
/// clap does for any usage error.
pub fn parse<C: clap::Parser>(name: &str) -> C {
    let err = match C::try_parse() {
        Ok(cli) => return cli,
        Err(err) => err,
    };
    let unknown = match err.get(clap::error::ContextKind::InvalidSubcommand) {
        Some(clap::error::ContextValue::String(given))
            if err.kind() == clap::error::ErrorKind::InvalidSubcommand =>
        {
            given.clone()
        }
        _ => err.exit(),
    };
    let command = C::command();
    let names: Vec<String> = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .flat_map(|sub| {
            std::iter::once(sub.get_name().to_string())
                .chain(sub.get_visible_aliases().map(str::to_string))
        })
        .collect();
    let near = nearest(&unknown, &names);
    let tip = match near.as_slice() {
        [] => String::new(),
        [one] => format!(" (did you mean '{one}'?)"),
        many => format!(" (did you mean one of '{}'?)", many.join("', '")),
    };
    eprintln!("{name}: unrecognized subcommand '{unknown}'{tip}; see '{name} --help'");
    std::process::exit(2);
}

/// The candidates nearest to `given` (at most two edits away), in their order.
fn nearest<'a>(given: &str, candidates: &'a [String]) -> Vec<&'a str> {
    let scored: Vec<(usize, &str)> = candidates
        .iter()
        .map(|c| (edit_distance(given, c), c.as_str()))
        .filter(|(d, _)| *d <= 2)
        .collect();
    let best = scored.iter().map(|(d, _)| *d).min();
    scored
        .into_iter()
        .filter(|(d, _)| Some(*d) == best)
        .map(|(_, c)| c)
        .collect()
}

/// Edits (insert, delete, replace, or swap two neighbours) that make `a` into `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_command_counts_a_swap_as_one_edit() {
        let names: Vec<String> = ["get", "gets", "set", "list", "ls", "clients"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(nearest("gte", &names), ["get"]);
        assert_eq!(nearest("lsit", &names), ["list"]);
        assert_eq!(nearest("sett", &names), ["set"]);
        assert_eq!(nearest("lst", &names), ["list", "ls"]);
        assert!(nearest("frobnicate", &names).is_empty());
    }
}
