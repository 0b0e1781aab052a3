//! The compiler does not know chatnode's layering (gateway → delivery → cluster → raft →
//! shard → storage, ids and codecs at the bottom); this test does. It reads the allowed
//! imports between the crate's top-level modules from the `layers` block of
//! docs/ARCHITECTURE.md and fails when a file under `src/<module>` names a module
//! (`crate::<other>`) that the block does not allow. Test files (`tests.rs`, `*/tests/*`)
//! are exempt: a test may set up whatever it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The allowed edges: module → the modules it may import.
fn allowed_edges() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let block = doc
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/ARCHITECTURE.md has a ```layers block");
    let mut edges = BTreeMap::new();
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (from, to) = line
            .split_once(':')
            .expect("a layers line is `module: imports…`");
        let to: BTreeSet<String> = to.split_whitespace().map(str::to_string).collect();
        edges.insert(from.trim().to_string(), to);
    }
    edges
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The crate's top-level modules, as `lib.rs` declares them.
fn modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = ["pub mod ", "pub(crate) mod ", "mod "]
                .iter()
                .find_map(|p| l.strip_prefix(p))?;
            Some(rest.trim_end_matches(';').trim().to_string())
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "tests") {
                continue;
            }
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs")
            && p.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(p);
        }
    }
}

/// The files of module `m`: `src/m.rs` and everything under `src/m/`.
fn files_of(m: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let single = root().join("src").join(format!("{m}.rs"));
    if single.exists() {
        out.push(single);
    }
    rust_files(&root().join("src").join(m), &mut out);
    out
}

/// The modules a source file names as `crate::<module>`, outside comments.
fn imports(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if modules.contains(&name) {
                found.insert(name);
            }
            rest = after;
        }
        // `use crate::{a, b::c}` groups.
        if let Some(i) = code.find("crate::{") {
            let group = &code[i + "crate::{".len()..];
            for part in group.split([',', '}']) {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&name) {
                    found.insert(name);
                }
            }
        }
    }
    found
}

#[test]
fn no_module_imports_a_layer_it_may_not() {
    let edges = allowed_edges();
    let modules = modules();
    let mut violations = Vec::new();
    for m in &modules {
        let allowed = edges
            .get(m)
            .unwrap_or_else(|| panic!("module `{m}` is missing from the layers block"));
        for file in files_of(m) {
            let text = std::fs::read_to_string(&file).unwrap();
            for used in imports(&text, &modules) {
                if used != *m && !allowed.contains(&used) {
                    let rel = file
                        .strip_prefix(root())
                        .unwrap_or(&file)
                        .display()
                        .to_string();
                    violations.push(format!("{rel}: `{m}` imports `{used}`"));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the layering of docs/ARCHITECTURE.md:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_layers_block_names_only_real_modules_and_has_no_cycle() {
    let edges = allowed_edges();
    let modules = modules();
    for (from, to) in &edges {
        assert!(
            modules.contains(from),
            "layers block names unknown module `{from}`"
        );
        for t in to {
            assert!(
                modules.contains(t),
                "layers block: `{from}` allows unknown `{t}`"
            );
        }
    }
    // Depth-first search for a cycle in the allowed edges: layering means a DAG.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        assert!(
            !path.iter().any(|p| p == m),
            "the layers block has a cycle: {} → {m}",
            path.join(" → ")
        );
        path.push(m.to_string());
        for next in edges.get(m).into_iter().flatten() {
            visit(next, edges, path, done);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        visit(m, &edges, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_scanner_sees_plain_grouped_and_nested_imports() {
    let modules: BTreeSet<String> = ["gateway", "cluster", "shard", "storage"]
        .map(String::from)
        .into();
    let text = "use crate::storage::Store;\n\
                use crate::{cluster::Cluster, shard};\n\
                // crate::gateway in a comment does not count\n\
                let x = crate::shard::apply(y);\n";
    let got = imports(text, &modules);
    let want: BTreeSet<String> = ["cluster", "shard", "storage"].map(String::from).into();
    assert_eq!(got, want);
}

/// The codemap is complete: every source file of the server, its binaries and the client
/// crate is named in docs/ARCHITECTURE.md (by its file stem, or its directory's name for a
/// `mod.rs`), so a new module cannot land without its line in the map.
#[test]
fn every_source_file_is_in_the_codemap() {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let words: BTreeSet<&str> = doc
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("client/src"), &mut files);
    assert!(files.len() > 50, "found only {} files", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|p| {
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            let name = if stem == "mod" {
                p.parent()
                    .and_then(|d| d.file_name())
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
            } else {
                stem
            };
            !words.contains(name)
        })
        .map(|p| p.strip_prefix(root()).unwrap_or(p).display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files the codemap in docs/ARCHITECTURE.md does not name: {missing:?}"
    );
}

/// Longest a production function may be, in lines from its `fn` line to its closing brace.
const FN_LINES_MAX: usize = 80;

/// Production functions stay short (test files are exempt). A function runs from a line
/// that starts with `fn` (after indentation and qualifiers) to the first line that is its
/// indentation plus `}`; rustfmt's layout makes that exact for this crate.
#[test]
fn no_production_function_is_longer_than_the_limit() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("client/src"), &mut files);
    rust_files(&root().join("jepsen/src"), &mut files);
    let mut long = Vec::new();
    let mut seen = 0;
    for p in &files {
        let text = std::fs::read_to_string(p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let body = line.trim_start();
            let indent = &line[..line.len() - body.len()];
            let header = [
                "pub ",
                "pub(crate) ",
                "pub(super) ",
                "async ",
                "const ",
                "unsafe ",
            ]
            .iter()
            .fold(body, |b, q| b.strip_prefix(q).unwrap_or(b));
            let header = ["async ", "const ", "unsafe "]
                .iter()
                .fold(header, |b, q| b.strip_prefix(q).unwrap_or(b));
            let one_line = line.contains('{') && line.trim_end().ends_with('}');
            if !header.starts_with("fn ") || line.trim_end().ends_with(';') || one_line {
                continue;
            }
            let close = format!("{indent}}}");
            let Some(end) = (i..lines.len()).find(|&j| lines[j] == close) else {
                continue;
            };
            seen += 1;
            let n = end - i + 1;
            if n > FN_LINES_MAX {
                let name = p.strip_prefix(root()).unwrap_or(p).display().to_string();
                long.push(format!("{name}:{}: {n} lines", i + 1));
            }
        }
    }
    assert!(seen > 500, "found only {seen} functions");
    assert!(
        long.is_empty(),
        "functions over {FN_LINES_MAX} lines: {long:?}"
    );
}
