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

#[test]
fn one_fingerprint_form_is_shown_and_the_old_one_still_pins() {
    let contour = Contour::with_machine();
    // The relay prints its certificate fingerprint like every key fingerprint: SHA256:<base64>.
    assert!(
        contour.fingerprint.starts_with("SHA256:") && contour.fingerprint.len() == 7 + 43,
        "{}",
        contour.fingerprint
    );
    let printed = cmdop_tests::run_ok(
        cmdop_tests::command("cmdop-relay")
            .arg("fingerprint")
            .arg("--data-dir")
            .arg(contour.data_dir()),
    );
    assert_eq!(printed.trim(), contour.fingerprint);
    // The form earlier relays printed (and saved logins and agent configs hold) still pins the same relay.
    let digest = cmdop_identity_digest(&contour.fingerprint);
    let old = format!("sha256:{}", hex::encode(digest));
    let mut command = cmdop_tests::command("cmdop");
    command
        .arg("--config-dir")
        .arg(contour.root.path().join("clients/old"))
        .args([
            "--relay",
            &contour.address,
            "--relay-fingerprint",
            &old,
            "--api-key-file",
        ])
        .arg(contour.member_key("prod"))
        .args(["connect", "--list", "--json"]);
    let listed: Vec<Value> = serde_json::from_str(&cmdop_tests::run_ok(&mut command)).unwrap();
    // Machine keys are shown the same way, and the audit log names keys by that fingerprint too.
    let fingerprint = listed[0]["fingerprint"].as_str().unwrap();
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    let audit = String::from_utf8(contour.admin(&["audit"]).stdout).unwrap();
    assert!(
        audit.contains(&format!("agent key {fingerprint}")),
        "{audit}"
    );
}

/// The digest a `SHA256:<base64>` fingerprint names.
fn cmdop_identity_digest(text: &str) -> Vec<u8> {
    data_encoding::BASE64_NOPAD
        .decode(text.strip_prefix("SHA256:").unwrap().as_bytes())
        .unwrap()
}

#[test]
fn login_repin_follows_a_rotated_certificate_without_the_token() {
    let mut contour = Contour::builder()
        .fleet("prod")
        .agent("web-1", "prod")
        .user("alice", &["prod"])
        .start();
    let cli = |contour: &Contour| {
        let mut command = cmdop_tests::command("cmdop");
        command
            .arg("--config-dir")
            .arg(contour.root.path().join("clients/alice"));
        command
    };
    let login = run(cli(&contour)
        .args([
            "login",
            "--relay",
            &contour.address,
            "--relay-fingerprint",
            &contour.fingerprint,
            "--token-file",
        ])
        .arg(contour.token_file("alice")));
    assert!(login.status.success(), "{}", stderr(&login));

    // The operator rotates the certificate: a new one is generated when the old is gone.
    contour.kill_relay();
    for file in ["relay-cert.pem", "relay-key.pem"] {
        std::fs::remove_file(contour.data_dir().join(file)).unwrap();
    }
    let mut serve = cmdop_tests::command("cmdop-relay");
    serve
        .args(["serve", "--data-dir"])
        .arg(contour.data_dir())
        .args(["--listen", &contour.address]);
    let mut relay = cmdop_tests::Daemon::spawn(serve);
    let rotated = relay.wait_for(Duration::from_secs(30), |line| {
        line.strip_prefix("relay fingerprint: ").map(str::to_owned)
    });
    contour.relay = Some(relay);
    assert_ne!(rotated, contour.fingerprint);

    // The saved pin refuses the new certificate (exit 6) and says how to re-pin.
    let refused = run(cli(&contour).args(["connect", "--list"]));
    assert_eq!(refused.status.code(), Some(6), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("cmdop login --repin"),
        "{}",
        stderr(&refused)
    );
    // `--repin` alone shows what the relay presents now, and pins nothing.
    let shown = run(cli(&contour).args(["login", "--repin"]));
    assert_eq!(shown.status.code(), Some(6));
    assert!(stderr(&shown).contains(&rotated), "{}", stderr(&shown));
    // With the new fingerprint (from `cmdop-relay fingerprint`), the saved credential is kept: no token.
    let repinned = run(cli(&contour).args(["login", "--repin", "--relay-fingerprint", &rotated]));
    assert!(repinned.status.success(), "{}", stderr(&repinned));
    let listed = run(cli(&contour).args(["connect", "--list", "--json"]));
    assert!(listed.status.success(), "{}", stderr(&listed));
}
