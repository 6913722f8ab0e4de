//! Lists a fleet's machines, runs one command on one of them through a cmdop relay, end to end encrypted, and
//! exits with the command's exit code:
//!
//! `exec RELAY_HOST:PORT RELAY_FINGERPRINT API_KEY_FILE MACHINE COMMAND…`
//!
//! Machine keys are pinned on first contact in `./known_machines`, as ssh pins host keys in `known_hosts`
//! (accepted without asking here, like ssh's `StrictHostKeyChecking=accept-new`; in a locked fleet the
//! machine must instead carry a certificate from the fleet key pinned in `./fleet_locks`).

use std::io::Write as _;

use cmdop_client::identity::Identity;
use cmdop_client::known_machines::{FirstContact, KnownMachines};
use cmdop_client::proto::e2e::StreamKind;
use cmdop_client::proto::ops::{AgentOp, ClientOp, ExecRequest};
use cmdop_client::{ClientConnection, RelayTarget};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [relay, fingerprint, key_file, machine, command @ ..] = args.as_slice() else {
        return Err(
            "usage: exec RELAY_HOST:PORT RELAY_FINGERPRINT API_KEY_FILE MACHINE COMMAND…".into(),
        );
    };
    let relay = RelayTarget::new(relay, fingerprint.parse()?);
    let api_key = std::fs::read_to_string(key_file)?;
    // A fresh key per run; a long-lived tool keeps one in `cmdop_client::identity::store`.
    let identity = Identity::generate(&mut rand_core::OsRng);
    let mut client = ClientConnection::login(&relay, &identity, &api_key).await?;
    for m in client.list_machines(None).await? {
        println!("{} {} online={}", m.hostname, m.id, m.online);
    }
    let known = KnownMachines::new("known_machines").with_first_contact(FirstContact::AcceptNew);
    let mut channel = client
        .open_channel(&identity, &known, None, machine, StreamKind::Exec)
        .await?;
    let exec = ExecRequest {
        argv: command.to_vec(),
        timeout_ms: None,
        stdin: false,
    };
    channel.sender.send(&ClientOp::Exec(exec)).await?;
    let mut code = 255; // unless the machine reports an exit status
    while let Some(op) = channel.receiver.recv::<AgentOp>().await? {
        match op {
            AgentOp::Stdout(bytes) => std::io::stdout().write_all(&bytes)?,
            AgentOp::Stderr(bytes) => std::io::stderr().write_all(&bytes)?,
            AgentOp::Exited(status) => code = status.shell_code(),
            AgentOp::Failed { message } => eprintln!("cannot start the command: {message}"),
        }
    }
    client.close().await;
    std::process::exit(code);
}
