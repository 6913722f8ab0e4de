//! The relay server: accepts QUIC connections, runs the login handshake, keeps presence, enforces revocation.
//!
//! One task per connection. A connection first holds an "unauthenticated" permit and must log in within
//! [`Limits::login_deadline`]; after login the permit is released and the connection is tracked in the session
//! table, which a watcher task checks every [`ServerConfig::revocation_poll`] against the store so a credential
//! revoked or expired by an admin verb (another process) cuts its connections within a second.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cmdop_identity::{PublicKey, Purpose, Signature};
use rand_core::{OsRng, RngCore};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::metrics::{FailureReason, RelayMetrics};
use crate::store::{
    AuditEntry, AuthRefusal, CredentialKind, FleetAccess, KeyRole, MachineReport, Principal,
    ScopeError, Store, StoreError,
};
use crate::tls::{TlsError, TlsIdentity, endpoint_config, server_config};
use cmdop_client::control::{ControlStream, StreamError};
use cmdop_client::transport::Limits;
use cmdop_proto::RelayFingerprint;
use cmdop_proto::wire::{
    AUTH_CAPABILITY_ED25519, Challenge, CloseCode, EXPORTER_LABEL, EXPORTER_LEN, ErrorCode,
    ErrorMessage, IdBytes, KeyBytes, MachineInfo, PROTOCOL_VERSION, PeerMessage, Registered,
    RelayMessage, Role, SignatureBytes, Welcome, WireError, login_transcript,
};

/// Default address `serve` listens on: all IPv4 interfaces, UDP port 4433.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:4433";

/// Default agent heartbeat interval.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

/// A machine is offline after this many heartbeat intervals without one.
pub const MISSED_HEARTBEATS: u32 = 3;

/// Default for [`ServerConfig::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the relay waits for a peer to receive a final error before closing.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

mod routing;

pub use routing::STALL_TIMEOUT;

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

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    limits: Limits,
    heartbeat_interval: Duration,
    connections: Arc<Semaphore>,
    unauthenticated: Arc<Semaphore>,
    sessions: Mutex<HashMap<u64, Session>>,
    online: Mutex<HashMap<Uuid, u64>>,
    next_session: AtomicU64,
    tap: Option<Tap>,
    metrics: Arc<RelayMetrics>,
}

#[derive(Debug)]
struct Session {
    credential_id: String,
    expires_at: Option<u64>,
    fleet_id: Option<Uuid>,
    connection: quinn::Connection,
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
        let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_error)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| bind_error(std::io::Error::other("no async runtime found")))?;
        let endpoint =
            quinn::Endpoint::new(endpoint_config(&config.tls), Some(quic), socket, runtime)
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
        let watcher = tokio::spawn(watch_revocations(self.shared.clone(), self.revocation_poll));
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                () = &mut shutdown => break,
                incoming = self.endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let Ok(connection_permit) = self.shared.connections.clone().try_acquire_owned() else {
                tracing::warn!(remote = %incoming.remote_address(), "connection limit reached; refusing");
                self.shared
                    .metrics
                    .handshake_failed(FailureReason::ConnectionLimit);
                incoming.refuse();
                continue;
            };
            let Ok(login_permit) = self.shared.unauthenticated.clone().try_acquire_owned() else {
                tracing::warn!(remote = %incoming.remote_address(), "unauthenticated connection limit reached; refusing");
                self.shared
                    .metrics
                    .handshake_failed(FailureReason::UnauthenticatedLimit);
                incoming.refuse();
                continue;
            };
            let shared = self.shared.clone();
            tokio::spawn(async move {
                handle_incoming(shared, incoming, login_permit).await;
                drop(connection_permit);
            });
        }
        // Draining: refuse new connections at once, let running streams (an exec, a copy) finish.
        self.endpoint.set_server_config(None);
        let active = self.shared.metrics.active_streams();
        if active > 0 {
            tracing::info!(streams = active, timeout = ?self.drain_timeout, "draining: waiting for routed streams to finish");
            let deadline = tokio::time::Instant::now() + self.drain_timeout;
            while self.shared.metrics.active_streams() > 0 && tokio::time::Instant::now() < deadline
            {
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
        watcher.abort();
        self.endpoint
            .close(CloseCode::SHUTDOWN.0.into(), b"relay shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        self.shared.lock_store().mark_all_offline()?;
        Ok(())
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

    fn audit(&self, entry: AuditEntry<'_>) {
        if let Err(err) = self.lock_store().append_audit(&entry) {
            tracing::error!(%err, action = entry.action, "cannot write the audit log");
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<u64, Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn online(&self) -> MutexGuard<'_, HashMap<Uuid, u64>> {
        self.online
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A refusal to send to the peer, then close the connection with.
#[derive(Debug)]
struct Refusal {
    code: ErrorCode,
    message: String,
    close: CloseCode,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>, close: CloseCode) -> Self {
        Self {
            code,
            message: message.into(),
            close,
        }
    }

    fn auth() -> Self {
        Self::new(
            ErrorCode::AUTHENTICATION_FAILED,
            "authentication failed: the credential is unknown, wrong, revoked or expired, or the key proof is invalid; ask the relay admin for a valid key",
            CloseCode::LOGIN_REFUSED,
        )
    }

    fn internal() -> Self {
        Self::new(
            ErrorCode::INTERNAL,
            "relay internal error; retry later",
            CloseCode::PROTOCOL_ERROR,
        )
    }
}

impl From<StreamError> for Refusal {
    fn from(err: StreamError) -> Self {
        match err {
            StreamError::Wire(WireError::FrameTooLarge { len }) => Self::new(
                ErrorCode::BAD_FRAME,
                format!(
                    "frame of {len} bytes exceeds the {}-byte limit",
                    cmdop_proto::wire::MAX_FRAME_SIZE
                ),
                CloseCode::PROTOCOL_ERROR,
            ),
            StreamError::Wire(err) => Self::new(
                ErrorCode::BAD_FRAME,
                err.to_string(),
                CloseCode::PROTOCOL_ERROR,
            ),
            other => Self::new(
                ErrorCode::BAD_FRAME,
                other.to_string(),
                CloseCode::PROTOCOL_ERROR,
            ),
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(err: StoreError) -> Self {
        tracing::error!(%err, "store failure during a request");
        Self::internal()
    }
}

async fn refuse(
    connection: &quinn::Connection,
    stream: Option<&mut ControlStream>,
    refusal: Refusal,
) {
    if let Some(stream) = stream {
        let message = RelayMessage::Error(ErrorMessage {
            code: refusal.code,
            message: refusal.message.clone(),
        });
        if stream.send(&message).await.is_ok() {
            stream.finish_and_flush(FLUSH_WAIT).await;
        }
    }
    connection.close(refusal.close.0.into(), refusal.message.as_bytes());
}

/// A successfully logged-in peer.
#[derive(Debug)]
enum LoggedIn {
    Agent {
        principal: Principal,
        machine_id: Uuid,
        fleet_id: Uuid,
        /// The fleet's name, for metrics.
        fleet: String,
    },
    Client {
        principal: Principal,
        /// The key the client proved at login; capabilities are issued for it.
        client_key: PublicKey,
    },
}

async fn handle_incoming(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    login_permit: OwnedSemaphorePermit,
) {
    let remote = incoming.remote_address();
    let deadline = shared.limits.login_deadline;
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(err) => {
            tracing::debug!(%remote, %err, "incoming connection failed");
            shared.metrics.handshake_failed(FailureReason::Tls);
            return;
        }
    };
    let started = tokio::time::Instant::now();
    let Ok(Ok(connection)) = tokio::time::timeout(deadline, connecting).await else {
        tracing::debug!(%remote, "handshake failed or timed out");
        shared.metrics.handshake_failed(FailureReason::Tls);
        return;
    };
    let login_phase = async {
        let (send, recv) = connection.accept_bi().await.ok()?;
        let mut stream = ControlStream::new(send, recv);
        match login(&shared, &connection, &mut stream, remote).await {
            Ok(logged_in) => Some((stream, logged_in)),
            Err(refusal) => {
                refuse(&connection, Some(&mut stream), refusal).await;
                None
            }
        }
    };
    let (mut stream, logged_in) =
        match tokio::time::timeout_at(started + deadline, login_phase).await {
            Ok(Some(done)) => done,
            Ok(None) => return,
            Err(_) => {
                shared.metrics.handshake_failed(FailureReason::LoginTimeout);
                connection.close(
                    CloseCode::LOGIN_TIMEOUT.0.into(),
                    b"login deadline exceeded",
                );
                shared.audit(AuditEntry {
                    at: unix_now(),
                    fleet_id: None,
                    actor: &format!("peer:{remote}"),
                    action: "login",
                    outcome: "refused",
                    detail: "login deadline exceeded",
                });
                return;
            }
        };
    drop(login_permit);
    let session_id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let (principal, fleet_id) = match &logged_in {
        LoggedIn::Agent {
            principal,
            fleet_id,
            ..
        } => (principal, Some(*fleet_id)),
        LoggedIn::Client { principal, .. } => (principal, None),
    };
    shared.sessions().insert(
        session_id,
        Session {
            credential_id: principal.credential_id.clone(),
            expires_at: principal.expires_at,
            fleet_id,
            connection: connection.clone(),
        },
    );
    match logged_in {
        LoggedIn::Agent {
            machine_id,
            ref fleet,
            ..
        } => {
            let _connected = shared.metrics.agent_connected(fleet, machine_id);
            serve_agent(&shared, &connection, &mut stream, session_id, machine_id).await
        }
        LoggedIn::Client {
            principal,
            client_key,
        } => {
            let _connected = shared.metrics.client_connected(principal.fleet_names());
            // Routed streams arrive as further bidirectional streams beside the control stream.
            let routes = tokio::spawn(routing::accept_routes(
                shared.clone(),
                connection.clone(),
                principal.clone(),
                client_key,
            ));
            serve_client(&shared, &connection, &mut stream, &principal).await;
            routes.abort();
        }
    }
    shared.sessions().remove(&session_id);
}

async fn login(
    shared: &Shared,
    connection: &quinn::Connection,
    stream: &mut ControlStream,
    remote: SocketAddr,
) -> Result<LoggedIn, Refusal> {
    let Some(PeerMessage::Hello(hello)) = stream.recv::<PeerMessage>().await? else {
        shared.metrics.handshake_failed(FailureReason::Protocol);
        return Err(Refusal::new(
            ErrorCode::UNEXPECTED_MESSAGE,
            "expected Hello as the first message",
            CloseCode::PROTOCOL_ERROR,
        ));
    };
    if hello.version != PROTOCOL_VERSION {
        shared.metrics.handshake_failed(FailureReason::Protocol);
        return Err(Refusal::new(
            ErrorCode::UNSUPPORTED_VERSION,
            format!(
                "protocol version {} is not supported (this relay speaks {PROTOCOL_VERSION}); upgrade the older side",
                hello.version
            ),
            CloseCode::PROTOCOL_ERROR,
        ));
    }
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    stream
        .send(&RelayMessage::Challenge(Challenge { nonce }))
        .await?;
    let mut exporter = [0u8; EXPORTER_LEN];
    connection
        .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| Refusal::internal())?;
    let actor_peer = format!("peer:{remote}");
    let message = stream.recv::<PeerMessage>().await?;
    let (credential, public_key, signature) = match (&message, hello.role) {
        (Some(PeerMessage::AgentLogin(login)), Role::Agent) => {
            (&login.credential, login.public_key, login.signature)
        }
        (Some(PeerMessage::ClientLogin(login)), Role::Client) => {
            (&login.credential, login.public_key, login.signature)
        }
        _ => {
            shared.metrics.handshake_failed(FailureReason::Protocol);
            return Err(Refusal::new(
                ErrorCode::UNEXPECTED_MESSAGE,
                "expected the login message matching the role announced in Hello",
                CloseCode::PROTOCOL_ERROR,
            ));
        }
    };
    let now = unix_now();
    let principal = {
        let store = shared.lock_store();
        match store.authenticate(credential, now)? {
            Ok(principal) => principal,
            Err(reason) => {
                drop(store);
                shared.metrics.auth_failed(match reason {
                    AuthRefusal::Revoked => FailureReason::Revoked,
                    AuthRefusal::Expired => FailureReason::Expired,
                    _ => FailureReason::Credential,
                });
                shared.audit(AuditEntry {
                    at: now,
                    fleet_id: None,
                    actor: &actor_peer,
                    action: "auth",
                    outcome: "refused",
                    detail: &format!(
                        "{reason} ({:?} from {remote}, {})",
                        hello.role, hello.client_software
                    ),
                });
                return Err(Refusal::auth());
            }
        }
    };
    let single_fleet = match principal.fleet_access(None) {
        Ok(access) => Some(access.fleet().id),
        Err(_) => None,
    };
    let refuse_auth = |reason: &str| {
        shared.audit(AuditEntry {
            at: now,
            fleet_id: single_fleet,
            actor: &principal.actor(),
            action: "auth",
            outcome: "refused",
            detail: &format!("{reason} (from {remote})"),
        });
    };
    if let Err(reason) = verify_proof(&nonce, &exporter, public_key, signature) {
        shared.metrics.auth_failed(FailureReason::KeyProof);
        refuse_auth(reason);
        return Err(Refusal::auth());
    }
    let key_text = hex::encode(public_key.0);
    match message {
        Some(PeerMessage::AgentLogin(login)) => {
            // cmdop-fleet's roles: agent keys enrol, admin keys may too, members and user tokens may not.
            let may_enrol = principal.kind == CredentialKind::ApiKey
                && matches!(principal.role, Some(KeyRole::Agent | KeyRole::Admin));
            if !may_enrol {
                shared.metrics.auth_failed(FailureReason::Role);
                refuse_auth("agent login with a credential that is not an agent or admin API key");
                return Err(Refusal::new(
                    ErrorCode::FORBIDDEN,
                    "this credential cannot enrol machines; use an API key created with --role agent",
                    CloseCode::LOGIN_REFUSED,
                ));
            }
            if !login
                .auth_capabilities
                .iter()
                .any(|c| c == AUTH_CAPABILITY_ED25519)
            {
                shared.metrics.auth_failed(FailureReason::Capability);
                refuse_auth("agent does not advertise the ed25519 capability");
                return Err(Refusal::new(
                    ErrorCode::MISSING_CAPABILITY,
                    "the agent must support ed25519 key proofs; upgrade cmdop-agent",
                    CloseCode::LOGIN_REFUSED,
                ));
            }
            let access: FleetAccess = match principal.fleet_access(Some(&login.workspace)) {
                Ok(access) => access,
                Err(_) => {
                    shared.metrics.auth_failed(FailureReason::Scope);
                    refuse_auth(&format!("workspace {:?} not in scope", login.workspace));
                    return Err(scope_refusal(
                        ScopeError::NotFound(login.workspace.clone()),
                        CloseCode::LOGIN_REFUSED,
                    ));
                }
            };
            let report = MachineReport {
                hostname: login.hostname.clone(),
                display_name: login.display_name.clone(),
                os: login.os.clone(),
                arch: login.arch.clone(),
                agent_version: login.agent_version.clone(),
            };
            let fleet_id = access.fleet().id;
            let registered =
                shared
                    .lock_store()
                    .register_machine(&access, &public_key.0, &report, now);
            let machine = match registered {
                Ok(machine) => machine,
                Err(StoreError::HostnameTaken(hostname)) => {
                    shared.metrics.auth_failed(FailureReason::HostnameTaken);
                    refuse_auth(&format!("hostname {hostname:?} taken by another key"));
                    return Err(Refusal::new(
                        ErrorCode::HOSTNAME_TAKEN,
                        format!(
                            "hostname {hostname:?} is already used by another machine of this fleet; pass another --hostname or ask the admin to rename the old machine"
                        ),
                        CloseCode::LOGIN_REFUSED,
                    ));
                }
                Err(err) => return Err(err.into()),
            };
            shared.audit(AuditEntry {
                at: now,
                fleet_id: Some(fleet_id),
                actor: &principal.actor(),
                action: "auth",
                outcome: "accepted",
                detail: &format!("agent key {key_text} from {remote}"),
            });
            shared.audit(AuditEntry {
                at: now,
                fleet_id: Some(fleet_id),
                actor: &principal.actor(),
                action: "register",
                outcome: "accepted",
                detail: &format!(
                    "machine {} hostname {:?} key {key_text}",
                    machine.id, machine.hostname
                ),
            });
            let trust_key = shared.lock_store().fleet_trust_key(fleet_id)?.public_key();
            stream
                .send(&RelayMessage::Registered(Registered {
                    machine_id: IdBytes(machine.id.into_bytes()),
                    fleet_id: IdBytes(fleet_id.into_bytes()),
                    heartbeat_interval_secs: u32::try_from(shared.heartbeat_interval.as_secs())
                        .unwrap_or(u32::MAX),
                    trust_key: KeyBytes(trust_key.to_bytes()),
                }))
                .await?;
            Ok(LoggedIn::Agent {
                principal,
                machine_id: machine.id,
                fleet_id,
                fleet: access.fleet().name.clone(),
            })
        }
        _ => {
            if principal.role == Some(KeyRole::Agent) {
                shared.metrics.auth_failed(FailureReason::Role);
                refuse_auth("client login with an agent API key");
                return Err(Refusal::new(
                    ErrorCode::FORBIDDEN,
                    "an agent key can only enrol machines; use a member or admin API key or a user token",
                    CloseCode::LOGIN_REFUSED,
                ));
            }
            shared.audit(AuditEntry {
                at: now,
                fleet_id: single_fleet,
                actor: &principal.actor(),
                action: "auth",
                outcome: "accepted",
                detail: &format!(
                    "client key {key_text} from {remote} ({})",
                    principal.description()
                ),
            });
            stream
                .send(&RelayMessage::Welcome(Welcome {
                    principal: principal.description(),
                    fleets: principal.fleet_names(),
                }))
                .await?;
            let client_key = PublicKey::from_bytes(&public_key.0).map_err(|_| Refusal::auth())?;
            Ok(LoggedIn::Client {
                principal,
                client_key,
            })
        }
    }
}

/// Verifies the peer's proof of key possession over this connection's challenge and exporter.
fn verify_proof(
    nonce: &[u8; 32],
    exporter: &[u8; EXPORTER_LEN],
    public_key: KeyBytes,
    signature: SignatureBytes,
) -> Result<(), &'static str> {
    let key = PublicKey::from_bytes(&public_key.0).map_err(|_| "invalid or weak public key")?;
    let transcript = login_transcript(nonce, exporter, &public_key);
    key.verify(
        Purpose::RelayLogin,
        &transcript,
        &Signature::from_bytes(&signature.0),
    )
    .map_err(|_| "key proof signature invalid")
}

fn scope_refusal(err: ScopeError, close: CloseCode) -> Refusal {
    let code = match err {
        ScopeError::WorkspaceRequired(_) => ErrorCode::WORKSPACE_REQUIRED,
        _ => ErrorCode::FLEET_NOT_FOUND,
    };
    Refusal::new(code, err.to_string(), close)
}

async fn serve_agent(
    shared: &Shared,
    connection: &quinn::Connection,
    stream: &mut ControlStream,
    session_id: u64,
    machine_id: Uuid,
) {
    let previous = shared.online().insert(machine_id, session_id);
    if let Some(previous) = previous
        && let Some(old) = shared.sessions().get(&previous)
    {
        old.connection.close(
            CloseCode::REPLACED.0.into(),
            b"the same machine connected again",
        );
    }
    if let Err(err) = shared
        .lock_store()
        .set_presence(machine_id, true, unix_now())
    {
        tracing::error!(%err, "cannot record presence");
    }
    tracing::info!(%machine_id, "agent online");
    let silence = shared.heartbeat_interval.saturating_mul(MISSED_HEARTBEATS);
    let outcome: Result<CloseCode, Refusal> = async {
        loop {
            let message = match tokio::time::timeout(silence, stream.recv::<PeerMessage>()).await {
                Err(_) => return Ok(CloseCode::HEARTBEAT_TIMEOUT),
                Ok(Ok(None)) => return Ok(CloseCode::NORMAL),
                Ok(Ok(Some(message))) => message,
                Ok(Err(StreamError::Read(_) | StreamError::Write(_))) => {
                    return Ok(CloseCode::NORMAL);
                }
                Ok(Err(err)) => return Err(err.into()),
            };
            match message {
                PeerMessage::Heartbeat => {
                    shared
                        .lock_store()
                        .set_presence(machine_id, true, unix_now())?;
                    stream.send(&RelayMessage::HeartbeatAck).await?;
                }
                PeerMessage::Goodbye => return Ok(CloseCode::NORMAL),
                _ => {
                    return Err(Refusal::new(
                        ErrorCode::UNEXPECTED_MESSAGE,
                        "agents may only send Heartbeat or Goodbye after registering",
                        CloseCode::PROTOCOL_ERROR,
                    ));
                }
            }
        }
    }
    .await;
    // Only the newest connection of a machine decides its presence.
    let current = {
        let mut online = shared.online();
        if online.get(&machine_id) == Some(&session_id) {
            online.remove(&machine_id);
            true
        } else {
            false
        }
    };
    if current {
        if let Err(err) = shared
            .lock_store()
            .set_presence(machine_id, false, unix_now())
        {
            tracing::error!(%err, "cannot record presence");
        }
        tracing::info!(%machine_id, "agent offline");
    }
    match outcome {
        Ok(code) => connection.close(code.0.into(), b"bye"),
        Err(refusal) => refuse(connection, Some(stream), refusal).await,
    }
}

async fn serve_client(
    shared: &Shared,
    connection: &quinn::Connection,
    stream: &mut ControlStream,
    principal: &Principal,
) {
    let outcome: Result<(), Refusal> = async {
        loop {
            let message = match stream.recv::<PeerMessage>().await {
                Ok(Some(message)) => message,
                Ok(None) | Err(StreamError::Read(_) | StreamError::Write(_)) => return Ok(()),
                Err(err) => return Err(err.into()),
            };
            let reply = match message {
                PeerMessage::Heartbeat => RelayMessage::HeartbeatAck,
                PeerMessage::ListMachines(request) => {
                    match principal.fleet_access(request.workspace.as_deref()) {
                        Ok(access) => {
                            let machines = shared.lock_store().machines_in(&access)?;
                            RelayMessage::Machines(machines.into_iter().map(machine_info).collect())
                        }
                        Err(err) => {
                            let refusal = scope_refusal(err, CloseCode::NORMAL);
                            RelayMessage::Error(ErrorMessage {
                                code: refusal.code,
                                message: refusal.message,
                            })
                        }
                    }
                }
                PeerMessage::Goodbye => return Ok(()),
                _ => {
                    return Err(Refusal::new(
                        ErrorCode::UNEXPECTED_MESSAGE,
                        "clients may only send requests after logging in",
                        CloseCode::PROTOCOL_ERROR,
                    ));
                }
            };
            stream.send(&reply).await?;
        }
    }
    .await;
    match outcome {
        Ok(()) => connection.close(CloseCode::NORMAL.0.into(), b"bye"),
        Err(refusal) => refuse(connection, Some(stream), refusal).await,
    }
}

fn machine_info(machine: crate::store::MachineRecord) -> MachineInfo {
    MachineInfo {
        id: IdBytes(machine.id.into_bytes()),
        hostname: machine.hostname,
        name: machine.name,
        public_key: KeyBytes(machine.public_key),
        online: machine.online,
        last_seen: machine.last_seen,
        os: machine.os,
        arch: machine.arch,
        agent_version: machine.agent_version,
    }
}

/// Closes live connections whose credential was revoked or has expired.
async fn watch_revocations(shared: Arc<Shared>, poll: Duration) {
    let mut last_version = None;
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = unix_now();
        let version = shared.lock_store().data_version().ok();
        let changed = version != last_version;
        last_version = version;
        let live: Vec<(u64, String, Option<u64>)> = shared
            .sessions()
            .iter()
            .map(|(id, s)| (*id, s.credential_id.clone(), s.expires_at))
            .collect();
        for (session_id, credential_id, expires_at) in live {
            let expired = expires_at.is_some_and(|at| at <= now);
            let revoked = !expired
                && changed
                && !shared
                    .lock_store()
                    .credential_usable(&credential_id, now)
                    .unwrap_or(true);
            if !(expired || revoked) {
                continue;
            }
            let Some((connection, fleet_id)) = shared
                .sessions()
                .remove(&session_id)
                .map(|s| (s.connection, s.fleet_id))
            else {
                continue;
            };
            let reason = if expired {
                "credential expired"
            } else {
                "credential revoked"
            };
            connection.close(CloseCode::CREDENTIAL_REVOKED.0.into(), reason.as_bytes());
            shared.audit(AuditEntry {
                at: now,
                fleet_id,
                actor: &format!("credential:{credential_id}"),
                action: "disconnect",
                outcome: "done",
                detail: &format!(
                    "{reason}: live connection from {} closed",
                    connection.remote_address()
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests;
