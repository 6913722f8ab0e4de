//! Store tests against a real SQLite file in a temporary directory: cmdop-fleet's records go in and come back
//! out unchanged, and cmdop-fleet's decisions work on what the store returns.

use cmdop_fleet::{
    AgentInfo, AuthError, Authenticated, DisplayName, Enrolment, FleetAccess, Hostname, Permission,
    RegistrationError, ScopeError, register,
};
use cmdop_identity::{Identity, PublicKey};
use cmdop_proto::login::FleetQuery;

use super::*;

const NOW: Timestamp = Timestamp::from_unix_seconds(1_700_000_000);

fn at(secs: u64) -> Timestamp {
    Timestamp::from_unix_seconds(secs)
}

/// Why a presented credential was refused, as the relay's audit log names it.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Malformed,
    Unknown,
    WrongSecret,
    Revoked,
    Expired,
}

/// What the relay's login does with a presented credential: parse, look up, and let cmdop-fleet decide.
fn authenticate(store: &Store, text: &str, now: Timestamp) -> Result<Authenticated, Refusal> {
    let secret = CredentialSecret::parse(text).map_err(|_| Refusal::Malformed)?;
    let lookup = store.credential_lookup(secret.id()).unwrap();
    cmdop_fleet::authenticate(&secret, lookup.record.as_ref(), now).map_err(|err| match err {
        AuthError::UnknownCredential { .. } => Refusal::Unknown,
        AuthError::BadSecret { .. } => Refusal::WrongSecret,
        AuthError::Revoked { .. } => Refusal::Revoked,
        AuthError::Expired { .. } => Refusal::Expired,
        other => panic!("{other:?}"),
    })
}

fn all_fleets(store: &Store) -> Vec<Fleet> {
    store
        .fleets()
        .unwrap()
        .into_iter()
        .map(|r| r.fleet)
        .collect()
}

fn access(store: &Store, key: &CredentialSecret, need: Permission) -> FleetAccess {
    authenticate(store, &key.expose_text(), NOW)
        .unwrap()
        .workspace_access(None, &all_fleets(store), need)
        .unwrap()
}

fn key(byte: u8) -> PublicKey {
    Identity::from_seed(&cmdop_identity::Seed::from_bytes([byte; 32])).public_key()
}

fn enrolment(byte: u8, hostname: &str) -> Enrolment {
    Enrolment {
        public_key: key(byte),
        hostname: Hostname::parse(hostname).unwrap(),
        name: None,
        info: AgentInfo::new("linux", "x86_64", "0.1.0").unwrap(),
        labels: cmdop_fleet::MachineLabels::parse(&["role=web", "env=prod"]).unwrap(),
    }
}

/// Registers as the relay's login does: cmdop-fleet decides on the fleet's stored machines, the store writes.
fn register_machine(
    store: &Store,
    access: &FleetAccess,
    byte: u8,
    hostname: &str,
    now: Timestamp,
) -> Result<Machine, RegistrationError> {
    let machines = store.machines_of(access.fleet_id()).unwrap();
    let registration = register(
        access,
        &machines,
        enrolment(byte, hostname),
        now,
        &mut OsRng,
    )?;
    store.save_registration(&registration).unwrap();
    Ok(registration.machine)
}

use cmdop_fleet::Machine;

#[test]
fn survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key_text;
    {
        let store = Store::open(&data).unwrap();
        store.create_fleet("prod", NOW).unwrap();
        let (_, secret) = store
            .create_api_key("prod", Role::Agent, Some("ci"), None, NOW)
            .unwrap();
        key_text = secret.expose_text();
        let access = access(&store, &secret, Permission::Enrol);
        register_machine(&store, &access, 7, "web-1", NOW).unwrap();
    }
    let store = Store::open(&data).unwrap();
    assert_eq!(
        store.schema_version().unwrap(),
        i64::try_from(schema::MIGRATIONS.len()).unwrap()
    );
    assert_eq!(store.fleets().unwrap().len(), 1);
    assert!(authenticate(&store, &key_text, NOW).is_ok());
    let machines = store.machines(Some("prod")).unwrap();
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0].1.hostname.as_str(), "web-1");
    assert_eq!(machines[0].1.public_key, key(7));
    assert_eq!(machines[0].1.labels.to_string(), "env=prod role=web");
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

/// Issue 13, hole 10: a relay.db that group or others can read (it holds every fleet's trust seed) was
/// silently reset to 0600, hiding that it had been exposed. It is refused, as key files are, and left as it is.
#[cfg(unix)]
#[test]
fn a_relay_db_others_can_read_is_refused_not_silently_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    Store::open(&data)
        .unwrap()
        .create_fleet("prod", NOW)
        .unwrap();
    for file in [DB_FILE, "relay.db-wal"] {
        let path = data.join(file);
        if !path.exists() {
            continue;
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let Err(err) = Store::open(&data) else {
            panic!("{} at 0644 was accepted", path.display());
        };
        let err = err.to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("chmod 600"),
            "{err}"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644,
            "the mode was changed behind the operator's back"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert_eq!(Store::open(&data).unwrap().fleets().unwrap().len(), 1);
}

#[test]
fn secrets_are_stored_hashed_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create_fleet("prod", NOW).unwrap();
    let (_, secret) = store
        .create_api_key("prod", Role::Member, None, None, NOW)
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
    let now = NOW.as_unix_seconds();
    let (_, expired) = store
        .create_api_key("prod", Role::Member, None, Some(at(now - 1)), at(now - 100))
        .unwrap();
    let (record, revoked) = store
        .create_api_key("prod", Role::Member, None, None, NOW)
        .unwrap();
    store.revoke(&record.id.to_string(), NOW).unwrap();
    let (_, good) = store
        .create_api_key("prod", Role::Member, None, None, NOW)
        .unwrap();
    let mut wrong = good.expose_text().to_string();
    wrong.pop();
    wrong.push('_');
    let check = |text: &str| authenticate(&store, text, NOW).err();
    assert_eq!(check(&expired.expose_text()), Some(Refusal::Expired));
    assert_eq!(check(&revoked.expose_text()), Some(Refusal::Revoked));
    assert_eq!(check("nonsense"), Some(Refusal::Malformed));
    assert_eq!(check(&wrong), Some(Refusal::Malformed));
    // Change the first secret character to another valid base32 character.
    let good_text = good.expose_text().to_string();
    let at = good_text.rfind('_').unwrap() + 1;
    let swapped = if good_text.as_bytes()[at] == b'a' {
        "b"
    } else {
        "a"
    };
    let wrong_secret = format!("{}{swapped}{}", &good_text[..at], &good_text[at + 1..]);
    assert_eq!(check(&wrong_secret), Some(Refusal::WrongSecret));
    let unknown = CredentialSecret::generate(CredentialKind::ApiKey, &mut OsRng).expose_text();
    assert_eq!(check(&unknown), Some(Refusal::Unknown));
    assert_eq!(check(&good.expose_text()), None);
    // The live-connection re-check sees the revocation too.
    assert!(
        store
            .credential(record.id)
            .unwrap()
            .unwrap()
            .standing(NOW)
            .is_err()
    );
}

#[test]
fn scope_is_enforced_by_fleet_access() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let a = store.create_fleet("a", NOW).unwrap().fleet;
    store.create_fleet("b", NOW).unwrap();
    let c = store.create_fleet("c", NOW).unwrap().fleet;
    let (_, key_a) = store
        .create_api_key("a", Role::Member, None, None, NOW)
        .unwrap();
    store.create_user("alice", NOW).unwrap();
    let (record, token) = store
        .create_user_token("alice", &["a".into(), "c".into()], None, NOW)
        .unwrap();
    assert_eq!(record.fleets, [a.id, c.id].into_iter().collect());
    let fleets = all_fleets(&store);
    let name = |text: &str| FleetName::parse(text).unwrap();

    let key = authenticate(&store, &key_a.expose_text(), NOW).unwrap();
    assert_eq!(key.select_fleet(None, &fleets).unwrap().name.as_str(), "a");
    assert_eq!(
        key.select_fleet(Some(&name("b")), &fleets),
        Err(ScopeError::NoSuchFleet { name: name("b") })
    );
    assert_eq!(
        key.select_fleet(Some(&name("nope")), &fleets),
        Err(ScopeError::NoSuchFleet { name: name("nope") })
    );

    let user = authenticate(&store, &token.expose_text(), NOW).unwrap();
    let lookup = store.credential_lookup(token.id()).unwrap();
    assert_eq!(lookup.user.map(|u| u.to_string()).as_deref(), Some("alice"));
    assert_eq!(
        user.select_fleet(None, &fleets),
        Err(ScopeError::WorkspaceRequired {
            available: vec![name("a"), name("c")]
        })
    );
    assert_eq!(
        user.select_fleet(Some(&name("c")), &fleets)
            .unwrap()
            .name
            .as_str(),
        "c"
    );
    assert_eq!(
        user.select_fleet(Some(&name("b")), &fleets),
        Err(ScopeError::NoSuchFleet { name: name("b") })
    );
}

#[test]
fn same_key_same_machine_and_hostnames_unique_per_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create_fleet("a", NOW).unwrap();
    store.create_fleet("b", NOW).unwrap();
    let (_, key_a) = store
        .create_api_key("a", Role::Agent, None, None, NOW)
        .unwrap();
    let (_, key_b) = store
        .create_api_key("b", Role::Agent, None, None, NOW)
        .unwrap();
    let a = access(&store, &key_a, Permission::Enrol);
    let b = access(&store, &key_b, Permission::Enrol);

    let first = register_machine(&store, &a, 1, "web-1", NOW).unwrap();
    let renamed_host =
        register_machine(&store, &a, 1, "web-one", at(NOW.as_unix_seconds() + 5)).unwrap();
    assert_eq!(first.id, renamed_host.id);
    assert_eq!(renamed_host.hostname.as_str(), "web-one");
    let stored = store.machine(&first.id.to_string()).unwrap().unwrap();
    assert_eq!(stored.hostname.as_str(), "web-one");
    assert_eq!(
        stored.display_name(),
        "web-one",
        "no display name was ever set, so the hostname shows"
    );

    let other = register_machine(&store, &a, 2, "web-2", NOW).unwrap();
    assert_ne!(other.id, first.id);
    assert!(matches!(
        register_machine(&store, &a, 3, "web-one", NOW),
        Err(RegistrationError::HostnameTaken { .. })
    ));
    // The store refuses it too, should two registrations race past cmdop-fleet's check.
    let mut forged = register(&b, &[], enrolment(9, "web-one"), NOW, &mut OsRng).unwrap();
    forged.machine.fleet = a.fleet_id();
    assert!(matches!(
        store.save_registration(&forged),
        Err(StoreError::HostnameTaken(_))
    ));
    // The same hostname in another fleet is a different machine.
    assert!(register_machine(&store, &b, 3, "web-one", NOW).is_ok());
    assert_eq!(store.machines_of(a.fleet_id()).unwrap().len(), 2);
    assert_eq!(store.machines_of(b.fleet_id()).unwrap().len(), 1);

    let renamed = store
        .rename_machine(&first.id.to_string(), "frontend", NOW)
        .unwrap();
    assert_eq!(renamed.display_name(), "frontend");
    assert_eq!(
        register_machine(&store, &a, 1, "web-one", NOW)
            .unwrap()
            .display_name(),
        "frontend",
        "the display name stays unless the agent sends one"
    );
    assert_eq!(
        store
            .machine(&first.id.to_string())
            .unwrap()
            .unwrap()
            .display_name(),
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
        Err(StoreError::InvalidName { .. })
    ));
    assert!(matches!(
        store.create_fleet("a b", NOW),
        Err(StoreError::InvalidName { .. })
    ));
    store.create_fleet("prod", NOW).unwrap();
    assert!(matches!(
        store.create_fleet("prod", NOW),
        Err(StoreError::FleetExists(_))
    ));
    assert!(matches!(
        store.create_api_key("nope", Role::Agent, None, None, NOW),
        Err(StoreError::UnknownFleet(_))
    ));
    store.create_user("alice", NOW).unwrap();
    assert!(matches!(
        store.create_user_token("alice", &[], None, NOW),
        Err(StoreError::Issue(IssueError::NoFleets))
    ));
    assert!(matches!(
        store.create_user_token("bob", &["prod".into()], None, NOW),
        Err(StoreError::UnknownUser(_))
    ));
    assert!(matches!(
        store.revoke("0000000000000000", NOW),
        Err(StoreError::UnknownCredential(_))
    ));
    assert!(matches!(
        store.rename_machine("0000000000000000", "x", NOW),
        Err(StoreError::UnknownMachine(_))
    ));
}

/// `serve` and an admin verb started together (a provisioning script right after `systemctl start`) both
/// open a fresh data dir: whoever comes second must wait for the first one's migration, never fail or
/// migrate twice, and every write of either must be there afterwards.
#[test]
fn concurrent_openers_of_a_fresh_data_dir_all_succeed_and_nothing_is_lost() {
    const OPENERS: usize = 6;
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(OPENERS));
        let openers: Vec<_> = (0..OPENERS)
            .map(|i| {
                let path = dir.path().to_owned();
                let barrier = std::sync::Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    let store = Store::open(&path)?;
                    store.create_fleet(&format!("fleet-{i}"), NOW)?;
                    Ok::<_, StoreError>(())
                })
            })
            .collect();
        for (i, opener) in openers.into_iter().enumerate() {
            if let Err(err) = opener.join().unwrap() {
                panic!("round {round}: opener {i} failed: {err}");
            }
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.fleets().unwrap().len(), OPENERS, "round {round}");
        assert_eq!(
            store.schema_version().unwrap(),
            i64::try_from(schema::MIGRATIONS.len()).unwrap()
        );
    }
}

/// Two admins creating the same fleet or user at the same moment: one wins, the other is told the name is
/// taken (never a database error that blames the disk).
#[test]
fn the_same_name_created_twice_at_once_is_taken_not_a_database_error() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path()).unwrap();
    for round in 0..30 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let path = dir.path().to_owned();
                let barrier = std::sync::Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let store = Store::open(&path).unwrap();
                    barrier.wait();
                    let fleet = store.create_fleet(&format!("fleet-{round}"), NOW).err();
                    let user = store.create_user(&format!("user-{round}"), NOW).err();
                    (fleet, user)
                })
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        let fleet_errors: Vec<_> = results.iter().filter_map(|(f, _)| f.as_ref()).collect();
        let user_errors: Vec<_> = results.iter().filter_map(|(_, u)| u.as_ref()).collect();
        assert!(
            matches!(fleet_errors.as_slice(), [StoreError::FleetExists(_)]),
            "round {round}: {fleet_errors:?}"
        );
        assert!(
            matches!(user_errors.as_slice(), [StoreError::UserExists(_)]),
            "round {round}: {user_errors:?}"
        );
    }
}

#[test]
fn only_disk_and_file_failures_blame_the_disk() {
    let disk =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
    assert!(StoreError::Sql(disk).to_string().contains("disk"));
    let logic = rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
        Some("table fleets already exists".into()),
    );
    let text = StoreError::Sql(logic).to_string();
    assert!(!text.contains("disk"), "{text}");
    assert!(text.contains("bug in cmdop-relay"), "{text}");
}

/// Whatever reaches `append_audit` (a peer's text the state machines did not shorten, a row an older relay
/// wrote raw) is stored bounded, and `cmdop-relay audit` prints nothing a terminal would act on.
#[test]
fn audit_fields_are_stored_bounded_and_printed_without_terminal_controls() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let hostile = format!("\u{1b}]0;owned\u{7}\u{1b}[2J\u{202e}{}", "A".repeat(65_000));
    store
        .append_audit(&AuditEntry {
            at: NOW,
            fleet: None,
            actor: &format!("peer:{hostile}"),
            action: "auth",
            outcome: "refused",
            detail: &hostile,
        })
        .unwrap();
    // A row as an older relay wrote it: raw, unbounded.
    store
        .conn
        .execute(
            "INSERT INTO audit_log (at, fleet_id, actor, action, outcome, detail) VALUES (1, NULL, 'peer:x', 'auth', 'refused', ?1)",
            [&hostile],
        )
        .unwrap();
    let records = store.audit(None).unwrap();
    let stored: i64 = store
        .conn
        .query_row(
            "SELECT max(length(detail) + length(actor)) FROM audit_log WHERE seq = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(stored <= 2048, "an entry of {stored} characters was stored");
    let table = crate::admin::audit_table(&records);
    for line in table.lines() {
        assert!(
            line.chars().all(|c| c == '\t' || !c.is_control()) && !line.contains('\u{202e}'),
            "{line:?}"
        );
    }
    assert!(table.contains("\\e"), "{table}");
    assert!(table.lines().all(|line| line.chars().count() <= 3000));
}

#[test]
fn a_version_1_database_is_migrated_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    prepare_private_dir(&data).unwrap();
    {
        // A relay.db as the relay before the fleet lock left it.
        let conn = Connection::open(data.join(DB_FILE)).unwrap();
        conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO fleets (id, name, trust_seed, created_at) VALUES (?1, 'prod', ?2, 1)",
            rusqlite::params!["8f23a4b0-1c2d-4e5f-8a9b-0c1d2e3f4a5b", [7u8; 32].as_slice()],
        )
        .unwrap();
    }
    // The relay that made it kept it private, as this one insists.
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(data.join(DB_FILE), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let store = Store::open(&data).unwrap();
    assert_eq!(
        store.schema_version().unwrap(),
        i64::try_from(schema::MIGRATIONS.len()).unwrap()
    );
    let fleet = store.fleet_by_name("prod").unwrap().unwrap().fleet;
    assert_eq!(store.stored_lock(fleet.id).unwrap(), Default::default());
    assert_eq!(
        store.fleet_trust_key(fleet.id).unwrap().public_key(),
        Identity::from_seed(&cmdop_identity::Seed::from_bytes([7; 32])).public_key()
    );
}

#[test]
fn the_fleet_lock_is_stored_as_submitted_and_enrolment_uses_never_exceed_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut store = Store::open(&data).unwrap();
    let fleet = store.create_fleet("prod", NOW).unwrap().fleet;
    let (_, secret) = store
        .create_api_key("prod", Role::Agent, None, None, NOW)
        .unwrap();
    let agent = access(&store, &secret, Permission::Enrol);
    register_machine(&store, &agent, 7, "web-1", NOW).unwrap();
    register_machine(&store, &agent, 8, "web-2", NOW).unwrap();
    let machines = store.machines_of(fleet.id).unwrap();

    store
        .append_authority(fleet.id, 1, b"state one", NOW)
        .unwrap();
    // A second state 1 (a racing admin) loses on the primary key.
    assert!(store.append_authority(fleet.id, 1, b"other", NOW).is_err());
    store
        .append_authority(fleet.id, 2, b"state two", NOW)
        .unwrap();
    store
        .save_revocations(fleet.id, 2, b"list two", NOW)
        .unwrap();
    // An older list never replaces a newer one.
    store
        .save_revocations(fleet.id, 1, b"list one", NOW)
        .unwrap();
    let lock = store.stored_lock(fleet.id).unwrap();
    assert_eq!(
        lock.authority,
        vec![b"state one".to_vec(), b"state two".to_vec()]
    );
    assert_eq!(lock.revocations, Some(b"list two".to_vec()));

    store
        .save_enrolment_key(fleet.id, key(9), b"authorization", 1, NOW)
        .unwrap();
    assert_eq!(
        store
            .enrolment_key(fleet.id, &key(9))
            .unwrap()
            .unwrap()
            .used,
        0
    );
    assert!(
        store
            .enrol_machine(fleet.id, machines[0].id, key(9), b"cert 1", NOW)
            .unwrap()
    );
    // The one use is gone: the second machine is refused and nothing of it is stored.
    assert!(
        !store
            .enrol_machine(fleet.id, machines[1].id, key(9), b"cert 2", NOW)
            .unwrap()
    );
    assert_eq!(
        store.machine_certificates(fleet.id).unwrap(),
        vec![(machines[0].id, b"cert 1".to_vec())]
    );
    store
        .save_member_certificate(fleet.id, key(3), b"member", NOW)
        .unwrap();
    assert_eq!(
        store.member_certificate(fleet.id, &key(3)).unwrap(),
        Some(b"member".to_vec())
    );
    store
        .record_client_key(fleet.id, &key(3), "user alice", NOW)
        .unwrap();
    store.save_admin_candidate(fleet.id, &key(4), NOW).unwrap();
    let items = store.lock_items(fleet.id).unwrap();
    assert_eq!(items.len(), 5, "{items:?}");
}

#[test]
fn concurrent_enrolments_of_a_single_use_key_certify_exactly_one_machine() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (fleet, machines) = {
        let store = Store::open(&data).unwrap();
        let fleet = store.create_fleet("prod", NOW).unwrap().fleet;
        let (_, secret) = store
            .create_api_key("prod", Role::Agent, None, None, NOW)
            .unwrap();
        let agent = access(&store, &secret, Permission::Enrol);
        for byte in 1..=8 {
            register_machine(&store, &agent, byte, &format!("m-{byte}"), NOW).unwrap();
        }
        store
            .save_enrolment_key(fleet.id, key(99), b"authorization", 1, NOW)
            .unwrap();
        let machines = store.machines_of(fleet.id).unwrap();
        (fleet, machines)
    };
    // Eight relay processes' worth of connections racing for the same single use.
    let wins: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = machines
            .iter()
            .map(|machine| {
                let data = data.clone();
                scope.spawn(move || {
                    let mut store = Store::open(&data).unwrap();
                    usize::from(
                        store
                            .enrol_machine(fleet.id, machine.id, key(99), b"cert", NOW)
                            .unwrap(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(wins, 1);
    assert_eq!(
        Store::open(&data)
            .unwrap()
            .machine_certificates(fleet.id)
            .unwrap()
            .len(),
        1
    );
}

/// Catalog A3, single-use really is single-use: 64 enrolments race for one single-use enrolment key, each on
/// its own connection to relay.db (as many relay processes' connections would), 100 times over with a new
/// key each round. Exactly one machine is certified per round, and the key is spent exactly once.
#[test]
fn a_single_use_key_raced_by_64_enrolments_certifies_exactly_one_machine_in_each_of_100_rounds() {
    const RACERS: usize = 64;
    const ROUNDS: u8 = 100;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (fleet, machines) = {
        let store = Store::open(&data).unwrap();
        let fleet = store.create_fleet("prod", NOW).unwrap().fleet;
        let (_, secret) = store
            .create_api_key("prod", Role::Agent, None, None, NOW)
            .unwrap();
        let agent = access(&store, &secret, Permission::Enrol);
        for byte in 1..=u8::try_from(RACERS).unwrap() {
            register_machine(&store, &agent, byte, &format!("m-{byte}"), NOW).unwrap();
        }
        let machines = store.machines_of(fleet.id).unwrap();
        (fleet.id, machines)
    };
    // The key of round r is key(100 + r), apart from the machines' keys 1..=64.
    let round_key = |round: u8| key(100 + round);
    let start = std::sync::Barrier::new(RACERS + 1);
    let end = std::sync::Barrier::new(RACERS + 1);
    let wins: Vec<std::sync::atomic::AtomicUsize> = (0..ROUNDS).map(|_| 0.into()).collect();
    std::thread::scope(|scope| {
        for machine in &machines {
            let (data, start, end, wins) = (&data, &start, &end, &wins);
            scope.spawn(move || {
                let mut store = Store::open(data).unwrap();
                for round in 0..ROUNDS {
                    start.wait();
                    let won = store
                        .enrol_machine(fleet, machine.id, round_key(round), b"cert", NOW)
                        .unwrap();
                    if won {
                        wins[usize::from(round)].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    end.wait();
                }
            });
        }
        let store = Store::open(&data).unwrap();
        for round in 0..ROUNDS {
            store
                .save_enrolment_key(fleet, round_key(round), b"authorization", 1, NOW)
                .unwrap();
            start.wait();
            end.wait();
            let spent = store
                .enrolment_key(fleet, &round_key(round))
                .unwrap()
                .unwrap();
            assert_eq!(spent.used, 1, "round {round}");
        }
    });
    let per_round: Vec<usize> = wins
        .iter()
        .map(|w| w.load(std::sync::atomic::Ordering::SeqCst))
        .collect();
    assert!(per_round.iter().all(|&w| w == 1), "{per_round:?}");
}

/// An agent's login reads a handful of machines by index, never the whole fleet: in a reconnect storm of N
/// agents a scan per login is O(N²) (at 10,000 machines it took 5.9 ms a login).
#[test]
fn a_login_finds_the_machines_it_may_clash_with_by_index_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fleet = store.create_fleet("prod", NOW).unwrap();
    let plan: Vec<String> = store
        .conn
        .prepare(&format!(
            "EXPLAIN QUERY PLAN {}",
            machines::registration_query()
        ))
        .unwrap()
        .query_map(params!["f", b"k".as_slice(), "h", "n"], |row| {
            row.get::<_, String>(3)
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        plan.iter().all(|step| !step.starts_with("SCAN")),
        "a step reads every row: {plan:?}"
    );
    assert_eq!(
        plan.iter().filter(|s| s.contains("USING INDEX")).count(),
        5,
        "{plan:?}"
    );

    let access = FleetAccess::relay_operator(&fleet.fleet);
    let enrol = |hostname: &str, name: Option<&str>| Enrolment {
        public_key: Identity::generate(&mut OsRng).public_key(),
        hostname: Hostname::parse(hostname).unwrap(),
        name: name.map(|n| DisplayName::parse(n).unwrap()),
        info: AgentInfo::new("linux", "x86_64", "0.1.0").unwrap(),
        labels: cmdop_fleet::MachineLabels::default(),
    };
    for (hostname, name) in [("db-7", Some("prod-db")), ("web-1", None), ("web-2", None)] {
        let registration = register(&access, &[], enrol(hostname, name), NOW, &mut OsRng).unwrap();
        store.save_registration(&registration).unwrap();
    }
    let found = |hostname: &str, name: Option<&str>| -> Vec<String> {
        let enrolment = enrol(hostname, name);
        let mut hostnames: Vec<String> = store
            .machines_for_registration(&FleetQuery {
                fleet: fleet.fleet.id,
                public_key: enrolment.public_key,
                hostname: enrolment.hostname,
                name: enrolment.name,
            })
            .unwrap()
            .into_iter()
            .map(|m| m.hostname.to_string())
            .collect();
        hostnames.sort();
        hostnames
    };
    // A hostname that is another's display name, a display name that is another's hostname (in any case),
    // and a hostname taken: each finds the machine it clashes with, and nothing else.
    assert_eq!(found("prod-db", None), ["db-7"]);
    assert_eq!(found("web-9", Some("WEB-1")), ["web-1"]);
    assert_eq!(found("web-2", Some("Prod-DB")), ["db-7", "web-2"]);
    assert!(found("web-9", None).is_empty());
}
