//! The `cmdop-agent` binary: flag parsing, the config file, logging and dispatch; the work lives in the
//! library and in the command modules.

mod agent_config;
mod identity_command;
mod run_command;
mod service;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use cmdop_config::LogFormat;
use cmdop_identity::store;
use cmdop_keystore::{KekBackend, SeedStore};

use crate::agent_config::KekChoice;
use crate::identity_command::IdentityCommand;
use crate::service::{AgentInvocation, ServiceCommand};

/// The cmdop agent: keeps this machine reachable through a cmdop relay.
///
/// Every flag can also come from its environment variable or from the TOML config file (`--config`, default
/// agent.toml in the config directory if it exists); a flag beats the environment, which beats the file,
/// which beats what `enroll` saved.
#[derive(Debug, Parser)]
#[command(
    name = "cmdop-agent",
    version,
    about,
    after_help = "Examples:\n  cmdop-agent enroll --relay relay.example:4433 --relay-fingerprint SHA256:… --workspace prod --api-key-file key\n  cmdop-agent run\n  cmdop-agent service install --user"
)]
struct Cli {
    /// Directory holding the agent's identity and settings [default: $XDG_CONFIG_HOME/cmdop, else ~/.config/cmdop].
    #[arg(long, global = true, env = "CMDOP_CONFIG_DIR", value_name = "DIR")]
    config_dir: Option<PathBuf>,

    /// TOML config file [default: agent.toml in the config directory, if it exists].
    #[arg(long, global = true, env = "CMDOP_AGENT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Where a new identity's key-encryption key is kept: the OS keyring if one answers, else a key file
    /// (auto); only the keyring; only the key file. Existing identities are read from where they say
    /// [config: kek_backend] [default: auto].
    #[arg(long, global = true, env = "CMDOP_KEK_BACKEND", value_enum)]
    kek_backend: Option<KekChoice>,

    /// How log lines are written to stderr [config: log_format] [default: text]; `RUST_LOG` picks what is logged.
    #[arg(
        long,
        global = true,
        env = "CMDOP_AGENT_LOG_FORMAT",
        value_enum,
        value_name = "FORMAT"
    )]
    log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or show this machine's agent identity.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Register this machine with its relay and keep it online until stopped (SIGINT or SIGTERM).
    #[command(
        after_help = "Examples:\n  cmdop-agent run\n  cmdop-agent run --relay relay.example:4433 --relay-fingerprint SHA256:… --workspace prod --api-key-file key\n  CMDOP_API_KEY=… cmdop-agent --log-format json run"
    )]
    Run(run_command::RunArgs),
    /// Save the relay, fleet and API key so that a later `run` needs no flags.
    #[command(
        after_help = "Example:\n  cmdop-agent enroll --relay relay.example:4433 --relay-fingerprint SHA256:… --workspace prod --api-key-file key"
    )]
    Enroll(run_command::RelayArgs),
    /// Run the agent as a systemd service (system-wide, or --user).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Check the config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script for bash, zsh or fish.
    #[command(
        after_help = "Examples:\n  cmdop-agent completions bash > /usr/share/bash-completion/completions/cmdop-agent\n  cmdop-agent completions fish > ~/.config/fish/completions/cmdop-agent.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (cmdop-agent.1 and one per subcommand) into a directory, or cmdop-agent.1 to stdout.
    #[command(
        after_help = "Examples:\n  cmdop-agent man --out-dir /usr/local/share/man/man1\n  cmdop-agent man | man -l -"
    )]
    Man {
        /// Where to write the pages [default: print cmdop-agent.1 to stdout].
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check what `run` would use, from its flags, the environment, the config file (--config, else
    /// agent.toml in the config directory) and what `enroll` saved, and print it. Takes the flags of `run`.
    #[command(
        after_help = "Examples:\n  cmdop-agent config check --config /etc/cmdop/agent/agent.toml\n  CMDOP_RELAY=relay.example:4433 cmdop-agent config check --label role=web"
    )]
    Check(run_command::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Generated from the flags alone: they must work before (and without) a config directory or file.
    match &cli.command {
        Command::Completions { shell } => {
            let generated =
                cmdop_config::generated::print_completions(*shell, Cli::command(), "cmdop-agent");
            return report(generated.map_err(anyhow::Error::from));
        }
        Command::Man { out_dir } => {
            let written = cmdop_config::generated::man_pages(
                Cli::command(),
                "cmdop-agent",
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
    let dir = match &cli.config_dir {
        Some(dir) => Ok(dir.clone()),
        None => store::default_config_dir().context(
            "cannot find a config directory (neither XDG_CONFIG_HOME nor HOME is set); pass --config-dir or set CMDOP_CONFIG_DIR",
        ),
    };
    let loaded =
        dir.and_then(|dir| Ok((agent_config::load(cli.config.as_deref(), Some(&dir))?, dir)));
    let (loaded, dir) = match loaded {
        Ok(found) => found,
        Err(err) => return report(Err(err)),
    };
    let format = cli
        .log_format
        .or(loaded.file.log_format)
        .unwrap_or_default();
    cmdop_config::init_logging(format, "info");
    report(run(cli, dir, &loaded))
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cmdop-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, dir: PathBuf, loaded: &agent_config::Loaded) -> anyhow::Result<()> {
    let backend = match cli.kek_backend.or(loaded.file.kek_backend) {
        None | Some(KekChoice::Auto) => KekBackend::Auto,
        Some(KekChoice::Keyring) => KekBackend::KeyringOnly,
        Some(KekChoice::File) => KekBackend::FileOnly,
    };
    let store = SeedStore::new(dir.clone(), backend);
    match cli.command {
        Command::Identity(command) => identity_command::run(command, &store),
        Command::Run(args) => run_command::run(args.with_file(loaded), &store),
        Command::Enroll(args) => run_command::enroll(args.with_file(loaded), &store),
        Command::Service(command) => {
            let exe = std::env::current_exe().context("cannot find this binary's path")?;
            let dir = absolute(&dir)?;
            let config_file = cli.config.as_deref().map(absolute).transpose()?;
            service::run(
                command,
                &AgentInvocation {
                    exe: &exe,
                    config_dir: &dir,
                    config_file: config_file.as_deref(),
                },
            )
        }
        Command::Config(ConfigCommand::Check(args)) => {
            config_check(args.with_file(loaded), &dir, loaded)
        }
        Command::Completions { .. } | Command::Man { .. } => {
            anyhow::bail!("completions and man pages are generated before the config is read")
        }
    }
}

/// `config check`: the config file has loaded (unknown keys and bad values are errors naming the line); now
/// everything `run` would use is resolved and checked exactly as `run` does it, environment and `agent.json`
/// included, and printed.
fn config_check(
    args: run_command::RunArgs,
    dir: &Path,
    loaded: &agent_config::Loaded,
) -> anyhow::Result<()> {
    let plan = run_command::RunPlan::resolve(args, dir)?;
    match &loaded.path {
        Some(path) => println!("{} is valid; `run` would use:", path.display()),
        None => println!(
            "no config file ({} does not exist); from flags, environment and {}, `run` would use:",
            dir.join(agent_config::CONFIG_FILE).display(),
            dir.join(cmdop_agent::settings::SETTINGS_FILE).display()
        ),
    }
    plan.print();
    println!(
        "  kek_backend       = {:?}",
        loaded.file.kek_backend.unwrap_or(KekChoice::Auto)
    );
    println!(
        "  log_format        = {:?}",
        loaded.file.log_format.unwrap_or_default()
    );
    Ok(())
}

/// An absolute form of `path` for a unit file, which runs from `/`.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}
