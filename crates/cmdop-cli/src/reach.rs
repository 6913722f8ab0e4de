//! Opening end-to-end channels to one machine for commands that open many (`forward`, `cp`): one relay login
//! from the saved (or flagged) session, shared by every stream ([`MachineConnection`] in cmdop-client).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cmdop_client::{Channel, ClientConnection, MachineConnection};
use cmdop_proto::e2e::StreamKind;

use crate::channel::{announce_first_contact, known_machines};
use crate::exit::Failure;
use crate::global_args::GlobalArgs;
use crate::profile::{Profile, Session};

/// Logs in to the relay of the saved (or flagged) session, aimed at `machine`; the connection can log in again
/// after a loss ([`MachineConnection::reconnect`]).
pub(crate) async fn login(
    global: &GlobalArgs,
    workspace: Option<&str>,
    machine: &str,
) -> Result<Arc<MachineConnection>, Failure> {
    let profile = Profile::open(global)?;
    let Session {
        relay,
        credential,
        identity,
    } = profile.session(global)?;
    let known = known_machines(&profile, global);
    let client = ClientConnection::login(&relay, &identity, &credential).await?;
    Ok(MachineConnection::reconnecting(
        client,
        relay,
        credential,
        identity,
        known,
        workspace.map(str::to_owned),
        machine,
    ))
}

/// Opens one end-to-end channel of `kind` to the machine.
pub(crate) async fn open(reach: &MachineConnection, kind: StreamKind) -> Result<Channel, Failure> {
    let channel = reach.open(kind).await?;
    announce_first_contact(&channel, reach.known_machines());
    Ok(channel)
}

/// [`open`], waiting up to `wait` while the connection is being re-established or the machine is offline.
pub(crate) async fn open_waiting(
    reach: &MachineConnection,
    kind: StreamKind,
    wait: Duration,
) -> Result<Channel, Failure> {
    let channel = reach.open_waiting(kind, wait).await?;
    announce_first_contact(&channel, reach.known_machines());
    Ok(channel)
}

/// A failure on a stream, explained by the connection's own end when that is what caused it: a revoked
/// credential closes the connection, and the stream only sees that it broke.
pub(crate) async fn explain(reach: &MachineConnection, failure: Failure) -> Failure {
    if !failure.is_retryable() {
        return failure;
    }
    match tokio::time::timeout(Duration::from_millis(200), reach.closed()).await {
        Ok(reason) => Failure::from(reason),
        Err(_) => failure,
    }
}

/// A runtime with two workers: QUIC's packet crypto and the end-to-end channel's can then run side by side.
pub(crate) fn bulk_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
