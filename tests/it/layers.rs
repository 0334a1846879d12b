//! The library's layers, as the README draws them: within each crate, no module imports a
//! module of a layer above its own (across crates, Cargo already forbids it). Reads the
//! sources; a new module must be given its layer here.

use std::collections::BTreeMap;
use std::path::Path;

/// Each crate's modules by layer: a module may import its own layer and those before it.
const LAYERS: [(&str, &[&[&str]]); 3] = [
    (
        "table/src",
        &[
            &["error", "key", "hash", "clock", "shm", "work"],
            &["address", "domain", "prefix"],
            &["fence"],
            &["placement"],
            &["table"],
            &["coherence"],
            &["seqlock"],
            &["format"],
            &["shared_ring", "processes"],
            &["registry"],
            &["edit", "dump"],
        ],
    ),
    (
        "route/src",
        &[
            &["report", "missed"],
            &["router"],
            &["failures", "plan"],
            &["sequence"],
            // Unit tests in a file of their own (`#[cfg(test)] mod router_tests`): above what
            // they test.
            &["router_tests", "change_cost_tests"],
        ],
    ),
    (
        "libmcshm/src",
        &[
            &["proto"],
            &["beside"],
            &["auth", "tls"],
            &["access"],
            &["conn"],
            &["lifecycle", "metadump", "fence"],
            &["client"],
            &["drain", "health", "rebucket", "settle"],
            // Reads the registry only (the table crate's): the page and its HTTP server.
            &["metrics"],
        ],
    ),
];

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut upward = Vec::new();
    for (dir, layers) in LAYERS {
        let rank: BTreeMap<&str, usize> = layers
            .iter()
            .enumerate()
            .flat_map(|(n, names)| names.iter().map(move |name| (*name, n)))
            .collect();
        let mut files = Vec::new();
        collect(&root.join(dir), &mut files);
        for file in files {
            let relative = file.strip_prefix(root.join(dir)).unwrap();
            let module = relative
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_str()
                .unwrap()
                .trim_end_matches(".rs");
            // The crate root, and test modules (which may reach anywhere).
            if module == "lib" || module == "tests" || module.ends_with("_tests") {
                continue;
            }
            let own = *rank
                .get(module)
                .unwrap_or_else(|| panic!("{dir}/{module} has no layer in tests/it/layers.rs"));
            let text = std::fs::read_to_string(&file).unwrap();
            // Test modules may reach anywhere.
            let code = text.split("#[cfg(test)]").next().unwrap();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (at, _) in line.match_indices("crate::") {
                    let name: String = line[at + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if let Some(&theirs) = rank.get(name.as_str())
                        && theirs > own
                    {
                        upward.push(format!("{}: {module} imports {name}", file.display()));
                    }
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports of a higher layer:\n{}",
        upward.join("\n")
    );
}

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The library crates whose modules must not import each other in a circle.
const CRATES: [&str; 6] = [
    "table/src",
    "route/src",
    "libmcshm/src",
    "proxy/src",
    "fleet/src",
    "libmcshm-c/src",
];

/// No two modules of a library crate import each other, directly or around a circle: at the
/// crate's top level (`crate::a` in b, `crate::b` in a) or among the files of one directory
/// module (`super::x` or `crate::dir::x`). Grouped imports (`use crate::{a, b::c}`) count, test
/// code does not (after `#[cfg(test)]`, and `tests.rs`/`*_tests.rs` files). Calls into an
/// `impl` block written in another file are not imports, and are not seen.
#[test]
fn no_module_cycle_in_any_library_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cycles: Vec<String> = CRATES
        .iter()
        .flat_map(|dir| cycles_in(&root.join(dir), dir))
        .collect();
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

/// The checker finds what it is for: planted cycles, at the top level through a grouped
/// import, and among a directory module's files through `super::`; and no false one. (Run on
/// the sources of e305ed5 it finds the cycles that were untied since: binary and session,
/// jobs and upstream in proxy/src, files and writer and lock in table/src/registry.)
#[test]
fn the_cycle_checker_finds_planted_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "mod a;\nmod b;\nmod c;\nmod d;\n");
    write("a.rs", "use crate::{c::X, b::Y};\n");
    write("b.rs", "use crate::a::Z;\n");
    write(
        "c.rs",
        "use std::fmt;\n#[cfg(test)]\nmod tests { use crate::a::Z; }\n",
    );
    write("d/mod.rs", "mod p;\nmod q;\nuse self::p::P;\n");
    write("d/p.rs", "use super::q::Q;\n");
    write("d/q.rs", "fn f() { crate::d::p::P::new(); }\n");
    let mut found = cycles_in(dir.path(), "x");
    found.sort();
    assert_eq!(
        found,
        [
            "x/: a -> b -> … -> a",
            "x/: b -> a -> … -> b",
            "x/d/: p -> q -> … -> p",
            "x/d/: q -> p -> … -> q",
        ]
    );
}

type Edges = BTreeMap<(Vec<String>, String), std::collections::BTreeSet<String>>;

/// The import cycles among the modules of the crate whose sources are in `base` (named `dir`
/// in what it returns).
fn cycles_in(base: &Path, dir: &str) -> Vec<String> {
    let mut files = Vec::new();
    collect(base, &mut files);
    // Module path of each file: ["registry", "writer"] for registry/writer.rs; its code
    // before any test module.
    let modules: Vec<(Vec<String>, String)> = files
        .iter()
        .filter_map(|file| {
            let relative = file.strip_prefix(base).unwrap().with_extension("");
            let mut path: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let last = path.last().unwrap().as_str();
            if last == "tests" || last.ends_with("_tests") {
                return None;
            }
            if last == "mod" || (path.len() == 1 && (last == "lib" || last == "main")) {
                path.pop();
            }
            let text = std::fs::read_to_string(file).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap().to_string();
            Some((path, code))
        })
        .collect();
    let is_module = |parent: &[String], name: &str| {
        modules.iter().any(|(p, _)| {
            p.len() == parent.len() + 1 && p.starts_with(parent) && p[parent.len()] == name
        })
    };
    let mut edges = Edges::new();
    for (path, code) in &modules {
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (prefix, from_root) in [("crate::", true), ("super::", false)] {
                for (at, _) in line.match_indices(prefix) {
                    if at > 0 && line.as_bytes()[at - 1].is_ascii_alphanumeric() {
                        continue;
                    }
                    let target: Vec<String> = match from_root {
                        true => Vec::new(),
                        false if !path.is_empty() => path[..path.len() - 1].to_vec(),
                        false => continue,
                    };
                    for head in heads(&line[at + prefix.len()..]) {
                        let mut named = target.clone();
                        named.extend(head);
                        // The first level where the path named leaves the importer's own.
                        let common = named.iter().zip(path).take_while(|(a, b)| a == b).count();
                        if common >= named.len() || common >= path.len() {
                            continue; // itself, an ancestor or a descendant
                        }
                        let parent = named[..common].to_vec();
                        let (from, to) = (path[common].clone(), named[common].clone());
                        if is_module(&parent, &to) && is_module(&parent, &from) {
                            edges.entry((parent, from)).or_default().insert(to);
                        }
                    }
                }
            }
        }
    }
    let mut cycles = Vec::new();
    for ((parent, from), targets) in &edges {
        for to in targets {
            if reaches(&edges, parent, to, from, &mut Vec::new()) {
                let at = match parent.is_empty() {
                    true => String::new(),
                    false => format!("{}/", parent.join("/")),
                };
                cycles.push(format!("{dir}/{at}: {from} -> {to} -> … -> {from}"));
            }
        }
    }
    cycles
}

/// The paths named after `crate::` or `super::`: `a::b::C` gives `[a, b, C]`, `{a::X, b}` gives
/// `[a, X]` and `[b]`, `a::{b, c}` gives `[a, b]` and `[a, c]`.
fn heads(rest: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    if let Some(group) = rest.strip_prefix('{') {
        // The group's text, to its closing brace.
        let mut depth = 0;
        let mut end = group.len();
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = i;
                    break;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        let inner = &group[..end];
        let mut out = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices().chain([(inner.len(), ',')]) {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    let part = inner[start..i].trim();
                    if !part.is_empty() && part != "self" {
                        out.extend(heads(part));
                    }
                    start = i + 1;
                }
                _ => {}
            }
        }
        return out;
    }
    let mut segments = Vec::new();
    let mut rest = rest;
    loop {
        let name = ident(rest);
        if name.is_empty() {
            break;
        }
        rest = &rest[name.len()..];
        segments.push(name);
        match rest.strip_prefix("::") {
            Some(more) if more.starts_with('{') => {
                return heads(more)
                    .into_iter()
                    .map(|tail| segments.iter().cloned().chain(tail).collect())
                    .collect();
            }
            Some(more) => rest = more,
            None => break,
        }
    }
    vec![segments]
}

/// Whether `to` reaches `goal` along `edges` among the children of `parent`.
fn reaches(edges: &Edges, parent: &[String], to: &str, goal: &str, seen: &mut Vec<String>) -> bool {
    if to == goal {
        return true;
    }
    if seen.iter().any(|s| s == to) {
        return false;
    }
    seen.push(to.to_string());
    edges
        .get(&(parent.to_vec(), to.to_string()))
        .is_some_and(|next| next.iter().any(|n| reaches(edges, parent, n, goal, seen)))
}
