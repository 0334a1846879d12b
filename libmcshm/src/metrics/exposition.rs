//! Prometheus' text exposition format (version 0.0.4), written so that a page cannot break its
//! rules: every family is declared once, with its HELP and TYPE lines, and its samples are
//! written under it whatever order they were added in; label values are escaped (`\\`, `\"`,
//! `\n`); numbers are written as Prometheus reads them. A page that names one family twice is
//! refused by `promtool check metrics` and by Prometheus' own parser (it was mcproxy's bug in
//! issue 32): here the page is grouped by construction, not by care.

use std::fmt::Write;

/// A family's type: what Prometheus may compute from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down (a state, a count now, a time).
    Gauge,
    /// A count that only grows (its name ends in `_total`).
    Counter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// A family of a page: its name, type and one-line help.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

/// A sample's value.
pub trait Number {
    /// The value as Prometheus reads it.
    fn text(&self) -> String;
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl Number for $t {
            fn text(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
integer!(u8, u16, u32, u64, usize, i32, i64);

impl Number for bool {
    fn text(&self) -> String {
        u8::from(*self).to_string()
    }
}

impl Number for f64 {
    fn text(&self) -> String {
        match self {
            v if v.is_nan() => "NaN".into(),
            v if v.is_infinite() && *v > 0.0 => "+Inf".into(),
            v if v.is_infinite() => "-Inf".into(),
            v => v.to_string(),
        }
    }
}

/// A page being written: its families in the order declared, each with its samples.
pub struct Page {
    families: Vec<(Family, String)>,
}

impl Page {
    /// A page of `families` (in this order). Each name must be a valid metric name, declared
    /// once, and a counter's must end in `_total` (checked: a page breaking a rule is a bug).
    pub fn new(families: &[Family]) -> Page {
        for (n, family) in families.iter().enumerate() {
            assert!(valid_name(family.name), "bad metric name {}", family.name);
            assert!(
                !families[..n].iter().any(|f| f.name == family.name),
                "{} declared twice",
                family.name
            );
            assert_eq!(
                family.kind == Kind::Counter,
                family.name.ends_with("_total"),
                "{}: counters, and only they, end in _total",
                family.name
            );
        }
        Page {
            families: families.iter().map(|f| (*f, String::new())).collect(),
        }
    }

    /// Adds a sample of family `name` (declared in [`Page::new`]) with `labels` (names
    /// valid, values any text: escaped here).
    pub fn add(&mut self, name: &str, labels: &[(&str, &str)], value: impl Number) {
        let (_, samples) = self
            .families
            .iter_mut()
            .find(|(f, _)| f.name == name)
            .unwrap_or_else(|| panic!("{name} is not a family of this page"));
        samples.push_str(name);
        if !labels.is_empty() {
            samples.push('{');
            for (n, (label, text)) in labels.iter().enumerate() {
                debug_assert!(valid_label(label), "bad label name {label}");
                if n > 0 {
                    samples.push(',');
                }
                let _ = write!(samples, "{label}=\"{}\"", escape_label(text));
            }
            samples.push('}');
        }
        let _ = writeln!(samples, " {}", value.text());
    }

    /// The page: each family that has samples, as HELP, TYPE and its samples.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (family, samples) in &self.families {
            if samples.is_empty() {
                continue;
            }
            let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
            out.push_str(samples);
        }
        out
    }
}

/// A label value as the format writes it: `\` as `\\`, `"` as `\"`, a line feed as `\n`.
pub fn escape_label(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text as the format writes it: `\` as `\\`, a line feed as `\n`.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn valid_label(name: &str) -> bool {
    valid_name(name) && !name.contains(':') && !name.starts_with("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAMILIES: &[Family] = &[
        Family {
            name: "x_up",
            kind: Kind::Gauge,
            help: "Whether it is up",
        },
        Family {
            name: "x_failures_total",
            kind: Kind::Counter,
            help: "Failures, a \\ and a\nline",
        },
        Family {
            name: "x_unused",
            kind: Kind::Gauge,
            help: "Never sampled",
        },
    ];

    #[test]
    fn samples_are_grouped_under_their_family_whatever_the_order_they_came_in() {
        let mut page = Page::new(FAMILIES);
        page.add("x_up", &[("server", "a")], true);
        page.add("x_failures_total", &[("server", "a")], 3u64);
        page.add("x_up", &[("server", "b")], false);
        page.add("x_failures_total", &[], 0.5);
        assert_eq!(
            page.render(),
            "# HELP x_up Whether it is up\n# TYPE x_up gauge\nx_up{server=\"a\"} 1\nx_up{server=\"b\"} 0\n\
             # HELP x_failures_total Failures, a \\\\ and a\\nline\n# TYPE x_failures_total counter\n\
             x_failures_total{server=\"a\"} 3\nx_failures_total 0.5\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut page = Page::new(FAMILIES);
        page.add("x_up", &[("server", "/run/a \"b\"\\c\nd")], 1u8);
        assert!(
            page.render()
                .contains("x_up{server=\"/run/a \\\"b\\\"\\\\c\\nd\"} 1\n"),
            "{}",
            page.render()
        );
    }

    #[test]
    fn numbers_are_written_as_prometheus_reads_them() {
        assert_eq!(1_700_000_000.25f64.text(), "1700000000.25");
        assert_eq!(5.0f64.text(), "5");
        assert_eq!(f64::NAN.text(), "NaN");
        assert_eq!(f64::INFINITY.text(), "+Inf");
        assert_eq!(u64::MAX.text(), "18446744073709551615");
    }

    #[test]
    #[should_panic(expected = "declared twice")]
    fn a_family_declared_twice_is_refused() {
        Page::new(&[FAMILIES[0], FAMILIES[0]]);
    }

    #[test]
    #[should_panic(expected = "_total")]
    fn a_counter_without_total_is_refused() {
        Page::new(&[Family {
            name: "x_failures",
            kind: Kind::Counter,
            help: "h",
        }]);
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("mcshm_server_up"));
        assert!(!valid_name("2x"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name(""));
        assert!(valid_label("domain"));
        assert!(!valid_label("__name"));
    }
}
