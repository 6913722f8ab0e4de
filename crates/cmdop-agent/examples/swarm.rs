//! Many agents in one process: the load generator of `cargo xtask bench scale`.
//!
//! Each simulated agent runs the agent library's own presence loop ([`cmdop_agent::presence::run`]: register
//! with `AgentConnection`, heartbeat at the interval the relay asks for, reconnect with backoff, serve the
//! streams routed to it, exec included) with an Ed25519 identity of its own and a QUIC connection of its own,
//! proving its key over the TLS exporter like any agent. The connections leave from one shared
//! `cmdop_client::Dialer`, so 10,000 agents cost one UDP socket and one file descriptor
//! (`--own-sockets` gives each its own endpoint, as separate agent processes would have).
//!
//! ```text
//! swarm --relay 127.0.0.1:4433 --relay-fingerprint sha256:… --workspace prod --api-key-file KEY --agents 1000
//! ```
//!
//! It prints one JSON object per line on stdout and reads commands, one per line, on stdin:
//! - `{"event":"registered",…}` once every agent has been online, with the time it took;
//! - `kill` (before the driver kills the relay) starts a storm; `restarted` (once the new relay listens)
//!   marks its restart; once every agent is online again, `{"event":"back",…}` gives the time each took,
//!   from the kill and from the restart, and how many attempts failed and why;
//! - `status` prints `{"event":"status","online":…}`; `quit` (or the end of stdin) exits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use cmdop_agent::destination_policy::DestinationPolicy;
use cmdop_agent::presence::{self, PresenceConfig, PresenceEvent};
use cmdop_agent::shell::SessionLimits;
use cmdop_agent::streams::StreamLimits;
use cmdop_client::identity::Identity;
use cmdop_client::{AgentRegistration, Dialer, RelayTarget};
use serde_json::json;
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

/// Many simulated agents in one process, each with its own identity and QUIC connection.
#[derive(Debug, Parser)]
struct Args {
    /// The relay, as HOST:PORT.
    #[arg(long)]
    relay: String,
    /// The relay's certificate fingerprint.
    #[arg(long)]
    relay_fingerprint: String,
    /// The fleet to enrol into.
    #[arg(long)]
    workspace: String,
    /// A file holding the fleet's agent API key.
    #[arg(long)]
    api_key_file: PathBuf,
    /// How many agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Hostnames are PREFIX-00000, PREFIX-00001, …
    #[arg(long, default_value = "swarm")]
    hostname_prefix: String,
    /// Where the agents pin the fleet's trust key (one file, shared).
    #[arg(long)]
    state_dir: PathBuf,
    /// Start the agents spread evenly over this many seconds instead of all at once.
    #[arg(long, default_value_t = 0.0)]
    ramp_secs: f64,
    /// Worker threads of the runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Give every agent a UDP socket of its own (one file descriptor each) instead of one shared endpoint.
    #[arg(long)]
    own_sockets: bool,
    /// Spread the agents over this many shared endpoints, bound to 127.0.0.2, 127.0.0.3, … (a relay on
    /// loopback only): a real fleet reaches the relay from many addresses, and the relay's admission control
    /// caps what one source address may have logging in at once.
    #[arg(long, default_value_t = 1)]
    sources: u8,
}

/// What an agent's presence loop reported, and when.
#[derive(Debug)]
struct Report {
    agent: usize,
    at: Instant,
    what: What,
}

#[derive(Debug)]
enum What {
    Online,
    Retrying(String),
    GaveUp(String),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.agents > 0, "--agents must be at least 1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let api_key = std::fs::read_to_string(&args.api_key_file)
        .with_context(|| format!("cannot read {}", args.api_key_file.display()))?;
    let relay = RelayTarget::new(args.relay.clone(), args.relay_fingerprint.parse()?);
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create {}", args.state_dir.display()))?;
    let dialers = if args.own_sockets {
        Vec::new()
    } else if args.sources > 1 {
        (0..args.sources)
            .map(|i| Dialer::bind(SocketAddr::from(([127, 0, 0, i.saturating_add(2)], 0))))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        vec![Dialer::bind("0.0.0.0:0".parse()?)?]
    };
    let (reports, mut received) = mpsc::unbounded_channel();
    let started = Instant::now();
    let spacing = Duration::from_secs_f64(args.ramp_secs.max(0.0) / args.agents as f64);
    for agent in 0..args.agents {
        let config = PresenceConfig {
            relay: relay.clone(),
            registration: AgentRegistration {
                api_key: Zeroizing::new(api_key.trim().to_owned()),
                workspace: args.workspace.clone(),
                hostname: format!("{}-{agent:05}", args.hostname_prefix),
                display_name: None,
                os: std::env::consts::OS.to_owned(),
                arch: std::env::consts::ARCH.to_owned(),
                agent_version: format!("{} (swarm)", env!("CARGO_PKG_VERSION")),
                labels: Vec::new(),
            },
            state_dir: args.state_dir.clone(),
            stream_limits: StreamLimits::default(),
            session_limits: SessionLimits::default(),
            forward_policy: DestinationPolicy::from_lists(&[], &[])?,
            dialer: (!dialers.is_empty()).then(|| dialers[agent % dialers.len()].clone()),
            fleet_key: None,
            enrolment: None,
        };
        let start_at = started + spacing.saturating_mul(u32::try_from(agent).unwrap_or(u32::MAX));
        tokio::spawn(simulate(agent, config, start_at, reports.clone()));
    }
    drop(reports);
    coordinate(args.agents, started, &mut received).await;
    Ok(())
}

/// One agent: the real presence loop, its events forwarded to the coordinator.
async fn simulate(
    agent: usize,
    config: PresenceConfig,
    start_at: Instant,
    reports: mpsc::UnboundedSender<Report>,
) {
    tokio::time::sleep_until(start_at.into()).await;
    let identity = Arc::new(Identity::generate(&mut rand::rngs::OsRng));
    let events = reports.clone();
    let result = presence::run(identity, &config, std::future::pending(), |event| {
        let what = match event {
            PresenceEvent::Online { .. } => What::Online,
            PresenceEvent::Retrying { reason, .. } => What::Retrying(reason),
        };
        let _ = events.send(Report {
            agent,
            at: Instant::now(),
            what,
        });
    })
    .await;
    let reason = match result {
        Ok(()) => "stopped".to_owned(),
        Err(err) => err.to_string(),
    };
    let _ = reports.send(Report {
        agent,
        at: Instant::now(),
        what: What::GaveUp(reason),
    });
}

/// A reconnect storm being timed.
#[derive(Debug)]
struct Storm {
    killed: Instant,
    restarted: Option<Instant>,
    back: Vec<Option<Instant>>,
    back_count: usize,
    failures: Failures,
}

/// Failed attempts, by kind, with one example of each.
#[derive(Debug, Default)]
struct Failures {
    count: u64,
    by_kind: BTreeMap<&'static str, (u64, String)>,
}

impl Failures {
    fn add(&mut self, reason: &str) {
        self.count += 1;
        let entry = self
            .by_kind
            .entry(kind_of(reason))
            .or_insert_with(|| (0, reason.to_owned()));
        entry.0 += 1;
    }

    fn json(&self) -> serde_json::Value {
        let kinds: serde_json::Map<String, serde_json::Value> = self
            .by_kind
            .iter()
            .map(|(kind, (n, example))| {
                ((*kind).to_owned(), json!({"count": n, "example": example}))
            })
            .collect();
        json!({"count": self.count, "kinds": kinds})
    }
}

/// A coarse kind for a failed attempt's message, to count them.
fn kind_of(reason: &str) -> &'static str {
    let reason = reason.to_ascii_lowercase();
    if reason.contains("refused") {
        "refused"
    } else if reason.contains("busy") {
        "busy"
    } else if reason.contains("reset") {
        "reset"
    } else if reason.contains("timed out") || reason.contains("did not answer") {
        "timeout"
    } else if reason.contains("closed") || reason.contains("lost") {
        "closed"
    } else {
        "other"
    }
}

/// Tracks every agent's state from the reports and answers the driver's commands until `quit`.
async fn coordinate(
    agents: usize,
    started: Instant,
    received: &mut mpsc::UnboundedReceiver<Report>,
) {
    let mut fleet = Fleet::new(agents, started);
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            report = received.recv() => {
                let Some(report) = report else { return };
                fleet.on_report(report);
            }
            line = stdin.next_line() => {
                let Ok(Some(line)) = line else { return };
                if !fleet.on_command(line.trim()) {
                    return;
                }
            }
            _ = progress.tick() => {
                eprintln!("swarm: {} of {agents} online, {} gave up", fleet.online_count, fleet.gave_up);
            }
        }
    }
}

/// What the coordinator knows of every agent.
#[derive(Debug)]
struct Fleet {
    started: Instant,
    online: Vec<bool>,
    online_count: usize,
    first: Vec<Option<Instant>>,
    first_count: usize,
    initial_failures: Failures,
    gave_up: usize,
    storm: Option<Storm>,
}

impl Fleet {
    fn new(agents: usize, started: Instant) -> Self {
        Self {
            started,
            online: vec![false; agents],
            online_count: 0,
            first: vec![None; agents],
            first_count: 0,
            initial_failures: Failures::default(),
            gave_up: 0,
            storm: None,
        }
    }

    fn on_report(&mut self, report: Report) {
        let agent = report.agent;
        match report.what {
            What::Online => self.on_online(agent, report.at),
            What::Retrying(reason) => {
                if self.online[agent] {
                    self.online[agent] = false;
                    self.online_count -= 1;
                }
                match self.storm.as_mut() {
                    Some(storm) => storm.failures.add(&reason),
                    None => self.initial_failures.add(&reason),
                }
            }
            What::GaveUp(reason) => {
                self.gave_up += 1;
                eprintln!("swarm: agent {agent} gave up: {reason}");
                emit(&json!({"event": "gave_up", "agent": agent, "reason": reason}));
            }
        }
    }

    fn on_online(&mut self, agent: usize, at: Instant) {
        let agents = self.online.len();
        if !self.online[agent] {
            self.online[agent] = true;
            self.online_count += 1;
        }
        if self.first[agent].is_none() {
            self.first[agent] = Some(at);
            self.first_count += 1;
            if self.first_count == agents {
                let times = since(self.started, &self.first);
                emit(&json!({
                    "event": "registered", "agents": agents,
                    "secs": seconds(times.last().copied()),
                    "p50_ms": millis(percentile(&times, 50)),
                    "p99_ms": millis(percentile(&times, 99)),
                    "failed_attempts": self.initial_failures.json(),
                }));
            }
        }
        if let Some(storm) = self.storm.as_mut()
            && storm.back[agent].is_none()
        {
            storm.back[agent] = Some(at);
            storm.back_count += 1;
            if storm.back_count == agents {
                emit(&storm_report(storm, self.gave_up));
            }
        }
    }

    /// Carries out one command from the driver; `false` to stop.
    fn on_command(&mut self, command: &str) -> bool {
        match command {
            "kill" => {
                self.storm = Some(Storm {
                    killed: Instant::now(),
                    restarted: None,
                    back: vec![None; self.online.len()],
                    back_count: 0,
                    failures: Failures::default(),
                });
            }
            "restarted" => {
                if let Some(storm) = self.storm.as_mut() {
                    storm.restarted = Some(Instant::now());
                }
            }
            "status" => emit(&json!({
                "event": "status", "online": self.online_count, "agents": self.online.len(),
                "gave_up": self.gave_up,
            })),
            "quit" => return false,
            other => {
                eprintln!("swarm: unknown command {other:?} (kill, restarted, status, quit)");
            }
        }
        true
    }
}

fn storm_report(storm: &Storm, gave_up: usize) -> serde_json::Value {
    let from_kill = since(storm.killed, &storm.back);
    let mut stats = json!({
        "event": "back", "agents": storm.back.len(), "gave_up": gave_up,
        "from_kill": summary(&from_kill),
        "failed_attempts": storm.failures.json(),
    });
    if let Some(restarted) = storm.restarted {
        stats["from_restart"] = summary(&since(restarted, &storm.back));
    }
    stats
}

fn summary(sorted: &[Duration]) -> serde_json::Value {
    json!({
        "p50_ms": millis(percentile(sorted, 50)),
        "p99_ms": millis(percentile(sorted, 99)),
        "max_ms": millis(sorted.last().copied()),
    })
}

/// The times since `origin`, sorted (a time before it counts as zero).
fn since(origin: Instant, times: &[Option<Instant>]) -> Vec<Duration> {
    let mut out: Vec<Duration> = times
        .iter()
        .flatten()
        .map(|at| at.saturating_duration_since(origin))
        .collect();
    out.sort();
    out
}

/// Nearest rank.
fn percentile(sorted: &[Duration], p: usize) -> Option<Duration> {
    let rank = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted.get(rank).copied()
}

fn millis(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn seconds(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

fn emit(value: &serde_json::Value) {
    println!("{value}");
}
