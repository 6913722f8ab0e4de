//! Hostile peers that hold a credential: streams opened and never used must not take a machine away from
//! everyone else.

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmdop_client::proto::e2e::StreamKind;
use cmdop_client::{ClientConnection, RelayTarget};
use cmdop_identity::Identity;
use cmdop_tests::{Contour, Daemon, run};

/// 256 routed streams to a machine that never send a byte of their end-to-end handshake: each used to take one
/// of the agent's 256 stream slots before authenticating, with no deadline, so the machine served nobody
/// again. Now a handshake has a deadline, a slot is counted only after authentication, and one client key
/// can keep only a few handshakes pending at once; another client's `exec` still runs, and its latency is
/// printed.
#[test]
fn silent_streams_do_not_keep_another_client_from_running_exec() {
    const SILENT: usize = 256;
    let mut c = Contour::with_machine();
    let key = std::fs::read_to_string(c.member_key("prod")).unwrap();
    let target = RelayTarget::new(c.address.clone(), c.fingerprint.parse().unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let identity = Identity::generate(&mut rand::rngs::OsRng);
    // Two connections, as one connection may open at most 255 streams beside its control stream.
    let (connections, held) = runtime.block_on(async {
        let mut connections = Vec::new();
        for _ in 0..2 {
            let connection = ClientConnection::login(&target, &identity, key.trim())
                .await
                .unwrap();
            connections.push(Arc::new(connection));
        }
        let mut opening = tokio::task::JoinSet::new();
        for i in 0..SILENT {
            let connection = Arc::clone(&connections[i % 2]);
            opening.spawn(async move {
                connection
                    .open_stream(None, "web-1", StreamKind::Exec)
                    .await
            });
        }
        let mut held = Vec::new();
        while let Some(opened) = opening.join_next().await {
            if let Ok(routed) = opened.unwrap() {
                held.push(routed);
            }
        }
        (connections, held)
    });
    eprintln!("{} of {SILENT} silent streams were routed", held.len());

    let started = Instant::now();
    let out = run(c.cli_with_key("bob", &c.member_key("prod")).args([
        "connect",
        "exec",
        "web-1",
        "--",
        "echo",
        "still-served",
    ]));
    let latency = started.elapsed();
    eprintln!("exec beside {SILENT} silent streams took {latency:?}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still-served\n");
    assert!(latency < Duration::from_secs(8), "{latency:?}");
    // The handshakes still pending are cut at the deadline, the rest were refused at once.
    let agent = &mut c.machine_mut("web-1").agent;
    agent.wait_for(Duration::from_secs(15), |line| {
        line.contains("did not complete the end-to-end handshake within 5 s")
            .then_some(())
    });
    drop(held);
    runtime.block_on(async {
        for connection in connections {
            connection.close_now().await;
        }
    });
}

/// A TCP source on loopback that writes to every connection until the peer goes away.
fn endless_source() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let chunk = vec![0x5a_u8; 64 * 1024];
                while stream.write_all(&chunk).is_ok() {}
            });
        }
    });
    port
}

/// `cmdop connect exec web-1 -- echo WORD` as client `client`: whether it printed just `WORD` and exited 0
/// (with what it said otherwise), and how long it took.
fn exec_as(c: &Contour, client: &str, word: &str) -> (Result<(), String>, Duration) {
    let started = Instant::now();
    let out = run(c
        .cli_with_key(client, &c.member_key("prod"))
        .args(["connect", "exec", "web-1", "--", "echo", word]));
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(0) && stdout == format!("{word}\n") {
        (Ok(()), took)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        (Err(format!("{}: {stdout}{stderr}", out.status)), took)
    }
}

/// Lab finding L1: forwarded connections whose reader never reads. Each stream's unread data waits at the
/// relay up to the stream's window; when the connection between agent and relay allowed less than all of its
/// streams' windows together, a few such streams took all of it, and nothing else moved on that connection,
/// the agent's control stream and every other client's streams included (the relay then dropped the agent
/// for missed heartbeats, and the stuck streams kept the connection wedged until the agent restarted). Now the
/// connection's windows cover every stream's: another client's `exec` runs beside them, and again after.
#[test]
fn unread_forwarded_streams_do_not_starve_the_machine_for_others() {
    const UNREAD: usize = 48;
    let c = Contour::with_machine();
    let source = endless_source();
    let mut forward = c.cli_with_key("alice", &c.member_key("prod"));
    forward.args([
        "connect",
        "forward",
        "web-1",
        &format!("0:127.0.0.1:{source}"),
    ]);
    let mut forward = Daemon::spawn(forward);
    let port: u16 = forward.wait_for(Duration::from_secs(30), |line| {
        line.strip_prefix("forwarding 127.0.0.1:")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    // Connections that are never read: 48 streams' windows are far more than what the connection between
    // agent and relay used to allow in all.
    let held: Vec<TcpStream> = (0..UNREAD)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // Let every window fill.
    std::thread::sleep(Duration::from_secs(3));
    for round in 0..3 {
        let (served, took) = exec_as(&c, "bob", &format!("served-{round}"));
        eprintln!("exec beside {UNREAD} unread forwarded streams took {took:?}");
        served.unwrap();
    }
    drop(held);
    drop(forward);
    exec_as(&c, "bob", "after").0.unwrap();
}
