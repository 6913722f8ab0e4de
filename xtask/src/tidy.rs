//! Tidy checks over the source tree: every Rust file says what it is for in its first line, and no function in
//! library code is longer than [`FUNCTION_LINES_LIMIT`] lines unless a comment says why.

mod function_length;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use function_length::REASON_MARK;

/// How many lines a function in library code may span, from its `fn` line to its closing brace, without a
/// `// long-function: <reason>` comment above it (conventions: "no function in library code is longer than ~80
/// lines without a reason in a comment").
const FUNCTION_LINES_LIMIT: usize = 80;

/// Runs every tidy check and reports every problem found, not only the first check's.
pub(crate) fn check(root: &Path) -> Result<()> {
    let problems: Vec<String> = [module_docs(root), long_functions(root)]
        .into_iter()
        .filter_map(Result::err)
        .map(|err| format!("{err:#}"))
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    bail!("{}", problems.join("\n\n"))
}

/// Fails listing every `.rs` file under crates/, xtask/, tests/ and fuzz/ whose first line is not a `//!` doc.
fn module_docs(root: &Path) -> Result<()> {
    let mut missing = Vec::new();
    for dir in ["crates", "xtask", "tests", "fuzz"] {
        for file in rust_files(&root.join(dir))? {
            let text = fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            if !text.starts_with("//!") {
                missing.push(
                    file.strip_prefix(root)
                        .unwrap_or(&file)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "these files do not open with a `//!` line saying what they are for:\n  {}",
        missing.join("\n  ")
    )
}

/// Fails listing every function in library code (the `src/` of each crate under crates/, binaries included;
/// not tests/, benches or examples, not `#[cfg(test)]` items or the files of out-of-line test modules) that
/// is longer than [`FUNCTION_LINES_LIMIT`] lines and gives no reason: all of them at once, by file and line.
fn long_functions(root: &Path) -> Result<()> {
    let offenders = long_functions_under(&root.join("crates"))?;
    if offenders.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = offenders
        .iter()
        .map(|(file, function)| {
            format!(
                "{}:{}  {}  {} lines",
                file.strip_prefix(root).unwrap_or(file).display(),
                function.line,
                function.name,
                function.lines
            )
        })
        .collect();
    bail!(
        "these functions in library code are longer than {FUNCTION_LINES_LIMIT} lines; split them, or say why \
         in a comment within the three lines above the `fn` (or in its doc comment): `// {REASON_MARK} <reason>`\n  {}",
        list.join("\n  ")
    )
}

/// The functions over the limit without a reason in the `src/` of every crate directly under `crates`, sorted by
/// file and line.
fn long_functions_under(crates: &Path) -> Result<Vec<(PathBuf, function_length::Function)>> {
    let mut scans = Vec::new();
    for entry in
        fs::read_dir(crates).with_context(|| format!("cannot list {}", crates.display()))?
    {
        for file in rust_files(&entry?.path().join("src"))? {
            let text = fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            scans.push((file, function_length::scan(&text)));
        }
    }
    // The files of out-of-line test modules (`#[cfg(test)] mod tests;`): NAME.rs, and NAME/ for its children.
    let mut test_files = BTreeSet::new();
    for (file, scan) in &scans {
        let dir = module_dir(file);
        for name in &scan.test_modules {
            test_files.insert(dir.join(format!("{name}.rs")));
            test_files.insert(dir.join(name));
        }
    }
    let mut offenders: Vec<(PathBuf, function_length::Function)> = scans
        .into_iter()
        .filter(|(file, _)| !file.ancestors().any(|a| test_files.contains(a)))
        .flat_map(|(file, scan)| scan.functions.into_iter().map(move |f| (file.clone(), f)))
        .filter(|(_, f)| f.lines > FUNCTION_LINES_LIMIT && f.reason.is_none())
        .collect();
    offenders.sort_by(|a, b| (&a.0, a.1.line).cmp(&(&b.0, b.1.line)));
    Ok(offenders)
}

/// The directory holding the files of the submodules that `file` declares: its own directory for a crate
/// root or a `mod.rs`, else the directory named after it.
fn module_dir(file: &Path) -> PathBuf {
    let parent = file.parent().unwrap_or(Path::new(""));
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let crate_root = matches!(name, "lib.rs" | "main.rs" | "mod.rs") || parent.ends_with("src/bin");
    if crate_root {
        parent.to_path_buf()
    } else {
        parent.join(name.trim_end_matches(".rs"))
    }
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in
            fs::read_dir(&next).with_context(|| format!("cannot list {}", next.display()))?
        {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rust_file_opens_with_a_module_doc() {
        module_docs(&crate::workspace_root()).unwrap();
    }

    #[test]
    fn no_library_function_is_longer_than_the_limit_without_a_reason() {
        if let Err(err) = long_functions(&crate::workspace_root()) {
            panic!("{err:#}");
        }
    }

    /// A function spanning `lines` lines.
    fn function(name: &str, lines: usize) -> String {
        format!("fn {name}() {{\n{}}}\n", "    step();\n".repeat(lines - 2))
    }

    #[test]
    fn only_library_code_is_held_to_the_limit() {
        let root = std::env::temp_dir().join(format!("xtask-tidy-{}", std::process::id()));
        let write = |path: &str, text: &str| {
            let path = root.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        let long = function("long", FUNCTION_LINES_LIMIT + 1);
        write(
            "a/src/lib.rs",
            &format!(
                "//! A.\n#[cfg(test)]\nmod tests;\nmod server;\n{}{long}",
                function("fits", FUNCTION_LINES_LIMIT)
            ),
        );
        write("a/src/tests.rs", &long);
        write(
            "a/src/server.rs",
            &format!("//! Server.\n#[cfg(test)]\nmod tests;\n// long-function: one table\n{long}"),
        );
        write("a/src/server/tests.rs", &long);
        write("a/src/server/tests/deeper.rs", &long);
        write("a/src/bin/tool.rs", &format!("//! Tool.\n{long}"));
        write("a/tests/e2e.rs", &long);
        write("b/benches/bench.rs", &long);
        let found = long_functions_under(&root).unwrap();
        fs::remove_dir_all(&root).unwrap();
        let found: Vec<(String, usize, usize)> = found
            .into_iter()
            .map(|(file, f)| {
                let file = file.strip_prefix(&root).unwrap().display().to_string();
                (file, f.line, f.lines)
            })
            .collect();
        assert_eq!(
            found,
            [
                ("a/src/bin/tool.rs".to_owned(), 2, FUNCTION_LINES_LIMIT + 1),
                ("a/src/lib.rs".to_owned(), 85, FUNCTION_LINES_LIMIT + 1),
            ]
        );
    }
}
