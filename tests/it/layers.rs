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
            &["error", "key", "hash", "clock", "shm"],
            &["address", "domain", "prefix"],
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
            &["report"],
            &["router"],
            &["failures", "plan"],
            &["sequence"],
            // Unit tests of the router, in their own file: they may use any module.
            &["router_tests"],
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
            &["lifecycle"],
            &["client"],
            &["drain", "health", "settle"],
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
            if module == "lib" {
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
