//! The `cmdop` binary: reach your machines through your own relay.
//!
//! Thin by design: this file parses the command line and dispatches; each subcommand has its own module, and
//! the protocol lives in `cmdop-client`.

mod attach;
mod channel;
mod connect;
mod cp;
mod escape;
mod exec;
mod exit;
mod fanout;
mod fleet_lock;
mod fleet_lock_status;
mod forward;
mod generated;
mod global_args;
mod login;
mod profile;
mod proxy;
mod reach;
mod resume;
mod rsh;
mod startup;
mod stdin_reader;
mod table;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

use crate::global_args::GlobalArgs;

/// cmdop: reach your machines through your own relay.
#[derive(Debug, Parser)]
#[command(
    name = "cmdop",
    version,
    about,
    propagate_version = true,
    after_help = "Examples:\n  cmdop login --relay relay.example:4433 --relay-fingerprint SHA256:… --token-file token.txt\n  cmdop connect --list\n  cmdop connect exec web-1 -- uname -a\n  cmdop status\n\nColours appear only on a terminal and never with NO_COLOR set."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Save a relay and a user token (or API key) for later commands.
    #[command(
        after_help = "Example:\n  cmdop login --relay relay.example:4433 --relay-fingerprint SHA256:… --token-file token.txt"
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
    /// Administer a fleet: lock it with admin keys held on admins' machines, certify machines and members.
    #[command(subcommand)]
    Fleet(fleet_lock::FleetCommand),
    /// Behave like ssh for the tools that take an ssh command: rsync -e, GIT_SSH_COMMAND, BORG_RSH.
    #[command(
        after_help = "Examples:\n  rsync -a -e 'cmdop rsh' ./site/ web-1:/srv/site/\n  GIT_SSH_COMMAND='cmdop rsh' git clone web-1:/srv/repo.git\n  tar c ./dir | cmdop rsh web-1 tar x -C /tmp\n  cmdop rsh web-1                           a shell (on a terminal)\n\nAccepted ssh options: -l USER and -p PORT (ignored: commands run as the agent's user, there are no ports),\n-o KEY=VALUE (ignored), -T, -x, -a, -4, -6, -C (nothing to do), -q (no notices), -e CHAR (the escape\ncharacter of a shell), --workspace FLEET. Any other option is an error."
    )]
    Rsh(rsh::RshArgs),
    /// Print a `Host` block per machine for ~/.ssh/config: ssh then reaches each machine's sshd through cmdop.
    #[command(
        after_help = "Examples:\n  cmdop ssh-config >> ~/.ssh/config\n  cmdop ssh-config --workspace prod > ~/.ssh/cmdop.conf   (and `Include cmdop.conf` in ~/.ssh/config)\n  ssh web-1"
    )]
    SshConfig(proxy::SshConfigArgs),
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
    startup::quiet_broken_pipe();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return startup::usage_error(&err),
    };
    startup::init_logging();
    let result = match cli.command {
        Command::Login(args) => login::login(&cli.global, args),
        Command::Logout => login::logout(&cli.global),
        Command::Status(args) => login::status(&cli.global, args),
        Command::Connect(args) => connect::run(&cli.global, args),
        Command::Fleet(command) => fleet_lock::run(&cli.global, command),
        Command::Rsh(args) => Ok(rsh::run(&cli.global, &args)),
        Command::SshConfig(args) => proxy::ssh_config(&cli.global, &args),
        Command::Completions { shell } => generated::completions(shell, Cli::command()),
        Command::Man { out_dir } => generated::man_pages(Cli::command(), out_dir),
    };
    match result {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}
