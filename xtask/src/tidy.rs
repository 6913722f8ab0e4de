//! Tidy checks over the source tree: every Rust file says what it is for in its first line.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Fails listing every `.rs` file under crates/, xtask/, tests/ and fuzz/ whose first line is not a `//!` doc.
pub(crate) fn check(root: &Path) -> Result<()> {
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
    #[test]
    fn every_rust_file_opens_with_a_module_doc() {
        super::check(&crate::workspace_root()).unwrap();
    }
}
