//! `cmdop connect exec MACHINE -- CMD…`: run one command on a machine through the relay, end to end encrypted;
//! and the part every command that runs something remotely shares (`rsh`, a shell without a terminal, and
//! `exec` over many machines in [`crate::fanout`]).
//!
//! Exit status follows ssh: the remote command's code (128+N for a signal, 124 for `--timeout`, 127 when it
//! could not be started), and 255 for any failure of cmdop itself, so scripts can tell the two apart.
//!
//! cmdop exits as soon as the remote command has exited and all of its output has been written here, whatever
//! its own stdin is doing: stdin is read by [`crate::stdin_reader`], which nothing waits for.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use cmdop_client::secure_stream::{SecureReceiver, SecureSender};
use cmdop_client::{Channel, ClientConnection, Machine};
use cmdop_proto::display::escaped;
use cmdop_proto::e2e::StreamKind;
use cmdop_proto::ops::{AgentOp, ClientOp, ExecRequest, ExitStatus, MAX_CHUNK};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use crate::channel;
use crate::exit::{Failure, Kind, usage};
use crate::global_args::GlobalArgs;
use crate::login::runtime;
use crate::profile::Profile;

/// cmdop's own failures, as ssh reports its own: distinct from any code the remote command returns.
pub(crate) const OWN_FAILURE: u8 = 255;
/// The remote program could not be started (as `env(1)` reports a missing program).
const CANNOT_START: u8 = 127;
/// SIGINT is 2 on every platform cmdop runs on.
const SIGINT: i32 = 2;

/// Flags of `cmdop connect exec`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("targets").args(["machine", "all", "machines", "label"]).required(true))]
pub(crate) struct ExecArgs {
    /// The machine: its id, hostname, display name, or a unique prefix of one of them.
    machine: Option<String>,
    /// Run on every machine of the fleet (offline ones are listed, not skipped silently).
    #[arg(long, conflicts_with_all = ["machine", "machines"])]
    pub(crate) all: bool,
    /// Run on these machines (comma-separated names, each resolved like MACHINE).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "NAMES",
        conflicts_with = "machine"
    )]
    pub(crate) machines: Vec<String>,
    /// Run on the machines carrying this label (`KEY=VALUE`, repeatable: all must match).
    #[arg(long, value_name = "KEY=VALUE", conflicts_with = "machine")]
    pub(crate) label: Vec<String>,
    /// With several machines: how many run at once.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) parallel: u16,
    /// Kill the remote command (its whole process group) after this long and exit 124 [default: no limit].
    /// Units: ms, s, m, h.
    #[arg(long, value_name = "DUR")]
    pub(crate) timeout: Option<String>,
    /// Print one JSON object (machine_id, hostname, command, exit_code, stdout, stderr, duration_ms) instead
    /// of streaming the output; with several machines, one per machine and a closing summary.
    #[arg(long)]
    pub(crate) json: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

/// What to run on a machine, and how.
#[derive(Debug, Clone)]
pub(crate) struct RemoteCommand {
    /// Program and arguments, started directly (not through a shell) by the agent.
    pub(crate) argv: Vec<String>,
    /// Kill the remote process group after this long.
    pub(crate) timeout: Option<Duration>,
    /// Forward this process's stdin (else the remote stdin is closed at once).
    pub(crate) stdin: bool,
}

impl RemoteCommand {
    /// `command` run by the remote user's login shell, as ssh runs a command: the words joined with spaces and
    /// given to `$SHELL -c`. The agent starts programs directly, so `sh` starts the user's shell.
    pub(crate) fn through_shell(words: &[String], stdin: bool) -> Self {
        Self {
            argv: vec![
                "sh".into(),
                "-c".into(),
                r#"exec "${SHELL:-/bin/sh}" -c "$1""#.into(),
                "sh".into(),
                words.join(" "),
            ],
            timeout: None,
            stdin,
        }
    }

    /// The remote user's login shell reading commands from stdin, without a terminal: what ssh runs when
    /// stdin is not a terminal and no command is given.
    pub(crate) fn login_shell() -> Self {
        Self {
            argv: vec![
                "sh".into(),
                "-c".into(),
                r#"exec "${SHELL:-/bin/sh}" -l"#.into(),
            ],
            timeout: None,
            stdin: true,
        }
    }
}

/// Runs `cmdop connect exec`.
pub(crate) fn run(global: &GlobalArgs, workspace: Option<&str>, args: ExecArgs) -> ExitCode {
    let started = Instant::now();
    let timeout = match args.timeout.as_deref().map(parse_duration).transpose() {
        Ok(timeout) => timeout.flatten(),
        Err(failure) => return failure.report(),
    };
    let command = RemoteCommand {
        argv: args.command.clone(),
        timeout,
        stdin: !std::io::stdin().is_terminal(),
    };
    let Some(machine) = args.machine.clone() else {
        return crate::fanout::run(global, workspace, &args, command);
    };
    let output = if args.json {
        Output::Capture
    } else {
        Output::Stream
    };
    match run_one(global, workspace, &machine, &command, output) {
        Ok((machine, received)) => {
            let code = received.exit_code(&machine);
            if args.json {
                print_json(&machine, &args.command, code, &received, started);
            }
            ExitCode::from(u8::try_from(code & 0xff).unwrap_or(OWN_FAILURE))
        }
        Err(failure) => {
            failure.print();
            ExitCode::from(OWN_FAILURE)
        }
    }
}

/// Logs in with the saved (or flagged) session, runs `command` on `machine` and returns what came back.
pub(crate) fn run_one(
    global: &GlobalArgs,
    workspace: Option<&str>,
    machine: &str,
    command: &RemoteCommand,
    mut output: Output,
) -> Result<(Machine, Received), Failure> {
    let profile = Profile::open(global)?;
    let session = profile.session(global)?;
    let known = channel::known_machines(&profile, global);
    let runtime = runtime()?;
    runtime.block_on(async {
        let client =
            ClientConnection::login(&session.relay, &session.identity, &session.credential).await?;
        let channel = channel::open(
            &client,
            &session.identity,
            &known,
            workspace,
            machine,
            StreamKind::Exec,
        )
        .await?;
        let machine = channel.machine.clone();
        let interrupts = interrupts();
        let received = run_on(channel, command, &mut output, interrupts.subscribe()).await;
        client.close().await;
        Ok((machine, received?))
    })
}

/// Forwards Ctrl-C to every command started with a receiver of the returned sender, as SIGINT.
pub(crate) fn interrupts() -> broadcast::Sender<i32> {
    let (tx, _) = broadcast::channel(4);
    let signals = tx.clone();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            // No receiver left: nothing runs any more.
            if signals.send(SIGINT).is_err() {
                break;
            }
        }
    });
    tx
}

/// Runs `command` over an open exec channel until the machine's end of the stream: sends the request, then
/// stdin (when forwarded) and the signals arriving on `signals`, and hands the output to `output`.
pub(crate) async fn run_on(
    channel: Channel,
    command: &RemoteCommand,
    output: &mut Output,
    signals: broadcast::Receiver<i32>,
) -> Result<Received, Failure> {
    let Channel {
        mut sender,
        mut receiver,
        ..
    } = channel;
    sender
        .send(&ClientOp::Exec(ExecRequest {
            argv: command.argv.clone(),
            timeout_ms: command
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            stdin: command.stdin,
        }))
        .await?;
    let input = tokio::spawn(send_input(sender, command.stdin, signals));
    let received = receive(&mut receiver, output).await;
    // The agent's authenticated end frame arrived (or the stream broke): nothing more to send. Input still on
    // its way, and the stdin reader blocked in a read, are abandoned here.
    input.abort();
    let mut received = received?;
    output.finish()?;
    received.timeout = command.timeout;
    Ok(received)
}

/// The one task that owns the sending half: stdin (when forwarded) and signals go out through it.
async fn send_input(
    mut sender: SecureSender,
    forward_stdin: bool,
    mut signals: broadcast::Receiver<i32>,
) {
    let mut stdin = forward_stdin.then(|| crate::stdin_reader::spawn(MAX_CHUNK));
    loop {
        let op = tokio::select! {
            chunk = next_chunk(&mut stdin) => match chunk {
                Some(bytes) => ClientOp::Stdin(bytes),
                None => {
                    stdin = None;
                    ClientOp::StdinEof
                }
            },
            signal = signals.recv() => match signal {
                Ok(number) => ClientOp::Signal(number),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            },
        };
        if sender.send(&op).await.is_err() {
            return;
        }
    }
}

/// The next chunk of stdin; pending forever once stdin is not (or no longer) forwarded.
async fn next_chunk(stdin: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match stdin {
        Some(chunks) => chunks.recv().await,
        None => std::future::pending().await,
    }
}

/// What the machine sent back until the end of the stream.
#[derive(Debug, Default)]
pub(crate) struct Received {
    /// The command's stdout, when captured (else it was written as it came).
    pub(crate) stdout: Vec<u8>,
    /// The command's stderr, likewise.
    pub(crate) stderr: Vec<u8>,
    pub(crate) status: Option<ExitStatus>,
    /// Why the command could not be started.
    pub(crate) failed: Option<String>,
    /// The `--timeout` asked for, to name it when it fired.
    timeout: Option<Duration>,
}

impl Received {
    /// The exit code to pass on: the command's, 127 if it could not start, 255 if neither arrived. Says on
    /// stderr why, when the command did not exit on its own.
    pub(crate) fn exit_code(&self, machine: &Machine) -> i32 {
        match (self.status, &self.failed) {
            (Some(ExitStatus::TimedOut), _) => {
                let after = self
                    .timeout
                    .map_or_else(String::new, |t| format!(" after {}", show_duration(t)));
                eprintln!(
                    "cmdop: {}: the command was killed{after} (--timeout); exit status 124",
                    machine.hostname
                );
                ExitStatus::TimedOut.shell_code()
            }
            (Some(exit), _) => exit.shell_code(),
            (None, Some(message)) => {
                eprintln!("cmdop: {}: {message}", machine.hostname);
                i32::from(CANNOT_START)
            }
            (None, None) => {
                Failure::connection_lost("the machine ended the stream without an exit status")
                    .print();
                i32::from(OWN_FAILURE)
            }
        }
    }
}

/// Where a remote command's output goes.
#[derive(Debug)]
pub(crate) enum Output {
    /// Written to this process's stdout and stderr as it arrives.
    Stream,
    /// Kept in [`Received`] (for `--json`).
    Capture,
    /// Written line by line, each line prefixed (`web-1: `), as pssh does for many machines at once.
    Prefixed {
        prefix: String,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
}

impl Output {
    /// Prefixes every line with `name: `.
    pub(crate) fn prefixed(name: &str) -> Self {
        Self::Prefixed {
            prefix: format!("{name}: "),
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }

    fn stdout(&mut self, bytes: Vec<u8>, received: &mut Received) -> Result<(), Failure> {
        match self {
            Self::Stream => write_all(&mut std::io::stdout().lock(), &bytes),
            Self::Capture => {
                received.stdout.extend(bytes);
                Ok(())
            }
            Self::Prefixed { prefix, stdout, .. } => {
                stdout.extend(bytes);
                write_lines(&mut std::io::stdout(), prefix, stdout, false)
            }
        }
    }

    fn stderr(&mut self, bytes: Vec<u8>, received: &mut Received) -> Result<(), Failure> {
        match self {
            Self::Stream => write_all(&mut std::io::stderr().lock(), &bytes),
            Self::Capture => {
                received.stderr.extend(bytes);
                Ok(())
            }
            Self::Prefixed { prefix, stderr, .. } => {
                stderr.extend(bytes);
                write_lines(&mut std::io::stderr(), prefix, stderr, false)
            }
        }
    }

    /// Writes what is left of an unfinished last line.
    fn finish(&mut self) -> Result<(), Failure> {
        if let Self::Prefixed {
            prefix,
            stdout,
            stderr,
        } = self
        {
            write_lines(&mut std::io::stdout(), prefix, stdout, true)?;
            write_lines(&mut std::io::stderr(), prefix, stderr, true)?;
        }
        Ok(())
    }
}

/// Writes every complete line in `pending` with `prefix` (and, when `all`, the unfinished rest with a newline),
/// each line in one write so that lines of machines running at once never interleave.
fn write_lines(
    out: &mut impl std::io::Write,
    prefix: &str,
    pending: &mut Vec<u8>,
    all: bool,
) -> Result<(), Failure> {
    let complete = match pending.iter().rposition(|b| *b == b'\n') {
        Some(last) => last + 1,
        None if all && !pending.is_empty() => {
            pending.push(b'\n');
            pending.len()
        }
        None => return Ok(()),
    };
    let mut text = Vec::with_capacity(complete + prefix.len() * 4);
    for line in pending
        .get(..complete)
        .unwrap_or_default()
        .split_inclusive(|b| *b == b'\n')
    {
        text.extend_from_slice(prefix.as_bytes());
        text.extend_from_slice(line);
    }
    pending.drain(..complete);
    if all && !pending.is_empty() {
        text.extend_from_slice(prefix.as_bytes());
        text.append(pending);
        text.push(b'\n');
    }
    write_all(out, &text)
}

/// Hands the command's output to `output` until the stream ends.
async fn receive(receiver: &mut SecureReceiver, output: &mut Output) -> Result<Received, Failure> {
    let mut received = Received::default();
    while let Some(op) = receiver.recv::<AgentOp>().await? {
        match op {
            AgentOp::Stdout(bytes) => output.stdout(bytes, &mut received)?,
            AgentOp::Stderr(bytes) => output.stderr(bytes, &mut received)?,
            AgentOp::Exited(exit) => received.status = Some(exit),
            AgentOp::Failed { message } => received.failed = Some(escaped(&message)),
        }
    }
    Ok(received)
}

/// `--json`: one object with the outcome and the captured output.
fn print_json(
    machine: &Machine,
    command: &[String],
    code: i32,
    received: &Received,
    started: Instant,
) {
    let value = json!({
        "machine_id": machine.id.to_string(),
        "hostname": machine.hostname,
        "command": command,
        "exit_code": code,
        "timed_out": received.status == Some(ExitStatus::TimedOut),
        "stdout": String::from_utf8_lossy(&received.stdout),
        "stderr": String::from_utf8_lossy(&received.stderr),
        "duration_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    });
    println!("{value}");
}

fn write_all(out: &mut impl std::io::Write, bytes: &[u8]) -> Result<(), Failure> {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // A reader that went away (`| head`) is not cmdop's failure; stop quietly like other tools.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => Err(Failure::new(
            Kind::General,
            format!("cannot write the command's output: {err}"),
        )),
    }
}

/// `30s`, `5m`, `1h`, `250ms`, or a bare number of seconds; `0` means no limit.
pub(crate) fn parse_duration(text: &str) -> Result<Option<Duration>, Failure> {
    let bad = || {
        usage(format!(
            "invalid --timeout {text:?}: use a number with ms, s, m or h, e.g. 30s or 5m; 0 for none"
        ))
    };
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit {
        "ms" => number,
        "" | "s" => number.saturating_mul(1000),
        "m" => number.saturating_mul(60_000),
        "h" => number.saturating_mul(3_600_000),
        _ => return Err(bad()),
    };
    Ok((millis > 0).then(|| Duration::from_millis(millis)))
}

/// A duration as a person wrote it: `250ms`, `30s`, `5m`, `2h`.
fn show_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    match millis {
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("30s").unwrap(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_duration("5m").unwrap(),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_duration("250ms").unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_duration("7").unwrap(), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("0").unwrap(), None);
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(show_duration(Duration::from_secs(300)), "5m");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(show_duration(Duration::from_secs(7200)), "2h");
    }

    /// `exec` has no time limit unless one is asked for: ssh has none, and rsync or a backup over `cmdop rsh`
    /// must not die in the middle.
    #[test]
    fn there_is_no_default_timeout() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            exec: ExecArgs,
        }
        let parsed = Wrapper::try_parse_from(["exec", "web-1", "--", "sleep", "3600"]).unwrap();
        assert_eq!(parsed.exec.timeout, None);
        let asked =
            Wrapper::try_parse_from(["exec", "web-1", "--timeout", "5m", "--", "true"]).unwrap();
        assert_eq!(
            parse_duration(asked.exec.timeout.as_deref().unwrap()).unwrap(),
            Some(Duration::from_secs(300))
        );
        // Several machines are one choice among MACHINE, --all, --machines and --label.
        assert!(Wrapper::try_parse_from(["exec", "--", "true"]).is_err());
        assert!(Wrapper::try_parse_from(["exec", "web-1", "--all", "--", "true"]).is_err());
        let many = Wrapper::try_parse_from(["exec", "--label", "role=web", "--", "true"]).unwrap();
        assert_eq!(many.exec.label, ["role=web"]);
        assert_eq!(many.exec.parallel, 16);
    }

    #[test]
    fn prefixed_lines_are_whole_and_the_last_one_is_finished() {
        let mut out = Vec::new();
        let mut pending = b"one\ntw".to_vec();
        write_lines(&mut out, "web-1: ", &mut pending, false).unwrap();
        assert_eq!(out, b"web-1: one\n");
        assert_eq!(pending, b"tw");
        pending.extend_from_slice(b"o\nthree");
        write_lines(&mut out, "web-1: ", &mut pending, true).unwrap();
        assert_eq!(out, b"web-1: one\nweb-1: two\nweb-1: three\n");
        assert!(pending.is_empty());
    }

    #[test]
    fn shell_commands_are_joined_like_ssh_joins_them() {
        let command = RemoteCommand::through_shell(&["echo".into(), "a  b".into()], false);
        assert_eq!(command.argv.last().unwrap(), "echo a  b");
        assert_eq!(command.argv.first().unwrap(), "sh");
    }
}
