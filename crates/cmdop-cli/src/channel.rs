//! Opening an end-to-end channel to a machine: route a stream through the relay, check the machine's key
//! against this client's pins, and run the handshake. Every operation (exec, shell, …) starts here.

use anyhow::Context as _;
use cmdop_client::secure_stream::{self, SecureReceiver, SecureSender};
use cmdop_client::{ClientConnection, Machine};
use cmdop_identity::Identity;
use cmdop_proto::e2e::{Prologue, StreamKind};

use crate::exit::Failure;
use cmdop_client::known_machines::{KnownMachines, PinStatus};

/// An authenticated channel to one machine.
#[derive(Debug)]
pub(crate) struct Channel {
    /// The machine, as the relay resolved the name.
    pub(crate) machine: Machine,
    /// Sends operation messages to the agent.
    pub(crate) sender: SecureSender,
    /// Receives the agent's operation messages.
    pub(crate) receiver: SecureReceiver,
}

/// Opens a `kind` stream to `machine` (any name the resolver accepts) over `client`. The agent key bound into
/// the handshake is the one pinned in `known` (pinned now on first contact), never only the relay's word.
pub(crate) async fn open(
    client: &ClientConnection,
    identity: &Identity,
    known: &KnownMachines,
    workspace: Option<&str>,
    machine: &str,
    kind: StreamKind,
) -> Result<Channel, Failure> {
    let routed = client.open_stream(workspace, machine, kind).await?;
    let machine = routed.machine().clone();
    let reported = machine
        .public_key
        .context("the relay reported no valid key for this machine")?;
    if known.check_or_pin(machine.id, &machine.hostname, &reported)? == PinStatus::Added {
        eprintln!(
            "cmdop: first contact with {} ({}): pinned its key {} in {}",
            machine.hostname,
            machine.id,
            reported.fingerprint(),
            known.path().display()
        );
    }
    let prologue = Prologue {
        fleet_id: *routed.fleet_id().as_bytes(),
        // check_or_pin made sure the relay's report agrees with the pin.
        agent_key: reported,
        channel_id: routed.channel_id(),
        kind,
    };
    let capability = routed.capability().to_vec();
    let (sender, receiver) =
        secure_stream::connect(routed, prologue, identity, &capability).await?;
    Ok(Channel {
        machine,
        sender,
        receiver,
    })
}
