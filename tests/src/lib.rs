//! Harness for the end-to-end tests: runs the real `cmdop-relay`, `cmdop-agent` and `cmdop` binaries, each
//! with its own temporary state directory, talking real QUIC on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs,
    missing_debug_implementations
)]

mod contour;
pub mod hostile_machine;
mod lock;
pub mod sshd;
pub mod terminal;

pub use contour::{Contour, ContourBuilder, Machine, OneMachine, online_id};

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

    /// Asks the process to stop (SIGTERM, as `systemctl stop` does) and waits up to `timeout` for it to exit;
    /// returns how long it took. Panics, with its output, if it did not exit in time.
    pub fn terminate(&mut self, timeout: Duration) -> Duration {
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        loop {
            if self
                .child
                .try_wait()
                .expect("wait for the daemon")
                .is_some()
            {
                return started.elapsed();
            }
            if started.elapsed() > timeout {
                panic!(
                    "did not exit within {timeout:?} of SIGTERM; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
