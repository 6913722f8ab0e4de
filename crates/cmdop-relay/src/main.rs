//! The `cmdop-relay` binary: flag parsing, logging and dispatch over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use cmdop_relay::admin;
use cmdop_relay::server::{DEFAULT_LISTEN, Server, ServerConfig};
use cmdop_relay::store::{KeyRole, Store};
use cmdop_relay::transport::{TlsIdentity, leaf_fingerprint_from_pem, stored_fingerprint};

/// cmdop relay: serves agents and people over QUIC, and administers fleets, credentials and machines.
#[derive(Debug, Parser)]
#[command(name = "cmdop-relay", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct DataDir {
    /// Directory holding relay.db and the certificate (created 0700).
    #[arg(long, env = "CMDOP_RELAY_DATA_DIR")]
    data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay.
    Serve {
        #[command(flatten)]
        data: DataDir,
        /// UDP address to listen on.
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// PEM certificate chain to serve instead of the generated self-signed one (needs --key).
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// PEM private key of --cert.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Print the fingerprint agents and CLIs pin (--relay-fingerprint).
    Fingerprint {
        #[command(flatten)]
        data: DataDir,
        /// The certificate the relay is served with, if not the generated one.
        #[arg(long)]
        cert: Option<PathBuf>,
    },
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

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Create a fleet.
    Create {
        #[command(flatten)]
        data: DataDir,
        /// Unique name (the --workspace value).
        name: String,
    },
    /// List fleets.
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
    List {
        #[command(flatten)]
        data: DataDir,
        /// Only credentials reaching this fleet.
        #[arg(long)]
        fleet: Option<String>,
    },
    /// Revoke an API key; live connections using it close within a second.
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
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

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            data,
            listen,
            cert,
            key,
        } => serve(data.data_dir, listen, cert.zip(key)),
        Command::Fingerprint { data, cert } => {
            let fingerprint = match cert {
                Some(cert) => {
                    let pem = std::fs::read(&cert)
                        .with_context(|| format!("cannot read {}", cert.display()))?;
                    leaf_fingerprint_from_pem(&pem)
                        .with_context(|| format!("{} holds no PEM certificate", cert.display()))?
                }
                None => stored_fingerprint(&data.data_dir)
                    .context("no generated certificate yet; run `cmdop-relay serve` once")?,
            };
            println!("{fingerprint}");
            Ok(())
        }
        Command::Fleet(FleetCommand::Create { data, name }) => {
            let fleet = Store::open(&data.data_dir)?.create_fleet(&name, now())?;
            println!("created fleet {} ({})", fleet.name, fleet.id);
            Ok(())
        }
        Command::Fleet(FleetCommand::List { data }) => {
            print!(
                "{}",
                admin::fleets_table(&Store::open(&data.data_dir)?.fleets()?)
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
            let store = Store::open(&data.data_dir)?;
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
            let store = Store::open(&data.data_dir)?;
            print!(
                "{}",
                admin::credentials_table(&store.credentials(fleet.as_deref())?, now())
            );
            Ok(())
        }
        Command::Key(KeyCommand::Revoke { data, id })
        | Command::Token(TokenCommand::Revoke { data, id }) => {
            let record = Store::open(&data.data_dir)?.revoke(&id, now())?;
            println!(
                "revoked {}; live connections using it close within a second",
                record.id
            );
            Ok(())
        }
        Command::User(UserCommand::Create { data, name }) => {
            Store::open(&data.data_dir)?.create_user(&name, now())?;
            println!("created user {name}");
            Ok(())
        }
        Command::Token(TokenCommand::Create {
            data,
            user,
            fleets,
            expires,
        }) => {
            let mut store = Store::open(&data.data_dir)?;
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
            let machines = Store::open(&data.data_dir)?.machines(fleet.as_deref())?;
            if json {
                let array: Vec<_> = machines.iter().map(admin::machine_json).collect();
                println!("{}", serde_json::to_string_pretty(&array)?);
            } else {
                print!("{}", admin::machines_table(&machines));
            }
            Ok(())
        }
        Command::Machine(MachineCommand::Rename { data, id, name }) => {
            let machine = Store::open(&data.data_dir)?.rename_machine(&id, &name, now())?;
            println!("machine {} is now named {:?}", machine.id, machine.name);
            Ok(())
        }
        Command::Audit { data, fleet, json } => {
            let records = Store::open(&data.data_dir)?.audit(fleet.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                print!("{}", admin::audit_table(&records));
            }
            Ok(())
        }
    }
}

fn serve(data_dir: PathBuf, listen: SocketAddr, cert: Option<(PathBuf, PathBuf)>) -> Result<()> {
    let tls = match cert {
        Some((cert, key)) => TlsIdentity::from_pem_files(&cert, &key)?,
        None => {
            let (tls, generated) = TlsIdentity::load_or_generate(&data_dir)?;
            if generated {
                eprintln!(
                    "generated a self-signed certificate in {}",
                    data_dir.display()
                );
            }
            tls
        }
    };
    let fingerprint = tls.fingerprint();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(ServerConfig::new(data_dir, listen, tls))?;
        let addr = server.local_addr()?;
        // The fingerprint goes to stdout so scripts can capture it; everything else is logging.
        println!("relay fingerprint: {fingerprint}");
        println!("listening on {addr}");
        tracing::info!(%addr, %fingerprint, "cmdop-relay listening");
        server.run(shutdown_signal()).await?;
        tracing::info!("cmdop-relay stopped");
        anyhow::Ok(())
    })?;
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
