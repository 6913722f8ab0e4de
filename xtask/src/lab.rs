//! `cargo xtask lab [SCENARIO…]`: the network fault lab. The real `cmdop`, `cmdop-relay` and `cmdop-agent`
//! run in their own network namespaces behind a router, and scenarios impair the network between them (delay,
//! jitter, loss, duplication, reordering, partitions, bandwidth, address changes), kill the relay, or flood
//! it, then check what held: bytes intact and in order, transfers finished and verified, memory bounded, the
//! relay never dialling out.
//!
//! Topology and teardown: [`net`]. Delay, jitter, reordering and duplication: the user-space [`forwarder`]
//! between the CLI and the relay (this kernel has no netem). Needs root; without network namespaces the lab
//! says so and exits successfully (skipped). Figures go to `target/lab/report.md` and are summarised in
//! `docs/reliability.md`.

mod floods;
mod forwarder;
mod helpers;
pub(crate) mod net;
mod probe;
mod scenarios;
mod terminal;

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::contour::{self, Binaries, Contour, Dial};
use forwarder::Control;
use net::{Host, Link, Net};

const USAGE: &str = "usage: cargo xtask lab [--release] [--no-build] [--quick] [--seed N] [--flood-rate N] [--keep]
                       [SCENARIO…]

scenarios (default: all of them, in this order):
  lossy        100 ms delay each way, 5 % loss, jitter, duplicates, reordering on the client's link: a shell
               loses and reorders nothing, cp completes and verifies, a forward carries an HTTP download intact
  partition    the client's link, then the agent's, cut for 30 s in the middle of a cp
  relay-kill   the relay killed with SIGKILL 10 times during a 1 GiB cp, which must still complete, verified
  roaming      the client's address changes mid-session (exec and shell), and a NAT rebinding (catalog L4)
  streams      1,000 forwarded connections opened and never read: relay and agent memory
  slow-reader  a 1 GiB forward read at 1 MiB/s for 30 s, then at full speed: memory, bytes intact
  handshakes   10,000 QUIC Initials that never finish, and 1,000 handshakes that never log in: memory, and
               whether a real client still gets through
  no-dial-out  a full exec, forward, cp and shell session while the relay's sockets are watched (catalog N2)
  short        no-dial-out and lossy with small sizes (the CI form)

  --release   use release binaries (built unless --no-build); default: the debug ones `cargo xtask ci` builds
  --no-build  use the binaries already built
  --quick     smaller files and shorter floods
  --seed N    the forwarder's random seed (default 1)
  --flood-rate N
              connections a second in `handshakes` (default 1000; it sends 10 s of them, 2 s with --quick)
  --keep      keep target/lab/ (state, logs, files) after the run";

/// Every scenario, in the order `all` runs them.
const SCENARIOS: &[&str] = &[
    "no-dial-out",
    "lossy",
    "roaming",
    "partition",
    "relay-kill",
    "streams",
    "slow-reader",
    "handshakes",
];

/// The relay's UDP address inside its namespace.
const RELAY_LISTEN: &str = "10.77.2.2:4433";
/// Where the CLI dials: the forwarder in the router, which passes everything on to the relay.
const FORWARDER_LISTEN: &str = "10.77.1.1:4433";

/// The lab's command-line options.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    release: bool,
    build: bool,
    /// Smaller sizes and shorter runs.
    pub(crate) quick: bool,
    seed: u64,
    keep: bool,
    /// Connections a second in the `handshakes` flood.
    pub(crate) flood_rate: u64,
}

/// Runs `cargo xtask lab ARGS`.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    if let Some((first, rest)) = args.split_first()
        && first == "--helper"
    {
        let (name, rest) = rest.split_first().context("--helper needs a name")?;
        return helpers::run(name, rest);
    }
    let (options, chosen) = parse(args)?;
    let Some(net) = Net::up()? else {
        return Ok(());
    };
    let bins = binaries(root, &options)?;
    let flood = flood_binary(root, &options)?;
    let started = Instant::now();
    let mut lab = Lab::up(root, net, bins, flood, options.clone())?;
    let mut reports = Vec::new();
    for name in &chosen {
        contour::header(&format!("lab scenario `{name}`"));
        let began = Instant::now();
        let result = scenarios::run(name, &mut lab);
        let seconds = began.elapsed().as_secs_f64();
        // What the scenario left behind is part of its result: a contour that no longer serves is a failure
        // of the scenario, repaired (agent, then relay restarted) so the next one starts clean.
        let aftermath = lab.reset();
        let result = match (result, aftermath) {
            (Ok(figures), Ok(None)) => Ok(figures),
            (Ok(figures), Ok(Some(damage))) => Err(format!(
                "{damage}\n\nfigures of the scenario itself:\n- {}",
                figures.join("\n- ")
            )),
            (Err(e), Ok(None)) => Err(format!("{e:#}")),
            (Err(e), Ok(Some(damage))) => Err(format!("{e:#}\n\nafterwards: {damage}")),
            (result, Err(err)) => {
                println!("  cannot restore the lab after {name}: {err:#}; stopping");
                reports.push(Report {
                    name: name.clone(),
                    seconds,
                    result: Err(format!(
                        "{}\n\nand the lab could not be restored afterwards: {err:#}",
                        result.err().map_or_else(String::new, |e| format!("{e:#}"))
                    )),
                });
                break;
            }
        };
        if let Err(why) = &result {
            println!("  scenario {name} FAILED: {why}");
        }
        reports.push(Report {
            name: name.clone(),
            seconds,
            result,
        });
    }
    let text = report_text(&reports, &options, started.elapsed());
    let report_path = root.join("target").join("lab-report.md");
    fs::write(&report_path, &text)
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    println!("\n{text}\nreport written to {}", report_path.display());
    let dir = lab.dir.clone();
    drop(lab);
    if !options.keep {
        let _ = fs::remove_dir_all(&dir);
    }
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| r.result.is_err())
        .map(|r| r.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("lab scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The `lab` step of `cargo xtask ci`: the short form (`no-dial-out`, and `lossy` with small sizes) on the
/// debug binaries (built with the command the tests step uses, so they are built once); a skip message where
/// network namespaces cannot be made. `CMDOP_CI_LAB=0` skips it.
pub(crate) fn ci_short(root: &Path) -> Result<()> {
    if std::env::var("CMDOP_CI_LAB").is_ok_and(|v| v.trim() == "0") {
        println!("xtask ci: lab skipped (CMDOP_CI_LAB=0)");
        return Ok(());
    }
    run(root, &["short".to_owned()])
}

fn parse(args: &[String]) -> Result<(Options, Vec<String>)> {
    let mut options = Options {
        release: false,
        build: true,
        quick: false,
        seed: 1,
        keep: false,
        flood_rate: 1000,
    };
    let mut chosen = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--release" => options.release = true,
            "--no-build" => options.build = false,
            "--quick" => options.quick = true,
            "--keep" => options.keep = true,
            "--flood-rate" => {
                let value = args.next().context("--flood-rate takes a number")?;
                options.flood_rate = value.parse().ok().filter(|n| *n > 0).with_context(|| {
                    format!("--flood-rate takes a positive whole number, not `{value}`")
                })?;
            }
            "--seed" => {
                let value = args.next().context("--seed takes a number")?;
                options.seed = value
                    .parse()
                    .with_context(|| format!("--seed takes a whole number, not `{value}`"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "all" => chosen.extend(SCENARIOS.iter().map(|s| (*s).to_owned())),
            "short" => {
                options.quick = true;
                chosen.extend(["no-dial-out".to_owned(), "lossy".to_owned()]);
            }
            name if SCENARIOS.contains(&name) => chosen.push(name.to_owned()),
            other => bail!("lab does not know `{other}`\n\n{USAGE}"),
        }
    }
    if chosen.is_empty() {
        chosen.extend(SCENARIOS.iter().map(|s| (*s).to_owned()));
    }
    Ok((options, chosen))
}

fn binaries(root: &Path, options: &Options) -> Result<Binaries> {
    match (options.build, options.release) {
        (true, false) => Binaries::build_debug(root),
        (true, true) => Binaries::build_release(root),
        (false, false) => Binaries::existing_debug(root),
        (false, true) => Binaries::existing_release(root),
    }
}

/// The QUIC flood tool of the tests crate (`tests/src/bin/cmdop-lab-flood.rs`).
fn flood_binary(root: &Path, options: &Options) -> Result<PathBuf> {
    let profile = if options.release { "release" } else { "debug" };
    let path = root.join("target").join(profile).join("cmdop-lab-flood");
    if options.release && options.build {
        let mut build = crate::cargo_command();
        build.args([
            "build",
            "--release",
            "-p",
            "cmdop-tests",
            "--bin",
            "cmdop-lab-flood",
        ]);
        contour::run_shown(&mut build)?;
    }
    if !path.is_file() {
        bail!(
            "{} is missing; build it with `cargo build -p cmdop-tests --bin cmdop-lab-flood`",
            path.display()
        );
    }
    Ok(path)
}

/// What one scenario came to: its figures, or why it failed.
#[derive(Debug)]
struct Report {
    name: String,
    seconds: f64,
    result: std::result::Result<Vec<String>, String>,
}

fn report_text(reports: &[Report], options: &Options, total: Duration) -> String {
    let mut text = format!(
        "# lab run\n\n- machine: {}\n- binaries: {}; forwarder seed {}{}\n- total {:.0} s\n",
        machine(),
        if options.release { "release" } else { "debug" },
        options.seed,
        if options.quick { "; --quick sizes" } else { "" },
        total.as_secs_f64()
    );
    for report in reports {
        let _ = write!(text, "\n## {} ({:.0} s): ", report.name, report.seconds);
        match &report.result {
            Ok(figures) => {
                text.push_str("held\n\n");
                for line in figures {
                    let _ = writeln!(text, "- {line}");
                }
            }
            Err(why) => {
                let _ = writeln!(text, "FAILED\n\n{why}");
            }
        }
    }
    text
}

/// `nproc`, the kernel, and the CPU model, for the record.
fn machine() -> String {
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    // The machine is shared: its load says how much of the two cores the lab had.
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cpus} CPUs ({model}), Linux {}, load average at the end {}",
        kernel.trim(),
        load.join(" ")
    )
}

/// The running lab: network, forwarder, contour. Dropping it stops everything and removes the namespaces.
pub(crate) struct Lab {
    /// The relay, the agent and the CLI's state (dropped first: stops the daemons).
    pub(crate) contour: Contour,
    forwarder: Option<Child>,
    control_path: PathBuf,
    stats_path: PathBuf,
    control: Control,
    /// Scratch space for the scenarios' files (under `target/lab/`).
    pub(crate) dir: PathBuf,
    xtask: PathBuf,
    /// The QUIC flood tool.
    pub(crate) flood: PathBuf,
    /// Command-line options.
    pub(crate) options: Options,
    /// Dropped last: removes the namespaces and anything still running in them.
    pub(crate) net: Net,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Lab {
    fn up(root: &Path, net: Net, bins: Binaries, flood: PathBuf, options: Options) -> Result<Self> {
        let dir = root.join("target").join("lab");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // Each binary through a wrapper that runs it in its host's namespace, so the contour code that
        // quickstart and the benches use drives them unchanged (exec keeps the process id, so signals reach
        // the daemon itself).
        let wrapped = Binaries {
            relay: wrapper(&dir, Host::Relay, &bins.relay)?,
            agent: wrapper(&dir, Host::Agent, &bins.agent)?,
            cli: wrapper(&dir, Host::Client, &bins.cli)?,
        };
        // The helpers are this very program. A copy of the running image, because building the workspace's
        // binaries (above) may have replaced target/debug/xtask under it.
        let xtask = dir.join("bin").join("xtask-lab");
        fs::copy("/proc/self/exe", &xtask)
            .context("cannot copy the running xtask for the helpers")?;
        let control_path = dir.join("forwarder-control.json");
        let stats_path = dir.join("forwarder-stats.json");
        let control = Control::default();
        control.write(&control_path)?;
        contour::header("the forwarder between the CLI and the relay (in the router's namespace)");
        let mut forward = Net::command(Host::Router, &xtask);
        forward
            .args([
                "lab",
                "--helper",
                "forward",
                "--listen",
                FORWARDER_LISTEN,
                "--to",
                RELAY_LISTEN,
            ])
            .args([
                "--upstream-bind",
                Link::Relay.router_address(),
                "--seed",
                &options.seed.to_string(),
            ])
            .args(["--seconds", "14400", "--control"])
            .arg(&control_path)
            .arg("--stats")
            .arg(&stats_path);
        println!("{}", contour::shell_line(&forward));
        let log = fs::File::create(dir.join("forwarder.log"))?;
        let forwarder = forward
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start the forwarder")?;
        let dial = Dial {
            agent: None,
            client: Some(FORWARDER_LISTEN.to_owned()),
        };
        let contour = Contour::up_with(wrapped, &dir.join("contour"), RELAY_LISTEN, &dial, &[])?;
        Ok(Self {
            contour,
            forwarder: Some(forwarder),
            control_path,
            stats_path,
            control,
            dir,
            xtask,
            flood,
            options,
            net,
        })
    }

    /// Sets the forwarder's impairments (both directions, and the rebind counter).
    pub(crate) fn impair(&mut self, control: Control) -> Result<()> {
        self.control = control;
        control.write(&self.control_path)?;
        // The forwarder looks at the control file at least every 50 ms.
        thread::sleep(Duration::from_millis(200));
        Ok(())
    }

    /// The current impairments.
    pub(crate) fn control(&self) -> Control {
        self.control
    }

    /// The forwarder's counts so far.
    pub(crate) fn forwarder_stats(&self) -> Value {
        // Written twice a second; the last write is good enough.
        thread::sleep(Duration::from_millis(600));
        fs::read_to_string(&self.stats_path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null)
    }

    /// `cmdop connect forward MACHINE SPEC` on the client, once it says it is forwarding; stopped on drop.
    pub(crate) fn forward(&self, spec: &str) -> Result<Running> {
        let mut forward = self.contour.cli();
        forward.args(["connect", "forward", &self.contour.machine, spec]);
        Ok(Running(start_until(&mut forward, "forwarding", |line| {
            line.starts_with("forwarding")
        })?))
    }

    /// `xtask lab --helper NAME ARGS…` on `host`.
    pub(crate) fn helper(&self, host: Host, name: &str, args: &[&str]) -> Command {
        let mut command = Net::command(host, &self.xtask);
        command.args(["lab", "--helper", name]).args(args);
        command.stdin(Stdio::null());
        command
    }

    /// A program on `host` (through `ip netns exec`).
    pub(crate) fn on(&self, host: Host, program: &Path) -> Command {
        let mut command = Net::command(host, program);
        command.stdin(Stdio::null());
        command
    }

    /// Clears every impairment, makes sure the relay runs, then checks that the contour serves (the machine
    /// online, an `exec` through it working). If it does not, says how (`Some`) and repairs it: the agent
    /// restarted, then the relay too. Fails only when even that does not bring it back.
    fn reset(&mut self) -> Result<Option<String>> {
        self.net.set_cut(Link::Client, false)?;
        self.net.set_loss(Link::Client, 0)?;
        for link in [Link::Client, Link::Relay, Link::Agent] {
            self.net.set_bandwidth(link, 0)?;
        }
        let rebind = self.control.rebind;
        self.impair(Control {
            rebind,
            ..Control::default()
        })?;
        if self.contour.relay_pid().is_none() {
            self.contour.restart_relay()?;
        }
        let Err(damage) = self.healthy() else {
            return Ok(None);
        };
        let damage = format!("afterwards the contour did not serve: {damage:#}");
        println!("  {damage}; restarting the agent");
        self.contour.restart_agent()?;
        if self.healthy().is_ok() {
            return Ok(Some(format!("{damage} (restarting the agent repaired it)")));
        }
        println!("  still not serving; restarting the relay as well");
        self.contour.kill_relay()?;
        self.contour.restart_relay()?;
        self.healthy()
            .context("the contour does not serve even after restarting the agent and the relay")?;
        Ok(Some(format!(
            "{damage} (restarting the agent and the relay repaired it)"
        )))
    }

    /// The machine is listed online and `cmdop connect exec MACHINE -- true` succeeds within 20 s.
    pub(crate) fn healthy(&self) -> Result<()> {
        self.wait_online(Duration::from_secs(30))?;
        let mut exec = self.contour.cli();
        exec.args(["connect", "exec", &self.contour.machine, "--", "true"]);
        let done = timed(&mut exec, Duration::from_secs(20))?;
        if !done.status.success() {
            bail!(
                "`cmdop connect exec MACHINE -- true` failed: {}",
                done.stderr.trim()
            );
        }
        Ok(())
    }

    /// Waits until the relay lists the agent's machine as online.
    pub(crate) fn wait_online(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut list = self.contour.cli();
            list.args(["connect", "--list", "--json"]);
            if let Ok(done) = timed(&mut list, Duration::from_secs(20)) {
                let online = serde_json::from_str::<Value>(&done.stdout)
                    .ok()
                    .is_some_and(|machines| {
                        machines.as_array().is_some_and(|all| {
                            all.iter().any(|m| {
                                m["id"] == self.contour.machine.as_str() && m["online"] == true
                            })
                        })
                    });
                if online {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the agent's machine is not online {timeout:?} after asking");
            }
            thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut forwarder) = self.forwarder.take() {
            let _ = forwarder.kill();
            let _ = forwarder.wait();
        }
        // The contour (the daemons) and then the network (the namespaces) stop in their own drops, in field
        // order, right after this.
    }
}

/// Writes `dir/bin/NAME`, a script that runs `binary` inside `host`'s namespace with the same arguments.
fn wrapper(dir: &Path, host: Host, binary: &Path) -> Result<PathBuf> {
    let name = binary
        .file_name()
        .context("a binary path without a file name")?;
    let path = dir.join("bin").join(name);
    let script = format!(
        "#!/bin/sh\n# Runs {bin} in the lab's {ns} namespace (written by cargo xtask lab).\nexec ip netns exec {ns} '{bin}' \"$@\"\n",
        bin = binary.display(),
        ns = host.netns()
    );
    fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// A finished command: its status, output and how long it took.
#[derive(Debug)]
pub(crate) struct Timed {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
}

/// Runs `command` to completion, killing it after `timeout` (an error then).
pub(crate) fn timed(command: &mut Command, timeout: Duration) -> Result<Timed> {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", contour::shell_line(command)))?;
    let out = read_all(child.stdout.take());
    let err = read_all(child.stderr.take());
    let status = wait_child(&mut child, timeout)
        .with_context(|| format!("{} did not finish", contour::shell_line(command)))?;
    Ok(Timed {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    })
}

/// Waits for `child` for up to `timeout`; kills it and fails after that.
pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("cannot poll a child")? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {timeout:?}; killed");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a child's pipe to the end on a thread.
pub(crate) fn read_all<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// Starts a long-running `command` and waits for a stdout line that `pick` accepts (a server's "listening",
/// a forward's "forwarding …"); the rest of its stdout is discarded.
pub(crate) fn start_until(
    command: &mut Command,
    what: &str,
    pick: impl Fn(&str) -> bool + Send + 'static,
) -> Result<Child> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {}", contour::shell_line(command)))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && pick(&line) {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(_) => Ok(child),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} did not report {what} within 30 s",
                contour::shell_line(command)
            )
        }
    }
}

/// A child that is killed when dropped (servers, forwards).
#[derive(Debug)]
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
