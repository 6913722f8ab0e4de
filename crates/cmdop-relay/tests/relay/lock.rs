//! The fleet lock at the relay, over real QUIC with the public client library: what the relay stores it
//! checks first (and only from admin credentials), agents learn the lock and enrol with an enrolment key
//! exactly as often as it allows, and a locked fleet routes only certified machines.

// Test helpers outside #[test] functions unwrap too: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cmdop_client::{AgentConnection, ClientConnection, ClientError, EnrolmentReply};
use cmdop_fleet::lock::{
    AuthorityState, EnrolmentAuthorization, EnrolmentSecret, MemberCertificate, MemberRole,
    RevocationList, SignedEnrolmentAuthorization,
};
use cmdop_fleet::{FleetId, Hostname, MachineId, Role as KeyRole};
use cmdop_identity::Identity;
use cmdop_proto::e2e::StreamKind;
use cmdop_proto::wire::{ErrorCode, FleetLockState, KeyBytes, LockItem, Submission};
use rand_core::OsRng;

use crate::control::{Fixture, HEARTBEAT, Relay, now, registration};

fn lock_refused(err: &ClientError, why: &str) {
    match err {
        ClientError::Refused { code, message } if *code == ErrorCode::LOCK_REFUSED => {
            assert!(message.contains(why), "expected {why:?} in {message:?}");
        }
        other => panic!("expected a lock refusal ({why}), got {other:?}"),
    }
}

fn genesis(fleet: FleetId, admin: &Identity) -> Vec<u8> {
    AuthorityState {
        fleet,
        serial: 1,
        locked: true,
        admins: vec![admin.public_key()],
        issued_at: now(),
        signer: admin.public_key(),
    }
    .sign(admin)
    .to_bytes()
}

fn fleet_id(lock: &FleetLockState) -> FleetId {
    FleetId::from_bytes(lock.fleet_id.0)
}

#[tokio::test]
async fn only_admin_credentials_store_documents_and_only_documents_that_verify() {
    let fx = Fixture::new();
    fx.fleet("prod");
    let (_, admin_key) = fx.key("prod", KeyRole::Admin);
    let (_, member_key) = fx.key("prod", KeyRole::Member);
    let relay = Relay::start(&fx.data, "127.0.0.1:0".parse().unwrap(), HEARTBEAT).await;
    let mut admin =
        ClientConnection::login(&relay.target, &Identity::generate(&mut OsRng), &admin_key)
            .await
            .unwrap();
    let member_identity = Identity::generate(&mut OsRng);
    let mut member = ClientConnection::login(&relay.target, &member_identity, &member_key)
        .await
        .unwrap();
    let lock = admin.fleet_lock(None).await.unwrap();
    assert!(lock.authority.is_empty());
    let fleet = fleet_id(&lock);
    let key = Identity::generate(&mut OsRng);
    let stranger = Identity::generate(&mut OsRng);

    // A member may read the lock, not write it.
    let err = member
        .submit_lock(None, Submission::Authority(genesis(fleet, &key)))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Forbidden(_)), "{err:?}");
    // Certificates before there is a lock are refused.
    let before = MemberCertificate {
        fleet,
        client_key: member_identity.public_key(),
        role: MemberRole::Member,
        issued_at: now(),
        expires: now().saturating_add_seconds(60),
        signer: key.public_key(),
    }
    .sign(&key);
    let err = admin
        .submit_lock(None, Submission::MemberCertificate(before.to_bytes()))
        .await
        .unwrap_err();
    lock_refused(&err, "not locked");

    let accepted = admin
        .submit_lock(None, Submission::Authority(genesis(fleet, &key)))
        .await
        .unwrap();
    assert!(accepted.contains("serial 1: locked"), "{accepted}");
    // A second state 1 (another admin racing to lock the fleet) does not follow the chain.
    let err = admin
        .submit_lock(None, Submission::Authority(genesis(fleet, &stranger)))
        .await
        .unwrap_err();
    lock_refused(&err, "must be serial 2");
    // Documents signed by a key that is not an admin key are refused.
    let forged = MemberCertificate {
        signer: stranger.public_key(),
        ..before.unverified().clone()
    }
    .sign(&stranger);
    let err = admin
        .submit_lock(None, Submission::MemberCertificate(forged.to_bytes()))
        .await
        .unwrap_err();
    lock_refused(&err, "not an admin key");
    admin
        .submit_lock(None, Submission::MemberCertificate(before.to_bytes()))
        .await
        .unwrap();
    // Revocation lists only move forward.
    let list = RevocationList::successor(
        None,
        fleet,
        &[stranger.public_key()],
        key.public_key(),
        now(),
    )
    .sign(&key);
    admin
        .submit_lock(None, Submission::RevocationList(list.to_bytes()))
        .await
        .unwrap();
    let err = admin
        .submit_lock(None, Submission::RevocationList(list.to_bytes()))
        .await
        .unwrap_err();
    lock_refused(&err, "older than serial 2");
    admin
        .submit_lock(
            None,
            Submission::AdminCandidate(KeyBytes(stranger.public_key().to_bytes())),
        )
        .await
        .unwrap();

    let (lock, items) = admin.fleet_lock_items(None).await.unwrap();
    assert_eq!(lock.authority.len(), 1);
    assert_eq!(lock.revocations, Some(list.to_bytes()));
    assert!(items.contains(&LockItem::MemberCertificate(before.to_bytes())));
    assert!(items.contains(&LockItem::AdminCandidate(KeyBytes(
        stranger.public_key().to_bytes()
    ))));
    assert!(items.iter().any(|item| matches!(
        item,
        LockItem::ClientKey { public_key, .. } if public_key.0 == member_identity.public_key().to_bytes()
    )));
    // Only admins see the items.
    assert!(matches!(
        member.fleet_lock_items(None).await.unwrap_err(),
        ClientError::Forbidden(_)
    ));
    admin.close().await;
    member.close().await;
    relay.stop().await;
}

/// An enrolment authorization for `secret`'s key, signed by `admin`, good for `uses` machines.
fn authorization(fleet: FleetId, admin: &Identity, secret: &EnrolmentSecret, uses: u32) -> Vec<u8> {
    EnrolmentAuthorization {
        fleet,
        enrolment_key: secret.public_key(),
        not_before: now(),
        not_after: now().saturating_add_seconds(600),
        uses,
        certificate_lifetime: 3600,
        signer: admin.public_key(),
    }
    .sign(admin)
    .to_bytes()
}

/// The certificate an agent makes with `secret` under `authorization`.
fn enrolled(
    agent: &AgentConnection,
    identity: &Identity,
    hostname: &str,
    secret: &EnrolmentSecret,
    authorization: &[u8],
) -> Vec<u8> {
    let signed = SignedEnrolmentAuthorization::from_bytes(authorization).unwrap();
    signed
        .unverified()
        .certificate_body(
            MachineId::from_bytes(agent.machine_id().into_bytes()),
            identity.public_key(),
            Hostname::parse(hostname).unwrap(),
            now(),
        )
        .sign_as_enrolment(&secret.signing_key(), signed)
        .to_bytes()
}

#[tokio::test]
async fn agents_learn_the_lock_and_an_enrolment_key_certifies_as_many_machines_as_it_allows() {
    let fx = Fixture::new();
    fx.fleet("prod");
    let (_, admin_key) = fx.key("prod", KeyRole::Admin);
    let (_, agent_key) = fx.key("prod", KeyRole::Agent);
    let relay = Relay::start(&fx.data, "127.0.0.1:0".parse().unwrap(), HEARTBEAT).await;
    let mut admin =
        ClientConnection::login(&relay.target, &Identity::generate(&mut OsRng), &admin_key)
            .await
            .unwrap();
    let fleet = fleet_id(&admin.fleet_lock(None).await.unwrap());
    let key = Identity::generate(&mut OsRng);
    let state = genesis(fleet, &key);
    admin
        .submit_lock(None, Submission::Authority(state.clone()))
        .await
        .unwrap();
    let secret = EnrolmentSecret::generate(key.public_key(), &mut OsRng);
    let allowed = authorization(fleet, &key, &secret, 1);
    admin
        .submit_lock(None, Submission::EnrolmentAuthorization(allowed.clone()))
        .await
        .unwrap();

    let first_identity = Identity::generate(&mut OsRng);
    let mut first = AgentConnection::register(
        &relay.target,
        &first_identity,
        &registration(&agent_key, "prod", "web-1"),
    )
    .await
    .unwrap();
    // The lock came right after registering.
    let lock = first.take_fleet_lock().unwrap();
    assert_eq!(lock.authority, vec![state]);
    let EnrolmentReply::Authorization(bytes) =
        first.request_enrolment(&secret.public_key()).await.unwrap()
    else {
        panic!("expected the authorization");
    };
    assert_eq!(bytes, allowed);
    let certificate = enrolled(&first, &first_identity, "web-1", &secret, &bytes);
    first.submit_enrolment(certificate.clone()).await.unwrap();
    // Certified: asking again costs no use.
    assert_eq!(
        first.request_enrolment(&secret.public_key()).await.unwrap(),
        EnrolmentReply::AlreadyCertified
    );

    let second_identity = Identity::generate(&mut OsRng);
    let mut second = AgentConnection::register(
        &relay.target,
        &second_identity,
        &registration(&agent_key, "prod", "web-2"),
    )
    .await
    .unwrap();
    lock_refused(
        &second
            .request_enrolment(&secret.public_key())
            .await
            .unwrap_err(),
        "already used for 1 machine",
    );
    // The relay saw the first agent's proof; it certifies nothing else (not this machine, not this key).
    lock_refused(
        &second.submit_enrolment(certificate).await.unwrap_err(),
        "is for machine",
    );
    // Nor does a proof with an unauthorized enrolment key.
    let rogue = EnrolmentSecret::generate(key.public_key(), &mut OsRng);
    let forged = enrolled(&second, &second_identity, "web-2", &rogue, &allowed);
    lock_refused(
        &second.submit_enrolment(forged).await.unwrap_err(),
        "invalid signature",
    );
    // And with uses left, the relay would still refuse a certificate for another hostname.
    admin
        .submit_lock(
            None,
            Submission::EnrolmentAuthorization(authorization(fleet, &key, &rogue, 5)),
        )
        .await
        .unwrap();
    let renamed = enrolled(
        &second,
        &second_identity,
        "db-1",
        &rogue,
        &authorization(fleet, &key, &rogue, 5),
    );
    lock_refused(
        &second.submit_enrolment(renamed).await.unwrap_err(),
        "another hostname",
    );

    // A locked fleet routes to certified machines only, with their certificate.
    let stream = admin
        .open_stream(None, "web-1", StreamKind::Exec)
        .await
        .unwrap();
    let route_lock = stream.lock().unwrap();
    assert!(route_lock.machine_certificate.is_some());
    let err = admin
        .open_stream(None, "web-2", StreamKind::Exec)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused { code, message } if *code == ErrorCode::NOT_CERTIFIED && message.contains("fleet lock sign")),
        "{err:?}"
    );
    let audit = fx.admin.audit(Some("prod")).unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "lock" && a.detail.contains("certified by enrolment key"))
    );
    drop(stream);
    first.goodbye().await.unwrap();
    second.goodbye().await.unwrap();
    admin.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_changed_lock_is_pushed_to_live_agents() {
    let fx = Fixture::new();
    fx.fleet("prod");
    let (_, admin_key) = fx.key("prod", KeyRole::Admin);
    let (_, agent_key) = fx.key("prod", KeyRole::Agent);
    let relay = Relay::start(&fx.data, "127.0.0.1:0".parse().unwrap(), HEARTBEAT).await;
    let mut agent = AgentConnection::register(
        &relay.target,
        &Identity::generate(&mut OsRng),
        &registration(&agent_key, "prod", "web-1"),
    )
    .await
    .unwrap();
    assert_eq!(agent.take_fleet_lock().unwrap().authority.len(), 0);
    let (pushed_tx, mut pushed) = tokio::sync::mpsc::unbounded_channel();
    let alive = tokio::spawn(async move {
        agent
            .keep_alive_with(|lock| {
                let _ = pushed_tx.send(lock);
            })
            .await
    });
    let mut admin =
        ClientConnection::login(&relay.target, &Identity::generate(&mut OsRng), &admin_key)
            .await
            .unwrap();
    let fleet = fleet_id(&admin.fleet_lock(None).await.unwrap());
    let key = Identity::generate(&mut OsRng);
    let first = genesis(fleet, &key);
    admin
        .submit_lock(None, Submission::Authority(first.clone()))
        .await
        .unwrap();
    let lock = tokio::time::timeout(Duration::from_secs(5), pushed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lock.authority, vec![first]);
    let list = RevocationList::successor(None, fleet, &[], key.public_key(), now()).sign(&key);
    admin
        .submit_lock(None, Submission::RevocationList(list.to_bytes()))
        .await
        .unwrap();
    let lock = tokio::time::timeout(Duration::from_secs(5), pushed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lock.revocations, Some(list.to_bytes()));
    alive.abort();
    admin.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_registration_may_not_take_another_machines_name() {
    let fx = Fixture::new();
    fx.fleet("prod");
    let (_, agent_key) = fx.key("prod", KeyRole::Agent);
    let relay = Relay::start(&fx.data, "127.0.0.1:0".parse().unwrap(), HEARTBEAT).await;
    let mut db = registration(&agent_key, "prod", "db-7");
    db.display_name = Some("prod-db".into());
    let owner = AgentConnection::register(&relay.target, &Identity::generate(&mut OsRng), &db)
        .await
        .unwrap();
    let err = AgentConnection::register(
        &relay.target,
        &Identity::generate(&mut OsRng),
        &registration(&agent_key, "prod", "prod-db"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ClientError::HostnameTaken(message) if message.contains("is the display name of machine")),
        "{err:?}"
    );
    // Nor a display name that is another machine's hostname, in any case: the relay finds the clash by its
    // folded-name index, not by reading the whole fleet.
    let mut shadow = registration(&agent_key, "prod", "web-9");
    shadow.display_name = Some("DB-7".into());
    let err = AgentConnection::register(&relay.target, &Identity::generate(&mut OsRng), &shadow)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::HostnameTaken(message) if message.contains("is the hostname of machine")),
        "{err:?}"
    );
    owner.goodbye().await.unwrap();
    relay.stop().await;
}
