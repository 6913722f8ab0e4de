//! Reaching a machine end to end: route a stream through the relay, check the machine's key against the
//! client's pins, and run the handshake ([`ClientConnection::open_channel`]); and one relay login serving many
//! such streams to the same machine ([`MachineConnection`]).
//!
//! ```text
//!  open_stream ──► RoutedStream { machine, key the relay reports } ──► KnownMachines::check_or_pin
//!       └──► secure_stream::connect (prologue binds the PINNED key) ──► Channel { sender, receiver }
//! ```

use std::sync::{Arc, Mutex, PoisonError};

use cmdop_identity::Identity;
use cmdop_proto::e2e::{Prologue, StreamKind};

use crate::connection::{ClientConnection, ClientError};
use crate::known_machines::{KnownMachines, PinStatus};
use crate::machine::Machine;
use crate::secure_stream::{self, SecureReceiver, SecureSender};

/// An authenticated end-to-end channel to one machine, ready for operation messages
/// ([`cmdop_proto::ops`]). Fields may be added; destructure with `..`.
#[non_exhaustive]
#[derive(Debug)]
pub struct Channel {
    /// The machine, as the relay resolved the name (its key is the pinned one).
    pub machine: Machine,
    /// Whether the machine's key was already pinned or has just been pinned (first contact: worth telling
    /// the person, as ssh does).
    pub pin: PinStatus,
    /// Sends operation messages to the agent.
    pub sender: SecureSender,
    /// Receives the agent's operation messages.
    pub receiver: SecureReceiver,
}

impl ClientConnection {
    /// Opens a `kind` channel to `machine` (its id, hostname, display name or a unique prefix) in `workspace`
    /// (`None` when exactly one fleet is in scope). The agent key bound into the handshake is the one pinned
    /// in `known` (pinned now on first contact), never only the relay's word, so a relay that substitutes a
    /// key is caught before anything is sent.
    pub async fn open_channel(
        &self,
        identity: &Identity,
        known: &KnownMachines,
        workspace: Option<&str>,
        machine: &str,
        kind: StreamKind,
    ) -> Result<Channel, ClientError> {
        let routed = self.open_stream(workspace, machine, kind).await?;
        let machine = routed.machine().clone();
        let reported = machine.public_key.ok_or(ClientError::InvalidMachineKey {
            machine: machine.id,
        })?;
        let pin = known.check_or_pin(machine.id, &machine.hostname, &reported)?;
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
            pin,
            sender,
            receiver,
        })
    }
}

/// One relay login serving many end-to-end channels to one machine, for work that opens several (a port
/// forward's connections, a copy next to a shell). The name is resolved by the first channel; later ones go
/// to that machine by id, whatever else the name matches by then. Shared between tasks through an [`Arc`].
#[derive(Debug)]
pub struct MachineConnection {
    client: ClientConnection,
    identity: Identity,
    known: KnownMachines,
    workspace: Option<String>,
    /// What the caller named, until the first channel resolved it; then the machine's id.
    machine: Mutex<String>,
}

impl MachineConnection {
    /// Aims a logged-in `client` at `machine` in `workspace`; `identity` is the one `client` logged in with
    /// (the agent checks that the channel's key is the one the relay vouched for).
    pub fn new(
        client: ClientConnection,
        identity: Identity,
        known: KnownMachines,
        workspace: Option<String>,
        machine: impl Into<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            identity,
            known,
            workspace,
            machine: Mutex::new(machine.into()),
        })
    }

    /// Opens one end-to-end channel of `kind` to the machine (see [`ClientConnection::open_channel`]).
    pub async fn open(&self, kind: StreamKind) -> Result<Channel, ClientError> {
        let name = self
            .machine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let channel = self
            .client
            .open_channel(
                &self.identity,
                &self.known,
                self.workspace.as_deref(),
                &name,
                kind,
            )
            .await?;
        *self.machine.lock().unwrap_or_else(PoisonError::into_inner) =
            channel.machine.id.to_string();
        Ok(channel)
    }

    /// The pin store the channels are checked against.
    pub fn known_machines(&self) -> &KnownMachines {
        &self.known
    }

    /// Resolves when the connection to the relay is gone, with the reason (every channel ends with it).
    pub async fn closed(&self) -> ClientError {
        self.client.closed().await
    }

    /// Says goodbye to the relay. Channels other tasks still use end with the connection.
    pub async fn close(self: Arc<Self>) {
        match Arc::try_unwrap(self) {
            Ok(only) => only.client.close().await,
            Err(shared) => shared.client.close_now().await,
        }
    }
}
