//! `cmdop-agent run` and `cmdop-agent enroll`: connect this machine to its relay and keep it there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use cmdop_agent::destination_policy::DestinationPolicy;
use cmdop_agent::presence::{self, PresenceConfig, PresenceEvent};
use cmdop_agent::settings::{self, SETTINGS_FILE, Settings};
use cmdop_agent::shell::SessionLimits;
use cmdop_client::{AgentRegistration, RelayTarget};
use cmdop_fleet::lock::EnrolmentSecret;
use cmdop_fleet::{DisplayName, Hostname, MachineLabels};
use cmdop_identity::Fingerprint;
use cmdop_keystore::SeedStore;
use cmdop_proto::RelayFingerprint;
use zeroize::Zeroizing;

use crate::agent_config::{Loaded, SESSION_BUFFER_RANGE};

/// Where the relay is and which fleet to join; each flag falls back to what `enroll` saved.
#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// The relay, as HOST:PORT.
    #[arg(long, env = "CMDOP_RELAY", value_name = "HOST:PORT")]
    relay: Option<String>,
    /// The relay's certificate fingerprint (`cmdop-relay fingerprint` prints it); connections to any other
    /// certificate fail before a credential is sent.
    #[arg(long, env = "CMDOP_RELAY_FINGERPRINT", value_name = "FP")]
    relay_fingerprint: Option<String>,
    /// The fleet to enrol into.
    #[arg(long, env = "CMDOP_WORKSPACE", value_name = "FLEET")]
    workspace: Option<String>,
    /// A file holding the fleet's agent API key; the key may also come from CMDOP_API_KEY.
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// The hostname to report [default: this machine's].
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// A display name to report [default: the hostname, or the name set on the relay].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// `api_key_file` from the config file: below CMDOP_API_KEY, above the saved key.
    #[arg(skip)]
    file_api_key_file: Option<PathBuf>,
    /// A network forwards may never reach (ADDRESS or ADDRESS/PREFIX; repeatable), checked first; replaces
    /// the saved list.
    #[arg(long, value_name = "NET")]
    forward_deny: Vec<String>,
    /// A network forwards may reach beyond loopback and private networks (repeatable; `0.0.0.0/0` and `::/0`
    /// open everything not denied); replaces the saved list.
    #[arg(long, value_name = "NET")]
    forward_allow: Vec<String>,
    /// The fleet key (`SHA256:…`, from your fleet admin) to trust for a locked fleet; without it the first
    /// lock the relay shows is pinned (trust on first use).
    #[arg(long, env = "CMDOP_FLEET_KEY", value_name = "FP")]
    fleet_key: Option<String>,
    /// A file holding an enrolment key (`cmdop fleet lock enrol-key`): this machine certifies itself with it
    /// in a locked fleet. The key also names the fleet key to trust.
    #[arg(long, value_name = "FILE")]
    enrol_key_file: Option<PathBuf>,
    /// A label for this machine, `KEY=VALUE` (repeatable), to pick machines by with
    /// `cmdop connect exec --label`; replaces the saved labels [config: labels].
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Where each setting came from, for messages about bad values.
    #[arg(skip)]
    origins: Origins,
}

/// Where each setting of [`RelayArgs`] came from: a flag, its environment variable or the config file; what
/// is not recorded came from `agent.json`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origins(BTreeMap<&'static str, String>);

impl Origins {
    fn describe(&self, key: &str) -> String {
        self.0
            .get(key)
            .cloned()
            .unwrap_or_else(|| format!("{SETTINGS_FILE}, saved by `cmdop-agent enroll`"))
    }
}

impl RelayArgs {
    /// Fills what neither a flag nor the environment gave from the config file, noting where each came from.
    pub(crate) fn with_file(mut self, loaded: &Loaded) -> Self {
        let file = &loaded.file;
        let path = loaded
            .path
            .as_deref()
            .map_or_else(|| "the config file".to_owned(), |p| p.display().to_string());
        let mut note =
            |key: &'static str, from_args: bool, in_file: bool, flag: &str, env: &str| {
                let origin = match (from_args, in_file) {
                    (true, _) if env.is_empty() => flag.to_owned(),
                    (true, _) => cmdop_config::flag_or_env(flag, env),
                    (false, true) => format!("{key} in {path}"),
                    (false, false) => return,
                };
                self.origins.0.insert(key, origin);
            };
        note(
            "relay",
            self.relay.is_some(),
            file.relay.is_some(),
            "--relay",
            "CMDOP_RELAY",
        );
        note(
            "relay_fingerprint",
            self.relay_fingerprint.is_some(),
            file.relay_fingerprint.is_some(),
            "--relay-fingerprint",
            "CMDOP_RELAY_FINGERPRINT",
        );
        note(
            "hostname",
            self.hostname.is_some(),
            file.hostname.is_some(),
            "--hostname",
            "",
        );
        note(
            "name",
            self.name.is_some(),
            file.name.is_some(),
            "--name",
            "",
        );
        note(
            "forward lists",
            !(self.forward_deny.is_empty() && self.forward_allow.is_empty()),
            file.forward_deny.is_some() || file.forward_allow.is_some(),
            "--forward-deny/--forward-allow",
            "",
        );
        note(
            "labels",
            !self.labels.is_empty(),
            file.labels.is_some(),
            "--label",
            "",
        );
        self.relay = self.relay.or_else(|| file.relay.clone());
        self.relay_fingerprint = self
            .relay_fingerprint
            .or_else(|| file.relay_fingerprint.clone());
        self.workspace = self.workspace.or_else(|| file.workspace.clone());
        self.hostname = self.hostname.or_else(|| file.hostname.clone());
        self.name = self.name.or_else(|| file.name.clone());
        self.fleet_key = self.fleet_key.or_else(|| file.fleet_key.clone());
        self.enrol_key_file = self.enrol_key_file.or_else(|| file.enrol_key_file.clone());
        self.file_api_key_file = file.api_key_file.clone();
        if self.forward_deny.is_empty() {
            self.forward_deny = file.forward_deny.clone().unwrap_or_default();
        }
        if self.forward_allow.is_empty() {
            self.forward_allow = file.forward_allow.clone().unwrap_or_default();
        }
        if self.labels.is_empty() {
            self.labels = file.labels.clone().unwrap_or_default();
        }
        self
    }
}

/// Flags of `run`: where to register, and the limits on interactive sessions.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    relay: RelayArgs,
    #[command(flatten)]
    sessions: SessionArgs,
}

/// Limits on the interactive sessions this machine keeps (documented in docs/cli.md).
#[derive(Debug, Args)]
pub(crate) struct SessionArgs {
    /// Sessions kept at once; attaching a new one beyond this is refused [config: max_sessions] [default: 64].
    #[arg(long, env = "CMDOP_MAX_SESSIONS", value_name = "N")]
    max_sessions: Option<usize>,
    /// End a session nobody has been attached to for this long (e.g. `24h`, `90m`) [config: session_idle_ttl]
    /// [default: 24h].
    #[arg(long, env = "CMDOP_SESSION_IDLE_TTL", value_parser = humantime::parse_duration, value_name = "DUR")]
    session_idle_ttl: Option<std::time::Duration>,
    /// Output kept per session for reattaching, in bytes (at least 64 KiB) [config: session_buffer]
    /// [default: 1048576].
    #[arg(long, env = "CMDOP_SESSION_BUFFER", value_parser = clap::value_parser!(u64).range(SESSION_BUFFER_RANGE), value_name = "BYTES")]
    session_buffer: Option<u64>,
}

impl RunArgs {
    /// Fills what neither a flag nor the environment gave from the config file.
    pub(crate) fn with_file(self, loaded: &Loaded) -> Self {
        let file = &loaded.file;
        Self {
            relay: self.relay.with_file(loaded),
            sessions: SessionArgs {
                max_sessions: self.sessions.max_sessions.or(file.max_sessions),
                // The file's value was checked when it was loaded.
                session_idle_ttl: self.sessions.session_idle_ttl.or_else(|| {
                    file.session_idle_ttl
                        .as_deref()
                        .and_then(|text| humantime::parse_duration(text).ok())
                }),
                session_buffer: self.sessions.session_buffer.or(file.session_buffer),
            },
        }
    }
}

impl SessionArgs {
    fn limits(&self) -> SessionLimits {
        let defaults = SessionLimits::default();
        SessionLimits {
            max_sessions: self.max_sessions.unwrap_or(defaults.max_sessions),
            idle_ttl: self.session_idle_ttl.unwrap_or(defaults.idle_ttl),
            buffer: self
                .session_buffer
                .and_then(|bytes| usize::try_from(bytes).ok())
                .unwrap_or(defaults.buffer),
            ..defaults
        }
    }
}

/// `enroll`: save the settings (and the API key, 0600) so that `run` needs no flags.
pub(crate) fn enroll(args: RelayArgs, store: &SeedStore) -> anyhow::Result<()> {
    let dir = store.dir();
    let saved = Settings::load(dir)?;
    let (settings, key) = merge(args, saved, dir)?;
    // Validate before saving: a typo in the fingerprint or the policy should not wait for the first `run`.
    DestinationPolicy::from_lists(&settings.forward_deny, &settings.forward_allow)?;
    fleet_key(settings.fleet_key.as_deref(), None)?;
    MachineLabels::parse(&settings.labels)?;
    if let Some(relay) = &settings.relay {
        cmdop_client::check_relay_address(relay)?;
    }
    settings
        .relay_fingerprint
        .as_deref()
        .map(str::parse::<RelayFingerprint>)
        .transpose()?;
    let (identity, info, _) = store
        .load_or_create_with_os_rng()
        .context("cannot initialise the agent identity")?;
    let path = settings.save(dir)?;
    let key_path = settings::save_api_key(dir, &key)?;
    println!("saved settings to {}", path.display());
    println!("saved the API key to {}", key_path.display());
    println!(
        "identity {} ({})",
        identity.public_key().fingerprint(),
        info.kek_location
    );
    println!(
        "start the agent with: cmdop-agent --config-dir {} run",
        dir.display()
    );
    Ok(())
}

/// Everything `run` will use, resolved from flags, environment, the config file and `agent.json`, and checked:
/// `run` runs it, `config check` prints it. A bad value is named with where it came from.
pub(crate) struct RunPlan {
    relay: String,
    fingerprint: RelayFingerprint,
    workspace: String,
    hostname: String,
    name: Option<String>,
    api_key: Zeroizing<String>,
    forward_deny: Vec<String>,
    forward_allow: Vec<String>,
    forward_policy: DestinationPolicy,
    labels: MachineLabels,
    session_limits: SessionLimits,
    /// The fleet key to trust for a locked fleet (`--fleet-key`, or the enrolment key's).
    fleet_key: Option<Fingerprint>,
    /// The enrolment key this machine certifies itself with in a locked fleet.
    enrolment: Option<EnrolmentSecret>,
}

impl RunPlan {
    /// Resolves and checks `args` (already filled from the config file) against what `enroll` saved in `dir`.
    pub(crate) fn resolve(args: RunArgs, dir: &Path) -> anyhow::Result<Self> {
        let session_limits = args.sessions.limits();
        let origins = args.relay.origins.clone();
        let from = |key: &str| origins.describe(key);
        let enrolment = args
            .relay
            .enrol_key_file
            .as_deref()
            .map(read_enrolment_key)
            .transpose()?;
        let (settings, api_key) = merge(args.relay, Settings::load(dir)?, dir)?;
        let fleet_key = fleet_key(settings.fleet_key.as_deref(), enrolment.as_ref())?;
        let relay = settings
            .relay
            .context("no relay given; pass --relay HOST:PORT or run `cmdop-agent enroll` first")?;
        cmdop_client::check_relay_address(&relay)
            .with_context(|| format!("relay (from {})", from("relay")))?;
        let fingerprint: RelayFingerprint = settings
            .relay_fingerprint
            .context(
                "no relay fingerprint given; pass --relay-fingerprint (from `cmdop-relay fingerprint`)",
            )?
            .parse()
            .with_context(|| format!("relay_fingerprint (from {})", from("relay_fingerprint")))?;
        let workspace = settings
            .workspace
            .context("no fleet given; pass --workspace FLEET")?;
        let forward_policy =
            DestinationPolicy::from_lists(&settings.forward_deny, &settings.forward_allow)
                .with_context(|| {
                    format!(
                        "forward_deny/forward_allow (from {})",
                        from("forward lists")
                    )
                })?;
        let labels = MachineLabels::parse(&settings.labels)
            .with_context(|| format!("labels (from {})", from("labels")))?;
        let (hostname, hostname_from) = match settings.hostname {
            Some(hostname) => (hostname, from("hostname")),
            None => (system_hostname()?, "this machine's hostname".to_owned()),
        };
        Hostname::parse(&hostname).map_err(|err| {
            anyhow::anyhow!(
                "invalid hostname {hostname:?} (from {hostname_from}): {err}; pass --hostname"
            )
        })?;
        if let Some(name) = &settings.name {
            DisplayName::parse(name).map_err(|err| {
                anyhow::anyhow!("invalid name {name:?} (from {}): {err}", from("name"))
            })?;
        }
        Ok(Self {
            relay,
            fingerprint,
            workspace,
            hostname,
            name: settings.name,
            api_key,
            forward_deny: settings.forward_deny,
            forward_allow: settings.forward_allow,
            forward_policy,
            labels,
            session_limits,
            fleet_key,
            enrolment,
        })
    }

    /// What `config check` prints: every setting `run` would use (the API key itself is not shown).
    pub(crate) fn print(&self) {
        let list = |items: &[String]| {
            if items.is_empty() {
                "(none)".to_owned()
            } else {
                items.join(", ")
            }
        };
        println!("  relay             = {}", self.relay);
        println!("  relay_fingerprint = {}", self.fingerprint);
        println!("  workspace         = {}", self.workspace);
        println!(
            "  api key           = (found, {} characters)",
            self.api_key.len()
        );
        println!("  hostname          = {}", self.hostname);
        println!(
            "  name              = {}",
            self.name
                .as_deref()
                .unwrap_or("(the hostname, or the name set on the relay)")
        );
        println!(
            "  labels            = {}",
            if self.labels.is_empty() {
                "(none)".to_owned()
            } else {
                self.labels.to_string()
            }
        );
        println!("  forward_deny      = {}", list(&self.forward_deny));
        println!("  forward_allow     = {}", list(&self.forward_allow));
        println!("  max_sessions      = {}", self.session_limits.max_sessions);
        println!(
            "  session_idle_ttl  = {}",
            humantime::format_duration(self.session_limits.idle_ttl)
        );
        println!("  session_buffer    = {}", self.session_limits.buffer);
        println!(
            "  fleet_key         = {}",
            self.fleet_key
                .as_ref()
                .map_or_else(|| "(not set)".to_owned(), ToString::to_string)
        );
        println!(
            "  enrol key         = {}",
            if self.enrolment.is_some() {
                "(found)"
            } else {
                "(not set)"
            }
        );
    }
}

/// `run`: register and stay online until SIGINT or SIGTERM.
pub(crate) fn run(args: RunArgs, store: &SeedStore) -> anyhow::Result<()> {
    let dir = store.dir().to_path_buf();
    let plan = RunPlan::resolve(args, &dir)?;
    let (identity, info, created) = store
        .load_or_create_with_os_rng()
        .context("cannot load or create the agent identity")?;
    tracing::info!(fingerprint = %identity.public_key().fingerprint(), kek = %info.kek_location, ?created, "agent identity");
    let identity = std::sync::Arc::new(identity);
    let RunPlan {
        relay,
        fingerprint,
        workspace,
        hostname,
        name,
        api_key,
        forward_policy,
        labels,
        session_limits,
        fleet_key,
        enrolment,
        ..
    } = plan;
    let config = PresenceConfig {
        relay: RelayTarget::new(relay.clone(), fingerprint),
        registration: AgentRegistration {
            api_key,
            workspace: workspace.clone(),
            hostname: hostname.clone(),
            display_name: name,
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            labels: labels.to_pairs(),
        },
        state_dir: dir,
        stream_limits: cmdop_agent::streams::StreamLimits::default(),
        session_limits,
        forward_policy,
        dialer: None,
        fleet_key,
        enrolment: enrolment.map(std::sync::Arc::new),
    };
    let runtime = runtime()?;
    let fingerprint_short = identity.public_key().fingerprint().short();
    runtime.block_on(async {
        presence::run(std::sync::Arc::clone(&identity), &config, shutdown_signal(), |event| match event {
            PresenceEvent::Online { machine_id, .. } => {
                // One line on stdout per (re)registration, for people and for scripts that wait on it.
                println!("online: machine {machine_id} ({hostname}, key {fingerprint_short}) in fleet {workspace} via {relay}");
            }
            PresenceEvent::Retrying { reason, delay } => {
                tracing::warn!(%reason, ?delay, "relay connection lost; retrying");
            }
        })
        .await
    })?;
    tracing::info!("stopped; the relay was told this machine is going offline");
    Ok(())
}

/// The agent's runtime: at most two worker threads whatever the machine. An idle agent needs one; two let a
/// busy one move QUIC packets and run its streams at the same time; tokio's default of one per core would
/// give a 64-core server 64 idle threads, each with its stack and its allocator arena.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.clamp(1, 2))
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Reads an enrolment key file, refusing one that other users can read (it certifies machines).
fn read_enrolment_key(path: &Path) -> anyhow::Result<EnrolmentSecret> {
    let text = settings::read_api_key(path)?
        .with_context(|| format!("enrolment key file {} does not exist", path.display()))?;
    EnrolmentSecret::parse(&text)
        .with_context(|| format!("{} holds no enrolment key", path.display()))
}

/// The fleet key to trust: `--fleet-key` (or the saved one) and the enrolment key's, which must agree.
fn fleet_key(
    given: Option<&str>,
    enrolment: Option<&EnrolmentSecret>,
) -> anyhow::Result<Option<Fingerprint>> {
    let given = given
        .map(|text| {
            text.parse::<Fingerprint>().with_context(|| {
                format!("--fleet-key {text:?} is not a fleet key fingerprint (SHA256:…)")
            })
        })
        .transpose()?;
    let from_enrolment = enrolment.map(|secret| secret.fleet_key().fingerprint());
    match (given, from_enrolment) {
        (Some(given), Some(enrolled)) if given != enrolled => bail!(
            "--fleet-key {given} disagrees with the enrolment key's fleet key {enrolled}; check both with your fleet admin"
        ),
        (given, enrolled) => Ok(given.or(enrolled)),
    }
}

/// Fills each missing flag from the saved settings and finds the API key: `--api-key-file`, then
/// `CMDOP_API_KEY`, then the config file's `api_key_file`, then the saved key file.
fn merge(
    args: RelayArgs,
    saved: Settings,
    dir: &Path,
) -> anyhow::Result<(Settings, Zeroizing<String>)> {
    let key = if let Some(path) = &args.api_key_file {
        settings::read_api_key(path)?
            .with_context(|| format!("API key file {} does not exist", path.display()))?
    } else if let Some(key) = std::env::var_os("CMDOP_API_KEY") {
        Zeroizing::new(
            key.to_str()
                .context("CMDOP_API_KEY is not valid UTF-8")?
                .trim()
                .to_owned(),
        )
    } else if let Some(path) = &args.file_api_key_file {
        settings::read_api_key(path)?.with_context(|| {
            format!(
                "api_key_file {} (from the config file) does not exist",
                path.display()
            )
        })?
    } else if let Some(key) = settings::read_api_key(&dir.join(settings::API_KEY_FILE))? {
        key
    } else {
        bail!(
            "no API key given; pass --api-key-file FILE or set CMDOP_API_KEY (create one with `cmdop-relay key create --fleet NAME --role agent`)"
        );
    };
    if key.is_empty() {
        bail!("the API key is empty; check --api-key-file or CMDOP_API_KEY");
    }
    let settings = Settings {
        relay: args.relay.or(saved.relay),
        relay_fingerprint: args.relay_fingerprint.or(saved.relay_fingerprint),
        workspace: args.workspace.or(saved.workspace),
        hostname: args.hostname.or(saved.hostname),
        name: args.name.or(saved.name),
        fleet_key: args.fleet_key.or(saved.fleet_key),
        forward_deny: if args.forward_deny.is_empty() {
            saved.forward_deny
        } else {
            args.forward_deny
        },
        forward_allow: if args.forward_allow.is_empty() {
            saved.forward_allow
        } else {
            args.forward_allow
        },
        labels: if args.labels.is_empty() {
            saved.labels
        } else {
            args.labels
        },
    };
    Ok((settings, key))
}

fn system_hostname() -> anyhow::Result<String> {
    let name = nix::unistd::gethostname()
        .context("cannot read this machine's hostname; pass --hostname")?;
    name.into_string()
        .map_err(|_| anyhow::anyhow!("this machine's hostname is not UTF-8; pass --hostname"))
}

/// Completes on SIGINT or SIGTERM (how service managers ask a daemon to stop).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
