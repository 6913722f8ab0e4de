//! Drives one logged-in connection's [`RelaySession`]: its control stream, the presence of its machine (for an
//! agent), the streams it routes (for a client), and the standing of its credential.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cmdop_client::control::ControlStream;
use cmdop_fleet::MachineId;
use cmdop_proto::login::LoggedIn;
use cmdop_proto::presence::{RelaySession, SessionAction, SessionInput};
use cmdop_proto::wire::{CloseCode, PeerMessage};
use tokio::sync::mpsc;

use super::{LiveConnection, Shared, close_with, now, peer_gone, refuse_stream, routing};

/// Serves a logged-in peer until its session ends, then forgets it (and, for the newest connection of a
/// machine, marks the machine offline).
pub(super) async fn serve(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    mut stream: ControlStream,
    logged_in: LoggedIn,
    remote: SocketAddr,
) {
    let (standing, standing_rx) = mpsc::unbounded_channel();
    let credential = match &logged_in {
        LoggedIn::Agent(agent) => agent.authenticated.credential_id(),
        LoggedIn::Client(client) => client.authenticated.credential_id(),
    };
    let lock_fleet = match &logged_in {
        LoggedIn::Agent(agent) if agent.fleet_lock => Some(agent.access.fleet_id()),
        _ => None,
    };
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    shared.sessions().insert(
        id,
        LiveConnection {
            credential,
            connection: connection.clone(),
            standing: standing.clone(),
            lock_fleet,
        },
    );
    if let Some(fleet) = lock_fleet {
        // The agent learns its fleet's lock (or that there is none) before it serves any stream.
        match shared.fleet_lock_message(fleet) {
            Ok(message) => {
                let _ = standing.send(SessionInput::Push(message));
            }
            Err(err) => tracing::error!(%err, "cannot read the fleet lock for a new agent"),
        }
    }
    if let LoggedIn::Client(client) = &logged_in {
        record_client_key(&shared, client);
    }
    let session = RelaySession::new(
        logged_in.clone(),
        remote.to_string(),
        shared.heartbeat_interval,
        now(),
    );
    match logged_in {
        LoggedIn::Agent(agent) => {
            let machine = agent.machine.id;
            let _connected = shared
                .metrics
                .agent_connected(agent.access.fleet().name.as_str(), machine);
            went_online(&shared, id, machine);
            run(&shared, &connection, &mut stream, session, standing_rx).await;
            went_offline(&shared, id, machine);
        }
        LoggedIn::Client(client) => {
            let _connected = shared.metrics.client_connected(client.fleet_names());
            // Routed streams arrive as further bidirectional streams beside the control stream.
            let routes = tokio::spawn(routing::accept_routes(
                shared.clone(),
                connection.clone(),
                client,
            ));
            run(&shared, &connection, &mut stream, session, standing_rx).await;
            routes.abort();
        }
    }
    shared.sessions().remove(&id);
}

/// Remembers the client's key for each fleet it reaches, so a fleet admin can find it by fingerprint
/// (`cmdop fleet lock add-member FP`).
fn record_client_key(shared: &Shared, client: &cmdop_proto::login::ClientSession) {
    let at = now().unix;
    let store = shared.lock_store();
    for fleet in client.authenticated.fleet_ids() {
        if let Err(err) =
            store.record_client_key(fleet, &client.client_key, &client.description, at)
        {
            tracing::warn!(%err, "cannot record a client key");
        }
    }
}

/// Marks `machine` online with this connection as the one deciding its presence; an older connection of
/// the same machine is closed.
fn went_online(shared: &Shared, id: u64, machine: MachineId) {
    let previous = shared.online().insert(machine, id);
    if let Some(previous) = previous
        && let Some(old) = shared.sessions().get(&previous)
    {
        old.connection.close(
            CloseCode::REPLACED.0.into(),
            b"the same machine connected again",
        );
    }
    if let Err(err) = shared.lock_store().set_presence(machine, true, now().unix) {
        tracing::error!(%err, "cannot record presence");
    }
    tracing::info!(%machine, "agent online");
}

/// Marks `machine` offline, if this connection is still the one deciding its presence.
fn went_offline(shared: &Shared, id: u64, machine: MachineId) {
    let current = {
        let mut online = shared.online();
        if online.get(&machine) == Some(&id) {
            online.remove(&machine);
            true
        } else {
            false
        }
    };
    if current {
        if let Err(err) = shared.lock_store().set_presence(machine, false, now().unix) {
            tracing::error!(%err, "cannot record presence");
        }
        tracing::info!(%machine, "agent offline");
    }
}

/// The session's loop: messages, standing checks and timers in, actions out, until it closes.
async fn run(
    shared: &Shared,
    connection: &quinn::Connection,
    stream: &mut ControlStream,
    mut session: RelaySession,
    mut standing: mpsc::UnboundedReceiver<SessionInput>,
) {
    loop {
        if run_actions(shared, connection, stream, &mut session).await {
            return;
        }
        let timer = session.poll_timeout().map(tokio::time::Instant::from_std);
        let sleep = async {
            match timer {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = stream.recv::<PeerMessage>() => match received {
                Ok(Some(message)) => {
                    let peer = session.peer().clone();
                    match super::lock::handle(shared, &peer, stream, message).await {
                        Ok(Some(message)) => session.handle(SessionInput::Message(message), now()),
                        Ok(None) => {}
                        Err(()) => return connection.close(CloseCode::NORMAL.0.into(), b"bye"),
                    }
                }
                Ok(None) => return connection.close(CloseCode::NORMAL.0.into(), b"bye"),
                Err(err) if peer_gone(&err) => return connection.close(CloseCode::NORMAL.0.into(), b"bye"),
                Err(err) => return refuse_stream(connection, stream, &err).await,
            },
            Some(input) = standing.recv() => session.handle(input, now()),
            () = sleep => session.handle_timeout(now()),
        }
    }
}

/// Carries out what the session asks; `true` once it has closed the connection.
async fn run_actions(
    shared: &Shared,
    connection: &quinn::Connection,
    stream: &mut ControlStream,
    session: &mut RelaySession,
) -> bool {
    while let Some(action) = session.poll_action() {
        match action {
            SessionAction::Send(mut message) => {
                if let Some(meddler) = &shared.meddler {
                    meddler.control(super::PeerKind::of(session.peer()), &mut message);
                }
                if stream.send(&message).await.is_err() {
                    connection.close(CloseCode::NORMAL.0.into(), b"bye");
                    return true;
                }
            }
            SessionAction::Presence { machine, at } => {
                if let Err(err) = shared.lock_store().set_presence(machine, true, at) {
                    tracing::error!(%err, "cannot record presence");
                }
            }
            SessionAction::LookUpMachines(access) => {
                let machines = shared.lock_store().machines_of(access.fleet_id());
                let input = match machines {
                    Ok(machines) => SessionInput::Machines(machines),
                    Err(err) => {
                        tracing::error!(%err, "store failure while listing machines");
                        SessionInput::StoreFailed
                    }
                };
                session.handle(input, now());
            }
            SessionAction::Audit(event) => shared.audit(&event),
            SessionAction::Close { code, reason } => {
                // Only a protocol error follows an error message that must reach the peer first; a goodbye,
                // a silent agent or a revoked credential is closed at once.
                let flush = (code == CloseCode::PROTOCOL_ERROR).then_some(&mut *stream);
                close_with(connection, flush, code, &reason).await;
                return true;
            }
            other => {
                tracing::error!(?other, "unknown session action; closing the connection");
                connection.close(CloseCode::PROTOCOL_ERROR.0.into(), b"relay internal error");
                return true;
            }
        }
    }
    false
}
