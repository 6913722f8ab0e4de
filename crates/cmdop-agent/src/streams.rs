//! Streams the relay routes to this agent: authenticate the client end to end, check its capability against
//! the fleet trust key this agent pinned and, in a locked fleet, its member certificate against the fleet's
//! lock, then serve the operation.
//!
//! The relay's word is not enough: a stream is served only if the client proves its key inside the
//! end-to-end channel and presents a capability for that key, this fleet, this machine, this stream and this
//! operation, signed by the fleet's trust key; in a locked fleet also a member certificate for that key from
//! a fleet admin, whose role allows the operation. Both are checked on every stream, before a byte of the
//! request is read, so revocation and expiry bite at once.
//!
//! Before that, a stream costs little and not for long: its handshake must finish within
//! [`secure_stream::HANDSHAKE_DEADLINE`], one client may have only a few handshakes pending, and a stream takes
//! one of the machine's slots, and one of its client's share, only once the client is authenticated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cmdop_client::secure_stream::{self, SecureReceiver, SecureSender, SecureStreamError};
use cmdop_client::{IncomingStream, StreamAcceptor};
use cmdop_fleet::lock::{LockError, StreamCredentials};
use cmdop_fleet::{
    CapabilityError, Expected, FleetId, MachineId, Operation, SignedCapability, Timestamp,
};
use cmdop_identity::{Identity, PublicKey};
use cmdop_proto::e2e::{CloseReason, Prologue, StreamKind};
use cmdop_proto::ops::{AgentOp, ClientOp, ExitStatus, MAX_CHUNK};
use tokio::sync::{Semaphore, mpsc};

use crate::destination_policy::DestinationPolicy;
use crate::exec::{self, ExecInput, ExecOutcome, ExecOutput, ExecSpec};
use crate::fleet_lock::{FleetLockKeeper, Grant, LockRefusal};
use crate::forward::PendingConnections;
use crate::shell::{self, Sessions};
use crate::{copy, forward};

/// Limits on what clients may make this agent do at once.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Streams served at once, counted from the client's authentication on; more wait for a slot.
    pub max_concurrent: usize,
    /// Streams one client key may have served at once; more are refused inside the channel, so that one
    /// member cannot starve the others.
    pub max_per_client: usize,
    /// End-to-end handshakes one client (by the key the relay names) may have pending at once; more streams
    /// are reset at once. Together with the handshake deadline this bounds what a client that opens streams
    /// and never speaks can hold.
    pub max_pending_per_client: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_concurrent: 256,
            max_per_client: 128,
            // As many as one client may have served: a script running 50 commands at once with one
            // identity has 50 handshakes in flight, and a silent client still leaves half the streams.
            max_pending_per_client: 128,
        }
    }
}

/// What every stream handler needs to know.
#[derive(Debug)]
pub struct StreamContext {
    /// This agent's identity.
    pub identity: Arc<Identity>,
    /// The fleet this agent is enrolled in.
    pub fleet_id: FleetId,
    /// This machine's id, which capabilities must name.
    pub machine_id: MachineId,
    /// The fleet's lock as this agent holds it.
    pub lock: Arc<FleetLockKeeper>,
    /// The fleet trust key this agent pinned; capabilities must carry its signature.
    pub trust_key: PublicKey,
    /// This machine's interactive sessions; they outlive any one relay connection.
    pub sessions: Arc<Sessions>,
    /// Where forwards may connect.
    pub forward_policy: DestinationPolicy,
    /// Connections accepted by remote forwards, waiting for their client's stream.
    pub remote_pending: Arc<PendingConnections>,
}

/// Accepts and serves routed streams until the connection ends. Each stream's end-to-end handshake runs on
/// its own task within [`secure_stream::HANDSHAKE_DEADLINE`]; only then does it count against the limits of
/// authenticated streams ([`StreamLimits`]).
pub async fn serve(acceptor: StreamAcceptor, context: Arc<StreamContext>, limits: StreamLimits) {
    let admission = Arc::new(Admission {
        slots: Arc::new(Semaphore::new(limits.max_concurrent)),
        clients: Mutex::new(HashMap::new()),
        limits,
    });
    loop {
        let incoming = match acceptor.accept().await {
            Ok(incoming) => incoming,
            Err(err) => {
                tracing::debug!(error = %err, "no more streams on this connection");
                return;
            }
        };
        let Some(pending) = Tally::take(&admission, incoming.claimed_client_key(), Count::Pending)
        else {
            tracing::debug!(
                "a client has {} handshakes pending already; resetting its new stream",
                limits.max_pending_per_client
            );
            incoming.refuse();
            continue;
        };
        let context = Arc::clone(&context);
        let admission = Arc::clone(&admission);
        tokio::spawn(async move {
            let channel = hex_id(&incoming.channel_id());
            if let Err(err) = handle(incoming, &context, &admission, pending).await {
                tracing::info!(%channel, error = %err, "stream ended with an error");
            }
        });
    }
}

/// The stream slots of one relay connection, and what each client holds of them.
#[derive(Debug)]
struct Admission {
    /// Authenticated streams served at once.
    slots: Arc<Semaphore>,
    /// Per client key: (handshakes pending, streams served).
    clients: Mutex<HashMap<[u8; 32], (usize, usize)>>,
    limits: StreamLimits,
}

/// Which count of a client a [`Tally`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    Pending,
    Serving,
}

/// One pending handshake or one served stream of a client, given back when dropped.
#[derive(Debug)]
struct Tally {
    admission: Arc<Admission>,
    client: [u8; 32],
    count: Count,
}

impl Tally {
    /// Counts one more for `client`, unless it is at its limit.
    fn take(admission: &Arc<Admission>, client: [u8; 32], count: Count) -> Option<Self> {
        let mut clients = admission
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (pending, serving) = clients.entry(client).or_insert((0, 0));
        let (held, limit) = match count {
            Count::Pending => (pending, admission.limits.max_pending_per_client),
            Count::Serving => (serving, admission.limits.max_per_client),
        };
        if *held >= limit {
            return None;
        }
        *held += 1;
        Some(Self {
            admission: Arc::clone(admission),
            client,
            count,
        })
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let mut clients = self
            .admission
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((pending, serving)) = clients.get_mut(&self.client) {
            match self.count {
                Count::Pending => *pending = pending.saturating_sub(1),
                Count::Serving => *serving = serving.saturating_sub(1),
            }
            if (*pending, *serving) == (0, 0) {
                clients.remove(&self.client);
            }
        }
    }
}

async fn handle(
    incoming: IncomingStream,
    context: &StreamContext,
    admission: &Arc<Admission>,
    pending: Tally,
) -> Result<(), SecureStreamError> {
    let kind = incoming.kind();
    let prologue = Prologue {
        fleet_id: context.fleet_id.to_bytes(),
        agent_key: context.identity.public_key(),
        channel_id: incoming.channel_id(),
        kind,
    };
    let mut client_key = None;
    let mut grant = Grant::Full;
    let channel = incoming.channel_id();
    let (sender, receiver) = secure_stream::accept(
        incoming,
        prologue,
        &context.identity,
        |client, credentials| {
            client_key = Some(*client);
            grant = authorize(context, client, credentials, kind.operation(), channel)?;
            Ok::<(), Refusal>(())
        },
    )
    .await?;
    drop(pending);
    // Authenticated: from here the stream counts against its client's share and the machine's slots.
    let Some(client) = client_key else {
        return Ok(());
    };
    let Some(_serving) = Tally::take(admission, client.to_bytes(), Count::Serving) else {
        let message = format!(
            "this client already has {} streams served by this machine, the most one client may; close some and retry",
            admission.limits.max_per_client
        );
        sender.close(CloseReason::Denied, &message).await;
        return Ok(());
    };
    let Ok(_slot) = Arc::clone(&admission.slots).acquire_owned().await else {
        return Ok(());
    };
    match kind {
        StreamKind::Exec => serve_exec(sender, receiver).await,
        StreamKind::Shell => {
            shell::serve(
                sender,
                receiver,
                &context.sessions,
                client.to_string(),
                grant,
            )
            .await
        }
        StreamKind::Tunnel => {
            forward::serve(
                sender,
                receiver,
                &context.forward_policy,
                &context.remote_pending,
                client,
            )
            .await
        }
        StreamKind::Copy => copy::serve(sender, receiver).await,
        // StreamKind is non-exhaustive: a kind added to the protocol is authorized like any other (its
        // operation comes from `StreamKind::operation`), then refused here until the agent serves it.
        _ => {
            let message = format!("this agent does not serve {kind:?} streams yet");
            sender.close(CloseReason::Protocol, &message).await;
            Ok(())
        }
    }
}

/// Why a client was not accepted; the message travels to the client in the refusal.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// The bytes the client sent are not stream credentials.
    #[error("no valid credentials: {0}")]
    Credentials(LockError),
    /// The bytes the client sent are not a signed capability.
    #[error("no valid capability: {0}")]
    Unreadable(CapabilityError),
    /// A well-formed capability that does not grant this client this operation on this machine and stream
    /// now.
    #[error("capability refused: {0}")]
    NotGranted(CapabilityError),
    /// The fleet is locked and the client's member certificate does not allow this.
    #[error(transparent)]
    Lock(#[from] LockRefusal),
}

/// The checks of a stream, in order: the credentials decode; the capability is signed by the pinned fleet
/// trust key for this client key, fleet, machine, channel and operation, and valid now; in a locked fleet,
/// the member certificate verifies against the held lock and its role allows the operation.
fn authorize(
    context: &StreamContext,
    client: &PublicKey,
    credentials: &[u8],
    operation: Operation,
    channel: [u8; 16],
) -> Result<Grant, Refusal> {
    let credentials = StreamCredentials::from_bytes(credentials).map_err(Refusal::Credentials)?;
    let signed =
        SignedCapability::from_bytes(&credentials.capability).map_err(Refusal::Unreadable)?;
    let now = now();
    signed
        .verify(
            &context.trust_key,
            &Expected {
                client_key: *client,
                fleet: context.fleet_id,
                machine: context.machine_id,
                channel,
                operation,
                now,
            },
        )
        .map_err(Refusal::NotGranted)?;
    Ok(context.lock.authorize(
        client,
        credentials.member_certificate.as_deref(),
        operation,
        now,
    )?)
}

async fn serve_exec(
    mut sender: SecureSender,
    mut receiver: SecureReceiver,
) -> Result<(), SecureStreamError> {
    let Some(ClientOp::Exec(request)) = receiver.recv::<ClientOp>().await? else {
        sender
            .close(CloseReason::Protocol, "expected an exec request first")
            .await;
        return Ok(());
    };
    let (input_tx, input_rx) = mpsc::channel(16);
    let (output_tx, mut output_rx) = mpsc::channel(16);
    if !request.stdin {
        let _ = input_tx.send(ExecInput::StdinEof).await;
    }
    let spec = ExecSpec {
        argv: request.argv,
        timeout: request.timeout_ms.map(Duration::from_millis),
    };
    let run = tokio::spawn(exec::run(spec, input_rx, output_tx));

    // Client input, forwarded until the client ends its side; it is cancel-safe to stop reading any time.
    let forward_input = async move {
        while let Ok(Some(op)) = receiver.recv::<ClientOp>().await {
            let input = match op {
                ClientOp::Stdin(bytes) => ExecInput::Stdin(bytes),
                ClientOp::StdinEof => ExecInput::StdinEof,
                ClientOp::Signal(number) => ExecInput::Signal(number),
                ClientOp::Exec(_) => continue,
            };
            if input_tx.send(input).await.is_err() {
                break;
            }
        }
        // Keep the receiver alive so the stream is not reset while output still flows.
        receiver
    };
    let input_task = tokio::spawn(forward_input);

    while let Some(output) = output_rx.recv().await {
        let op = match output {
            ExecOutput::Stdout(bytes) => AgentOp::Stdout(bytes),
            ExecOutput::Stderr(bytes) => AgentOp::Stderr(bytes),
        };
        debug_assert!(
            matches!(&op, AgentOp::Stdout(b) | AgentOp::Stderr(b) if b.len() <= MAX_CHUNK)
        );
        // A failed send means the client went away: dropping output_rx makes exec kill the process group.
        if sender.send(&op).await.is_err() {
            break;
        }
    }
    drop(output_rx);
    let result = run.await;
    input_task.abort();
    let last = match result {
        Ok(Ok(outcome)) => AgentOp::Exited(match outcome {
            ExecOutcome::Exited(code) => ExitStatus::Code(code),
            ExecOutcome::Signaled(signal) => ExitStatus::Signal(signal),
            ExecOutcome::TimedOut => ExitStatus::TimedOut,
        }),
        Ok(Err(err)) => AgentOp::Failed {
            message: err.to_string(),
        },
        Err(_) => AgentOp::Failed {
            message: "the agent lost track of the command".to_owned(),
        },
    };
    sender.send(&last).await?;
    sender.end(0).await
}

fn now() -> Timestamp {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Timestamp::from_unix_seconds(seconds)
}

fn hex_id(bytes: &[u8; 16]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_gets_its_share_and_gives_it_back() {
        let admission = Arc::new(Admission {
            slots: Arc::new(Semaphore::new(8)),
            clients: Mutex::new(HashMap::new()),
            limits: StreamLimits {
                max_concurrent: 8,
                max_per_client: 3,
                max_pending_per_client: 2,
            },
        });
        let (alice, bob) = ([1u8; 32], [2u8; 32]);
        let pending: Vec<Tally> = (0..2)
            .map(|_| Tally::take(&admission, alice, Count::Pending).unwrap())
            .collect();
        assert!(Tally::take(&admission, alice, Count::Pending).is_none());
        assert!(Tally::take(&admission, bob, Count::Pending).is_some());
        let serving: Vec<Tally> = (0..3)
            .map(|_| Tally::take(&admission, alice, Count::Serving).unwrap())
            .collect();
        assert!(Tally::take(&admission, alice, Count::Serving).is_none());
        drop(pending);
        assert!(Tally::take(&admission, alice, Count::Pending).is_some());
        drop(serving);
        assert!(Tally::take(&admission, alice, Count::Serving).is_some());
        // Nothing is left behind once a client holds nothing.
        assert!(admission.clients.lock().unwrap().is_empty());
    }

    #[test]
    fn refusals_name_what_was_refused() {
        let cause = || CapabilityError::Malformed;
        assert_eq!(
            Refusal::Unreadable(cause()).to_string(),
            format!("no valid capability: {}", cause())
        );
        assert_eq!(
            Refusal::NotGranted(cause()).to_string(),
            format!("capability refused: {}", cause())
        );
    }
}
