//! `cmdop connect exec --all | --machines a,b,c | --label KEY=VALUE [--parallel N] -- CMD`: one command on
//! many machines at once, N at a time, over one relay login.
//!
//! Output lines are prefixed with the machine's hostname as pssh does (`--json`: one object per machine as each
//! finishes, then a summary). Offline machines are listed, never skipped silently. The exit code is 0 only if
//! every machine ran the command and it returned 0.
//!
//! ```text
//!  list machines ──▶ select (--all / --label / --machines) ──▶ offline: reported at once
//!                                                          └─▶ online: ≤ N channels at once ──▶ result per machine
//!                                                                                            └─▶ summary, exit code
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use cmdop_client::known_machines::{FirstContact, KnownMachines};
use cmdop_client::{ClientConnection, ClientError, Machine};
use cmdop_identity::Identity;
use cmdop_proto::e2e::StreamKind;
use cmdop_proto::ops::ExitStatus;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, broadcast};
use tokio::task::JoinSet;

use crate::channel;
use crate::exec::{ExecArgs, OWN_FAILURE, Output, Received, RemoteCommand, interrupts, run_on};
use crate::exit::{Failure, Kind, usage};
use crate::global_args::GlobalArgs;
use crate::login::runtime;
use crate::profile::Profile;

/// One machine to run on.
#[derive(Debug, Clone)]
enum Target {
    /// Listed by the relay (`--all`, `--label`): known online or offline.
    Listed(Box<Machine>),
    /// Named on the command line (`--machines`): the relay resolves it when the stream opens.
    Named(String),
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Self::Listed(machine) => &machine.hostname,
            Self::Named(name) => name,
        }
    }
}

/// How the command went on one machine.
#[derive(Debug)]
enum Status {
    /// It exited 0.
    Ok,
    /// It exited with another code, was killed by a signal, or could not start.
    Failed(i32),
    /// The machine is not connected to the relay; nothing ran.
    Offline,
    /// The `--timeout` fired.
    TimedOut,
    /// cmdop could not run it there (not found, ambiguous, refused, connection lost).
    Error(String),
}

impl Status {
    fn word(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed(_) | Self::Error(_) => "failed",
            Self::Offline => "offline",
            Self::TimedOut => "timed_out",
        }
    }
}

/// One machine's outcome.
#[derive(Debug)]
struct Outcome {
    /// The hostname (or the name given, when it never resolved).
    name: String,
    machine_id: Option<String>,
    status: Status,
    received: Received,
    duration_ms: u64,
}

/// The shared state every machine's task uses.
struct Fleet {
    client: ClientConnection,
    identity: Identity,
    known: KnownMachines,
    workspace: Option<String>,
    command: RemoteCommand,
    json: bool,
    signals: broadcast::Sender<i32>,
}

/// Runs `cmdop connect exec` over the selected machines.
pub(crate) fn run(
    global: &GlobalArgs,
    workspace: Option<&str>,
    args: &ExecArgs,
    command: RemoteCommand,
) -> ExitCode {
    match fan_out(global, workspace, args, command) {
        Ok(code) => code,
        Err(failure) if failure_is_usage(&failure) => failure.report(),
        Err(failure) => {
            failure.print();
            ExitCode::from(OWN_FAILURE)
        }
    }
}

fn failure_is_usage(failure: &Failure) -> bool {
    failure.kind() == Kind::Usage
}

fn fan_out(
    global: &GlobalArgs,
    workspace: Option<&str>,
    args: &ExecArgs,
    mut command: RemoteCommand,
) -> Result<ExitCode, Failure> {
    let wanted = parse_labels(&args.label)?;
    // Several machines cannot share one stdin; like pssh without -I, they get none.
    command.stdin = false;
    let profile = Profile::open(global)?;
    let session = profile.session(global)?;
    // Many machines cannot share one terminal prompt: a first contact needs --accept-new here.
    let policy = if global.accept_new {
        FirstContact::AcceptNew
    } else {
        FirstContact::Refuse
    };
    let known = KnownMachines::in_dir(profile.dir()).with_first_contact(policy);
    let runtime = runtime()?;
    runtime.block_on(async {
        let mut client =
            ClientConnection::login(&session.relay, &session.identity, &session.credential).await?;
        let targets = select(&mut client, workspace, args, &wanted).await?;
        let fleet = Arc::new(Fleet {
            client,
            identity: session.identity,
            known,
            workspace: workspace.map(str::to_owned),
            command,
            json: args.json,
            signals: interrupts(),
        });
        let outcomes = run_all(&fleet, targets, usize::from(args.parallel)).await;
        let code = summarize(&outcomes, args.json);
        if let Ok(fleet) = Arc::try_unwrap(fleet) {
            fleet.client.close().await;
        }
        Ok(code)
    })
}

/// `--label KEY=VALUE`, each checked as the relay checks labels.
fn parse_labels(texts: &[String]) -> Result<Vec<(String, String)>, Failure> {
    texts
        .iter()
        .map(|text| cmdop_fleet::parse_label(text).map_err(|err| usage(format!("--label: {err}"))))
        .collect()
}

/// The machines to run on, in the order given (`--machines`) or by hostname.
async fn select(
    client: &mut ClientConnection,
    workspace: Option<&str>,
    args: &ExecArgs,
    wanted: &[(String, String)],
) -> Result<Vec<Target>, Failure> {
    if !args.machines.is_empty() {
        let mut names: Vec<String> = Vec::new();
        for name in args
            .machines
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
        {
            if !names.iter().any(|seen| seen == name) {
                names.push(name.to_owned());
            }
        }
        if names.is_empty() {
            return Err(usage(
                "--machines names no machine; write --machines web-1,web-2",
            ));
        }
        return Ok(names.into_iter().map(Target::Named).collect());
    }
    let mut machines: Vec<Machine> = client
        .list_machines(workspace)
        .await?
        .into_iter()
        .filter(|m| m.has_labels(wanted))
        .collect();
    machines.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    if machines.is_empty() {
        let which = if wanted.is_empty() {
            "the fleet has no machines; enrol one with `cmdop-agent run --workspace FLEET …`"
                .to_owned()
        } else {
            let labels: Vec<String> = wanted.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(
                "no machine carries {}; see the labels with `cmdop connect --list` (set with `cmdop-agent run --label`)",
                labels.join(" and ")
            )
        };
        return Err(Failure::new(Kind::NotFound, which));
    }
    Ok(machines
        .into_iter()
        .map(|machine| Target::Listed(Box::new(machine)))
        .collect())
}

/// Runs on every target, `parallel` at a time; offline machines are reported without being contacted.
async fn run_all(fleet: &Arc<Fleet>, targets: Vec<Target>, parallel: usize) -> Vec<Outcome> {
    let slots = Arc::new(Semaphore::new(parallel.max(1)));
    let mut running = JoinSet::new();
    let mut outcomes = Vec::new();
    for target in targets {
        if let Target::Listed(machine) = &target
            && !machine.online
        {
            let outcome = offline(&machine.hostname, Some(machine.id.to_string()));
            report(&outcome, fleet.json);
            outcomes.push(outcome);
            continue;
        }
        let fleet = Arc::clone(fleet);
        let slots = Arc::clone(&slots);
        running.spawn(async move {
            // The semaphore is never closed, so a permit always comes.
            let _permit = slots.acquire_owned().await.ok();
            let outcome = run_target(&fleet, &target).await;
            report(&outcome, fleet.json);
            outcome
        });
    }
    while let Some(done) = running.join_next().await {
        match done {
            Ok(outcome) => outcomes.push(outcome),
            Err(err) => outcomes.push(Outcome {
                name: "?".into(),
                machine_id: None,
                status: Status::Error(format!("a task failed: {err}")),
                received: Received::default(),
                duration_ms: 0,
            }),
        }
    }
    outcomes
}

fn offline(name: &str, machine_id: Option<String>) -> Outcome {
    Outcome {
        name: name.to_owned(),
        machine_id,
        status: Status::Offline,
        received: Received::default(),
        duration_ms: 0,
    }
}

/// Opens a channel to one machine and runs the command there.
async fn run_target(fleet: &Fleet, target: &Target) -> Outcome {
    let started = Instant::now();
    let elapsed = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let name = match target {
        Target::Listed(machine) => machine.id.to_string(),
        Target::Named(name) => name.clone(),
    };
    let listed_id = match target {
        Target::Listed(machine) => Some(machine.id.to_string()),
        Target::Named(_) => None,
    };
    let opened = channel::open_typed(
        &fleet.client,
        &fleet.identity,
        &fleet.known,
        fleet.workspace.as_deref(),
        &name,
        StreamKind::Exec,
    )
    .await;
    let channel = match opened {
        Ok(channel) => channel,
        Err(ClientError::MachineOffline(_)) => return offline(target.name(), listed_id),
        Err(err) => {
            return Outcome {
                name: target.name().to_owned(),
                machine_id: listed_id,
                status: Status::Error(Failure::from(err).message().to_owned()),
                received: Received::default(),
                duration_ms: elapsed(),
            };
        }
    };
    let machine = channel.machine.clone();
    let mut output = if fleet.json {
        Output::Capture
    } else {
        Output::prefixed(&machine.hostname)
    };
    let result = run_on(
        channel,
        &fleet.command,
        &mut output,
        fleet.signals.subscribe(),
    )
    .await;
    let (status, received) = match result {
        Ok(received) => (status_of(&machine, &received), received),
        Err(failure) => (
            Status::Error(failure.message().to_owned()),
            Received::default(),
        ),
    };
    Outcome {
        name: machine.hostname.clone(),
        machine_id: Some(machine.id.to_string()),
        status,
        received,
        duration_ms: elapsed(),
    }
}

fn status_of(machine: &Machine, received: &Received) -> Status {
    match received.status {
        Some(ExitStatus::Code(0)) => Status::Ok,
        Some(ExitStatus::TimedOut) => {
            // Says on stderr that the --timeout fired.
            received.exit_code(machine);
            Status::TimedOut
        }
        Some(_) | None => Status::Failed(received.exit_code(machine)),
    }
}

/// Says how one machine ended, as soon as it has: a JSON object, or a line on stderr when it did not go well.
fn report(outcome: &Outcome, json: bool) {
    if json {
        println!("{}", outcome_json(outcome));
        return;
    }
    match &outcome.status {
        Status::Ok | Status::TimedOut => {}
        Status::Failed(code) => eprintln!("cmdop: {}: exit status {code}", outcome.name),
        Status::Offline => eprintln!("cmdop: {}: offline; not run", outcome.name),
        Status::Error(message) => eprintln!("cmdop: {}: {message}", outcome.name),
    }
}

fn outcome_json(outcome: &Outcome) -> Value {
    let exit_code = match &outcome.status {
        Status::Ok => Some(0),
        Status::Failed(code) => Some(*code),
        Status::TimedOut => Some(ExitStatus::TimedOut.shell_code()),
        Status::Offline | Status::Error(_) => None,
    };
    let error = match &outcome.status {
        Status::Error(message) => Some(message.as_str()),
        _ => None,
    };
    json!({
        "machine_id": outcome.machine_id,
        "hostname": outcome.name,
        "status": outcome.status.word(),
        "exit_code": exit_code,
        "stdout": String::from_utf8_lossy(&outcome.received.stdout),
        "stderr": String::from_utf8_lossy(&outcome.received.stderr),
        "duration_ms": outcome.duration_ms,
        "error": error,
    })
}

/// The closing summary, and the exit code: 0 only if every machine ran the command and it returned 0.
fn summarize(outcomes: &[Outcome], json: bool) -> ExitCode {
    let count = |word: &str| outcomes.iter().filter(|o| o.status.word() == word).count();
    let names = |word: &str| -> Vec<&str> {
        let mut names: Vec<&str> = outcomes
            .iter()
            .filter(|o| o.status.word() == word)
            .map(|o| o.name.as_str())
            .collect();
        names.sort_unstable();
        names
    };
    let (ok, failed, offline, timed_out) = (
        count("ok"),
        count("failed"),
        count("offline"),
        count("timed_out"),
    );
    if json {
        println!(
            "{}",
            json!({ "summary": {
                "machines": outcomes.len(),
                "ok": ok,
                "failed": failed,
                "offline": offline,
                "timed_out": timed_out,
            }})
        );
    } else {
        let listed = |n: usize, word: &str| {
            if n == 0 {
                format!("{n} {}", word.replace('_', " "))
            } else {
                format!(
                    "{n} {} ({})",
                    word.replace('_', " "),
                    names(word).join(", ")
                )
            }
        };
        eprintln!(
            "cmdop: {} machines: {ok} ok, {}, {}, {}",
            outcomes.len(),
            listed(failed, "failed"),
            listed(offline, "offline"),
            listed(timed_out, "timed_out"),
        );
    }
    if ok == outcomes.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(name: &str, status: Status) -> Outcome {
        Outcome {
            name: name.into(),
            machine_id: None,
            status,
            received: Received::default(),
            duration_ms: 1,
        }
    }

    #[test]
    fn every_machine_must_return_zero() {
        assert_eq!(
            summarize(&[outcome("a", Status::Ok), outcome("b", Status::Ok)], true),
            ExitCode::SUCCESS
        );
        for bad in [
            Status::Failed(3),
            Status::Offline,
            Status::TimedOut,
            Status::Error("x".into()),
        ] {
            assert_eq!(
                summarize(&[outcome("a", Status::Ok), outcome("b", bad)], true),
                ExitCode::FAILURE
            );
        }
    }

    #[test]
    fn an_offline_machine_is_an_object_with_no_exit_code() {
        let value = outcome_json(&offline("web-9", Some("id".into())));
        assert_eq!(value["status"], "offline");
        assert_eq!(value["exit_code"], Value::Null);
        assert_eq!(value["hostname"], "web-9");
    }

    #[test]
    fn labels_are_checked_as_usage() {
        let err = parse_labels(&["role".into()]).unwrap_err();
        assert_eq!(err.kind(), Kind::Usage);
        assert_eq!(
            parse_labels(&["role=web".into()]).unwrap(),
            [("role".to_owned(), "web".to_owned())]
        );
    }
}
