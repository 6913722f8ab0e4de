//! `cargo xtask bench scale --agents N`: N agents on one relay, from one load-generating process.
//!
//! The relay is the release `cmdop-relay` binary with its own data directory; a real `cmdop-agent` process is
//! enrolled beside the simulated ones, and the CLI is logged in with a member key, exactly as
//! `cargo xtask quickstart` sets them up. The simulated agents are `cmdop-agent`'s `swarm` example: every one
//! runs the agent library's presence loop (its own Ed25519 identity and QUIC connection, the login proof bound
//! to the TLS exporter, heartbeats at the relay's interval, reconnects with backoff, exec served).
//!
//! What it measures, in order: the time for N to register; the relay's resident memory with only the real
//! agent and with N more, and so per agent; the relay's CPU per minute at steady state; `cmdop connect --list
//! --json` and `cmdop connect exec` to random simulated agents and to the real one under that load; then the
//! relay is killed with SIGKILL and restarted on the same port and data directory, and it reports how long
//! every agent took to be back, how many attempts failed and why, the relay's peak memory during the storm,
//! and whether member logins kept working meanwhile. Results go to `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::procfs::{self, Memory, mib};
use super::{Scratch, Summary, machine, publish, utc_now, versions};
use crate::contour::{self, Binaries, Contour, Dial, FLEET};

pub(super) const USAGE: &str = "usage: cargo xtask bench scale [--agents N] [--steady-secs S] [--runs N] [--no-storm]
                               [--own-sockets] [--short] [--no-build]

  --agents N       simulated agents (default 1000)
  --steady-secs S  how long the relay's CPU is measured at steady state (default 60)
  --runs N         timed `connect --list` and `connect exec` runs each (default 5)
  --no-storm       skip the SIGKILL-and-restart storm
  --own-sockets    one UDP socket per simulated agent instead of one shared endpoint
  --short          the CI variant: 10 s at steady state, 2 runs, and docs/benchmarks.md is not written
  --no-build       use the release binaries already in target/release";

/// Source addresses the swarm's agents leave from (`swarm --sources`), unless each has its own socket.
const SOURCES: u8 = 64;

/// How long the swarm may take to bring every agent online, the first time or after the storm.
const ONLINE_TIMEOUT: Duration = Duration::from_secs(600);
/// After registration, before memory is read: late heartbeats and the first keep-alives settle.
const SETTLE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Options {
    agents: usize,
    steady: Duration,
    runs: usize,
    storm: bool,
    own_sockets: bool,
    short: bool,
    build: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        agents: 1000,
        steady: Duration::from_secs(60),
        runs: 5,
        storm: true,
        own_sockets: false,
        short: false,
        build: true,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut number = |flag: &str| -> Result<u64> {
            let n = args
                .next()
                .with_context(|| format!("{flag} takes a number"))?;
            match n.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => bail!("{flag} takes a positive whole number, got `{n}`"),
            }
        };
        match arg.as_str() {
            "--agents" => options.agents = usize::try_from(number("--agents")?)?,
            "--steady-secs" => options.steady = Duration::from_secs(number("--steady-secs")?),
            "--runs" => options.runs = usize::try_from(number("--runs")?)?,
            "--no-storm" => options.storm = false,
            "--own-sockets" => options.own_sockets = true,
            "--short" => {
                options.short = true;
                options.steady = Duration::from_secs(10);
                options.runs = 2;
            }
            "--no-build" => options.build = false,
            other => bail!("bench scale does not take `{other}`\n\n{USAGE}"),
        }
    }
    Ok(options)
}

/// Runs `cargo xtask bench scale ARGS`.
pub(super) fn run(root: &Path, args: &[String]) -> Result<()> {
    let options = parse(args)?;
    let bins = binaries(root, options.build)?;
    let swarm_bin = root.join("target/release/examples/swarm");
    let scratch = Scratch::new()?;
    // Room for every simulated agent, the real one, and the CLI's connections.
    let max_connections = (options.agents + 1024).to_string();
    let mut contour = Contour::up_with(
        bins,
        &scratch.path().join("contour"),
        "127.0.0.1:0",
        &Dial::default(),
        &["--max-connections", &max_connections],
    )?;
    let mut results = Results::new(&options);
    thread::sleep(Duration::from_secs(2));
    let relay = contour.relay_pid().context("the relay is not running")?;
    results.idle = Sample::now(relay)?;
    results.agent_idle = contour.agent_pid().map(Memory::of).transpose()?;

    contour::header(&format!("{} simulated agents", options.agents));
    let work = Work::start(relay, None)?;
    let mut swarm = Swarm::start(&swarm_bin, &contour, scratch.path(), &options)?;
    let registered = swarm.wait_for("registered", ONLINE_TIMEOUT)?;
    println!("  {registered}");
    results.registered = Some(registered);
    results.registration_work = Some(work.done(relay, swarm.pid())?);
    thread::sleep(SETTLE);
    results.loaded = Sample::now(relay)?;
    results.swarm = Some(Memory::of(swarm.pid())?);

    contour::header(&format!(
        "the relay's CPU over {} s at steady state",
        options.steady.as_secs()
    ));
    results.steady = Some(steady_cpu(relay, options.steady)?);
    results.after_steady = Sample::now(relay)?;

    contour::header("`cmdop connect --list --json` and `cmdop connect exec` under load");
    results.list = Some(time_runs(options.runs, || {
        list_machines(&contour, options.agents + 1)
    })?);
    results.exec_simulated = Some(time_runs(options.runs, || {
        let host = format!("swarm-{:05}", pseudo_random(options.agents));
        exec_true(&contour, &host)
    })?);
    let real = contour.machine.clone();
    results.exec_real = Some(time_runs(options.runs, || exec_true(&contour, &real))?);

    if options.storm {
        contour::header("the storm: SIGKILL the relay, restart it, wait for every agent");
        results.storm = Some(storm(&mut contour, &mut swarm)?);
    }
    swarm.quit();
    drop(contour);
    let report = results.markdown(&options)?;
    if options.short {
        contour::header("results (--short: not written to docs/benchmarks.md)");
        println!("{report}");
        return Ok(());
    }
    publish(root, &results.heading(), &report)
}

fn binaries(root: &Path, build: bool) -> Result<Binaries> {
    if build {
        contour::header("building the release binaries and the swarm");
        let bins = Binaries::build_release(root)?;
        let mut swarm = crate::cargo_command();
        swarm.args([
            "build",
            "--release",
            "-p",
            "cmdop-agent",
            "--example",
            "swarm",
        ]);
        contour::run_shown(&mut swarm)?;
        Ok(bins)
    } else {
        let swarm = root.join("target/release/examples/swarm");
        if !swarm.is_file() {
            bail!(
                "{} is missing; build it with `cargo build --release -p cmdop-agent --example swarm`",
                swarm.display()
            );
        }
        Binaries::existing_release(root)
    }
}

/// What a phase cost: the relay's CPU time, and UDP datagrams the kernel dropped for full receive buffers.
#[derive(Debug, Clone, Copy)]
struct Work {
    relay_cpu: f64,
    /// The swarm's CPU time: the agents' side of the same handshakes, on the same cores.
    swarm_cpu: f64,
    drops: u64,
}

impl Work {
    /// The counters now, to subtract at the end of the phase (`swarm`: the load generator, if it runs yet).
    fn start(relay: u32, swarm: Option<u32>) -> Result<Self> {
        Ok(Self {
            relay_cpu: procfs::cpu_seconds(relay)?,
            swarm_cpu: swarm.map(procfs::cpu_seconds).transpose()?.unwrap_or(0.0),
            drops: procfs::udp_receive_drops(),
        })
    }

    /// What was spent since [`start`](Self::start) (`relay` may be a new process, started with zero).
    fn done(self, relay: u32, swarm: u32) -> Result<Self> {
        Ok(Self {
            relay_cpu: procfs::cpu_seconds(relay)? - self.relay_cpu,
            swarm_cpu: procfs::cpu_seconds(swarm)? - self.swarm_cpu,
            drops: procfs::udp_receive_drops().saturating_sub(self.drops),
        })
    }

    fn describe(&self, agents: usize) -> String {
        format!(
            "{:.2} CPU-s ({:.2} ms per agent); the swarm meanwhile, on the same cores: {:.2} CPU-s; UDP \
             datagrams dropped for a full receive buffer (machine-wide): {}",
            self.relay_cpu,
            self.relay_cpu * 1000.0 / agents.max(1) as f64,
            self.swarm_cpu,
            self.drops
        )
    }
}

/// The relay's memory and the machine's load at one moment.
#[derive(Debug, Clone, Default)]
struct Sample {
    memory: Memory,
    load: String,
}

impl Sample {
    fn now(pid: u32) -> Result<Self> {
        Ok(Self {
            memory: Memory::of(pid)?,
            load: procfs::load_average(),
        })
    }
}

/// CPU seconds the relay spent over `window`, with the load average at the end.
#[derive(Debug, Clone)]
struct Steady {
    cpu_seconds: f64,
    window: Duration,
    load: String,
}

impl Steady {
    fn per_minute(&self) -> f64 {
        self.cpu_seconds * 60.0 / self.window.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

fn steady_cpu(pid: u32, window: Duration) -> Result<Steady> {
    let before = procfs::cpu_seconds(pid)?;
    let started = Instant::now();
    thread::sleep(window);
    let cpu_seconds = procfs::cpu_seconds(pid)? - before;
    Ok(Steady {
        cpu_seconds,
        window: started.elapsed(),
        load: procfs::load_average(),
    })
}

/// A number below `bound` that differs from run to run (std has no random numbers; the clock will do).
fn pseudo_random(bound: usize) -> usize {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // Spread the low-entropy nanoseconds over the range (a multiplicative hash).
    let mixed = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    usize::try_from(mixed).unwrap_or(0) % bound.max(1)
}

/// Times `runs` calls of `once`, each of which must succeed.
fn time_runs(runs: usize, mut once: impl FnMut() -> Result<()>) -> Result<Timed> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        once()?;
        times.push(started.elapsed());
    }
    Ok(Timed {
        summary: Summary::of(&times)?,
        load: procfs::load_average(),
    })
}

/// Order statistics of timed runs, with the load average after them.
#[derive(Debug, Clone)]
struct Timed {
    summary: Summary,
    load: String,
}

/// `cmdop connect --list --json`, checked to list `expected` machines.
fn list_machines(contour: &Contour, expected: usize) -> Result<()> {
    let mut list = contour.cli();
    list.args(["connect", "--list", "--json"]);
    let output = contour::capture(&mut list)?;
    let listed: Value =
        serde_json::from_str(&output).context("`cmdop connect --list --json` printed no JSON")?;
    let count = listed.as_array().map_or(0, Vec::len);
    if count < expected {
        bail!("`cmdop connect --list --json` listed {count} machines, expected {expected}");
    }
    Ok(())
}

/// `cmdop connect exec MACHINE -- true`.
fn exec_true(contour: &Contour, machine: &str) -> Result<()> {
    let mut exec = contour.cli();
    exec.args(["connect", "exec", machine, "--", "true"]);
    contour::capture(&mut exec).map(drop)
}

/// The `swarm` process: its JSON events on stdout, its commands on stdin, its log in the scratch directory.
struct Swarm {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
    log: PathBuf,
    gave_up: Vec<Value>,
}

impl Swarm {
    fn start(bin: &Path, contour: &Contour, dir: &Path, options: &Options) -> Result<Self> {
        let log = dir.join("swarm.log");
        let mut command = Command::new(bin);
        command
            .args(["--relay", &contour.address])
            .args(["--relay-fingerprint", &contour.fingerprint])
            .args(["--workspace", FLEET])
            .arg("--api-key-file")
            .arg(contour.agent_key_file())
            .args(["--agents", &options.agents.to_string()])
            .arg("--state-dir")
            .arg(dir.join("swarm"));
        if options.own_sockets {
            command.arg("--own-sockets");
        } else {
            command.args(["--sources", &SOURCES.to_string()]);
        }
        println!("{} 2> {}", contour::shell_line(&command), log.display());
        let stderr = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("cannot start the swarm")?;
        let stdout = child.stdout.take().context("the swarm has no stdout")?;
        let (sender, events) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && sender.send(event).is_err()
                {
                    return;
                }
            }
        });
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            events,
            log,
            gave_up: Vec::new(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, command: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("the swarm's stdin is closed")?;
        writeln!(stdin, "{command}").context("cannot write to the swarm")?;
        stdin.flush().context("cannot write to the swarm")
    }

    /// The next event named `name`, keeping any `gave_up` seen on the way; fails if the swarm exits or is slow.
    fn wait_for(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok(event) if event["event"] == name => return Ok(event),
                Ok(event) if event["event"] == "gave_up" => self.gave_up.push(event),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) if left.is_zero() => {
                    bail!(
                        "no `{name}` from the swarm within {timeout:?}; {}",
                        self.tail()
                    )
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the swarm exited before `{name}`; {}", self.tail())
                }
            }
        }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(20);
        format!(
            "the end of its log {}:\n{}",
            self.log.display(),
            lines.get(start..).unwrap_or_default().join("\n")
        )
    }

    fn quit(mut self) {
        let _ = self.send("quit");
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(None) = self.child.try_wait() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.wait();
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the storm showed.
#[derive(Debug)]
struct StormResult {
    /// The swarm's `back` event: per-agent times, failed attempts.
    back: Value,
    /// From SIGKILL to the new relay listening.
    restart: Duration,
    /// The new relay's memory at the end, its peak (VmHWM) being the storm's.
    memory: Memory,
    /// The highest VmRSS seen while sampling every 100 ms (VmHWM confirms it).
    sampled_peak: u64,
    /// Member logins (`cmdop connect --list --json`) run one after another during the storm.
    logins: Logins,
    /// The new relay's handshake and authentication failure counters after the storm.
    failures: Vec<String>,
    /// The real `cmdop-agent` process is online again.
    real_agent_back: bool,
    /// The new relay's CPU from its start to the last agent back, and the drops meanwhile.
    work: Work,
    load: String,
    gave_up: usize,
}

/// Member logins during the storm.
#[derive(Debug, Default)]
struct Logins {
    ok: Vec<Duration>,
    failed: Vec<String>,
}

fn storm(contour: &mut Contour, swarm: &mut Swarm) -> Result<StormResult> {
    let drops = procfs::udp_receive_drops();
    let swarm_cpu = procfs::cpu_seconds(swarm.pid())?;
    swarm.send("kill")?;
    let killed = Instant::now();
    contour.kill_relay()?;
    contour.restart_relay()?;
    let restart = killed.elapsed();
    swarm.send("restarted")?;
    let relay = contour
        .relay_pid()
        .context("the restarted relay is not running")?;
    println!(
        "  the new relay listens {} ms after the kill",
        restart.as_millis()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let logins = {
        let prototype = contour.cli();
        let stop = Arc::clone(&stop);
        let program = prototype.get_program().to_owned();
        let args: Vec<_> = prototype.get_args().map(ToOwned::to_owned).collect();
        thread::spawn(move || member_logins(&program, &args, &stop))
    };
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(memory) = Memory::of(relay) {
                    peak.fetch_max(memory.rss, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let back = swarm.wait_for("back", ONLINE_TIMEOUT);
    stop.store(true, Ordering::Relaxed);
    let logins = logins.join().unwrap_or_default();
    let _ = sampler.join();
    let back = back?;
    println!("  {back}");
    // The new relay started at zero CPU time.
    let work = Work {
        relay_cpu: 0.0,
        swarm_cpu,
        drops,
    }
    .done(relay, swarm.pid())?;
    let real = contour.machine.clone();
    Ok(StormResult {
        work,
        back,
        restart,
        memory: Memory::of(relay)?,
        sampled_peak: peak.load(Ordering::Relaxed),
        logins,
        failures: failure_counters(&contour.metrics)?,
        real_agent_back: exec_true(contour, &real).is_ok(),
        load: procfs::load_average(),
        gave_up: swarm.gave_up.len(),
    })
}

/// Runs `cmdop connect --list --json` back to back until `stop`, timing each.
fn member_logins(
    program: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
    stop: &AtomicBool,
) -> Logins {
    let mut logins = Logins::default();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let output = Command::new(program)
            .args(args)
            .args(["connect", "--list", "--json"])
            .stdin(Stdio::null())
            .output();
        match output {
            Ok(output) if output.status.success() => logins.ok.push(started.elapsed()),
            Ok(output) => logins
                .failed
                .push(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
            Err(err) => logins.failed.push(err.to_string()),
        }
        thread::sleep(Duration::from_millis(200));
    }
    logins
}

/// The relay's `handshake_failures_total` and `auth_failures_total` lines from its metrics endpoint.
fn failure_counters(url: &str) -> Result<Vec<String>> {
    let text = http_get(url)?;
    Ok(text
        .lines()
        .filter(|line| {
            !line.starts_with('#')
                && (line.contains("handshake_failures_total")
                    || line.contains("auth_failures_total"))
        })
        .map(str::to_owned)
        .collect())
}

/// A plain HTTP/1.0 GET of an `http://HOST:PORT/PATH` URL (the relay's metrics; std only).
fn http_get(url: &str) -> Result<String> {
    use std::io::Read as _;
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {url}"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream =
        std::net::TcpStream::connect(host).with_context(|| format!("cannot connect to {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(_, body)| body.to_owned()))
}

/// Everything one run measured.
#[derive(Debug)]
struct Results {
    agents: usize,
    date: String,
    idle: Sample,
    agent_idle: Option<Memory>,
    registered: Option<Value>,
    registration_work: Option<Work>,
    loaded: Sample,
    swarm: Option<Memory>,
    steady: Option<Steady>,
    after_steady: Sample,
    list: Option<Timed>,
    exec_simulated: Option<Timed>,
    exec_real: Option<Timed>,
    storm: Option<StormResult>,
}

impl Results {
    fn new(options: &Options) -> Self {
        Self {
            agents: options.agents,
            date: utc_now(),
            idle: Sample::default(),
            agent_idle: None,
            registered: None,
            registration_work: None,
            loaded: Sample::default(),
            swarm: None,
            steady: None,
            after_steady: Sample::default(),
            list: None,
            exec_simulated: None,
            exec_real: None,
            storm: None,
        }
    }

    fn heading(&self) -> String {
        format!("## scale: {} agents on one relay", thousands(self.agents))
    }

    /// KiB of relay RSS per simulated agent, between the relay with the real agent only and with all.
    fn per_agent_kib(&self, loaded: &Sample) -> f64 {
        (loaded.memory.rss as f64 - self.idle.memory.rss as f64) / self.agents.max(1) as f64
    }

    fn markdown(&self, options: &Options) -> Result<String> {
        let mut out = format!("{}\n\n", self.heading());
        let _ = write!(
            out,
            "Method: the release `cmdop-relay` on 127.0.0.1 with its own data directory, one real `cmdop-agent` \
             process, and {n} simulated agents in one process (`cmdop-agent`'s `swarm` example: the agent \
             library's presence loop per agent, its own Ed25519 identity and QUIC connection, the real login \
             proof bound to the TLS exporter, heartbeats at the relay's interval, exec served), all started at \
             once, {sockets}. Memory is the relay's resident set from `/proc/PID/status` (not sensitive to \
             load); CPU is its user + system time from `/proc/PID/stat`; wall times are noisy on this shared \
             machine, so each figure carries the load average (1, 5, 15 min) read when it was taken.\n\n\
             - date: {date}\n- command: `cargo xtask bench scale --agents {n}{flags}`\n- machine: {machine}\n\
             - versions: {versions}\n\n",
            n = self.agents,
            sockets = if options.own_sockets {
                "each with a UDP socket of its own"
            } else {
                "their connections leaving from 64 shared UDP sockets (`cmdop_client::Dialer`) bound to \
                 127.0.0.2 to 127.0.0.65: a real fleet reaches its relay from many addresses, and the relay \
                 admits at most 64 logins at once per source address"
            },
            date = self.date,
            flags = command_flags(options),
            machine = machine()?,
            versions = versions(options.build)?,
        );
        out.push_str("| figure | value | load |\n|---|---|---|\n");
        self.registration_rows(&mut out);
        self.memory_rows(&mut out);
        self.latency_rows(&mut out);
        if let Some(storm) = &self.storm {
            storm.rows(&mut out, self.agents);
        }
        Ok(out)
    }

    fn registration_rows(&self, out: &mut String) {
        if let Some(registered) = &self.registered {
            row(
                out,
                &format!("time for {} agents to register", thousands(self.agents)),
                &format!(
                    "{:.1} s (each agent: p50 {}, p99 {}); failed attempts on the way: {}",
                    registered["secs"].as_f64().unwrap_or(f64::NAN),
                    ms_value(&registered["p50_ms"]),
                    ms_value(&registered["p99_ms"]),
                    failed_attempts(&registered["failed_attempts"]),
                ),
                &self.loaded.load,
            );
        }
        if let Some(work) = &self.registration_work {
            row(
                out,
                "relay CPU for the registrations",
                &work.describe(self.agents),
                &self.loaded.load,
            );
        }
    }

    fn memory_rows(&self, out: &mut String) {
        let idle = &self.idle.memory;
        row(
            out,
            "relay RSS with the real agent only",
            &format!(
                "{} (anon {}, file {})",
                mib(idle.rss),
                mib(idle.anon),
                mib(idle.file)
            ),
            &self.idle.load,
        );
        for (label, sample) in [
            ("right after registration", &self.loaded),
            ("after the steady-state window", &self.after_steady),
        ] {
            let m = &sample.memory;
            row(
                out,
                &format!(
                    "relay RSS with {} more agents, {label}",
                    thousands(self.agents)
                ),
                &format!(
                    "{} (anon {}, peak so far {}): **{:.1} KiB per agent**",
                    mib(m.rss),
                    mib(m.anon),
                    mib(m.peak),
                    self.per_agent_kib(sample)
                ),
                &sample.load,
            );
        }
        if let Some(steady) = &self.steady {
            row(
                out,
                "relay CPU at steady state",
                &format!(
                    "{:.2} CPU-s per minute ({:.2} s over {:.0} s)",
                    steady.per_minute(),
                    steady.cpu_seconds,
                    steady.window.as_secs_f64()
                ),
                &steady.load,
            );
        }
        if let Some(agent) = &self.agent_idle {
            row(
                out,
                "the real `cmdop-agent`, idle",
                &format!(
                    "{} (anon {}, file {})",
                    mib(agent.rss),
                    mib(agent.anon),
                    mib(agent.file)
                ),
                &self.idle.load,
            );
        }
        if let Some(swarm) = &self.swarm {
            row(
                out,
                "the swarm process (load generator)",
                &format!(
                    "{} ({:.1} KiB per simulated agent)",
                    mib(swarm.rss),
                    swarm.rss as f64 / self.agents.max(1) as f64
                ),
                &self.loaded.load,
            );
        }
    }

    fn latency_rows(&self, out: &mut String) {
        let runs = [
            (
                format!(
                    "`cmdop connect --list --json` with {} machines",
                    thousands(self.agents + 1)
                ),
                &self.list,
            ),
            (
                "`cmdop connect exec swarm-NNNNN -- true` to a random simulated agent".to_owned(),
                &self.exec_simulated,
            ),
            (
                "`cmdop connect exec MACHINE -- true` to the real agent process".to_owned(),
                &self.exec_real,
            ),
        ];
        for (label, timed) in runs {
            if let Some(timed) = timed {
                let s = &timed.summary;
                row(
                    out,
                    &label,
                    &format!(
                        "median {}, min {}, max {} (whole process)",
                        ms(s.median),
                        ms(s.min),
                        ms(s.max)
                    ),
                    &timed.load,
                );
            }
        }
    }
}

impl StormResult {
    fn rows(&self, out: &mut String, agents: usize) {
        row(
            out,
            "storm: SIGKILL to the new relay listening",
            &ms(self.restart),
            &self.load,
        );
        for (key, label) in [
            ("from_kill", "from the kill"),
            ("from_restart", "from the restart"),
        ] {
            let s = &self.back[key];
            row(
                out,
                &format!("storm: every agent back online, {label}"),
                &format!(
                    "p50 {}, **p99 {}**, max {} ({} agents)",
                    ms_value(&s["p50_ms"]),
                    ms_value(&s["p99_ms"]),
                    ms_value(&s["max_ms"]),
                    thousands(agents)
                ),
                &self.load,
            );
        }
        row(
            out,
            "storm: the new relay's CPU until every agent was back",
            &self.work.describe(agents),
            &self.load,
        );
        row(
            out,
            "storm: failed attempts (agents' view)",
            &failed_attempts(&self.back["failed_attempts"]),
            &self.load,
        );
        let counters = if self.failures.is_empty() {
            "none".to_owned()
        } else {
            self.failures
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        row(
            out,
            "storm: the new relay's refusal counters",
            &counters,
            &self.load,
        );
        row(
            out,
            "storm: the new relay's peak RSS",
            &format!(
                "{} (VmHWM; sampled every 100 ms: {}); {} at the end",
                mib(self.memory.peak),
                mib(self.sampled_peak),
                mib(self.memory.rss)
            ),
            &self.load,
        );
        let ok = &self.logins.ok;
        let latency = Summary::of(ok).map_or_else(
            |_| "no login succeeded".to_owned(),
            |s| format!("median {}, max {}", ms(s.median), ms(s.max)),
        );
        row(
            out,
            "storm: member logins (`cmdop connect --list --json`, back to back)",
            &format!(
                "{} succeeded ({latency}), {} failed{}",
                ok.len(),
                self.logins.failed.len(),
                self.logins
                    .failed
                    .first()
                    .map_or_else(String::new, |e| format!(", e.g. `{e}`"))
            ),
            &self.load,
        );
        row(
            out,
            "storm: agents that gave up; the real agent back",
            &format!(
                "{} gave up; real agent {}",
                self.gave_up,
                if self.real_agent_back {
                    "answers exec"
                } else {
                    "**does not answer exec**"
                }
            ),
            &self.load,
        );
    }
}

fn row(out: &mut String, label: &str, value: &str, load: &str) {
    let _ = writeln!(out, "| {label} | {value} | {load} |");
}

fn command_flags(options: &Options) -> String {
    let mut flags = String::new();
    if options.steady != Duration::from_secs(60) {
        let _ = write!(flags, " --steady-secs {}", options.steady.as_secs());
    }
    if options.runs != 5 {
        let _ = write!(flags, " --runs {}", options.runs);
    }
    if !options.storm {
        flags.push_str(" --no-storm");
    }
    if options.own_sockets {
        flags.push_str(" --own-sockets");
    }
    if !options.build {
        flags.push_str(" --no-build");
    }
    flags
}

/// The swarm's `failed_attempts` object as text: the total, then each kind with an example.
fn failed_attempts(value: &Value) -> String {
    let count = value["count"].as_u64().unwrap_or(0);
    let Some(kinds) = value["kinds"].as_object().filter(|k| !k.is_empty()) else {
        return count.to_string();
    };
    let kinds: Vec<String> = kinds
        .iter()
        .map(|(kind, v)| {
            format!(
                "{kind} {} (e.g. “{}”)",
                v["count"].as_u64().unwrap_or(0),
                v["example"].as_str().unwrap_or("")
            )
        })
        .collect();
    format!("{count}: {}", kinds.join("; "))
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn ms_value(value: &Value) -> String {
    value
        .as_u64()
        .map_or_else(|| "?".to_owned(), |n| ms(Duration::from_millis(n)))
}

/// 10000 as `10,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_arguments() {
        let options = parse(&["--agents".into(), "10000".into(), "--no-storm".into()]).unwrap();
        assert_eq!(options.agents, 10_000);
        assert!(!options.storm);
        let short = parse(&["--short".into()]).unwrap();
        assert_eq!(short.steady, Duration::from_secs(10));
        assert!(parse(&["--agents".into(), "0".into()]).is_err());
        assert!(parse(&["--fast".into()]).is_err());
    }

    #[test]
    fn writes_thousands_with_commas() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(10_001), "10,001");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn describes_failed_attempts() {
        let value: Value = serde_json::from_str(
            r#"{"count": 3, "kinds": {"refused": {"count": 3, "example": "the relay refused"}}}"#,
        )
        .unwrap();
        assert_eq!(
            failed_attempts(&value),
            "3: refused 3 (e.g. “the relay refused”)"
        );
        assert_eq!(
            failed_attempts(&serde_json::json!({"count": 0, "kinds": {}})),
            "0"
        );
    }
}
