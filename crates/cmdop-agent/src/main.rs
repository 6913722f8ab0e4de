//! The `cmdop-agent` binary: flag parsing, the config file, logging and dispatch; the work lives in the
//! library and in the command modules.

mod agent_config;
mod identity_command;
mod run_command;
mod service;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
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
    after_help = "Examples:\n  cmdop-agent enroll --relay relay.example:4433 --relay-fingerprint sha256:… --workspace prod --api-key-file key\n  cmdop-agent run\n  cmdop-agent service install --user"
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
        after_help = "Examples:\n  cmdop-agent run\n  cmdop-agent run --relay relay.example:4433 --relay-fingerprint sha256:… --workspace prod --api-key-file key\n  CMDOP_API_KEY=… cmdop-agent --log-format json run"
    )]
    Run(run_command::RunArgs),
    /// Save the relay, fleet and API key so that a later `run` needs no flags.
    #[command(
        after_help = "Example:\n  cmdop-agent enroll --relay relay.example:4433 --relay-fingerprint sha256:… --workspace prod --api-key-file key"
    )]
    Enroll(run_command::RelayArgs),
    /// Run the agent as a systemd service (system-wide, or --user).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Check the config file.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the config file (--config, else agent.toml in the config directory) and print its settings.
    #[command(
        after_help = "Example:\n  cmdop-agent config check --config /etc/cmdop/agent/agent.toml"
    )]
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = match &cli.config_dir {
        Some(dir) => Ok(dir.clone()),
        None => store::default_config_dir().context(
            "cannot find a config directory (neither XDG_CONFIG_HOME nor HOME is set); pass --config-dir or set CMDOP_CONFIG_DIR",
        ),
    };
    if let Command::Config(ConfigCommand::Check) = cli.command {
        return report(config_check(cli.config.as_deref(), dir.ok().as_deref()));
    }
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
        Command::Run(args) => run_command::run(args.with_file(&loaded.file), &store),
        Command::Enroll(args) => run_command::enroll(args.with_file(&loaded.file), &store),
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
        Command::Config(ConfigCommand::Check) => config_check(cli.config.as_deref(), Some(&dir)),
    }
}

/// `config check`: parses the file (unknown keys and bad values are errors naming the line) and prints it.
fn config_check(explicit: Option<&Path>, dir: Option<&Path>) -> anyhow::Result<()> {
    let loaded = agent_config::load(explicit, dir)?;
    let Some(path) = loaded.path else {
        anyhow::bail!(
            "no config file to check: pass --config FILE (or set CMDOP_AGENT_CONFIG), or create {}",
            dir.map_or_else(
                || agent_config::CONFIG_FILE.to_owned(),
                |d| d.join(agent_config::CONFIG_FILE).display().to_string()
            )
        );
    };
    let file = loaded.file;
    if let Some(key_file) = &file.api_key_file {
        cmdop_agent::settings::read_api_key(key_file)?.with_context(|| {
            format!(
                "{}: api_key_file {} does not exist",
                path.display(),
                key_file.display()
            )
        })?;
    }
    let show = |value: &Option<String>| value.clone().unwrap_or_else(|| "(not set)".to_owned());
    println!("{} is valid", path.display());
    println!("  relay             = {}", show(&file.relay));
    println!("  relay_fingerprint = {}", show(&file.relay_fingerprint));
    println!("  workspace         = {}", show(&file.workspace));
    println!(
        "  api_key_file      = {}",
        file.api_key_file
            .as_deref()
            .map_or_else(|| "(not set)".to_owned(), |p| p.display().to_string())
    );
    println!("  hostname          = {}", show(&file.hostname));
    println!("  name              = {}", show(&file.name));
    println!(
        "  kek_backend       = {:?}",
        file.kek_backend.unwrap_or(KekChoice::Auto)
    );
    println!(
        "  log_format        = {:?}",
        file.log_format.unwrap_or_default()
    );
    let or_default = |value: Option<String>| value.unwrap_or_else(|| "(default)".to_owned());
    println!(
        "  max_sessions      = {}",
        or_default(file.max_sessions.map(|n| n.to_string()))
    );
    println!(
        "  session_idle_ttl  = {}",
        or_default(file.session_idle_ttl.clone())
    );
    println!(
        "  session_buffer    = {}",
        or_default(file.session_buffer.map(|n| n.to_string()))
    );
    println!("  fleet_key         = {}", show(&file.fleet_key));
    println!(
        "  enrol_key_file    = {}",
        file.enrol_key_file
            .as_deref()
            .map_or_else(|| "(not set)".to_owned(), |p| p.display().to_string())
    );
    Ok(())
}

/// An absolute form of `path` for a unit file, which runs from `/`.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}
