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
    metrics: Arc<RelayMetrics>,
    shared: Arc<Shared>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

/// A data directory holding fleet `prod` and one key of `role` in it, with the store to make more keys.
fn fleet_with_key(role: KeyRole) -> (tempfile::TempDir, Store, cmdop_fleet::CredentialSecret) {
    let dir = tempfile::tempdir().unwrap();
    let admin = Store::open(dir.path()).unwrap();
    admin.create_fleet("prod", now().unix).unwrap();
    let (_, key) = admin
        .create_api_key("prod", role, None, None, now().unix)
        .unwrap();
    (dir, admin, key)
}

async fn start(data: &std::path::Path, limits: Limits) -> Running {
    let (tls, _) = TlsIdentity::load_or_generate(data).unwrap();
    let mut config = ServerConfig::new(data.to_owned(), "127.0.0.1:0".parse().unwrap(), tls);
    config.limits = limits;
    let server = Server::bind(config).unwrap();
    let addr = server.local_addr().unwrap();
    let fingerprint = server.fingerprint();
    let metrics = server.metrics();
    let shared = Arc::clone(&server.shared);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        fingerprint,
        metrics,
        shared,
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

/// Path MTU discovery between a peer and the relay finds the largest packet the route carries, up to the bound,
/// in a handful of probes: each probe is a packet of the probed size that the other side parses padding byte
/// by padding byte, so a search in 20-byte steps cost ten of them towards 16 KiB.
#[tokio::test]
async fn path_mtu_discovery_settles_in_a_handful_of_probes() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), Limits::default()).await;
    let limits = Limits::default();
    let endpoint =
        cmdop_client::transport::client_endpoint("127.0.0.1:0".parse().unwrap(), &limits).unwrap();
    let mut config =
        client_config(running.fingerprint, Arc::new(Mutex::new(None)), &limits).unwrap();
    config.transport_config(Arc::new(cmdop_client::transport::transport_config_towards(
        &limits,
        running.addr,
    )));
    let connection = endpoint
        .connect_with(config, running.addr, cmdop_client::transport::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let bound = cmdop_client::transport::mtu_upper_bound_towards(&limits, running.addr);
    let close_enough = bound - cmdop_client::transport::mtu_search_step(bound);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut path = connection.stats().path;
    // The search is over once the MTU is near the bound and no probe is outstanding.
    while (path.current_mtu < close_enough || path.sent_plpmtud_probes == 0)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        path = connection.stats().path;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = connection.stats().path;
    assert!(
        path.current_mtu >= close_enough,
        "path MTU {} after 5 s, bound {bound}",
        path.current_mtu
    );
    assert!(
        path.sent_plpmtud_probes <= 6,
        "{} probes to reach {} (bound {bound})",
        path.sent_plpmtud_probes,
        path.current_mtu
    );
    endpoint.close(0u32.into(), b"");
    let _ = running.stop.send(());
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
    let (dir, _admin, member) = fleet_with_key(KeyRole::Member);
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
    // The second attempt waits for the one slot (up to `MAX_WAIT`), which the first, never logging in,
    // holds for longer: it is refused then, never accepted.
    let second = tokio::time::timeout(
        MAX_WAIT + Duration::from_secs(3),
        endpoint.connect(running.addr, "cmdop-relay").unwrap(),
    )
    .await
    .unwrap();
    assert!(
        second.is_err(),
        "second unauthenticated connection accepted"
    );
    assert_eq!(metric(&running.metrics, "cmdop_relay_login_waits_total"), 1);
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
    let (dir, _admin, member) = fleet_with_key(KeyRole::Member);
    let (tls, _) = TlsIdentity::load_or_generate(dir.path()).unwrap();
    let mut config = ServerConfig::new(dir.path().to_owned(), "127.0.0.1:0".parse().unwrap(), tls);
    config.revocation_recheck = recheck;
    let server = Server::bind(config).unwrap();
    let shared = Arc::clone(&server.shared);
    let addr = server.local_addr().unwrap();
    let fingerprint = server.fingerprint();
    let metrics = server.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let running = Running {
        addr,
        fingerprint,
        metrics,
        shared: Arc::clone(&shared),
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

/// The first flight of `n` QUIC connection attempts to `server`, each a complete Initial packet with its own
/// connection id, made by quinn's own state machine without a socket: what a spoofer replays.
fn initials(server: SocketAddr, fingerprint: RelayFingerprint, n: usize) -> Vec<Vec<u8>> {
    let config =
        client_config(fingerprint, Arc::new(Mutex::new(None)), &Limits::default()).unwrap();
    (0..n)
        .map(|_| {
            // A fresh endpoint each time, so nothing (CID pools, retransmissions) is shared.
            let mut endpoint = quinn_proto::Endpoint::new(
                Arc::new(quinn_proto::EndpointConfig::default()),
                None,
                true,
                None,
            );
            let (_, mut connection) = endpoint
                .connect(
                    Instant::now(),
                    config.clone(),
                    server,
                    cmdop_client::transport::SERVER_NAME,
                )
                .unwrap();
            let mut datagram = Vec::new();
            let transmit = connection
                .poll_transmit(Instant::now(), 1, &mut datagram)
                .unwrap();
            datagram.truncate(transmit.size);
            datagram
        })
        .collect()
}

/// The `i`-th of many distinct loopback addresses (all of 127.0.0.0/8 is loopback on Linux).
fn loopback_source(i: usize) -> std::net::Ipv4Addr {
    let i = u32::try_from(i).unwrap() + 1;
    std::net::Ipv4Addr::new(
        127,
        100 + u8::try_from(i >> 16).unwrap(),
        (i >> 8) as u8,
        i as u8,
    )
}

/// The attack of issue 13 item 3: Initial packets from addresses that never answer (spoofed) each held a
/// pre-login slot until the login deadline, so a thousand of them locked every agent and client out for
/// 10 s. Now, once a quarter of the slots is taken, unproven addresses get a QUIC Retry and never take a slot;
/// a real client answers the Retry and logs in. Its latency is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_gets_in_during_a_flood_of_spoofed_handshakes() {
    const FLOOD: usize = 1_000;
    let (dir, _admin, member) = fleet_with_key(KeyRole::Member);
    let running = start(dir.path(), Limits::default()).await;
    let baseline = {
        let target = RelayTarget::new(running.addr.to_string(), running.fingerprint);
        let started = Instant::now();
        let client = ClientConnection::login(
            &target,
            &cmdop_identity::Identity::generate(&mut OsRng),
            &member.expose_text(),
        )
        .await
        .unwrap();
        client.close().await;
        started.elapsed()
    };
    let flood = initials(running.addr, running.fingerprint, FLOOD);
    let addr = running.addr;
    let sent = Instant::now();
    tokio::task::spawn_blocking(move || {
        for (i, initial) in flood.iter().enumerate() {
            // Sent and forgotten: whatever the relay answers lands on a closed port, as for a spoofed address.
            let socket = std::net::UdpSocket::bind((loopback_source(i), 0)).unwrap();
            socket.send_to(initial, addr).unwrap();
            // In bursts the relay's socket buffer holds, so that the relay sees (and answers) every one.
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    })
    .await
    .unwrap();
    let flood_took = sent.elapsed();
    // A real client, from its own address, while the flood's attempts would still be holding their slots.
    let target = RelayTarget::new(running.addr.to_string(), running.fingerprint);
    let started = Instant::now();
    let login = tokio::time::timeout(
        Duration::from_secs(8),
        ClientConnection::login(
            &target,
            &cmdop_identity::Identity::generate(&mut OsRng),
            &member.expose_text(),
        ),
    )
    .await;
    let latency = started.elapsed();
    eprintln!(
        "{FLOOD} spoofed Initials sent in {flood_took:?}; login latency {latency:?} (without a flood: {baseline:?})"
    );
    let mut client = login
        .expect("the login did not finish within 8 s")
        .expect("the login was refused during the flood");
    assert!(client.list_machines(None).await.unwrap().is_empty());
    client.close().await;
    // The spoofed attempts hold at most the slots below the Retry threshold (the socket may have dropped some
    // of a burst; every one the relay saw beyond the threshold got a Retry instead of a slot).
    let retries = metric(
        &running.metrics,
        "cmdop_relay_address_validation_retries_total",
    );
    let held = running.shared.admission().pending();
    eprintln!("{retries} Retries sent; {held} slots held by the flood");
    assert!(retries > 0);
    assert!(held <= Limits::default().retry_from, "{held} slots held");
    let _ = running.stop.send(());
    running.task.await.unwrap().unwrap();
}

/// The value of an unlabelled metric.
fn metric(metrics: &RelayMetrics, name: &str) -> usize {
    metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The same with real hosts: a thousand addresses complete the QUIC handshake (answering the Retry) and then
/// never log in, each holding a slot until the deadline. The table is full, so each new attempt takes the slot
/// of the oldest; a client that logs in faster than the flood cycles the table still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_gets_in_during_a_flood_of_silent_connections_from_many_addresses() {
    const FLOOD: usize = 1_000;
    let (dir, _admin, member) = fleet_with_key(KeyRole::Member);
    let running = start(dir.path(), Limits::default()).await;
    let config = client_config(
        running.fingerprint,
        Arc::new(Mutex::new(None)),
        &Limits::default(),
    )
    .unwrap();
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = running.addr;
    let flood_started = Instant::now();
    let flood = tokio::spawn(async move {
        let mut attempts = tokio::task::JoinSet::new();
        for i in 0..FLOOD {
            let config = config.clone();
            let held = held_tx.clone();
            attempts.spawn(async move {
                let source = std::net::Ipv4Addr::new(127, 200, (i >> 8) as u8, (i & 0xff) as u8);
                let mut endpoint = quinn::Endpoint::client((source, 0).into()).unwrap();
                endpoint.set_default_client_config(config);
                // Connected (or refused, or cut): either way it never logs in.
                if let Ok(Ok(connection)) = tokio::time::timeout(
                    Duration::from_secs(10),
                    endpoint
                        .connect(addr, cmdop_client::transport::SERVER_NAME)
                        .unwrap(),
                )
                .await
                {
                    let _ = held.send((endpoint, connection));
                }
            });
            // About 250 attempts a second: what this 2-core machine can complete handshakes for while it also
            // runs the relay. Faster, most attempts never finish their own handshake before they are rotated out.
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
        while attempts.join_next().await.is_some() {}
    });
    // Mid-flood, once the silent attempts fill every slot (128 of them after about half a second), a real
    // client logs in.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let target = RelayTarget::new(running.addr.to_string(), running.fingerprint);
    let started = Instant::now();
    let login = tokio::time::timeout(
        Duration::from_secs(8),
        ClientConnection::login(
            &target,
            &cmdop_identity::Identity::generate(&mut OsRng),
            &member.expose_text(),
        ),
    )
    .await;
    let latency = started.elapsed();
    flood.await.unwrap();
    let mut handshakes = 0;
    while held_rx.try_recv().is_ok() {
        handshakes += 1;
    }
    eprintln!(
        "{FLOOD} silent connection attempts ({handshakes} completed the handshake) in {:?}; login latency {latency:?}; evicted {}",
        flood_started.elapsed(),
        running
            .metrics
            .encode()
            .lines()
            .find(|l| l.contains("reason=\"evicted\""))
            .unwrap_or("none")
    );
    let client = login
        .expect("the login did not finish within 8 s")
        .expect("the login was refused during the flood");
    client.close().await;
    let _ = running.stop.send(());
    running.task.await.unwrap().unwrap();
}

/// More attempts than there are login slots, all at once: those that find every slot taken wait for one
/// instead of being refused (which would send each into a backoff of up to 30 s), and all of them log in.
#[tokio::test]
async fn attempts_beyond_the_login_slots_wait_for_one_instead_of_being_refused() {
    const LOGINS: usize = 40;
    let (dir, _admin, member) = fleet_with_key(KeyRole::Member);
    let limits = Limits {
        max_unauthenticated: 4,
        max_unauthenticated_per_source: 4,
        // No Retry round trip: the slots, not address validation, are what this is about.
        retry_from: 1_000,
        ..Limits::default()
    };
    let running = start(dir.path(), limits).await;
    let target = RelayTarget::new(running.addr.to_string(), running.fingerprint);
    let mut logins = tokio::task::JoinSet::new();
    for _ in 0..LOGINS {
        let target = target.clone();
        let key = member.expose_text();
        logins.spawn(async move {
            let identity = cmdop_identity::Identity::generate(&mut OsRng);
            let client = ClientConnection::login(&target, &identity, &key).await?;
            client.close().await;
            Ok::<_, cmdop_client::ClientError>(())
        });
    }
    let mut refused = Vec::new();
    while let Some(login) = logins.join_next().await {
        if let Err(err) = login.unwrap() {
            refused.push(err.to_string());
        }
    }
    assert!(
        refused.is_empty(),
        "{} of {LOGINS} logins failed: {refused:?}",
        refused.len()
    );
    assert!(metric(&running.metrics, "cmdop_relay_login_waits_total") > 0);
    let _ = running.stop.send(());
    running.task.await.unwrap().unwrap();
}

/// A source at its share of the login slots does not hold up the attempts waiting behind its own: a freed slot
/// goes to the first waiting attempt that may take it, not only to the longest-waiting one.
#[tokio::test]
async fn a_source_at_its_share_does_not_hold_up_others_waiting_behind_it() {
    let (dir, _admin, member) = fleet_with_key(KeyRole::Member);
    let limits = Limits {
        max_unauthenticated: 4,
        max_unauthenticated_per_source: 2,
        retry_from: 1_000,
        ..Limits::default()
    };
    let running = start(dir.path(), limits).await;
    let config = client_config(
        running.fingerprint,
        Arc::new(Mutex::new(None)),
        &Limits::default(),
    )
    .unwrap();
    let silent = |last: u8| {
        let config = config.clone();
        let addr = running.addr;
        async move {
            let mut endpoint =
                quinn::Endpoint::client((std::net::Ipv4Addr::new(127, 0, 0, last), 0).into())
                    .unwrap();
            endpoint.set_default_client_config(config);
            let connecting = endpoint
                .connect(addr, cmdop_client::transport::SERVER_NAME)
                .unwrap();
            (endpoint, connecting)
        }
    };
    // Every slot taken by attempts that never log in: two from 127.0.0.4 (its share), two from 127.0.0.3.
    let mut held = Vec::new();
    for last in [4, 4, 3, 3] {
        let (endpoint, connecting) = silent(last).await;
        held.push((endpoint, connecting.await.unwrap()));
    }
    // 127.0.0.4 tries once more: over its share, it waits at the front of the room.
    let (_front_endpoint, front) = silent(4).await;
    let _front = tokio::spawn(front);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A real login from 127.0.0.1 finds every slot taken by young attempts and waits behind it.
    let target = RelayTarget::new(running.addr.to_string(), running.fingerprint);
    let key = member.expose_text();
    let login = tokio::spawn(async move {
        let identity = cmdop_identity::Identity::generate(&mut OsRng);
        ClientConnection::login(&target, &identity, &key).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // One of 127.0.0.3's slots frees: it goes to the login, which 127.0.0.4's front place must not block.
    let (endpoint, connection) = held.pop().unwrap();
    connection.close(0u32.into(), b"");
    drop(endpoint);
    let client = tokio::time::timeout(Duration::from_secs(3), login)
        .await
        .expect("the login waited behind an attempt that could not take the slot")
        .unwrap()
        .unwrap();
    client.close().await;
    let _ = running.stop.send(());
    running.task.await.unwrap().unwrap();
}

/// A person's command reaches a relay that is momentarily full: the relay refuses the handshake (here its
/// connection limit, as a reconnect storm fills its login slots and waiting room), and the client tries again
/// with backoff instead of failing at the first refusal.
#[tokio::test]
async fn a_client_login_waits_out_a_relay_too_busy_to_take_it() {
    let (dir, _admin, member) = fleet_with_key(KeyRole::Member);
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let running = start(dir.path(), limits).await;
    let target = RelayTarget::new(running.addr.to_string(), running.fingerprint);
    let identity = || cmdop_identity::Identity::generate(&mut OsRng);
    let first = ClientConnection::login(&target, &identity(), &member.expose_text())
        .await
        .unwrap();
    let second = {
        let (target, key, identity) = (target.clone(), member.expose_text(), identity());
        tokio::spawn(async move { ClientConnection::login(&target, &identity, &key).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.close().await;
    let second = tokio::time::timeout(cmdop_client::BUSY_PATIENCE + Duration::from_secs(5), second)
        .await
        .expect("the second login neither finished nor gave up")
        .unwrap()
        .expect("the second login failed although the relay had room again");
    assert!(
        running
            .metrics
            .encode()
            .lines()
            .any(|l| l.contains("reason=\"connection_limit\"") && !l.ends_with(" 0")),
        "the relay never refused the second login"
    );
    second.close().await;
    let _ = running.stop.send(());
    running.task.await.unwrap().unwrap();
}

/// One member key cannot take every connection of the relay: past `max_connections_per_credential` its
/// logins are refused with BUSY naming the limit, another key is unaffected, and a freed slot is usable again.
#[tokio::test]
async fn a_credential_cannot_hold_more_than_its_share_of_connections() {
    let (dir, admin, member) = fleet_with_key(KeyRole::Member);
    let (_, other) = admin
        .create_api_key("prod", KeyRole::Member, None, None, now().unix)
        .unwrap();
    let limits = Limits {
        max_connections_per_credential: 3,
        ..Limits::default()
    };
    let running = start(dir.path(), limits).await;
    let target = RelayTarget::new(running.addr.to_string(), running.fingerprint);
    let identity = cmdop_identity::Identity::generate(&mut OsRng);
    let login = |key: &cmdop_fleet::CredentialSecret| {
        let key = key.expose_text();
        let target = target.clone();
        let identity = &identity;
        async move { ClientConnection::login(&target, identity, &key).await }
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(login(&member).await.unwrap());
    }
    let refused = login(&member).await.unwrap_err();
    match &refused {
        cmdop_client::ClientError::Refused { code, message } => {
            assert_eq!(*code, ErrorCode::BUSY);
            assert!(message.contains("3 connections"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(refused.is_retryable());
    // Another credential is not affected.
    login(&other).await.unwrap().close().await;
    // A connection closed frees its slot.
    held.pop().unwrap().close().await;
    let again = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match login(&member).await {
                Ok(client) => return client,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("a freed slot was never given back");
    again.close().await;
    for client in held {
        client.close().await;
    }
    let _ = running.stop.send(());
    running.task.await.unwrap().unwrap();
}

/// A relay stopping on purpose tells a connected agent to go away, with when to come back and the window to
/// spread over (one agent online: the shortest window), and with nothing but control streams open it closes
/// within a fraction of a second instead of draining for its full timeout.
#[tokio::test]
async fn a_stopping_relay_tells_its_agents_when_to_come_back_and_stops_at_once() {
    let (dir, _admin, agent_key) = fleet_with_key(KeyRole::Agent);
    let running = start(dir.path(), Limits::default()).await;
    let target = RelayTarget::new(running.addr.to_string(), running.fingerprint);
    let registration = cmdop_client::AgentRegistration {
        api_key: agent_key.expose_text(),
        workspace: "prod".into(),
        hostname: "web-1".into(),
        display_name: None,
        os: "linux".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
        labels: Vec::new(),
    };
    let mut agent = cmdop_client::AgentConnection::register(
        &target,
        &cmdop_identity::Identity::generate(&mut OsRng),
        &registration,
    )
    .await
    .unwrap();
    let stopping = Instant::now();
    let _ = running.stop.send(());
    let told = tokio::time::timeout(Duration::from_secs(5), agent.keep_alive())
        .await
        .expect("the agent was not told to go away");
    let cmdop_client::ClientError::GoingAway(go_away) = told else {
        panic!("{told:?}");
    };
    assert_eq!(
        go_away,
        GoAway {
            reconnect_after_ms: 250,
            spread_ms: 1_000
        }
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), agent.closed())
        .await
        .expect("the relay did not close the connection");
    assert!(
        matches!(closed, cmdop_client::ClientError::Closed { code, .. } if code == CloseCode::SHUTDOWN.0),
        "{closed:?}"
    );
    running.task.await.unwrap().unwrap();
    let stopped_in = stopping.elapsed();
    assert!(stopped_in < Duration::from_secs(2), "{stopped_in:?}");
}
