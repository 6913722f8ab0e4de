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
use clap::Parser;

use crate::cli::{Cli, Command, ConfigCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `config check` reports a broken file itself; every other command needs it to load.
    if let Command::Config(ConfigCommand::Check) = cli.command {
        return report(serve_command::config_check(cli.config.as_deref()));
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
