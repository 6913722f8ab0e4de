//! The public client library as another Rust tool uses it: cmdop-client's `examples/exec.rs` (the same code as
//! its crate-level doc example) against a real relay and agent.

use std::path::Path;
use std::process::{Command, Output};

use cmdop_tests::{Contour, OneMachine};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `exec RELAY FINGERPRINT API_KEY_FILE MACHINE COMMAND…`, run in `dir` (where it pins machine keys).
fn example(contour: &Contour, dir: &Path, key: &Path, machine: &str, command: &[&str]) -> Output {
    std::fs::create_dir_all(dir).unwrap();
    let mut example: Command = cmdop_tests::command("examples/exec");
    example
        .current_dir(dir)
        .args([&contour.address, &contour.fingerprint])
        .arg(key)
        .arg(machine)
        .args(command);
    cmdop_tests::run(&mut example)
}

#[test]
fn the_client_library_example_lists_the_fleet_and_runs_a_command() {
    let contour = Contour::start();
    let OneMachine {
        agent: _agent,
        machine_id,
        member_key,
    } = contour.one_machine();
    let dir = contour.root.path().join("tool");

    let out = example(
        &contour,
        &dir,
        &member_key,
        "web-1",
        &["sh", "-c", "echo from-web-1; echo to-err >&2; exit 7"],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    // The listing first, then the command's own output, each stream kept apart.
    assert_eq!(
        text(&out.stdout),
        format!("web-1 {machine_id} online=true\nfrom-web-1\n")
    );
    assert_eq!(text(&out.stderr), "to-err\n");
    // The machine's key was pinned on first contact, in the tool's working directory.
    let pinned = std::fs::read_to_string(dir.join("known_machines")).unwrap();
    assert!(
        pinned.contains(&format!(" web-1 {machine_id} ")),
        "{pinned}"
    );

    // A second run checks the key against that pin and succeeds.
    let out = example(&contour, &dir, &member_key, "web-1", &["true"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(dir.join("known_machines")).unwrap(),
        pinned
    );

    // A name that matches nothing is the library's typed error; `main` returning it prints its Debug form.
    let out = example(&contour, &dir, &member_key, "nowhere", &["true"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("Error: MachineNotFound(") && stderr.contains("nowhere"),
        "{stderr}"
    );
}
