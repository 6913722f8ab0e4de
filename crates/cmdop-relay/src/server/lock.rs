//! The fleet-lock requests of logged-in peers, answered from the store with cmdop-proto's `lock` decisions:
//! clients query a fleet's lock and admins submit signed documents; agents enrol with an enrolment key.
//!
//! ```text
//!  client  LockQuery{items}   ──▶ FleetLock, then LockItems… and an empty LockItems (admins only)
//!  admin   LockSubmit{doc}    ──▶ check_submission ──▶ store ──▶ LockAccepted; agents get the new lock
//!  agent   Enrol{key}         ──▶ EnrolAuthorization | Enrolled (already certified) | Error
//!  agent   EnrolProof{cert}   ──▶ check_enrolment ──▶ count a use and store, in one transaction ──▶ Enrolled
//! ```
//!
//! Refusals are `Error` messages with [`ErrorCode::LOCK_REFUSED`] (or the scope's code); the connection stays
//! open. The relay checks what it stores but is not trusted for it: agents and clients verify again.

use cmdop_client::control::ControlStream;
use cmdop_fleet::lock::{MachineCertificate, MachineIssuer};
use cmdop_fleet::{FleetAccess, FleetName, Permission};
use cmdop_identity::PublicKey;
use cmdop_proto::lock::{
    Accepted, EnrolmentAnswer, LockRefusal, check_enrolment, check_submission, enrolment_answer,
};
use cmdop_proto::login::{
    AgentSession, AuditEvent, ClientSession, LoggedIn, actor, no_such_fleet, scope_refusal,
};
use cmdop_proto::wire::{
    ErrorCode, ErrorMessage, FleetLockState, IdBytes, LockItem, LockQuery, LockSubmit,
    MAX_FRAME_SIZE, PeerMessage, RelayMessage, Submission, encoded_len,
};

use super::{Shared, now};
use crate::store::StoreError;

/// Answers `message` if it is a fleet-lock request; gives it back otherwise (for the session's state
/// machine). `Err` when the control stream broke.
pub(super) async fn handle(
    shared: &Shared,
    peer: &LoggedIn,
    stream: &mut ControlStream,
    message: PeerMessage,
) -> Result<Option<PeerMessage>, ()> {
    let replies = match (peer, message) {
        (LoggedIn::Client(client), PeerMessage::LockQuery(query)) => {
            query_lock(shared, client, &query)
        }
        (LoggedIn::Client(client), PeerMessage::LockSubmit(submit)) => {
            vec![submit_lock(shared, client, submit)]
        }
        (LoggedIn::Agent(agent), PeerMessage::Enrol(key)) => vec![enrol(shared, agent, &key.0)],
        (LoggedIn::Agent(agent), PeerMessage::EnrolProof(certificate)) => {
            vec![enrol_proof(shared, agent, &certificate)]
        }
        (_, other) => return Ok(Some(other)),
    };
    for mut reply in replies {
        if let Some(meddler) = &shared.meddler {
            meddler.control(super::PeerKind::of(peer), &mut reply);
        }
        stream.send(&reply).await.map_err(|_| ())?;
    }
    Ok(None)
}

fn refused(code: ErrorCode, message: impl Into<String>) -> RelayMessage {
    RelayMessage::Error(ErrorMessage {
        code,
        message: message.into(),
    })
}

fn internal(err: &StoreError) -> RelayMessage {
    tracing::error!(%err, "store failure during a fleet-lock request");
    refused(ErrorCode::INTERNAL, "the relay's store failed; try again")
}

/// The fleet a client names (or the only one in scope), with `need`.
fn access(
    client: &ClientSession,
    workspace: Option<&str>,
    need: Permission,
) -> Result<FleetAccess, ErrorMessage> {
    let name = match workspace {
        None => None,
        Some(asked) => Some(FleetName::parse(asked).map_err(|_| ErrorMessage {
            code: ErrorCode::FLEET_NOT_FOUND,
            message: no_such_fleet(asked),
        })?),
    };
    client
        .authenticated
        .workspace_access(name.as_ref(), &client.fleets, need)
        .map_err(|err| scope_refusal(&err))
}

/// `FleetLock`, then (for admins asking for items) the stored items in frames that fit, and an empty one.
fn query_lock(shared: &Shared, client: &ClientSession, query: &LockQuery) -> Vec<RelayMessage> {
    let need = if query.items {
        Permission::Manage
    } else {
        Permission::List
    };
    let access = match access(client, query.workspace.as_deref(), need) {
        Ok(access) => access,
        Err(refusal) => return vec![RelayMessage::Error(refusal)],
    };
    let fleet = access.fleet_id();
    let store = shared.lock_store();
    let (stored, items) = match store.stored_lock(fleet).and_then(|stored| {
        let items = if query.items {
            store.lock_items(fleet)?
        } else {
            Vec::new()
        };
        Ok((stored, items))
    }) {
        Ok(found) => found,
        Err(err) => return vec![internal(&err)],
    };
    let mut replies = vec![RelayMessage::FleetLock(FleetLockState {
        fleet_id: IdBytes(fleet.to_bytes()),
        authority: stored.authority,
        revocations: stored.revocations,
    })];
    if query.items {
        replies.extend(chunks(items));
        replies.push(RelayMessage::LockItems(Vec::new()));
    }
    replies
}

/// Items split into `LockItems` messages that each fit one frame.
fn chunks(items: Vec<LockItem>) -> Vec<RelayMessage> {
    // Headroom for the variant tag and the list's length varint.
    const BUDGET: usize = MAX_FRAME_SIZE - 16;
    let mut out = Vec::new();
    let mut current: Vec<LockItem> = Vec::new();
    let mut size = 0;
    for item in items {
        let len = encoded_len(&RelayMessage::LockItems(vec![item.clone()])).unwrap_or(BUDGET);
        if !current.is_empty() && size + len > BUDGET {
            out.push(RelayMessage::LockItems(std::mem::take(&mut current)));
            size = 0;
        }
        size += len;
        current.push(item);
    }
    if !current.is_empty() {
        out.push(RelayMessage::LockItems(current));
    }
    out
}

/// Checks and stores an admin's document; agents of the fleet get the new lock at once.
fn submit_lock(shared: &Shared, client: &ClientSession, submit: LockSubmit) -> RelayMessage {
    let access = match access(client, submit.workspace.as_deref(), Permission::Manage) {
        Ok(access) => access,
        Err(refusal) => return RelayMessage::Error(refusal),
    };
    let fleet = access.fleet_id();
    let at = now().unix;
    let checked = {
        let store = shared.lock_store();
        store.stored_lock(fleet).and_then(|stored| {
            let machines = store.machines_of(fleet)?;
            Ok(check_submission(
                &stored,
                fleet,
                &submit.submission,
                &machines,
                at,
            ))
        })
    };
    let accepted = match checked {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(refusal)) => {
            audit(shared, client, fleet, "refused", refusal.to_string());
            return refused(ErrorCode::LOCK_REFUSED, refusal.to_string());
        }
        Err(err) => return internal(&err),
    };
    if let Err(err) = store_submission(shared, fleet, &submit.submission, &accepted, at) {
        return internal(&err);
    }
    let detail = accepted.describe();
    audit(shared, client, fleet, "done", detail.clone());
    if matches!(
        accepted,
        Accepted::Authority { .. } | Accepted::RevocationList { .. }
    ) {
        shared.push_lock(fleet);
    }
    RelayMessage::LockAccepted(detail)
}

fn store_submission(
    shared: &Shared,
    fleet: cmdop_fleet::FleetId,
    submission: &Submission,
    accepted: &Accepted,
    at: cmdop_fleet::Timestamp,
) -> Result<(), StoreError> {
    let store = shared.lock_store();
    match (submission, accepted) {
        (Submission::Authority(bytes), Accepted::Authority { serial, .. }) => {
            store.append_authority(fleet, *serial, bytes, at)
        }
        (
            Submission::MachineCertificate(bytes),
            Accepted::MachineCertificate {
                machine,
                enrolment_key,
                ..
            },
        ) => store.save_machine_certificate(fleet, *machine, bytes, *enrolment_key, at),
        (Submission::MemberCertificate(bytes), Accepted::MemberCertificate { client_key, .. }) => {
            store.save_member_certificate(fleet, *client_key, bytes, at)
        }
        (
            Submission::EnrolmentAuthorization(bytes),
            Accepted::EnrolmentAuthorization {
                enrolment_key,
                uses,
            },
        ) => store.save_enrolment_key(fleet, *enrolment_key, bytes, *uses, at),
        (Submission::RevocationList(bytes), Accepted::RevocationList { serial, .. }) => {
            store.save_revocations(fleet, *serial, bytes, at)
        }
        (Submission::AdminCandidate(_), Accepted::AdminCandidate(key)) => {
            store.save_admin_candidate(fleet, key, at)
        }
        _ => Err(StoreError::Corrupt {
            what: "fleet-lock submission",
            reason: "the check and the document disagree".to_owned(),
        }),
    }
}

fn audit(
    shared: &Shared,
    client: &ClientSession,
    fleet: cmdop_fleet::FleetId,
    outcome: &'static str,
    detail: String,
) {
    let actor = actor(&client.authenticated);
    shared.audit(
        &actor.clone(),
        AuditEvent {
            fleet: Some(fleet),
            actor,
            action: "lock",
            outcome,
            detail,
        },
    );
}

/// An agent's enrolment request: already certified, or the authorization of its enrolment key.
fn enrol(shared: &Shared, agent: &AgentSession, key: &[u8; 32]) -> RelayMessage {
    let Ok(key) = PublicKey::from_bytes(key) else {
        return refused(ErrorCode::LOCK_REFUSED, LockRefusal::InvalidKey.to_string());
    };
    let fleet = agent.access.fleet_id();
    let at = now().unix;
    let looked_up = {
        let store = shared.lock_store();
        store.stored_lock(fleet).and_then(|stored| {
            let certified = match stored.check(fleet) {
                Ok(Some(lock)) => store
                    .machine_certificates(fleet)?
                    .into_iter()
                    .find(|(id, _)| *id == agent.machine.id)
                    .and_then(|(_, bytes)| MachineCertificate::from_bytes(&bytes).ok())
                    .is_some_and(|certificate| {
                        certificate
                            .verify_for(
                                &lock.authority,
                                &lock.revocations,
                                agent.machine.id,
                                &agent.machine.public_key,
                                at,
                            )
                            .is_ok_and(|body| body.hostname == agent.machine.hostname)
                    }),
                _ => false,
            };
            Ok((certified, store.enrolment_key(fleet, &key)?))
        })
    };
    match looked_up {
        Ok((certified, stored)) => match enrolment_answer(stored.as_ref(), certified, at) {
            Ok(EnrolmentAnswer::AlreadyCertified) => RelayMessage::Enrolled,
            Ok(EnrolmentAnswer::Authorization(bytes)) => RelayMessage::EnrolAuthorization(bytes),
            Err(refusal) => refused(ErrorCode::LOCK_REFUSED, refusal.to_string()),
        },
        Err(err) => internal(&err),
    }
}

/// An agent's certificate made with its enrolment key: checked, counted and stored in one transaction.
fn enrol_proof(shared: &Shared, agent: &AgentSession, certificate: &[u8]) -> RelayMessage {
    let fleet = agent.access.fleet_id();
    let at = now().unix;
    let mut store = shared.lock_store();
    let lock = match store.stored_lock(fleet).map(|stored| stored.check(fleet)) {
        Ok(Ok(Some(lock))) => lock,
        Ok(Ok(None)) => {
            return refused(ErrorCode::LOCK_REFUSED, LockRefusal::NotLocked.to_string());
        }
        Ok(Err(err)) => return refused(ErrorCode::LOCK_REFUSED, err.to_string()),
        Err(err) => return internal(&err),
    };
    let (certificate, key) = match check_enrolment(&lock, certificate, &agent.machine, at) {
        Ok(checked) => checked,
        Err(refusal) => return refused(ErrorCode::LOCK_REFUSED, refusal.to_string()),
    };
    match store.enrol_machine(fleet, agent.machine.id, key, &certificate.to_bytes(), at) {
        Ok(true) => {
            drop(store);
            let actor = actor(&agent.authenticated);
            shared.audit(
                &actor.clone(),
                AuditEvent {
                    fleet: Some(fleet),
                    actor,
                    action: "lock",
                    outcome: "done",
                    detail: format!(
                        "machine {} ({}) certified by enrolment key {}",
                        agent.machine.hostname,
                        agent.machine.id,
                        key.fingerprint()
                    ),
                },
            );
            RelayMessage::Enrolled
        }
        Ok(false) => {
            let uses = match certificate.issuer() {
                MachineIssuer::Enrolment { authorization, .. } => authorization.unverified().uses,
                MachineIssuer::Admin { .. } => 0,
            };
            refused(
                ErrorCode::LOCK_REFUSED,
                LockRefusal::UsedUp { uses }.to_string(),
            )
        }
        Err(err) => internal(&err),
    }
}
