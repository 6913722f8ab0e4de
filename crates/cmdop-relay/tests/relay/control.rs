//! The relay's control plane end to end: real QUIC on loopback, a real SQLite file, the public client library.

// Test helpers outside #[test] functions panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cmdop_client::{
    AgentConnection, AgentRegistration, ClientConnection, ClientError, RelayTarget, reconnect_delay,
};
use cmdop_fleet::{Role as KeyRole, Timestamp};
use cmdop_identity::Identity;
use cmdop_proto::RelayFingerprint;
use cmdop_proto::e2e::StreamKind;
use cmdop_relay::server::{Server, ServerConfig};
use cmdop_relay::store::Store;
use cmdop_relay::tls::TlsIdentity;
use rand_core::OsRng;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;
use zeroize::Zeroizing;

pub(crate) fn now() -> Timestamp {
    Timestamp::from_unix_seconds(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
}

/// `now()` moved by `secs` seconds (negative: into the past).
fn now_plus(secs: i64) -> Timestamp {
    Timestamp::from_unix_seconds(now().as_unix_seconds().saturating_add_signed(secs))
}

pub(crate) struct Relay {
    pub(crate) target: RelayTarget,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Relay {
    pub(crate) async fn start(data_dir: &Path, listen: SocketAddr, heartbeat: Duration) -> Self {
        let (tls, _) = TlsIdentity::load_or_generate(data_dir).unwrap();
        // Rebinding the port of a relay that just stopped can race the release of its socket; retry briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut tls = Some(tls);
        let server = loop {
            let identity = tls
                .take()
                .unwrap_or_else(|| TlsIdentity::load_or_generate(data_dir).unwrap().0);
            let mut config = ServerConfig::new(data_dir.to_owned(), listen, identity);
            config.heartbeat_interval = heartbeat;
            match Server::bind(config) {
                Ok(server) => break server,
                Err(err) if Instant::now() < deadline => {
                    eprintln!("bind failed, retrying: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("cannot bind {listen}: {err}"),
            }
        };
        let addr = server.local_addr().unwrap();
        let target = RelayTarget::new(addr.to_string(), server.fingerprint());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            target,
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) data: PathBuf,
    pub(crate) admin: Store,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("relay");
        let admin = Store::open(&data).unwrap();
        Self {
            _dir: dir,
            data,
            admin,
        }
    }

    pub(crate) fn fleet(&self, name: &str) {
        self.admin.create_fleet(name, now()).unwrap();
    }

    pub(crate) fn key(&self, fleet: &str, role: KeyRole) -> (String, String) {
        let (record, secret) = self
            .admin
            .create_api_key(fleet, role, None, None, now())
            .unwrap();
        (record.id.to_string(), secret.expose_text().to_string())
    }
}

pub(crate) fn registration(api_key: &str, workspace: &str, hostname: &str) -> AgentRegistration {
    AgentRegistration {
        api_key: Zeroizing::new(api_key.to_owned()),
        workspace: workspace.into(),
        hostname: hostname.into(),
        display_name: None,
        os: "linux".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
        labels: vec![("role".into(), "web".into())],
    }
}

pub(crate) const HEARTBEAT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn agent_registers_and_a_member_sees_it_online() {
    let fx = Fixture::new();
    fx.fleet("prod");
    let (_, agent_key) = fx.key("prod", KeyRole::Agent);
    let (_, member_key) = fx.key("prod", KeyRole::Member);
    let relay = Relay::start(&fx.data, "127.0.0.1:0".parse().unwrap(), HEARTBEAT).await;

    let agent_identity = Identity::generate(&mut OsRng);
    let mut agent = AgentConnection::register(
        &relay.target,
        &agent_identity,
        &registration(&agent_key, "prod", "web-1"),
    )
    .await
    .unwrap();
    agent.heartbeat().await.unwrap();
    assert_eq!(agent.heartbeat_interval(), HEARTBEAT);

    let mut client =
        ClientConnection::login(&relay.target, &Identity::generate(&mut OsRng), &member_key)
            .await
            .unwrap();
    assert_eq!(client.fleets(), ["prod".to_owned()]);
    let machines = client.list_machines(None).await.unwrap();
    assert_eq!(machines.len(), 1);
    let machine = &machines[0];
    assert_eq!(machine.id, agent.machine_id());
    assert_eq!(
        (machine.hostname.as_str(), machine.name.as_str()),
        ("web-1", "web-1")
    );
    assert!(machine.online);
    assert_eq!(machine.public_key, Some(agent_identity.public_key()));
    assert_eq!(machine.labels, [("role".to_owned(), "web".to_owned())]);

    let audit = fx.admin.audit(Some("prod")).unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "register" && a.outcome == "accepted")
    );
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.action == "auth" && a.outcome == "accepted")
            .count(),
        2
    );

    // A graceful stop makes the machine offline at once.
    agent.goodbye().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let machines = client.list_machines(Some("prod")).await.unwrap();
        if !machines[0].online {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "machine still online after goodbye"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn same_key_keeps_its_id_across_restarts_and_renames_and_a_new_key_is_a_new_machine() {
    let fx = Fixture::new();
    fx.fleet("prod");
    let (_, agent_key) = fx.key("prod", KeyRole::Agent);
    let identity = Identity::generate(&mut OsRng);

    let relay = Relay::start(&fx.data, "127.0.0.1:0".parse().unwrap(), HEARTBEAT).await;
    let first = AgentConnection::register(
        &relay.target,
        &identity,
        &registration(&agent_key, "prod", "web-1"),
    )
    .await
    .unwrap();
    let id = first.machine_id();
    first.goodbye().await.unwrap();
    relay.stop().await;

    // Restart of relay and agent, and a hostname and display-name change on the agent side.
    let relay = Relay::start(&fx.data, "127.0.0.1:0".parse().unwrap(), HEARTBEAT).await;
    let mut changed = registration(&agent_key, "prod", "web-one");
    changed.display_name = Some("Frontend".into());
    let again = AgentConnection::register(&relay.target, &identity, &changed)
        .await
        .unwrap();
    assert_eq!(again.machine_id(), id);
    again.goodbye().await.unwrap();

    // An admin rename keeps the id too.
    fx.admin
        .rename_machine(&id.to_string(), "edge", now())
        .unwrap();
    let renamed = AgentConnection::register(
        &relay.target,
        &identity,
        &registration(&agent_key, "prod", "web-one"),
    )
    .await
    .unwrap();
    assert_eq!(renamed.machine_id(), id);
    assert_eq!(
        fx.admin
            .machine(&id.to_string())
            .unwrap()
            .unwrap()
            .display_name(),
        "edge"
    );

    let other = AgentConnection::register(
        &relay.target,
        &Identity::generate(&mut OsRng),
        &registration(&agent_key, "prod", "db-1"),
    )
    .await
    .unwrap();
    assert_ne!(other.machine_id(), id);

    // A different key cannot take over an existing hostname.
    let thief = AgentConnection::register(
        &relay.target,
        &Identity::generate(&mut OsRng),
        &registration(&agent_key, "prod", "web-one"),
    )
    .await;
    assert!(
        matches!(thief, Err(ClientError::HostnameTaken(_))),
        "{thief:?}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn wrong_fingerprint_is_refused_before_any_credential_is_sent() {
    let fx = Fixture::new();
    fx.fleet("prod");
    let (key_id, member_key) = fx.key("prod", KeyRole::Member);
    let relay = Relay::start(&fx.data, "127.0.0.1:0".parse().unwrap(), HEARTBEAT).await;
    let audit_before = fx.admin.audit(None).unwrap().len();

    let wrong: RelayFingerprint = format!("sha256:{}", "00".repeat(32)).parse().unwrap();
    let target = RelayTarget::new(relay.addr.to_string(), wrong);
    let err = ClientConnection::login(&target, &Identity::generate(&mut OsRng), &member_key)
        .await
        .unwrap_err();
    match &err {
        ClientError::FingerprintMismatch { expected, got } => {
            assert_eq!(*expected, wrong);
            assert_eq!(*got, relay.target.fingerprint);
        }
        other => panic!("expected a fingerprint mismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("fingerprint mismatch") && text.contains("--relay-fingerprint"),
        "{text}"
    );

    // The relay saw no login at all: no audit entry, the credential was never used.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fx.admin.audit(None).unwrap().len(), audit_before);
    assert_eq!(
        last_used(
            &fx.admin
                .credential(key_id.parse().unwrap())
                .unwrap()
                .unwrap()
        ),
        None
    );
    relay.stop().await;
}

#[tokio::test]
async fn fleets_never_see_each_other() {
    let fx = Fixture::new();
    for fleet in ["a", "b", "c"] {
        fx.fleet(fleet);
    }
    let (_, agent_a) = fx.key("a", KeyRole::Agent);
    let (_, agent_b) = fx.key("b", KeyRole::Agent);
    let (_, member_a) = fx.key("a", KeyRole::Member);
    fx.admin.create_user("alice", now()).unwrap();
    let mut admin = Store::open(&fx.data).unwrap();
    let (_, token_ac) = admin
        .create_user_token("alice", &["a".into(), "c".into()], None, now())
        .unwrap();
    let relay = Relay::start(&fx.data, "127.0.0.1:0".parse().unwrap(), HEARTBEAT).await;

    let in_a = AgentConnection::register(
        &relay.target,
        &Identity::generate(&mut OsRng),
        &registration(&agent_a, "a", "a-1"),
    )
    .await
    .unwrap();
    let in_b = AgentConnection::register(
        &relay.target,
        &Identity::generate(&mut OsRng),
        &registration(&agent_b, "b", "b-1"),
    )
    .await
    .unwrap();
    // An agent key of fleet A cannot enrol into fleet B, and the answer does not reveal whether B exists.
    let cross = AgentConnection::register(
        &relay.target,
        &Identity::generate(&mut OsRng),
        &registration(&agent_a, "b", "x"),
    )
    .await;
    assert!(
        matches!(cross, Err(ClientError::FleetNotFound(_))),
        "{cross:?}"
    );
    let missing = AgentConnection::register(
        &relay.target,
        &Identity::generate(&mut OsRng),
        &registration(&agent_a, "zzz", "x"),
    )
    .await;
    match (cross, missing) {
        (Err(ClientError::FleetNotFound(b)), Err(ClientError::FleetNotFound(z))) => {
            assert_eq!(b.replace("\"b\"", "_"), z.replace("\"zzz\"", "_"));
        }
        other => panic!("{other:?}"),
    }

    let mut member =
        ClientConnection::login(&relay.target, &Identity::generate(&mut OsRng), &member_a)
            .await
            .unwrap();
    let listed = member.list_machines(None).await.unwrap();
    assert_eq!(
        listed.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![in_a.machine_id()]
    );
    assert!(matches!(
        member.list_machines(Some("b")).await,
        Err(ClientError::FleetNotFound(_))
    ));
    // The connection stays usable after a scope refusal.
    assert_eq!(member.list_machines(Some("a")).await.unwrap().len(), 1);

    let mut user = ClientConnection::login(
        &relay.target,
        &Identity::generate(&mut OsRng),
        &token_ac.expose_text(),
    )
    .await
    .unwrap();
    assert_eq!(user.principal(), "user alice");
    assert_eq!(user.fleets(), ["a".to_owned(), "c".to_owned()]);
    match user.list_machines(None).await {
        Err(ClientError::WorkspaceRequired { message }) => {
            assert!(message.contains("a, c"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        user.list_machines(Some("b")).await,
        Err(ClientError::FleetNotFound(_))
    ));
    assert!(user.list_machines(Some("c")).await.unwrap().is_empty());
    assert_eq!(
        user.list_machines(Some("a")).await.unwrap()[0].id,
        in_a.machine_id()
    );

    // Member keys and user tokens cannot enrol machines.
    for credential in [member_a.as_str(), token_ac.expose_text().as_str()] {
        let enrol = AgentConnection::register(
            &relay.target,
            &Identity::generate(&mut OsRng),
            &registration(credential, "a", "intruder"),
        )
        .await;
        assert!(matches!(enrol, Err(ClientError::Forbidden(_))), "{enrol:?}");
    }
    // Agent keys are for enrolling only.
    let agent_as_client =
        ClientConnection::login(&relay.target, &Identity::generate(&mut OsRng), &agent_a).await;
    assert!(
        matches!(agent_as_client, Err(ClientError::Forbidden(_))),
        "{agent_as_client:?}"
    );
    drop(in_b);
    relay.stop().await;
}

#[tokio::test]
async fn a_revoked_key_is_cut_within_a_second_and_refused_afterwards() {
    let fx = Fixture::new();
    fx.fleet("prod");
    let (agent_key_id, agent_key) = fx.key("prod", KeyRole::Agent);
    let (member_key_id, member_key) = fx.key("prod", KeyRole::Member);
    let relay = Relay::start(&fx.data, "127.0.0.1:0".parse().unwrap(), HEARTBEAT).await;
    let identity = Identity::generate(&mut OsRng);
    let agent = AgentConnection::register(
        &relay.target,
        &identity,
        &registration(&agent_key, "prod", "web-1"),
    )
    .await
    .unwrap();
    let client =
        ClientConnection::login(&relay.target, &Identity::generate(&mut OsRng), &member_key)
            .await
            .unwrap();

    // The admin verb runs in another process; a second connection to the file behaves the same way.
    let other_process = Store::open(&fx.data).unwrap();
    let revoked_at = Instant::now();
    other_process.revoke(&agent_key_id, now()).unwrap();
    other_process.revoke(&member_key_id, now()).unwrap();
    let reason = tokio::time::timeout(Duration::from_millis(1500), agent.closed())
        .await
        .expect("agent not cut within 1.5 s");
    let elapsed = revoked_at.elapsed();
    assert!(elapsed < Duration::from_secs(1), "cut after {elapsed:?}");
    assert!(
        matches!(reason, ClientError::CredentialRevoked(_)),
        "{reason:?}"
    );
    let mut client = client;
    let listed = tokio::time::timeout(Duration::from_millis(1500), client.list_machines(None))
        .await
        .unwrap();
    assert!(listed.is_err(), "revoked member still served: {listed:?}");

    let again = AgentConnection::register(
        &relay.target,
        &identity,
        &registration(&agent_key, "prod", "web-1"),
    )
    .await;
    assert!(
        matches!(again, Err(ClientError::AuthenticationFailed(_))),
        "{again:?}"
    );
    let audit = fx.admin.audit(None).unwrap();
    assert!(audit.iter().any(|a| a.action == "auth"
        && a.outcome == "refused"
        && a.detail.contains("credential revoked")));
    assert!(
        audit
            .iter()
            .any(|a| a.action == "disconnect" && a.detail.contains("credential revoked"))
    );
    assert!(audit.iter().any(|a| a.action == "revoke"));
    // The machine is offline once its connection is cut.
    let deadline = Instant::now() + Duration::from_secs(2);
    while fx.admin.machines(Some("prod")).unwrap()[0].1.online {
        assert!(
            Instant::now() < deadline,
            "machine still online after its key was revoked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn an_expired_key_is_refused_and_a_live_one_is_cut_at_expiry() {
    let fx = Fixture::new();
    fx.fleet("prod");
    let (_, expired) = fx
        .admin
        .create_api_key(
            "prod",
            KeyRole::Agent,
            None,
            Some(now_plus(-1)),
            now_plus(-100),
        )
        .unwrap();
    let relay = Relay::start(&fx.data, "127.0.0.1:0".parse().unwrap(), HEARTBEAT).await;
    let refused = AgentConnection::register(
        &relay.target,
        &Identity::generate(&mut OsRng),
        &registration(&expired.expose_text(), "prod", "web-1"),
    )
    .await;
    match refused {
        Err(ClientError::AuthenticationFailed(message)) => {
            assert!(message.contains("authentication failed"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        fx.admin
            .audit(None)
            .unwrap()
            .iter()
            .any(|a| a.outcome == "refused" && a.detail.contains("credential expired"))
    );

    // A key that expires while connected is cut.
    let (_, soon) = fx
        .admin
        .create_api_key("prod", KeyRole::Agent, None, Some(now_plus(2)), now())
        .unwrap();
    let agent = AgentConnection::register(
        &relay.target,
        &Identity::generate(&mut OsRng),
        &registration(&soon.expose_text(), "prod", "web-2"),
    )
    .await
    .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), agent.closed())
        .await
        .expect("not cut at expiry");
    assert!(
        matches!(reason, ClientError::CredentialRevoked(_)),
        "{reason:?}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn admin_changes_to_the_store_do_not_disturb_live_sessions() {
    // Every change to relay.db (here: keys created by another process) makes the relay re-check the
    // credentials of live sessions. That check races the session's read of its control stream; a read that
    // lost the race once decoded its last message again, and a registered agent was cut for "sending" its
    // login twice.
    let fx = Fixture::new();
    fx.fleet("prod");
    let (_, agent_key) = fx.key("prod", KeyRole::Agent);
    let relay = Relay::start(&fx.data, "127.0.0.1:0".parse().unwrap(), HEARTBEAT).await;
    let mut agent = AgentConnection::register(
        &relay.target,
        &Identity::generate(&mut OsRng),
        &registration(&agent_key, "prod", "web-1"),
    )
    .await
    .unwrap();
    let other_process = Store::open(&fx.data).unwrap();
    for _ in 0..5 {
        other_process
            .create_api_key("prod", KeyRole::Member, None, None, now())
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        agent.heartbeat().await.unwrap();
    }
    assert!(fx.admin.machines(None).unwrap()[0].1.online);
    agent.goodbye().await.unwrap();
    relay.stop().await;
}

#[tokio::test]
async fn a_silent_agent_goes_offline_after_three_missed_heartbeats() {
    let fx = Fixture::new();
    fx.fleet("prod");
    let (_, agent_key) = fx.key("prod", KeyRole::Agent);
    let relay = Relay::start(
        &fx.data,
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(300),
    )
    .await;
    let agent = AgentConnection::register(
        &relay.target,
        &Identity::generate(&mut OsRng),
        &registration(&agent_key, "prod", "quiet"),
    )
    .await
    .unwrap();
    assert!(fx.admin.machines(None).unwrap()[0].1.online);
    let started = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(3), agent.closed())
        .await
        .expect("silent agent never cut");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "cut too early: {:?}",
        started.elapsed()
    );
    assert!(
        matches!(reason, ClientError::Closed { code: 5, .. }),
        "{reason:?}"
    );
    assert!(!fx.admin.machines(None).unwrap()[0].1.online);
    relay.stop().await;
}

#[tokio::test]
async fn agents_come_back_by_themselves_after_a_relay_restart() {
    let fx = Fixture::new();
    fx.fleet("prod");
    let (_, agent_key) = fx.key("prod", KeyRole::Agent);
    let relay = Relay::start(
        &fx.data,
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(1),
    )
    .await;
    let addr = relay.addr;
    let target = relay.target.clone();

    // A minimal agent loop, as cmdop-agent runs it: register, heartbeat until failure, back off, repeat.
    let mut agents = Vec::new();
    for n in 0..3 {
        let target = target.clone();
        let registration = registration(&agent_key, "prod", &format!("node-{n}"));
        agents.push(tokio::spawn(async move {
            let identity = Identity::generate(&mut OsRng);
            let mut attempt = 0;
            loop {
                match AgentConnection::register(&target, &identity, &registration).await {
                    Ok(mut connection) => {
                        attempt = 0;
                        let _ = connection.keep_alive().await;
                    }
                    Err(_) => attempt += 1,
                }
                tokio::time::sleep(reconnect_delay(attempt.min(2), &mut OsRng)).await;
            }
        }));
    }
    let all_online = |expected: bool| {
        let admin = &fx.admin;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let machines = admin.machines(Some("prod")).unwrap();
                if machines.len() == 3 && machines.iter().all(|(_, m)| m.online == expected) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "machines not all online={expected}: {machines:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    all_online(true).await;
    relay.stop().await;
    all_online(false).await;
    let relay = Relay::start(&fx.data, addr, Duration::from_secs(1)).await;
    assert_eq!(
        relay.target.fingerprint, target.fingerprint,
        "the certificate survives a restart"
    );
    all_online(true).await;
    for agent in agents {
        agent.abort();
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_ca_issued_certificate_is_served_and_pinned_by_its_leaf() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    let fx = Fixture::new();
    fx.fleet("prod");
    let (_, member_key) = fx.key("prod", KeyRole::Member);
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["relay.example".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let cert_path = fx.data.join("chain.pem");
    let key_path = fx.data.join("leaf-key.pem");
    std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca_cert.pem())).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    // A key others can read is refused (`tls::tests::a_key_file_others_can_read_is_refused`).
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    let tls = TlsIdentity::from_pem_files(&cert_path, &key_path).unwrap();
    let expected = RelayFingerprint::of_cert(leaf.der());
    assert_eq!(tls.fingerprint(), expected);
    let server = Server::bind(ServerConfig::new(
        fx.data.clone(),
        "127.0.0.1:0".parse().unwrap(),
        tls,
    ))
    .unwrap();
    let target = RelayTarget::new(server.local_addr().unwrap().to_string(), expected);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let client = ClientConnection::login(&target, &Identity::generate(&mut OsRng), &member_key)
        .await
        .unwrap();
    client.close().await;
    // Pinning the CA's fingerprint instead of the leaf's is a mismatch: only the served leaf counts.
    let ca_pin = RelayTarget::new(
        target.address.clone(),
        RelayFingerprint::of_cert(ca_cert.der()),
    );
    let err = ClientConnection::login(&ca_pin, &Identity::generate(&mut OsRng), &member_key)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::FingerprintMismatch { .. }),
        "{err:?}"
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_name_that_matches_several_machines_is_refused_with_the_candidates_as_data() {
    let fx = Fixture::new();
    fx.fleet("prod");
    let (_, agent_key) = fx.key("prod", KeyRole::Agent);
    let (_, member_key) = fx.key("prod", KeyRole::Member);
    let relay = Relay::start(&fx.data, "127.0.0.1:0".parse().unwrap(), HEARTBEAT).await;
    let mut agents = Vec::new();
    for hostname in ["web-2", "web-1"] {
        let agent = AgentConnection::register(
            &relay.target,
            &Identity::generate(&mut OsRng),
            &registration(&agent_key, "prod", hostname),
        )
        .await
        .unwrap();
        agents.push(agent);
    }
    let client =
        ClientConnection::login(&relay.target, &Identity::generate(&mut OsRng), &member_key)
            .await
            .unwrap();

    let err = client
        .open_stream(None, "web", StreamKind::Exec)
        .await
        .unwrap_err();
    let ClientError::Ambiguous {
        message,
        candidates,
    } = &err
    else {
        panic!("expected Ambiguous, got {err:?}");
    };
    // The data and the message agree, sorted by name.
    let found: Vec<(Uuid, &str, &str)> = candidates
        .iter()
        .map(|c| (c.id, c.hostname.as_str(), c.name.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (agents[1].machine_id(), "web-1", "web-1"),
            (agents[0].machine_id(), "web-2", "web-2"),
        ]
    );
    for candidate in candidates {
        assert!(message.contains(&candidate.to_string()), "{message}");
    }
    // Any candidate's id reaches exactly that machine.
    let routed = client
        .open_stream(None, &candidates[0].id.to_string(), StreamKind::Exec)
        .await
        .unwrap();
    assert_eq!(routed.machine().id, agents[1].machine_id());
    drop(routed);

    let err = client
        .open_stream(None, "nowhere", StreamKind::Exec)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::MachineNotFound(_)), "{err:?}");
    let gone = agents.remove(0);
    gone.goodbye().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match client.open_stream(None, "web-2", StreamKind::Exec).await {
            Err(ClientError::MachineOffline(_)) => break,
            other => assert!(
                Instant::now() < deadline,
                "web-2 still reachable after goodbye: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for agent in agents {
        agent.goodbye().await.unwrap();
    }
    client.close().await;
    relay.stop().await;
}

/// When a credential last authenticated.
fn last_used(record: &cmdop_fleet::CredentialRecord) -> Option<Timestamp> {
    match record {
        cmdop_fleet::CredentialRecord::ApiKey(key) => key.last_used,
        cmdop_fleet::CredentialRecord::UserToken(token) => token.last_used,
    }
}

/// A fleet larger than one frame holds (about 650 machines like these) is listed in full: the relay sends it
/// in parts and the client puts them together. Machines are enrolled straight into the store, as cmdop-fleet
/// decides them, so that the test needs no thousand logins.
#[tokio::test]
async fn a_fleet_larger_than_a_frame_is_listed_in_full() {
    const MACHINES: usize = 1_500;
    let fx = Fixture::new();
    fx.fleet("big");
    let (_, member_key) = fx.key("big", KeyRole::Member);
    let fleet = fx.admin.fleet_by_name("big").unwrap().unwrap().fleet;
    let access = cmdop_fleet::FleetAccess::relay_operator(&fleet);
    for n in 0..MACHINES {
        let enrolment = cmdop_fleet::Enrolment {
            public_key: Identity::generate(&mut OsRng).public_key(),
            hostname: cmdop_fleet::Hostname::parse(&format!("host-{n:05}")).unwrap(),
            name: None,
            info: cmdop_fleet::AgentInfo::new("linux", "x86_64", "0.1.0").unwrap(),
            labels: cmdop_fleet::MachineLabels::default(),
        };
        let registration =
            cmdop_fleet::register(&access, &[], enrolment, now(), &mut OsRng).unwrap();
        fx.admin.save_registration(&registration).unwrap();
    }
    let relay = Relay::start(&fx.data, "127.0.0.1:0".parse().unwrap(), HEARTBEAT).await;
    let mut client =
        ClientConnection::login(&relay.target, &Identity::generate(&mut OsRng), &member_key)
            .await
            .unwrap();
    let listed = client.list_machines(None).await.unwrap();
    assert_eq!(listed.len(), MACHINES);
    let mut hostnames: Vec<&str> = listed.iter().map(|m| m.hostname.as_str()).collect();
    hostnames.sort_unstable();
    hostnames.dedup();
    assert_eq!(hostnames.len(), MACHINES);
    assert!(listed.iter().all(|m| !m.online));
    // The connection is still good for the next request.
    assert_eq!(
        client.list_machines(Some("big")).await.unwrap().len(),
        MACHINES
    );
    client.close().await;
    relay.stop().await;
}
