//! A locked fleet through the real binaries: the admin locks it from a client, machines are reachable only
//! once certified (by an admin after the fingerprint check, or by an enrolment key), members only with a
//! member certificate whose role allows the operation, revocations bite at once, and disabling the lock needs
//! an admin's signature.

use std::process::Output;

use cmdop_tests::Contour;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `cmdop connect exec MACHINE -- touch MARKER` as `client`; returns the output and whether the command ran.
fn touch(
    c: &Contour,
    client: &str,
    key: &std::path::Path,
    machine: &str,
    marker: &str,
) -> (Output, bool) {
    let path = c.root.path().join(marker);
    let out = cmdop_tests::run(
        c.cli_with_key(client, key)
            .args(["connect", "exec", machine, "--", "touch"])
            .arg(&path),
    );
    (out, path.exists())
}

fn assert_refused(out: &Output, ran: bool, why: &str) {
    assert!(!ran, "the command ran: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(why),
        "expected {why:?} in: {}",
        text(&out.stderr)
    );
}

#[test]
fn only_certified_machines_and_members_with_the_right_role_get_through() {
    let c = Contour::builder()
        .fleet("prod")
        .agent("web-1", "prod")
        .start();
    let member = c.member_key("prod");
    // Unlocked: as today.
    assert!(touch(&c, "alice", &member, "web-1", "before").1);

    let fleet_key = c.lock_fleet("prod", "admin");
    assert!(fleet_key.starts_with("SHA256:"), "{fleet_key}");
    c.trust_fleet("alice", &member, "prod", &fleet_key);
    // Locked, the machine is not certified yet: the relay says so, and a client would refuse anyway.
    let (out, ran) = touch(&c, "alice", &member, "web-1", "uncertified");
    assert_refused(&out, ran, "no valid certificate");

    c.certify("admin", "prod", "web-1");
    // Certified machine, but alice is no member: the agent refuses inside the channel.
    let (out, ran) = touch(&c, "alice", &member, "web-1", "no-member");
    assert_refused(&out, ran, "no member certificate");

    c.add_member("admin", "prod", "alice", &member, "member", &fleet_key);
    let (out, ran) = touch(&c, "alice", &member, "web-1", "member");
    assert!(ran, "{}", text(&out.stderr));

    // A viewer may list sessions, not run commands.
    c.add_member("admin", "prod", "bob", &member, "viewer", &fleet_key);
    let (out, ran) = touch(&c, "bob", &member, "web-1", "viewer");
    assert_refused(&out, ran, "a viewer may not open exec streams");
    let sessions = cmdop_tests::run(
        c.cli_with_key("bob", &member)
            .args(["connect", "sessions", "web-1"]),
    );
    assert!(sessions.status.success(), "{}", text(&sessions.stderr));

    // Revoking alice's key reaches the agent at once.
    let alice = c.client_fingerprint("alice", &member);
    c.lock_admin_ok("admin", "prod", &["revoke", &alice]);
    let (out, ran) = touch(&c, "alice", &member, "web-1", "revoked");
    assert_refused(&out, ran, "revoked");

    // Status verifies and shows it all.
    let status: serde_json::Value =
        serde_json::from_str(&c.lock_admin_ok("admin", "prod", &["status", "--json"])).unwrap();
    assert_eq!(status["fleet_key"], fleet_key.as_str());
    assert_eq!(status["locked"], true);
    assert_eq!(status["machines"][0]["hostname"], "web-1");
    assert_eq!(status["machines"][0]["status"], "valid");
    assert_eq!(status["revoked"], serde_json::json!([alice]));
    // Members are listed by key fingerprint, which is random per run.
    let mut roles: Vec<&str> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    roles.sort_unstable();
    assert_eq!(roles, ["member", "viewer"]);
}

#[test]
fn an_enrolment_key_certifies_as_many_machines_as_it_allows() {
    let mut c = Contour::builder().fleet("prod").start();
    let fleet_key = c.lock_fleet("prod", "admin");
    let member = c.member_key("prod");
    c.add_member(
        "admin",
        "prod",
        "admin",
        &c.admin_key("prod"),
        "admin",
        &fleet_key,
    );
    c.add_member("admin", "prod", "alice", &member, "member", &fleet_key);
    let key = c.enrolment_key(
        "admin",
        "prod",
        "enrol.key",
        &["--uses", "1", "--ttl", "10m"],
    );
    let key = key.display().to_string();
    c.add_machine("web-2", "prod", &["--enrol-key-file", &key]);
    let out = cmdop_tests::eventually(
        std::time::Duration::from_secs(10),
        "web-2 certified",
        || {
            let (out, ran) = touch(&c, "alice", &member, "web-2", "enrolled");
            ran.then_some(out)
        },
    );
    assert!(out.status.success());
    // The key allowed one machine: a second agent with it stays uncertified.
    c.add_machine("web-3", "prod", &["--enrol-key-file", &key]);
    let (out, ran) = touch(&c, "alice", &member, "web-3", "second");
    assert_refused(&out, ran, "no valid certificate");
    let status: serde_json::Value =
        serde_json::from_str(&c.lock_admin_ok("admin", "prod", &["status", "--json"])).unwrap();
    let signer = status["machines"][0]["signed_by"].as_str().unwrap();
    assert!(signer.starts_with("enrolment key SHA256:"), "{signer}");
    assert_eq!(status["enrolment_keys"][0]["used"], 1);
    assert_eq!(status["enrolment_keys"][0]["certificates_seen"], 1);
}

#[test]
fn disabling_the_lock_needs_an_admin_key_and_restores_plain_access() {
    let c = Contour::builder()
        .fleet("prod")
        .agent("web-1", "prod")
        .start();
    let member = c.member_key("prod");
    let fleet_key = c.lock_fleet("prod", "admin");
    c.trust_fleet("alice", &member, "prod", &fleet_key);
    // Another client holding an admin API key but not the fleet's admin key cannot disable it; admin verbs
    // need the fleet key pinned first.
    let out = c.lock_admin("mallory", "prod", &["disable"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("has not pinned the fleet key"),
        "{}",
        text(&out.stderr)
    );
    c.trust_fleet("mallory", &c.admin_key("prod"), "prod", &fleet_key);
    let out = c.lock_admin("mallory", "prod", &["disable"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("holds no admin key"),
        "{}",
        text(&out.stderr)
    );
    let (out, ran) = touch(&c, "alice", &member, "web-1", "locked");
    assert_refused(&out, ran, "no valid certificate");
    c.lock_admin_ok("admin", "prod", &["disable"]);
    let (out, ran) = touch(&c, "alice", &member, "web-1", "unlocked");
    assert!(ran, "{}", text(&out.stderr));
    // A second admin key joins through the relay by fingerprint, and can lock again.
    let offered = c.lock_admin_ok("second", "prod", &["init"]);
    let second = offered
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:") && !w.starts_with(&fleet_key))
        .unwrap_or_else(|| panic!("{offered}"))
        .to_owned();
    c.lock_admin_ok("admin", "prod", &["add-admin", &second]);
    c.lock_admin_ok("second", "prod", &["init"]);
    let (out, ran) = touch(&c, "alice", &member, "web-1", "relocked");
    assert_refused(&out, ran, "no valid certificate");
}

/// Catalog V2, an offline agent learns of a revocation before it serves anything: alice is revoked while
/// web-1's agent is down; when it comes back (same identity, same pinned lock), the relay hands it the new list
/// with its registration, and alice's very first stream is refused, while another member still gets through.
#[test]
fn an_agent_that_was_offline_during_a_revocation_refuses_the_revoked_key_from_its_first_stream() {
    let mut c = Contour::builder()
        .fleet("prod")
        .agent("web-1", "prod")
        .start();
    let member = c.member_key("prod");
    let fleet_key = c.lock_fleet("prod", "admin");
    c.trust_fleet("alice", &member, "prod", &fleet_key);
    c.trust_fleet("carol", &member, "prod", &fleet_key);
    c.certify("admin", "prod", "web-1");
    c.add_member("admin", "prod", "alice", &member, "member", &fleet_key);
    c.add_member("admin", "prod", "carol", &member, "member", &fleet_key);
    assert!(touch(&c, "alice", &member, "web-1", "before").1);

    c.machine_mut("web-1").agent.kill();
    let alice = c.client_fingerprint("alice", &member);
    c.lock_admin_ok("admin", "prod", &["revoke", &alice]);
    c.add_machine("web-1", "prod", &[]);

    let (out, ran) = touch(&c, "alice", &member, "web-1", "after");
    // The machine's own refusal, inside the channel: the agent applied the list before serving.
    assert_refused(
        &out,
        ran,
        "the machine closed the stream (Denied): member certificate refused: the member certificate relies on the revoked key",
    );
    let (out, ran) = touch(&c, "carol", &member, "web-1", "carol");
    assert!(ran, "{}", text(&out.stderr));
}
