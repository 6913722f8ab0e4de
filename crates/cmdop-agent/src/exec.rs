//! One-shot command execution on the agent: a child in its own process group, live output, stdin, signals,
//! and a timeout that kills the whole group.
//!
//! Transport-free: input arrives on a channel and output leaves on a bounded one, so a slow reader on the
//! other end slows the child (its pipe fills) instead of growing a buffer here.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, User, getuid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// The size of one output chunk; large enough to keep syscalls rare, small enough to keep frames small.
pub const OUTPUT_CHUNK: usize = 32 * 1024;

/// The PATH a command sees: the agent's own environment may be a service manager's minimal one.
pub(crate) const SANE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// Program and arguments; the program is looked up in the sane `PATH` the command gets.
    pub argv: Vec<String>,
    /// Kill the process group after this long; `None` waits forever.
    pub timeout: Option<Duration>,
}

/// Input from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecInput {
    /// Bytes for the child's stdin.
    Stdin(Vec<u8>),
    /// The client's stdin ended: close the child's.
    StdinEof,
    /// Deliver a signal (a number as in `kill -l`) to the child's process group.
    Signal(i32),
}

/// Output for the client, in the order the child produced it on each stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    /// A chunk of stdout.
    Stdout(Vec<u8>),
    /// A chunk of stderr.
    Stderr(Vec<u8>),
}

/// How the child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Signaled(i32),
    /// The timeout expired and the process group was killed.
    TimedOut,
}

impl ExecOutcome {
    /// The exit code a shell would report: the code, 128+N for a signal, 124 for a timeout (as `timeout(1)`).
    pub fn shell_code(self) -> i32 {
        match self {
            Self::Exited(code) => code,
            Self::Signaled(signal) => 128 + signal,
            Self::TimedOut => 124,
        }
    }
}

/// Why a command could not be run at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The request named no program.
    #[error("no command given: pass the program and its arguments after `--`")]
    EmptyCommand,
    /// The program could not be started.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program that was asked for.
        program: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Waiting for the child failed.
    #[error("lost track of the command: {0}")]
    Wait(std::io::Error),
}

/// Runs `spec` to completion, forwarding `input` to the child and its output to `output`.
///
/// Returns once the child has exited and both output pipes are drained. If `output` is closed (the client
/// went away), the process group is killed rather than left running unobserved.
pub async fn run(
    spec: ExecSpec,
    mut input: mpsc::Receiver<ExecInput>,
    output: mpsc::Sender<ExecOutput>,
) -> Result<ExecOutcome, ExecError> {
    let program = spec.argv.first().ok_or(ExecError::EmptyCommand)?.clone();
    let mut child = spawn(&spec.argv).map_err(|source| ExecError::Spawn { program, source })?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);

    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut stdin = child.stdin.take();
    let out_task = tokio::spawn(pump(stdout, output.clone(), ExecOutput::Stdout));
    let err_task = tokio::spawn(pump(stderr, output.clone(), ExecOutput::Stderr));

    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut input_open = true;
    let outcome = loop {
        tokio::select! {
            status = child.wait() => break status_outcome(status.map_err(ExecError::Wait)?),
            () = sleep_until(deadline) => {
                signal_group(pgid, Signal::SIGKILL);
                let _ = child.wait().await;
                break ExecOutcome::TimedOut;
            }
            () = output.closed() => {
                signal_group(pgid, Signal::SIGKILL);
                let _ = child.wait().await;
                break ExecOutcome::Signaled(Signal::SIGKILL as i32);
            }
            message = input.recv(), if input_open => match message {
                Some(ExecInput::Stdin(bytes)) => write_stdin(&mut stdin, &bytes).await,
                Some(ExecInput::StdinEof) => stdin = None,
                Some(ExecInput::Signal(number)) => {
                    if let Ok(signal) = Signal::try_from(number) {
                        signal_group(pgid, signal);
                    }
                }
                None => {
                    input_open = false;
                    stdin = None;
                }
            },
        }
    };
    // A grandchild may still hold the pipes open; the group is gone or killed, so this ends.
    if outcome == ExecOutcome::TimedOut {
        out_task.abort();
        err_task.abort();
    } else {
        let _ = out_task.await;
        let _ = err_task.await;
    }
    Ok(outcome)
}

fn spawn(argv: &[String]) -> std::io::Result<Child> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let account = account();
    let mut command = Command::new(resolve_program(program));
    command
        .args(args)
        .env_clear()
        .env("PATH", SANE_PATH)
        .env("HOME", &account.home)
        .env("USER", &account.name)
        .env("LOGNAME", &account.name)
        .env("SHELL", &account.shell)
        .env(
            "LANG",
            std::env::var_os("LANG").unwrap_or_else(|| OsString::from("C.UTF-8")),
        )
        .current_dir(&account.home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout or Ctrl-C reaches everything it started.
        .process_group(0)
        .kill_on_drop(true);
    command.spawn()
}

/// The account the agent runs as: commands run as that user, in its home directory.
#[derive(Debug, Clone)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// Home directory (falls back to `/` when the account has none).
    pub home: PathBuf,
    /// Login shell (falls back to `/bin/sh`).
    pub shell: PathBuf,
}

/// Looks up the current user in the password database, falling back to the environment.
pub fn account() -> Account {
    match User::from_uid(getuid()) {
        Ok(Some(user)) => Account {
            name: user.name,
            home: if user.dir.is_dir() {
                user.dir
            } else {
                PathBuf::from("/")
            },
            shell: if user.shell.as_os_str().is_empty() {
                PathBuf::from("/bin/sh")
            } else {
                user.shell
            },
        },
        _ => Account {
            name: std::env::var("USER").unwrap_or_else(|_| getuid().to_string()),
            home: std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from),
            shell: PathBuf::from("/bin/sh"),
        },
    }
}

/// Finds `program` in the sane PATH, since the child gets that PATH rather than the agent's.
fn resolve_program(program: &str) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    SANE_PATH
        .split(':')
        .map(|dir| PathBuf::from(dir).join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(program))
}

async fn pump<R>(
    reader: Option<R>,
    output: mpsc::Sender<ExecOutput>,
    wrap: fn(Vec<u8>) -> ExecOutput,
) where
    R: tokio::io::AsyncRead + Unpin,
{
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let chunk = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
                if output.send(wrap(chunk)).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn write_stdin(stdin: &mut Option<ChildStdin>, bytes: &[u8]) {
    let Some(pipe) = stdin.as_mut() else { return };
    // A child that closed its stdin (like `true`) is not an error for the client: drop further input.
    if pipe.write_all(bytes).await.is_err() || pipe.flush().await.is_err() {
        *stdin = None;
    }
}

fn signal_group(pgid: Option<Pid>, signal: Signal) {
    if let Some(pgid) = pgid {
        // ESRCH just means the group is already gone.
        let _ = killpg(pgid, signal);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn status_outcome(status: std::process::ExitStatus) -> ExecOutcome {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExecOutcome::Exited(code),
        (None, Some(signal)) => ExecOutcome::Signaled(signal),
        (None, None) => ExecOutcome::Exited(255),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(
        argv: &[&str],
        stdin: &[ExecInput],
        timeout: Option<Duration>,
    ) -> (ExecOutcome, Vec<u8>, Vec<u8>) {
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        for message in stdin {
            in_tx.send(message.clone()).await.unwrap();
        }
        let spec = ExecSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        let task = tokio::spawn(run(spec, in_rx, out_tx));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(chunk) = out_rx.recv().await {
            match chunk {
                ExecOutput::Stdout(b) => out.extend(b),
                ExecOutput::Stderr(b) => err.extend(b),
            }
        }
        drop(in_tx);
        (task.await.unwrap().unwrap(), out, err)
    }

    #[tokio::test]
    async fn stdout_stderr_and_exit_code_stay_apart() {
        let (outcome, out, err) =
            collect(&["sh", "-c", "echo out; echo err >&2; exit 3"], &[], None).await;
        assert_eq!(outcome, ExecOutcome::Exited(3));
        assert_eq!(out, b"out\n");
        assert_eq!(err, b"err\n");
    }

    #[tokio::test]
    async fn stdin_and_eof_reach_the_child() {
        let input = [ExecInput::Stdin(b"hi\n".to_vec()), ExecInput::StdinEof];
        let (outcome, out, _) = collect(&["cat"], &input, None).await;
        assert_eq!(outcome, ExecOutcome::Exited(0));
        assert_eq!(out, b"hi\n");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        // The background sleep would keep stdout open for 100 s if only the shell were killed.
        let (outcome, _, _) = collect(
            &["sh", "-c", "sleep 100 & sleep 100"],
            &[],
            Some(Duration::from_millis(200)),
        )
        .await;
        assert_eq!(outcome, ExecOutcome::TimedOut);
        assert_eq!(outcome.shell_code(), 124);
    }

    #[tokio::test]
    async fn a_signal_is_reported_as_128_plus_n() {
        let input = [ExecInput::Signal(Signal::SIGINT as i32)];
        let (outcome, _, _) = collect(&["sleep", "100"], &input, None).await;
        assert_eq!(outcome, ExecOutcome::Signaled(2));
        assert_eq!(outcome.shell_code(), 130);
    }

    #[tokio::test]
    async fn runs_in_home_with_a_sane_environment() {
        let (_, out, _) = collect(&["sh", "-c", "pwd; echo $PATH; echo $HOME"], &[], None).await;
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let home = account().home;
        assert_eq!(
            lines,
            [home.to_str().unwrap(), SANE_PATH, home.to_str().unwrap()]
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_a_clear_error() {
        let (_in_tx, in_rx) = mpsc::channel(1);
        let (out_tx, _out_rx) = mpsc::channel(1);
        let spec = ExecSpec {
            argv: vec!["no-such-program-cmdop".into()],
            timeout: None,
        };
        let err = run(spec, in_rx, out_tx).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot start `no-such-program-cmdop`"),
            "{err}"
        );
    }
}
