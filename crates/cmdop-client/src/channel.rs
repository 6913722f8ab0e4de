//! Reaching a machine end to end: route a stream through the relay, check the machine's key (against the
//! fleet's certificates in a locked fleet, against the client's pins otherwise), and run the handshake
//! ([`ClientConnection::open_channel`]); and one relay login serving many such streams to the same machine
//! ([`MachineConnection`]).
//!
//! ```text
//!  open_stream ──► RoutedStream { machine, key the relay reports, lock material }
//!       ├─ locked fleet:   fleet_lock::check_route (certificate chains to the pinned fleet key)
//!       └─ unlocked fleet: KnownMachines::check (pinned by relay, fleet, hostname; first contact by policy)
//!       └──► secure_stream::connect (prologue binds the CHECKED key) ──► Channel { sender, receiver }
//! ```

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use cmdop_fleet::{FleetId, Hostname, MachineId, Timestamp};
use cmdop_identity::{Identity, PublicKey};
use cmdop_proto::display::escaped;
use cmdop_proto::e2e::{Prologue, StreamKind};
use cmdop_proto::pins::{PinDecision, PinnedMachine};

use crate::connection::{ClientConnection, ClientError, RoutedStream};
use crate::fleet_lock::{NameMatch, RouteFacts, RouteTrust, check_route, stream_credentials};
use crate::known_machines::{FirstContact, KnownMachines, KnownMachinesError, PinStatus};
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
    /// the person, as ssh does), or is certified by its locked fleet.
    pub pin: PinStatus,
    /// In a locked fleet: the certified hostname, and whether the name asked for was only a prefix the relay
    /// resolved (worth telling the person which machine that was).
    pub certified: Option<(Hostname, NameMatch)>,
    /// Sends operation messages to the agent.
    pub sender: SecureSender,
    /// Receives the agent's operation messages.
    pub receiver: SecureReceiver,
}

impl ClientConnection {
    /// Opens a `kind` channel to `machine` (its id, hostname, display name or a unique prefix) in `workspace`
    /// (`None` when exactly one fleet is in scope). The agent key bound into the handshake is never the
    /// relay's word alone: in a locked fleet it is the key of a machine certificate that chains to the fleet
    /// key pinned in `known`; otherwise the key pinned in `known` for this relay, fleet and hostname (pinned
    /// now on a first contact that `known`'s policy accepts). A relay that substitutes a key is caught
    /// before anything is sent.
    pub async fn open_channel(
        &self,
        identity: &Identity,
        known: &KnownMachines,
        workspace: Option<&str>,
        machine: &str,
        kind: StreamKind,
    ) -> Result<Channel, ClientError> {
        let routed = self.open_stream(workspace, machine, kind).await?;
        let info = routed.machine().clone();
        let relay = self.relay().fingerprint;
        let fleet = FleetId::from_bytes(routed.fleet_id().into_bytes());
        let machine_id = MachineId::from_bytes(info.id.into_bytes());
        let facts = RouteFacts {
            relay: &relay,
            fleet,
            machine: machine_id,
            key: info.public_key,
            hostname: routed.raw_hostname(),
            query: machine,
            now: wall_clock(),
        };
        let (trust, newer) = check_route(
            &facts,
            routed.lock(),
            known.fleet_pin(&relay, fleet)?.as_ref(),
        )?;
        if let Some(newer) = newer {
            known.save_fleet_pin(&newer)?;
        }
        let (agent_key, pin, member_certificate, certified) = match trust {
            RouteTrust::Unlocked => {
                let key = info
                    .public_key
                    .ok_or(ClientError::InvalidMachineKey { machine: info.id })?;
                let offered = offered_machine(&facts, &routed, key)?;
                (key, check_pin(known, offered).await?, None, None)
            }
            RouteTrust::Certified {
                agent_key,
                hostname,
                matched,
                member_certificate,
            } => (
                agent_key,
                PinStatus::Certified,
                member_certificate,
                Some((hostname, matched)),
            ),
        };
        let prologue = Prologue {
            fleet_id: *routed.fleet_id().as_bytes(),
            // Checked above: certified by the fleet, or agreeing with the pin.
            agent_key,
            channel_id: routed.channel_id(),
            kind,
        };
        let credentials = stream_credentials(routed.capability(), member_certificate);
        let (sender, receiver) =
            secure_stream::connect(routed, prologue, identity, &credentials).await?;
        Ok(Channel {
            machine: info,
            pin,
            certified,
            sender,
            receiver,
        })
    }
}

/// The machine the relay answered with, as a pin: its hostname must be a valid one to be pinned at all.
fn offered_machine(
    facts: &RouteFacts<'_>,
    routed: &RoutedStream,
    key: PublicKey,
) -> Result<PinnedMachine, ClientError> {
    let hostname = Hostname::parse(routed.raw_hostname())
        .map_err(|_| KnownMachinesError::InvalidHostname(escaped(routed.raw_hostname())))?;
    Ok(PinnedMachine {
        relay: *facts.relay,
        fleet: facts.fleet,
        hostname,
        machine: facts.machine,
        key,
    })
}

/// The pins' verdict on an unlocked fleet's machine; a first contact goes by the store's policy (asking a
/// person happens on a blocking thread, so the connection keeps running meanwhile).
async fn check_pin(
    known: &KnownMachines,
    offered: PinnedMachine,
) -> Result<PinStatus, ClientError> {
    match known.check(&offered)? {
        PinDecision::Known | PinDecision::Append => return Ok(PinStatus::Known),
        PinDecision::Unknown => {}
        // `check` reports conflicts as errors; nothing else remains.
        PinDecision::Conflict(_) => return Ok(PinStatus::Known),
    }
    let new = known.new_machine(&offered);
    let accepted = match known.first_contact() {
        FirstContact::Refuse => {
            return Err(KnownMachinesError::FirstContact(Box::new(new)).into());
        }
        FirstContact::AcceptNew => true,
        FirstContact::Ask(ask) => {
            let ask = Arc::clone(ask);
            let asked = new.clone();
            tokio::task::spawn_blocking(move || ask(&asked))
                .await
                .unwrap_or(false)
        }
    };
    if !accepted {
        return Err(KnownMachinesError::Declined(Box::new(new)).into());
    }
    known.pin(&offered)?;
    Ok(PinStatus::Added)
}

fn wall_clock() -> Timestamp {
    Timestamp::from_unix_seconds(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
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
