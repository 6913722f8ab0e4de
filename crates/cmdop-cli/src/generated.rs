//! `cmdop completions` and `cmdop man`: shell completion scripts and man pages, generated from the same clap
//! definitions as `--help`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::exit::Outcome;

/// `cmdop completions SHELL`: the completion script on stdout.
pub(crate) fn completions(shell: clap_complete::Shell, mut command: clap::Command) -> Outcome {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "cmdop", &mut script);
    write_stdout(&script)
}

/// `cmdop man`: cmdop.1 on stdout, or every page (cmdop.1 and one per subcommand) written into `out_dir`.
pub(crate) fn man_pages(command: clap::Command, out_dir: Option<PathBuf>) -> Outcome {
    let Some(dir) = out_dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut page)
            .context("cannot render the man page")?;
        return write_stdout(&page);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    let mut page = |command: clap::Command, name: String| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut file = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        clap_mangen::Man::new(command.display_name(name))
            .render(&mut file)
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub.clone(), format!("cmdop-{}", sub.get_name()))?;
    }
    page(command, "cmdop".to_owned())?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes generated text to stdout; a reader that went away is not a failure (see
/// [`crate::startup::quiet_broken_pipe`]).
fn write_stdout(bytes: &[u8]) -> Outcome {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(err) => Err(anyhow::Error::from(err)
            .context("cannot write to stdout")
            .into()),
    }
}
