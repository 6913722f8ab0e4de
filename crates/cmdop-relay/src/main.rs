//! The `cmdop-relay` binary: parse the command line, load the config file, set up logging, dispatch.
//!
//! Thin by design: the flags are `cli`, the verbs `serve_command`, `admin_verbs` and `status_command`, the
//! settings `relay_settings`; the relay itself is the `cmdop_relay` library.

mod admin_verbs;
mod cli;
mod relay_settings;
mod serve_command;
mod status_command;

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory as _, Parser};

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Generated from the flags alone: they must work before (and without) any config file.
    match cli.command {
        Command::Completions { shell } => {
            let generated =
                cmdop_config::generated::print_completions(shell, Cli::command(), "cmdop-relay");
            return report(generated.map_err(anyhow::Error::from));
        }
        Command::Man { out_dir } => {
            let written = cmdop_config::generated::man_pages(
                Cli::command(),
                "cmdop-relay",
                out_dir.as_deref(),
            );
            return report(written.map_err(anyhow::Error::from).map(|written| {
                for path in written {
                    println!("wrote {}", path.display());
                }
            }));
        }
        _ => {}
    }
    let loaded = match relay_settings::load(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(err) => return report(Err(err)),
    };
    let format = cli
        .log_format
        .or(loaded.file.log_format)
        .unwrap_or_default();
    cmdop_config::init_logging(format, "info,quinn=warn");
    report(admin_verbs::run(cli.command, &loaded))
}

fn report(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cmdop-relay: {err:#}");
            ExitCode::FAILURE
        }
    }
}
