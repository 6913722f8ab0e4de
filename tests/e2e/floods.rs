//! Hostile peers that hold a credential: streams opened and never used must not take a machine away from
//! everyone else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cmdop_client::proto::e2e::StreamKind;
use cmdop_client::{ClientConnection, RelayTarget};
use cmdop_identity::Identity;
use cmdop_tests::{Contour, run};

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
