//! The runtime's layering and file sizes, checked on its source (README, *Architecture*).
//!
//! Every top-level module of `chain-runtime/src` belongs to one layer of [`LAYERS`]. A module
//! may import (`crate::…`) from the layers below its own and from the modules listed before it
//! in its own layer: the table is one order of all modules, so an import that follows it can
//! never close a cycle. Test code (from a file's first `#[cfg(test)]` on) is not checked.
//! No source file of `chain-runtime/src` or `chain-macros/src` has more than
//! [`MAX_NON_TEST_LINES`] lines before its tests.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, bottom first; within a layer, a module may import the modules before it.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundations",
        &[
            "principal",
            "future",
            "classify",
            "error",
            "policy",
            "token",
            "tool",
            "input",
        ],
    ),
    (
        "metadata",
        &[
            "step",
            "graph",
            "graph_render",
            "chain",
            "manifest",
            "preflight",
            "registry",
            "accounts",
        ],
    ),
    (
        "execution seam",
        &["connector", "context", "model", "agent"],
    ),
    (
        "stores",
        &[
            "sqlite", "audit", "vault", "approval", "journal", "postgres",
        ],
    ),
    ("engine", &["engine"]),
    (
        "edges",
        &[
            "runtime",
            "runtime_consent",
            "sandbox",
            "test_util",
            "server",
            "mcp",
            "cli",
        ],
    ),
];

/// The most lines a source file may have before its first `#[cfg(test)]`.
const MAX_NON_TEST_LINES: usize = 600;

/// The repository's root (this package lives in `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A file's text before its first `#[cfg(test)]`.
fn non_test_part(path: &Path) -> String {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    match text.find("#[cfg(test)]") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// `text` without its `//` comments (doc comments included: their examples are not imports).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.find("//").map_or(line, |at| &line[..at]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first identifier at the start of `text` (after whitespace).
fn leading_ident(text: &str) -> &str {
    let text = text.trim_start();
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The top-level modules a source text names through `crate::` paths, including each item of
/// a `crate::{a, b::{c, d}}` group.
fn imported_modules(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let preceded_by_ident = text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        if preceded_by_ident {
            continue; // the end of a longer name (`other_crate::…`), not this crate's root
        }
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item_start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(leading_ident(&group[item_start..i]).to_owned());
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(leading_ident(&group[item_start..i]).to_owned());
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(leading_ident(rest).to_owned());
        }
    }
    found.remove("");
    found
}

/// The top-level module a file of `src` belongs to (`None` for `lib.rs`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_owned())
}

/// A module's place in [`LAYERS`]: (layer index, position in the layer).
fn rank(module: &str) -> Option<(usize, usize)> {
    LAYERS.iter().enumerate().find_map(|(layer, (_, modules))| {
        modules
            .iter()
            .position(|m| *m == module)
            .map(|position| (layer, position))
    })
}

fn layer_name(module: &str) -> String {
    match rank(module) {
        Some((layer, _)) => format!("layer {} `{}`", layer + 1, LAYERS[layer].0),
        None => "no layer".to_owned(),
    }
}

#[test]
fn every_import_points_down_the_layers() {
    let root = repo();
    let src = root.join("chain-runtime/src");
    let mut modules = BTreeSet::new();
    let mut problems = Vec::new();
    for file in rust_files(&src) {
        let Some(module) = top_module(&src, &file) else {
            continue;
        };
        modules.insert(module.clone());
        let Some(own) = rank(&module) else {
            continue; // reported once below
        };
        let text = without_comments(&non_test_part(&file));
        for imported in imported_modules(&text) {
            if imported == module {
                continue;
            }
            match rank(&imported) {
                // An item at the crate root (`crate::prelude`, …), or a module in no layer
                // (reported once below).
                None => {}
                Some(theirs) if theirs < own => {}
                Some(_) => problems.push(format!(
                    "{} imports `crate::{imported}` ({}), but `{module}` is in {}: a module may \
                     only import from the layers below it and from the modules listed before it \
                     in its own layer. Move what both need down a layer, or reach it through a \
                     port (a trait in the lower layer that the upper one implements).",
                    file.strip_prefix(&root).unwrap_or(&file).display(),
                    layer_name(&imported),
                    layer_name(&module),
                )),
            }
        }
    }
    for module in &modules {
        if rank(module).is_none() {
            problems.push(format!(
                "module `{module}` is in no layer: add it to LAYERS in tests/tests/architecture.rs \
                 and to the layer diagrams in README.md and docs/architecture.md"
            ));
        }
    }
    for (_, listed) in LAYERS {
        for module in *listed {
            if !modules.contains(*module) {
                problems.push(format!(
                    "LAYERS lists `{module}`, which is not a module of chain-runtime/src any more"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_source_file_is_over_the_line_limit() {
    let root = repo();
    let mut over = Vec::new();
    for dir in ["chain-runtime/src", "chain-macros/src"] {
        for file in rust_files(&root.join(dir)) {
            let lines = non_test_part(&file).matches('\n').count();
            if lines > MAX_NON_TEST_LINES {
                over.push(format!(
                    "{}: {lines} lines before its tests (at most {MAX_NON_TEST_LINES}: split it \
                     along its concerns)",
                    file.strip_prefix(&root).unwrap_or(&file).display()
                ));
            }
        }
    }
    assert!(over.is_empty(), "{}", over.join("\n"));
}

#[test]
fn imports_are_read_from_paths_and_groups() {
    let text = "use crate::audit::X;\nuse crate::{journal::{A, B}, sqlite, vault::{C}};\n\
                let x = chain_runtime::engine::Engine::new(); crate::error::E";
    let found: Vec<_> = imported_modules(text).into_iter().collect();
    assert_eq!(found, ["audit", "error", "journal", "sqlite", "vault"]);
}
