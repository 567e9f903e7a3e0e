//! The module map is checked, not just drawn: data flows one way, so no module may use one
//! that comes after it in [`ORDER`], and the README's "How it fits together" names every
//! module of `src/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every top-level module, each allowed to use only those before it. Infrastructure first
/// (`plugin` is the SPIRE wire protocol, generic over a `WorkloadAttestor`: it knows nothing
/// of pods, and `attest` plugs the pipeline into it), then the data path, then the CLI.
const ORDER: &[&str] = &[
    "sys",
    "status",
    "goquote",
    "boundedfile",
    "install",
    "config",
    "cgroupfs",
    "plugin",
    "tracker",
    "locator",
    "kubelet",
    "apiserver",
    "pods",
    "runtime",
    "selectors",
    "attest",
    "cli",
];

/// Files of the crate that are not modules of the map.
const NOT_MODULES: &[&str] = &["lib", "main", "layering"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`tracker/kernel.rs` → `tracker`).
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// `crate::<module>` uses in code (not comments, not the file's unit tests).
fn uses(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut found = BTreeSet::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (i, _) in line.match_indices("crate::") {
            let name: String = line[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

#[test]
fn no_module_uses_one_downstream_of_it() {
    let rank = |m: &str| ORDER.iter().position(|o| *o == m);
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let module = module_of(&file);
        if NOT_MODULES.contains(&module.as_str()) {
            continue;
        }
        let Some(own) = rank(&module) else {
            panic!("{module} (from {}) is not in ORDER", file.display());
        };
        for used in uses(&std::fs::read_to_string(&file).unwrap()) {
            match rank(&used) {
                Some(r) if r < own => {}
                Some(_) if used == module => {}
                _ => wrong.push(format!("{} uses crate::{used}", file.display())),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "uses against the data flow:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_module_is_in_order_and_declared() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut declared = BTreeSet::new();
    for line in lib.lines() {
        let line = line.trim_start_matches("pub ");
        if let Some(name) = line.strip_prefix("mod ").and_then(|l| l.strip_suffix(';')) {
            declared.insert(name.to_string());
        }
    }
    declared.remove("layering");
    let ordered: BTreeSet<String> = ORDER.iter().map(|s| s.to_string()).collect();
    assert_eq!(declared, ordered, "lib.rs modules vs ORDER");
}

#[test]
fn readme_map_names_every_module() {
    let readme = std::fs::read_to_string(src().join("../../README.md")).unwrap();
    let section = readme
        .split("## How it fits together")
        .nth(1)
        .expect("README has a \"How it fits together\" section");
    let section = section.split("\n## ").next().unwrap();
    let missing: Vec<&str> = ORDER
        .iter()
        .copied()
        .filter(|m| !section.contains(m))
        .collect();
    assert!(missing.is_empty(), "README's module map lacks {missing:?}");
    // The data path is drawn in order.
    let path = [
        "tracker",
        "locator",
        "kubelet",
        "pods",
        "runtime",
        "selectors",
    ];
    let at: Vec<usize> = path.iter().map(|m| section.find(m).unwrap()).collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "data path out of order in README"
    );
}
