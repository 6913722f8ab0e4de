//! Boundaries as a user meets them: fleets that never see each other, credentials that do only what they
//! were issued for, revocation that cuts live connections, and a relay whose certificate is pinned.

use std::process::Output;
use std::time::{Duration, Instant};

use cmdop_tests::{Contour, online_id, run};
use serde_json::Value;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_key_of_one_fleet_sees_nothing_of_another() {
    let contour = Contour::builder()
        .fleet("alpha")
        .fleet("beta")
        .agent("a-web", "alpha")
        .agent("b-web", "beta")
        .start();
    let alpha_member = contour.member_key("alpha");

    let visible = contour.list("alice", &alpha_member, None);
    let ids: Vec<&Value> = visible.iter().map(|m| &m["id"]).collect();
    assert_eq!(ids, [&Value::from(contour.machine("a-web").id.as_str())]);

    // Asking for beta with an alpha key looks exactly like asking for a fleet that does not exist.
    let list_fleet = |fleet: &str| {
        run(contour.cli_with_key("alice", &alpha_member).args([
            "connect",
            "--workspace",
            fleet,
            "--list",
        ]))
    };
    let beta = list_fleet("beta");
    let nowhere = list_fleet("nowhere");
    assert_eq!(beta.status.code(), Some(4), "{}", stderr(&beta));
    assert_eq!(beta.status.code(), nowhere.status.code());
    assert_eq!(
        stderr(&beta).replace("beta", "X"),
        stderr(&nowhere).replace("nowhere", "X")
    );

    // An agent key of alpha cannot enrol into beta.
    let mut intruder = contour.agent("sneaky", "beta", &contour.agent_key("alpha"), &[]);
    let status = intruder.child.wait().unwrap();
    assert!(!status.success());
    assert!(
        !intruder.output().contains("online: machine"),
        "{}",
        intruder.output()
    );
}

#[test]
fn a_token_reaches_only_its_fleets_and_an_agent_key_cannot_list() {
    let contour = Contour::builder()
        .fleet("alpha")
        .fleet("beta")
        .user("bob", &["alpha"])
        .start();
    let token = contour.token_file("bob");

    let mut refused = contour.cli_with_key("bob", token);
    refused.args(["connect", "--workspace", "beta", "--list"]);
    let refused = run(&mut refused);
    assert_eq!(refused.status.code(), Some(4), "{}", stderr(&refused));
    assert!(contour.list("bob", token, Some("alpha")).is_empty());

    let listing = run(contour
        .cli_with_key("bob", &contour.agent_key("alpha"))
        .args(["connect", "--list"]));
    assert_eq!(listing.status.code(), Some(3), "{}", stderr(&listing));
}

#[test]
fn a_revoked_key_is_cut_within_a_second_and_refused_afterwards() {
    let contour = Contour::builder().fleet("prod").start();
    let (agent_key_id, agent_key) = contour.api_key("prod", "agent");
    let mut agent = contour.agent("web-1", "prod", &agent_key, &[]);
    online_id(&mut agent);

    let revoked_at = Instant::now();
    contour.admin(&["key", "revoke", &agent_key_id]);
    let status = agent.child.wait().unwrap();
    let cut_after = revoked_at.elapsed();
    assert!(!status.success(), "a revoked agent stops with an error");
    // The relay promises one second; the margin covers process start-up of the admin verb.
    assert!(
        cut_after < Duration::from_millis(1500),
        "agent cut after {cut_after:?}"
    );
    assert!(agent.output().contains("revoked"), "{}", agent.output());

    let mut again = contour.agent("web-1", "prod", &agent_key, &[]);
    let status = again.child.wait().unwrap();
    assert!(!status.success());
    assert!(!again.output().contains("online: machine"));
}

#[test]
fn an_expired_key_is_refused() {
    let contour = Contour::builder().fleet("prod").start();
    let output = contour.admin(&[
        "key",
        "create",
        "--fleet",
        "prod",
        "--role",
        "member",
        "--expires",
        "1s",
    ]);
    let key = contour.secret_file(
        "short.key",
        String::from_utf8(output.stdout).unwrap().trim(),
    );
    std::thread::sleep(Duration::from_millis(2100));
    let listing = run(contour
        .cli_with_key("carol", &key)
        .args(["connect", "--list"]));
    assert_eq!(listing.status.code(), Some(3), "{}", stderr(&listing));
}

#[test]
fn a_wrong_relay_fingerprint_fails_before_any_credential_is_sent() {
    let contour = Contour::builder().fleet("prod").start();
    let member_key = contour.member_key("prod");
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let mut command = cmdop_tests::command("cmdop");
    command
        .arg("--config-dir")
        .arg(contour.root.path().join("clients/mallory"))
        .args([
            "--relay",
            &contour.address,
            "--relay-fingerprint",
            &wrong,
            "--api-key-file",
        ])
        .arg(&member_key)
        .args(["connect", "--list"]);
    let output = run(&mut command);
    assert_eq!(output.status.code(), Some(6), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("fingerprint mismatch"),
        "{}",
        stderr(&output)
    );

    // The relay saw no authentication attempt at all: the audit log holds none.
    let audit = contour.admin(&["audit", "--json"]);
    let audit: Vec<Value> = serde_json::from_slice(&audit.stdout).unwrap();
    let attempts: Vec<&Value> = audit
        .iter()
        .filter(|e| e.to_string().to_lowercase().contains("auth"))
        .collect();
    assert!(attempts.is_empty(), "{attempts:#?}");
}
