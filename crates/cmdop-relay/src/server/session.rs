//! Drives one logged-in connection's [`RelaySession`]: its control stream, the presence of its machine (for an
//! agent), the streams it routes (for a client), and the standing of its credential.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cmdop_client::control::ControlStream;
use cmdop_fleet::{FleetId, MachineId};
use cmdop_proto::login::LoggedIn;
use cmdop_proto::presence::{RelaySession, SessionAction, SessionInput};
use cmdop_proto::wire::{CloseCode, GoAway, PeerMessage, RelayMessage};
use tokio::sync::watch;

use super::{
    LiveConnection, LockPush, Shared, Standing, close_with, now, peer_gone, presence,
    refuse_stream, routing,
};

/// Serves a logged-in peer until its session ends, then forgets it (and, for the newest connection of a
/// machine, marks the machine offline).
pub(super) async fn serve(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    mut stream: ControlStream,
    logged_in: LoggedIn,
    remote: SocketAddr,
) {
    let (id, inputs, lock_fleet) = enter(&shared, &logged_in, &connection);
    // The session owns the peer; what the driver needs besides is read back from it, not kept in a second copy
    // for every one of thousands of idle agents.
    if let LoggedIn::Client(client) = &logged_in {
        record_client_key(&shared, client);
    }
    let mut session = RelaySession::new(
        logged_in,
        remote.to_string(),
        shared.heartbeat_interval,
        now(),
    );
    if let Some(fleet) = lock_fleet {
        // The agent learns its fleet's lock (or that there is none) before it serves any stream.
        match shared.fleet_lock_message(fleet) {
            Ok(message) => session.handle(SessionInput::Push(message), now()),
            Err(err) => tracing::error!(%err, "cannot read the fleet lock for a new agent"),
        }
    }
    match session.peer() {
        LoggedIn::Agent(agent) => {
            let machine = agent.machine.id;
            let _connected = shared
                .metrics
                .agent_connected(agent.access.fleet().name.as_str(), machine);
            went_online(&shared, id, machine);
            run(&shared, id, &connection, &mut stream, session, inputs).await;
            went_offline(&shared, id, machine);
        }
        LoggedIn::Client(client) => {
            // A client opens one stream per channel: from now on it may have the full number open.
            connection.set_max_concurrent_bi_streams(shared.limits.max_bidi_streams.into());
            let _connected = shared.metrics.client_connected(client.fleet_names());
            // Routed streams arrive as further bidirectional streams beside the control stream.
            let routes = tokio::spawn(routing::accept_routes(
                shared.clone(),
                connection.clone(),
                client.clone(),
            ));
            run(&shared, id, &connection, &mut stream, session, inputs).await;
            routes.abort();
        }
    }
    shared.sessions().remove(&id);
}

/// Makes the connection known to the relay: its credential for the revocation watcher, and for an agent that
/// understands the fleet lock, its fleet for lock pushes. Returns the session's id, what will feed it, and
/// that fleet.
fn enter(
    shared: &Shared,
    logged_in: &LoggedIn,
    connection: &quinn::Connection,
) -> (u64, Inputs, Option<FleetId>) {
    let (standing, standing_rx) = watch::channel(Standing::Unread);
    let credential = match logged_in {
        LoggedIn::Agent(agent) => agent.authenticated.credential_id(),
        LoggedIn::Client(client) => client.authenticated.credential_id(),
    };
    let lock_fleet = match logged_in {
        LoggedIn::Agent(agent) if agent.fleet_lock => Some(agent.access.fleet_id()),
        _ => None,
    };
    let (lock, lock_rx) = match lock_fleet {
        Some(fleet) => {
            let (push, pushed) = watch::channel(None);
            (Some((fleet, push)), Some(pushed))
        }
        None => (None, None),
    };
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    shared.sessions().insert(
        id,
        LiveConnection {
            credential,
            connection: connection.clone(),
            standing,
            lock,
        },
    );
    let inputs = Inputs {
        standing: standing_rx,
        lock: lock_rx,
    };
    (id, inputs, lock_fleet)
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
    let previous = shared.presence().online(machine, id, now().unix);
    presence::write_changes(shared);
    if let Some(previous) = previous
        && let Some(old) = shared.sessions().get(&previous)
    {
        old.connection.close(
            CloseCode::REPLACED.0.into(),
            b"the same machine connected again",
        );
    }
    tracing::info!(%machine, "agent online");
}

/// Marks `machine` offline, if this connection is still the one deciding its presence.
fn went_offline(shared: &Shared, id: u64, machine: MachineId) {
    if shared.presence().offline(machine, id, now().unix) {
        presence::write_changes(shared);
        tracing::info!(%machine, "agent offline");
    }
}

/// What reaches a session besides its peer's messages and its timers.
struct Inputs {
    /// The credential's standing, from the revocation watcher.
    standing: watch::Receiver<Standing>,
    /// For an agent that understands the fleet lock: the lock, whenever an admin changes it.
    lock: Option<watch::Receiver<LockPush>>,
}

/// The latest fleet lock pushed to this agent; never resolves for a session that gets none.
async fn lock_pushed(lock: &mut Option<watch::Receiver<LockPush>>) -> Option<RelayMessage> {
    let Some(receiver) = lock else {
        return std::future::pending().await;
    };
    if receiver.changed().await.is_err() {
        // The relay forgot this session; it is closing.
        return std::future::pending().await;
    }
    receiver.borrow_and_update().as_deref().cloned()
}

/// Once the relay stops on purpose, what to tell this agent; never resolves for a session that is not told
/// (a client, an agent that does not understand `GoAway`), nor after it was told once.
async fn stopping(stopping: &mut Option<watch::Receiver<Option<GoAway>>>) -> GoAway {
    let Some(receiver) = stopping else {
        return std::future::pending().await;
    };
    // A session that logged in while the relay was already stopping is told at once.
    let already = *receiver.borrow_and_update();
    let told = match already {
        Some(go_away) => Some(go_away),
        None => match receiver.changed().await {
            Ok(()) => *receiver.borrow_and_update(),
            Err(_) => None,
        },
    };
    match told {
        Some(go_away) => {
            *stopping = None;
            go_away
        }
        None => std::future::pending().await,
    }
}

/// The session's loop: messages, standing checks, lock pushes and timers in, actions out, until it closes.
async fn run(
    shared: &Shared,
    id: u64,
    connection: &quinn::Connection,
    stream: &mut ControlStream,
    mut session: RelaySession,
    inputs: Inputs,
) {
    let Inputs {
        mut standing,
        mut lock,
    } = inputs;
    let mut stop = match session.peer() {
        LoggedIn::Agent(agent) if agent.go_away => Some(shared.stopping.subscribe()),
        _ => None,
    };
    loop {
        if run_actions(shared, id, connection, stream, &mut session).await {
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
            Ok(()) = standing.changed() => {
                let latest = standing.borrow_and_update().clone();
                match latest {
                    Standing::Read(latest) => session.handle(SessionInput::Standing(latest), now()),
                    Standing::Unknown => session.handle(SessionInput::StandingUnknown, now()),
                    Standing::Unread => {}
                }
            }
            Some(message) = lock_pushed(&mut lock) => {
                session.handle(SessionInput::Push(message), now());
            }
            go_away = stopping(&mut stop) => session.handle(SessionInput::Stopping(go_away), now()),
            () = sleep => session.handle_timeout(now()),
        }
    }
}

/// Carries out what the session asks; `true` once it has closed the connection.
async fn run_actions(
    shared: &Shared,
    id: u64,
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
            // A heartbeat touches memory only; the store follows in the next presence flush.
            SessionAction::Presence { machine, at } => shared.presence().heard(machine, id, at),
            SessionAction::LookUpMachines(access) => {
                let machines = shared.lock_store().machines_of(access.fleet_id());
                let input = match machines {
                    Ok(mut machines) => {
                        presence::apply(&shared.presence(), &mut machines);
                        SessionInput::Machines(machines)
                    }
                    Err(err) => {
                        tracing::error!(%err, "store failure while listing machines");
                        SessionInput::StoreFailed
                    }
                };
                session.handle(input, now());
            }
            SessionAction::Audit(event) => {
                let source = event.actor.clone();
                shared.audit(&source, event);
            }
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
