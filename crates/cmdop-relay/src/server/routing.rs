//! Routing: a client's request to reach a machine becomes a stream to that machine's agent, spliced to the
//! client's stream. After the one framed header on each side the relay moves opaque bytes (the end-to-end
//! channel) and never parses them.
//!
//! ```text
//!  client ──OpenStream{fleet, machine, kind}──▶ relay: scope, resolve, online?, capability
//!  client ◀──StreamReady{channel id, machine, capability}──┐   agent ◀──IncomingStream{channel id, kind}──
//!  client ◀════════════════ spliced bytes (ciphertext) ═══════════════▶ agent
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cmdop_fleet::{
    AgentInfo, Capability, DisplayName, FleetId, Hostname, Machine, MachineId, Operation,
    OperationSet, Permission, ResolveError, Timestamp, resolve,
};
use cmdop_identity::PublicKey;
use quinn::{RecvStream, SendStream};
use rand_core::{OsRng, RngCore};
use uuid::Uuid;

use super::{Shared, machine_info, unix_now};
use crate::store::{AuditEntry, MachineRecord, Principal, ScopeError};
use cmdop_client::control::ControlStream;
use cmdop_proto::e2e::StreamKind;
use cmdop_proto::wire::{
    self, ErrorCode, ErrorMessage, IdBytes, KeyBytes, MAX_CANDIDATES, OpenStream, PeerMessage,
    RelayMessage, StreamHeader, StreamReady,
};

/// How long a client has to send its [`OpenStream`] header on a new stream.
const HEADER_DEADLINE: Duration = Duration::from_secs(10);

/// How long a capability the relay issues for one stream stays valid. The agent checks it once, at the start
/// of the stream, so this bounds how late a captured capability could be replayed, not how long streams live.
const CAPABILITY_LIFETIME_SECS: u64 = 300;

/// Copy buffer per direction of a spliced stream: the whole per-stream memory the relay spends on payload.
const SPLICE_BUFFER: usize = 64 * 1024;

/// A spliced stream with no progress in either direction for this long is dropped, so a stalled peer cannot
/// hold a stream (and its flow-control credit) forever. Interactive sessions stay alive through their own
/// keepalive traffic.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Accepts the streams a logged-in client opens after its control stream, and routes each on its own task.
pub(super) async fn accept_routes(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    principal: Principal,
    client_key: PublicKey,
) {
    while let Ok((send, recv)) = connection.accept_bi().await {
        let shared = Arc::clone(&shared);
        let principal = principal.clone();
        tokio::spawn(async move { route(&shared, send, recv, &principal, client_key).await });
    }
}

/// What a routed stream reached, for the audit log.
struct Route {
    fleet_id: Uuid,
    machine: MachineRecord,
    kind: StreamKind,
    agent: quinn::Connection,
    ready: StreamReady,
    header: StreamHeader,
}

async fn route(
    shared: &Shared,
    send: SendStream,
    recv: RecvStream,
    principal: &Principal,
    client_key: PublicKey,
) {
    let mut control = ControlStream::new(send, recv);
    let Ok(Ok(Some(PeerMessage::OpenStream(request)))) =
        tokio::time::timeout(HEADER_DEADLINE, control.recv::<PeerMessage>()).await
    else {
        let _ = refuse(
            &mut control,
            ErrorCode::UNEXPECTED_MESSAGE,
            "expected OpenStream as the first message of a stream",
            Vec::new(),
        )
        .await;
        return;
    };
    let route = match prepare(shared, principal, &request, client_key) {
        Ok(route) => route,
        Err(Refusal {
            code,
            message,
            candidates,
        }) => {
            shared.audit(AuditEntry {
                at: unix_now(),
                fleet_id: None,
                actor: &principal.actor(),
                action: "session",
                outcome: "refused",
                detail: &format!(
                    "open {:?} kind {}: {message}",
                    request.machine, request.kind
                ),
            });
            let _ = refuse(&mut control, code, &message, candidates).await;
            return;
        }
    };
    let (agent_send, agent_recv) = match open_to_agent(&route).await {
        Ok(streams) => streams,
        Err(reason) => {
            let message = format!(
                "machine {} could not be reached: {reason}; try again",
                route.machine.hostname
            );
            let _ = refuse(
                &mut control,
                ErrorCode::MACHINE_OFFLINE,
                &message,
                Vec::new(),
            )
            .await;
            return;
        }
    };
    if control
        .send(&RelayMessage::StreamReady(route.ready.clone()))
        .await
        .is_err()
    {
        return;
    }
    let (client_send, client_recv, leftover) = control.into_parts();
    let started = unix_now();
    let channel = hex::encode(route.header.channel_id);
    tracing::info!(%channel, machine = %route.machine.id, kind = ?route.kind, "stream routed");
    let active = shared
        .metrics
        .stream_opened(&format!("{:?}", route.kind).to_lowercase());
    let outcome = splice(
        shared,
        (client_send, client_recv, leftover),
        (agent_send, agent_recv),
    )
    .await;
    shared.metrics.relayed(outcome.up, outcome.down);
    drop(active);
    shared.audit(AuditEntry {
        at: started,
        fleet_id: Some(route.fleet_id),
        actor: &principal.actor(),
        action: "session",
        outcome: if outcome.error.is_none() { "closed" } else { "cut" },
        detail: &format!(
            "{kind:?} to machine {id} ({host}) channel {channel}: {up} bytes up, {down} bytes down, {secs} s, {end}",
            kind = route.kind,
            id = route.machine.id,
            host = route.machine.hostname,
            up = outcome.up,
            down = outcome.down,
            secs = unix_now().saturating_sub(started),
            end = outcome.error.as_deref().unwrap_or("ended normally"),
        ),
    });
}

/// Why a stream was refused: the code and message for the client, and for an ambiguous name the machines it
/// matched, which the client gets as data after the message.
struct Refusal {
    code: ErrorCode,
    message: String,
    candidates: Vec<wire::Candidate>,
}

impl From<(ErrorCode, String)> for Refusal {
    fn from((code, message): (ErrorCode, String)) -> Self {
        Self {
            code,
            message,
            candidates: Vec::new(),
        }
    }
}

/// Scope, resolution, presence and the capability, all before a byte reaches the agent.
fn prepare(
    shared: &Shared,
    principal: &Principal,
    request: &OpenStream,
    client_key: PublicKey,
) -> Result<Route, Refusal> {
    let kind = StreamKind::from_byte(request.kind).ok_or_else(|| {
        (
            ErrorCode::UNEXPECTED_MESSAGE,
            format!("unknown stream kind {}", request.kind),
        )
    })?;
    let access = principal
        .fleet_access(request.workspace.as_deref())
        .map_err(|err| match err {
            ScopeError::WorkspaceRequired(_) => (ErrorCode::WORKSPACE_REQUIRED, err.to_string()),
            _ => (ErrorCode::FLEET_NOT_FOUND, err.to_string()),
        })?;
    let reach = principal
        .fleet_permission(&access, Permission::Reach)
        .map_err(|err| (ErrorCode::FORBIDDEN, err.to_string()))?;
    let internal = |_| {
        (
            ErrorCode::INTERNAL,
            "the relay's store failed; try again".to_owned(),
        )
    };
    let records = shared.lock_store().machines_in(&access).map_err(internal)?;
    let machines: Vec<Machine> = records.iter().filter_map(fleet_machine).collect();
    let found = resolve(&reach, &machines, &request.machine).map_err(|err| match &err {
        ResolveError::Ambiguous { candidates, .. } => Refusal {
            code: ErrorCode::AMBIGUOUS,
            message: err.to_string(),
            candidates: candidates
                .iter()
                .take(MAX_CANDIDATES)
                .map(|candidate| wire::Candidate {
                    id: IdBytes(candidate.id.to_bytes()),
                    hostname: candidate.hostname.as_str().to_owned(),
                    name: candidate.name.clone(),
                })
                .collect(),
        },
        ResolveError::Scope(_) => (ErrorCode::FORBIDDEN, err.to_string()).into(),
        _ => (ErrorCode::MACHINE_NOT_FOUND, err.to_string()).into(),
    })?;
    let machine_id = *found.id.as_uuid();
    let machine = records
        .into_iter()
        .find(|record| record.id == machine_id)
        .ok_or_else(|| {
            (
                ErrorCode::MACHINE_NOT_FOUND,
                format!("machine {:?} not found", request.machine),
            )
        })?;
    let agent = shared
        .online()
        .get(&machine.id)
        .and_then(|session| shared.sessions().get(session).map(|s| s.connection.clone()))
        .ok_or_else(|| {
            (
                ErrorCode::MACHINE_OFFLINE,
                format!(
                    "machine {} ({}) is offline; check that its agent runs",
                    machine.hostname, machine.id
                ),
            )
        })?;
    let operation = match kind {
        StreamKind::Shell => Operation::Shell,
        StreamKind::Exec => Operation::Exec,
        StreamKind::Tunnel => Operation::Forward,
        _ => Operation::Copy,
    };
    let now = unix_now();
    let trust = shared
        .lock_store()
        .fleet_trust_key(access.fleet().id)
        .map_err(internal)?;
    // Issued per stream for exactly the operation asked for, for the key that proved itself at login.
    let capability = Capability {
        client_key,
        fleet: reach.fleet_id(),
        operations: OperationSet::from_iter([operation]),
        not_before: Timestamp::from_unix_seconds(now.saturating_sub(60)),
        not_after: Timestamp::from_unix_seconds(now.saturating_add(CAPABILITY_LIFETIME_SECS)),
    }
    .sign(&trust)
    .to_bytes();
    let mut channel_id = [0u8; 16];
    OsRng.fill_bytes(&mut channel_id);
    let fleet_id = access.fleet().id;
    Ok(Route {
        fleet_id,
        kind,
        agent,
        ready: StreamReady {
            channel_id,
            fleet_id: IdBytes(fleet_id.into_bytes()),
            machine: machine_info(machine.clone()),
            capability,
        },
        header: StreamHeader {
            channel_id,
            fleet_id: IdBytes(fleet_id.into_bytes()),
            kind: request.kind,
            client_key: KeyBytes(client_key.to_bytes()),
        },
        machine,
    })
}

/// The cmdop-fleet view of a stored machine, for the resolver. Rows that no longer validate are skipped
/// rather than failing every lookup in the fleet.
fn fleet_machine(record: &MachineRecord) -> Option<Machine> {
    Some(Machine {
        id: MachineId::from_bytes(record.id.into_bytes()),
        fleet: FleetId::from_bytes(record.fleet_id.into_bytes()),
        public_key: PublicKey::from_bytes(&record.public_key).ok()?,
        hostname: Hostname::parse(&record.hostname).ok()?,
        name: (record.name != record.hostname)
            .then(|| DisplayName::parse(&record.name).ok())
            .flatten(),
        info: AgentInfo::new(&record.os, &record.arch, &record.agent_version).ok()?,
        online: record.online,
        last_heartbeat: record.last_seen.map(Timestamp::from_unix_seconds),
        registered: Timestamp::from_unix_seconds(record.created_at),
    })
}

async fn open_to_agent(route: &Route) -> Result<(SendStream, RecvStream), String> {
    let (send, recv) = route.agent.open_bi().await.map_err(|err| err.to_string())?;
    let mut control = ControlStream::new(send, recv);
    control
        .send(&RelayMessage::IncomingStream(route.header.clone()))
        .await
        .map_err(|err| err.to_string())?;
    let (send, recv, _) = control.into_parts();
    Ok((send, recv))
}

/// Answers with an error, then the candidates when there are any, and finishes the stream.
async fn refuse(
    control: &mut ControlStream,
    code: ErrorCode,
    message: &str,
    candidates: Vec<wire::Candidate>,
) -> Result<(), ()> {
    control
        .send(&RelayMessage::Error(ErrorMessage {
            code,
            message: message.to_owned(),
        }))
        .await
        .map_err(|_| ())?;
    if !candidates.is_empty() {
        control
            .send(&RelayMessage::Candidates(candidates))
            .await
            .map_err(|_| ())?;
    }
    control.finish_and_flush(Duration::from_secs(2)).await;
    Ok(())
}

/// Byte counts and how a spliced stream ended.
struct SpliceOutcome {
    up: u64,
    down: u64,
    error: Option<String>,
}

/// Copies both directions until both have finished, propagating FIN; a reset or a stall ends both.
async fn splice(
    shared: &Shared,
    client: (SendStream, RecvStream, Vec<u8>),
    agent: (SendStream, RecvStream),
) -> SpliceOutcome {
    let (client_send, client_recv, leftover) = client;
    let (agent_send, agent_recv) = agent;
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let tap = shared.tap.as_ref();
    let upstream = copy(client_recv, agent_send, leftover, &up, tap);
    let downstream = copy(agent_recv, client_send, Vec::new(), &down, tap);
    let (a, b) = tokio::join!(upstream, downstream);
    SpliceOutcome {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        error: a.err().or(b.err()),
    }
}

/// One direction. Backpressure is QUIC's: a slow reader stops granting flow-control credit, our write waits,
/// we stop reading, and the writer's credit runs out; the buffer here never grows.
async fn copy(
    mut from: RecvStream,
    mut to: SendStream,
    first: Vec<u8>,
    counter: &AtomicU64,
    tap: Option<&super::Tap>,
) -> Result<(), String> {
    if !first.is_empty() {
        write(&mut to, &first, counter, tap).await?;
    }
    let mut buf = vec![0u8; SPLICE_BUFFER];
    loop {
        let read = tokio::time::timeout(STALL_TIMEOUT, from.read(&mut buf)).await;
        match read {
            Err(_) => {
                let _ = to.reset(0u32.into());
                let _ = from.stop(0u32.into());
                return Err("stalled".to_owned());
            }
            Ok(Ok(Some(n))) => {
                write(&mut to, buf.get(..n).unwrap_or_default(), counter, tap).await?
            }
            Ok(Ok(None)) => {
                let _ = to.finish();
                return Ok(());
            }
            Ok(Err(err)) => {
                // Propagate the reset so the other end sees a cut stream, never a clean end.
                let _ = to.reset(0u32.into());
                return Err(format!("reset: {err}"));
            }
        }
    }
}

async fn write(
    to: &mut SendStream,
    bytes: &[u8],
    counter: &AtomicU64,
    tap: Option<&super::Tap>,
) -> Result<(), String> {
    if let Some(tap) = tap {
        (tap.0)(bytes);
    }
    match tokio::time::timeout(STALL_TIMEOUT, to.write_all(bytes)).await {
        Ok(Ok(())) => {
            counter.fetch_add(
                u64::try_from(bytes.len()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            Ok(())
        }
        Ok(Err(err)) => Err(format!("write failed: {err}")),
        Err(_) => Err("stalled".to_owned()),
    }
}
