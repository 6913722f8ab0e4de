//! Opening an end-to-end channel to a machine, as the CLI does it: cmdop-client routes the stream, checks the
//! machine's key against the pins and runs the handshake; the CLI tells the person about a first contact.
//! Every operation (exec, shell, …) starts here.

use cmdop_client::known_machines::{KnownMachines, PinStatus};
use cmdop_client::{Channel, ClientConnection};
use cmdop_identity::Identity;
use cmdop_proto::e2e::StreamKind;

use crate::exit::Failure;

/// Opens a `kind` channel to `machine` (any name the resolver accepts) over `client`, pinning the machine's key
/// in `known` on first contact.
pub(crate) async fn open(
    client: &ClientConnection,
    identity: &Identity,
    known: &KnownMachines,
    workspace: Option<&str>,
    machine: &str,
    kind: StreamKind,
) -> Result<Channel, Failure> {
    let channel = client
        .open_channel(identity, known, workspace, machine, kind)
        .await?;
    announce_first_contact(&channel, known);
    Ok(channel)
}

/// Tells the person, as ssh does, that a machine's key has just been pinned (trusted on first use).
pub(crate) fn announce_first_contact(channel: &Channel, known: &KnownMachines) {
    let machine = &channel.machine;
    if let (PinStatus::Added, Some(key)) = (channel.pin, machine.public_key) {
        eprintln!(
            "cmdop: first contact with {} ({}): pinned its key {} in {}",
            machine.hostname,
            machine.id,
            key.fingerprint(),
            known.path().display()
        );
    }
}
