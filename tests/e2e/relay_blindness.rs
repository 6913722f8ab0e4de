//! What the relay can and cannot do to a session: it sees only ciphertext, and cutting a stream is reported as
//! a cut, never as success.

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmdop_relay::server::{Server, ServerConfig, Tap};
use cmdop_relay::tls::TlsIdentity;
use cmdop_tests::Contour;
use data_encoding::{BASE64, BASE64_NOPAD, BASE64URL_NOPAD};
use rand::RngCore as _;

#[test]
fn a_marker_sent_through_exec_never_appears_in_what_the_relay_forwarded() {
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The relay runs in this process, so that a tap can record every byte it forwards.
    let tapped_relay = |data_dir: &Path| {
        let seen = Arc::clone(&seen);
        let (tls, _) = TlsIdentity::load_or_generate(data_dir).unwrap();
        let mut config =
            ServerConfig::new(data_dir.to_owned(), "127.0.0.1:0".parse().unwrap(), tls);
        config.tap = Some(Tap(Arc::new(move |bytes: &[u8]| {
            seen.lock().unwrap().extend_from_slice(bytes)
        })));
        let server = runtime.block_on(async { Server::bind(config) }).unwrap();
        let address = server.local_addr().unwrap().to_string();
        let fingerprint = server.fingerprint().to_string();
        runtime.spawn(server.run(std::future::pending()));
        (address, fingerprint)
    };
    let contour = Contour::builder_in_process(tapped_relay)
        .fleet("prod")
        .agent("web-1", "prod")
        .start();

    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let marker = hex::encode(bytes);
    // The marker travels as an argument, on stdin, and back on stdout (twice: echoed and cat'ed).
    let mut exec = contour.cli_with_key("alice", &contour.member_key("prod"));
    exec.args([
        "connect",
        "exec",
        "web-1",
        "--",
        "sh",
        "-c",
        "echo \"$0\"; cat",
        &marker,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    let mut child = exec.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{marker}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{marker}\n{marker}\n")
    );

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() > 200,
        "the tap saw the stream ({} bytes)",
        seen.len()
    );
    let forms = [
        marker.clone().into_bytes(),
        marker.to_uppercase().into_bytes(),
        bytes.to_vec(),
        BASE64.encode(marker.as_bytes()).into_bytes(),
        BASE64_NOPAD.encode(&bytes).into_bytes(),
        BASE64URL_NOPAD.encode(&bytes).into_bytes(),
        hex::encode(marker.as_bytes()).into_bytes(),
    ];
    for form in forms {
        let found = seen
            .windows(form.len())
            .any(|window| window == form.as_slice());
        assert!(
            !found,
            "the relay saw the marker in the form {:?}",
            String::from_utf8_lossy(&form)
        );
    }
}

#[test]
fn an_exec_cut_by_a_dying_relay_never_reports_success() {
    let mut contour = Contour::with_machine();
    let mut exec = contour.cli_with_key("alice", &contour.member_key("prod"));
    exec.args([
        "connect",
        "exec",
        "web-1",
        "--",
        "sh",
        "-c",
        "echo started; sleep 5; echo finished",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = exec.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    contour.kill_relay();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(255),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("finished"));
}

#[test]
fn ctrl_c_on_the_client_interrupts_the_remote_command() {
    let contour = Contour::with_machine();
    let mut exec = contour.cli_with_key("alice", &contour.member_key("prod"));
    exec.args([
        "connect",
        "exec",
        "web-1",
        "--timeout",
        "0",
        "--",
        "sh",
        "-c",
        "echo ready; exec sleep 100",
    ])
    .stdout(Stdio::piped());
    let mut child = exec.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "SIGINT reached the remote sleep, which died of it"
    );
}
