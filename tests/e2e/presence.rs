//! A machine appears online, keeps its id across agent restarts and renames, and comes back by itself after
//! the relay restarts.

use std::time::Duration;

use cmdop_tests::{Contour, eventually, online_id, run_ok};
use serde_json::Value;

fn machine<'a>(machines: &'a [Value], id: &str) -> &'a Value {
    machines
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("machine {id} not in {machines:#?}"))
}

#[test]
fn an_agent_registers_and_the_cli_lists_it_online() {
    let mut contour = Contour::builder()
        .fleet("prod")
        .agent_with_args("web-1", "prod", &["--name", "Web One"])
        .start();
    let member_key = contour.member_key("prod");
    let id = contour.machine("web-1").id.clone();

    let machines = contour.list("alice", &member_key, None);
    let web = machine(&machines, &id);
    assert_eq!(web["hostname"], "web-1");
    assert_eq!(web["name"], "Web One");
    assert_eq!(web["online"], true);
    assert_eq!(web["os"], std::env::consts::OS);
    assert_eq!(web["arch"], std::env::consts::ARCH);
    assert!(web["last_seen"].is_string(), "{web}");
    // The fingerprint the relay reports is the one the agent holds.
    let shown = run_ok(
        cmdop_tests::command("cmdop-agent")
            .arg("--config-dir")
            .arg(contour.agent_dir("web-1"))
            .args(["identity", "show", "--json"]),
    );
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(web["fingerprint"], shown["fingerprint"]);

    // A graceful stop takes the machine offline at once, not after three missed heartbeats.
    let agent = &mut contour.machine_mut("web-1").agent;
    nix_terminate(&agent.child);
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "agent exit status {status}");
    let machines = contour.list("alice", &member_key, None);
    assert_eq!(machine(&machines, &id)["online"], false);
    let mut online_only = contour.cli_with_key("alice", &member_key);
    online_only.args(["connect", "--list", "--online", "--json"]);
    let online_only: Vec<Value> = serde_json::from_str(&run_ok(&mut online_only)).unwrap();
    assert!(online_only.is_empty(), "{online_only:#?}");
}

#[test]
fn the_same_key_keeps_its_id_across_restarts_and_renames_and_a_new_key_is_a_new_machine() {
    let contour = Contour::builder().fleet("prod").start();
    let agent_key = contour.agent_key("prod");
    let member_key = contour.member_key("prod");

    let mut agent = contour.agent("db-1", "prod", &agent_key, &[]);
    let first = online_id(&mut agent);
    agent.kill();

    // Restart with another display name: same identity, same id.
    let mut agent = contour.agent("db-1", "prod", &agent_key, &["--name", "primary"]);
    assert_eq!(online_id(&mut agent), first);
    agent.kill();

    // Renamed on the relay, then restarted: still the same id, and the relay's name sticks.
    contour.admin(&["machine", "rename", &first, "main-db"]);
    let mut agent = contour.agent("db-1", "prod", &agent_key, &[]);
    assert_eq!(online_id(&mut agent), first);
    let machines = contour.list("alice", &member_key, None);
    assert_eq!(machine(&machines, &first)["name"], "main-db");
    agent.kill();

    // Another config directory is another key, hence another machine (under another hostname).
    let mut other = contour.agent("db-2", "prod", &agent_key, &[]);
    let second = online_id(&mut other);
    assert_ne!(second, first);
}

#[test]
fn agents_come_back_by_themselves_after_the_relay_restarts() {
    let mut contour = Contour::builder()
        .fleet("prod")
        .agent("a-1", "prod")
        .agent("a-2", "prod")
        .agent("a-3", "prod")
        .start();
    let member_key = contour.member_key("prod");
    let ids: Vec<String> = ["a-1", "a-2", "a-3"]
        .iter()
        .map(|name| contour.machine(name).id.clone())
        .collect();

    contour.restart_relay();

    eventually(
        Duration::from_secs(60),
        "every agent online again after the relay restart",
        || {
            let machines = contour.list("alice", &member_key, None);
            ids.iter()
                .all(|id| machine(&machines, id)["online"] == true)
                .then_some(())
        },
    );
    // They came back as the same machines, not as new ones.
    assert_eq!(contour.list("alice", &member_key, None).len(), 3);
}

#[test]
fn login_saves_the_relay_and_credential_for_later_commands() {
    let contour = Contour::builder()
        .fleet("prod")
        .fleet("staging")
        .user("alice", &["prod", "staging"])
        .agent("stage-1", "staging")
        .start();
    let token_file = contour.token_file("alice");
    let id = &contour.machine("stage-1").id;

    let login = run_ok(
        contour
            .cli("alice")
            .arg("login")
            .arg("--token-file")
            .arg(token_file),
    );
    assert!(login.contains("alice"), "{login}");

    // From now on no relay flags and no credential are needed.
    let bare = || {
        let mut command = cmdop_tests::command("cmdop");
        command
            .arg("--config-dir")
            .arg(contour.root.path().join("clients").join("alice"));
        command
    };
    let status: Value = serde_json::from_str(&run_ok(bare().args(["status", "--json"]))).unwrap();
    assert_eq!(status["relay"], contour.address.as_str());
    assert_eq!(status["fleets"], serde_json::json!(["prod", "staging"]));

    // Two fleets in scope: --workspace is required, and the error lists them.
    let output = bare().args(["connect", "--list"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("prod") && stderr.contains("staging"),
        "{stderr}"
    );

    let listed: Vec<Value> = serde_json::from_str(&run_ok(bare().args([
        "connect",
        "--workspace",
        "staging",
        "--list",
        "--json",
    ])))
    .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());

    // The saved credential is not stored in clear.
    let saved =
        std::fs::read_to_string(contour.root.path().join("clients/alice/client/login.json"))
            .unwrap();
    let secret = std::fs::read_to_string(token_file).unwrap();
    assert!(
        !saved.contains(secret.trim()),
        "login.json holds the token in clear"
    );

    run_ok(bare().arg("logout"));
    let output = bare().args(["connect", "--list"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cmdop login"));
}

fn nix_terminate(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
