//! The relay server: accepts QUIC connections and drives, for each, the sans-IO state machines of cmdop-proto
//! (login, then the logged-in session and the routing of its streams) against the store.
//!
//! One task per connection. A connection first holds an "unauthenticated" permit and must log in within
//! [`Limits::login_deadline`] (`login`); after login the permit is released, the connection is tracked in
//! the session table, and `session` serves its control stream (and `lock` its fleet-lock requests) while
//! `routing` serves the streams it opens. A watcher (`revocation`) re-checks the credentials of live connections against the store every
//! [`ServerConfig::revocation_poll`] when the store changed, so a credential revoked by an admin verb (another
//! process) cuts its connections within a second.

mod lock;
mod login;
mod presence;
mod revocation;
mod routing;
mod session;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cmdop_client::control::{ControlStream, StreamError};
use cmdop_client::transport::{Limits, Traffic, endpoint, udp_socket};
use cmdop_fleet::{CredentialId, FleetId, MachineId, Timestamp};
use cmdop_proto::RelayFingerprint;
use cmdop_proto::login::{AuditEvent, Time};
use cmdop_proto::presence::PresenceBook;
use cmdop_proto::wire::{
    CloseCode, ErrorCode, ErrorMessage, IdBytes, RelayMessage, RouteReady, StreamHeader, WireError,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::metrics::{FailureReason, RelayMetrics};
use crate::store::{AuditEntry, Store, StoreError};
use crate::tls::{TlsError, TlsIdentity, endpoint_config, server_config};

pub use cmdop_proto::presence::MISSED_HEARTBEATS;
pub use routing::STALL_TIMEOUT;

/// Default address `serve` listens on: all IPv4 interfaces, UDP port 4433.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:4433";

/// Default agent heartbeat interval.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

/// Default for [`ServerConfig::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the relay waits for a peer to receive a final error before closing.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Observes every byte the relay forwards on routed streams. A testing hook: the end-to-end tests use it to
/// prove the relay only ever sees ciphertext.
#[derive(Clone)]
pub struct Tap(pub Arc<TapFn>);

/// The function a [`Tap`] calls with each forwarded chunk.
pub type TapFn = dyn Fn(&[u8]) + Send + Sync;

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tap(..)")
    }
}

/// A testing hook that makes the relay behave as a compromised one would: it sees (and may change) every
/// message the relay sends on control streams and every route before the stream is opened. The hostile-relay
/// tests use it to prove that agents and clients refuse what a relay could forge; the `cmdop-relay` binary
/// never sets one. Every method defaults to leaving things alone.
pub trait Meddler: Send + Sync + 'static {
    /// A message about to be sent to `to` on a control stream or as a routed stream's refusal (`Welcome`,
    /// `Machines`, `FleetLock`, `Error`, …).
    fn control(&self, _to: PeerKind, _message: &mut RelayMessage) {}

    /// A route about to be answered: what the client is told, what the agent is told, and which machine's
    /// agent gets the stream.
    fn route(&self, _route: &mut MeddledRoute) {}
}

/// Whom a relay message goes to, as a [`Meddler`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// A logged-in agent.
    Agent,
    /// A logged-in client.
    Client,
    /// A peer that has not logged in yet.
    Unknown,
}

impl PeerKind {
    fn of(peer: &cmdop_proto::login::LoggedIn) -> Self {
        match peer {
            cmdop_proto::login::LoggedIn::Agent(_) => Self::Agent,
            cmdop_proto::login::LoggedIn::Client(_) => Self::Client,
        }
    }
}

/// A route as a [`Meddler`] may change it.
#[derive(Debug, Clone)]
pub struct MeddledRoute {
    /// The answer for the client (sent as `StreamReady`, without the lock, to an old client).
    pub ready: RouteReady,
    /// The header for the agent.
    pub header: StreamHeader,
    /// The machine whose agent gets the stream.
    pub agent: MachineId,
}

/// Errors of the server.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}; pick another --listen address or stop the process using it")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// TLS or certificate setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything [`Server::bind`] needs.
#[derive(Debug)]
pub struct ServerConfig {
    /// The data dir holding `relay.db`.
    pub data_dir: PathBuf,
    /// UDP address to listen on; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// The certificate and key to serve.
    pub tls: TlsIdentity,
    /// Connection, stream and window limits.
    pub limits: Limits,
    /// Heartbeat interval told to agents.
    pub heartbeat_interval: Duration,
    /// How often live connections are checked against revocations and expiries.
    pub revocation_poll: Duration,
    /// Sees every forwarded byte of routed streams (tests only; `None` in the binary).
    pub tap: Option<Tap>,
    /// Where the server counts what it does (`cmdop-relay serve --metrics` serves them).
    pub metrics: Arc<RelayMetrics>,
    /// On shutdown, how long routed streams still running get to finish before the relay closes them.
    pub drain_timeout: Duration,
    /// Makes the relay hostile (tests only; `None` in the binary).
    pub meddler: Option<Arc<dyn Meddler>>,
}

impl std::fmt::Debug for dyn Meddler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Meddler(..)")
    }
}

impl ServerConfig {
    /// A configuration with default limits, a 30 s heartbeat and a 250 ms revocation poll.
    pub fn new(data_dir: PathBuf, listen: SocketAddr, tls: TlsIdentity) -> Self {
        Self {
            data_dir,
            listen,
            tls,
            limits: Limits::default(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            revocation_poll: Duration::from_millis(250),
            tap: None,
            metrics: Arc::new(RelayMetrics::new()),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            meddler: None,
        }
    }
}

/// A bound relay, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    fingerprint: RelayFingerprint,
    revocation_poll: Duration,
    drain_timeout: Duration,
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    limits: Limits,
    heartbeat_interval: Duration,
    connections: Arc<Semaphore>,
    unauthenticated: Arc<Semaphore>,
    /// Logged-in connections, by a number of the relay's own.
    sessions: Mutex<HashMap<u64, LiveConnection>>,
    /// Every machine's presence, with the connection that decides it (the newest one); written to the store
    /// in batches by [`presence`].
    presence: Mutex<PresenceBook>,
    next_session: AtomicU64,
    tap: Option<Tap>,
    metrics: Arc<RelayMetrics>,
    meddler: Option<Arc<dyn Meddler>>,
}

/// A logged-in connection, as the revocation watcher and routing see it.
#[derive(Debug)]
struct LiveConnection {
    credential: CredentialId,
    connection: quinn::Connection,
    /// Where the watcher puts the credential's latest standing; the session's task feeds it to its state
    /// machine. A watch rather than a queue: only the latest standing matters, and it costs one small
    /// allocation per connection where a queue's first block of slots would cost kilobytes.
    standing: watch::Sender<Standing>,
    /// For an agent that understands the fleet lock: its fleet, and where the relay puts the fleet's lock
    /// when an admin changes it (a watch too: only the latest lock matters).
    lock: Option<(FleetId, watch::Sender<LockPush>)>,
}

/// A credential's standing as the revocation watcher last read it (`None`: not read yet).
type Standing = Option<Result<(), cmdop_fleet::AuthError>>;

/// The fleet's lock as the relay last pushed it to an agent (`None`: nothing pushed since it connected).
type LockPush = Option<Arc<RelayMessage>>;

impl Server {
    /// Opens the store, marks every machine offline (no connection survives a restart) and binds the endpoint.
    pub fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        let store = Store::open(&config.data_dir)?;
        store.mark_all_offline()?;
        let fingerprint = config.tls.fingerprint();
        let quic = server_config(&config.tls, &config.limits)?;
        let bind_error = |source| ServerError::Bind {
            addr: config.listen,
            source,
        };
        // Buffers sized for a reconnect storm: thousands of handshakes arriving at once.
        let socket = udp_socket(config.listen).map_err(bind_error)?;
        let endpoint = endpoint(
            endpoint_config(&config.tls, &config.limits),
            Some(quic),
            socket,
        )
        .map_err(bind_error)?;
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            unauthenticated: Arc::new(Semaphore::new(config.limits.max_unauthenticated)),
            limits: config.limits,
            heartbeat_interval: config.heartbeat_interval,
            sessions: Mutex::new(HashMap::new()),
            presence: Mutex::new(PresenceBook::default()),
            next_session: AtomicU64::new(1),
            tap: config.tap,
            metrics: config.metrics,
            meddler: config.meddler,
        });
        Ok(Self {
            endpoint,
            shared,
            fingerprint,
            revocation_poll: config.revocation_poll,
            drain_timeout: config.drain_timeout,
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.endpoint.local_addr()
    }

    /// The fingerprint of the served certificate, as peers pin it.
    pub fn fingerprint(&self) -> RelayFingerprint {
        self.fingerprint
    }

    /// The metrics this server updates.
    pub fn metrics(&self) -> Arc<RelayMetrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Serves until `shutdown` completes, then drains: no new connections are accepted, routed streams still
    /// running get [`ServerConfig::drain_timeout`] to finish, then every connection is closed (agents
    /// reconnect to the relay's next run by themselves) and machines are marked offline.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let watcher = tokio::spawn(revocation::watch(self.shared.clone(), self.revocation_poll));
        let flusher = tokio::spawn(presence::flush_every(
            self.shared.clone(),
            presence::PRESENCE_FLUSH,
        ));
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                () = &mut shutdown => break,
                incoming = self.endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            self.admit(incoming);
        }
        self.drain().await;
        watcher.abort();
        self.endpoint
            .close(CloseCode::SHUTDOWN.0.into(), b"relay shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        flusher.abort();
        // The last `last_seen` of every machine, then all offline: no connection survives a stop.
        presence::flush(&self.shared);
        self.shared.lock_store().mark_all_offline()?;
        Ok(())
    }

    /// Takes a connection permit and a login permit for a new connection, or refuses it.
    fn admit(&self, incoming: quinn::Incoming) {
        let Ok(connection_permit) = self.shared.connections.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "connection limit reached; refusing");
            self.shared
                .metrics
                .handshake_failed(FailureReason::ConnectionLimit);
            incoming.refuse();
            return;
        };
        let Ok(login_permit) = self.shared.unauthenticated.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "unauthenticated connection limit reached; refusing");
            self.shared
                .metrics
                .handshake_failed(FailureReason::UnauthenticatedLimit);
            incoming.refuse();
            return;
        };
        let shared = self.shared.clone();
        let task = async move {
            handle_incoming(shared, incoming, login_permit).await;
            drop(connection_permit);
        };
        tokio::spawn(task);
    }

    /// Refuses new connections at once and lets running streams (an exec, a copy) finish, up to the drain
    /// timeout.
    async fn drain(&self) {
        self.endpoint.set_server_config(None);
        let active = self.shared.metrics.active_streams();
        if active == 0 {
            return;
        }
        tracing::info!(streams = active, timeout = ?self.drain_timeout, "draining: waiting for routed streams to finish");
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        while self.shared.metrics.active_streams() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.shared.metrics.active_streams();
        if left > 0 {
            tracing::warn!(
                streams = left,
                "drain timeout reached; closing the streams still running"
            );
        }
    }
}

impl Shared {
    fn lock_store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave SQLite inconsistent (statements are atomic), so a poisoned
        // lock is still usable.
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends a state machine's audit event, stamped now.
    fn audit(&self, event: &AuditEvent) {
        let entry = AuditEntry {
            at: now().unix,
            fleet: event.fleet,
            actor: &event.actor,
            action: event.action,
            outcome: event.outcome,
            detail: &event.detail,
        };
        if let Err(err) = self.lock_store().append_audit(&entry) {
            tracing::error!(%err, action = event.action, "cannot write the audit log");
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<u64, LiveConnection>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn presence(&self) -> MutexGuard<'_, PresenceBook> {
        self.presence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The fleet's lock as agents receive it, after a test's [`Meddler`] had its say.
    fn fleet_lock_message(&self, fleet: FleetId) -> Result<RelayMessage, StoreError> {
        let mut message = self.plain_fleet_lock(fleet)?;
        if let Some(meddler) = &self.meddler {
            meddler.control(PeerKind::Agent, &mut message);
        }
        Ok(message)
    }

    fn plain_fleet_lock(&self, fleet: FleetId) -> Result<RelayMessage, StoreError> {
        let stored = self.lock_store().stored_lock(fleet)?;
        Ok(RelayMessage::FleetLock(cmdop_proto::wire::FleetLockState {
            fleet_id: IdBytes(fleet.to_bytes()),
            authority: stored.authority,
            revocations: stored.revocations,
        }))
    }

    /// Sends the fleet's current lock to every live agent of `fleet` that understands it (after an admin
    /// changed it), so revocations reach machines at once.
    fn push_lock(&self, fleet: FleetId) {
        let message = match self.fleet_lock_message(fleet) {
            Ok(message) => message,
            Err(err) => {
                tracing::error!(%err, "cannot read the fleet lock to push it to agents");
                return;
            }
        };
        let message = Arc::new(message);
        for live in self.sessions().values() {
            if let Some((agent_fleet, push)) = &live.lock
                && *agent_fleet == fleet
            {
                push.send_replace(Some(Arc::clone(&message)));
            }
        }
    }

    /// Counts a login failure the state machine reported.
    fn count_failure(&self, failure: cmdop_proto::login::LoginFailure) {
        let Some(reason) = FailureReason::of_login(failure) else {
            return;
        };
        if failure.is_authentication() {
            self.metrics.auth_failed(reason);
        } else {
            self.metrics.handshake_failed(reason);
        }
    }
}

/// Both clocks, read once: what the state machines take as `now`.
pub(crate) fn now() -> Time {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Time {
        instant: Instant::now(),
        unix: Timestamp::from_unix_seconds(unix),
    }
}

/// Sends a final error (if there is a stream to send it on) and closes the connection.
async fn close_with(
    connection: &quinn::Connection,
    stream: Option<&mut ControlStream>,
    code: CloseCode,
    reason: &str,
) {
    if let Some(stream) = stream {
        stream.finish_and_flush(FLUSH_WAIT).await;
    }
    connection.close(code.0.into(), reason.as_bytes());
}

/// The error a broken control stream earns: what to send the peer before closing.
fn stream_refusal(err: &StreamError) -> ErrorMessage {
    let message = match err {
        StreamError::Wire(WireError::FrameTooLarge { len }) => format!(
            "frame of {len} bytes exceeds the {}-byte limit",
            cmdop_proto::wire::MAX_FRAME_SIZE
        ),
        other => other.to_string(),
    };
    ErrorMessage {
        code: ErrorCode::BAD_FRAME,
        message,
    }
}

/// Whether a control-stream error means the peer simply went away (as opposed to sending garbage).
fn peer_gone(err: &StreamError) -> bool {
    matches!(err, StreamError::Read(_) | StreamError::Write(_))
}

/// Sends a final error on a broken stream, then closes with a protocol error.
async fn refuse_stream(
    connection: &quinn::Connection,
    stream: &mut ControlStream,
    err: &StreamError,
) {
    let error = stream_refusal(err);
    let reason = error.message.clone();
    if stream.send(&RelayMessage::Error(error)).await.is_ok() {
        stream.finish_and_flush(FLUSH_WAIT).await;
    }
    connection.close(CloseCode::PROTOCOL_ERROR.0.into(), reason.as_bytes());
}

async fn handle_incoming(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    login_permit: OwnedSemaphorePermit,
) {
    let remote = incoming.remote_address();
    let started = tokio::time::Instant::now();
    let deadline = started + shared.limits.login_deadline;
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(err) => {
            tracing::debug!(%remote, %err, "incoming connection failed");
            shared.metrics.handshake_failed(FailureReason::Tls);
            return;
        }
    };
    let Ok(Ok(connection)) = tokio::time::timeout_at(deadline, connecting).await else {
        tracing::debug!(%remote, "handshake failed or timed out");
        shared.metrics.handshake_failed(FailureReason::Tls);
        return;
    };
    // Boxed: the login's state is large and short-lived, and inline it would size this task's future, which
    // every idle agent's connection keeps for as long as it lives.
    let Some((stream, logged_in)) = Box::pin(login::log_in(
        &shared,
        &connection,
        remote,
        deadline.into_std(),
    ))
    .await
    else {
        return;
    };
    drop(login_permit);
    session::serve(shared, connection.clone(), stream, logged_in, remote).await;
    tracing::info!(%remote, traffic = %Traffic::of(&connection), "connection ended");
}

#[cfg(test)]
mod tests;
