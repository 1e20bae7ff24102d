//! Tidy: checks of the source tree itself, no broker needed (as
//! rust-analyzer's `tidy`). Every `.rs` file opens with a `//!` line, every
//! top-level folder and crate has a heading in ARCHITECTURE.md's code map, no
//! crate declares a dependency it never uses, no ERROR line is logged but by a
//! named event, and no list of the workflow's
//! nodes is kept anywhere but in the workflow definition.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Every file under `dir`, skipping build output, git and run folders.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | "run" | "node_modules") && !name.starts_with('.') {
                found.extend(files(&path));
            }
        } else {
            found.push(path);
        }
    }
    found
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

/// The workspace's crates: the `members` of the root Cargo.toml.
fn crates() -> Vec<String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("root Cargo.toml");
    let line = manifest.lines().find(|l| l.trim_start().starts_with("members")).expect("workspace members");
    line.split('"').skip(1).step_by(2).map(str::to_string).collect()
}

#[test]
fn every_rust_file_opens_with_a_doc_line() {
    let missing: Vec<String> = files(&root())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter(|p| !std::fs::read_to_string(p).unwrap_or_default().starts_with("//!"))
        .map(|p| relative(&p))
        .collect();
    assert!(missing.is_empty(), "these files do not open with a `//!` line: {missing:?}");
}

#[test]
fn the_code_map_names_every_top_level_folder_and_crate() {
    let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let code_map = architecture.split("## Code map").nth(1).expect("a `## Code map` section");
    let code_map = code_map.split("\n## ").next().unwrap_or_default();
    let mut folders: Vec<String> = std::fs::read_dir(root())
        .expect("workspace root")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|name| !name.starts_with('.') && !matches!(name.as_str(), "target" | "run"))
        .collect();
    folders.extend(crates());
    folders.sort();
    folders.dedup();
    let missing: Vec<&String> =
        folders.iter().filter(|name| !code_map.contains(&format!("### `{name}/`"))).collect();
    assert!(missing.is_empty(), "ARCHITECTURE.md's code map has no `### `name/`` heading for {missing:?}");
}

/// The dependency names of a crate's `[dependencies]` and `[dev-dependencies]`.
fn declared_dependencies(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_dependencies = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]" || line == "[dev-dependencies]";
            continue;
        }
        if in_dependencies && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['.', '=', ' ']).next().unwrap_or_default();
            names.push(name.to_string());
        }
    }
    names
}

#[test]
fn no_crate_declares_a_dependency_it_never_uses() {
    let mut unused = Vec::new();
    for krate in crates() {
        let dir = root().join(&krate);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("crate manifest");
        let sources: String = files(&dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect();
        for dependency in declared_dependencies(&manifest) {
            let path = dependency.replace('-', "_");
            let used = [format!("{path}::"), format!("use {path}"), format!("{path}!")]
                .iter()
                .any(|needle| sources.contains(needle.as_str()));
            if !used {
                unused.push(format!("{krate}: {dependency}"));
            }
        }
    }
    assert!(unused.is_empty(), "declared but never used: {unused:?}");
}

#[test]
fn no_node_list_outside_the_workflow_definition() {
    // Three workflow nodes named one after another is a hand-kept list.
    let nodes = topology::WORKFLOW.processes();
    let definition = root().join("topology/src/workflow.rs");
    let mut lists = Vec::new();
    for path in files(&root()) {
        let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        let checked = name.ends_with(".rs") || name.ends_with(".sh") || name == "Dockerfile";
        if !checked || path == definition {
            continue;
        }
        // Prose in comments may name a path through the workflow; code may
        // not, nor a `///` doc comment (clap prints it as `--help`).
        let prose = |line: &str| {
            let line = line.trim_start();
            (line.starts_with("//") && !line.starts_with("///")) || line.starts_with('#')
        };
        let text: String = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|line| !prose(line))
            .collect::<Vec<_>>()
            .join("\n");
        let words: Vec<&str> =
            text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').filter(|w| !w.is_empty()).collect();
        if words.windows(3).any(|w| w.iter().all(|word| nodes.contains(word)) && w[0] != w[1] && w[1] != w[2])
        {
            lists.push(relative(&path));
        }
    }
    assert!(
        lists.is_empty(),
        "node lists kept by hand (use topology::WORKFLOW / `topology processes`): {lists:?}"
    );
}

/// ARCHITECTURE.md: "operator-relevant events are named". An ERROR line means
/// an operator must act, so it is logged only by a named event of
/// `shared::events` (which also counts it), or by the few lines about the
/// process itself: it cannot start, cannot log in, cannot hear SIGTERM.
#[test]
fn error_lines_come_only_from_named_events() {
    let process_lines = [
        "shared/src/events.rs",
        "shared/src/telemetry.rs",
        "shared/src/shutdown.rs",
        "shared/src/transport/connect.rs",
    ];
    let mut ad_hoc = Vec::new();
    for path in files(&root()) {
        let name = relative(&path);
        if !name.ends_with(".rs") || process_lines.contains(&name.as_str()) || name.starts_with("tests/") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if line.contains("tracing::error!") || line.trim_start().starts_with("error!(") {
                ad_hoc.push(format!("{name}:{}", n + 1));
            }
        }
    }
    assert!(ad_hoc.is_empty(), "ERROR lines outside a named event (add one to shared::events): {ad_hoc:?}");
}
