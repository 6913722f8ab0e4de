//! Drives one connection's [`RelayLogin`]: moves its messages over the control stream and answers its lookups
//! from the store, until it logs the peer in or refuses it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use cmdop_client::control::ControlStream;
use cmdop_fleet::Registration;
use cmdop_proto::audit_budget::source_of;
use cmdop_proto::login::{
    FleetLookup, FleetQuery, LoggedIn, LoginAction, LoginInput, RelayLogin, RelayLoginConfig,
    StoreRefusal,
};
use cmdop_proto::wire::{EXPORTER_LABEL, EXPORTER_LEN, PeerMessage};
use rand_core::{OsRng, RngCore};

use super::{CredentialSlot, Shared, close_with, now, peer_gone, refuse_stream};
use crate::metrics::FailureReason;
use crate::store::StoreError;

/// Logs the peer of `connection` in by `deadline`. Returns its control stream and who it is, or `None` once
/// it was refused (the refusal sent, audited, counted and the connection closed) or went away.
pub(super) async fn log_in(
    shared: &Arc<Shared>,
    connection: &quinn::Connection,
    remote: SocketAddr,
    deadline: Instant,
) -> Option<(ControlStream, LoggedIn, Option<CredentialSlot>)> {
    let mut exporter = [0u8; EXPORTER_LEN];
    if connection
        .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .is_err()
    {
        tracing::error!(%remote, "TLS keying-material exporter unavailable");
        connection.close(0u32.into(), b"relay internal error");
        return None;
    }
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    let mut login = RelayLogin::new(RelayLoginConfig {
        nonce,
        exporter,
        peer: remote.to_string(),
        deadline,
        heartbeat_interval: shared.heartbeat_interval,
    });
    let mut stream: Option<ControlStream> = None;
    let source = source_of(remote.ip());
    let mut slot = None;
    loop {
        let waiting = Waiting {
            shared,
            connection,
            source: &source,
            slot: &mut slot,
        };
        if let Some(done) = run_actions(waiting, &mut login, stream.as_mut()).await {
            return match (stream, done) {
                (Some(stream), Some(logged_in)) => Some((stream, logged_in, slot)),
                _ => None,
            };
        }
        let at = tokio::time::Instant::from_std(deadline);
        let Some(control) = stream.as_mut() else {
            // The peer opens its control stream first; it counts against the same deadline.
            tokio::select! {
                opened = connection.accept_bi() => match opened {
                    Ok((send, recv)) => stream = Some(ControlStream::new(send, recv)),
                    Err(_) => return None,
                },
                () = tokio::time::sleep_until(at) => login.handle_timeout(now()),
            }
            continue;
        };
        tokio::select! {
            received = control.recv::<PeerMessage>() => match received {
                Ok(Some(message)) => login.handle(LoginInput::Message(message), now(), &mut OsRng),
                Ok(None) => return None,
                Err(err) if peer_gone(&err) => return None,
                Err(err) => {
                    shared.metrics.handshake_failed(FailureReason::Protocol);
                    refuse_stream(connection, control, &err).await;
                    return None;
                }
            },
            () = tokio::time::sleep_until(at) => login.handle_timeout(now()),
        }
    }
}

/// Carries out what the login asks until it waits for the peer. `Some(Some(_))`: logged in; `Some(None)`: the
/// login ended without a peer (refused, or the stream broke); `None`: waiting for the next message.
/// What carrying out a login's actions needs besides the login and its stream.
struct Waiting<'a> {
    shared: &'a Arc<Shared>,
    connection: &'a quinn::Connection,
    /// The peer's source, for the audit budget.
    source: &'a str,
    /// The connection slot reserved for the credential, kept for the connection's life.
    slot: &'a mut Option<CredentialSlot>,
}

async fn run_actions(
    waiting: Waiting<'_>,
    login: &mut RelayLogin,
    mut stream: Option<&mut ControlStream>,
) -> Option<Option<LoggedIn>> {
    let Waiting {
        shared,
        connection,
        source,
        slot,
    } = waiting;
    // A refusal's error must reach the peer before the close; a bare close (the deadline) need not wait.
    let mut sent_error = false;
    while let Some(action) = login.poll_action() {
        match action {
            LoginAction::Send(mut message) => {
                if let Some(meddler) = &shared.meddler {
                    meddler.control(super::PeerKind::Unknown, &mut message);
                }
                sent_error |= matches!(message, cmdop_proto::wire::RelayMessage::Error(_));
                let sent = match stream.as_deref_mut() {
                    Some(stream) => stream.send(&message).await.is_ok(),
                    None => false,
                };
                if !sent {
                    return Some(None);
                }
            }
            LoginAction::LookUpCredential(id) => {
                let lookup = shared.lock_store().credential_lookup(id);
                let input = match lookup {
                    Ok(lookup) => LoginInput::Credential(lookup),
                    Err(err) => store_failed(&err),
                };
                login.handle(input, now(), &mut OsRng);
            }
            LoginAction::LookUpFleet(query) => {
                let input = fleet_lookup(shared, &query);
                login.handle(input, now(), &mut OsRng);
            }
            LoginAction::Register(registration) => {
                let stored = register(shared, &registration);
                login.handle(LoginInput::Stored(stored), now(), &mut OsRng);
            }
            LoginAction::ReserveConnection(id) => {
                let reserved = shared.reserve_connection(id).map(|reserved| {
                    *slot = Some(reserved);
                });
                login.handle(LoginInput::Reserved(reserved), now(), &mut OsRng);
            }
            LoginAction::MarkUsed(id) => {
                if let Err(err) = shared.lock_store().mark_used(id, now().unix) {
                    tracing::warn!(%err, "cannot record a credential's last use");
                }
            }
            LoginAction::Audit(event) => shared.audit(source, event),
            LoginAction::Close {
                code,
                reason,
                failure,
            } => {
                shared.count_failure(failure);
                let flush = if sent_error { stream } else { None };
                close_with(connection, flush, code, &reason).await;
                return Some(None);
            }
            LoginAction::LoggedIn(peer) => return Some(Some(*peer)),
            other => {
                tracing::error!(?other, "unknown login action; refusing the connection");
                connection.close(0u32.into(), b"relay internal error");
                return Some(None);
            }
        }
    }
    None
}

/// Stores an agent's registration; a hostname another machine holds is the peer's to hear about.
fn register(shared: &Shared, registration: &Registration) -> Result<(), StoreRefusal> {
    match shared.lock_store().save_registration(registration) {
        Ok(()) => Ok(()),
        Err(StoreError::HostnameTaken(_)) => Err(StoreRefusal::HostnameTaken),
        Err(err) => {
            tracing::error!(%err, "cannot store a registration");
            Err(StoreRefusal::Internal)
        }
    }
}

fn fleet_lookup(shared: &Shared, query: &FleetQuery) -> LoginInput {
    let store = shared.lock_store();
    let looked_up = store.machines_for_registration(query).and_then(|machines| {
        store.fleet_trust_key(query.fleet).map(|trust| FleetLookup {
            machines,
            trust_key: trust.public_key(),
        })
    });
    match looked_up {
        Ok(lookup) => LoginInput::Fleet(lookup),
        Err(err) => store_failed(&err),
    }
}

fn store_failed(err: &StoreError) -> LoginInput {
    tracing::error!(%err, "store failure during a login");
    LoginInput::StoreFailed
}
