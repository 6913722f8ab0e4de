//! The `cmdop-relay` binary: flag parsing, the config file, logging and dispatch over the library.

mod relay_settings;
mod status_command;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use cmdop_config::LogFormat;
use cmdop_relay::admin;
use cmdop_relay::metrics;
use cmdop_relay::server::{Server, ServerConfig};
use cmdop_relay::store::{KeyRole, Store};
use cmdop_relay::tls::{TlsIdentity, leaf_fingerprint_from_pem, stored_fingerprint};

use crate::relay_settings::{Loaded, ServeFlags, ServeSettings};
use crate::status_command::RunState;

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
struct Cli {
    /// TOML config file [default: /etc/cmdop/relay.toml, if it exists].
    #[arg(long, global = true, env = "CMDOP_RELAY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// How log lines are written to stderr [default: text]; `RUST_LOG` picks what is logged.
    #[arg(
        long,
        global = true,
        env = "CMDOP_RELAY_LOG_FORMAT",
        value_enum,
        value_name = "FORMAT"
    )]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct DataDir {
    /// Directory holding relay.db and the certificate (created 0700) [config: data_dir].
    #[arg(long, env = "CMDOP_RELAY_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
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
struct ServeArgs {
    #[command(flatten)]
    data: DataDir,
    /// UDP address to listen on [config: listen] [default: 0.0.0.0:4433].
    #[arg(long, env = "CMDOP_RELAY_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// PEM certificate chain to serve instead of the generated self-signed one (needs --key) [config: cert].
    #[arg(long, env = "CMDOP_RELAY_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert [config: key].
    #[arg(long, env = "CMDOP_RELAY_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics (TCP) [config: metrics]; keep it on a private address.
    #[arg(long, env = "CMDOP_RELAY_METRICS", value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// On SIGTERM, how long running streams get to finish, e.g. 10s, 2m [config: drain_timeout] [default: 10s].
    #[arg(long, env = "CMDOP_RELAY_DRAIN_TIMEOUT", value_name = "DURATION")]
    drain_timeout: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the config file (--config, else /etc/cmdop/relay.toml) and print the settings it yields.
    #[command(after_help = "Example:\n  cmdop-relay config check --config /etc/cmdop/relay.toml")]
    Check,
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
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
enum RoleArg {
    Agent,
    Member,
    Admin,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
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
enum UserCommand {
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
enum TokenCommand {
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
enum MachinesCommand {
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
enum MachineCommand {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `config check` reports a broken file itself; every other command needs it to load.
    if let Command::Config(ConfigCommand::Check) = cli.command {
        return report(config_check(cli.config.as_deref()));
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
    report(run(cli.command, &loaded))
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn expiry(expires: Option<&str>) -> Result<Option<u64>> {
    expires
        .map(|text| Ok(now().saturating_add(admin::parse_duration(text)?.as_secs())))
        .transpose()
}

fn run(command: Command, loaded: &Loaded) -> Result<()> {
    // Every admin verb takes --data-dir, which the config file may supply instead.
    let data_dir = |data: DataDir| loaded.data_dir(data.data_dir);
    match command {
        Command::Serve(args) => serve(loaded.serve(ServeFlags {
            data_dir: args.data.data_dir,
            listen: args.listen,
            cert: args.cert,
            key: args.key,
            metrics: args.metrics,
            drain_timeout: args.drain_timeout,
        })?),
        Command::Config(ConfigCommand::Check) => config_check(loaded.path.as_deref()),
        Command::Status { data, json } => status_command::run(&data_dir(data)?, json, now()),
        Command::Fingerprint { data, cert } => {
            let fingerprint = match cert.or_else(|| loaded.file.cert.clone()) {
                Some(cert) => {
                    let pem = std::fs::read(&cert)
                        .with_context(|| format!("cannot read {}", cert.display()))?;
                    leaf_fingerprint_from_pem(&pem)
                        .with_context(|| format!("{} holds no PEM certificate", cert.display()))?
                }
                None => stored_fingerprint(&data_dir(data)?)
                    .context("no generated certificate yet; run `cmdop-relay serve` once")?,
            };
            println!("{fingerprint}");
            Ok(())
        }
        Command::Fleet(FleetCommand::Create { data, name }) => {
            let fleet = Store::open(&data_dir(data)?)?.create_fleet(&name, now())?;
            println!("created fleet {} ({})", fleet.name, fleet.id);
            Ok(())
        }
        Command::Fleet(FleetCommand::List { data }) => {
            print!(
                "{}",
                admin::fleets_table(&Store::open(&data_dir(data)?)?.fleets()?)
            );
            Ok(())
        }
        Command::Key(KeyCommand::Create {
            data,
            fleet,
            role,
            expires,
            label,
        }) => {
            let role = match role {
                RoleArg::Agent => KeyRole::Agent,
                RoleArg::Member => KeyRole::Member,
                RoleArg::Admin => KeyRole::Admin,
            };
            let store = Store::open(&data_dir(data)?)?;
            let (record, secret) = store.create_api_key(
                &fleet,
                role,
                label.as_deref(),
                expiry(expires.as_deref())?,
                now(),
            )?;
            eprintln!(
                "created {} key {} for fleet {fleet}; the secret below is shown only once:",
                role.as_str(),
                record.id
            );
            println!("{}", secret.expose_text().as_str());
            Ok(())
        }
        Command::Key(KeyCommand::List { data, fleet }) => {
            let store = Store::open(&data_dir(data)?)?;
            print!(
                "{}",
                admin::credentials_table(&store.credentials(fleet.as_deref())?, now())
            );
            Ok(())
        }
        Command::Key(KeyCommand::Revoke { data, id })
        | Command::Token(TokenCommand::Revoke { data, id }) => {
            let record = Store::open(&data_dir(data)?)?.revoke(&id, now())?;
            println!(
                "revoked {}; live connections using it close within a second",
                record.id
            );
            Ok(())
        }
        Command::User(UserCommand::Create { data, name }) => {
            Store::open(&data_dir(data)?)?.create_user(&name, now())?;
            println!("created user {name}");
            Ok(())
        }
        Command::Token(TokenCommand::Create {
            data,
            user,
            fleets,
            expires,
        }) => {
            let mut store = Store::open(&data_dir(data)?)?;
            let (record, secret) =
                store.create_user_token(&user, &fleets, expiry(expires.as_deref())?, now())?;
            eprintln!(
                "created token {} for {user} ({}); the secret below is shown only once:",
                record.id,
                fleets.join(", ")
            );
            println!("{}", secret.expose_text().as_str());
            Ok(())
        }
        Command::Machines(MachinesCommand::List { data, fleet, json }) => {
            let machines = Store::open(&data_dir(data)?)?.machines(fleet.as_deref())?;
            if json {
                let array: Vec<_> = machines.iter().map(admin::machine_json).collect();
                println!("{}", serde_json::to_string_pretty(&array)?);
            } else {
                print!("{}", admin::machines_table(&machines));
            }
            Ok(())
        }
        Command::Machine(MachineCommand::Rename { data, id, name }) => {
            let machine = Store::open(&data_dir(data)?)?.rename_machine(&id, &name, now())?;
            println!("machine {} is now named {:?}", machine.id, machine.name);
            Ok(())
        }
        Command::Audit { data, fleet, json } => {
            let records = Store::open(&data_dir(data)?)?.audit(fleet.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                print!("{}", admin::audit_table(&records));
            }
            Ok(())
        }
    }
}

fn serve(settings: ServeSettings) -> Result<()> {
    let ServeSettings {
        data_dir,
        listen,
        cert,
        metrics,
        drain_timeout,
    } = settings;
    let tls = match cert {
        Some((cert, key)) => TlsIdentity::from_pem_files(&cert, &key)?,
        None => {
            let (tls, generated) = TlsIdentity::load_or_generate(&data_dir)?;
            if generated {
                tracing::info!(data_dir = %data_dir.display(), "generated a self-signed certificate");
            }
            tls
        }
    };
    let fingerprint = tls.fingerprint();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut config = ServerConfig::new(data_dir.clone(), listen, tls);
        config.drain_timeout = drain_timeout;
        let server = Server::bind(config)?;
        let addr = server.local_addr()?;
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics_addr = match metrics {
            Some(metrics_addr) => {
                let listener = metrics::bind_http(metrics_addr).await?;
                let bound = listener.local_addr()?;
                tokio::spawn(metrics::serve_http(
                    listener,
                    server.metrics(),
                    async move {
                        let _ = metrics_stopped.await;
                    },
                ));
                Some(bound)
            }
            None => None,
        };
        let _published = RunState {
            pid: std::process::id(),
            listen: addr,
            metrics: metrics_addr,
            fingerprint: fingerprint.to_string(),
            started_at: now(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
        .publish(&data_dir)?;
        // The fingerprint goes to stdout so scripts can capture it; everything else is logging.
        println!("relay fingerprint: {fingerprint}");
        println!("listening on {addr}");
        if let Some(metrics_addr) = metrics_addr {
            println!("metrics on http://{metrics_addr}/metrics");
        }
        tracing::info!(%addr, %fingerprint, metrics = ?metrics_addr, "cmdop-relay listening");
        server.run(shutdown_signal()).await?;
        let _ = stop_metrics.send(());
        tracing::info!("cmdop-relay stopped");
        anyhow::Ok(())
    })?;
    Ok(())
}

/// `config check`: parses the file, fills in the defaults, checks that certificate files load, and prints
/// the settings `serve` would use.
fn config_check(explicit: Option<&Path>) -> Result<()> {
    let loaded = relay_settings::load(explicit)?;
    let Some(path) = loaded.path.clone() else {
        anyhow::bail!(
            "no config file to check: pass --config FILE (or set CMDOP_RELAY_CONFIG); {} does not exist",
            relay_settings::DEFAULT_CONFIG
        );
    };
    // Check the values the file sets on their own, without flags or the environment mixing in.
    let data_dir = loaded.file.data_dir.clone();
    let serve = loaded.serve(ServeFlags {
        // A file without data_dir is fine (the flag may give it); check the rest regardless.
        data_dir: Some(
            data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("<--data-dir>")),
        ),
        ..ServeFlags::default()
    })?;
    if let Some((cert, key)) = &serve.cert {
        TlsIdentity::from_pem_files(cert, key)
            .with_context(|| format!("{}: cert/key do not load", path.display()))?;
    }
    println!("{} is valid", path.display());
    println!(
        "  data_dir      = {}",
        data_dir.map_or_else(
            || "(not set; pass --data-dir)".to_owned(),
            |d| d.display().to_string()
        )
    );
    println!("  listen        = {}", serve.listen);
    match &serve.cert {
        Some((cert, key)) => println!("  cert, key     = {}, {}", cert.display(), key.display()),
        None => println!("  cert, key     = (the generated self-signed certificate)"),
    }
    println!(
        "  metrics       = {}",
        serve
            .metrics
            .map_or_else(|| "off".to_owned(), |m| m.to_string())
    );
    println!("  drain_timeout = {:?}", serve.drain_timeout);
    println!(
        "  log_format    = {:?}",
        loaded.file.log_format.unwrap_or_default()
    );
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
