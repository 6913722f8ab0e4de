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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cmdop_fleet::{FleetId, Hostname, MachineId, Timestamp};
use cmdop_identity::{Identity, PublicKey};
use cmdop_proto::display::escaped;
use cmdop_proto::e2e::{Prologue, StreamKind};
use cmdop_proto::pins::{PinDecision, PinnedMachine};
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::connection::{ClientConnection, ClientError, RelayTarget, RoutedStream};
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
///
/// Made with [`MachineConnection::reconnecting`], it can also log in again after the relay connection was
/// lost ([`reconnect`](Self::reconnect)), and [`open_waiting`](Self::open_waiting) then waits for that (and for
/// the machine to come back) instead of failing: what a long-lived forward needs across a relay restart.
///
/// ```text
///  open_waiting ──open──▶ ok
///        │ lost / machine offline
///        └──▶ wait for the next reconnect (or 0.5 s) ──▶ open again … until the deadline
///  reconnect ──login──▶ swap the connection, bump the generation (wakes the waiters)
/// ```
#[derive(Debug)]
pub struct MachineConnection {
    /// The connection in use; replaced by a successful [`reconnect`](Self::reconnect).
    client: Mutex<Arc<ClientConnection>>,
    /// How to log in again; `None` for a connection made with [`MachineConnection::new`].
    relogin: Option<Relogin>,
    identity: Identity,
    known: KnownMachines,
    workspace: Option<String>,
    /// What the caller named, until the first channel resolved it; then the machine's id.
    machine: Mutex<String>,
    /// Bumped on every reconnect.
    generation: watch::Sender<u64>,
}

/// The relay and credential a [`MachineConnection`] logs in again with.
struct Relogin {
    relay: RelayTarget,
    credential: Zeroizing<String>,
}

impl std::fmt::Debug for Relogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relogin")
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

/// How often [`MachineConnection::open_waiting`] asks again for a machine that is offline.
const OFFLINE_RETRY: Duration = Duration::from_millis(500);

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
        Self::build(client, None, identity, known, workspace, machine.into())
    }

    /// Like [`new`](Self::new), keeping `relay` and `credential` (those `client` logged in with) so that
    /// [`reconnect`](Self::reconnect) can log in again after the connection is lost.
    pub fn reconnecting(
        client: ClientConnection,
        relay: RelayTarget,
        credential: Zeroizing<String>,
        identity: Identity,
        known: KnownMachines,
        workspace: Option<String>,
        machine: impl Into<String>,
    ) -> Arc<Self> {
        let relogin = Relogin { relay, credential };
        Self::build(
            client,
            Some(relogin),
            identity,
            known,
            workspace,
            machine.into(),
        )
    }

    fn build(
        client: ClientConnection,
        relogin: Option<Relogin>,
        identity: Identity,
        known: KnownMachines,
        workspace: Option<String>,
        machine: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            client: Mutex::new(Arc::new(client)),
            relogin,
            identity,
            known,
            workspace,
            machine: Mutex::new(machine),
            generation: watch::Sender::new(0),
        })
    }

    fn current(&self) -> Arc<ClientConnection> {
        Arc::clone(&self.client.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Opens one end-to-end channel of `kind` to the machine (see [`ClientConnection::open_channel`]).
    pub async fn open(&self, kind: StreamKind) -> Result<Channel, ClientError> {
        let name = self
            .machine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let channel = self
            .current()
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

    /// [`open`](Self::open), but while the relay connection is being re-established (by another task calling
    /// [`reconnect`](Self::reconnect)) or the machine is offline, waits and tries again, for at most `wait`.
    /// Without re-login (made with [`new`](Self::new)) it is `open`.
    pub async fn open_waiting(
        &self,
        kind: StreamKind,
        wait: Duration,
    ) -> Result<Channel, ClientError> {
        let now = tokio::time::Instant::now();
        // A wait too long to add is as good as forever: a year.
        let deadline = now
            .checked_add(wait)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
        loop {
            let mut reconnected = self.generation.subscribe();
            let err = match self.open(kind).await {
                Ok(channel) => return Ok(channel),
                Err(err) => err,
            };
            let offline = matches!(err, ClientError::MachineOffline(_));
            if self.relogin.is_none() || !(offline || err.is_retryable()) {
                return Err(err);
            }
            let next = async {
                if offline {
                    tokio::time::sleep(OFFLINE_RETRY).await;
                } else {
                    let _ = reconnected.changed().await;
                }
            };
            if tokio::time::timeout_at(deadline, next).await.is_err() {
                return Err(err);
            }
        }
    }

    /// Logs in again with the relay and credential kept by [`reconnecting`](Self::reconnecting), replacing the
    /// lost connection; channels opened from now on use the new one. One attempt: the caller decides on
    /// backoff. A connection made with [`new`](Self::new) cannot: it says so as [`ClientError::Protocol`].
    pub async fn reconnect(&self) -> Result<(), ClientError> {
        let Some(relogin) = &self.relogin else {
            return Err(ClientError::Protocol(
                "this machine connection was made without what it takes to log in again".into(),
            ));
        };
        let client =
            ClientConnection::login(&relogin.relay, &self.identity, &relogin.credential).await?;
        let old = std::mem::replace(
            &mut *self.client.lock().unwrap_or_else(PoisonError::into_inner),
            Arc::new(client),
        );
        // The old connection is gone already; this only frees what is left of it at once.
        old.close_now().await;
        self.generation.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// The pin store the channels are checked against.
    pub fn known_machines(&self) -> &KnownMachines {
        &self.known
    }

    /// Resolves when the current connection to the relay is gone, with the reason (every channel on it ends
    /// with it).
    pub async fn closed(&self) -> ClientError {
        self.current().closed().await
    }

    /// Says goodbye to the relay. Channels other tasks still use end with the connection.
    pub async fn close(self: Arc<Self>) {
        let client = match Arc::try_unwrap(self) {
            Ok(only) => only
                .client
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner),
            Err(shared) => shared.current(),
        };
        match Arc::try_unwrap(client) {
            Ok(only) => only.close().await,
            Err(shared) => shared.close_now().await,
        }
    }
}
