//! The client library agents and the `cmdop` CLI use to talk to a relay.
//!
//! ```text
//! let relay = RelayTarget::new("relay.example:4433", fingerprint);
//! let mut agent = AgentConnection::register(&relay, &identity, &registration).await?;   // agent
//! let mut client = ClientConnection::login(&relay, &identity, &credential).await?;       // CLI
//! let machines = client.list_machines(Some("prod")).await?;
//! ```
//!
//! Every connection pins the relay certificate fingerprint; a mismatch fails inside the TLS handshake, before any
//! credential is sent. Errors are typed so the CLI can map them to exit codes, and their messages name the fix.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cmdop_identity::{Identity, PublicKey};
use cmdop_proto::RelayFingerprint;
use cmdop_proto::display::escaped;
use cmdop_proto::e2e::StreamKind;
use cmdop_proto::login::{
    AgentLoginRequest, ClientCredential, LoginError, LoginOutcome, LoginRequest, LoginStep,
    PeerLogin, message_name,
};
use cmdop_proto::presence::{HeartbeatError, HeartbeatSchedule};
use cmdop_proto::wire::{
    CloseCode, EXPORTER_LABEL, EXPORTER_LEN, ErrorCode, ErrorMessage, FleetLockState, GoAway,
    KeyBytes, ListMachines, LockItem, LockQuery, LockSubmit, OpenStream, PeerMessage, RelayMessage,
    RouteLock, Submission,
};
use rand_core::RngCore;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::control::{ControlStream, StreamError};
use crate::fleet_lock::LockCheckError;
use crate::known_machines::KnownMachinesError;
use crate::machine::{Candidate, Machine};
use crate::secure_stream::SecureStreamError;
use crate::transport::{
    Limits, SERVER_NAME, TransportError, client_config, client_endpoint, transport_config_towards,
};

/// How long connecting (including the TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the relay may take to answer one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client's [`ClientConnection::close`] lets the endpoint drain: enough to put the close frame on
/// the wire, not QUIC's full draining period.
const CLIENT_DRAIN: Duration = Duration::from_millis(10);
/// The most machines a listing may hold; a relay sending more is broken or hostile, and this bounds the memory
/// it can make a client spend.
pub(crate) const MAX_LISTED_MACHINES: usize = 1_000_000;
/// First reconnect delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// Largest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How long [`ClientConnection::login`] keeps trying a relay that refuses connections because it is busy.
pub const BUSY_PATIENCE: Duration = Duration::from_secs(10);

/// Errors a relay client sees. Each message names the fix.
///
/// The cases a caller usually tells apart:
///
/// | case | variants |
/// |---|---|
/// | not found | [`MachineNotFound`](Self::MachineNotFound), [`FleetNotFound`](Self::FleetNotFound), [`WorkspaceRequired`](Self::WorkspaceRequired) |
/// | ambiguous | [`Ambiguous`](Self::Ambiguous), with the candidates as data |
/// | offline | [`MachineOffline`](Self::MachineOffline) |
/// | refused | [`AuthenticationFailed`](Self::AuthenticationFailed), [`Forbidden`](Self::Forbidden), [`CredentialRevoked`](Self::CredentialRevoked), [`Refused`](Self::Refused), [`FingerprintMismatch`](Self::FingerprintMismatch), [`KnownMachines`](Self::KnownMachines) (a changed machine key), [`SecureStream`](Self::SecureStream) (the agent refused) |
/// | connection lost | [`Unreachable`](Self::Unreachable), [`Closed`](Self::Closed), [`GoingAway`](Self::GoingAway) (the relay stops on purpose), [`Timeout`](Self::Timeout), [`SecureStream`](Self::SecureStream) with [`SecureStreamError::Io`]; [`is_retryable`](Self::is_retryable) says yes to these |
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The relay presented a different certificate than the pinned one. Nothing was sent.
    #[error(
        "relay certificate fingerprint mismatch: expected {expected}, got {got}; check --relay-fingerprint (run `cmdop-relay fingerprint` on the relay)"
    )]
    FingerprintMismatch {
        /// The pinned fingerprint.
        expected: RelayFingerprint,
        /// The fingerprint the relay presented.
        got: RelayFingerprint,
    },
    /// The relay address is not `HOST:PORT`, so it was not even looked up.
    #[error("invalid relay address {address:?}: {reason}")]
    InvalidRelayAddress {
        /// The address given.
        address: String,
        /// What is wrong with it and how to write it.
        reason: String,
    },
    /// The relay address does not resolve.
    #[error("cannot resolve relay address {address:?}; check --relay (HOST:PORT)")]
    Resolve {
        /// The address given.
        address: String,
    },
    /// The relay could not be reached or the connection broke.
    #[error(
        "cannot reach the relay at {address}: {reason}; check that it runs and that UDP traffic to it is allowed"
    )]
    Unreachable {
        /// The address tried.
        address: String,
        /// What failed.
        reason: String,
    },
    /// The relay refused the connection before any login: it has no room for another one right now (every
    /// login slot and its waiting room taken, or its connection limit reached). Retrying shortly helps.
    #[error(
        "the relay at {address} is too busy to take another connection right now (it refused the handshake); try again in a moment"
    )]
    RelayBusy {
        /// The address tried.
        address: String,
    },
    /// The relay refused the credential or the key proof.
    #[error("{0}")]
    AuthenticationFailed(String),
    /// The credential is valid but may not do this (e.g. an agent key used by the CLI).
    #[error("{0}")]
    Forbidden(String),
    /// The fleet does not exist or is not in the credential's scope.
    #[error("{0}")]
    FleetNotFound(String),
    /// Several fleets are in scope; `--workspace` must choose one.
    #[error("{message}")]
    WorkspaceRequired {
        /// The relay's explanation.
        message: String,
    },
    /// Another machine of the fleet uses this hostname.
    #[error("{0}")]
    HostnameTaken(String),
    /// No machine of the fleet matches the name.
    #[error("{0}")]
    MachineNotFound(String),
    /// Several machines match the name: open the stream again with one of the candidates' ids (or hostnames).
    #[error("{message}")]
    Ambiguous {
        /// The relay's explanation, which lists the first candidates.
        message: String,
        /// The machines the name matched, sorted by name, hostname and id (empty from a relay too old to send
        /// them).
        candidates: Vec<Candidate>,
    },
    /// The machine is not connected.
    #[error("{0}")]
    MachineOffline(String),
    /// Any other refusal from the relay.
    #[error("relay refused (code {}): {message}", code.0)]
    Refused {
        /// The relay's error code.
        code: ErrorCode,
        /// The relay's explanation.
        message: String,
    },
    /// The relay is stopping on purpose (a restart, an upgrade) and asked this agent to come back later
    /// ([`RelayMessage::GoAway`]); [`come_back`](Self::come_back) says when. The connection stays usable for
    /// the streams running on it until the relay closes it.
    #[error(
        "the relay is restarting; it asked to reconnect {} ms after it closes, spread over {} ms",
        .0.reconnect_after_ms,
        .0.spread_ms
    )]
    GoingAway(GoAway),
    /// The relay closed the connection because its credential was revoked or expired.
    #[error("the relay closed the connection: {0}; ask the relay admin for a new credential")]
    CredentialRevoked(String),
    /// The relay closed the connection.
    #[error("the relay closed the connection (code {code}): {reason}")]
    Closed {
        /// The application close code.
        code: u32,
        /// The relay's reason.
        reason: String,
    },
    /// The relay did not answer in time.
    #[error("the relay did not answer within {0:?}; check the relay and the network")]
    Timeout(Duration),
    /// The relay sent something this client does not understand.
    #[error("protocol error: {0}; check that the relay and this client run compatible versions")]
    Protocol(String),
    /// Local TLS or QUIC setup failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The relay routed the stream but reported no valid key for the machine, so no channel can be bound to it.
    #[error("the relay reported no valid key for this machine")]
    InvalidMachineKey {
        /// The machine.
        machine: Uuid,
    },
    /// The machine's key is not the pinned one, or the pin store cannot be used; nothing was sent.
    #[error(transparent)]
    KnownMachines(#[from] KnownMachinesError),
    /// The machine's fleet is locked and its key is not certified by the pinned fleet key (or the relay sent
    /// a lock that does not verify); nothing was sent.
    #[error(transparent)]
    Lock(#[from] LockCheckError),
    /// The end-to-end channel failed: its handshake (refused, tampered with) or the stream under it (lost).
    #[error(transparent)]
    SecureStream(#[from] SecureStreamError),
}

impl ClientError {
    /// When the relay asked this peer to come back, because it is stopping on purpose (a restart, an
    /// upgrade); `None` for every other failure, which [`reconnect_delay`]'s backoff handles.
    ///
    /// A relay's go-away message ([`GoingAway`](Self::GoingAway)) carries its "come back after / within"
    /// fields; a shutdown close without one (close code 7, from a relay older than the message or to a peer
    /// that did not announce it understands it) means "now, spread over [`ComeBack::SHUTDOWN`]'s window".
    pub fn come_back(&self) -> Option<ComeBack> {
        match self {
            Self::GoingAway(go_away) => Some(ComeBack::from(*go_away)),
            Self::Closed { code, .. } if *code == CloseCode::SHUTDOWN.0 => Some(ComeBack::SHUTDOWN),
            _ => None,
        }
    }

    /// Whether retrying later can help (network trouble, relay restarts, relay busy) as opposed to a refusal
    /// that needs a human (bad credential, wrong fingerprint, scope). The caller decides what to do with either.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. }
                | Self::RelayBusy { .. }
                | Self::Closed { .. }
                | Self::GoingAway(_)
                | Self::Timeout(_)
                | Self::SecureStream(SecureStreamError::Io(_))
        ) || matches!(self, Self::Refused { code, .. } if *code == ErrorCode::BUSY || *code == ErrorCode::INTERNAL)
    }
}

/// Where the relay is and which certificate it must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTarget {
    /// `HOST:PORT`.
    pub address: String,
    /// The pinned certificate fingerprint.
    pub fingerprint: RelayFingerprint,
}

/// Checks that `address` has the shape `HOST:PORT` (an IPv6 address in brackets) before anything looks it up:
/// without this, a forgotten port (`--relay 127.0.0.1`) surfaced as a name that does not resolve.
pub fn check_relay_address(address: &str) -> Result<(), ClientError> {
    let bad = |reason: String| ClientError::InvalidRelayAddress {
        address: address.chars().take(120).collect(),
        reason,
    };
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| {
            bad("the `[` of an IPv6 address is not closed; write [ADDRESS]:PORT".into())
        })?;
        let port = after.strip_prefix(':').ok_or_else(|| {
            bad(format!(
                "the port is missing; write HOST:PORT, e.g. [{host}]:4433"
            ))
        })?;
        (host, port)
    } else {
        match address.rsplit_once(':') {
            None => {
                return Err(bad(format!(
                    "the port is missing; write HOST:PORT, e.g. {address}:4433"
                )));
            }
            Some((host, _)) if host.contains(':') => {
                return Err(bad(
                    "an IPv6 address goes in brackets; write [ADDRESS]:PORT, e.g. [::1]:4433"
                        .into(),
                ));
            }
            Some(split) => split,
        }
    };
    if host.is_empty() {
        return Err(bad(
            "the host is missing; write HOST:PORT, e.g. relay.example:4433".into(),
        ));
    }
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(()),
        _ => Err(bad(format!(
            "the port {port:?} is not a number from 1 to 65535; write HOST:PORT, e.g. relay.example:4433"
        ))),
    }
}

impl RelayTarget {
    /// A target from an address (`HOST:PORT`) and a pinned fingerprint.
    pub fn new(address: impl Into<String>, fingerprint: RelayFingerprint) -> Self {
        Self {
            address: address.into(),
            fingerprint,
        }
    }
}

/// A QUIC endpoint (one UDP socket, one receive path) that many connections to relays leave from.
///
/// [`AgentConnection::register`] and [`ClientConnection::login`] give each connection an endpoint of its own,
/// which is what one agent or one CLI wants. A process that holds thousands of connections at once (a load
/// generator simulating a fleet, a gateway) shares one instead: a file descriptor and a UDP port in all,
/// rather than one of each per connection. Cloning shares the endpoint; it closes when the last clone and
/// the last connection from it are dropped.
#[derive(Debug, Clone)]
pub struct Dialer {
    endpoint: quinn::Endpoint,
}

impl Dialer {
    /// An endpoint bound to `bind` (`0.0.0.0:0` for any IPv4 relay, `[::]:0` for IPv6). Must be called
    /// within a tokio runtime.
    pub fn bind(bind: SocketAddr) -> Result<Self, ClientError> {
        let unusable = |reason: String| ClientError::Unreachable {
            address: bind.to_string(),
            reason: format!("cannot open a local QUIC endpoint: {reason}"),
        };
        // The same endpoint limits (UDP payload size, socket buffers, split offload batches) as a connection's
        // own endpoint.
        let endpoint =
            client_endpoint(bind, &Limits::default()).map_err(|e| unusable(e.to_string()))?;
        Ok(Self { endpoint })
    }

    /// The local address of the shared socket.
    pub fn local_addr(&self) -> Result<SocketAddr, ClientError> {
        self.endpoint
            .local_addr()
            .map_err(|err| ClientError::Unreachable {
                address: "the local endpoint".to_owned(),
                reason: err.to_string(),
            })
    }
}

/// What an agent tells the relay about itself.
#[derive(Clone)]
pub struct AgentRegistration {
    /// The agent API key text (`cmdop_ak_…`). Zeroized on drop.
    pub api_key: Zeroizing<String>,
    /// The fleet to enrol into (`--workspace`).
    pub workspace: String,
    /// The machine's hostname.
    pub hostname: String,
    /// A display name; the relay keeps the current one (or the hostname) when `None`.
    pub display_name: Option<String>,
    /// Operating system (e.g. `std::env::consts::OS`).
    pub os: String,
    /// CPU architecture (e.g. `std::env::consts::ARCH`).
    pub arch: String,
    /// Agent version.
    pub agent_version: String,
    /// The machine's labels, (key, value): `--label role=web`.
    pub labels: Vec<(String, String)>,
}

impl std::fmt::Debug for AgentRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRegistration")
            .field("workspace", &self.workspace)
            .field("hostname", &self.hostname)
            .field("display_name", &self.display_name)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// A registered agent's connection.
#[derive(Debug)]
pub struct AgentConnection {
    link: Link,
    machine_id: Uuid,
    fleet_id: Uuid,
    heartbeat_interval: Duration,
    trust_key: PublicKey,
    /// The fleet's lock as the relay sent it right after registering (`None` from a relay that predates the
    /// fleet lock), and any newer one that arrived while waiting for another answer.
    fleet_lock: Option<FleetLockState>,
}

/// What the relay answered an agent's enrolment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrolmentReply {
    /// The machine already holds a valid certificate: nothing to do.
    AlreadyCertified,
    /// The enrolment authorization of the key asked about; sign a certificate under it.
    Authorization(Vec<u8>),
}

impl AgentConnection {
    /// Connects from an endpoint of its own, proves the agent's key and registers the machine.
    pub async fn register(
        relay: &RelayTarget,
        identity: &Identity,
        registration: &AgentRegistration,
    ) -> Result<Self, ClientError> {
        Self::register_from(None, relay, identity, registration).await
    }

    /// As [`register`](Self::register), but the connection leaves from `dialer`'s endpoint, which other
    /// connections share.
    pub async fn register_via(
        dialer: &Dialer,
        relay: &RelayTarget,
        identity: &Identity,
        registration: &AgentRegistration,
    ) -> Result<Self, ClientError> {
        Self::register_from(Some(dialer), relay, identity, registration).await
    }

    async fn register_from(
        dialer: Option<&Dialer>,
        relay: &RelayTarget,
        identity: &Identity,
        registration: &AgentRegistration,
    ) -> Result<Self, ClientError> {
        let request = LoginRequest::Agent(AgentLoginRequest {
            api_key: registration.api_key.clone(),
            workspace: registration.workspace.clone(),
            hostname: registration.hostname.clone(),
            display_name: registration.display_name.clone(),
            os: registration.os.clone(),
            arch: registration.arch.clone(),
            agent_version: registration.agent_version.clone(),
            labels: registration.labels.clone(),
        });
        let software = format!("cmdop-agent {}", registration.agent_version);
        let (mut link, outcome) =
            Link::connect(dialer, relay, request, &software, identity).await?;
        match outcome {
            LoginOutcome::Registered {
                registered,
                trust_key,
            } => {
                // This connection carries every client's streams to this machine: its windows must not let a
                // few unread streams hold all of its credit (the relay sizes its side the same way).
                let carrier = Limits::default().carrier_window();
                link.connection.set_send_window(carrier);
                link.connection.set_receive_window(
                    quinn::VarInt::from_u64(carrier).unwrap_or(quinn::VarInt::MAX),
                );
                // The relay follows `Registered` with the fleet's lock (the agent advertised that it
                // understands it), before it routes any stream here. A relay that predates the lock never
                // sends one; the wait for it is bounded.
                let fleet_lock =
                    match tokio::time::timeout(REQUEST_TIMEOUT, link.stream.recv::<RelayMessage>())
                        .await
                    {
                        Ok(Ok(Some(RelayMessage::FleetLock(lock)))) => Some(lock),
                        Ok(Ok(Some(other))) => return Err(unexpected(&other)),
                        Ok(Ok(None)) => {
                            return Err(link.close_reason().unwrap_or_else(|| {
                                ClientError::Closed {
                                    code: CloseCode::NORMAL.0,
                                    reason: "control stream ended".into(),
                                }
                            }));
                        }
                        Ok(Err(err)) => return Err(link.stream_error(err)),
                        Err(_) => None,
                    };
                Ok(Self {
                    link,
                    machine_id: Uuid::from_bytes(registered.machine_id.0),
                    fleet_id: Uuid::from_bytes(registered.fleet_id.0),
                    heartbeat_interval: Duration::from_secs(
                        registered.heartbeat_interval_secs.max(1).into(),
                    ),
                    trust_key,
                    fleet_lock,
                })
            }
            LoginOutcome::Welcome(_) => Err(ClientError::Protocol(
                "the relay welcomed an agent as a client".into(),
            )),
        }
    }

    /// The machine's id, stable for this key in this fleet.
    pub fn machine_id(&self) -> Uuid {
        self.machine_id
    }

    /// The fleet's id.
    pub fn fleet_id(&self) -> Uuid {
        self.fleet_id
    }

    /// How often the relay expects a heartbeat.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// The fleet trust key the relay presented; the agent pins it and accepts only capabilities it signed.
    pub fn trust_key(&self) -> PublicKey {
        self.trust_key
    }

    /// The fleet's lock as the relay sent it after registering (empty authority: the fleet is not locked;
    /// `None`: a relay that predates the fleet lock). The agent verifies it against the fleet key it pinned.
    pub fn take_fleet_lock(&mut self) -> Option<FleetLockState> {
        self.fleet_lock.take()
    }

    /// Asks the relay for the enrolment authorization of `enrolment_key` (the public half of the key derived
    /// from the enrolment secret).
    pub async fn request_enrolment(
        &mut self,
        enrolment_key: &PublicKey,
    ) -> Result<EnrolmentReply, ClientError> {
        let request = PeerMessage::Enrol(KeyBytes(enrolment_key.to_bytes()));
        match self.agent_request(&request).await? {
            RelayMessage::EnrolAuthorization(bytes) => Ok(EnrolmentReply::Authorization(bytes)),
            RelayMessage::Enrolled => Ok(EnrolmentReply::AlreadyCertified),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends the machine certificate this agent signed with its enrolment key; `Ok` once the relay stored it.
    pub async fn submit_enrolment(&mut self, certificate: Vec<u8>) -> Result<(), ClientError> {
        match self
            .agent_request(&PeerMessage::EnrolProof(certificate))
            .await?
        {
            RelayMessage::Enrolled => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// A request on the control stream; a fleet lock the relay pushes meanwhile is kept for
    /// [`take_fleet_lock`](Self::take_fleet_lock), never mistaken for the answer.
    async fn agent_request(&mut self, message: &PeerMessage) -> Result<RelayMessage, ClientError> {
        let mut reply = self.link.request(message).await?;
        while let RelayMessage::FleetLock(lock) = reply {
            self.fleet_lock = Some(lock);
            reply = self.link.receive().await?;
        }
        Ok(reply)
    }

    /// A handle that accepts the streams the relay routes to this agent; usable from another task while
    /// this connection heartbeats.
    pub fn acceptor(&self) -> StreamAcceptor {
        StreamAcceptor {
            connection: self.link.connection.clone(),
        }
    }

    /// Sends one heartbeat and waits for its acknowledgement.
    pub async fn heartbeat(&mut self) -> Result<(), ClientError> {
        match self.link.request(&PeerMessage::Heartbeat).await? {
            RelayMessage::HeartbeatAck => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends heartbeats at the relay's interval until one fails; returns that error (e.g. the relay restarted or
    /// revoked the key). Cancel-safe: drop the future and call [`goodbye`](Self::goodbye). The schedule is
    /// cmdop-proto's [`HeartbeatSchedule`]; this loop only moves its messages and waits for its timer.
    pub async fn keep_alive(&mut self) -> ClientError {
        self.keep_alive_with(|_| {}).await
    }

    /// [`keep_alive`](Self::keep_alive), handing every fleet lock the relay pushes (after an admin changed
    /// it) to `on_lock`.
    pub async fn keep_alive_with(
        &mut self,
        mut on_lock: impl FnMut(FleetLockState),
    ) -> ClientError {
        if let Some(lock) = self.fleet_lock.take() {
            on_lock(lock);
        }
        let mut schedule =
            HeartbeatSchedule::new(self.heartbeat_interval, REQUEST_TIMEOUT, Instant::now());
        // Watch the connection between heartbeats too: a revocation closes it at once, and waiting for the
        // next heartbeat to notice would keep a cut agent looking alive for up to a whole interval.
        let connection = self.link.connection.clone();
        loop {
            let timer = tokio::time::Instant::from_std(schedule.poll_timeout());
            tokio::select! {
                () = tokio::time::sleep_until(timer) => match schedule.handle_timeout(Instant::now()) {
                    Ok(Some(heartbeat)) => {
                        if let Err(err) = self.link.send(&heartbeat).await {
                            return err;
                        }
                    }
                    Ok(None) => {}
                    Err(HeartbeatError::Unanswered(after)) => return ClientError::Timeout(after),
                    Err(err) => return ClientError::Protocol(err.to_string()),
                },
                received = self.link.stream.recv::<RelayMessage>() => {
                    let message = match received {
                        Ok(Some(message)) => message,
                        Ok(None) => return self.link.close_reason().unwrap_or_else(|| ClientError::Closed {
                            code: CloseCode::NORMAL.0,
                            reason: "control stream ended".into(),
                        }),
                        Err(err) => return self.link.stream_error(err),
                    };
                    if let RelayMessage::Error(_) = message {
                        return unexpected(&message);
                    }
                    if let RelayMessage::GoAway(go_away) = message {
                        return ClientError::GoingAway(go_away);
                    }
                    if let RelayMessage::FleetLock(lock) = message {
                        on_lock(lock);
                        continue;
                    }
                    if let Err(err) = schedule.handle(&message) {
                        return ClientError::Protocol(err.to_string());
                    }
                }
                reason = connection.closed() => return self.link.map_close(reason),
            }
        }
    }

    /// Stops gracefully: the relay marks the machine offline at once.
    pub async fn goodbye(mut self) -> Result<(), ClientError> {
        self.link.send(&PeerMessage::Goodbye).await?;
        self.link.finish().await;
        Ok(())
    }

    /// Completes when the relay closes the connection, with the reason.
    pub async fn closed(&self) -> ClientError {
        self.link.closed().await
    }
}

/// A logged-in person's or script's connection.
#[derive(Debug)]
pub struct ClientConnection {
    link: Link,
    relay: RelayTarget,
    principal: String,
    fleets: Vec<String>,
}

impl ClientConnection {
    /// Connects and logs in with an API key (`cmdop_ak_…`, member or admin) or a user token (`cmdop_ut_…`).
    ///
    /// A relay too busy to take the connection ([`ClientError::RelayBusy`], as during a reconnect storm of its
    /// fleet) is tried again with the agents' backoff for up to [`BUSY_PATIENCE`], so that a person's command
    /// goes through a storm instead of failing at its first refusal.
    pub async fn login(
        relay: &RelayTarget,
        identity: &Identity,
        credential: &str,
    ) -> Result<Self, ClientError> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            match Self::login_once(relay, identity, credential).await {
                Err(ClientError::RelayBusy { .. }) if started.elapsed() < BUSY_PATIENCE => {
                    let delay = reconnect_delay(attempt, &mut rand_core::OsRng);
                    attempt += 1;
                    tracing::debug!(?delay, "the relay is busy; trying again");
                    tokio::time::sleep(delay).await;
                }
                result => return result,
            }
        }
    }

    async fn login_once(
        relay: &RelayTarget,
        identity: &Identity,
        credential: &str,
    ) -> Result<Self, ClientError> {
        let request = LoginRequest::Client {
            credential: ClientCredential::new(credential),
        };
        let software = concat!("cmdop ", env!("CARGO_PKG_VERSION"));
        let (link, outcome) = Link::connect(None, relay, request, software, identity).await?;
        match outcome {
            // The relay's words are shown to people: escaped at the door.
            LoginOutcome::Welcome(welcome) => Ok(Self {
                link,
                relay: relay.clone(),
                principal: escaped(&welcome.principal),
                fleets: welcome.fleets.iter().map(|f| escaped(f)).collect(),
            }),
            LoginOutcome::Registered { .. } => Err(ClientError::Protocol(
                "the relay registered a client as an agent".into(),
            )),
        }
    }

    /// The relay this connection is logged in to (its pinned fingerprint keys this client's pins).
    pub fn relay(&self) -> &RelayTarget {
        &self.relay
    }

    /// Who the credential belongs to, e.g. `user alice`.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The fleets in the credential's scope.
    pub fn fleets(&self) -> &[String] {
        &self.fleets
    }

    /// The machines of one fleet; `None` works when exactly one fleet is in scope.
    pub async fn list_machines(
        &mut self,
        workspace: Option<&str>,
    ) -> Result<Vec<Machine>, ClientError> {
        let request = PeerMessage::ListMachines(ListMachines {
            workspace: workspace.map(str::to_owned),
        });
        let mut listed = Vec::new();
        let mut reply = self.link.request(&request).await?;
        // A large fleet's answer comes in parts, the last one a `Machines`.
        loop {
            match reply {
                RelayMessage::MoreMachines(part) => {
                    if listed.len() + part.len() > MAX_LISTED_MACHINES {
                        return Err(ClientError::Protocol(format!(
                            "the relay listed more than {MAX_LISTED_MACHINES} machines"
                        )));
                    }
                    listed.extend(part.into_iter().map(Machine::from));
                    reply = self.link.receive().await?;
                }
                RelayMessage::Machines(last) => {
                    listed.extend(last.into_iter().map(Machine::from));
                    return Ok(listed);
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// A fleet's lock as the relay holds it (an empty authority: the fleet was never locked).
    pub async fn fleet_lock(
        &mut self,
        workspace: Option<&str>,
    ) -> Result<FleetLockState, ClientError> {
        let request = PeerMessage::LockQuery(LockQuery {
            workspace: workspace.map(str::to_owned),
            items: false,
        });
        match self.link.request(&request).await? {
            RelayMessage::FleetLock(lock) => Ok(lock),
            other => Err(unexpected(&other)),
        }
    }

    /// A fleet's lock and everything the relay stores for it (certificates, enrolment keys, the client keys
    /// and admin key candidates it has seen); needs an admin credential.
    pub async fn fleet_lock_items(
        &mut self,
        workspace: Option<&str>,
    ) -> Result<(FleetLockState, Vec<LockItem>), ClientError> {
        let request = PeerMessage::LockQuery(LockQuery {
            workspace: workspace.map(str::to_owned),
            items: true,
        });
        let lock = match self.link.request(&request).await? {
            RelayMessage::FleetLock(lock) => lock,
            other => return Err(unexpected(&other)),
        };
        let mut items = Vec::new();
        loop {
            match self.link.receive().await? {
                RelayMessage::LockItems(more) if more.is_empty() => return Ok((lock, items)),
                RelayMessage::LockItems(more) => items.extend(more),
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Submits a signed fleet-lock document; the relay checks and stores it and says what changed. Needs an
    /// admin credential.
    pub async fn submit_lock(
        &mut self,
        workspace: Option<&str>,
        submission: Submission,
    ) -> Result<String, ClientError> {
        let request = PeerMessage::LockSubmit(LockSubmit {
            workspace: workspace.map(str::to_owned),
            submission,
        });
        match self.link.request(&request).await? {
            RelayMessage::LockAccepted(detail) => Ok(escaped(&detail)),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the relay for a stream to `machine` (resolved within the fleet) for `kind`. The answer names the
    /// machine and carries the capability the agent will check and the fleet's lock material; the caller
    /// checks the machine and runs the end-to-end channel over it.
    pub async fn open_stream(
        &self,
        workspace: Option<&str>,
        machine: &str,
        kind: StreamKind,
    ) -> Result<RoutedStream, ClientError> {
        let (send, recv) = self
            .link
            .connection
            .open_bi()
            .await
            .map_err(|err| self.link.map_close(err))?;
        let mut control = ControlStream::new(send, recv);
        let request = PeerMessage::OpenRoute(OpenStream {
            workspace: workspace.map(str::to_owned),
            machine: machine.to_owned(),
            kind: kind.to_byte(),
        });
        control
            .send(&request)
            .await
            .map_err(|err| self.link.stream_error(err))?;
        let reply =
            match tokio::time::timeout(REQUEST_TIMEOUT, control.recv::<RelayMessage>()).await {
                Err(_) => return Err(ClientError::Timeout(REQUEST_TIMEOUT)),
                Ok(Ok(Some(reply))) => reply,
                Ok(Ok(None)) => {
                    return Err(ClientError::Protocol(
                        "the relay ended the stream without an answer".into(),
                    ));
                }
                Ok(Err(err)) => return Err(self.link.stream_error(err)),
            };
        let RelayMessage::RouteReady(ready) = reply else {
            return Err(match reply {
                RelayMessage::Error(error) if error.code == ErrorCode::AMBIGUOUS => {
                    ClientError::Ambiguous {
                        message: escaped(&error.message),
                        candidates: candidates(&mut control).await,
                    }
                }
                other => unexpected(&other),
            });
        };
        let ready = *ready;
        let (send, recv, leftover) = control.into_parts();
        Ok(RoutedStream {
            raw_hostname: ready.machine.hostname.clone(),
            machine: Machine::from(ready.machine),
            fleet_id: Uuid::from_bytes(ready.fleet_id.0),
            channel_id: ready.channel_id,
            capability: ready.capability,
            lock: ready.lock,
            streams: RawStream {
                send,
                recv,
                leftover,
            },
        })
    }

    /// Closes the connection while other tasks may still hold it (a forward's streams): the relay learns at
    /// once instead of after its idle timeout, and every stream on it ends.
    pub async fn close_now(&self) {
        // Waits for this connection's close frame only, never for a shared endpoint to go idle.
        close_and_send(&self.link.connection).await;
    }

    /// Resolves when the connection to the relay is gone, with the reason.
    pub async fn closed(&self) -> ClientError {
        self.link.closed().await
    }

    /// Ends the session without waiting for the relay: a CLI about to exit only needs its close frame on the
    /// wire (the relay then frees the connection at once, as it does after a goodbye), so this returns as
    /// soon as that frame was sent. Neither QUIC's draining period (three probe timeouts, ~80 ms on loopback)
    /// nor an acknowledgement is waited for; those were most of a one-shot command's run time.
    pub async fn close(self) {
        close_and_send(&self.link.connection).await;
    }
}

/// Closes `connection` (code NORMAL) and returns once the close frame has left in a datagram, or after
/// [`CLIENT_DRAIN`] at the latest.
async fn close_and_send(connection: &quinn::Connection) {
    let sent = connection.stats().udp_tx.datagrams;
    connection.close(CloseCode::NORMAL.0.into(), b"bye");
    let deadline = tokio::time::Instant::now() + CLIENT_DRAIN;
    // The connection's driver task sends the frame on its next turn: usually one yield away.
    for _ in 0..8 {
        if connection.stats().udp_tx.datagrams != sent {
            return;
        }
        tokio::task::yield_now().await;
    }
    while connection.stats().udp_tx.datagrams == sent && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A stopping relay's request to come back: not before `after`, at a uniformly random moment within the
/// following `window`, so that a fleet it sends away returns spread out instead of all at once (iroh's relay
/// does the same with its `Restarting` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComeBack {
    /// The earliest moment to come back, from now.
    pub after: Duration,
    /// How long after `after` the moment may fall.
    pub window: Duration,
}

impl From<GoAway> for ComeBack {
    /// A relay's go-away message, counted from the close that follows it.
    fn from(go_away: GoAway) -> Self {
        Self {
            after: Duration::from_millis(u64::from(go_away.reconnect_after_ms)),
            window: Duration::from_millis(u64::from(go_away.spread_ms)),
        }
    }
}

impl ComeBack {
    /// What a relay's shutdown close means without more: come back at once, spread over 10 s, which a relay
    /// admits ~1,000 agents a second through comfortably (see docs/benchmarks.md).
    pub const SHUTDOWN: Self = Self {
        after: Duration::ZERO,
        window: Duration::from_secs(10),
    };

    /// The delay before reconnecting: `after` plus a uniformly random part of `window`. A pure function of
    /// the request and `rng`.
    pub fn delay<R: RngCore + ?Sized>(&self, rng: &mut R) -> Duration {
        let window = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let spread = if window == 0 {
            0
        } else {
            rng.next_u64() % window.saturating_add(1)
        };
        self.after.saturating_add(Duration::from_millis(spread))
    }
}

/// The delay before reconnect attempt `attempt` (0-based): exponential from 0.5 s, doubling, capped at 30 s,
/// with "equal jitter" (half fixed, half uniformly random) so a fleet reconnecting after a relay restart spreads
/// out instead of arriving at once. A pure function of its inputs.
pub fn reconnect_delay<R: RngCore + ?Sized>(attempt: u32, rng: &mut R) -> Duration {
    let initial = u64::try_from(BACKOFF_INITIAL.as_millis()).unwrap_or(u64::MAX);
    let max = u64::try_from(BACKOFF_MAX.as_millis()).unwrap_or(u64::MAX);
    let ceiling = initial
        .saturating_mul(1u64.checked_shl(attempt.min(32)).unwrap_or(u64::MAX))
        .min(max);
    let half = ceiling / 2;
    let jitter = if half == 0 {
        0
    } else {
        rng.next_u64() % (half + 1)
    };
    Duration::from_millis(ceiling - half + jitter)
}

/// The QUIC halves of a routed stream and the bytes already read past its header.
pub(crate) struct RawStream {
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
    pub(crate) leftover: Vec<u8>,
}

/// A stream the relay routed to a machine, before the end-to-end handshake
/// ([`crate::secure_stream::connect`]).
pub struct RoutedStream {
    machine: Machine,
    /// The hostname exactly as the relay sent it (the machine's is escaped for display): what pins and
    /// certificates are compared with.
    raw_hostname: String,
    fleet_id: Uuid,
    channel_id: [u8; 16],
    capability: Vec<u8>,
    lock: Option<RouteLock>,
    pub(crate) streams: RawStream,
}

impl RoutedStream {
    /// The machine the name resolved to, as the relay reports it (its key is only a claim until pinned).
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The fleet the machine belongs to.
    pub fn fleet_id(&self) -> Uuid {
        self.fleet_id
    }

    /// The relay's random id for this stream, bound into the end-to-end prologue.
    pub fn channel_id(&self) -> [u8; 16] {
        self.channel_id
    }

    /// The capability the relay issued for this client's key.
    pub fn capability(&self) -> &[u8] {
        &self.capability
    }

    /// The fleet's lock material, if the fleet has a lock.
    pub fn lock(&self) -> Option<&RouteLock> {
        self.lock.as_ref()
    }

    /// The machine's hostname exactly as the relay sent it (unescaped, possibly hostile): compare it, never
    /// print it.
    pub fn raw_hostname(&self) -> &str {
        &self.raw_hostname
    }
}

impl std::fmt::Debug for RoutedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedStream")
            .field("machine", &self.machine.id)
            .finish_non_exhaustive()
    }
}

/// Accepts the streams the relay routes to an agent.
#[derive(Debug, Clone)]
pub struct StreamAcceptor {
    connection: quinn::Connection,
}

impl StreamAcceptor {
    /// The next routed stream, after its header; an error once the connection is gone.
    pub async fn accept(&self) -> Result<IncomingStream, ClientError> {
        loop {
            let (send, recv) =
                self.connection
                    .accept_bi()
                    .await
                    .map_err(|err| ClientError::Closed {
                        code: 0,
                        reason: err.to_string(),
                    })?;
            let mut control = ControlStream::new(send, recv);
            // A header that does not arrive or does not parse costs this stream only, not the connection.
            let Ok(Ok(Some(RelayMessage::IncomingStream(header)))) =
                tokio::time::timeout(REQUEST_TIMEOUT, control.recv::<RelayMessage>()).await
            else {
                continue;
            };
            let Some(kind) = StreamKind::from_byte(header.kind) else {
                continue;
            };
            let (send, recv, leftover) = control.into_parts();
            return Ok(IncomingStream {
                channel_id: header.channel_id,
                fleet_id: Uuid::from_bytes(header.fleet_id.0),
                claimed_client_key: header.client_key.0,
                kind,
                streams: RawStream {
                    send,
                    recv,
                    leftover,
                },
            });
        }
    }
}

/// A stream routed to this agent, before the end-to-end handshake ([`crate::secure_stream::accept`]).
pub struct IncomingStream {
    channel_id: [u8; 16],
    fleet_id: Uuid,
    claimed_client_key: [u8; 32],
    kind: StreamKind,
    pub(crate) streams: RawStream,
}

impl IncomingStream {
    /// The relay's random id for this stream.
    pub fn channel_id(&self) -> [u8; 16] {
        self.channel_id
    }

    /// The fleet the relay says the stream belongs to (the prologue makes a lie here fail the handshake).
    pub fn fleet_id(&self) -> Uuid {
        self.fleet_id
    }

    /// What the stream is for.
    pub fn kind(&self) -> StreamKind {
        self.kind
    }

    /// The client key the relay says opened this stream. Only a claim until the end-to-end handshake proves a
    /// key; good for accounting before that (how many handshakes one client has pending), never for trust.
    pub fn claimed_client_key(&self) -> [u8; 32] {
        self.claimed_client_key
    }

    /// Refuses the stream before its handshake: both directions are reset at once, so the relay and the
    /// client learn immediately and the stream's flow-control credit is freed.
    pub fn refuse(self) {
        let RawStream {
            mut send, mut recv, ..
        } = self.streams;
        let _ = send.reset(0u32.into());
        let _ = recv.stop(0u32.into());
    }
}

impl std::fmt::Debug for IncomingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingStream")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The [`RelayMessage::Candidates`] that follows an `AMBIGUOUS` refusal on a routed stream; none if the relay
/// finished the stream without it (an older relay) or sent something else.
async fn candidates(control: &mut ControlStream) -> Vec<Candidate> {
    match tokio::time::timeout(REQUEST_TIMEOUT, control.recv::<RelayMessage>()).await {
        Ok(Ok(Some(RelayMessage::Candidates(candidates)))) => {
            candidates.into_iter().map(Candidate::from).collect()
        }
        _ => Vec::new(),
    }
}

fn unexpected(message: &RelayMessage) -> ClientError {
    match message {
        RelayMessage::Error(error) => refusal(error),
        other => ClientError::Protocol(format!("unexpected relay message {}", message_name(other))),
    }
}

/// What the peer's login state machine reports, as the client's error.
fn login_error(err: LoginError) -> ClientError {
    match err {
        LoginError::Refused(error) => refusal(&error),
        LoginError::Timeout(after) => ClientError::Timeout(after),
        other => ClientError::Protocol(other.to_string()),
    }
}

fn refusal(error: &ErrorMessage) -> ClientError {
    // The relay's words, shown to people: escaped at the door.
    let message = escaped(&error.message);
    match error.code {
        ErrorCode::AUTHENTICATION_FAILED => ClientError::AuthenticationFailed(message),
        ErrorCode::FORBIDDEN => ClientError::Forbidden(message),
        ErrorCode::FLEET_NOT_FOUND => ClientError::FleetNotFound(message),
        ErrorCode::WORKSPACE_REQUIRED => ClientError::WorkspaceRequired { message },
        ErrorCode::HOSTNAME_TAKEN => ClientError::HostnameTaken(message),
        ErrorCode::MACHINE_NOT_FOUND => ClientError::MachineNotFound(message),
        ErrorCode::AMBIGUOUS => ClientError::Ambiguous {
            message,
            candidates: Vec::new(),
        },
        ErrorCode::MACHINE_OFFLINE => ClientError::MachineOffline(message),
        code => ClientError::Refused { code, message },
    }
}

/// One logged-in connection with its control stream.
#[derive(Debug)]
struct Link {
    endpoint: quinn::Endpoint,
    /// Whether `endpoint` is this connection's alone (then closing waits for it to drain) or a [`Dialer`]'s,
    /// shared with other connections (whose traffic must not hold this one's close up).
    own_endpoint: bool,
    connection: quinn::Connection,
    stream: ControlStream,
    address: String,
}

impl Link {
    /// Connects with the pinned certificate, then runs cmdop-proto's [`PeerLogin`] over the control stream:
    /// `Hello`, the signed login message, the relay's verdict.
    async fn connect(
        dialer: Option<&Dialer>,
        relay: &RelayTarget,
        request: LoginRequest,
        software: &str,
        identity: &Identity,
    ) -> Result<(Self, LoginOutcome), ClientError> {
        let (endpoint, connection) = Self::dial(dialer, relay).await?;
        let address = relay.address.clone();
        let unreachable = |reason: String| ClientError::Unreachable {
            address: address.clone(),
            reason,
        };
        let mut exporter = [0u8; EXPORTER_LEN];
        connection
            .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
            .map_err(|_| {
                ClientError::Protocol("TLS keying-material exporter unavailable".into())
            })?;
        // The handshake (and so the pin check) is complete; only now is anything sent.
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut link = Self {
            endpoint,
            own_endpoint: dialer.is_none(),
            connection,
            stream: ControlStream::new(send, recv),
            address: address.clone(),
        };
        let mut login = PeerLogin::new(request, software, REQUEST_TIMEOUT);
        let mut outgoing = login.hello(Instant::now());
        loop {
            link.send(&outgoing).await?;
            let deadline = login
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + REQUEST_TIMEOUT);
            let received = tokio::time::timeout_at(
                tokio::time::Instant::from_std(deadline),
                link.stream.recv::<RelayMessage>(),
            )
            .await;
            let message = match received {
                Err(_) => {
                    login.handle_timeout(Instant::now()).map_err(login_error)?;
                    return Err(ClientError::Timeout(REQUEST_TIMEOUT));
                }
                Ok(Ok(Some(message))) => message,
                Ok(Ok(None)) => {
                    return Err(link.close_reason().unwrap_or_else(|| ClientError::Closed {
                        code: CloseCode::NORMAL.0,
                        reason: "control stream ended".into(),
                    }));
                }
                Ok(Err(err)) => return Err(link.stream_error(err)),
            };
            match login
                .handle(message, identity, &exporter, Instant::now())
                .map_err(login_error)?
            {
                LoginStep::Send(next) => outgoing = next,
                LoginStep::Done(outcome) => return Ok((link, outcome)),
            }
        }
    }

    /// Resolves the relay, then runs QUIC and TLS with the pinned certificate, from `dialer`'s endpoint or
    /// from a new one of this connection's own.
    async fn dial(
        dialer: Option<&Dialer>,
        relay: &RelayTarget,
    ) -> Result<(quinn::Endpoint, quinn::Connection), ClientError> {
        check_relay_address(&relay.address)?;
        let address = relay.address.clone();
        let resolved: SocketAddr = tokio::net::lookup_host(&address)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| ClientError::Resolve {
                address: address.clone(),
            })?;
        let seen = Arc::new(Mutex::new(None));
        let limits = Limits::default();
        let mut config = client_config(relay.fingerprint, seen.clone(), &limits)?;
        config.transport_config(Arc::new(transport_config_towards(&limits, resolved)));
        let bind: SocketAddr = if resolved.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .map_err(|_| ClientError::Resolve {
            address: address.clone(),
        })?;
        let unreachable = |reason: String| ClientError::Unreachable {
            address: address.clone(),
            reason,
        };
        let endpoint = match dialer {
            Some(dialer) => dialer.endpoint.clone(),
            None => client_endpoint(bind, &limits).map_err(|e| unreachable(e.to_string()))?,
        };
        // Per connection rather than the endpoint's default: a shared endpoint serves several pins.
        let connecting = endpoint
            .connect_with(config, resolved, SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => Err(ClientError::Timeout(CONNECT_TIMEOUT)),
            Ok(Ok(connection)) => Ok((endpoint, connection)),
            Ok(Err(quinn::ConnectionError::ConnectionClosed(close)))
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                Err(ClientError::RelayBusy {
                    address: relay.address.clone(),
                })
            }
            Ok(Err(err)) => {
                let got = seen.lock().ok().and_then(|seen| *seen);
                Err(match got {
                    Some(got) if got != relay.fingerprint => ClientError::FingerprintMismatch {
                        expected: relay.fingerprint,
                        got,
                    },
                    _ => unreachable(err.to_string()),
                })
            }
        }
    }

    async fn send(&mut self, message: &PeerMessage) -> Result<(), ClientError> {
        match self.stream.send(message).await {
            Ok(()) => Ok(()),
            Err(err) => Err(self.stream_error(err)),
        }
    }

    async fn request(&mut self, message: &PeerMessage) -> Result<RelayMessage, ClientError> {
        self.send(message).await?;
        self.receive().await
    }

    /// The next message on the control stream, within [`REQUEST_TIMEOUT`].
    async fn receive(&mut self) -> Result<RelayMessage, ClientError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.stream.recv::<RelayMessage>()).await {
            Err(_) => Err(ClientError::Timeout(REQUEST_TIMEOUT)),
            Ok(Ok(Some(reply))) => Ok(reply),
            Ok(Ok(None)) => Err(self.close_reason().unwrap_or_else(|| ClientError::Closed {
                code: CloseCode::NORMAL.0,
                reason: "control stream ended".into(),
            })),
            Ok(Err(err)) => Err(self.stream_error(err)),
        }
    }

    fn stream_error(&self, err: StreamError) -> ClientError {
        match err {
            StreamError::Wire(err) => ClientError::Protocol(err.to_string()),
            StreamError::Truncated => ClientError::Protocol("the relay cut a message short".into()),
            other => self
                .close_reason()
                .unwrap_or_else(|| ClientError::Unreachable {
                    address: self.address.clone(),
                    reason: other.to_string(),
                }),
        }
    }

    fn close_reason(&self) -> Option<ClientError> {
        self.connection
            .close_reason()
            .map(|reason| self.map_close(reason))
    }

    fn map_close(&self, reason: quinn::ConnectionError) -> ClientError {
        match reason {
            quinn::ConnectionError::ApplicationClosed(close) => {
                let code = u32::try_from(close.error_code.into_inner()).unwrap_or(u32::MAX);
                let text = escaped(&String::from_utf8_lossy(&close.reason));
                if code == CloseCode::CREDENTIAL_REVOKED.0 {
                    ClientError::CredentialRevoked(text)
                } else {
                    ClientError::Closed { code, reason: text }
                }
            }
            other => ClientError::Unreachable {
                address: self.address.clone(),
                reason: other.to_string(),
            },
        }
    }

    async fn closed(&self) -> ClientError {
        let reason = self.connection.closed().await;
        self.map_close(reason)
    }

    async fn finish(&mut self) {
        self.finish_with_drain(Duration::from_secs(1)).await;
    }

    /// Finishes the control stream, closes the connection, and waits at most `drain` for the endpoint to go
    /// idle (the close frame is sent on the endpoint's next poll, well within any non-zero wait).
    async fn finish_with_drain(&mut self, drain: Duration) {
        self.stream.finish_and_flush(Duration::from_secs(1)).await;
        self.connection.close(CloseCode::NORMAL.0.into(), b"bye");
        // A shared endpoint keeps running (and sends the close frame) after this connection is gone; waiting
        // for it to go idle would wait for every other connection on it.
        if self.own_endpoint {
            let _ = tokio::time::timeout(drain, self.endpoint.wait_idle()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use rand_core::OsRng;

    use super::*;

    #[test]
    fn a_relay_address_needs_a_host_and_a_port() {
        for good in [
            "relay.example:4433",
            "127.0.0.1:1",
            "[::1]:4433",
            "localhost:65535",
        ] {
            assert!(check_relay_address(good).is_ok(), "{good}");
        }
        for (bad, words) in [
            ("127.0.0.1", "port is missing"),
            ("relay.example", "e.g. relay.example:4433"),
            ("[::1]", "port is missing"),
            ("::1:4433", "in brackets"),
            ("[::1:4433", "not closed"),
            (":4433", "host is missing"),
            ("relay:0", "1 to 65535"),
            ("relay:http", "1 to 65535"),
        ] {
            let err = check_relay_address(bad).unwrap_err().to_string();
            assert!(err.contains(words), "{bad}: {err}");
        }
    }

    #[test]
    fn backoff_grows_exponentially_and_is_capped() {
        let mut rng = OsRng;
        for attempt in 0..100 {
            let delay = reconnect_delay(attempt, &mut rng);
            let ceiling = BACKOFF_INITIAL
                .saturating_mul(1 << attempt.min(10))
                .min(BACKOFF_MAX);
            assert!(
                delay <= ceiling,
                "attempt {attempt}: {delay:?} > {ceiling:?}"
            );
            assert!(
                delay >= ceiling / 2,
                "attempt {attempt}: {delay:?} < half of {ceiling:?}"
            );
        }
        assert!(reconnect_delay(0, &mut OsRng) <= Duration::from_millis(500));
        assert!(reconnect_delay(u32::MAX, &mut OsRng) <= BACKOFF_MAX);
    }

    #[test]
    fn a_shutdown_close_or_a_go_away_asks_to_come_back_within_a_window() {
        let closed = ClientError::Closed {
            code: CloseCode::SHUTDOWN.0,
            reason: "relay shutting down".into(),
        };
        assert_eq!(closed.come_back(), Some(ComeBack::SHUTDOWN));
        let other = ClientError::Closed {
            code: CloseCode::NORMAL.0,
            reason: "bye".into(),
        };
        assert_eq!(other.come_back(), None);
        assert_eq!(ClientError::Timeout(REQUEST_TIMEOUT).come_back(), None);
        let go_away = ClientError::GoingAway(GoAway {
            reconnect_after_ms: 250,
            spread_ms: 1_500,
        });
        assert!(go_away.is_retryable());
        assert_eq!(
            go_away.come_back(),
            Some(ComeBack {
                after: Duration::from_millis(250),
                window: Duration::from_millis(1_500),
            })
        );
        let hint = ComeBack {
            after: Duration::from_secs(2),
            window: Duration::from_secs(8),
        };
        for _ in 0..100 {
            let delay = hint.delay(&mut OsRng);
            assert!(
                delay >= hint.after && delay <= hint.after + hint.window,
                "{delay:?}"
            );
        }
        let none = ComeBack {
            after: Duration::from_secs(1),
            window: Duration::ZERO,
        };
        assert_eq!(none.delay(&mut OsRng), Duration::from_secs(1));
    }

    #[test]
    fn backoff_is_a_pure_function_of_attempt_and_rng() {
        struct Fixed(u64);
        impl RngCore for Fixed {
            fn next_u32(&mut self) -> u32 {
                0
            }
            fn next_u64(&mut self) -> u64 {
                self.0
            }
            fn fill_bytes(&mut self, _: &mut [u8]) {}
            fn try_fill_bytes(&mut self, _: &mut [u8]) -> Result<(), rand_core::Error> {
                Ok(())
            }
        }
        assert_eq!(
            reconnect_delay(0, &mut Fixed(0)),
            Duration::from_millis(250)
        );
        assert_eq!(
            reconnect_delay(0, &mut Fixed(250)),
            Duration::from_millis(500)
        );
        assert_eq!(
            reconnect_delay(3, &mut Fixed(0)),
            Duration::from_millis(2000)
        );
        assert_eq!(reconnect_delay(20, &mut Fixed(0)), Duration::from_secs(15));
    }
}
