//! The `cmdop-relay` binary: admin verbs on a real data dir, and verbs taking effect on a running server.

// Test helpers outside #[test] functions panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cmdop_client::{AgentConnection, AgentRegistration, ClientError, RelayTarget};
use cmdop_fleet::CredentialSecret;
use cmdop_identity::Identity;
use rand_core::OsRng;
use zeroize::Zeroizing;

fn relay(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmdop-relay"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("CMDOP_RELAY_DATA_DIR")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn ok(data: &Path, args: &[&str]) -> String {
    let output = relay(data, args);
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn credential_id(text: &str) -> String {
    CredentialSecret::parse(text).unwrap().id().to_string()
}

struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn admin_verbs_manage_fleets_credentials_and_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    assert!(ok(&data, &["fleet", "create", "prod"]).contains("created fleet prod"));
    ok(&data, &["fleet", "create", "dev"]);
    let duplicate = relay(&data, &["fleet", "create", "prod"]);
    assert!(!duplicate.status.success());
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));
    let fleets = ok(&data, &["fleet", "list"]);
    assert!(fleets.contains("prod") && fleets.contains("dev"));

    let key = ok(
        &data,
        &[
            "key",
            "create",
            "--fleet",
            "prod",
            "--role",
            "agent",
            "--expires",
            "30d",
            "--label",
            "ci",
        ],
    );
    let key = key.trim();
    assert!(key.starts_with("cmdop_ak_"), "{key}");
    let key_id = &credential_id(key);
    let listed = ok(&data, &["key", "list", "--fleet", "prod"]);
    assert!(
        listed.contains(key_id) && listed.contains("agent") && listed.contains("ci"),
        "{listed}"
    );
    assert!(!listed.contains(key), "the secret must never be listed");
    let bad = relay(
        &data,
        &[
            "key",
            "create",
            "--fleet",
            "prod",
            "--role",
            "agent",
            "--expires",
            "soon",
        ],
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid duration"));

    ok(&data, &["user", "create", "alice"]);
    let token = ok(
        &data,
        &[
            "token",
            "create",
            "--user",
            "alice",
            "--fleet",
            "prod",
            "--fleet",
            "dev",
            "--expires",
            "12h",
        ],
    );
    let token_id = credential_id(token.trim());
    assert!(ok(&data, &["key", "list"]).contains(&token_id));
    ok(&data, &["token", "revoke", &token_id]);
    assert!(ok(&data, &["key", "list", "--fleet", "dev"]).contains("revoked"));
    ok(&data, &["key", "revoke", key_id]);

    let machines: serde_json::Value =
        serde_json::from_str(&ok(&data, &["machines", "list", "--json"])).unwrap();
    assert_eq!(machines, serde_json::json!([]));
    let audit: serde_json::Value = serde_json::from_str(&ok(&data, &["audit", "--json"])).unwrap();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "fleet.create",
            "fleet.create",
            "key.create",
            "user.create",
            "token.create",
            "revoke",
            "revoke"
        ]
    );
    let prod_audit = ok(&data, &["audit", "--fleet", "prod"]);
    assert!(prod_audit.contains("key.create") && !prod_audit.contains("fleet dev"));

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}

#[tokio::test]
async fn verbs_take_effect_on_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    ok(&data, &["fleet", "create", "prod"]);
    let key_text = ok(
        &data,
        &["key", "create", "--fleet", "prod", "--role", "agent"],
    )
    .trim()
    .to_owned();
    let key_id = credential_id(&key_text);

    let mut child = Command::new(env!("CARGO_BIN_EXE_cmdop-relay"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _serving = Serving(child);
    let mut lines = BufReader::new(stdout).lines();
    let fingerprint_line = lines.next().unwrap().unwrap();
    let listening_line = lines.next().unwrap().unwrap();
    let fingerprint = fingerprint_line
        .strip_prefix("relay fingerprint: ")
        .unwrap()
        .to_owned();
    let addr = listening_line
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    assert_eq!(ok(&data, &["fingerprint"]).trim(), fingerprint);

    let target = RelayTarget::new(addr, fingerprint.parse().unwrap());
    let registration = AgentRegistration {
        api_key: Zeroizing::new(key_text),
        workspace: "prod".into(),
        hostname: "web-1".into(),
        display_name: None,
        os: "linux".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
        labels: vec![],
    };
    let agent = AgentConnection::register(&target, &Identity::generate(&mut OsRng), &registration)
        .await
        .unwrap();
    let machines: serde_json::Value = serde_json::from_str(&ok(
        &data,
        &["machines", "list", "--fleet", "prod", "--json"],
    ))
    .unwrap();
    let machine = &machines[0];
    assert_eq!(machine["id"], agent.machine_id().to_string());
    assert_eq!(machine["online"], true);
    for field in ["hostname", "name", "fingerprint", "last_seen", "os", "arch"] {
        assert!(!machine[field].is_null(), "{field} missing: {machine}");
    }

    let id = agent.machine_id().to_string();
    ok(&data, &["machine", "rename", &id, "frontend"]);
    assert!(ok(&data, &["machines", "list"]).contains("frontend"));

    // Revocation from another process cuts the live agent within a second.
    let started = Instant::now();
    ok(&data, &["key", "revoke", &key_id]);
    let reason = tokio::time::timeout(Duration::from_millis(1500), agent.closed())
        .await
        .expect("not cut");
    assert!(
        matches!(reason, ClientError::CredentialRevoked(_)),
        "{reason:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
    let audit = ok(&data, &["audit"]);
    assert!(
        audit.contains("disconnect") && audit.contains("rename") && audit.contains("register"),
        "{audit}"
    );
}

/// A provisioning script right after `systemctl start`: `serve` and admin verbs start at the same moment on a
/// fresh data dir, a few hundred times. Every verb succeeds, the relay comes up, and what the verbs created is
/// there afterwards.
#[test]
fn serve_and_admin_verbs_started_together_on_a_fresh_data_dir_never_fail() {
    const ROUNDS: usize = 200;
    let spawn = |data: &Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cmdop-relay"))
            .args(args)
            .arg("--data-dir")
            .arg(data)
            .env_remove("CMDOP_RELAY_DATA_DIR")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let started = Instant::now();
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("relay");
        let mut serve = Serving(spawn(&data, &["serve", "--listen", "127.0.0.1:0"]));
        let fleet = spawn(&data, &["fleet", "create", "prod"]);
        let user = spawn(&data, &["user", "create", "alice"]);
        for (what, child) in [("fleet create", fleet), ("user create", user)] {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "round {round}: {what} failed beside a starting serve: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let stdout = serve.0.stdout.take().unwrap();
        let listening = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.starts_with("listening on "));
        if !listening {
            let _ = serve.0.kill();
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut serve.0.stderr.take().unwrap(), &mut stderr)
                .unwrap();
            panic!("round {round}: serve did not come up beside the admin verbs: {stderr}");
        }
        assert!(
            ok(&data, &["fleet", "list"]).contains("prod"),
            "round {round}"
        );
        // The user exists too: a token can be made for it.
        ok(
            &data,
            &["token", "create", "--user", "alice", "--fleet", "prod"],
        );
    }
    eprintln!("{ROUNDS} rounds in {:?}", started.elapsed());
}
