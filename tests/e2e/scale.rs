//! A thousand agents on the real relay, the CI-sized run of `cargo xtask bench scale`: the `swarm` example
//! (one process, each agent the agent library's own presence loop with its own identity and connection)
//! registers them all, a member lists them all (more than one frame holds), the relay is killed with SIGKILL
//! and restarted, and every agent comes back by itself without one giving up.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cmdop_tests::{Contour, bin_dir};
use serde_json::Value;

const AGENTS: usize = 1_000;
/// Generous for a loaded CI machine: the registrations and the storm each take seconds when it is idle.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

/// The swarm's JSON events, by a reader thread.
fn next_event(events: &mpsc::Receiver<Value>, name: &str) -> Value {
    loop {
        let event = events
            .recv_timeout(PHASE_TIMEOUT)
            .unwrap_or_else(|_| panic!("no `{name}` from the swarm within {PHASE_TIMEOUT:?}"));
        assert_ne!(event["event"], "gave_up", "an agent gave up: {event}");
        if event["event"] == name {
            return event;
        }
    }
}

fn tell(stdin: &mut ChildStdin, command: &str) {
    writeln!(stdin, "{command}").unwrap();
    stdin.flush().unwrap();
}

#[test]
fn a_thousand_agents_register_are_listed_and_all_come_back_after_the_relay_is_killed() {
    let mut contour = Contour::builder().fleet("prod").start();
    let agent_key = contour.agent_key("prod");
    let member_key = contour.member_key("prod");
    let mut swarm = std::process::Command::new(bin_dir().join("examples").join("swarm"))
        .args(["--relay", &contour.address])
        .args(["--relay-fingerprint", &contour.fingerprint])
        .args(["--workspace", "prod", "--api-key-file"])
        .arg(&agent_key)
        .args(["--agents", &AGENTS.to_string(), "--state-dir"])
        .arg(contour.root.path().join("swarm"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = swarm.stdin.take().unwrap();
    let stdout = swarm.stdout.take().unwrap();
    let (sender, events) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<Value>(&line) {
                let _ = sender.send(event);
            }
        }
    });

    let registered = next_event(&events, "registered");
    assert_eq!(registered["agents"], AGENTS);
    let listed = contour.list("alice", &member_key, None);
    assert_eq!(listed.len(), AGENTS);
    assert!(listed.iter().all(|m| m["online"] == true));

    tell(&mut stdin, "kill");
    contour.restart_relay();
    tell(&mut stdin, "restarted");
    let back = next_event(&events, "back");
    assert_eq!(back["agents"], AGENTS);
    assert_eq!(back["gave_up"], 0);
    let listed = contour.list("alice", &member_key, None);
    assert_eq!(
        listed.len(),
        AGENTS,
        "the same machines came back, no new ones"
    );
    assert!(listed.iter().all(|m| m["online"] == true));

    tell(&mut stdin, "quit");
    drop(stdin);
    let _ = swarm.kill();
    let _ = swarm.wait();
}
