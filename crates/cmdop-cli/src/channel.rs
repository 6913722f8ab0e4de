//! Opening an end-to-end channel to a machine, as the CLI does it: cmdop-client routes the stream, checks the
//! machine's key against the pins and runs the handshake; the CLI tells the person about a first contact.
//! Every operation (exec, shell, …) starts here.

use std::sync::atomic::{AtomicBool, Ordering};

use cmdop_client::known_machines::{KnownMachines, PinStatus};
use cmdop_client::{Channel, ClientConnection, ClientError};
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
    Ok(open_typed(client, identity, known, workspace, machine, kind).await?)
}

/// [`open`], with the library's error, for callers that tell its cases apart (an offline machine among many).
pub(crate) async fn open_typed(
    client: &ClientConnection,
    identity: &Identity,
    known: &KnownMachines,
    workspace: Option<&str>,
    machine: &str,
    kind: StreamKind,
) -> Result<Channel, ClientError> {
    let channel = client
        .open_channel(identity, known, workspace, machine, kind)
        .await?;
    announce_first_contact(&channel, known);
    Ok(channel)
}

/// Set by `cmdop rsh -q`: no notices, as `ssh -q` prints none.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Stops the notice of a first contact (a key pinned) for the rest of this process.
pub(crate) fn be_quiet() {
    QUIET.store(true, Ordering::Relaxed);
}

/// Tells the person, as ssh does, that a machine's key has just been pinned (trusted on first use).
pub(crate) fn announce_first_contact(channel: &Channel, known: &KnownMachines) {
    if QUIET.load(Ordering::Relaxed) {
        return;
    }
    let machine = &channel.machine;
    if let (PinStatus::Added, Some(key)) = (channel.pin, machine.public_key) {
        eprintln!(
            "cmdop: first contact with {} ({}): pinned its key {} in {}",
            machine.hostname,
            machine.id,
            key.fingerprint().with_short(),
            known.path().display()
        );
    }
}
