//! Opening end-to-end streams to one machine for commands that open many (`forward`, `cp`): one relay login,
//! the machine's key checked against the pin store on every stream, and the name resolved once, so later
//! streams go to the same machine by id.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use cmdop_client::secure_stream::{SecureReceiver, SecureSender};
use cmdop_client::{ClientConnection, Machine};
use cmdop_proto::e2e::StreamKind;

use crate::GlobalArgs;
use crate::channel::{self, Channel};
use crate::exit::Failure;
use crate::profile::{Profile, Session};
use cmdop_client::known_machines::KnownMachines;

/// A logged-in connection to the relay, aimed at one machine.
pub(crate) struct Reach {
    client: ClientConnection,
    session: Session,
    known: KnownMachines,
    workspace: Option<String>,
    /// What the person typed, until the first stream resolved it; then the machine's id.
    machine: Mutex<String>,
}

impl Reach {
    /// Logs in to the relay of the saved (or flagged) session.
    pub(crate) async fn login(
        global: &GlobalArgs,
        workspace: Option<&str>,
        machine: &str,
    ) -> Result<Arc<Self>, Failure> {
        let profile = Profile::open(global)?;
        let session = profile.session(global)?;
        let known = KnownMachines::in_dir(profile.dir());
        let client =
            ClientConnection::login(&session.relay, &session.identity, &session.credential).await?;
        Ok(Arc::new(Self {
            client,
            session,
            known,
            workspace: workspace.map(str::to_owned),
            machine: Mutex::new(machine.to_owned()),
        }))
    }

    /// Opens one end-to-end stream of `kind` to the machine.
    pub(crate) async fn open(
        &self,
        kind: StreamKind,
    ) -> Result<(SecureSender, SecureReceiver, Machine), Failure> {
        let name = self
            .machine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Channel {
            machine,
            sender,
            receiver,
        } = channel::open(
            &self.client,
            &self.session.identity,
            &self.known,
            self.workspace.as_deref(),
            &name,
            kind,
        )
        .await?;
        // Later streams go to this machine by id, whatever the name also matches by then.
        *self.machine.lock().unwrap_or_else(PoisonError::into_inner) = machine.id.to_string();
        Ok((sender, receiver, machine))
    }

    /// Resolves when the relay connection is gone.
    pub(crate) async fn closed(&self) -> Failure {
        Failure::from(self.client.closed().await)
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

impl Reach {
    /// Says goodbye to the relay; streams still in use elsewhere end with the connection.
    pub(crate) async fn close(self: Arc<Self>) {
        match Arc::try_unwrap(self) {
            Ok(reach) => reach.client.close().await,
            Err(shared) => shared.client.close_now().await,
        }
    }
}
