//! `cmdop connect exec MACHINE -- CMD…`: run one command on a machine through the relay, end to end encrypted.
//!
//! Exit status follows ssh: the remote command's code (128+N for a signal, 124 for `--timeout`, 127 when it
//! could not be started), and 255 for any failure of cmdop itself, so scripts can tell the two apart.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use cmdop_client::secure_stream::{SecureReceiver, SecureSender};
use cmdop_client::{ClientConnection, Machine};
use cmdop_proto::display::escaped;
use cmdop_proto::e2e::StreamKind;
use cmdop_proto::ops::{AgentOp, ClientOp, ExecRequest, ExitStatus, MAX_CHUNK};
use serde_json::json;
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::channel;
use crate::exit::Failure;
use crate::global_args::GlobalArgs;
use crate::login::runtime;
use crate::profile::Profile;
use cmdop_client::Channel;

/// cmdop's own failures, as ssh reports its own: distinct from any code the remote command returns.
const OWN_FAILURE: u8 = 255;
/// The remote program could not be started (as `env(1)` reports a missing program).
const CANNOT_START: u8 = 127;

/// Flags of `cmdop connect exec`.
#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    /// The machine: its id, hostname, display name, or a unique prefix of one of them.
    machine: String,
    /// Kill the remote command (its whole process group) after this long and exit 124; `0` for no limit.
    /// Units: ms, s, m, h.
    #[arg(long, default_value = "30s", value_name = "DUR")]
    timeout: String,
    /// Print one JSON object (machine_id, hostname, command, exit_code, stdout, stderr, duration_ms) instead
    /// of streaming the output.
    #[arg(long)]
    json: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Runs `cmdop connect exec`.
pub(crate) fn run(global: &GlobalArgs, workspace: Option<&str>, args: ExecArgs) -> ExitCode {
    let started = Instant::now();
    match execute(global, workspace, &args, started) {
        Ok(code) => code,
        Err(failure) => {
            failure.print();
            ExitCode::from(OWN_FAILURE)
        }
    }
}

fn execute(
    global: &GlobalArgs,
    workspace: Option<&str>,
    args: &ExecArgs,
    started: Instant,
) -> Result<ExitCode, Failure> {
    let timeout = parse_duration(&args.timeout)?;
    let profile = Profile::open(global)?;
    let session = profile.session(global)?;
    let known = channel::known_machines(&profile, global);
    let runtime = runtime()?;
    runtime.block_on(async {
        let client =
            ClientConnection::login(&session.relay, &session.identity, &session.credential).await?;
        let Channel {
            machine,
            mut sender,
            mut receiver,
            ..
        } = channel::open(
            &client,
            &session.identity,
            &known,
            workspace,
            &args.machine,
            StreamKind::Exec,
        )
        .await?;
        let forward_stdin = !std::io::stdin().is_terminal();
        sender
            .send(&ClientOp::Exec(ExecRequest {
                argv: args.command.clone(),
                timeout_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                stdin: forward_stdin,
            }))
            .await?;
        let writer = spawn_input(sender, forward_stdin);
        let received = receive(&mut receiver, args.json).await?;
        // recv returned None: the agent's authenticated end frame arrived, so the output is complete.
        writer.abort();
        client.close().await;
        let code = remote_code(&machine, &received)?;
        if args.json {
            print_json(&machine, args, code, &received, started);
        }
        Ok(ExitCode::from(
            u8::try_from(code & 0xff).unwrap_or(OWN_FAILURE),
        ))
    })
}

/// One writer task owns the sending half; stdin (when forwarded) and Ctrl-C feed it through a channel.
fn spawn_input(mut sender: SecureSender, forward_stdin: bool) -> JoinHandle<SecureSender> {
    let (ops_tx, mut ops_rx) = mpsc::channel::<ClientOp>(8);
    let writer = tokio::spawn(async move {
        while let Some(op) = ops_rx.recv().await {
            if sender.send(&op).await.is_err() {
                break;
            }
        }
        sender
    });
    if forward_stdin {
        tokio::spawn(pump_stdin(ops_tx.clone()));
    }
    let interrupts = ops_tx;
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            // SIGINT is 2 on every platform cmdop runs on.
            if interrupts.send(ClientOp::Signal(2)).await.is_err() {
                break;
            }
        }
    });
    writer
}

/// What the machine sent back until the end of the stream.
#[derive(Debug, Default)]
struct Received {
    /// The command's stdout, when captured for `--json` (else it was written as it came).
    stdout: Vec<u8>,
    /// The command's stderr, likewise.
    stderr: Vec<u8>,
    status: Option<ExitStatus>,
    /// Why the command could not be started.
    failed: Option<String>,
}

/// Writes the command's output as it arrives (or captures it, for `--json`) until the stream ends.
async fn receive(receiver: &mut SecureReceiver, capture: bool) -> Result<Received, Failure> {
    let mut received = Received::default();
    while let Some(op) = receiver.recv::<AgentOp>().await? {
        match op {
            AgentOp::Stdout(bytes) if capture => received.stdout.extend(bytes),
            AgentOp::Stderr(bytes) if capture => received.stderr.extend(bytes),
            AgentOp::Stdout(bytes) => write_all(&mut std::io::stdout(), &bytes)?,
            AgentOp::Stderr(bytes) => write_all(&mut std::io::stderr(), &bytes)?,
            AgentOp::Exited(exit) => received.status = Some(exit),
            AgentOp::Failed { message } => received.failed = Some(escaped(&message)),
        }
    }
    Ok(received)
}

/// The exit code to pass on: the command's, 127 if it could not start, a failure if neither arrived.
fn remote_code(machine: &Machine, received: &Received) -> Result<i32, Failure> {
    match (received.status, &received.failed) {
        (Some(exit), _) => Ok(exit.shell_code()),
        (None, Some(message)) => {
            eprintln!("cmdop: {}: {message}", machine.hostname);
            Ok(i32::from(CANNOT_START))
        }
        (None, None) => Err(Failure::connection_lost(
            "the machine ended the stream without an exit status",
        )),
    }
}

/// `--json`: one object with the outcome and the captured output.
fn print_json(
    machine: &Machine,
    args: &ExecArgs,
    code: i32,
    received: &Received,
    started: Instant,
) {
    let value = json!({
        "machine_id": machine.id.to_string(),
        "hostname": machine.hostname,
        "command": args.command,
        "exit_code": code,
        "timed_out": received.status == Some(ExitStatus::TimedOut),
        "stdout": String::from_utf8_lossy(&received.stdout),
        "stderr": String::from_utf8_lossy(&received.stderr),
        "duration_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    });
    println!("{value}");
}

async fn pump_stdin(ops: mpsc::Sender<ClientOp>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = ops.send(ClientOp::StdinEof).await;
                return;
            }
            Ok(n) => {
                if ops
                    .send(ClientOp::Stdin(buf.get(..n).unwrap_or_default().to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

fn write_all(out: &mut impl std::io::Write, bytes: &[u8]) -> Result<(), Failure> {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // A reader that went away (`| head`) is not cmdop's failure; stop quietly like other tools.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => Err(Failure::from(
            anyhow::Error::from(err).context("cannot write the command's output"),
        )),
    }
}

/// `30s`, `5m`, `1h`, `250ms`, or a bare number of seconds; `0` means no limit.
fn parse_duration(text: &str) -> Result<Option<Duration>, Failure> {
    let bad = || {
        Failure::from(anyhow::anyhow!(
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
    }
}
