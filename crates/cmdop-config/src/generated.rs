//! Shell completion scripts and man pages for the three binaries (`cmdop`, `cmdop-relay`, `cmdop-agent`),
//! generated from the same clap definitions as their `--help`, so they cannot drift from it.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Why a completion script or man page could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeneratedError {
    /// The output directory could not be created.
    #[error("cannot create {}: {source}; pick another --out-dir", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A page could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file (or `-` for stdout).
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The completion script of `command` (a binary called `name`) for `shell`, on stdout.
pub fn print_completions(
    shell: clap_complete::Shell,
    mut command: clap::Command,
    name: &str,
) -> Result<(), GeneratedError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    write_stdout(&script)
}

/// `NAME.1` on stdout without `out_dir`; with it, `NAME.1` and one page per visible subcommand
/// (`NAME-SUB.1`) written into `out_dir`, whose paths are returned.
pub fn man_pages(
    command: clap::Command,
    name: &str,
    out_dir: Option<&Path>,
) -> Result<Vec<PathBuf>, GeneratedError> {
    let Some(dir) = out_dir else {
        let mut page = Vec::new();
        render(command, &mut page, Path::new("-"))?;
        write_stdout(&page)?;
        return Ok(Vec::new());
    };
    std::fs::create_dir_all(dir).map_err(|source| GeneratedError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page_name = format!("{name}-{}", sub.get_name());
        written.push(write_page(
            sub.clone().display_name(&page_name),
            dir,
            &page_name,
        )?);
    }
    written.push(write_page(command, dir, name)?);
    Ok(written)
}

fn write_page(command: clap::Command, dir: &Path, name: &str) -> Result<PathBuf, GeneratedError> {
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    render(command, &mut page, &path)?;
    std::fs::write(&path, page).map_err(|source| GeneratedError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn render(command: clap::Command, out: &mut Vec<u8>, path: &Path) -> Result<(), GeneratedError> {
    clap_mangen::Man::new(command)
        .render(out)
        .map_err(|source| GeneratedError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes to stdout; a reader that went away (`| head`) is not a failure.
fn write_stdout(bytes: &[u8]) -> Result<(), GeneratedError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(GeneratedError::Write {
            path: PathBuf::from("-"),
            source: err,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> clap::Command {
        clap::Command::new("tool")
            .about("an example")
            .subcommand(clap::Command::new("run").about("runs"))
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn a_page_per_visible_subcommand_and_one_for_the_binary() {
        let dir = tempfile::tempdir().unwrap();
        let written = man_pages(example(), "tool", Some(dir.path())).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["tool-run.1", "tool.1"]);
        let page = std::fs::read_to_string(dir.path().join("tool-run.1")).unwrap();
        assert!(page.contains(".TH") && page.contains("runs"), "{page}");
    }
}
