//! Store tests against a real SQLite file in a temporary directory.

use super::*;

const NOW: u64 = 1_700_000_000;

fn report(hostname: &str) -> MachineReport {
    MachineReport {
        hostname: hostname.into(),
        display_name: None,
        os: "linux".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
    }
}

#[test]
fn survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key_text;
    {
        let store = Store::open(&data).unwrap();
        store.create_fleet("prod", NOW).unwrap();
        let (_, secret) = store
            .create_api_key("prod", KeyRole::Agent, Some("ci"), None, NOW)
            .unwrap();
        key_text = secret.expose_text();
        let principal = store.authenticate(&key_text, NOW).unwrap().unwrap();
        let access = principal.fleet_access(Some("prod")).unwrap();
        store
            .register_machine(&access, &[7; 32], &report("web-1"), NOW)
            .unwrap();
    }
    let store = Store::open(&data).unwrap();
    assert_eq!(store.schema_version().unwrap(), 1);
    assert_eq!(store.fleets().unwrap().len(), 1);
    assert!(store.authenticate(&key_text, NOW).unwrap().is_ok());
    let machines = store.machines(Some("prod")).unwrap();
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0].hostname, "web-1");
    assert!(
        store
            .audit(None)
            .unwrap()
            .iter()
            .any(|a| a.action == "key.create")
    );
}

#[cfg(unix)]
#[test]
fn data_dir_and_db_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    Store::open(&data).unwrap();
    assert_eq!(
        fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        fs::metadata(data.join(DB_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn secrets_are_stored_hashed_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create_fleet("prod", NOW).unwrap();
    let (_, secret) = store
        .create_api_key("prod", KeyRole::Member, None, None, NOW)
        .unwrap();
    drop(store);
    let text = secret.expose_text();
    let secret_part = text.rsplit('_').next().unwrap();
    let raw = fs::read(dir.path().join(DB_FILE)).unwrap();
    let wal = fs::read(dir.path().join("relay.db-wal")).unwrap_or_default();
    for bytes in [raw, wal] {
        assert!(
            !bytes
                .windows(secret_part.len())
                .any(|w| w == secret_part.as_bytes())
        );
    }
}

#[test]
fn authentication_refusals_name_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create_fleet("prod", NOW).unwrap();
    let (_, expired) = store
        .create_api_key("prod", KeyRole::Member, None, Some(NOW - 1), NOW - 100)
        .unwrap();
    let (record, revoked) = store
        .create_api_key("prod", KeyRole::Member, None, None, NOW)
        .unwrap();
    store.revoke(&record.id, NOW).unwrap();
    let (_, good) = store
        .create_api_key("prod", KeyRole::Member, None, None, NOW)
        .unwrap();
    let mut wrong = good.expose_text().to_string();
    wrong.pop();
    wrong.push('_');
    let check = |text: &str| store.authenticate(text, NOW).unwrap().err();
    assert_eq!(check(&expired.expose_text()), Some(AuthRefusal::Expired));
    assert_eq!(check(&revoked.expose_text()), Some(AuthRefusal::Revoked));
    assert_eq!(check("nonsense"), Some(AuthRefusal::Malformed));
    assert_eq!(check(&wrong), Some(AuthRefusal::Malformed));
    // Change the first secret character to another valid base32 character.
    let good_text = good.expose_text().to_string();
    let at = good_text.rfind('_').unwrap() + 1;
    let swapped = if good_text.as_bytes()[at] == b'a' {
        "b"
    } else {
        "a"
    };
    let wrong_secret = format!("{}{swapped}{}", &good_text[..at], &good_text[at + 1..]);
    assert_eq!(check(&wrong_secret), Some(AuthRefusal::WrongSecret));
    let unknown = CredentialSecret::generate(CredentialKind::ApiKey, &mut OsRng).expose_text();
    assert_eq!(check(&unknown), Some(AuthRefusal::Unknown));
    assert_eq!(check(&good.expose_text()), None);
    assert!(!store.credential_usable(&record.id, NOW).unwrap());
}

#[test]
fn scope_is_enforced_by_fleet_access() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    store.create_fleet("a", NOW).unwrap();
    store.create_fleet("b", NOW).unwrap();
    store.create_fleet("c", NOW).unwrap();
    let (_, key_a) = store
        .create_api_key("a", KeyRole::Member, None, None, NOW)
        .unwrap();
    store.create_user("alice", NOW).unwrap();
    let (record, token) = store
        .create_user_token("alice", &["a".into(), "c".into()], None, NOW)
        .unwrap();
    assert_eq!(record.fleets, vec!["a".to_owned(), "c".to_owned()]);

    let key = store
        .authenticate(&key_a.expose_text(), NOW)
        .unwrap()
        .unwrap();
    assert_eq!(key.fleet_access(None).unwrap().fleet().name, "a");
    assert_eq!(
        key.fleet_access(Some("b")),
        Err(ScopeError::NotFound("b".into()))
    );
    assert_eq!(
        key.fleet_access(Some("nope")),
        Err(ScopeError::NotFound("nope".into()))
    );

    let user = store
        .authenticate(&token.expose_text(), NOW)
        .unwrap()
        .unwrap();
    assert_eq!(user.description(), "user alice");
    assert_eq!(
        user.fleet_access(None),
        Err(ScopeError::WorkspaceRequired(vec!["a".into(), "c".into()]))
    );
    assert_eq!(user.fleet_access(Some("c")).unwrap().fleet().name, "c");
    assert_eq!(
        user.fleet_access(Some("b")),
        Err(ScopeError::NotFound("b".into()))
    );
}

#[test]
fn same_key_same_machine_and_hostnames_unique_per_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create_fleet("a", NOW).unwrap();
    store.create_fleet("b", NOW).unwrap();
    let (_, key_a) = store
        .create_api_key("a", KeyRole::Agent, None, None, NOW)
        .unwrap();
    let (_, key_b) = store
        .create_api_key("b", KeyRole::Agent, None, None, NOW)
        .unwrap();
    let a = store
        .authenticate(&key_a.expose_text(), NOW)
        .unwrap()
        .unwrap()
        .fleet_access(None)
        .unwrap();
    let b = store
        .authenticate(&key_b.expose_text(), NOW)
        .unwrap()
        .unwrap()
        .fleet_access(None)
        .unwrap();

    let first = store
        .register_machine(&a, &[1; 32], &report("web-1"), NOW)
        .unwrap();
    let renamed_host = store
        .register_machine(&a, &[1; 32], &report("web-one"), NOW + 5)
        .unwrap();
    assert_eq!(first.id, renamed_host.id);
    assert_eq!(renamed_host.hostname, "web-one");
    assert_eq!(
        renamed_host.name, "web-1",
        "the display name stays unless the agent sends one"
    );

    let other = store
        .register_machine(&a, &[2; 32], &report("web-2"), NOW)
        .unwrap();
    assert_ne!(other.id, first.id);
    assert!(matches!(
        store.register_machine(&a, &[3; 32], &report("web-one"), NOW),
        Err(StoreError::HostnameTaken(_))
    ));
    // The same hostname in another fleet is a different machine.
    assert!(
        store
            .register_machine(&b, &[3; 32], &report("web-one"), NOW)
            .is_ok()
    );
    assert_eq!(store.machines_in(&a).unwrap().len(), 2);
    assert_eq!(store.machines_in(&b).unwrap().len(), 1);

    let renamed = store
        .rename_machine(&first.id.to_string(), "frontend", NOW)
        .unwrap();
    assert_eq!(renamed.name, "frontend");
    assert_eq!(
        store
            .register_machine(&a, &[1; 32], &report("web-one"), NOW)
            .unwrap()
            .name,
        "frontend"
    );
}

#[test]
fn audit_log_is_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create_fleet("prod", NOW).unwrap();
    assert!(
        store
            .conn
            .execute("UPDATE audit_log SET detail = 'x'", [])
            .is_err()
    );
    assert!(store.conn.execute("DELETE FROM audit_log", []).is_err());
    assert_eq!(store.audit(Some("prod")).unwrap().len(), 1);
}

#[test]
fn invalid_names_and_duplicates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    assert!(matches!(
        store.create_fleet("", NOW),
        Err(StoreError::InvalidName(_))
    ));
    assert!(matches!(
        store.create_fleet("a b", NOW),
        Err(StoreError::InvalidName(_))
    ));
    store.create_fleet("prod", NOW).unwrap();
    assert!(matches!(
        store.create_fleet("prod", NOW),
        Err(StoreError::FleetExists(_))
    ));
    assert!(matches!(
        store.create_api_key("nope", KeyRole::Agent, None, None, NOW),
        Err(StoreError::UnknownFleet(_))
    ));
    store.create_user("alice", NOW).unwrap();
    assert!(matches!(
        store.create_user_token("alice", &[], None, NOW),
        Err(StoreError::NoFleets)
    ));
    assert!(matches!(
        store.create_user_token("bob", &["prod".into()], None, NOW),
        Err(StoreError::UnknownUser(_))
    ));
    assert!(matches!(
        store.revoke("0000000000000000", NOW),
        Err(StoreError::UnknownCredential(_))
    ));
}
