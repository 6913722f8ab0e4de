//! The relay server: accepts QUIC connections and drives, for each, the sans-IO state machines of cmdop-proto
//! (login, then the logged-in session and the routing of its streams) against the store.
//!
//! One task per connection. A connection first holds an "unauthenticated" permit and must log in within
//! [`Limits::login_deadline`] ([`login`]); after login the permit is released, the connection is tracked in
//! the session table, and [`session`] serves its control stream while [`routing`] serves the streams it
//! opens. A watcher ([`revocation`]) re-checks the credentials of live connections against the store every
//! [`ServerConfig::revocation_poll`] when the store changed, so a credential revoked by an admin verb (another
//! process) cuts its connections within a second.

mod login;
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
use cmdop_client::transport::{Limits, Traffic, bind_socket, endpoint};
use cmdop_fleet::{CredentialId, MachineId, Timestamp};
use cmdop_proto::RelayFingerprint;
use cmdop_proto::login::{AuditEvent, Time};
use cmdop_proto::presence::SessionInput;
use cmdop_proto::wire::{CloseCode, ErrorCode, ErrorMessage, RelayMessage, WireError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

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
    /// The connection that decides each online machine's presence: the newest one.
    online: Mutex<HashMap<MachineId, u64>>,
    next_session: AtomicU64,
    tap: Option<Tap>,
    metrics: Arc<RelayMetrics>,
}

/// A logged-in connection, as the revocation watcher and routing see it.
#[derive(Debug)]
struct LiveConnection {
    credential: CredentialId,
    connection: quinn::Connection,
    /// Where the watcher sends the credential's standing; the session's task feeds it to its state machine.
    standing: mpsc::UnboundedSender<SessionInput>,
}

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
        let socket = bind_socket(config.listen, &config.limits).map_err(bind_error)?;
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
            online: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            tap: config.tap,
            metrics: config.metrics,
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
        tokio::spawn(async move {
            handle_incoming(shared, incoming, login_permit).await;
            drop(connection_permit);
        });
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

    fn online(&self) -> MutexGuard<'_, HashMap<MachineId, u64>> {
        self.online
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
    let Some((stream, logged_in)) =
        login::log_in(&shared, &connection, remote, deadline.into_std()).await
    else {
        return;
    };
    drop(login_permit);
    session::serve(shared, connection.clone(), stream, logged_in, remote).await;
    tracing::info!(%remote, traffic = %Traffic::of(&connection), "connection ended");
}

#[cfg(test)]
mod tests;
