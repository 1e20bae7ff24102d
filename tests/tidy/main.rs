//! Tidy: checks of the source tree itself, no broker needed (as
//! rust-analyzer's `tidy`). Every `.rs` file opens with a `//!` line, every
//! top-level folder and crate has a heading in ARCHITECTURE.md's code map, no
//! crate declares a dependency it never uses, no ERROR line is logged but by a
//! named event, no list of the workflow's nodes is kept anywhere but in the
//! workflow definition, and a node is named by its checklist alone
//! (ARCHITECTURE.md, "Adding a node").

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
    let nodes: Vec<&str> = topology::Node::all().into_iter().map(topology::Node::name).collect();
    let definition = root().join("vocabulary/src/workflow.rs");
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
        "transport/src/connect.rs",
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

/// The code of a Rust file as the checks read it: without its unit tests
/// (from `#[cfg(test)] mod` on) and without comment lines (doc comments are
/// prose about the code, not code).
fn code_of(text: &str) -> String {
    let tests = ["#[cfg(test)]\nmod ", "#[cfg(test)]\npub mod "].iter().filter_map(|t| text.find(t)).min();
    let text = &text[..tests.unwrap_or(text.len())];
    text.lines().filter(|line| !line.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// ARCHITECTURE.md, "Adding a node": a node is its stage (a module of
/// `workers/src/stages/`, or a home of its own under `workers/src/`), its
/// one-line binary, its rows in the workflow definition, and the doc lines
/// named here; no other code names it. So a newcomer's pass-through node
/// needs exactly the checklist: everything else (scripts, harness, broker
/// users and grants, queues, compose's test, `--help`, the transport, the
/// bench's segments) follows from the definition and the process table.
#[test]
fn a_node_is_named_only_by_its_checklist() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let flow = architecture.split("## Message flow").nth(1).unwrap_or_default();
    let flow = flow.split("\n## ").next().unwrap_or_default();
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    // The one place outside the checklist that picks a node on purpose.
    let chosen = [("payment", "bench/src/main.rs", "the scale-out scenario slows and scales payment")];
    let mut problems = Vec::new();
    for node in topology::Node::all() {
        let name = node.name();
        // A dashed name (fraud-check) is a module with underscores and a CamelCase constant.
        let module = name.replace('-', "_");
        let constant: String = name.split('-').map(|word| word[..1].to_uppercase() + &word[1..]).collect();
        let stage = format!("workers/src/stages/{module}.rs");
        let home = format!("workers/src/{module}/");
        let binary = format!("workers/src/bin/{name}.rs");
        if !root().join(&stage).exists() && !root().join(&home).is_dir() {
            problems.push(format!("{name}: no stage ({stage} or {home})"));
        }
        let main = std::fs::read_to_string(root().join(&binary)).unwrap_or_default();
        if !main.contains(&format!("workers::main(\"{name}\"")) {
            problems.push(format!("{name}: {binary} does not run `workers::main(\"{name}\", ...)`"));
        }
        if !readme.contains(&node.queue()) {
            problems.push(format!("{name}: README.md's queue list lacks {}", node.queue()));
        }
        if !flow.contains(name) {
            problems.push(format!("{name}: ARCHITECTURE.md's message flow does not name it"));
        }
        if !compose.contains(&format!("\n  {name}:")) {
            problems.push(format!("{name}: docker-compose.yml has no service {name}"));
        }
        let allowed = [
            "vocabulary/src/workflow.rs".to_string(),
            "vocabulary/src/domains.rs".to_string(),
            "workers/src/stages/mod.rs".to_string(),
            stage,
            binary,
        ];
        for path in files(&root()) {
            let file = relative(&path);
            let in_tests =
                file.starts_with("tests/") || file.contains("/tests/") || file.ends_with("/tests.rs");
            if !file.ends_with(".rs") || in_tests || allowed.contains(&file) || file.starts_with(&home) {
                continue;
            }
            if chosen.iter().any(|(node, chosen_in, _)| *node == name && *chosen_in == file) {
                continue;
            }
            let code = code_of(&std::fs::read_to_string(&path).unwrap_or_default());
            for naming in [format!("Node::{constant}"), format!("\"{name}\"")] {
                if code.contains(&naming) {
                    problems.push(format!("{file} names the {name} node ({naming})"));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "a node named outside its checklist (ARCHITECTURE.md, \"Adding a node\"): {problems:#?}"
    );
}

/// The module a `.rs` file is, as a path from its crate's root:
/// `transport/src/settle/retry.rs` is `["settle", "retry"]`,
/// a `mod.rs` or `lib.rs` the folder's.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().to_string()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// `use a::{b, c::{d, e}}` as `use a::b a::c::d a::c::e`: every path whole.
fn expand_groups(code: &str) -> String {
    let mut code = code.to_string();
    // The innermost group first: a `::{` whose `}` comes before any other `{`.
    while let Some(open) = code.match_indices("::{").map(|(i, _)| i).find(|&i| {
        let rest = &code[i + 3..];
        rest.find('}').is_some_and(|close| !rest[..close].contains('{'))
    }) {
        let close = open + 3 + code[open + 3..].find('}').unwrap_or(0);
        let start = code[..open]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |i| i + 1);
        let prefix = code[start..open].to_string();
        let items: Vec<String> = code[open + 3..close]
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| if item == "self" { prefix.clone() } else { format!("{prefix}::{item}") })
            .collect();
        code.replace_range(start..=close, &items.join(" "));
    }
    code
}

/// The modules of its own crate that a file's code refers to
/// (`crate::a::b`, `super::c`; the longest prefix that is a module).
fn referred_modules(code: &str, own: &[String], modules: &[Vec<String>]) -> Vec<Vec<String>> {
    let mut found: Vec<Vec<String>> = Vec::new();
    let code = expand_groups(code);
    let words: Vec<&str> =
        code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).collect();
    for word in words {
        let parts: Vec<&str> = word.split("::").filter(|p| !p.is_empty()).collect();
        let (mut path, rest): (Vec<String>, &[&str]) = match parts.first() {
            Some(&"crate") => (Vec::new(), &parts[1..]),
            Some(&"super") => {
                let mut base = own.to_vec();
                let mut rest = &parts[..];
                while rest.first() == Some(&"super") {
                    base.pop();
                    rest = &rest[1..];
                }
                (base, rest)
            }
            _ => continue,
        };
        let mut longest = None;
        for part in rest {
            path.push(part.to_string());
            if modules.contains(&path) {
                longest = Some(path.clone());
            }
        }
        if let Some(module) = longest.filter(|m| m != own && !found.contains(m)) {
            found.push(module);
        }
    }
    found
}

/// No two modules of a crate refer to each other (issue 25: the two-file
/// import circles), unless one is the other's parent (a folder's `mod.rs`
/// and its files).
#[test]
fn no_two_modules_refer_to_each_other() {
    let mut circles = Vec::new();
    for krate in crates() {
        let src = root().join(&krate).join("src");
        let sources: Vec<PathBuf> =
            files(&src).into_iter().filter(|p| p.extension().is_some_and(|e| e == "rs")).collect();
        let modules: Vec<Vec<String>> = sources.iter().map(|f| module_path(&src, f)).collect();
        let refers: Vec<(Vec<String>, Vec<Vec<String>>)> = sources
            .iter()
            .map(|file| {
                let own = module_path(&src, file);
                let code = code_of(&std::fs::read_to_string(file).unwrap_or_default());
                let referred = referred_modules(&code, &own, &modules);
                (own, referred)
            })
            .collect();
        for (a, to) in &refers {
            for b in to {
                let nested = a.starts_with(b) || b.starts_with(a);
                let back = refers.iter().any(|(m, to)| m == b && to.contains(a));
                if back && !nested && a < b {
                    circles.push(format!("{krate}: {} <-> {}", a.join("::"), b.join("::")));
                }
            }
        }
    }
    assert!(circles.is_empty(), "modules that refer to each other: {circles:#?}");
}

/// The longest a function of the product (every crate but the scenario
/// tests, whose stories read top to bottom) may be: one screen and a half.
/// A longer one is split into named steps (issue 25 found six, up to 400 lines).
const MAX_FUNCTION_LINES: usize = 100;

/// Each function's first line and length in `text` (rustfmt's layout: a
/// function ends at the first `}` at its own indentation).
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let is_fn = |line: &str| {
        let words: Vec<&str> = line.split_whitespace().take_while(|w| *w != "fn").collect();
        line.split_whitespace().any(|w| w == "fn")
            && words
                .iter()
                .all(|w| ["pub", "pub(crate)", "pub(super)", "async", "const", "unsafe"].contains(w))
            && !line.trim_end().ends_with(';')
    };
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate().filter(|(_, l)| is_fn(l)) {
        let indent = line.len() - line.trim_start().len();
        let closing = format!("{}}}", " ".repeat(indent));
        if let Some(end) = lines[start..].iter().position(|l| l.starts_with(&closing)) {
            found.push((line.trim().to_string(), end + 1));
        }
    }
    found
}

#[test]
fn no_function_is_longer_than_a_hundred_lines() {
    let long: Vec<String> = files(&root())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter(|p| !p.starts_with(root().join("tests")))
        .flat_map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            function_lengths(&text)
                .into_iter()
                .filter(|(_, n)| *n > MAX_FUNCTION_LINES)
                .map(move |(f, n)| format!("{}: {f} ({n} lines)", relative(&p)))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(long.is_empty(), "functions over {MAX_FUNCTION_LINES} lines: {long:#?}");
}

#[test]
fn the_length_check_sees_a_long_function() {
    let body = "    let x = 1;\n".repeat(MAX_FUNCTION_LINES);
    let text = format!("/// doc\npub async fn long() {{\n{body}}}\n\nfn short() {{}}\n");
    let lengths = function_lengths(&text);
    assert_eq!(lengths[0], ("pub async fn long() {".to_string(), MAX_FUNCTION_LINES + 2));
}

/// The workspace denies unsafe code; one module may allow it (two calls
/// into glibc's allocator), and no other file does.
#[test]
fn unsafe_code_stays_in_the_allocator_module() {
    let allowed = "workers/src/memory.rs";
    let allowing: Vec<String> = files(&root())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter(|p| std::fs::read_to_string(p).unwrap_or_default().contains("allow(unsafe_code)"))
        .map(|p| relative(&p))
        .filter(|p| p != "tests/tidy/main.rs")
        .collect();
    assert_eq!(allowing, [allowed], "only {allowed} may allow unsafe code");
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(manifest.contains("unsafe_code = \"deny\""), "the workspace denies unsafe code");
}
