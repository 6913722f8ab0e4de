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

use bytes::Bytes;
use cmdop_client::control::ControlStream;
use cmdop_fleet::FleetId;
use cmdop_proto::display;
use cmdop_proto::login::{AuditEvent, ClientSession, actor};
use cmdop_proto::routing::{
    LockMaterial, Route, RouteContext, RouteRefusal, drain_waits_for, offline, resolve_route, scope,
};
use cmdop_proto::wire::{ErrorCode, ErrorMessage, OpenStream, PeerMessage, RelayMessage};
use quinn::{RecvStream, SendStream};
use rand_core::{OsRng, RngCore};

use super::{MeddledRoute, Shared, now};

/// How long a client has to send its [`OpenStream`] header on a new stream.
const HEADER_DEADLINE: Duration = Duration::from_secs(10);

/// Largest chunk taken from one side of a spliced stream at a time.
const SPLICE_BUFFER: usize = 64 * 1024;

/// A spliced stream with no progress in either direction for this long is dropped, so a stalled peer cannot
/// hold a stream (and its flow-control credit) forever. Interactive sessions stay alive through their own
/// keepalive traffic.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Accepts the streams a logged-in client opens after its control stream, and routes each on its own task.
pub(super) async fn accept_routes(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    client: Box<ClientSession>,
) {
    let client = Arc::new(*client);
    while let Ok((send, recv)) = connection.accept_bi().await {
        let shared = Arc::clone(&shared);
        let client = Arc::clone(&client);
        tokio::spawn(async move { route(&shared, send, recv, &client).await });
    }
}

async fn route(shared: &Shared, send: SendStream, recv: RecvStream, client: &ClientSession) {
    let mut control = ControlStream::new(send, recv);
    let (request, with_lock) =
        match tokio::time::timeout(HEADER_DEADLINE, control.recv::<PeerMessage>()).await {
            Ok(Ok(Some(PeerMessage::OpenStream(request)))) => (request, false),
            Ok(Ok(Some(PeerMessage::OpenRoute(request)))) => (request, true),
            _ => {
                let refusal = RouteRefusal::new(
                    ErrorCode::UNEXPECTED_MESSAGE,
                    "expected OpenStream or OpenRoute as the first message of a stream",
                );
                let _ = refuse(shared, &mut control, refusal).await;
                return;
            }
        };
    let prepared = prepare(shared, client, &request).and_then(|(route, agent)| {
        let answer = if with_lock {
            RelayMessage::RouteReady(Box::new(route.ready.clone()))
        } else {
            RelayMessage::StreamReady(route.stream_ready()?)
        };
        Ok((route, agent, answer))
    });
    let (route, agent, answer) = match prepared {
        Ok(prepared) => prepared,
        Err(refusal) => {
            let actor = actor(&client.authenticated);
            shared.audit(
                &actor.clone(),
                AuditEvent {
                    fleet: None,
                    actor,
                    action: "session",
                    outcome: "refused",
                    detail: format!(
                        "open {:?} kind {}: {}",
                        display::for_terminal(&request.machine, display::AUDIT_FIELD_CHARS),
                        request.kind,
                        refusal.message
                    ),
                },
            );
            let _ = refuse(shared, &mut control, refusal).await;
            return;
        }
    };
    let (agent_send, agent_recv) = match open_to_agent(&route, &agent).await {
        Ok(streams) => streams,
        Err(reason) => {
            let message = format!(
                "machine {} could not be reached: {reason}; try again",
                route.machine.hostname
            );
            let refusal = RouteRefusal::new(ErrorCode::MACHINE_OFFLINE, message);
            let _ = refuse(shared, &mut control, refusal).await;
            return;
        }
    };
    if control.send(&answer).await.is_err() {
        return;
    }
    let (client_send, client_recv, leftover) = control.into_parts();
    let started = now().unix;
    let channel = hex::encode(route.header.channel_id);
    tracing::info!(%channel, machine = %route.machine.id, kind = ?route.kind, "stream routed");
    let active = shared
        .metrics
        .stream_opened(&format!("{:?}", route.kind).to_lowercase());
    let finishing = drain_waits_for(route.kind).then(|| Finishing::count(shared));
    let outcome = splice(
        shared,
        (client_send, client_recv, leftover),
        (agent_send, agent_recv),
    )
    .await;
    shared.metrics.relayed(outcome.up, outcome.down);
    drop(active);
    drop(finishing);
    audit_spliced(shared, client, &route, started, &channel, &outcome);
}

/// A routed stream a stopping relay waits for, counted while it runs.
struct Finishing<'a>(&'a Shared);

impl<'a> Finishing<'a> {
    fn count(shared: &'a Shared) -> Self {
        shared.finishing.fetch_add(1, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for Finishing<'_> {
    fn drop(&mut self) {
        self.0.finishing.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The audit entry of a stream that was spliced: who reached which machine, how much moved, how it ended.
fn audit_spliced(
    shared: &Shared,
    client: &ClientSession,
    route: &Route,
    started: cmdop_fleet::Timestamp,
    channel: &str,
    outcome: &SpliceOutcome,
) {
    let actor = actor(&client.authenticated);
    shared.audit(&actor.clone(), AuditEvent {
        fleet: Some(route.machine.fleet),
        actor,
        action: "session",
        outcome: if outcome.error.is_none() { "closed" } else { "cut" },
        detail: format!(
            "{kind:?} to machine {id} ({host}) channel {channel}: {up} bytes up, {down} bytes down, {secs} s, {end}",
            kind = route.kind,
            id = route.machine.id,
            host = route.machine.hostname,
            up = outcome.up,
            down = outcome.down,
            secs = now().unix.seconds_since(started),
            end = outcome
                .error
                .as_ref()
                .map_or_else(|| "ended normally".to_owned(), ToString::to_string),
        ),
    });
}

/// Scope, resolution, presence and the capability (cmdop-proto's routing decisions, with the store's
/// machines, trust key and lock material), all before a byte reaches the agent. A test's [`super::Meddler`]
/// may then change the answer and the agent, as a compromised relay could.
fn prepare(
    shared: &Shared,
    client: &ClientSession,
    request: &OpenStream,
) -> Result<(Route, quinn::Connection), RouteRefusal> {
    let scoped = scope(client, request)?;
    let fleet = scoped.access.fleet_id();
    let internal = |err: crate::store::StoreError| {
        tracing::error!(%err, "store failure while routing a stream");
        RouteRefusal::new(ErrorCode::INTERNAL, "the relay's store failed; try again")
    };
    let (mut machines, trust_key, lock) = {
        let store = shared.lock_store();
        let machines = store.machines_of(fleet).map_err(internal)?;
        let trust_key = store.fleet_trust_key(fleet).map_err(internal)?;
        let lock = lock_material(&store, fleet, client).map_err(internal)?;
        (machines, trust_key, lock)
    };
    super::presence::apply(&shared.presence(), &mut machines);
    let mut channel_id = [0u8; 16];
    OsRng.fill_bytes(&mut channel_id);
    let mut route = resolve_route(
        &scoped,
        request,
        &machines,
        &RouteContext {
            client_key: client.client_key,
            trust_key: &trust_key,
            channel_id,
            now: now().unix,
            lock: &lock,
        },
    )?;
    let mut target = route.machine.id;
    if let Some(meddler) = &shared.meddler {
        let mut meddled = MeddledRoute {
            ready: route.ready.clone(),
            header: route.header.clone(),
            agent: target,
        };
        meddler.route(&mut meddled);
        route.ready = meddled.ready;
        route.header = meddled.header;
        target = meddled.agent;
    }
    let current = shared.presence().connection(target);
    let agent = current
        .and_then(|session| {
            shared
                .sessions()
                .get(&session)
                .map(|s| s.connection.clone())
        })
        .ok_or_else(|| offline(&route.machine))?;
    Ok((route, agent))
}

/// The fleet's lock as routing needs it: nothing for a fleet that was never locked; else the chain, the
/// list, the machine certificates and the client's own member certificate.
fn lock_material(
    store: &crate::store::Store,
    fleet: FleetId,
    client: &ClientSession,
) -> Result<LockMaterial, crate::store::StoreError> {
    let stored = store.stored_lock(fleet)?;
    if stored.authority.is_empty() {
        return Ok(LockMaterial::default());
    }
    Ok(LockMaterial {
        authority: stored.authority,
        revocations: stored.revocations,
        machine_certificates: store.machine_certificates(fleet)?,
        member_certificate: store.member_certificate(fleet, &client.client_key)?,
    })
}

/// Why the relay could not open a stream to an online agent.
#[derive(Debug, thiserror::Error)]
enum AgentUnreachable {
    /// The agent's connection is gone.
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    /// The header could not be written.
    #[error(transparent)]
    Header(#[from] cmdop_client::control::StreamError),
}

async fn open_to_agent(
    route: &Route,
    agent: &quinn::Connection,
) -> Result<(SendStream, RecvStream), AgentUnreachable> {
    let (send, recv) = agent.open_bi().await?;
    let mut control = ControlStream::new(send, recv);
    control
        .send(&RelayMessage::IncomingStream(route.header.clone()))
        .await?;
    let (send, recv, _) = control.into_parts();
    Ok((send, recv))
}

/// Sends the refusal (its candidates right after the error, for an ambiguous name) and finishes the stream.
/// Older clients stop reading at the error; newer ones read the candidates as data.
async fn refuse(
    shared: &Shared,
    control: &mut ControlStream,
    refusal: RouteRefusal,
) -> Result<(), ()> {
    let mut error = RelayMessage::Error(ErrorMessage {
        code: refusal.code,
        message: refusal.message,
    });
    if let Some(meddler) = &shared.meddler {
        meddler.control(super::PeerKind::Client, &mut error);
    }
    control.send(&error).await.map_err(|_| ())?;
    if !refusal.candidates.is_empty() {
        control
            .send(&RelayMessage::Candidates(refusal.candidates))
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
    error: Option<SpliceError>,
}

/// How one direction of a splice ended early (for the audit log).
#[derive(Debug, thiserror::Error)]
enum SpliceError {
    /// No progress for [`STALL_TIMEOUT`].
    #[error("stalled")]
    Stalled,
    /// The sending side reset its stream.
    #[error("reset: {0}")]
    Reset(quinn::ReadError),
    /// The receiving side is gone.
    #[error("write failed: {0}")]
    Write(quinn::WriteError),
    /// The receiving side refused the stream before the sending side sent anything more.
    #[error("stopped by the receiving side")]
    Stopped,
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
/// we stop reading, and the writer's credit runs out. Each chunk read (at most [`SPLICE_BUFFER`] bytes) is the
/// received packet's own buffer, handed to the other stream as it is: nothing is copied here.
async fn copy(
    mut from: RecvStream,
    mut to: SendStream,
    first: Vec<u8>,
    counter: &AtomicU64,
    tap: Option<&super::Tap>,
) -> Result<(), SpliceError> {
    if !first.is_empty() {
        write(&mut to, Bytes::from(first), counter, tap).await?;
    }
    loop {
        let read = tokio::select! {
            read = tokio::time::timeout(STALL_TIMEOUT, from.read_chunk(SPLICE_BUFFER, true)) => read,
            // The receiver refused the stream (STOP_SENDING) while the sender is silent: answer with a reset,
            // as QUIC asks, so the receiver's stream (and its flow-control credit) is freed now, and stop the
            // sender too. Without this a silent sender held the receiver's stream until the stall timeout.
            _ = to.stopped() => {
                let _ = to.reset(0u32.into());
                let _ = from.stop(0u32.into());
                return Err(SpliceError::Stopped);
            }
        };
        match read {
            Err(_) => {
                let _ = to.reset(0u32.into());
                let _ = from.stop(0u32.into());
                return Err(SpliceError::Stalled);
            }
            Ok(Ok(Some(chunk))) => write(&mut to, chunk.bytes, counter, tap).await?,
            Ok(Ok(None)) => {
                let _ = to.finish();
                return Ok(());
            }
            Ok(Err(err)) => {
                // Propagate the reset so the other end sees a cut stream, never a clean end.
                let _ = to.reset(0u32.into());
                return Err(SpliceError::Reset(err));
            }
        }
    }
}

async fn write(
    to: &mut SendStream,
    bytes: Bytes,
    counter: &AtomicU64,
    tap: Option<&super::Tap>,
) -> Result<(), SpliceError> {
    if let Some(tap) = tap {
        (tap.0)(&bytes);
    }
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    match tokio::time::timeout(STALL_TIMEOUT, to.write_chunk(bytes)).await {
        Ok(Ok(())) => {
            counter.fetch_add(len, Ordering::Relaxed);
            Ok(())
        }
        Ok(Err(err)) => Err(SpliceError::Write(err)),
        Err(_) => Err(SpliceError::Stalled),
    }
}
