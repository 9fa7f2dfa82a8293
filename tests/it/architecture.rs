//! ARCHITECTURE.md's dependency table holds: every `crate::` path in `src/` is one the table
//! allows, every module has a row, and the allowed graph has no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::common::repo_root;

/// Module -> modules it may use, from the last table of ARCHITECTURE.md.
fn rules(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let section = text
        .split("## Which module may use which")
        .nth(1)
        .expect("ARCHITECTURE.md has a 'Which module may use which' section");
    let mut rules = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let module = cells[1].trim_matches('`').to_string();
        let allowed = cells
            .get(2)
            .copied()
            .unwrap_or("")
            .split(',')
            .map(|m| m.trim().trim_matches('`').to_string())
            .filter(|m| !m.is_empty())
            .collect();
        rules.insert(module, allowed);
    }
    rules
}

/// The `crate::x` module names a Rust source uses outside comments.
fn used_modules(source: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` groups: every name in the braces.
            if name.is_empty() && after.starts_with('{') {
                let group = after[1..].split('}').next().unwrap_or("");
                for part in group.split(',') {
                    let first = part.trim().split("::").next().unwrap_or("").trim();
                    if !first.is_empty() {
                        used.insert(first.to_string());
                    }
                }
            } else if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                // An item of the crate root (`crate::VERSION`), not a module.
            } else if !name.is_empty() {
                used.insert(name);
            }
            rest = after;
        }
    }
    used
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_use_only_what_architecture_md_allows() {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let rules = rules(&text);
    assert!(
        rules.len() >= 15,
        "the table was not found or is short: {rules:?}"
    );
    let src = root.join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut violations = Vec::new();
    let mut modules = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a component");
        let module = Path::new(first.as_os_str())
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .to_string();
        // The library root and the binary and its modules (which use the library by its name)
        // are not modules of the library.
        if matches!(module.as_str(), "lib" | "main" | "status" | "dnssec_cli" | "ctl") {
            continue;
        }
        modules.insert(module.clone());
        let Some(allowed) = rules.get(&module) else {
            violations.push(format!(
                "{}: module `{module}` has no row in ARCHITECTURE.md",
                relative.display()
            ));
            continue;
        };
        let source = std::fs::read_to_string(file).expect("source");
        for used in used_modules(&source) {
            if used != module && !allowed.contains(&used) {
                violations.push(format!(
                    "{}: `{module}` uses `crate::{used}`, which ARCHITECTURE.md does not allow",
                    relative.display()
                ));
            }
        }
    }
    for module in rules.keys() {
        if !modules.contains(module) {
            violations.push(format!("ARCHITECTURE.md names `{module}`, which is not in src/"));
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));

    // No cycle among the allowed edges (depth-first search with colours).
    fn visit<'a>(
        node: &'a str,
        rules: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(1) => {
                let start = path.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            Some(_) => return None,
            None => {}
        }
        state.insert(node, 1);
        path.push(node);
        for next in rules.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, rules, state, path) {
                return Some(cycle);
            }
        }
        path.pop();
        state.insert(node, 2);
        None
    }
    let mut state = BTreeMap::new();
    for module in rules.keys() {
        let cycle = visit(module, &rules, &mut state, &mut Vec::new());
        assert!(cycle.is_none(), "ARCHITECTURE.md allows a cycle: {:?}", cycle);
    }
}

#[test]
fn the_checker_sees_uses_in_every_form() {
    let source = "use crate::zone::name::Name;\nuse crate::{config, metrics::Metrics};\n\
                  let x = crate::snapshot::Snapshot::build(); // crate::health in a comment\n";
    let used = used_modules(source);
    let want: BTreeSet<String> = ["zone", "config", "metrics", "snapshot"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(used, want);
}

#[test]
fn only_the_control_plane_swaps_the_snapshot() {
    // ARCHITECTURE.md's "one swap site": a query sees the old snapshot or the new one, and
    // only `control` decides which.
    let src = repo_root().join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let swapping: Vec<String> = files
        .iter()
        .filter(|file| {
            std::fs::read_to_string(file)
                .expect("source")
                .lines()
                .any(|line| line.split("//").next().unwrap_or("").contains("snapshot.store("))
        })
        .map(|file| file.strip_prefix(&src).expect("under src").display().to_string())
        .collect();
    assert_eq!(swapping, ["control/mod.rs"], "files that store a snapshot");
}
