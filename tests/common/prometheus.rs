//! A strict reader of Prometheus' text exposition format (0.0.4), for tests of metrics pages:
//! it refuses what `promtool check metrics` and Prometheus' parser refuse (a family named in
//! two HELP or TYPE lines, samples of a family not together or before its TYPE, invalid
//! names, unescaped label values, values that are not numbers, a series twice) and the
//! conventions mcshm keeps (counters, and only they, end in `_total`; every family has HELP
//! and TYPE). The whole page is read: a line it does not understand fails the test.

use std::collections::{BTreeMap, HashMap};

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A page, read.
#[derive(Debug, Default)]
pub struct Page {
    /// Family name → (type, help).
    pub families: HashMap<String, (String, String)>,
    pub samples: Vec<Sample>,
}

impl Page {
    /// The samples of `name` whose labels include `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample of `name` with `labels` (panics if there is not exactly
    /// one).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.find(name, labels);
        assert_eq!(found.len(), 1, "one sample of {name} {labels:?}: {found:?}");
        found[0].value
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label(name: &str) -> bool {
    valid_name(name) && !name.contains(':') && !name.starts_with("__")
}

fn number(text: &str) -> Result<f64, String> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        t if t
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')) =>
        {
            t.parse().map_err(|_| format!("{t:?} is not a number"))
        }
        t => Err(format!("{t:?} is not a number")),
    }
}

/// The family a sample name belongs to, given the families declared so far: itself, or for
/// a histogram or summary its name without `_bucket`, `_sum` or `_count`.
fn family_of<'a>(name: &'a str, families: &HashMap<String, (String, String)>) -> &'a str {
    if families.contains_key(name) {
        return name;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && families
                .get(base)
                .is_some_and(|(kind, _)| kind == "histogram" || kind == "summary")
        {
            return base;
        }
    }
    name
}

/// Reads `text`, or says what is wrong with it (with the line).
pub fn parse(text: &str) -> Result<Page, String> {
    let mut page = Page::default();
    let mut helps: HashMap<String, String> = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut finished: Vec<String> = Vec::new(); // families whose samples ended
    let mut current: Option<String> = None;
    let mut series: std::collections::HashSet<String> = Default::default();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the page does not end with a line feed".into());
    }
    for (n, line) in text.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            let mut words = rest.splitn(3, ' ');
            let (keyword, name, tail) = (words.next(), words.next(), words.next());
            match (keyword, name) {
                (Some("HELP"), Some(name)) => {
                    if !valid_name(name) {
                        return Err(at(format!("invalid metric name {name}")));
                    }
                    if helps
                        .insert(name.to_string(), tail.unwrap_or("").to_string())
                        .is_some()
                    {
                        return Err(at(format!("second HELP line for {name}")));
                    }
                    if tail.unwrap_or("").contains('\n') {
                        return Err(at("HELP with a line feed".into()));
                    }
                }
                (Some("TYPE"), Some(name)) => {
                    let kind = tail.unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(at(format!("second TYPE line for {name}")));
                    }
                    if page.samples.iter().any(|s| s.name == name) {
                        return Err(at(format!("TYPE of {name} after its samples")));
                    }
                    page.families
                        .insert(name.to_string(), (kind.to_string(), String::new()));
                }
                _ => {} // a comment
            }
            continue;
        }
        // name{label="value",...} value [timestamp]
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(at(format!("invalid metric name {name:?}")));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let mut end = None;
            loop {
                // A label name, or the closing brace.
                let start = match chars.peek() {
                    Some((i, '}')) => {
                        end = Some(*i + 1);
                        break;
                    }
                    Some((i, _)) => *i,
                    None => break,
                };
                let mut eq = None;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        eq = Some(i);
                        break;
                    }
                }
                let eq = eq.ok_or_else(|| at("a label without =".into()))?;
                let label = &inner[start..eq];
                if !valid_label(label) {
                    return Err(at(format!("invalid label name {label:?}")));
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(at("a label value without quotes".into()));
                }
                let mut value = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => return Err(at(format!("bad escape \\{other:?}"))),
                        },
                        '\n' => return Err(at("a line feed in a label value".into())),
                        c => value.push(c),
                    }
                }
                if !closed {
                    return Err(at("an unterminated label value".into()));
                }
                if labels.insert(label.to_string(), value).is_some() {
                    return Err(at(format!("label {label} twice")));
                }
                match chars.peek() {
                    Some((_, ',')) => {
                        chars.next();
                    }
                    Some((_, '}')) => {}
                    _ => return Err(at("expected , or } after a label".into())),
                }
            }
            let end = end.ok_or_else(|| at("labels not closed".into()))?;
            rest = &inner[end..];
        }
        let mut words = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?
            .split(' ');
        let value = number(words.next().unwrap_or("")).map_err(at)?;
        if let Some(timestamp) = words.next() {
            timestamp
                .parse::<i64>()
                .map_err(|_| at("a timestamp that is not an integer".into()))?;
        }
        if words.next().is_some() {
            return Err(at("more after the value and timestamp".into()));
        }
        let family = family_of(name, &page.families).to_string();
        let Some((kind, _)) = page.families.get(&family) else {
            return Err(at(format!(
                "a sample of {name}, which has no TYPE before it"
            )));
        };
        if (kind == "counter") != family.ends_with("_total") {
            return Err(at(format!(
                "{family} is a {kind}: counters, and only they, end in _total"
            )));
        }
        if current.as_deref() != Some(family.as_str()) {
            if finished.contains(&family) {
                return Err(at(format!("samples of {family} are not together")));
            }
            if let Some(done) = current.replace(family.clone()) {
                finished.push(done);
            }
        }
        let key = format!("{name}{labels:?}");
        if !series.insert(key) {
            return Err(at("the same series twice".into()));
        }
        page.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for (name, entry) in page.families.iter_mut() {
        match helps.get(name) {
            Some(help) if !help.is_empty() => entry.1 = help.clone(),
            _ => return Err(format!("{name} has no HELP")),
        }
    }
    if let Some(name) = helps.keys().find(|n| !types.contains_key(*n)) {
        return Err(format!("{name} has a HELP and no TYPE"));
    }
    Ok(page)
}
