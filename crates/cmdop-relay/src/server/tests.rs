//! Hostile-peer tests that need raw frames: malformed and oversized input, silent connections.

use std::sync::{Arc, Mutex};

use rand_core::OsRng;

use super::*;
use crate::store::Store;
use cmdop_client::transport::client_config;
use cmdop_client::{ClientConnection, RelayTarget};
use cmdop_fleet::Role as KeyRole;
use cmdop_proto::wire::{FrameDecoder, MAX_FRAME_SIZE};
use cmdop_proto::wire::{PROTOCOL_VERSION, PeerMessage, Role};

struct Running {
    addr: SocketAddr,
    fingerprint: RelayFingerprint,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

async fn start(data: &std::path::Path, limits: Limits) -> Running {
    let (tls, _) = TlsIdentity::load_or_generate(data).unwrap();
    let mut config = ServerConfig::new(data.to_owned(), "127.0.0.1:0".parse().unwrap(), tls);
    config.limits = limits;
    let server = Server::bind(config).unwrap();
    let addr = server.local_addr().unwrap();
    let fingerprint = server.fingerprint();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        fingerprint,
        stop,
        task,
    }
}

async fn raw_connection(running: &Running) -> (quinn::Endpoint, quinn::Connection) {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = client_config(
        running.fingerprint,
        Arc::new(Mutex::new(None)),
        &Limits::default(),
    )
    .unwrap();
    endpoint.set_default_client_config(config);
    let connection = endpoint
        .connect(running.addr, cmdop_client::transport::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    (endpoint, connection)
}

/// Sends `bytes` on a fresh control stream and returns the relay's first message and the close code.
async fn send_raw(running: &Running, bytes: &[u8]) -> (Option<RelayMessage>, Option<u64>) {
    let (_endpoint, connection) = raw_connection(running).await;
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut received = Vec::new();
    let reply = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(n)) = recv.read(&mut buf).await {
            received.extend_from_slice(&buf[..n]);
        }
        FrameDecoder::new()
            .decode::<RelayMessage>(&mut received.as_slice())
            .ok()
            .flatten()
    })
    .await
    .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), connection.closed())
        .await
        .unwrap();
    let code = match closed {
        quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
        _ => None,
    };
    (reply, code)
}

fn bad_frame(reply: Option<RelayMessage>) -> bool {
    matches!(
        reply,
        Some(RelayMessage::Error(ErrorMessage {
            code: ErrorCode::BAD_FRAME,
            ..
        }))
    )
}

#[tokio::test]
async fn malformed_and_oversized_frames_get_an_error_and_others_keep_being_served() {
    let dir = tempfile::tempdir().unwrap();
    let admin = Store::open(dir.path()).unwrap();
    admin.create_fleet("prod", now().unix).unwrap();
    let (_, member) = admin
        .create_api_key("prod", KeyRole::Member, None, None, now().unix)
        .unwrap();
    let running = start(dir.path(), Limits::default()).await;

    let oversized = u32::try_from(MAX_FRAME_SIZE + 1).unwrap().to_be_bytes();
    let (reply, code) = send_raw(&running, &oversized).await;
    assert!(bad_frame(reply.clone()), "{reply:?}");
    assert_eq!(code, Some(CloseCode::PROTOCOL_ERROR.0.into()));

    let (reply, code) = send_raw(&running, &[0, 0, 0, 3, 0x7f, 0x7f, 0x7f]).await;
    assert!(bad_frame(reply.clone()), "{reply:?}");
    assert_eq!(code, Some(CloseCode::PROTOCOL_ERROR.0.into()));

    // A valid Hello followed by junk in the same frame: leftover bytes are refused.
    let mut hello = cmdop_proto::wire::encode(&PeerMessage::Hello(cmdop_proto::wire::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Client,
        client_software: String::new(),
    }))
    .unwrap();
    hello[3] += 2;
    hello.extend_from_slice(&[1, 2]);
    let (reply, _) = send_raw(&running, &hello).await;
    assert!(bad_frame(reply.clone()), "{reply:?}");

    // An unsupported version is named as such.
    let old = cmdop_proto::wire::encode(&PeerMessage::Hello(cmdop_proto::wire::Hello {
        version: 99,
        role: Role::Client,
        client_software: String::new(),
    }))
    .unwrap();
    let (reply, _) = send_raw(&running, &old).await;
    assert!(
        matches!(
            reply,
            Some(RelayMessage::Error(ErrorMessage {
                code: ErrorCode::UNSUPPORTED_VERSION,
                ..
            }))
        ),
        "{reply:?}"
    );

    // The relay still serves a well-behaved client.
    let target = RelayTarget::new(running.addr.to_string(), running.fingerprint);
    let mut client = ClientConnection::login(
        &target,
        &cmdop_identity::Identity::generate(&mut OsRng),
        &member.expose_text(),
    )
    .await
    .unwrap();
    assert!(client.list_machines(None).await.unwrap().is_empty());
    client.close().await;
    let _ = running.stop.send(());
    running.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_connection_that_never_logs_in_is_cut_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        login_deadline: Duration::from_millis(300),
        ..Limits::default()
    };
    let running = start(dir.path(), limits).await;
    let (_endpoint, connection) = raw_connection(&running).await;
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), connection.closed())
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code.into_inner(),
                u64::from(CloseCode::LOGIN_TIMEOUT.0)
            );
        }
        other => panic!("{other:?}"),
    }
    let audit = Store::open(dir.path()).unwrap().audit(None).unwrap();
    assert!(audit.iter().any(|a| a.detail == "login deadline exceeded"));
    let _ = running.stop.send(());
    running.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_unauthenticated: 1,
        ..Limits::default()
    };
    let running = start(dir.path(), limits).await;
    let (_first_endpoint, _first) = raw_connection(&running).await;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(
        client_config(
            running.fingerprint,
            Arc::new(Mutex::new(None)),
            &Limits::default(),
        )
        .unwrap(),
    );
    let second = tokio::time::timeout(
        Duration::from_secs(5),
        endpoint.connect(running.addr, "cmdop-relay").unwrap(),
    )
    .await
    .unwrap();
    assert!(
        second.is_err(),
        "second unauthenticated connection accepted"
    );
    let _ = running.stop.send(());
    running.task.await.unwrap().unwrap();
}

/// A relay with a fleet and a member key, and a client logged in with it.
struct LoggedInClient {
    running: Running,
    shared: Arc<Shared>,
    client: ClientConnection,
    member: cmdop_fleet::CredentialSecret,
    _dir: tempfile::TempDir,
}

async fn logged_in_client(recheck: Duration) -> LoggedInClient {
    let dir = tempfile::tempdir().unwrap();
    let admin = Store::open(dir.path()).unwrap();
    admin.create_fleet("prod", now().unix).unwrap();
    let (_, member) = admin
        .create_api_key("prod", KeyRole::Member, None, None, now().unix)
        .unwrap();
    let (tls, _) = TlsIdentity::load_or_generate(dir.path()).unwrap();
    let mut config = ServerConfig::new(dir.path().to_owned(), "127.0.0.1:0".parse().unwrap(), tls);
    config.revocation_recheck = recheck;
    let server = Server::bind(config).unwrap();
    let shared = Arc::clone(&server.shared);
    let addr = server.local_addr().unwrap();
    let fingerprint = server.fingerprint();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let running = Running {
        addr,
        fingerprint,
        stop,
        task,
    };
    let target = RelayTarget::new(running.addr.to_string(), running.fingerprint);
    let client = ClientConnection::login(
        &target,
        &cmdop_identity::Identity::generate(&mut OsRng),
        &member.expose_text(),
    )
    .await
    .unwrap();
    LoggedInClient {
        running,
        shared,
        client,
        member,
        _dir: dir,
    }
}

/// When the store cannot say whether a live connection's credential still stands, the connection is cut
/// (fail closed), with a close code that tells the peer to come back later rather than that it was revoked.
#[tokio::test]
async fn a_store_failure_during_the_recheck_cuts_live_connections() {
    let live = logged_in_client(Duration::from_secs(3600)).await;
    // Another process breaks the store under the running relay: the credential can no longer be read.
    let breaker = rusqlite::Connection::open(live._dir.path().join(crate::store::DB_FILE)).unwrap();
    breaker
        .execute_batch("ALTER TABLE api_keys RENAME TO api_keys_gone")
        .unwrap();
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), live.client.closed())
        .await
        .expect("a connection whose credential cannot be re-checked stays open");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    match closed {
        cmdop_client::ClientError::Closed { code, .. } => {
            assert_eq!(code, CloseCode::CREDENTIAL_UNCHECKED.0);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        closed.is_retryable(),
        "agents and clients come back: {closed:?}"
    );
    let _ = live.running.stop.send(());
    live.running.task.await.unwrap().unwrap();
}

/// A revocation the change counter does not show (written through the relay's own connection, or a store
/// replaced from a backup) is still found by the periodic re-check.
#[tokio::test]
async fn a_revocation_the_change_counter_misses_is_cut_by_the_timer() {
    let live = logged_in_client(Duration::from_millis(500)).await;
    let id = live.member.id().to_string();
    live.shared.lock_store().revoke(&id, now().unix).unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), live.client.closed())
        .await
        .expect("a revoked credential's connection stays open");
    assert!(
        matches!(closed, cmdop_client::ClientError::CredentialRevoked(_)),
        "{closed:?}"
    );
    let _ = live.running.stop.send(());
    live.running.task.await.unwrap().unwrap();
}

/// A stranger hammering the relay with failed logins cannot grow the audit log by an entry per attempt: from
/// one source, one entry in full and a count of the rest per minute. Nothing is lost: the count says how
/// many there were.
#[tokio::test]
async fn repeated_failed_logins_from_one_source_are_counted_not_written_one_by_one() {
    const ATTEMPTS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path())
        .unwrap()
        .create_fleet("prod", now().unix)
        .unwrap();
    let running = start(dir.path(), Limits::default()).await;
    let target = RelayTarget::new(running.addr.to_string(), running.fingerprint);
    let identity = cmdop_identity::Identity::generate(&mut OsRng);
    for _ in 0..ATTEMPTS {
        let stranger = cmdop_fleet::CredentialSecret::generate(
            cmdop_fleet::CredentialKind::ApiKey,
            &mut OsRng,
        );
        let refused = ClientConnection::login(&target, &identity, &stranger.expose_text()).await;
        assert!(
            matches!(
                refused,
                Err(cmdop_client::ClientError::AuthenticationFailed(_))
            ),
            "{refused:?}"
        );
    }
    let refusals = |store: &Store| {
        store
            .audit(None)
            .unwrap()
            .into_iter()
            .filter(|r| r.outcome == "refused")
            .collect::<Vec<_>>()
    };
    let while_running = refusals(&Store::open(dir.path()).unwrap());
    // One in full per minute (two if the test straddled a minute), not one per attempt.
    assert!(
        (1..=2).contains(&while_running.len()),
        "{} refusal entries for {ATTEMPTS} attempts: {while_running:#?}",
        while_running.len()
    );
    let _ = running.stop.send(());
    running.task.await.unwrap().unwrap();
    // A stopping relay writes what it counted: the full entries plus the counts add up to every attempt.
    let after = refusals(&Store::open(dir.path()).unwrap());
    let counted: usize = after
        .iter()
        .map(|r| {
            r.detail
                .split_once(" more like this")
                .map_or(1, |(n, _)| n.parse::<usize>().unwrap())
        })
        .sum();
    assert_eq!(counted, ATTEMPTS, "{after:#?}");
    assert!(after.len() <= 4, "{after:#?}");
}
