//! The `cmdop` binary: reach your machines through your own relay.
//!
//! Thin by design: flags, then one module per subcommand; the protocol lives in `cmdop-relay`.

mod attach;
mod channel;
mod connect;
mod cp;
mod escape;
mod exec;
mod exit;
mod forward;
mod known_machines;
mod login;
mod profile;
mod reach;
mod resume;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::exit::Failure;

/// cmdop: reach your machines through your own relay.
#[derive(Debug, Parser)]
#[command(name = "cmdop", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand understands.
#[derive(Debug, Clone, Args)]
struct GlobalArgs {
    /// Directory holding this client's identity, login and known machines
    /// [default: $XDG_CONFIG_HOME/cmdop, else ~/.config/cmdop].
    #[arg(long, global = true, env = "CMDOP_CONFIG_DIR", value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// The relay, as HOST:PORT (overrides the one saved by `cmdop login`).
    #[arg(long, global = true, env = "CMDOP_RELAY", value_name = "HOST:PORT")]
    relay: Option<String>,
    /// The relay's certificate fingerprint, `sha256:…` (overrides the saved one).
    #[arg(
        long,
        global = true,
        env = "CMDOP_RELAY_FINGERPRINT",
        value_name = "FP"
    )]
    relay_fingerprint: Option<String>,
    /// A file holding an API key to use instead of the saved login (the key may also come from CMDOP_API_KEY).
    #[arg(long, global = true, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Save a relay and a user token (or API key) for later commands.
    #[command(
        after_help = "Example:\n  cmdop login --relay relay.example:4433 --relay-fingerprint sha256:… --token-file token.txt"
    )]
    Login(login::LoginArgs),
    /// Forget the saved login (the credential itself stays valid on the relay; revoke it there).
    Logout,
    /// Show who you are, which relay, and which fleets are in scope.
    #[command(after_help = "Example:\n  cmdop status --json")]
    Status(login::StatusArgs),
    /// Reach machines: open a shell on one, list them, or run a command on one.
    #[command(
        after_help = "Examples:\n  cmdop connect web-1                       a shell in a new session (~. detaches)\n  cmdop connect web-1 --session build       create or reattach the session \"build\"\n  cmdop connect web-1 --session build --read-only\n  cmdop connect                             pick a machine\n  cmdop connect --list\n  cmdop connect --workspace prod --list --online --json\n  cmdop connect exec web-1 -- uname -a\n  cmdop connect sessions web-1"
    )]
    Connect(connect::ConnectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Login(args) => login::login(&cli.global, args),
        Command::Logout => login::logout(&cli.global),
        Command::Status(args) => login::status(&cli.global, args),
        Command::Connect(args) => connect::run(&cli.global, args),
    };
    match result {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}

/// Logs go to stderr and default to warnings only, so that stdout carries exactly the command's output.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
}

/// The result of a subcommand: an exit code, or a failure to report.
type Outcome = Result<ExitCode, Failure>;
