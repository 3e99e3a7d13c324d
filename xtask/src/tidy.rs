//! Tidy checks of the source tree, run by the test suite (as rust-analyzer keeps its tidy
//! checks): no two files of a library crate import each other in a circle, and no backend
//! checks shapes itself.
//!
//! A file's imports are the `crate::` paths it names (in `use` items and in expressions); each
//! resolves to the deepest module file of the crate that exists for it. `super::` paths and a
//! parent naming its own children are the ordinary shape of a module tree and are not
//! counted; what the check forbids is two sibling files (or cousins) needing each other, which
//! means neither can be understood, tested or moved alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The module files of a crate's `src/`, keyed by module path (`algo::em`), with their text.
fn modules(src: &Path) -> BTreeMap<Vec<String>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            out.insert(parts, fs::read_to_string(&path).unwrap_or_default());
        }
    }
    out
}

/// The module paths a file's code names after `crate::`, as identifier sequences (comments,
/// doc links included, are not imports).
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        // `modula_crate::` and the like are other names, not the `crate` keyword.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let mut path = Vec::new();
        let mut s = rest;
        loop {
            let end = s
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(s.len());
            if end == 0 {
                break;
            }
            path.push(s[..end].to_string());
            match s[end..].strip_prefix("::") {
                Some(next) => s = next,
                None => break,
            }
        }
        if !path.is_empty() {
            out.push(path);
        }
    }
    out
}

/// The import graph of one crate: for each module file, the other files it names. Edges
/// from a module to its own descendants are left out (a parent declares and re-exports its
/// children).
fn graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mods = modules(src);
    let mut g: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in &mods {
        let deps = g.entry(module.clone()).or_default();
        for path in crate_paths(text) {
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| mods.contains_key(p))
                .expect("the crate root exists");
            if target != *module && !target.starts_with(module) {
                deps.insert(target);
            }
        }
    }
    g
}

/// The first circle of imports found in `g`, as the modules along it.
fn find_cycle(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<Vec<String>>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        node: &Vec<String>,
        g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        marks: &mut BTreeMap<Vec<String>, Mark>,
        path: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        marks.insert(node.clone(), Mark::Open);
        path.push(node.clone());
        for next in g.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = path.iter().position(|p| p == next).expect("on the path");
                    let mut cycle = path[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(next, g, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in g.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(c) = visit(node, g, &mut marks, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// Every library crate's `src/` under `crates/`.
fn library_sources(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(root.join("crates"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("src"))
        .filter(|src| src.join("lib.rs").is_file())
        .collect();
    out.sort();
    out
}

/// A module path as written (`algo::em`, `crate` for the root).
fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// The first circle of imports in any library crate of the workspace at `root`, described.
fn check(root: &Path) -> Result<usize, String> {
    let sources = library_sources(root);
    for src in &sources {
        if let Some(cycle) = find_cycle(&graph(src)) {
            let names: Vec<String> = cycle.iter().map(|m| name(m)).collect();
            return Err(format!(
                "{}: files import each other in a circle: {}",
                src.display(),
                names.join(" -> ")
            ));
        }
    }
    Ok(sources.len())
}

/// A file's code with comments (doc comments included) removed, line by line.
fn code(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether a module is a *front*: it holds a blanket implementation of a caller-facing trait
/// over a kernel trait (`impl<K: GroupedKernels> Backend for K`, or an extension crate's
/// `impl<K: SparseKernels> SparseBackend for K`). Fronts are where contract checks run, once,
/// before any backend's kernel.
fn is_front(code: &str) -> bool {
    code.lines().any(|l| {
        let Some(rest) = l.trim().strip_prefix("impl<K: ") else {
            return false;
        };
        let bound = rest.split('>').next().unwrap_or("");
        bound.contains("Kernels") && rest.contains(" for K {")
    })
}

/// The first module of a backend crate that calls a contract check itself. Contract checks
/// run once, in a front ([`is_front`]: `modula_tensor::Backend`'s blanket implementation, or
/// an extension trait's); a crate that implements kernels must leave them to its front.
/// Returns how many backend crates were looked at.
fn backend_checks(root: &Path) -> Result<usize, String> {
    let mut backends = 0;
    for src in library_sources(root) {
        let mods = modules(&src);
        let is_backend = mods.values().any(|text| {
            let code = code(text);
            code.contains("Kernels for ") && code.contains("impl")
        });
        if !is_backend {
            continue;
        }
        backends += 1;
        for (module, text) in &mods {
            let code = code(text);
            if !is_front(&code) && code.contains("check::") {
                return Err(format!(
                    "{}: module {} calls a contract check (`check::`); checks run once, in front \
                     of every backend (the blanket `impl<K: ...Kernels> ... for K` of \
                     modula_tensor::Backend or of an extension trait), so kernels must not \
                     repeat them",
                    src.display(),
                    name(module)
                ));
            }
        }
    }
    Ok(backends)
}

/// `cargo xtask tidy`.
pub fn run() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let crates = check(&root)?;
    println!("tidy: {crates} library crates, no circular imports between files");
    let backends = backend_checks(&root)?;
    println!("tidy: {backends} crates implement kernels, none checks shapes itself");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_library_crate_has_files_that_import_each_other_in_a_circle() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        match check(&root) {
            Ok(crates) => assert!(crates >= 5, "found only {crates} library crates"),
            Err(problem) => panic!("{problem}"),
        }
    }

    #[test]
    fn no_backend_checks_shapes_itself() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        match backend_checks(&root) {
            // The core (its reference backend), the CPU and the WGSL backends.
            Ok(backends) => assert!(backends >= 3, "found only {backends} backend crates"),
            Err(problem) => panic!("{problem}"),
        }
    }

    #[test]
    fn a_kernel_that_checks_is_found_and_the_front_is_allowed() {
        let dir = std::env::temp_dir().join(format!("modula-tidy-k-{}", std::process::id()));
        let core = dir.join("crates/modula-tensor/src");
        let cpu = dir.join("crates/modula-cpu/src");
        fs::create_dir_all(&core).unwrap();
        fs::create_dir_all(&cpu).unwrap();
        fs::write(core.join("lib.rs"), "mod backend; mod check;").unwrap();
        fs::write(
            core.join("backend.rs"),
            "impl<K: Kernels> Backend for K { fn f() { check::same_shape(); } }",
        )
        .unwrap();
        fs::write(cpu.join("lib.rs"), "mod cpu;").unwrap();
        fs::write(
            cpu.join("cpu.rs"),
            "impl Kernels for Cpu {} // check::same_shape is the front's job",
        )
        .unwrap();
        assert_eq!(backend_checks(&dir), Ok(1));
        fs::write(
            cpu.join("cpu.rs"),
            "impl Kernels for Cpu { fn f() { check::same_shape(); } }",
        )
        .unwrap();
        let problem = backend_checks(&dir).expect_err("the CPU kernel checks");
        assert!(
            problem.contains("module cpu calls a contract check"),
            "{problem}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// An extension crate (the sparse engine) implements its kernel trait for a backend and
    /// has its own front: the front may check, its kernels may not.
    #[test]
    fn an_extension_front_may_check_and_its_kernels_may_not() {
        let dir = std::env::temp_dir().join(format!("modula-tidy-x-{}", std::process::id()));
        let src = dir.join("crates/modula-sparse/src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("lib.rs"), "mod front; mod kernels;").unwrap();
        fs::write(
            src.join("front.rs"),
            "impl<K: SparseKernels> SparseBackend for K {\n fn f() { check::same_shape(); }\n}",
        )
        .unwrap();
        fs::write(
            src.join("kernels.rs"),
            "impl SparseKernels for Reference {}",
        )
        .unwrap();
        assert_eq!(backend_checks(&dir), Ok(1));
        fs::write(
            src.join("kernels.rs"),
            "impl SparseKernels for Reference { fn f() { check::same_rows(); } }",
        )
        .unwrap();
        let problem = backend_checks(&dir).expect_err("the kernel checks");
        assert!(
            problem.contains("module kernels calls a contract check"),
            "{problem}"
        );
        // A blanket impl over something that is not a kernel trait is no front.
        fs::write(
            src.join("front.rs"),
            "impl<K: Clone> SparseBackend for K {\n fn f() { check::same_shape(); }\n}",
        )
        .unwrap();
        fs::write(
            src.join("kernels.rs"),
            "impl SparseKernels for Reference {}",
        )
        .unwrap();
        let problem = backend_checks(&dir).expect_err("not a front");
        assert!(problem.contains("module front calls"), "{problem}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_circle_between_two_files_is_found_and_a_parent_child_pair_is_not() {
        let dir = std::env::temp_dir().join(format!("modula-tidy-{}", std::process::id()));
        let src = dir.join("src");
        fs::create_dir_all(src.join("algo")).unwrap();
        fs::write(src.join("lib.rs"), "mod algo; mod a; mod b;").unwrap();
        fs::write(src.join("algo/mod.rs"), "mod em; use crate::algo::em::X;").unwrap();
        fs::write(src.join("algo/em.rs"), "use super::Y; use crate::a::Z;").unwrap();
        fs::write(src.join("a.rs"), "fn f() { crate::b::g() }").unwrap();
        fs::write(src.join("b.rs"), "use modula_crate::a; fn g() {}").unwrap();
        assert_eq!(find_cycle(&graph(&src)), None);
        fs::write(src.join("b.rs"), "use crate::a::f; fn g() {}").unwrap();
        let cycle = find_cycle(&graph(&src)).expect("a -> b -> a");
        let names: Vec<String> = cycle.iter().map(|m| name(m)).collect();
        assert!(
            names == ["a", "b", "a"] || names == ["b", "a", "b"],
            "{names:?}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
