//! `cmdop completions` and `cmdop man`: shell completion scripts and man pages, generated from the same clap
//! definitions as `--help` (the generation itself is `cmdop_config::generated`, shared with the daemons).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::exit::{Failure, Kind, Outcome};

/// `cmdop completions SHELL`: the completion script on stdout.
pub(crate) fn completions(shell: clap_complete::Shell, command: clap::Command) -> Outcome {
    cmdop_config::generated::print_completions(shell, command, "cmdop").map_err(failure)?;
    Ok(ExitCode::SUCCESS)
}

/// `cmdop man`: cmdop.1 on stdout, or every page (cmdop.1 and one per subcommand) written into `out_dir`.
pub(crate) fn man_pages(command: clap::Command, out_dir: Option<PathBuf>) -> Outcome {
    let written = cmdop_config::generated::man_pages(command, "cmdop", out_dir.as_deref())
        .map_err(failure)?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn failure(err: cmdop_config::generated::GeneratedError) -> Failure {
    Failure::new(Kind::General, err.to_string())
}
