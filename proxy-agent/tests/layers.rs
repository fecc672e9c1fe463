//! The architecture, checked: the top-level modules of `src/` are layers whose
//! imports point one way, no module imports another that imports it back, and no
//! non-test source file grows past 800 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each layer and the layers it may import (ARCHITECTURE.md). The daemon wires
/// everything; nothing imports it.
const LAYERS: &[(&str, &[&str])] = &[
    ("error_text", &[]),
    ("model", &[]),
    ("source", &["model", "error_text"]),
    ("translate", &["source", "model", "error_text"]),
    ("dataplane", &["model", "error_text"]),
    ("reconcile", &["dataplane", "model", "error_text"]),
    (
        "observe",
        &["reconcile", "dataplane", "model", "error_text"],
    ),
    (
        "daemon",
        &[
            "observe",
            "reconcile",
            "dataplane",
            "translate",
            "source",
            "model",
            "error_text",
        ],
    ),
];

const MAX_LINES: usize = 800;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `a/b/mod.rs` and `a/b.rs` are module `a::b`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// Test code: a `tests`/`fixtures` module file, or anything in a `tests/` folder.
fn is_test_file(file: &Path) -> bool {
    module_of(file)
        .iter()
        .any(|p| p == "tests" || p == "fixtures" || p == "test_support")
}

/// The `crate::a::b...` paths a file names, outside `#[cfg(test)]` modules (tests may
/// borrow fakes from anywhere), as module paths.
fn imports(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let body = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    for line in body.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let mut path = Vec::new();
            for seg in rest.split("::") {
                let ident: String = seg
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // Modules are lower-case; a type, a brace or a call ends the path.
                if !ident.starts_with(|c: char| c.is_ascii_lowercase()) {
                    break;
                }
                let whole = ident.len() == seg.len();
                path.push(ident);
                if !whole {
                    break;
                }
            }
            if !path.is_empty() {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn layers_import_only_the_layers_below_them() {
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut wrong = Vec::new();
    for file in files
        .iter()
        .filter(|f| !f.ends_with("lib.rs") && !f.starts_with(src().join("bin")))
    {
        let module = module_of(file);
        let layer = module[0].as_str();
        let Some(may) = allowed.get(layer) else {
            wrong.push(format!(
                "{}: {layer} is not a layer of ARCHITECTURE.md",
                file.display()
            ));
            continue;
        };
        if is_test_file(file) {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("readable source");
        for path in imports(&text) {
            let to = path[0].as_str();
            if to != layer && !may.contains(&to) {
                wrong.push(format!(
                    "{}: {layer} imports crate::{}",
                    file.display(),
                    path.join("::")
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_two_modules_import_each_other_even_indirectly() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(f)).collect();
    let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in files.iter().filter(|f| !is_test_file(f)) {
        let from = module_of(file);
        let text = std::fs::read_to_string(file).expect("readable source");
        for path in imports(&text) {
            // The deepest module the path names (the rest are items in it).
            let to = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|m| modules.contains(m));
            if let Some(to) = to
                && to != from
                && !from.starts_with(&to)
                && !to.starts_with(&from)
            {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        m: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            return Some(stack[i..].iter().map(|p| p.join("::")).collect());
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.clone());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(m.clone());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(m, &graph, &mut stack, &mut done) {
            panic!(
                "module cycle: {} -> (back to the first)",
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn no_source_file_outside_tests_is_over_800_lines() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter(|f| !is_test_file(f))
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).expect("readable source");
            // Inline `mod tests` blocks at the end are tests too.
            let code = match text.find("#[cfg(test)]\nmod tests {") {
                Some(i) => &text[..i],
                None => &text,
            };
            let n = code.lines().count();
            (n > MAX_LINES).then(|| format!("{}: {n} lines", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these into files of one concept:\n{}",
        long.join("\n")
    );
}
