//! The relay's Prometheus metrics, and the small HTTP responder that serves them on `GET /metrics`.
//!
//! The server updates [`RelayMetrics`] as connections log in and leave, streams open and close, and logins
//! fail; `cmdop-relay serve --metrics ADDR` exposes them in the OpenMetrics text format, which Prometheus
//! scrapes natively. Labels are bounded sets (fleet names, stream kinds, fixed reason strings), never peer
//! input verbatim, so a hostile peer cannot grow the registry.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The content type of the OpenMetrics text format, which `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The largest request head the responder reads; a scrape is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;

/// How long a scraper gets to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// Why a login or handshake failed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureReason {
    /// The QUIC/TLS handshake failed or timed out.
    Tls,
    /// The peer did not finish logging in before the deadline.
    LoginTimeout,
    /// The peer broke the login protocol (wrong message, unsupported version).
    Protocol,
    /// The connection limit was reached.
    ConnectionLimit,
    /// The limit on connections still logging in was reached (by sources holding no more than this one).
    UnauthenticatedLimit,
    /// The source already had as many connections logging in as one source may.
    SourceLimit,
    /// Still logging in when the table was full: its slot went to a source holding fewer.
    Evicted,
    /// The credential is malformed, unknown or has the wrong secret.
    Credential,
    /// The credential was revoked.
    Revoked,
    /// The credential has expired.
    Expired,
    /// The key proof signature is invalid.
    KeyProof,
    /// The credential's role may not do what was asked (a member key enrolling a machine, say).
    Role,
    /// The requested fleet is not in the credential's scope.
    Scope,
    /// The agent lacks a required capability.
    Capability,
    /// Another machine of the fleet has the hostname.
    HostnameTaken,
    /// The agent's hostname, display name or description is not valid.
    InvalidRegistration,
    /// The credential already held as many connections as one credential may.
    CredentialLimit,
}

impl FailureReason {
    /// The label for what the login state machine reports, if it is counted at all (a failure of the relay's
    /// own store is logged, not counted against the peer).
    pub fn of_login(failure: cmdop_proto::login::LoginFailure) -> Option<Self> {
        use cmdop_proto::login::LoginFailure;
        Some(match failure {
            LoginFailure::Timeout => Self::LoginTimeout,
            LoginFailure::Protocol => Self::Protocol,
            LoginFailure::Credential => Self::Credential,
            LoginFailure::Revoked => Self::Revoked,
            LoginFailure::Expired => Self::Expired,
            LoginFailure::KeyProof => Self::KeyProof,
            LoginFailure::Role => Self::Role,
            LoginFailure::Scope => Self::Scope,
            LoginFailure::Capability => Self::Capability,
            LoginFailure::HostnameTaken => Self::HostnameTaken,
            LoginFailure::InvalidRegistration => Self::InvalidRegistration,
            LoginFailure::CredentialBusy => Self::CredentialLimit,
            _ => return None,
        })
    }
}

impl FailureReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::LoginTimeout => "login_timeout",
            Self::Protocol => "protocol",
            Self::ConnectionLimit => "connection_limit",
            Self::UnauthenticatedLimit => "unauthenticated_limit",
            Self::SourceLimit => "source_limit",
            Self::Evicted => "evicted",
            Self::Credential => "credential",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::KeyProof => "key_proof",
            Self::Role => "role",
            Self::Scope => "scope",
            Self::Capability => "capability",
            Self::HostnameTaken => "hostname_taken",
            Self::InvalidRegistration => "invalid_registration",
            Self::CredentialLimit => "credential_limit",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FleetLabel {
    fleet: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: String,
}

/// Every metric the relay keeps. Cheap to update from any task; shared behind an `Arc`.
pub struct RelayMetrics {
    registry: Registry,
    agents: Family<FleetLabel, Gauge>,
    clients: Family<FleetLabel, Gauge>,
    sessions: Family<RoleLabel, Counter>,
    streams_active: Family<KindLabel, Gauge>,
    streams: Family<KindLabel, Counter>,
    bytes: Family<DirectionLabel, Counter>,
    handshake_failures: Family<ReasonLabel, Counter>,
    auth_failures: Family<ReasonLabel, Counter>,
    reconnects: Counter,
    retries: Counter,
    waited: Counter,
    memory: Gauge,
    /// Machines that registered since the relay started: a second registration is a reconnect.
    seen: Mutex<HashSet<cmdop_fleet::MachineId>>,
    /// Streams being spliced right now, for draining on shutdown.
    active_streams: AtomicU64,
}

impl fmt::Debug for RelayMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayMetrics").finish_non_exhaustive()
    }
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayMetrics {
    /// A registry with every relay metric at zero.
    // long-function: one registration per metric, listed once in the order docs/self-hosting.md shows them.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cmdop_relay");
        let agents = Family::<FleetLabel, Gauge>::default();
        let clients = Family::<FleetLabel, Gauge>::default();
        let sessions = Family::<RoleLabel, Counter>::default();
        let streams_active = Family::<KindLabel, Gauge>::default();
        let streams = Family::<KindLabel, Counter>::default();
        let bytes = Family::<DirectionLabel, Counter>::default();
        let handshake_failures = Family::<ReasonLabel, Counter>::default();
        let auth_failures = Family::<ReasonLabel, Counter>::default();
        let reconnects = Counter::default();
        let retries = Counter::default();
        let waited = Counter::default();
        let memory = Gauge::default();
        registry.register(
            "agents_connected",
            "Agents logged in now, by fleet",
            agents.clone(),
        );
        registry.register(
            "clients_connected",
            "Clients logged in now, by fleet in their scope",
            clients.clone(),
        );
        registry.register(
            "sessions",
            "Logged-in connections since start, by role (agent or client)",
            sessions.clone(),
        );
        registry.register(
            "streams_active",
            "Routed streams being spliced now, by kind",
            streams_active.clone(),
        );
        registry.register(
            "streams",
            "Routed streams opened since start, by kind",
            streams.clone(),
        );
        registry.register(
            "relayed_bytes",
            "Bytes spliced between clients and agents, counted when each stream ends; up is client to agent",
            bytes.clone(),
        );
        registry.register(
            "handshake_failures",
            "Connections that failed before or during login, by reason",
            handshake_failures.clone(),
        );
        registry.register(
            "auth_failures",
            "Logins refused, by reason",
            auth_failures.clone(),
        );
        registry.register(
            "agent_reconnects",
            "Agent registrations of a machine already registered since the relay started",
            reconnects.clone(),
        );
        registry.register(
            "address_validation_retries",
            "QUIC Retry packets sent to connection attempts from unproven addresses while the relay was loaded",
            retries.clone(),
        );
        registry.register(
            "login_waits",
            "Connection attempts that found every login slot taken and waited for one instead of being refused",
            waited.clone(),
        );
        registry.register(
            "resident_memory_bytes",
            "Resident memory of the relay process",
            memory.clone(),
        );
        Self {
            registry,
            agents,
            clients,
            sessions,
            streams_active,
            streams,
            bytes,
            handshake_failures,
            auth_failures,
            reconnects,
            retries,
            waited,
            memory,
            seen: Mutex::new(HashSet::new()),
            active_streams: AtomicU64::new(0),
        }
    }

    /// The metrics in the OpenMetrics text format, with the memory gauge refreshed.
    pub fn encode(&self) -> String {
        if let Some(bytes) = resident_memory() {
            self.memory.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Routed streams being spliced right now.
    pub fn active_streams(&self) -> u64 {
        self.active_streams.load(Ordering::Relaxed)
    }

    /// Counts a logged-in agent until the guard drops; counts a reconnect if the machine was seen before.
    pub(crate) fn agent_connected(
        &self,
        fleet: &str,
        machine: cmdop_fleet::MachineId,
    ) -> ConnectedGuard {
        self.sessions
            .get_or_create(&RoleLabel {
                role: "agent".to_owned(),
            })
            .inc();
        let again = !self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(machine);
        if again {
            self.reconnects.inc();
        }
        ConnectedGuard::new(&self.agents, vec![fleet.to_owned()])
    }

    /// Counts a logged-in client in each fleet of its scope until the guard drops.
    pub(crate) fn client_connected(&self, fleets: Vec<String>) -> ConnectedGuard {
        self.sessions
            .get_or_create(&RoleLabel {
                role: "client".to_owned(),
            })
            .inc();
        ConnectedGuard::new(&self.clients, fleets)
    }

    /// Counts a routed stream of `kind` as active until the guard drops.
    pub(crate) fn stream_opened(self: &Arc<Self>, kind: &str) -> StreamGuard {
        let label = KindLabel {
            kind: kind.to_owned(),
        };
        self.streams.get_or_create(&label).inc();
        self.streams_active.get_or_create(&label).inc();
        self.active_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard {
            metrics: Arc::clone(self),
            label,
        }
    }

    /// Adds the bytes a finished stream carried.
    pub(crate) fn relayed(&self, up: u64, down: u64) {
        for (direction, bytes) in [("up", up), ("down", down)] {
            self.bytes
                .get_or_create(&DirectionLabel {
                    direction: direction.to_owned(),
                })
                .inc_by(bytes);
        }
    }

    /// Counts a QUIC Retry sent to validate an address.
    pub(crate) fn retry_sent(&self) {
        self.retries.inc();
    }

    /// Counts an attempt that waits for a login slot.
    pub(crate) fn login_waited(&self) {
        self.waited.inc();
    }

    /// Counts a connection that failed before it logged in.
    pub(crate) fn handshake_failed(&self, reason: FailureReason) {
        self.handshake_failures
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts a refused login.
    pub(crate) fn auth_failed(&self, reason: FailureReason) {
        self.auth_failures
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }
}

/// Decrements a connected-peers gauge (one per fleet) when the connection ends.
pub(crate) struct ConnectedGuard {
    family: Family<FleetLabel, Gauge>,
    fleets: Vec<String>,
}

impl ConnectedGuard {
    fn new(family: &Family<FleetLabel, Gauge>, fleets: Vec<String>) -> Self {
        for fleet in &fleets {
            family
                .get_or_create(&FleetLabel {
                    fleet: fleet.clone(),
                })
                .inc();
        }
        Self {
            family: family.clone(),
            fleets,
        }
    }
}

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        for fleet in self.fleets.drain(..) {
            self.family.get_or_create(&FleetLabel { fleet }).dec();
        }
    }
}

/// Decrements the active-streams gauge when a routed stream ends.
pub(crate) struct StreamGuard {
    metrics: Arc<RelayMetrics>,
    label: KindLabel,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.metrics.streams_active.get_or_create(&self.label).dec();
        self.metrics.active_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes; any other request gets 404 or 405.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<RelayMetrics>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, remote)) = accepted else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            if let Err(err) = respond(stream, &metrics).await {
                tracing::debug!(%remote, %err, "metrics request failed");
            }
        });
    }
}

/// Binds the metrics listener, naming the address in the error.
pub async fn bind_http(addr: SocketAddr) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr).await.map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!("cannot listen for metrics on {addr}: {err}; pick another --metrics address"),
        )
    })
}

async fn respond(mut stream: TcpStream, metrics: &RelayMetrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        std::io::Result::Ok(())
    };
    match tokio::time::timeout(REQUEST_DEADLINE, read_head).await {
        Ok(result) => result?,
        Err(_) => return Ok(()),
    }
    let request_line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|line| String::from_utf8_lossy(line).trim().to_owned())
        .unwrap_or_default();
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", CONTENT_TYPE, metrics.encode()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found; the metrics are at /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET /metrics is served\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Resident set size of this process, from `/proc/self/statm` (Linux); `None` elsewhere.
fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // The page size is 4 KiB on every Linux platform the relay targets (x86_64, aarch64 default kernels).
    Some(pages.saturating_mul(4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_follow_guards_and_the_text_names_every_metric() {
        let metrics = Arc::new(RelayMetrics::new());
        let machine = cmdop_fleet::MachineId::from_bytes([7; 16]);
        let agent = metrics.agent_connected("prod", machine);
        let client = metrics.client_connected(vec!["prod".into(), "dev".into()]);
        let stream = metrics.stream_opened("exec");
        metrics.relayed(10, 20);
        metrics.handshake_failed(FailureReason::Tls);
        metrics.auth_failed(FailureReason::KeyProof);
        let text = metrics.encode();
        for line in [
            "cmdop_relay_agents_connected{fleet=\"prod\"} 1",
            "cmdop_relay_clients_connected{fleet=\"dev\"} 1",
            "cmdop_relay_streams_active{kind=\"exec\"} 1",
            "cmdop_relay_streams_total{kind=\"exec\"} 1",
            "cmdop_relay_relayed_bytes_total{direction=\"down\"} 20",
            "cmdop_relay_handshake_failures_total{reason=\"tls\"} 1",
            "cmdop_relay_auth_failures_total{reason=\"key_proof\"} 1",
            "cmdop_relay_agent_reconnects_total 0",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert_eq!(metrics.active_streams(), 1);
        drop((agent, client, stream));
        let again = metrics.agent_connected("prod", machine);
        let text = metrics.encode();
        assert!(text.contains("cmdop_relay_streams_active{kind=\"exec\"} 0"));
        assert!(text.contains("cmdop_relay_agent_reconnects_total 1"));
        assert!(text.contains("cmdop_relay_agents_connected{fleet=\"prod\"} 1"));
        assert_eq!(metrics.active_streams(), 0);
        drop(again);
    }
}
