//! The `cmdop-agent` binary: flag parsing, logging and dispatch; the work lives in the library and in the
//! command modules.

mod identity_command;
mod run_command;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use cmdop_identity::store::{self, KekBackend, SeedStore};

use crate::identity_command::IdentityCommand;

/// The cmdop agent: keeps this machine reachable through a cmdop relay.
#[derive(Debug, Parser)]
#[command(name = "cmdop-agent", version, about)]
struct Cli {
    /// Directory holding the agent's identity and settings [default: $XDG_CONFIG_HOME/cmdop, else ~/.config/cmdop].
    #[arg(long, global = true, env = "CMDOP_CONFIG_DIR", value_name = "DIR")]
    config_dir: Option<PathBuf>,

    /// Where a new identity's key-encryption key is kept: the OS keyring if one answers, else a key file
    /// (auto); only the keyring; only the key file. Existing identities are read from where they say.
    #[arg(long, global = true, env = "CMDOP_KEK_BACKEND", value_enum, default_value_t = KekChoice::Auto)]
    kek_backend: KekChoice,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or show this machine's agent identity.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Register this machine with its relay and keep it online until stopped (SIGINT or SIGTERM).
    Run(run_command::RunArgs),
    /// Save the relay, fleet and API key so that a later `run` needs no flags.
    Enroll(run_command::RelayArgs),
}

/// The command-line spelling of [`KekBackend`].
#[derive(Debug, Clone, Copy, ValueEnum)]
enum KekChoice {
    Auto,
    Keyring,
    File,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cmdop-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = match cli.config_dir {
        Some(dir) => dir,
        None => store::default_config_dir().context(
            "cannot find a config directory (neither XDG_CONFIG_HOME nor HOME is set); pass --config-dir or set CMDOP_CONFIG_DIR",
        )?,
    };
    let backend = match cli.kek_backend {
        KekChoice::Auto => KekBackend::Auto,
        KekChoice::Keyring => KekBackend::KeyringOnly,
        KekChoice::File => KekBackend::FileOnly,
    };
    let store = SeedStore::new(dir, backend);
    match cli.command {
        Command::Identity(command) => identity_command::run(command, &store),
        Command::Run(args) => run_command::run(args, &store),
        Command::Enroll(args) => run_command::enroll(args, &store),
    }
}

/// Logs go to stderr so that stdout stays for command output; `RUST_LOG` overrides the `info` default.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
