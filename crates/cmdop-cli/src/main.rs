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
mod login;
mod profile;
mod reach;
mod resume;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory as _, Parser, Subcommand};

use crate::exit::Failure;

/// cmdop: reach your machines through your own relay.
#[derive(Debug, Parser)]
#[command(
    name = "cmdop",
    version,
    about,
    propagate_version = true,
    after_help = "Examples:\n  cmdop login --relay relay.example:4433 --relay-fingerprint sha256:… --token-file token.txt\n  cmdop connect --list\n  cmdop connect exec web-1 -- uname -a\n  cmdop status\n\nColours appear only on a terminal and never with NO_COLOR set."
)]
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
    #[command(after_help = "Example:\n  cmdop logout")]
    Logout,
    /// Show who you are, which relay, and which fleets are in scope.
    #[command(after_help = "Example:\n  cmdop status --json")]
    Status(login::StatusArgs),
    /// Reach machines: open a shell on one, list them, or run a command on one.
    #[command(
        after_help = "Examples:\n  cmdop connect web-1                       a shell in a new session (~. detaches)\n  cmdop connect web-1 --session build       create or reattach the session \"build\"\n  cmdop connect web-1 --session build --read-only\n  cmdop connect                             pick a machine\n  cmdop connect --list\n  cmdop connect --workspace prod --list --online --json\n  cmdop connect exec web-1 -- uname -a\n  cmdop connect sessions web-1"
    )]
    Connect(connect::ConnectArgs),
    /// Print a shell completion script for bash, zsh or fish.
    #[command(
        after_help = "Examples:\n  cmdop completions bash > ~/.local/share/bash-completion/completions/cmdop\n  cmdop completions zsh > ~/.zfunc/_cmdop\n  cmdop completions fish > ~/.config/fish/completions/cmdop.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (cmdop.1 and one per subcommand) into a directory, or cmdop.1 to stdout.
    #[command(
        after_help = "Examples:\n  cmdop man --out-dir /usr/local/share/man/man1\n  cmdop man | man -l -"
    )]
    Man {
        /// Where to write the pages [default: print cmdop.1 to stdout].
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    quiet_broken_pipe();
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Login(args) => login::login(&cli.global, args),
        Command::Logout => login::logout(&cli.global),
        Command::Status(args) => login::status(&cli.global, args),
        Command::Connect(args) => connect::run(&cli.global, args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "cmdop", &mut script);
            write_stdout(&script)
        }
        Command::Man { out_dir } => man_pages(out_dir),
    };
    match result {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}

/// `println!` panics when stdout is a pipe whose reader has gone (`cmdop connect --list | head -0`): Rust
/// ignores SIGPIPE, so the write fails with EPIPE. Output is printed from every subcommand, so rather than
/// thread a writer through all of them, such a panic ends the process quietly with status 0, the way a
/// reader that stopped early expects (the same as exec's own output does). Any other panic is reported as
/// usual.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// Writes generated text to stdout; a reader that went away is not a failure (see [`quiet_broken_pipe`]).
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

/// `cmdop man`: the man pages, generated from the same clap definitions as `--help`.
fn man_pages(out_dir: Option<PathBuf>) -> Outcome {
    use anyhow::Context as _;
    let command = Cli::command();
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

/// Logs go to stderr and default to warnings only, so that stdout carries exactly the command's output.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
}

/// The result of a subcommand: an exit code, or a failure to report.
type Outcome = Result<ExitCode, Failure>;
