//! The relay server: accepts QUIC connections and drives, for each, the sans-IO state machines of cmdop-proto
//! (login, then the logged-in session and the routing of its streams) against the store.
//!
//! One task per connection. A connection first holds an "unauthenticated" permit and must log in within
//! [`Limits::login_deadline`] (`login`); after login the permit is released, the connection is tracked in
//! the session table, and `session` serves its control stream (and `lock` its fleet-lock requests) while
//! `routing` serves the streams it opens. A watcher (`revocation`) re-checks the credentials of live
//! connections against the store when it changed (polled every [`ServerConfig::revocation_poll`]) and every
//! [`ServerConfig::revocation_recheck`] regardless, so a credential revoked by an admin verb (another process)
//! cuts its connections within a second; a credential the store cannot read cuts its connection too (fail
//! closed).

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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cmdop_client::control::{ControlStream, StreamError};
use cmdop_client::transport::{Limits, Traffic, endpoint, udp_socket};
use cmdop_fleet::{CredentialId, FleetId, MachineId, Timestamp};
use cmdop_proto::RelayFingerprint;
use cmdop_proto::admission::{
    Admission, AdmissionConfig, Admit, Refusal as AdmissionRefusal, Ticket, WaitingRoom,
};
use cmdop_proto::audit_budget::{AuditBudget, source_of};
use cmdop_proto::login::{AuditEvent, CredentialBusy, Time};
use cmdop_proto::presence::{PresenceBook, come_back_window};
use cmdop_proto::wire::{
    CloseCode, ErrorCode, ErrorMessage, GoAway, IdBytes, RelayMessage, RouteReady, StreamHeader,
    WireError,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::metrics::{FailureReason, RelayMetrics};
use crate::store::{AuditEntry, Store, StoreError};
use crate::tls::{RouteConfigs, TlsError, TlsIdentity, endpoint_config, server_config};

pub use cmdop_proto::presence::MISSED_HEARTBEATS;
pub use routing::STALL_TIMEOUT;

/// Default address `serve` listens on: all IPv4 interfaces, UDP port 4433.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:4433";

/// Default agent heartbeat interval.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

/// Default for [`ServerConfig::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for [`ServerConfig::go_away_after`]: about as long as a service manager takes to start the
/// replacement. An agent that comes back sooner finds no relay yet; QUIC resends its first packet until one
/// answers.
pub const DEFAULT_GO_AWAY_AFTER: Duration = Duration::from_millis(250);

/// The login rate a stopping relay sizes its agents' return window for ([`come_back_window`]): 10,000 agents
/// come back over 20 s, a handful within a second.
const GO_AWAY_ADMIT_PER_SECOND: u32 = 500;

/// After telling its agents to go away, how long a stopping relay with nothing left to drain waits for those
/// messages to leave before it closes the connections.
const GO_AWAY_FLUSH: Duration = Duration::from_millis(200);

/// Default for [`ServerConfig::revocation_recheck`].
pub const DEFAULT_REVOCATION_RECHECK: Duration = Duration::from_secs(30);

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
    /// How often the store's change counter is polled; a change re-checks every live connection's credential.
    pub revocation_poll: Duration,
    /// How often every live connection's credential is re-checked even when no change was seen.
    pub revocation_recheck: Duration,
    /// Sees every forwarded byte of routed streams (tests only; `None` in the binary).
    pub tap: Option<Tap>,
    /// Where the server counts what it does (`cmdop-relay serve --metrics` serves them).
    pub metrics: Arc<RelayMetrics>,
    /// On shutdown, how long commands and copies still running get to finish before the relay closes them
    /// (shells and tunnels are not waited for: `cmdop_proto::routing::drain_waits_for`).
    pub drain_timeout: Duration,
    /// On shutdown, how long after the close agents are told to wait before reconnecting ([`GoAway`]); the
    /// window they spread over is sized to the number online ([`come_back_window`]).
    pub go_away_after: Duration,
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
            revocation_recheck: DEFAULT_REVOCATION_RECHECK,
            tap: None,
            metrics: Arc::new(RelayMetrics::new()),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            go_away_after: DEFAULT_GO_AWAY_AFTER,
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
    revocation_recheck: Duration,
    drain_timeout: Duration,
    go_away_after: Duration,
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    limits: Limits,
    /// What each connection is accepted with: MTU discovery bounded by the route back to its peer.
    route_configs: RouteConfigs,
    heartbeat_interval: Duration,
    connections: Arc<Semaphore>,
    /// Connections not yet logged in: who may start, who must prove its address, whose slot goes to whom.
    admission: Mutex<Admission>,
    /// The monotonic clock the admission table's times are read from (time since the relay started).
    admission_clock: tokio::time::Instant,
    /// How to end each pending login early, by its admission ticket (when its slot goes to another).
    evictions: Mutex<HashMap<Ticket, Arc<Notify>>>,
    /// Told whenever an admission slot frees, so that an attempt waiting for one gets it.
    slot_freed: Notify,
    /// Connections held by each client credential.
    per_credential: Mutex<HashMap<CredentialId, usize>>,
    /// Set once the relay stops on purpose: every session then tells its agent to go away, with this.
    stopping: watch::Sender<Option<GoAway>>,
    /// Routed streams a stopping relay waits for (commands, copies: `cmdop_proto::routing::drain_waits_for`).
    finishing: AtomicU64,
    /// Logged-in connections, by a number of the relay's own.
    sessions: Mutex<HashMap<u64, LiveConnection>>,
    /// Every machine's presence, with the connection that decides it (the newest one); written to the store
    /// in batches by [`presence`].
    presence: Mutex<PresenceBook>,
    next_session: AtomicU64,
    tap: Option<Tap>,
    metrics: Arc<RelayMetrics>,
    /// Refusals counted this minute instead of written one by one.
    audit_budget: Mutex<AuditBudget>,
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

/// A credential's standing as the revocation watcher last read it.
#[derive(Debug, Clone)]
enum Standing {
    /// Not read since the connection logged in.
    Unread,
    /// What the store says.
    Read(Result<(), cmdop_fleet::AuthError>),
    /// The store could not say: the session ends (revocation fails closed).
    Unknown,
}

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
        let route_configs = RouteConfigs::new(quic.clone(), config.limits.clone());
        let endpoint = endpoint(
            endpoint_config(&config.tls, &config.limits),
            Some(quic),
            socket,
        )
        .map_err(bind_error)?;
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            route_configs,
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            admission: Mutex::new(Admission::new(AdmissionConfig {
                max_pending: config.limits.max_unauthenticated,
                max_per_source: config.limits.max_unauthenticated_per_source,
                retry_from: config.limits.retry_from,
                min_age: cmdop_proto::admission::MIN_AGE,
            })),
            admission_clock: tokio::time::Instant::now(),
            evictions: Mutex::new(HashMap::new()),
            slot_freed: Notify::new(),
            per_credential: Mutex::new(HashMap::new()),
            stopping: watch::channel(None).0,
            finishing: AtomicU64::new(0),
            limits: config.limits,
            heartbeat_interval: config.heartbeat_interval,
            sessions: Mutex::new(HashMap::new()),
            presence: Mutex::new(PresenceBook::default()),
            next_session: AtomicU64::new(1),
            tap: config.tap,
            metrics: config.metrics,
            audit_budget: Mutex::new(AuditBudget::new()),
            meddler: config.meddler,
        });
        Ok(Self {
            endpoint,
            shared,
            fingerprint,
            revocation_poll: config.revocation_poll,
            revocation_recheck: config.revocation_recheck,
            drain_timeout: config.drain_timeout,
            go_away_after: config.go_away_after,
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

    /// Serves until `shutdown` completes, then drains: no new connections are accepted, agents are told to go
    /// away ([`GoAway`]: when to come back), commands and copies still running get
    /// [`ServerConfig::drain_timeout`] to finish, then every connection is closed (close code 7: peers
    /// reconnect to the relay's next run by themselves) and machines are marked offline.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let watcher = tokio::spawn(revocation::watch(
            self.shared.clone(),
            self.revocation_poll,
            self.revocation_recheck,
        ));
        let audit_flusher = tokio::spawn(flush_audit_every(self.shared.clone(), AUDIT_FLUSH));
        let flusher = tokio::spawn(presence::flush_every(
            self.shared.clone(),
            presence::PRESENCE_FLUSH,
        ));
        tokio::pin!(shutdown);
        let limits = &self.shared.limits;
        let mut waiting = WaitingRoom::new(
            limits.max_unauthenticated.saturating_mul(WAITING_PER_SLOT),
            limits
                .max_unauthenticated_per_source
                .saturating_mul(WAITING_PER_SLOT),
            MAX_WAIT,
        );
        loop {
            let expiry = waiting
                .next_expiry()
                .map(|at| self.shared.admission_clock + at);
            let incoming = tokio::select! {
                () = &mut shutdown => break,
                incoming = self.endpoint.accept() => incoming,
                () = self.shared.slot_freed.notified(), if !waiting.is_empty() => {
                    self.admit_waiting(&mut waiting);
                    continue;
                }
                () = tokio::time::sleep_until(expiry.unwrap_or_else(tokio::time::Instant::now)),
                    if expiry.is_some() => {
                    self.admit_waiting(&mut waiting);
                    continue;
                }
            };
            let Some(incoming) = incoming else { break };
            self.admit(incoming, &mut waiting);
        }
        while let Some((incoming, _permit)) = waiting.take_front() {
            incoming.refuse();
        }
        self.drain().await;
        watcher.abort();
        audit_flusher.abort();
        self.shared.flush_audit(true);
        self.endpoint
            .close(CloseCode::SHUTDOWN.0.into(), b"relay shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        flusher.abort();
        // The last `last_seen` of every machine, then all offline: no connection survives a stop.
        presence::flush(&self.shared);
        self.shared.lock_store().mark_all_offline()?;
        Ok(())
    }

    /// Takes a connection permit and an admission slot for a new connection ([`Admission`]: a QUIC Retry for
    /// an unproven address under load, a cap per source, the slot of a heavier source when full), or refuses
    /// it. Refusals during a flood are counted in the metrics and logged at debug level only, so a flood
    /// cannot fill the log either.
    fn admit(&self, incoming: quinn::Incoming, waiting: &mut WaitingRoom<Attempt>) {
        let remote = incoming.remote_address();
        let Ok(connection_permit) = self.shared.connections.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "connection limit reached; refusing");
            self.shared
                .metrics
                .handshake_failed(FailureReason::ConnectionLimit);
            incoming.refuse();
            return;
        };
        let source = source_of(remote.ip());
        let decision = self.shared.admission().admit(
            &source,
            incoming.remote_address_validated(),
            self.shared.admission_clock.elapsed(),
        );
        let ticket = match decision {
            Admit::Accept(ticket) => ticket,
            Admit::AcceptEvicting { ticket, evicted } => {
                self.shared.evict(evicted);
                ticket
            }
            Admit::Retry => {
                self.send_retry(incoming);
                return;
            }
            Admit::Refuse(refusal) => {
                let now = self.shared.admission_clock.elapsed();
                let Err((incoming, _permit)) =
                    waiting.push(&source, (incoming, connection_permit), now)
                else {
                    self.shared.metrics.login_waited();
                    return;
                };
                let reason = match refusal {
                    AdmissionRefusal::SourceBusy => FailureReason::SourceLimit,
                    _ => FailureReason::UnauthenticatedLimit,
                };
                tracing::debug!(%remote, ?refusal, "no login slot and no room to wait; refusing");
                self.shared.metrics.handshake_failed(reason);
                incoming.refuse();
                return;
            }
            other => {
                tracing::error!(?other, "unknown admission decision; refusing");
                incoming.refuse();
                return;
            }
        };
        self.start_login(incoming, connection_permit, ticket);
    }

    /// Gives attempts waiting for a login slot the slots free now, oldest first, and refuses those that have
    /// waited [`MAX_WAIT`].
    fn admit_waiting(&self, waiting: &mut WaitingRoom<Attempt>) {
        let now = self.shared.admission_clock.elapsed();
        for (incoming, _permit) in waiting.expire(now) {
            tracing::debug!(remote = %incoming.remote_address(), "waited too long for a login slot; refusing");
            self.shared
                .metrics
                .handshake_failed(FailureReason::UnauthenticatedLimit);
            incoming.refuse();
        }
        // From the front, past attempts whose source is at its share of the slots (one source must not hold up
        // the others'), but only so far: each look is an admission decision.
        let mut index = 0;
        while index < WAITING_SCAN {
            let Some((source, (incoming, _))) = waiting.peek(index) else {
                break;
            };
            let validated = incoming.remote_address_validated();
            let ticket = match self.shared.admission().admit(source, validated, now) {
                Admit::Accept(ticket) => ticket,
                Admit::AcceptEvicting { ticket, evicted } => {
                    self.shared.evict(evicted);
                    ticket
                }
                Admit::Retry => {
                    if let Some((incoming, _permit)) = waiting.take(index) {
                        self.send_retry(incoming);
                    }
                    continue;
                }
                Admit::Refuse(AdmissionRefusal::SourceBusy) => {
                    index += 1;
                    continue;
                }
                // No slot for anybody: everyone keeps their place.
                _ => break,
            };
            let Some((incoming, permit)) = waiting.take(index) else {
                self.shared.admission().done(ticket);
                break;
            };
            self.start_login(incoming, permit, ticket);
        }
    }

    /// Answers an attempt with a QUIC Retry (its address must be proven first), or refuses it if quinn cannot.
    fn send_retry(&self, incoming: quinn::Incoming) {
        self.shared.metrics.retry_sent();
        if let Err(err) = incoming.retry() {
            err.into_incoming().refuse();
        }
    }

    /// Runs the handshake and login of an admitted attempt in a task of its own.
    fn start_login(&self, incoming: quinn::Incoming, permit: OwnedSemaphorePermit, ticket: Ticket) {
        let evicted = Arc::new(Notify::new());
        self.shared.evictions().insert(ticket, Arc::clone(&evicted));
        let slot = LoginSlot {
            shared: Arc::clone(&self.shared),
            ticket,
        };
        let shared = self.shared.clone();
        let task = async move {
            handle_incoming(shared, incoming, slot, evicted).await;
            drop(permit);
        };
        tokio::spawn(task);
    }

    /// Refuses new connections at once, tells every agent to go away (to come back after the close, spread
    /// over a window sized to the fleet), and lets commands and copies still running finish, up to the drain
    /// timeout. Shells and tunnels are not waited for: a shell resumes through the restart without losing
    /// output, and holding it would only strand the person attached until the deadline and then cut it anyway.
    async fn drain(&self) {
        self.endpoint.set_server_config(None);
        let online = self.shared.presence().online_count();
        let window = come_back_window(online, GO_AWAY_ADMIT_PER_SECOND);
        let millis = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        self.shared.stopping.send_replace(Some(GoAway {
            reconnect_after_ms: millis(self.go_away_after),
            spread_ms: millis(window),
        }));
        let finishing = || self.shared.finishing.load(Ordering::Relaxed);
        if finishing() == 0 {
            tokio::time::sleep(GO_AWAY_FLUSH).await;
            return;
        }
        tracing::info!(streams = finishing(), timeout = ?self.drain_timeout, "draining: waiting for commands and copies to finish");
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        while finishing() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = finishing();
        if left > 0 {
            tracing::warn!(
                streams = left,
                "drain timeout reached; closing the commands and copies still running"
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

    /// Appends a state machine's audit event, stamped now, within the refusal budget of `source` (the peer's
    /// address before login, the actor after): repeated refusals are counted, not written one by one.
    fn audit(&self, source: &str, event: AuditEvent) {
        let at = now().unix;
        let write = self.budget().admit(source, event, at);
        self.write_audit(&write, at);
    }

    /// Writes the refusal counts of a minute that is over (or, with `stopping`, of the running one).
    fn flush_audit(&self, stopping: bool) {
        let at = now().unix;
        let write = if stopping {
            self.budget().finish()
        } else {
            self.budget().flush(at)
        };
        self.write_audit(&write, at);
    }

    fn write_audit(&self, events: &[AuditEvent], at: Timestamp) {
        if events.is_empty() {
            return;
        }
        let store = self.lock_store();
        for event in events {
            let entry = AuditEntry {
                at,
                fleet: event.fleet,
                actor: &event.actor,
                action: event.action,
                outcome: event.outcome,
                detail: &event.detail,
            };
            if let Err(err) = store.append_audit(&entry) {
                tracing::error!(%err, action = event.action, "cannot write the audit log");
            }
        }
    }

    fn budget(&self) -> MutexGuard<'_, AuditBudget> {
        self.audit_budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn per_credential(&self) -> MutexGuard<'_, HashMap<CredentialId, usize>> {
        self.per_credential
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reserves one of the connections `credential` may hold, if it has one left.
    fn reserve_connection(
        self: &Arc<Self>,
        credential: CredentialId,
    ) -> Result<CredentialSlot, CredentialBusy> {
        let limit = self.limits.max_connections_per_credential;
        let mut held = self.per_credential();
        let count = held.entry(credential).or_insert(0);
        if *count >= limit {
            return Err(CredentialBusy { limit });
        }
        *count += 1;
        Ok(CredentialSlot {
            shared: Arc::clone(self),
            credential,
        })
    }

    fn admission(&self) -> MutexGuard<'_, Admission> {
        self.admission
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn evictions(&self) -> MutexGuard<'_, HashMap<Ticket, Arc<Notify>>> {
        self.evictions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends the pending login holding `ticket`: its slot went to another attempt.
    fn evict(&self, ticket: Ticket) {
        if let Some(evicted) = self.evictions().remove(&ticket) {
            evicted.notify_one();
        }
        self.metrics.handshake_failed(FailureReason::Evicted);
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

/// How often the refusal counts of a finished minute are written.
const AUDIT_FLUSH: Duration = Duration::from_secs(5);

async fn flush_audit_every(shared: Arc<Shared>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        shared.flush_audit(false);
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

/// One of the connections a client credential may hold (`Limits::max_connections_per_credential`), freed
/// when the connection ends.
struct CredentialSlot {
    shared: Arc<Shared>,
    credential: CredentialId,
}

impl Drop for CredentialSlot {
    fn drop(&mut self) {
        let mut held = self.shared.per_credential();
        if let Some(count) = held.get_mut(&self.credential) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.credential);
            }
        }
    }
}

/// A pending login's admission slot: freed when the login ends, however it ends.
struct LoginSlot {
    shared: Arc<Shared>,
    ticket: Ticket,
}

impl Drop for LoginSlot {
    fn drop(&mut self) {
        self.shared.evictions().remove(&self.ticket);
        self.shared.admission().done(self.ticket);
        self.shared.slot_freed.notify_one();
    }
}

/// An attempt waiting for a login slot: its first packets and its connection permit.
type Attempt = (quinn::Incoming, OwnedSemaphorePermit);

/// Attempts that may wait for a login slot, per slot (and per source, per slot a source may hold): a reconnect
/// storm of thousands then queues for the next free slot instead of being refused and backing off for up to
/// 30 s ([`WaitingRoom`]).
const WAITING_PER_SLOT: usize = 32;

/// How many waiting attempts one free slot is offered to, from the front, before the rest wait on.
const WAITING_SCAN: usize = 64;

/// The longest an attempt waits for a login slot before it is refused: within a peer's 10 s connection
/// timeout, so that it still has time to log in once admitted.
const MAX_WAIT: Duration = Duration::from_secs(6);

/// The close reason of a login whose slot went to another attempt.
const EVICTED: &str = "the relay is busy: this login's slot went to another attempt; retry";

async fn handle_incoming(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    slot: LoginSlot,
    evicted: Arc<Notify>,
) {
    let remote = incoming.remote_address();
    let started = tokio::time::Instant::now();
    let deadline = started + shared.limits.login_deadline;
    let connecting = match incoming.accept_with(shared.route_configs.towards(remote)) {
        Ok(connecting) => connecting,
        Err(err) => {
            tracing::debug!(%remote, %err, "incoming connection failed");
            shared.metrics.handshake_failed(FailureReason::Tls);
            return;
        }
    };
    let connection = tokio::select! {
        connected = tokio::time::timeout_at(deadline, connecting) => match connected {
            Ok(Ok(connection)) => connection,
            _ => {
                tracing::debug!(%remote, "handshake failed or timed out");
                shared.metrics.handshake_failed(FailureReason::Tls);
                return;
            }
        },
        // Dropping the handshake abandons it.
        () = evicted.notified() => return,
    };
    // Boxed: the login's state is large and short-lived, and inline it would size this task's future, which
    // every idle agent's connection keeps for as long as it lives.
    let logged_in = tokio::select! {
        logged_in = Box::pin(login::log_in(&shared, &connection, remote, deadline.into_std())) => logged_in,
        () = evicted.notified() => {
            connection.close(CloseCode::LOGIN_TIMEOUT.0.into(), EVICTED.as_bytes());
            return;
        }
    };
    let Some((stream, logged_in, credential_slot)) = logged_in else {
        return;
    };
    drop(slot);
    session::serve(shared, connection.clone(), stream, logged_in, remote).await;
    drop(credential_slot);
    tracing::info!(%remote, traffic = %Traffic::of(&connection), "connection ended");
}

#[cfg(test)]
mod tests;
