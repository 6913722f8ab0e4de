//! `cmdop connect`: open a shell on a machine, list the machines of a fleet, run a command on one (`exec`),
//! and list or end a machine's sessions.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use cmdop_client::{ClientConnection, Machine};
use serde_json::{Value, json};

use crate::exit::{Outcome, usage};
use crate::global_args::GlobalArgs;
use crate::login::runtime;
use crate::profile::Profile;
use crate::table::{print_columns, rfc3339};

/// Flags of `cmdop connect`.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// The fleet to work in; may be left out when the credential covers exactly one.
    #[arg(long, global = true, value_name = "NAME")]
    workspace: Option<String>,
    /// List the fleet's machines, online ones first.
    #[arg(long)]
    list: bool,
    /// With --list: only machines that are online now.
    #[arg(long, requires = "list")]
    online: bool,
    /// With --list: print a JSON array.
    #[arg(long, requires = "list")]
    json: bool,
    /// The machine to open a shell on: its id, hostname, display name, or a unique prefix of one of them.
    /// Left out on a terminal, a picker offers the fleet's machines.
    #[arg(value_name = "MACHINE", conflicts_with = "list")]
    machine: Option<String>,
    #[command(flatten)]
    attach: crate::attach::AttachArgs,
    #[command(subcommand)]
    action: Option<ConnectAction>,
}

/// What to do on a machine.
#[derive(Debug, Subcommand)]
enum ConnectAction {
    /// Run one command on a machine, or on many at once, and exit with its exit code (the `--` is required).
    #[command(
        after_help = "Examples:\n  cmdop connect exec web-1 -- uname -a\n  cmdop connect exec web-1 --timeout 5m -- ./backup.sh\n  echo hi | cmdop connect exec web-1 -- cat\n  cmdop connect exec --label role=web -- systemctl is-active nginx\n  cmdop connect exec --all --parallel 4 --json -- uptime"
    )]
    Exec(crate::exec::ExecArgs),
    /// Join stdin and stdout to HOST:PORT as reached from the machine, like `ssh -W` (for ProxyCommand).
    #[command(
        after_help = "Examples:\n  ssh -o ProxyCommand='cmdop connect proxy %h localhost:22' me@web-1\n  cmdop connect proxy db-1 localhost:5432 < query.bin"
    )]
    Proxy(crate::proxy::ProxyArgs),
    /// List a machine's interactive sessions.
    #[command(
        after_help = "Examples:\n  cmdop connect sessions web-1\n  cmdop connect sessions web-1 --json"
    )]
    Sessions(crate::attach::SessionsArgs),
    /// End one of a machine's sessions (its processes get SIGHUP, then SIGKILL).
    #[command(after_help = "Example:\n  cmdop connect kill web-1 3")]
    Kill(crate::attach::KillArgs),
    /// Forward local TCP ports to destinations reached from a machine, like `ssh -L`; runs until Ctrl-C.
    #[command(
        after_help = "Examples:\n  cmdop connect forward db-1 5432:localhost:5432\n  cmdop connect forward web-1 8080:10.0.0.7:80 0.0.0.0:9000:localhost:9000"
    )]
    Forward(crate::forward::ForwardArgs),
    /// Copy files to or from a machine, like scp (`MACHINE:PATH` on one side); resumes after interruptions.
    #[command(
        after_help = "Examples:\n  cmdop connect cp ./backup.tar web-1:/var/backups/\n  cmdop connect cp -r web-1:logs ./logs-web-1\n  cmdop connect cp --json web-1:big.iso ."
    )]
    Cp(crate::cp::CpArgs),
}

/// Runs `cmdop connect`.
pub(crate) fn run(global: &GlobalArgs, args: ConnectArgs) -> Outcome {
    let workspace = args.workspace.as_deref();
    match args.action {
        Some(ConnectAction::Exec(exec)) => return Ok(crate::exec::run(global, workspace, exec)),
        Some(ConnectAction::Sessions(sessions)) => {
            return Ok(crate::attach::list(global, workspace, &sessions));
        }
        Some(ConnectAction::Kill(kill)) => {
            return Ok(crate::attach::kill(global, workspace, &kill));
        }
        Some(ConnectAction::Forward(forward)) => {
            return crate::forward::run(global, workspace, forward);
        }
        Some(ConnectAction::Cp(cp)) => {
            return crate::cp::run(global, workspace, cp);
        }
        Some(ConnectAction::Proxy(proxy)) => {
            return crate::proxy::run(global, workspace, &proxy);
        }
        None => {}
    }
    if !args.list {
        if let Some(machine) = &args.machine
            && !std::io::stdin().is_terminal()
        {
            // As ssh does without a terminal: no PTY, the login shell reading stdin, streams passed through.
            if args.attach.names_a_session() {
                return Err(usage(
                    "--session and --read-only need a terminal, and stdin is not one; without a terminal cmdop connect runs the shell without a PTY, like ssh",
                ));
            }
            return Ok(crate::rsh::shell_without_terminal(
                global, workspace, machine,
            ));
        }
        return Ok(crate::attach::run(
            global,
            workspace,
            args.machine,
            &args.attach,
        ));
    }
    let profile = Profile::open(global)?;
    let session = profile.session(global)?;
    let runtime = runtime()?;
    let machines = runtime.block_on(async {
        let mut client =
            ClientConnection::login(&session.relay, &session.identity, &session.credential).await?;
        let machines = client.list_machines(args.workspace.as_deref()).await;
        client.close().await;
        machines
    })?;
    let mut machines: Vec<Machine> = machines
        .into_iter()
        .filter(|m| m.online || !args.online)
        .collect();
    machines.sort_by(|a, b| b.online.cmp(&a.online).then_with(|| a.name.cmp(&b.name)));
    if args.json {
        let rows: Vec<Value> = machines.iter().map(machine_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(anyhow::Error::from)?
        );
    } else {
        print_table(&machines);
    }
    Ok(ExitCode::SUCCESS)
}

fn machine_json(machine: &Machine) -> Value {
    json!({
        "id": machine.id.to_string(),
        "hostname": machine.hostname,
        "name": machine.name,
        "fingerprint": machine.public_key.map(|key| key.fingerprint().to_string()),
        "public_key": machine.public_key.map(|key| key.to_string()),
        "online": machine.online,
        "last_seen": machine.last_seen.and_then(rfc3339),
        "os": machine.os,
        "arch": machine.arch,
        "agent_version": machine.agent_version,
        "labels": machine.labels.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect::<serde_json::Map<String, Value>>(),
    })
}

fn print_table(machines: &[Machine]) {
    if machines.is_empty() {
        println!("no machines; enrol one with `cmdop-agent run --workspace FLEET …`");
        return;
    }
    let rows: Vec<[String; 7]> = machines
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                m.hostname.clone(),
                if m.online {
                    "online".to_owned()
                } else {
                    "offline".to_owned()
                },
                m.last_seen
                    .and_then(rfc3339)
                    .unwrap_or_else(|| "never".to_owned()),
                m.public_key
                    .map(|k| k.fingerprint().short())
                    .unwrap_or_else(|| "?".to_owned()),
                labels(m),
                m.id.to_string(),
            ]
        })
        .collect();
    print_columns(
        &[
            "NAME",
            "HOSTNAME",
            "STATUS",
            "LAST SEEN",
            "KEY",
            "LABELS",
            "ID",
        ],
        &rows,
    );
}

/// `role=web,env=prod`, or `-` for none.
fn labels(machine: &Machine) -> String {
    if machine.labels.is_empty() {
        return "-".to_owned();
    }
    let pairs: Vec<String> = machine
        .labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    pairs.join(",")
}
