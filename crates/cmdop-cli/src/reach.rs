//! Opening end-to-end channels to one machine for commands that open many (`forward`, `cp`): one relay login
//! from the saved (or flagged) session, shared by every stream ([`MachineConnection`] in cmdop-client).

use std::sync::Arc;

use anyhow::Context as _;
use cmdop_client::{Channel, ClientConnection, MachineConnection};
use cmdop_proto::e2e::StreamKind;

use crate::channel::{announce_first_contact, known_machines};
use crate::exit::Failure;
use crate::global_args::GlobalArgs;
use crate::profile::{Profile, Session};

/// Logs in to the relay of the saved (or flagged) session, aimed at `machine`.
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
    Ok(MachineConnection::new(
        client,
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

/// A runtime with two workers: QUIC's packet crypto and the end-to-end channel's can then run side by side.
pub(crate) fn bulk_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
