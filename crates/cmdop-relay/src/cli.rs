//! The `cmdop-relay` command line: every verb, flag and example, as clap definitions. What each verb does
//! lives in `serve_command`, `admin_verbs` and `status_command`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use cmdop_config::LogFormat;

/// cmdop relay: serves agents and people over QUIC, and administers fleets, credentials and machines.
///
/// Every flag can also come from its environment variable or from the TOML config file (`--config`,
/// default /etc/cmdop/relay.toml if it exists); a flag beats the environment, which beats the file.
#[derive(Debug, Parser)]
#[command(
    name = "cmdop-relay",
    version,
    about,
    after_help = "Examples:\n  cmdop-relay serve --data-dir /var/lib/cmdop-relay --metrics 127.0.0.1:9464\n  cmdop-relay --config /etc/cmdop/relay.toml status\n  cmdop-relay config check --config /etc/cmdop/relay.toml"
)]
pub(crate) struct Cli {
    /// TOML config file [default: /etc/cmdop/relay.toml, if it exists].
    #[arg(long, global = true, env = "CMDOP_RELAY_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// How log lines are written to stderr [default: text]; `RUST_LOG` picks what is logged.
    #[arg(
        long,
        global = true,
        env = "CMDOP_RELAY_LOG_FORMAT",
        value_enum,
        value_name = "FORMAT"
    )]
    pub(crate) log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DataDir {
    /// Directory holding relay.db and the certificate (created 0700) [config: data_dir].
    #[arg(long, env = "CMDOP_RELAY_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the relay until SIGTERM or Ctrl-C, then drain and stop.
    #[command(
        after_help = "Examples:\n  cmdop-relay serve --data-dir /var/lib/cmdop-relay\n  cmdop-relay serve --config /etc/cmdop/relay.toml --metrics 127.0.0.1:9464 --log-format json"
    )]
    Serve(ServeArgs),
    /// Print the fingerprint agents and CLIs pin (--relay-fingerprint).
    #[command(after_help = "Example:\n  cmdop-relay fingerprint --data-dir /var/lib/cmdop-relay")]
    Fingerprint {
        #[command(flatten)]
        data: DataDir,
        /// The certificate the relay is served with, if not the generated one [config: cert].
        #[arg(long, env = "CMDOP_RELAY_CERT")]
        cert: Option<PathBuf>,
    },
    /// Summarise the relay: whether it runs, its fleets, machines and credentials, and live connections.
    #[command(
        after_help = "Examples:\n  cmdop-relay status --data-dir /var/lib/cmdop-relay\n  cmdop-relay status --json"
    )]
    Status {
        #[command(flatten)]
        data: DataDir,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Check the config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage fleets.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage user tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List machines.
    #[command(subcommand)]
    Machines(MachinesCommand),
    /// Change a machine.
    #[command(subcommand)]
    Machine(MachineCommand),
    /// Print a shell completion script for bash, zsh or fish.
    #[command(
        after_help = "Examples:\n  cmdop-relay completions bash > /usr/share/bash-completion/completions/cmdop-relay\n  cmdop-relay completions zsh > ~/.zfunc/_cmdop-relay"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (cmdop-relay.1 and one per subcommand) into a directory, or cmdop-relay.1 to stdout.
    #[command(
        after_help = "Examples:\n  cmdop-relay man --out-dir /usr/local/share/man/man1\n  cmdop-relay man | man -l -"
    )]
    Man {
        /// Where to write the pages [default: print cmdop-relay.1 to stdout].
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Show the audit log.
    #[command(after_help = "Example:\n  cmdop-relay audit --fleet prod --json")]
    Audit {
        #[command(flatten)]
        data: DataDir,
        /// Only this fleet's entries.
        #[arg(long)]
        fleet: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Flags of `serve`; each may also be set in the config file under the name in brackets.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) data: DataDir,
    /// UDP address to listen on [config: listen] [default: 0.0.0.0:4433].
    #[arg(long, env = "CMDOP_RELAY_LISTEN", value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// PEM certificate chain to serve instead of the generated self-signed one (needs --key) [config: cert].
    #[arg(long, env = "CMDOP_RELAY_CERT", value_name = "FILE")]
    pub(crate) cert: Option<PathBuf>,
    /// PEM private key of --cert [config: key].
    #[arg(long, env = "CMDOP_RELAY_KEY", value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics (TCP) [config: metrics]; keep it on a private address.
    #[arg(long, env = "CMDOP_RELAY_METRICS", value_name = "ADDR")]
    pub(crate) metrics: Option<String>,
    /// On SIGTERM, how long running streams get to finish, e.g. 10s, 2m [config: drain_timeout] [default: 10s].
    #[arg(long, env = "CMDOP_RELAY_DRAIN_TIMEOUT", value_name = "DURATION")]
    pub(crate) drain_timeout: Option<String>,
    /// Connections served at once, agents and clients together; more are refused [config: max_connections]
    /// [default: 16384].
    #[arg(long, env = "CMDOP_RELAY_MAX_CONNECTIONS", value_name = "N")]
    pub(crate) max_connections: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Check what `serve` would use, from its flags, the environment and the config file (--config, else
    /// /etc/cmdop/relay.toml), and print it. Takes the flags of `serve`.
    #[command(
        after_help = "Examples:\n  cmdop-relay config check --config /etc/cmdop/relay.toml\n  CMDOP_RELAY_LISTEN=0.0.0.0:4433 cmdop-relay config check --data-dir /var/lib/cmdop-relay"
    )]
    Check(ServeArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum FleetCommand {
    /// Create a fleet.
    #[command(
        after_help = "Example:\n  cmdop-relay fleet create prod --data-dir /var/lib/cmdop-relay"
    )]
    Create {
        #[command(flatten)]
        data: DataDir,
        /// Unique name (the --workspace value).
        name: String,
    },
    /// List fleets.
    #[command(after_help = "Example:\n  cmdop-relay fleet list")]
    List {
        #[command(flatten)]
        data: DataDir,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum RoleArg {
    Agent,
    Member,
    Admin,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Create an API key for one fleet; the secret is printed once.
    #[command(
        after_help = "Example:\n  cmdop-relay key create --fleet prod --role agent --expires 90d --label servers > agent.key"
    )]
    Create {
        #[command(flatten)]
        data: DataDir,
        /// The fleet the key reaches.
        #[arg(long)]
        fleet: String,
        /// agent enrols machines; member and admin are for people and scripts.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Lifetime, e.g. 30d, 12h, 90m.
        #[arg(long)]
        expires: Option<String>,
        /// Free-form label.
        #[arg(long)]
        label: Option<String>,
    },
    /// List API keys and user tokens.
    #[command(after_help = "Example:\n  cmdop-relay key list --fleet prod")]
    List {
        #[command(flatten)]
        data: DataDir,
        /// Only credentials reaching this fleet.
        #[arg(long)]
        fleet: Option<String>,
    },
    /// Revoke an API key; live connections using it close within a second.
    #[command(
        after_help = "Example:\n  cmdop-relay key revoke 4f0c2a9e-1b7d-4c3e-9a51-0d2e6f8b7c11"
    )]
    Revoke {
        #[command(flatten)]
        data: DataDir,
        /// The key id (a UUID, printed by `key create` and `key list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Create a user.
    #[command(after_help = "Example:\n  cmdop-relay user create alice")]
    Create {
        #[command(flatten)]
        data: DataDir,
        /// Unique user name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a user token spanning one or more fleets; the secret is printed once.
    #[command(
        after_help = "Example:\n  cmdop-relay token create --user alice --fleet prod --fleet staging --expires 30d > alice.token"
    )]
    Create {
        #[command(flatten)]
        data: DataDir,
        /// The owner.
        #[arg(long)]
        user: String,
        /// A fleet the token reaches (repeat for several).
        #[arg(long = "fleet", required = true)]
        fleets: Vec<String>,
        /// Lifetime, e.g. 30d, 12h, 90m.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Revoke a user token; live connections using it close within a second.
    #[command(
        after_help = "Example:\n  cmdop-relay token revoke 4f0c2a9e-1b7d-4c3e-9a51-0d2e6f8b7c11"
    )]
    Revoke {
        #[command(flatten)]
        data: DataDir,
        /// The token id (a UUID, printed by `token create` and `key list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum MachinesCommand {
    /// List machines.
    #[command(after_help = "Example:\n  cmdop-relay machines list --fleet prod --json")]
    List {
        #[command(flatten)]
        data: DataDir,
        /// Only this fleet's machines.
        #[arg(long)]
        fleet: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum MachineCommand {
    /// Change a machine's display name.
    #[command(
        after_help = "Example:\n  cmdop-relay machine rename 4f0c2a9e-1b7d-4c3e-9a51-0d2e6f8b7c11 \"build box\""
    )]
    Rename {
        #[command(flatten)]
        data: DataDir,
        /// The machine id (UUID).
        id: String,
        /// The new display name.
        name: String,
    },
}
