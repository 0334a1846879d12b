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
/// clap does for any usage error. A value parser's [`UsageError`] (a value the tool checks,
/// such as a weight out of range) is printed as the tool prints its other errors, on one line:
/// `NAME: invalid weight '0': must be from 1 to 65535`.
pub fn parse<C: clap::Parser>(name: &str) -> C {
    let err = match C::try_parse() {
        Ok(cli) => return cli,
        Err(err) => err,
    };
    let source = std::error::Error::source(&err);
    if let Some(usage) = source.and_then(|e| e.downcast_ref::<UsageError>()) {
        eprintln!("{name}: {usage}");
        std::process::exit(2);
    }
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

/// A duration as the tools take it: a number with a unit (`500ms`, `1.5s`, `2m`, `1h`), or a
/// bare number in `bare` units (seconds everywhere, except mcproxy's millisecond timeouts,
/// which keep their documented meaning).
pub fn duration(text: &str, bare: std::time::Duration) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "" => bare.as_secs_f64(),
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => f64::NAN,
    };
    number
        .parse::<f64>()
        .ok()
        .map(|n| n * scale)
        .filter(|s| s.is_finite())
        .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| {
            let bare = match bare.as_millis() {
                1 => "milliseconds",
                _ => "seconds",
            };
            format!("expected a duration: a number with a unit (500ms, 1s, 2m, 1h), or a bare number of {bare}")
        })
}

/// [`duration`] with bare numbers in seconds, as seconds (clap's value parser).
pub fn seconds(text: &str) -> Result<f64, String> {
    duration(text, std::time::Duration::from_secs(1)).map(|d| d.as_secs_f64())
}

/// [`duration`] with bare numbers in milliseconds, as whole milliseconds (mcproxy's timeouts).
pub fn millis(text: &str) -> Result<u64, String> {
    duration(text, std::time::Duration::from_millis(1)).map(|d| d.as_millis() as u64)
}

/// Whole seconds, with a unit or bare; a bare negative number stands as it is (-1: "never"
/// for retry intervals; an expired TTL for memcached).
pub fn whole_seconds(text: &str) -> Result<i64, String> {
    if let Some(negative) = text.trim().strip_prefix('-')
        && let Ok(n) = negative.parse::<i64>()
    {
        return Ok(-n);
    }
    let d = duration(text, std::time::Duration::from_secs(1))?;
    match d.subsec_nanos() {
        0 => i64::try_from(d.as_secs()).map_err(|e| e.to_string()),
        _ => Err("expected whole seconds (or -1)".into()),
    }
}

/// Whole seconds, not negative, with a unit or bare (mcproxy's client and shutdown timeouts).
pub fn whole_seconds_unsigned(text: &str) -> Result<u64, String> {
    whole_seconds(text)
        .and_then(|s| u64::try_from(s).map_err(|_| "expected 0 or more seconds".to_string()))
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

    #[test]
    fn durations_take_units_and_bare_numbers_keep_their_meaning() {
        assert_eq!(seconds("500ms"), Ok(0.5));
        assert_eq!(seconds("1s"), Ok(1.0));
        assert_eq!(seconds("2m"), Ok(120.0));
        assert_eq!(seconds("1.5"), Ok(1.5));
        assert_eq!(millis("1s"), Ok(1000));
        assert_eq!(millis("250"), Ok(250));
        assert_eq!(whole_seconds("-1"), Ok(-1));
        assert_eq!(whole_seconds("1h"), Ok(3600));
        assert!(whole_seconds("1.5").is_err());
        for bad in ["", "s", "1x", "-2s", "1e400", "1 s s"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }
}
