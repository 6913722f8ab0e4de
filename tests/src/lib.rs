//! Harness for the end-to-end tests: runs the real `cmdop-relay`, `cmdop-agent` and `cmdop` binaries, each
//! with its own temporary state directory, talking real QUIC on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs,
    missing_debug_implementations
)]

pub mod terminal;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// The directory holding the workspace's binaries (`target/debug`) and examples (`target/debug/examples`, the
/// client library's example programs), built on first use.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // The test executable lives in target/<profile>/deps/; the binaries one level up.
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile> directory")
            .to_path_buf();
        // Cargo builds binaries only for the package under test, so make sure the others exist and are fresh.
        // Exactly the build `cargo xtask ci` runs first (same packages, same features), so there it is a no-op.
        // Serialised: parallel test threads would otherwise race on cargo's lock for nothing.
        static BUILD: Mutex<()> = Mutex::new(());
        let _guard = BUILD.lock().unwrap();
        let mut build = Command::new(env!("CARGO"));
        // A test process carries the variables cargo sets for the package under test; ring's build script
        // tracks CARGO_MANIFEST_DIR, so building with them would rebuild the binaries (and the next plain build
        // would rebuild them back). `cargo xtask` strips the same set (xtask/src/main.rs).
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if is_cargo_package_variable(&key) {
                build.env_remove(key.as_ref());
            }
        }
        let status = build
            .args(["build", "--quiet", "--workspace", "--bins", "--examples"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
        dir
    })
}

/// Variables cargo sets for the package it runs or tests, which must not leak into a nested cargo build.
fn is_cargo_package_variable(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_BIN_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
}

/// A command for one of the workspace binaries, with every `CMDOP_*`, `RUST_LOG` and XDG variable cleared
/// so that the developer's own settings never leak into a test.
pub fn command(binary: &str) -> Command {
    let mut command = Command::new(bin_dir().join(binary));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CMDOP_")
            || key.starts_with("XDG_")
            || key == "RUST_LOG"
            || key == "NO_COLOR"
        {
            command.env_remove(key);
        }
    }
    command.stdin(Stdio::null());
    command
}

/// Runs a command to completion, returning its output; panics with both streams if it could not start.
/// Its stderr (where logs go) must not contain any secret the harness created (see [`register_secret`]).
pub fn run(command: &mut Command) -> Output {
    let output = command.output().expect("start command");
    assert_no_secret(
        &format!("{command:?}"),
        &String::from_utf8_lossy(&output.stderr),
    );
    output
}

/// Every secret the harness created in this process (API keys, tokens), so that every log any test's processes
/// write can be checked for them: a secret must never reach a log, at any level.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remembers a secret (a credential text) to grep all later logs for; also its secret part alone.
pub fn register_secret(secret: &str) {
    // Short texts (a deliberately malformed key in a test) would match innocent log lines.
    if secret.len() < 16 {
        return;
    }
    let mut secrets = SECRETS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    secrets.push(secret.to_owned());
    // `cmdop_ak_<id>_<secret>`: the id is not secret and is logged on purpose; the part after it is.
    if let Some(tail) = secret
        .rsplit('_')
        .next()
        .filter(|t| t.len() >= 16 && t.len() < secret.len())
    {
        secrets.push(tail.to_owned());
    }
}

/// Panics if `log` contains a registered secret, naming `whose` log it was (but not the secret).
pub fn assert_no_secret(whose: &str, log: &str) {
    let secrets = SECRETS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if secrets.iter().any(|secret| log.contains(secret.as_str())) {
        drop(secrets);
        panic!("a secret the test created appears in the log of {whose}");
    }
}

/// Runs a command that must succeed and returns its stdout as text.
pub fn run_ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "command {command:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 stdout")
}

/// A long-running child process that is killed when dropped, with its output lines collected.
pub struct Daemon {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Daemon {
    /// Starts `command` with stdout and stderr captured line by line.
    pub fn spawn(mut command: Command) -> Self {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn daemon");
        let (tx, lines) = mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until an output line satisfies `pick`, returning what `pick` extracted.
    pub fn wait_for<T>(&mut self, timeout: Duration, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        for line in &self.seen {
            if let Some(found) = pick(line) {
                return found;
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = pick(&line);
                    self.seen.push(line);
                    if let Some(found) = found {
                        return found;
                    }
                }
                Err(_) => panic!(
                    "timed out after {timeout:?}; output so far:\n{}",
                    self.output()
                ),
            }
        }
    }

    /// Everything the daemon printed so far.
    pub fn output(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        // Collect the rest of its output (the reader threads end once the pipes close), then check it all
        // for secrets. Not while already panicking: a second panic would abort and hide the first.
        if !std::thread::panicking() {
            while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
                self.seen.push(line);
            }
            let program = format!("{:?}", self.child.id());
            assert_no_secret(&format!("daemon pid {program}"), &self.seen.join("\n"));
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A whole contour on loopback: a relay with its own data directory, plus helpers to administer it and to
/// start agents and CLIs against it. Everything lives in one temporary directory.
pub struct Contour {
    pub root: tempfile::TempDir,
    /// The relay process; `None` when the test runs the relay in-process (see [`Contour::attach`]).
    pub relay: Option<Daemon>,
    pub address: String,
    pub fingerprint: String,
}

impl Contour {
    /// Starts `cmdop-relay serve` on an ephemeral loopback port and waits until it listens.
    pub fn start() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let (relay, address, fingerprint) = Self::serve(&root.path().join("relay"), "127.0.0.1:0");
        Self {
            root,
            relay: Some(relay),
            address,
            fingerprint,
        }
    }

    /// A contour around a relay the test runs itself (in-process), whose data directory is
    /// `root/relay` so the admin verbs reach the same store.
    pub fn attach(root: tempfile::TempDir, address: String, fingerprint: String) -> Self {
        Self {
            root,
            relay: None,
            address,
            fingerprint,
        }
    }

    /// Kills the relay process (SIGKILL).
    pub fn kill_relay(&mut self) {
        if let Some(relay) = self.relay.as_mut() {
            relay.kill();
        }
    }

    fn serve(data_dir: &Path, listen: &str) -> (Daemon, String, String) {
        let mut command = command("cmdop-relay");
        command
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", listen]);
        let mut relay = Daemon::spawn(command);
        let fingerprint = relay.wait_for(Duration::from_secs(30), |line| {
            line.strip_prefix("relay fingerprint: ").map(str::to_owned)
        });
        let address = relay.wait_for(Duration::from_secs(30), |line| {
            line.strip_prefix("listening on ").map(str::to_owned)
        });
        (relay, address, fingerprint)
    }

    /// Kills the relay (SIGKILL) and starts it again on the same address with the same data.
    pub fn restart_relay(&mut self) {
        self.kill_relay();
        let (relay, address, fingerprint) = Self::serve(&self.data_dir(), &self.address);
        assert_eq!(address, self.address);
        assert_eq!(
            fingerprint, self.fingerprint,
            "the relay's certificate must survive a restart"
        );
        self.relay = Some(relay);
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("relay")
    }

    /// Runs an admin verb (`cmdop-relay VERB… --data-dir DIR`) that must succeed; returns its output.
    pub fn admin(&self, args: &[&str]) -> Output {
        let output = run(command("cmdop-relay")
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir()));
        assert!(
            output.status.success(),
            "cmdop-relay {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Creates an API key and writes its secret to a 0600 file; returns (key id, file).
    pub fn api_key(&self, fleet: &str, role: &str) -> (String, PathBuf) {
        let output = self.admin(&["key", "create", "--fleet", fleet, "--role", role]);
        let secret = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        register_secret(&secret);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let id = stderr
            .split_whitespace()
            .skip_while(|word| *word != "key")
            .nth(1)
            .unwrap_or_else(|| panic!("no key id in {stderr:?}"))
            .to_owned();
        let file = self.secret_file(&format!("{fleet}-{role}-{id}.key"), &secret);
        (id, file)
    }

    /// Writes a secret to a 0600 file in the contour's directory.
    pub fn secret_file(&self, name: &str, secret: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        register_secret(secret);
        let path = self.root.path().join(name);
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// Starts an agent with its own config directory `agents/<name>`, enrolled in `fleet` with `key_file`.
    pub fn agent(&self, name: &str, fleet: &str, key_file: &Path, extra: &[&str]) -> Daemon {
        let mut command = command("cmdop-agent");
        command
            .arg("--config-dir")
            .arg(self.root.path().join("agents").join(name))
            .args([
                "--kek-backend",
                "file",
                "run",
                "--relay",
                &self.address,
                "--relay-fingerprint",
                &self.fingerprint,
            ])
            .args(["--workspace", fleet, "--hostname", name, "--api-key-file"])
            .arg(key_file)
            .args(extra);
        Daemon::spawn(command)
    }

    /// A `cmdop` command with its own config directory `clients/<name>`, pointed at this relay.
    pub fn cli(&self, name: &str) -> Command {
        let mut command = command("cmdop");
        command
            .arg("--config-dir")
            .arg(self.root.path().join("clients").join(name))
            .args([
                "--relay",
                &self.address,
                "--relay-fingerprint",
                &self.fingerprint,
            ]);
        command
    }

    /// `cmdop connect --list --json` as seen by `client` with `key_file`, parsed.
    pub fn list(
        &self,
        client: &str,
        key_file: &Path,
        workspace: Option<&str>,
    ) -> Vec<serde_json::Value> {
        let mut command = self.cli(client);
        command
            .arg("--api-key-file")
            .arg(key_file)
            .args(["connect", "--list", "--json"]);
        if let Some(workspace) = workspace {
            command.args(["--workspace", workspace]);
        }
        serde_json::from_str(&run_ok(&mut command))
            .expect("connect --list --json prints a JSON array")
    }
}

/// One fleet `prod` with one online machine `web-1`, and a member key to reach it.
pub struct OneMachine {
    pub agent: Daemon,
    pub machine_id: String,
    pub member_key: PathBuf,
}

impl Contour {
    /// Creates fleet `prod`, an agent key and a member key, and starts agent `web-1`; waits until it is online.
    pub fn one_machine(&self) -> OneMachine {
        self.admin(&["fleet", "create", "prod"]);
        let (_, agent_key) = self.api_key("prod", "agent");
        let (_, member_key) = self.api_key("prod", "member");
        let mut agent = self.agent("web-1", "prod", &agent_key, &[]);
        let machine_id = online_id(&mut agent);
        OneMachine {
            agent,
            machine_id,
            member_key,
        }
    }
}

/// Waits for an agent's `online: machine <uuid> …` line and returns the uuid.
pub fn online_id(agent: &mut Daemon) -> String {
    agent.wait_for(Duration::from_secs(30), |line| {
        line.strip_prefix("online: machine ")
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    })
}
