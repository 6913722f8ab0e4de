//! `cmdop connect forward` from the real binaries: a 100 MiB body over 20 parallel curl connections,
//! half-close, per-connection errors that leave the forward running, and the agent's destination policy
//! across the tricky spellings of an address.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cmdop_tests::sshd::Sshd;
use cmdop_tests::{Contour, Daemon};
use sha2::{Digest, Sha256};

const BODY_LEN: usize = 100 * 1024 * 1024;
const PARTS: usize = 20;

/// A deterministic, incompressible body.
fn body() -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut out = Vec::with_capacity(BODY_LEN);
    while out.len() < BODY_LEN {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(BODY_LEN);
    out
}

/// A minimal HTTP/1.0-style server on 127.0.0.1: `GET /part/I` answers the I-th of [`PARTS`] slices of the
/// body, anything else the whole body; one connection per request, closed after the answer.
fn http_server(body: Arc<Vec<u8>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let body = Arc::clone(&body);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    return;
                }
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let slice = match path.strip_prefix("/part/").map(str::parse::<usize>) {
                    Some(Ok(i)) if i < PARTS => {
                        let size = BODY_LEN / PARTS;
                        &body[i * size..(i + 1) * size]
                    }
                    _ => &body[..],
                };
                let mut stream = stream;
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    slice.len()
                );
                let _ = stream.write_all(header.as_bytes());
                let _ = stream.write_all(slice);
            });
        }
    });
    port
}

/// Starts `cmdop connect forward MACHINE SPEC…` with the member key and returns it with the local port of each
/// spec, in order.
fn forward(contour: &Contour, machine: &str, specs: &[String]) -> (Daemon, Vec<u16>) {
    let mut command = contour.cli_with_key("alice", &contour.member_key("prod"));
    command.args(["connect", "forward", machine]).args(specs);
    let mut daemon = Daemon::spawn(command);
    let mut ports = Vec::new();
    for index in 0..specs.len() {
        let port = daemon.wait_for(Duration::from_secs(30), |line| {
            let local = line.strip_prefix("forwarding 127.0.0.1:")?;
            let port: u16 = local.split_whitespace().next()?.parse().ok()?;
            (!ports.contains(&port)).then_some(port)
        });
        assert!(ports.len() == index);
        ports.push(port);
    }
    (daemon, ports)
}

/// Sends a request, half-closes, and reads the whole answer: the way a client that signals the end of its
/// request with FIN talks. A forward that refuses the destination may close the connection before the request
/// is written (EPIPE, reset): that is an empty answer too, which is what a refusal must look like.
fn fetch_half_closed(port: u16, path: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let sent = write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
        .and_then(|()| stream.shutdown(Shutdown::Write));
    let mut answer = Vec::new();
    if sent.is_ok() {
        let _ = stream.read_to_end(&mut answer);
    }
    answer
}

fn curl(port: u16, path: &str, out: &std::path::Path) -> Command {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--fail", "--max-time", "120", "-o"])
        .arg(out)
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .stdout(Stdio::null());
    command
}

#[test]
fn a_100_mib_body_over_20_parallel_curls_half_close_and_per_connection_errors() {
    let contour = Contour::with_machine();
    let body = Arc::new(body());
    let http = http_server(Arc::clone(&body));
    // A port with nothing behind it: bind, note, close.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut forward, ports) = forward(
        &contour,
        "web-1",
        &[
            format!("0:127.0.0.1:{http}"),
            format!("0:127.0.0.1:{closed}"),
        ],
    );
    let (web, dead) = (ports[0], ports[1]);

    // 20 curls in parallel, each one slice; together the whole body, hash-checked.
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..PARTS)
        .map(|i| {
            curl(
                web,
                &format!("/part/{i}"),
                &dir.path().join(format!("part{i}")),
            )
            .spawn()
            .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "{}", forward.output());
    }
    let mut hasher = Sha256::new();
    for i in 0..PARTS {
        hasher.update(std::fs::read(dir.path().join(format!("part{i}"))).unwrap());
    }
    assert_eq!(
        hasher.finalize().as_slice(),
        Sha256::digest(&body[..]).as_slice(),
        "the body arrived changed"
    );

    // A connection to a closed port fails alone, with a message; the forward goes on.
    let mut stream = TcpStream::connect(("127.0.0.1", dead)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(answer.is_empty());
    forward.wait_for(Duration::from_secs(30), |line| {
        (line.contains(&format!("127.0.0.1:{closed}")) && line.contains("cannot connect"))
            .then_some(())
    });

    // Half-close: the request ends with FIN, the whole answer still comes back.
    let answer = fetch_half_closed(web, "/part/3");
    let slice = BODY_LEN / PARTS;
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(answer.ends_with(&body[3 * slice..4 * slice]));
}

#[test]
fn the_destination_policy_holds_across_address_spellings() {
    // A second machine whose agent refuses loopback: every spelling of 127.0.0.1 must be refused there.
    let contour = Contour::builder()
        .fleet("prod")
        .agent("web-1", "prod")
        .agent_with_args(
            "locked-1",
            "prod",
            &["--forward-deny", "127.0.0.0/8", "--forward-deny", "::1"],
        )
        .start();
    let body = Arc::new(vec![b'x'; 1000]);
    let http = http_server(body);

    let allowed = [
        format!("0:127.1:{http}"),
        format!("0:2130706433:{http}"),
        format!("0:[::ffff:127.0.0.1]:{http}"),
        format!("0:0.0.0.0:{http}"),
        format!("0:localhost:{http}"),
    ];
    // (spec, how the host shows in the refusal)
    let refused = [
        ("0:169.254.169.254:80", "169.254.169.254"),
        ("0:[::ffff:169.254.169.254]:80", "::ffff:169.254.169.254"),
        ("0:0xa9fea9fe:80", "0xa9fea9fe"),
        ("0:[fe80::1]:80", "fe80::1"),
        ("0:8.8.8.8:53", "8.8.8.8"),
    ];
    let (mut open, ports) = forward(
        &contour,
        "web-1",
        &[
            allowed.to_vec(),
            refused.iter().map(|(spec, _)| (*spec).to_owned()).collect(),
        ]
        .concat(),
    );
    for (spec, port) in allowed.iter().zip(&ports) {
        let answer = fetch_half_closed(*port, "/");
        assert!(
            answer.starts_with(b"HTTP/1.1 200 OK"),
            "{spec}: {}",
            open.output()
        );
    }
    for ((spec, host), port) in refused.iter().zip(&ports[allowed.len()..]) {
        assert!(
            fetch_half_closed(*port, "/").is_empty(),
            "{spec} reached something"
        );
        open.wait_for(Duration::from_secs(30), |line| {
            (line.contains("not an allowed destination") && line.contains(host)).then_some(())
        });
    }

    let (mut locked_forward, ports) = forward(&contour, "locked-1", &allowed);
    for (spec, port) in allowed.iter().zip(&ports) {
        assert!(
            fetch_half_closed(*port, "/").is_empty(),
            "{spec} passed a loopback deny"
        );
    }
    // Each spelling was refused by the deny list, not by a failed connection.
    cmdop_tests::eventually(Duration::from_secs(30), "five refusals", || {
        let output = locked_forward.output();
        (output.matches("forward_deny").count() == allowed.len()).then_some(())
    });
}

#[test]
fn ssh_works_through_a_forward() {
    let contour = Contour::with_machine();
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(dir.path());
    let (_forward, ports) = forward(&contour, "web-1", &[format!("0:localhost:{}", sshd.port)]);
    // 2 MiB up through ssh's own encryption inside cmdop's; the remote side hashes what it got.
    let payload = body()[..2 << 20].to_vec();
    let mut ssh = sshd
        .ssh()
        .args([
            "-p",
            &ports[0].to_string(),
            "127.0.0.1",
            "echo through-cmdop; sha256sum",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = ssh.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&payload));
    let out = ssh.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = hex::encode(Sha256::digest(&body()[..2 << 20]));
    assert_eq!(stdout, format!("through-cmdop\n{expected}  -\n"));
}

#[test]
fn a_remote_forward_brings_the_machines_connections_back_here() {
    let contour = Contour::with_machine();
    let body = Arc::new(body());
    let http = http_server(Arc::clone(&body));
    let mut command = contour.cli_with_key("alice", &contour.member_key("prod"));
    command
        .args(["connect", "forward", "web-1", "--remote"])
        .arg(format!("0:127.0.0.1:{http}"));
    let mut remote = Daemon::spawn(command);
    let port: u16 = remote.wait_for(Duration::from_secs(30), |line| {
        line.strip_prefix("remote forwarding 127.0.0.1:")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    // The agent listens on the machine's loopback (here, this host); five connections at once come back.
    let slice = BODY_LEN / PARTS;
    let fetches: Vec<_> = (0..5)
        .map(|i| std::thread::spawn(move || (i, fetch_half_closed(port, &format!("/part/{i}")))))
        .collect();
    for fetch in fetches {
        let (i, answer) = fetch.join().unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200 OK"),
            "{}",
            remote.output()
        );
        assert!(
            answer.ends_with(&body[i * slice..(i + 1) * slice]),
            "part {i} changed"
        );
    }
    // Stopping the client (Ctrl-C) stops the machine's listener.
    let status = Command::new("kill")
        .args(["-INT", &remote.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = remote.child.wait().unwrap();
    assert!(exit.success(), "{exit}: {}", remote.output());
    cmdop_tests::eventually(
        Duration::from_secs(30),
        "the remote listener to close",
        || {
            TcpStream::connect(("127.0.0.1", port))
                .is_err()
                .then_some(())
        },
    );
}

/// One line through a forward: connects, sends `line`, half-closes and reads the echo.
fn echo_through(port: u16, line: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(line.as_bytes())?;
    stream.shutdown(Shutdown::Write)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// An echo server on 127.0.0.1 (the machine's side: the agent runs here too).
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buffer = Vec::new();
                let _ = stream.read_to_end(&mut buffer);
                let _ = stream.write_all(&buffer);
            });
        }
    });
    port
}

#[test]
fn a_forward_outlives_a_relay_restart() {
    let mut contour = Contour::with_machine();
    let echo = echo_server();
    let (mut forward, ports) = forward(&contour, "web-1", &[format!("0:localhost:{echo}")]);
    assert_eq!(echo_through(ports[0], "before\n").unwrap(), "before\n");

    contour.restart_relay();
    // The listener stayed; a connection made while cmdop logs in again (and the agent comes back) waits for
    // the machine rather than failing.
    assert_eq!(echo_through(ports[0], "after\n").unwrap(), "after\n");
    let output = forward.output();
    assert!(output.contains("reconnecting"), "{output}");
    assert!(output.contains("reconnected to the relay"), "{output}");
    assert!(
        forward.child.try_wait().unwrap().is_none(),
        "the forward exited:\n{output}"
    );
}

#[test]
fn exit_on_loss_and_a_revoked_credential_stop_the_forward() {
    let mut contour = Contour::with_machine();
    let echo = echo_server();
    // --exit-on-loss: today's behaviour for scripts, exit 5 when the relay goes.
    let mut command = contour.cli_with_key("alice", &contour.member_key("prod"));
    command.args([
        "connect",
        "forward",
        "web-1",
        "--exit-on-loss",
        &format!("0:localhost:{echo}"),
    ]);
    let mut strict = Daemon::spawn(command);
    strict.wait_for(Duration::from_secs(30), |line| {
        line.strip_prefix("forwarding ").map(drop)
    });
    // A restarted relay resets the old connection at the next keep-alive (a killed one leaves it to the 30 s
    // idle timeout).
    contour.restart_relay();
    let status = cmdop_tests::eventually(Duration::from_secs(30), "the forward to exit", || {
        strict.child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(5), "{}", strict.output());

    // A revoked credential cannot be fixed by logging in again: exit 3, as for any refused credential.
    let (key_id, key) = contour.api_key("prod", "member");
    let mut command = contour.cli_with_key("bob", &key);
    command.args([
        "connect",
        "forward",
        "web-1",
        &format!("0:localhost:{echo}"),
    ]);
    let mut revoked = Daemon::spawn(command);
    revoked.wait_for(Duration::from_secs(30), |line| {
        line.strip_prefix("forwarding ").map(drop)
    });
    contour.admin(&["key", "revoke", &key_id]);
    let status = cmdop_tests::eventually(Duration::from_secs(30), "the forward to exit", || {
        revoked.child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(3), "{}", revoked.output());
}
