//! A whole cmdop contour on this machine from the real binaries: relay, fleet, keys, one agent, a logged-in CLI.
//!
//! Shared by `cargo xtask quickstart` (state under `target/quickstart/`, fixed port, reused between runs) and
//! `cargo xtask bench` (state in a temporary directory, ephemeral port). Every command is printed as `$ …`
//! before it runs so that a person can repeat the step by hand.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The fleet the contour creates and enrols this machine into.
pub(crate) const FLEET: &str = "quickstart";

/// How long a daemon gets to print the line we wait for; a cold release binary starts in well under a second.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a daemon gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The three release binaries, by path.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    /// `cmdop-relay`.
    pub(crate) relay: PathBuf,
    /// `cmdop-agent`.
    pub(crate) agent: PathBuf,
    /// `cmdop`.
    pub(crate) cli: PathBuf,
}

impl Binaries {
    /// Builds the release binaries with cargo (printing the command) and returns their paths.
    pub(crate) fn build_release(root: &Path) -> Result<Self> {
        let mut build = crate::cargo_command();
        build.args([
            "build",
            "--release",
            "-p",
            "cmdop-relay",
            "-p",
            "cmdop-agent",
            "-p",
            "cmdop-cli",
        ]);
        run_shown(&mut build)?;
        Ok(Self::in_dir(&root.join("target").join("release")))
    }

    /// The release binaries a previous build left in `target/release`; fails naming the first one missing.
    pub(crate) fn existing_release(root: &Path) -> Result<Self> {
        Self::existing(
            &root.join("target").join("release"),
            "cargo build --release -p cmdop-relay -p cmdop-agent -p cmdop-cli",
        )
    }

    /// The three binaries in `dir`; fails naming the first one missing.
    pub(crate) fn existing_in(dir: &Path) -> Result<Self> {
        Self::existing(
            dir,
            "cargo build --release -p cmdop-relay -p cmdop-agent -p cmdop-cli",
        )
    }

    /// Builds the debug binaries exactly as `cargo xtask ci` and the end-to-end tests do (the whole
    /// workspace's binaries, so features unify the same way and nothing is rebuilt), and returns their paths.
    pub(crate) fn build_debug(root: &Path) -> Result<Self> {
        let mut build = crate::cargo_command();
        build.args(["build", "--locked", "--workspace", "--bins"]);
        run_shown(&mut build)?;
        Ok(Self::in_dir(&root.join("target").join("debug")))
    }

    /// The debug binaries a previous build left in `target/debug`.
    pub(crate) fn existing_debug(root: &Path) -> Result<Self> {
        Self::existing(
            &root.join("target").join("debug"),
            "cargo build --workspace --bins",
        )
    }

    fn existing(dir: &Path, build: &str) -> Result<Self> {
        let bins = Self::in_dir(dir);
        for bin in [&bins.relay, &bins.agent, &bins.cli] {
            if !bin.is_file() {
                bail!("{} is missing; build it with `{build}`", bin.display());
            }
        }
        Ok(bins)
    }

    fn in_dir(dir: &Path) -> Self {
        Self {
            relay: dir.join("cmdop-relay"),
            agent: dir.join("cmdop-agent"),
            cli: dir.join("cmdop"),
        }
    }
}

/// The process ids of a contour's daemons (0 for one that is not running).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DaemonPids {
    pub(crate) relay: u32,
    pub(crate) agent: u32,
}

/// Where the agent and the CLI dial the relay when that is not the address it listens on: the network lab puts
/// a router or a forwarder between them. `None` means the relay's own address.
#[derive(Debug, Clone, Default)]
pub(crate) struct Dial {
    /// The address the agent dials.
    pub(crate) agent: Option<String>,
    /// The address the CLI logs in to (and so every later `cmdop` command dials).
    pub(crate) client: Option<String>,
}

/// A running contour. Dropping it stops the agent and the relay (SIGTERM, then SIGKILL after a grace period).
#[derive(Debug)]
pub(crate) struct Contour {
    bins: Binaries,
    state: PathBuf,
    /// Flags added to `cmdop-relay serve` (and kept for a restart).
    relay_args: Vec<String>,
    // Stopped in this order: the agent first, so that it can tell the relay it is going offline.
    agent: Option<Daemon>,
    relay: Option<Daemon>,
    /// The relay's UDP address, `127.0.0.1:PORT`.
    pub(crate) address: String,
    /// The relay's certificate fingerprint, `SHA256:…`, which the agent and the CLI pin.
    pub(crate) fingerprint: String,
    /// The relay's Prometheus endpoint, `http://127.0.0.1:PORT/metrics`.
    pub(crate) metrics: String,
    /// The machine id the relay gave this machine's agent.
    pub(crate) machine: String,
    /// The arguments of `cmdop-agent` that run it, kept to restart it.
    agent_run: Vec<std::ffi::OsString>,
    /// Where the CLI dials the relay (the relay's own address unless the lab routes between them).
    client_dial: String,
}

impl Contour {
    /// Brings up a contour with all its state under `state`, the relay listening on `listen`.
    ///
    /// Existing state is reused: the relay's certificate and database, the fleet, the keys (kept in 0600 files
    /// under `state/secrets/`), the agent's identity and the CLI's login. Leftover daemons from an earlier run
    /// that was not stopped cleanly are stopped first.
    pub(crate) fn up(bins: Binaries, state: &Path, listen: &str) -> Result<Self> {
        Self::up_with(bins, state, listen, &Dial::default(), &[])
    }

    /// [`up`](Self::up), with the agent and the CLI dialling the relay where `dial` says, and more flags for
    /// `cmdop-relay serve` (limits, say).
    pub(crate) fn up_with(
        bins: Binaries,
        state: &Path,
        listen: &str,
        dial: &Dial,
        relay_args: &[&str],
    ) -> Result<Self> {
        fs::create_dir_all(state)
            .with_context(|| format!("cannot create the state directory {}", state.display()))?;
        fs::set_permissions(state, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", state.display()))?;
        stop_leftovers(state)?;
        let mut contour = Self {
            bins,
            state: state.to_path_buf(),
            relay_args: relay_args.iter().map(|a| (*a).to_owned()).collect(),
            agent: None,
            relay: None,
            address: String::new(),
            fingerprint: String::new(),
            metrics: String::new(),
            machine: String::new(),
            agent_run: Vec::new(),
            client_dial: String::new(),
        };

        header("the relay: a self-signed certificate and a SQLite database in its data directory");
        contour.start_relay(listen, false)?;
        let agent_dial = dial
            .agent
            .clone()
            .unwrap_or_else(|| contour.address.clone());
        let client_dial = dial
            .client
            .clone()
            .unwrap_or_else(|| contour.address.clone());

        header(&format!("the fleet `{FLEET}` and its keys"));
        contour.ensure_fleet()?;
        let agent_key = contour.ensure_key("agent")?;
        let member_key = contour.ensure_key("member")?;

        header("the agent for this machine: its own Ed25519 identity, dialling out to the relay");
        contour.agent_run = vec![
            "--config-dir".into(),
            contour.agent_dir().into(),
            "--kek-backend".into(),
            "file".into(),
            "run".into(),
            "--relay".into(),
            agent_dial.into(),
            "--relay-fingerprint".into(),
            contour.fingerprint.clone().into(),
            "--workspace".into(),
            FLEET.into(),
            "--api-key-file".into(),
            agent_key.into(),
        ];
        contour.start_agent(false)?;

        contour.client_dial.clone_from(&client_dial);
        header("the CLI, logged in with the member key");
        let mut login = contour.cli();
        login
            .arg("login")
            .arg("--relay")
            .arg(&client_dial)
            .arg("--relay-fingerprint")
            .arg(&contour.fingerprint)
            .arg("--token-file")
            .arg(&member_key);
        run_shown(&mut login)?;
        Ok(contour)
    }

    /// Starts `cmdop-relay serve` on `listen` and waits until it prints its fingerprint, address and metrics
    /// endpoint. `restart` appends to the relay's log instead of starting a new one, and insists on the
    /// fingerprint the agent and the CLI already pinned.
    fn start_relay(&mut self, listen: &str, restart: bool) -> Result<()> {
        let mut serve = Command::new(&self.bins.relay);
        serve
            .arg("serve")
            .arg("--data-dir")
            .arg(self.relay_dir())
            .args(["--listen", listen])
            // Metrics on an ephemeral loopback port: `cmdop-relay status` finds it through the data dir.
            .args(["--metrics", "127.0.0.1:0"])
            .args(&self.relay_args);
        let mut relay = Daemon::spawn("relay", serve, &self.state, restart)?;
        let fingerprint = relay.wait_for("the relay's fingerprint", |line| {
            line.strip_prefix("relay fingerprint: ")
                .map(|fp| fp.trim().to_owned())
        })?;
        if restart && fingerprint != self.fingerprint {
            bail!(
                "the restarted relay has fingerprint {fingerprint}, not {}",
                self.fingerprint
            );
        }
        self.fingerprint = fingerprint;
        self.address = relay.wait_for("the relay's address", |line| {
            line.strip_prefix("listening on ")
                .map(|addr| addr.trim().to_owned())
        })?;
        self.metrics = relay.wait_for("the relay's metrics address", |line| {
            line.strip_prefix("metrics on ")
                .map(|url| url.trim().to_owned())
        })?;
        println!(
            "  relay listening on {} with fingerprint {}; metrics on {}",
            self.address, self.fingerprint, self.metrics
        );
        self.relay = Some(relay);
        Ok(())
    }

    /// Starts `cmdop-agent run` and waits until it is online; `restart` appends to its log.
    fn start_agent(&mut self, restart: bool) -> Result<()> {
        let mut run = Command::new(&self.bins.agent);
        run.args(&self.agent_run);
        let mut agent = Daemon::spawn("agent", run, &self.state, restart)?;
        let online = agent.wait_for("the agent to come online", |line| {
            line.strip_prefix("online: ").map(str::to_owned)
        })?;
        self.machine = machine_id(&online)
            .context("the agent's `online:` line names no machine")?
            .to_owned();
        println!("  online: {online}");
        self.agent = Some(agent);
        Ok(())
    }

    /// Stops the agent (SIGTERM, then SIGKILL after a grace period) and starts it again with the same
    /// identity and settings.
    pub(crate) fn restart_agent(&mut self) -> Result<()> {
        drop(self.agent.take());
        self.start_agent(true)
    }

    /// Kills the relay with SIGKILL (no drain, no goodbye: a crash) and waits for it to be gone.
    pub(crate) fn kill_relay(&mut self) -> Result<()> {
        if let Some(mut relay) = self.relay.take() {
            println!("$ kill -KILL {}", relay.child.id());
            relay.child.kill().context("cannot kill the relay")?;
            relay.child.wait().context("cannot reap the relay")?;
        }
        Ok(())
    }

    /// Starts the relay again on the address and data directory it had (after [`kill_relay`](Self::kill_relay)).
    pub(crate) fn restart_relay(&mut self) -> Result<()> {
        let listen = self.address.clone();
        self.start_relay(&listen, true)
    }

    /// The relay's process id, while it runs.
    pub(crate) fn relay_pid(&self) -> Option<u32> {
        self.relay.as_ref().map(|daemon| daemon.child.id())
    }

    /// The agent's process id, while it runs.
    pub(crate) fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|daemon| daemon.child.id())
    }

    /// The 0600 file holding the fleet's agent key.
    pub(crate) fn agent_key_file(&self) -> PathBuf {
        self.secrets_dir().join("agent.key")
    }

    /// A `cmdop` command using this contour's client directory (and so its saved login). It pins this
    /// machine's agent key on first contact without asking (`--accept-new`): the steps run without a terminal.
    pub(crate) fn cli(&self) -> Command {
        let mut command = Command::new(&self.bins.cli);
        command
            .arg("--config-dir")
            .arg(self.state.join("client"))
            .arg("--accept-new");
        command.stdin(Stdio::null());
        command
    }

    /// A `cmdop` command of another person than [`cli`](Self::cli)'s: its own config directory and so its own
    /// client key, the same member API key, given with each command. What an agent grants per client key
    /// (its share of the machine's streams) is this person's own.
    pub(crate) fn other_person_cli(&self) -> Command {
        let mut command = Command::new(&self.bins.cli);
        command
            .arg("--config-dir")
            .arg(self.state.join("other-person"))
            .args(["--relay", &self.client_dial])
            .args(["--relay-fingerprint", &self.fingerprint])
            .arg("--api-key-file")
            .arg(self.secrets_dir().join("member.key"))
            .arg("--accept-new");
        command.stdin(Stdio::null());
        command
    }

    /// The 0600 file of the fleet's admin API key (created on first use): what the lock's admin verbs log in
    /// with.
    pub(crate) fn admin_key(&self) -> Result<PathBuf> {
        self.ensure_key("admin")
    }

    /// `cmdop-relay ARGS… --data-dir DIR` for this contour's relay (admin verbs, `status`).
    pub(crate) fn relay_command(&self, args: &[&str]) -> Command {
        self.admin(args)
    }

    /// The command that opens an interactive shell on this machine through the relay: `cmdop connect
    /// <machine>`. `cargo xtask quickstart` runs it when stdin and stdout are a terminal (and `--no-shell` is
    /// not given), waits for the shell to exit, then keeps the contour up until Ctrl-C. `None` would make the
    /// quickstart skip the step, for a CLI that cannot open shells.
    pub(crate) fn shell_command(&self) -> Option<Command> {
        let mut shell = self.cli();
        shell.args(["connect", &self.machine]);
        Some(shell)
    }

    /// A `cmdop-agent` command using this contour's agent directory.
    pub(crate) fn agent_command(&self) -> Command {
        let mut command = Command::new(&self.bins.agent);
        command.arg("--config-dir").arg(self.agent_dir());
        command.stdin(Stdio::null());
        command
    }

    /// Waits until the relay or the agent exits (for instance on Ctrl-C, which reaches them too) and says which.
    pub(crate) fn wait(&mut self) -> Result<String> {
        loop {
            for daemon in self.agent.iter_mut().chain(self.relay.iter_mut()) {
                if let Some(status) = daemon.child.try_wait().context("cannot poll a child")? {
                    return Ok(format!("the {} exited with {status}", daemon.name));
                }
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The process ids of the relay and the agent, for CPU accounting.
    pub(crate) fn daemon_pids(&self) -> DaemonPids {
        let pid = |daemon: &Option<Daemon>| daemon.as_ref().map_or(0, |d| d.child.id());
        DaemonPids {
            relay: pid(&self.relay),
            agent: pid(&self.agent),
        }
    }

    /// The log file of the `relay` or the `agent`.
    pub(crate) fn log_path(&self, name: &str) -> PathBuf {
        self.state.join(format!("{name}.log"))
    }

    /// Stops the agent, then the relay.
    pub(crate) fn stop(&mut self) {
        // Dropping a daemon stops it.
        drop(self.agent.take());
        drop(self.relay.take());
    }

    fn relay_dir(&self) -> PathBuf {
        self.state.join("relay")
    }

    fn agent_dir(&self) -> PathBuf {
        self.state.join("agent")
    }

    fn secrets_dir(&self) -> PathBuf {
        self.state.join("secrets")
    }

    fn ensure_fleet(&self) -> Result<()> {
        let mut list = self.admin(&["fleet", "list"]);
        let listing = capture(&mut list)?;
        if fleet_listed(&listing, FLEET) {
            println!("  fleet {FLEET} exists");
            return Ok(());
        }
        let mut create = self.admin(&["fleet", "create", FLEET]);
        run_shown(&mut create)
    }

    /// Returns the 0600 file holding a `role` key for the fleet, creating the key if there is none the relay
    /// still accepts.
    fn ensure_key(&self, role: &str) -> Result<PathBuf> {
        let dir = self.secrets_dir();
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
        let secret = dir.join(format!("{role}.key"));
        // The id is not secret; keeping it beside the secret lets us ask the relay whether the key still works
        // without reading the secret back.
        let id_file = dir.join(format!("{role}.key.id"));
        if let (true, Ok(id)) = (secret.exists(), fs::read_to_string(&id_file)) {
            let mut list = self.admin(&["key", "list"]);
            if key_active(&capture(&mut list)?, id.trim()) {
                println!("  {role} key {} exists ({})", id.trim(), secret.display());
                return Ok(secret);
            }
        }
        // Either no key yet or the relay's data was reset: start over with a fresh key.
        let _ = fs::remove_file(&secret);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .with_context(|| format!("cannot create {}", secret.display()))?;
        let mut create = self.admin(&["key", "create", "--fleet", FLEET, "--role", role]);
        // The secret goes straight from the relay binary into its 0600 file and never through this process.
        create.stdout(file).stderr(Stdio::piped());
        println!("{} > {}", shell_line(&create), secret.display());
        let output = create
            .output()
            .context("cannot run cmdop-relay key create")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            bail!(
                "`cmdop-relay key create` exited with {}: {}",
                output.status,
                stderr.trim()
            );
        }
        let id = created_key_id(&stderr)
            .with_context(|| format!("no key id in the output of key create: {stderr:?}"))?;
        fs::write(&id_file, format!("{id}\n"))
            .with_context(|| format!("cannot write {}", id_file.display()))?;
        println!("  created {role} key {id}");
        Ok(secret)
    }

    fn admin(&self, verb: &[&str]) -> Command {
        let mut command = Command::new(&self.bins.relay);
        command.args(verb).arg("--data-dir").arg(self.relay_dir());
        command.stdin(Stdio::null());
        command
    }
}

impl Drop for Contour {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops the daemons a quickstart under `state` left running (`cargo xtask quickstart --stop`).
pub(crate) fn stop_leftovers(state: &Path) -> Result<bool> {
    let mut stopped = false;
    for name in ["agent", "relay"] {
        let pid_file = state.join(format!("{name}.pid"));
        let Ok(text) = fs::read_to_string(&pid_file) else {
            continue;
        };
        let _ = fs::remove_file(&pid_file);
        let Ok(pid) = text.trim().parse::<u32>() else {
            continue;
        };
        // A pid file outlives its process, and the pid may since belong to something else: only signal a
        // process that is still one of ours.
        let ours = fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("cmdop"));
        if !ours {
            continue;
        }
        println!("  stopping the {name} left running by an earlier run (pid {pid})");
        signal(pid, "TERM")?;
        let deadline = Instant::now() + STOP_GRACE;
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        if Path::new(&format!("/proc/{pid}")).exists() {
            signal(pid, "KILL")?;
        }
        stopped = true;
    }
    Ok(stopped)
}

/// A long-running child whose stdout and stderr go straight to a log file in the state directory.
///
/// The file, not a pipe, so that the daemon never depends on this process staying alive to drain its output
/// (Ctrl-C ends this process together with the daemons, and their last lines still reach the log).
#[derive(Debug)]
struct Daemon {
    name: &'static str,
    child: Child,
    log_path: PathBuf,
    /// Where this process's output starts in the log (a restarted daemon appends to its predecessor's).
    log_start: usize,
    pid_file: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, mut command: Command, state: &Path, append: bool) -> Result<Self> {
        let log_path = state.join(format!("{name}.log"));
        let redirect = if append { ">>" } else { ">" };
        println!(
            "{} {redirect} {} 2>&1 &",
            shell_line(&command),
            log_path.display()
        );
        let log = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let log_start = usize::try_from(log.metadata().map_or(0, |m| m.len())).unwrap_or(0);
        let log_too = log.try_clone().context("cannot share the log file")?;
        command.stdin(Stdio::null()).stdout(log).stderr(log_too);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start the {name}"))?;
        let pid_file = state.join(format!("{name}.pid"));
        fs::write(&pid_file, format!("{}\n", child.id()))
            .with_context(|| format!("cannot write {}", pid_file.display()))?;
        Ok(Self {
            name,
            child,
            log_path,
            log_start,
            pid_file,
        })
    }

    /// Waits for a log line that `pick` accepts, failing with the daemon's output if it exits or is slow.
    fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            // Read before checking for exit, so that a line printed just before exiting is still seen.
            let whole = fs::read_to_string(&self.log_path).unwrap_or_default();
            let text = whole.get(self.log_start..).unwrap_or_default();
            // Only whole lines: the daemon may be half-way through writing the last one.
            let complete = text
                .rfind('\n')
                .map_or("", |end| text.get(..end).unwrap_or(""));
            if let Some(found) = complete.lines().find_map(&mut pick) {
                return Ok(found);
            }
            if let Some(status) = self.child.try_wait().context("cannot poll a child")? {
                bail!(
                    "the {} exited with {status} before {what}; its log {}:\n{}",
                    self.name,
                    self.log_path.display(),
                    text.trim_end()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {STARTUP_TIMEOUT:?} waiting for {what}; the {}'s log {}:\n{}",
                    self.name,
                    self.log_path.display(),
                    text.trim_end()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

// On drop rather than by an explicit call, so that a daemon started by a step that then fails (say, the relay
// never printing its address) is stopped too.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first: the agent then tells the relay it is going offline.
            let _ = signal(self.child.id(), "TERM");
            let deadline = Instant::now() + STOP_GRACE;
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() >= deadline {
                    let _ = self.child.kill();
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.pid_file);
    }
}

/// Sends a signal with kill(1): std only offers SIGKILL, and this crate stays free of unsafe code and libc.
fn signal(pid: u32, name: &str) -> Result<()> {
    // kill(1) fails when the process is already gone, which is what we wanted anyway; only being unable to
    // run it at all is an error.
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .context("cannot run kill")?;
    Ok(())
}

/// Prints a short step header.
pub(crate) fn header(text: &str) {
    println!("\n== {text}");
}

/// The command as a person would type it: program and arguments, quoted where a shell would need it.
pub(crate) fn shell_line(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    let quoted: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
    format!("$ {}", quoted.join(" "))
}

fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Prints the command, runs it with inherited stdout and stderr, and fails on a non-zero exit.
pub(crate) fn run_shown(command: &mut Command) -> Result<()> {
    println!("{}", shell_line(command));
    let status = command
        .status()
        .with_context(|| format!("cannot run {}", command.get_program().to_string_lossy()))?;
    if !status.success() {
        bail!("`{}` exited with {status}", shell_line(command));
    }
    Ok(())
}

/// Runs a command quietly (a lookup, not a step) and returns its stdout; fails with its stderr.
pub(crate) fn capture(command: &mut Command) -> Result<String> {
    let output: Output = command
        .output()
        .with_context(|| format!("cannot run {}", command.get_program().to_string_lossy()))?;
    if !output.status.success() {
        bail!(
            "`{}` exited with {}: {}",
            shell_line(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The machine id in the rest of an agent's `online: machine <uuid> (…)` line.
fn machine_id(online: &str) -> Option<&str> {
    online
        .strip_prefix("machine ")
        .and_then(|rest| rest.split_whitespace().next())
}

/// Whether `cmdop-relay fleet list` (`NAME\tID\tCREATED` rows under a header) lists `fleet`.
fn fleet_listed(listing: &str, fleet: &str) -> bool {
    listing
        .lines()
        .skip(1)
        .any(|row| row.split_whitespace().next() == Some(fleet))
}

/// Whether `cmdop-relay key list` shows the key `id` as active.
fn key_active(listing: &str, id: &str) -> bool {
    listing.lines().skip(1).any(|row| {
        let mut columns = row.split_whitespace();
        columns.next() == Some(id) && columns.any(|c| c == "active")
    })
}

/// The id in key create's `created <role> key <id> for fleet …` message.
fn created_key_id(stderr: &str) -> Option<&str> {
    let mut words = stderr.split_whitespace().skip_while(|w| *w != "key");
    words.next()?;
    words.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_agents_online_line() {
        let rest = "machine e601442a-5e40-4e96-b1a6-00745158442a (vm, key hikgo-kjzpb) in fleet quickstart";
        assert_eq!(
            machine_id(rest),
            Some("e601442a-5e40-4e96-b1a6-00745158442a")
        );
        assert_eq!(machine_id("something else"), None);
    }

    #[test]
    fn finds_a_fleet_by_name_not_by_substring() {
        let listing = "NAME\tID\tCREATED\nquickstart2\tx\ty\nquickstart\t8957\t2026\n";
        assert!(fleet_listed(listing, "quickstart"));
        assert!(!fleet_listed(
            "NAME\tID\tCREATED\nquickstart2\tx\ty\n",
            "quickstart"
        ));
        assert!(!fleet_listed("NAME\tID\tCREATED\n", "NAME"));
    }

    #[test]
    fn a_revoked_key_is_not_reused() {
        let listing = "ID\tKIND\tROLE/USER\tFLEETS\tLABEL\tEXPIRES\tSTATUS\tLAST USED\n\
            17057b2aee6a5393\tapi-key\tmember\tquickstart\t-\t-\tactive\t-\n\
            b89249fd8a71ac76\tapi-key\tagent\tquickstart\t-\t-\trevoked\t-\n";
        assert!(key_active(listing, "17057b2aee6a5393"));
        assert!(!key_active(listing, "b89249fd8a71ac76"));
        assert!(!key_active(listing, "0000000000000000"));
    }

    #[test]
    fn reads_the_id_of_a_created_key() {
        let stderr = "created agent key b89249fd8a71ac76 for fleet quickstart; the secret below is shown only once:\n";
        assert_eq!(created_key_id(stderr), Some("b89249fd8a71ac76"));
        assert_eq!(created_key_id("error: no such fleet"), None);
    }

    #[test]
    fn shows_commands_the_way_a_shell_takes_them() {
        let mut command = Command::new("cmdop");
        command.args(["connect", "exec", "m", "--", "echo", "it's here", ""]);
        assert_eq!(
            shell_line(&command),
            r"$ cmdop connect exec m -- echo 'it'\''s here' ''"
        );
    }
}
