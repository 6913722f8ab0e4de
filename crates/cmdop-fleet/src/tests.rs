//! Cross-module tests: authentication, scope, registration, the resolver and capabilities,
//! checked the way a user would (a key of one fleet never reaches another, and so on).

use std::collections::BTreeSet;

use cmdop_identity::{Identity, PublicKey};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::*;

fn rng() -> StdRng {
    StdRng::seed_from_u64(42)
}

fn at(secs: u64) -> Timestamp {
    Timestamp::from_unix_seconds(secs)
}

fn fleet(rng: &mut StdRng, name: &str) -> Fleet {
    Fleet {
        id: FleetId::generate(rng),
        name: FleetName::parse(name).unwrap(),
    }
}

fn api_key(
    rng: &mut StdRng,
    fleet: &Fleet,
    role: Role,
    expires: Option<u64>,
) -> (CredentialRecord, CredentialSecret) {
    let spec = ApiKeySpec {
        fleet: fleet.id,
        role,
        label: None,
        expires: expires.map(at),
    };
    let (record, secret) = ApiKey::issue(spec, at(1_000), rng).unwrap();
    (record.into(), secret)
}

fn user_token(rng: &mut StdRng, fleets: &[&Fleet]) -> (CredentialRecord, CredentialSecret) {
    let spec = UserTokenSpec {
        user: UserId::generate(rng),
        fleets: fleets.iter().map(|f| f.id).collect(),
        label: Some(Label::parse("laptop").unwrap()),
        expires: None,
    };
    let (record, secret) = UserToken::issue(spec, at(1_000), rng).unwrap();
    (record.into(), secret)
}

fn auth(record: &CredentialRecord, secret: &CredentialSecret) -> Authenticated {
    record.authenticate(secret, at(2_000)).unwrap()
}

fn key_of(seed: u8) -> PublicKey {
    Identity::from_seed(&cmdop_identity::Seed::from_bytes([seed; 32])).public_key()
}

fn machine(fleet: &Fleet, id: u128, hostname: &str, name: Option<&str>) -> Machine {
    Machine {
        id: MachineId::from_bytes(id.to_be_bytes()),
        fleet: fleet.id,
        public_key: key_of(u8::try_from(id % 251).unwrap()),
        hostname: Hostname::parse(hostname).unwrap(),
        name: name.map(|n| DisplayName::parse(n).unwrap()),
        info: AgentInfo::new("linux", "x86_64", "0.1.0").unwrap(),
        labels: MachineLabels::default(),
        online: true,
        last_heartbeat: Some(at(1_000)),
        registered: at(1_000),
    }
}

fn member_access(rng: &mut StdRng, fleet: &Fleet) -> FleetAccess {
    let (record, secret) = api_key(rng, fleet, Role::Member, None);
    auth(&record, &secret)
        .fleet_access(fleet, Permission::List)
        .unwrap()
}

mod authentication {
    use super::*;

    #[test]
    fn the_right_secret_authenticates_and_reports_its_scope() {
        let mut rng = rng();
        let prod = fleet(&mut rng, "prod");
        let (record, secret) = api_key(&mut rng, &prod, Role::Admin, Some(5_000));
        let who = record.authenticate(&secret, at(4_999)).unwrap();
        assert_eq!(who.credential_id(), secret.id());
        assert_eq!(who.kind(), CredentialKind::ApiKey);
        assert_eq!(who.role_in(prod.id), Some(Role::Admin));
        assert_eq!(who.fleet_ids(), vec![prod.id]);
        assert_eq!(who.expires(), Some(at(5_000)));
        assert!(!who.is_expired_at(at(4_999)));
        assert!(who.is_expired_at(at(5_000)));
        let reparsed = CredentialSecret::parse(&secret.expose_text()).unwrap();
        assert!(record.authenticate(&reparsed, at(2_000)).is_ok());
    }

    #[test]
    fn every_refusal_is_distinct_for_the_audit_log_but_identical_for_the_peer() {
        let mut rng = rng();
        let prod = fleet(&mut rng, "prod");
        let (record, secret) = api_key(&mut rng, &prod, Role::Member, Some(5_000));
        let id = secret.id();

        let other = CredentialSecret::generate(CredentialKind::ApiKey, &mut rng);
        let unknown = authenticate(&other, None, at(2_000)).unwrap_err();
        assert_eq!(unknown, AuthError::UnknownCredential { id: other.id() });
        assert_eq!(
            record.authenticate(&other, at(2_000)).unwrap_err(),
            AuthError::UnknownCredential { id: other.id() }
        );

        // Same id, different secret: a forged key for a known id.
        let text = secret.expose_text();
        let last = if text.ends_with('a') { "q" } else { "a" };
        let forged =
            CredentialSecret::parse(&format!("{}{last}{}", &text[..80], &text[81..])).unwrap();
        let bad = record.authenticate(&forged, at(2_000)).unwrap_err();
        assert_eq!(bad, AuthError::BadSecret { id });

        let expired = record.authenticate(&secret, at(5_000)).unwrap_err();
        assert_eq!(expired, AuthError::Expired { id, at: at(5_000) });

        let CredentialRecord::ApiKey(mut revoked) = record else {
            unreachable!()
        };
        revoked.revoked = Some(at(1_500));
        let revoked = CredentialRecord::from(revoked)
            .authenticate(&secret, at(2_000))
            .unwrap_err();
        assert_eq!(revoked, AuthError::Revoked { id, at: at(1_500) });

        let errors = [unknown, bad, expired, revoked];
        let audit: BTreeSet<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(audit.len(), 4, "{audit:?}");
        let peer: BTreeSet<&str> = errors.iter().map(AuthError::peer_message).collect();
        assert_eq!(peer.len(), 1);
        assert!(!peer.iter().next().unwrap().contains(&id.to_string()));
    }

    #[test]
    fn standing_is_rechecked_without_the_secret() {
        let mut rng = rng();
        let prod = fleet(&mut rng, "prod");
        let (mut record, secret) = user_token(&mut rng, &[&prod]);
        assert_eq!(record.standing(at(2_000)), Ok(()));
        record.mark_used(at(2_000));
        let CredentialRecord::UserToken(mut token) = record else {
            unreachable!()
        };
        assert_eq!(token.last_used, Some(at(2_000)));
        token.revoked = Some(at(2_001));
        let record = CredentialRecord::from(token);
        assert_eq!(
            record.standing(at(2_001)),
            Err(AuthError::Revoked {
                id: secret.id(),
                at: at(2_001)
            })
        );
        assert!(record.authenticate(&secret, at(2_002)).is_err());
    }

    #[test]
    fn a_user_token_secret_never_passes_as_an_api_key_with_the_same_id() {
        let mut rng = rng();
        let prod = fleet(&mut rng, "prod");
        let (record, secret) = api_key(&mut rng, &prod, Role::Admin, None);
        let text = secret.expose_text().replacen("cmdop_ak_", "cmdop_ut_", 1);
        let as_token = CredentialSecret::parse(&text).unwrap();
        assert_eq!(
            record.authenticate(&as_token, at(2_000)).unwrap_err(),
            AuthError::UnknownCredential { id: secret.id() }
        );
    }

    proptest! {
        #[test]
        fn parsing_any_text_never_panics_and_accepts_only_the_canonical_form(text in "\\PC{0,100}") {
            if let Ok(secret) = CredentialSecret::parse(&text) {
                let shown = secret.expose_text();
                prop_assert_eq!(shown.as_str(), text.trim_matches(|c: char| c.is_ascii_whitespace()));
            }
        }

        #[test]
        fn parsing_near_misses_never_panics(
            kind in prop_oneof![Just("cmdop_ak_"), Just("cmdop_ut_"), Just("cmdop_")],
            body in "[a-z2-7_A-Z0-9]{0,90}",
        ) {
            let text = format!("{kind}{body}");
            if let Ok(secret) = CredentialSecret::parse(&text) {
                let shown = secret.expose_text();
                prop_assert_eq!(shown.as_str(), text.as_str());
            }
        }

        #[test]
        fn revoked_or_expired_never_authenticates(
            expires in proptest::option::of(1_001u64..10_000),
            revoked in proptest::option::of(1_000u64..10_000),
            now in 0u64..20_000,
        ) {
            let mut rng = rng();
            let prod = fleet(&mut rng, "prod");
            let (record, secret) = api_key(&mut rng, &prod, Role::Member, expires);
            let record = match record {
                CredentialRecord::ApiKey(mut key) => { key.revoked = revoked.map(at); CredentialRecord::from(key) }
                other => other,
            };
            let result = record.authenticate(&secret, at(now));
            let should_pass = revoked.is_none() && expires.is_none_or(|e| now < e);
            prop_assert_eq!(result.is_ok(), should_pass);
        }
    }
}

mod scope {
    use super::*;

    #[test]
    fn roles_allow_what_the_docs_say() {
        use Permission::*;
        let table = [
            (Role::Agent, [true, false, false, false]),
            (Role::Member, [false, true, true, false]),
            (Role::Admin, [true, true, true, true]),
        ];
        for (role, expected) in table {
            let got = [Enrol, List, Reach, Manage].map(|p| role.allows(p));
            assert_eq!(got, expected, "{role}");
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert_eq!(
            "root".parse::<Role>().unwrap_err().to_string(),
            "role must be agent, member or admin, not \"root\""
        );
    }

    #[test]
    fn an_agent_key_may_enrol_but_not_list() {
        let mut rng = rng();
        let prod = fleet(&mut rng, "prod");
        let (record, secret) = api_key(&mut rng, &prod, Role::Agent, None);
        let who = auth(&record, &secret);
        assert!(who.fleet_access(&prod, Permission::Enrol).is_ok());
        let err = who.fleet_access(&prod, Permission::List).unwrap_err();
        assert_eq!(
            err,
            ScopeError::NotPermitted {
                role: Role::Agent,
                need: Permission::List
            }
        );
        assert_eq!(
            err.to_string(),
            "a credential with the agent role may not list machines; use one whose role allows it"
        );
    }

    #[test]
    fn a_key_of_fleet_a_never_gets_access_to_fleet_b() {
        let mut rng = rng();
        let a = fleet(&mut rng, "a");
        let b = fleet(&mut rng, "b");
        for role in [Role::Agent, Role::Member, Role::Admin] {
            let (record, secret) = api_key(&mut rng, &a, role, None);
            let who = auth(&record, &secret);
            for need in [
                Permission::Enrol,
                Permission::List,
                Permission::Reach,
                Permission::Manage,
            ] {
                assert_eq!(
                    who.fleet_access(&b, need).unwrap_err(),
                    ScopeError::NoSuchFleet {
                        name: b.name.clone()
                    }
                );
            }
            let fleets = [a.clone(), b.clone()];
            assert_eq!(
                who.select_fleet(Some(&b.name), &fleets).unwrap_err(),
                ScopeError::NoSuchFleet {
                    name: b.name.clone()
                }
            );
            // One fleet in scope: --workspace may be left out even though two exist.
            assert_eq!(who.select_fleet(None, &fleets).unwrap(), &a);
        }
    }

    #[test]
    fn not_yours_and_does_not_exist_look_the_same() {
        let mut rng = rng();
        let a = fleet(&mut rng, "a");
        let b = fleet(&mut rng, "secret-project");
        let (record, secret) = api_key(&mut rng, &a, Role::Admin, None);
        let who = auth(&record, &secret);
        let fleets = [a, b];
        let exists = who
            .select_fleet(Some(&FleetName::parse("secret-project").unwrap()), &fleets)
            .unwrap_err();
        let missing = who
            .select_fleet(Some(&FleetName::parse("nope").unwrap()), &fleets)
            .unwrap_err();
        assert_eq!(
            exists.to_string().replace("secret-project", "NAME"),
            missing.to_string().replace("nope", "NAME")
        );
    }

    #[test]
    fn a_token_chooses_among_its_fleets_with_workspace() {
        let mut rng = rng();
        let web = fleet(&mut rng, "web");
        let db = fleet(&mut rng, "db");
        let other = fleet(&mut rng, "other");
        let (record, secret) = user_token(&mut rng, &[&web, &db]);
        let who = auth(&record, &secret);
        assert_eq!(who.kind(), CredentialKind::UserToken);
        assert!(who.user().is_some());
        let fleets = [web.clone(), db.clone(), other.clone()];

        let err = who.select_fleet(None, &fleets).unwrap_err();
        assert_eq!(
            err.to_string(),
            "this credential reaches several fleets (db, web); choose one with --workspace"
        );
        assert_eq!(who.select_fleet(Some(&web.name), &fleets).unwrap(), &web);
        assert_eq!(
            who.select_fleet(Some(&other.name), &fleets).unwrap_err(),
            ScopeError::NoSuchFleet {
                name: other.name.clone()
            }
        );

        // A token acts as a member: it may list and reach, not enrol or manage.
        let access = who
            .workspace_access(Some(&db.name), &fleets, Permission::Reach)
            .unwrap();
        assert_eq!((access.fleet_id(), access.role()), (db.id, Role::Member));
        assert_eq!(access.credential_id(), secret.id());
        assert!(who.fleet_access(&db, Permission::Manage).is_err());
        assert!(who.fleet_access(&other, Permission::List).is_err());

        // Only one of its fleets still exists: no --workspace needed.
        assert_eq!(
            who.select_fleet(None, &[db.clone(), other.clone()])
                .unwrap(),
            &db
        );
        assert_eq!(
            who.select_fleet(None, &[other]).unwrap_err(),
            ScopeError::NoFleet
        );
    }

    proptest! {
        #[test]
        fn access_is_granted_only_to_covered_fleets(covered in proptest::collection::btree_set(0usize..6, 1..6), probe in 0usize..6) {
            let mut rng = rng();
            let fleets: Vec<Fleet> = (0..6).map(|i| fleet(&mut rng, &format!("f{i}"))).collect();
            let chosen: Vec<&Fleet> = covered.iter().map(|i| &fleets[*i]).collect();
            let (record, secret) = user_token(&mut rng, &chosen);
            let who = auth(&record, &secret);
            let target = &fleets[probe];
            let granted = who.fleet_access(target, Permission::List);
            prop_assert_eq!(granted.is_ok(), covered.contains(&probe));
            if let Ok(access) = granted {
                prop_assert_eq!(access.fleet_id(), target.id);
            }
            let selected = who.select_fleet(Some(&target.name), &fleets);
            prop_assert_eq!(selected.is_ok(), covered.contains(&probe));
        }
    }
}

mod registration {
    use super::*;

    fn enrolment(key: PublicKey, hostname: &str, name: Option<&str>) -> Enrolment {
        Enrolment {
            public_key: key,
            hostname: Hostname::parse(hostname).unwrap(),
            name: name.map(|n| DisplayName::parse(n).unwrap()),
            info: AgentInfo::new("linux", "aarch64", "0.2.0").unwrap(),
            labels: MachineLabels::parse(&["role=web"]).unwrap(),
        }
    }

    fn agent_access(rng: &mut StdRng, fleet: &Fleet) -> FleetAccess {
        let (record, secret) = api_key(rng, fleet, Role::Agent, None);
        auth(&record, &secret)
            .fleet_access(fleet, Permission::Enrol)
            .unwrap()
    }

    #[test]
    fn same_key_same_id_after_restart_and_rename() {
        let mut rng = rng();
        let prod = fleet(&mut rng, "prod");
        let access = agent_access(&mut rng, &prod);
        let key = key_of(1);

        let first = register(
            &access,
            &[],
            enrolment(key, "web-1", None),
            at(10),
            &mut rng,
        )
        .unwrap();
        assert!(first.is_new);
        assert_eq!(first.machine.display_name(), "web-1");
        assert_eq!(first.machine.fleet, prod.id);
        assert_eq!(first.machine.fingerprint(), key.fingerprint());
        let mut stored = vec![first.machine.clone()];

        let restart = register(
            &access,
            &stored,
            enrolment(key, "web-1", None),
            at(20),
            &mut rng,
        )
        .unwrap();
        assert!(!restart.is_new);
        assert_eq!(restart.machine.id, first.machine.id);
        assert_eq!(restart.machine.registered, at(10));
        assert_eq!(restart.machine.last_heartbeat, Some(at(20)));
        assert_eq!(restart.machine.labels.to_string(), "role=web");
        // The labels are what the agent reports now: dropping one removes it.
        let relabelled = register(
            &access,
            &stored,
            Enrolment {
                labels: MachineLabels::parse(&["env=prod"]).unwrap(),
                ..enrolment(key, "web-1", None)
            },
            at(21),
            &mut rng,
        )
        .unwrap();
        assert_eq!(relabelled.machine.labels.to_string(), "env=prod");

        // An admin renames it; a restart without --name keeps the new name.
        let (record, secret) = api_key(&mut rng, &prod, Role::Admin, None);
        let admin = auth(&record, &secret)
            .fleet_access(&prod, Permission::Manage)
            .unwrap();
        let others = stored.clone();
        rename(
            &admin,
            &mut stored[0],
            DisplayName::parse("Frontend").unwrap(),
            &others,
        )
        .unwrap();
        assert!(
            rename(
                &access,
                &mut stored[0],
                DisplayName::parse("x").unwrap(),
                &others
            )
            .is_err()
        );
        let renamed_host = register(
            &access,
            &stored,
            enrolment(key, "web-01", None),
            at(30),
            &mut rng,
        )
        .unwrap();
        assert_eq!(renamed_host.machine.id, first.machine.id);
        assert_eq!(renamed_host.machine.hostname.as_str(), "web-01");
        assert_eq!(renamed_host.machine.display_name(), "Frontend");
        assert_eq!(renamed_host.machine.info.arch(), "aarch64");

        let named = register(
            &access,
            &stored,
            enrolment(key, "web-01", Some("Edge")),
            at(40),
            &mut rng,
        )
        .unwrap();
        assert_eq!(
            (named.machine.id, named.machine.display_name()),
            (first.machine.id, "Edge")
        );
    }

    #[test]
    fn a_different_key_is_a_different_machine_and_may_not_take_a_hostname() {
        let mut rng = rng();
        let prod = fleet(&mut rng, "prod");
        let access = agent_access(&mut rng, &prod);
        let first = register(
            &access,
            &[],
            enrolment(key_of(1), "web-1", None),
            at(10),
            &mut rng,
        )
        .unwrap()
        .machine;
        let stored = vec![first.clone()];

        let second = register(
            &access,
            &stored,
            enrolment(key_of(2), "web-2", None),
            at(10),
            &mut rng,
        )
        .unwrap();
        assert!(second.is_new);
        assert_ne!(second.machine.id, first.id);

        let err = register(
            &access,
            &stored,
            enrolment(key_of(2), "WEB-1", None),
            at(10),
            &mut rng,
        )
        .unwrap_err();
        assert_eq!(
            err,
            RegistrationError::HostnameTaken {
                hostname: Hostname::parse("web-1").unwrap(),
                existing: first.id
            }
        );
        assert!(err.to_string().contains("--hostname"));
    }

    #[test]
    fn fleets_are_separate_for_keys_and_hostnames() {
        let mut rng = rng();
        let a = fleet(&mut rng, "a");
        let b = fleet(&mut rng, "b");
        let in_a = register(
            &agent_access(&mut rng, &a),
            &[],
            enrolment(key_of(1), "web-1", None),
            at(10),
            &mut rng,
        )
        .unwrap()
        .machine;
        let stored = vec![in_a.clone()];
        // The same hostname, and even the same key, in another fleet is another machine.
        let in_b = register(
            &agent_access(&mut rng, &b),
            &stored,
            enrolment(key_of(1), "web-1", None),
            at(10),
            &mut rng,
        )
        .unwrap();
        assert!(in_b.is_new);
        assert_ne!(in_b.machine.id, in_a.id);
        assert_eq!(in_b.machine.fleet, b.id);
    }

    #[test]
    fn only_enrolling_roles_may_register() {
        let mut rng = rng();
        let prod = fleet(&mut rng, "prod");
        let member = member_access(&mut rng, &prod);
        let err = register(
            &member,
            &[],
            enrolment(key_of(1), "web-1", None),
            at(10),
            &mut rng,
        )
        .unwrap_err();
        assert_eq!(
            err,
            RegistrationError::Scope(ScopeError::NotPermitted {
                role: Role::Member,
                need: Permission::Enrol
            })
        );
    }

    #[test]
    fn presence_ends_after_three_missed_heartbeats() {
        let prod = fleet(&mut rng(), "prod");
        let mut m = machine(&prod, 1, "web-1", None);
        m.last_heartbeat = Some(at(1_000));
        assert!(m.is_online_at(at(1_089), 30));
        assert!(!m.is_online_at(at(1_090), 30));
        m.online = false;
        assert!(!m.is_online_at(at(1_000), 30));
    }

    #[test]
    fn machine_records_round_trip_through_json_and_postcard() {
        let prod = fleet(&mut rng(), "prod");
        let m = machine(&prod, 7, "web-1", Some("Frontend"));
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["hostname"], "web-1");
        assert_eq!(json["name"], "Frontend");
        assert_eq!(json["id"], m.id.to_string());
        assert_eq!(json["public_key"], m.public_key.to_string());
        assert_eq!(serde_json::from_value::<Machine>(json).unwrap(), m);
        let bytes = postcard::to_stdvec(&m).unwrap();
        assert_eq!(postcard::from_bytes::<Machine>(&bytes).unwrap(), m);
        // Deserialising validates: a hostname with a space is refused.
        let mut bad = serde_json::to_value(&m).unwrap();
        bad["hostname"] = "web 1".into();
        assert!(serde_json::from_value::<Machine>(bad).is_err());
        assert_eq!(serde_json::to_string(&Role::Agent).unwrap(), "\"agent\"");
    }

    #[test]
    fn agent_info_is_bounded() {
        assert!(AgentInfo::new("", "x", "1").is_err());
        assert!(AgentInfo::new(&"l".repeat(65), "x", "1").is_err());
        assert!(AgentInfo::new("linux\u{1b}[2J", "x", "1").is_err());
        let info = AgentInfo::new("linux", "x86_64", "0.1.0").unwrap();
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(json, r#"{"os":"linux","arch":"x86_64","version":"0.1.0"}"#);
        assert!(
            serde_json::from_str::<AgentInfo>(r#"{"os":"","arch":"x","version":"1"}"#).is_err()
        );
    }

    #[test]
    fn a_machine_may_not_take_another_machines_name_of_the_other_kind() {
        let mut rng = rng();
        let prod = fleet(&mut rng, "prod");
        let access = agent_access(&mut rng, &prod);
        let db = register(
            &access,
            &[],
            enrolment(key_of(1), "db-7", Some("prod-db")),
            at(10),
            &mut rng,
        )
        .unwrap()
        .machine;
        let stored = vec![db.clone()];
        // A newcomer whose hostname is the other machine's display name would win the resolver's exact
        // hostname rule and receive `cmdop connect prod-db`.
        let err = register(
            &access,
            &stored,
            enrolment(key_of(2), "PROD-DB", None),
            at(20),
            &mut rng,
        )
        .unwrap_err();
        assert_eq!(
            err,
            RegistrationError::NameClash(NameClash {
                kind: "hostname",
                name: "prod-db".into(),
                other_kind: "display name",
                existing: db.id,
            })
        );
        assert!(
            err.to_string().contains("may not take another's name"),
            "{err}"
        );
        // The reverse: a display name that is another machine's hostname.
        let err = register(
            &access,
            &stored,
            enrolment(key_of(2), "web-1", Some("DB-7")),
            at(20),
            &mut rng,
        )
        .unwrap_err();
        assert!(
            matches!(&err, RegistrationError::NameClash(c) if c.kind == "display name" && c.existing == db.id),
            "{err:?}"
        );
        // The machine itself may keep both, and a name in another fleet is no clash.
        register(
            &access,
            &stored,
            enrolment(key_of(1), "db-7", Some("prod-db")),
            at(30),
            &mut rng,
        )
        .unwrap();
        let staging = fleet(&mut rng, "staging");
        let staging_access = agent_access(&mut rng, &staging);
        register(
            &staging_access,
            &stored,
            enrolment(key_of(2), "prod-db", None),
            at(30),
            &mut rng,
        )
        .unwrap();
        // An admin cannot rename a machine to another machine's hostname either.
        let web = register(
            &access,
            &stored,
            enrolment(key_of(3), "web-1", None),
            at(40),
            &mut rng,
        )
        .unwrap()
        .machine;
        let all = vec![db, web.clone()];
        let (record, secret) = api_key(&mut rng, &prod, Role::Admin, None);
        let admin = auth(&record, &secret)
            .fleet_access(&prod, Permission::Manage)
            .unwrap();
        let mut renamed = web;
        assert!(matches!(
            rename(
                &admin,
                &mut renamed,
                DisplayName::parse("db-7").unwrap(),
                &all
            ),
            Err(RenameError::NameClash(_))
        ));
        rename(
            &admin,
            &mut renamed,
            DisplayName::parse("frontend").unwrap(),
            &all,
        )
        .unwrap();
    }
}

mod resolver {
    use super::*;

    struct World {
        access: FleetAccess,
        machines: Vec<Machine>,
    }

    fn world() -> World {
        let mut rng = rng();
        let prod = fleet(&mut rng, "prod");
        let other = fleet(&mut rng, "other");
        let access = member_access(&mut rng, &prod);
        let machines = vec![
            machine(
                &prod,
                0x1111_0000_0000_4000_8000_0000_0000_0001,
                "web-1",
                None,
            ),
            machine(
                &prod,
                0x2222_0000_0000_4000_8000_0000_0000_0002,
                "web-2",
                Some("Frontend"),
            ),
            machine(
                &prod,
                0x3333_0000_0000_4000_8000_0000_0000_0003,
                "db-1",
                Some("web-2"),
            ),
            machine(
                &prod,
                0x4444_0000_0000_4000_8000_0000_0000_0004,
                "cache",
                Some("Shared"),
            ),
            machine(
                &prod,
                0x5555_0000_0000_4000_8000_0000_0000_0005,
                "queue",
                Some("shared"),
            ),
            machine(
                &prod,
                0x6666_0000_0000_4000_8000_0000_0000_0006,
                "x",
                Some("Build Box"),
            ),
            machine(
                &other,
                0x7777_0000_0000_4000_8000_0000_0000_0007,
                "secret-host",
                Some("hidden"),
            ),
            machine(
                &other,
                0x8888_0000_0000_4000_8000_0000_0000_0008,
                "web-3",
                None,
            ),
        ];
        World { access, machines }
    }

    /// `Ok(hostname)` of the machine found, or the error message.
    fn check(query: &str) -> Result<String, String> {
        let w = world();
        resolve(&w.access, &w.machines, query)
            .map(|m| m.hostname.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn ids_match_only_ids_in_any_case() {
        assert_eq!(
            check("11110000-0000-4000-8000-000000000001"),
            Ok("web-1".into())
        );
        assert_eq!(
            check(
                "22220000-0000-4000-8000-000000000002"
                    .to_uppercase()
                    .as_str()
            ),
            Ok("web-2".into())
        );
        // A UUID-shaped query never falls through to names or prefixes.
        assert_eq!(
            check("11110000-0000-4000-8000-000000000009"),
            Err("no machine matches \"11110000-0000-4000-8000-000000000009\" in fleet prod; `cmdop connect --list` shows its machines".into())
        );
        // A machine of another fleet is not found, by id or any name.
        assert!(check("77770000-0000-4000-8000-000000000007").is_err());
    }

    #[test]
    fn exact_hostname_beats_display_names_and_prefixes() {
        assert_eq!(check("web-1"), Ok("web-1".into()));
        assert_eq!(check("WEB-1"), Ok("web-1".into()));
        // "web-2" is db-1's display name too; the hostname wins.
        assert_eq!(check("web-2"), Ok("web-2".into()));
        // A one-character hostname is still an exact match.
        assert_eq!(check("x"), Ok("x".into()));
    }

    #[test]
    fn display_names_match_exactly_then_ignoring_case() {
        assert_eq!(check("Frontend"), Ok("web-2".into()));
        assert_eq!(check("frontend"), Ok("web-2".into()));
        assert_eq!(check("Build Box"), Ok("x".into()));
        // "Shared" and "shared" are distinct names: exact case decides.
        assert_eq!(check("Shared"), Ok("cache".into()));
        assert_eq!(check("shared"), Ok("queue".into()));
        assert_eq!(
            check("SHARED"),
            Err(format!(
                "\"SHARED\" matches several machines: Shared (cache, {}), shared (queue, {}); use the hostname, the id or a longer prefix",
                "44440000-0000-4000-8000-000000000004", "55550000-0000-4000-8000-000000000005"
            ))
        );
    }

    #[test]
    fn unique_prefixes_of_at_least_two_characters() {
        assert_eq!(check("db"), Ok("db-1".into()));
        assert_eq!(check("fro"), Ok("web-2".into()));
        assert_eq!(check("BUI"), Ok("x".into()));
        assert_eq!(check("1111"), Ok("web-1".into()));
        assert_eq!(check("33330000-00"), Ok("db-1".into()));
        assert_eq!(check("ca"), Ok("cache".into()));
        let err = check("we").unwrap_err();
        assert!(
            err.starts_with("\"we\" matches several machines: Frontend (web-2, 2222"),
            "{err}"
        );
        assert!(err.contains("web-1 (web-1, 1111"), "{err}");
        assert!(err.contains("web-2 (db-1, 3333"), "{err}");
        assert!(!err.contains("web-3"), "{err}");
        assert_eq!(check("d"), Err("\"d\" is too short to pick a machine by prefix; use at least 2 characters, the hostname or the id".into()));
        assert_eq!(check(""), Err("\"\" is too short to pick a machine by prefix; use at least 2 characters, the hostname or the id".into()));
        assert!(
            check("zz")
                .unwrap_err()
                .starts_with("no machine matches \"zz\" in fleet prod")
        );
        assert!(
            check("secret")
                .unwrap_err()
                .starts_with("no machine matches")
        );
        assert!(
            check("hidden")
                .unwrap_err()
                .starts_with("no machine matches")
        );
    }

    #[test]
    fn the_ambiguity_list_is_bounded() {
        let mut rng = rng();
        let prod = fleet(&mut rng, "prod");
        let access = member_access(&mut rng, &prod);
        let machines: Vec<Machine> = (1..=25u128)
            .map(|i| machine(&prod, i, &format!("node-{i}"), None))
            .collect();
        let err = resolve(&access, &machines, "node").unwrap_err();
        let ResolveError::Ambiguous { candidates, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(candidates.len(), 25);
        assert!(err.to_string().contains(" and 15 more;"), "{err}");
    }

    #[test]
    fn an_agent_key_cannot_resolve() {
        let mut rng = rng();
        let prod = fleet(&mut rng, "prod");
        let (record, secret) = api_key(&mut rng, &prod, Role::Agent, None);
        let access = auth(&record, &secret)
            .fleet_access(&prod, Permission::Enrol)
            .unwrap();
        let err = resolve(&access, &world().machines, "web-1").unwrap_err();
        assert!(matches!(
            err,
            ResolveError::Scope(ScopeError::NotPermitted { .. })
        ));
        assert!(list_machines(&access, &world().machines).is_err());
    }

    #[test]
    fn listing_shows_only_the_fleet() {
        let w = world();
        let names: Vec<&str> = list_machines(&w.access, &w.machines)
            .unwrap()
            .map(|m| m.hostname.as_str())
            .collect();
        assert_eq!(names, ["web-1", "web-2", "db-1", "cache", "queue", "x"]);
    }

    fn arb_hostname() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"
    }

    fn arb_fleet_machines() -> impl Strategy<Value = Vec<(u128, String, Option<String>, bool)>> {
        proptest::collection::vec(
            (
                any::<u128>(),
                arb_hostname(),
                proptest::option::of("[A-Za-z0-9]([A-Za-z0-9 -]{0,6}[A-Za-z0-9])?"),
                any::<bool>(),
            ),
            1..12,
        )
    }

    fn build(spec: Vec<(u128, String, Option<String>, bool)>) -> World {
        let mut rng = rng();
        let prod = fleet(&mut rng, "prod");
        let other = fleet(&mut rng, "other");
        let access = member_access(&mut rng, &prod);
        let mut seen_hosts = BTreeSet::new();
        let mut seen_ids = BTreeSet::new();
        let machines = spec
            .into_iter()
            .filter(|(id, host, _, in_other)| {
                *in_other || (seen_hosts.insert(host.clone()) && seen_ids.insert(*id))
            })
            .map(|(id, host, name, in_other)| {
                machine(
                    if in_other { &other } else { &prod },
                    id,
                    &host,
                    name.as_deref(),
                )
            })
            .collect();
        World { access, machines }
    }

    proptest! {
        #[test]
        fn an_exact_hostname_always_resolves_to_its_machine(spec in arb_fleet_machines(), pick in any::<prop::sample::Index>()) {
            let w = build(spec);
            let ours: Vec<&Machine> = w.machines.iter().filter(|m| m.fleet == w.access.fleet_id()).collect();
            prop_assume!(!ours.is_empty());
            let target = ours[pick.index(ours.len())];
            let found = resolve(&w.access, &w.machines, target.hostname.as_str()).unwrap();
            prop_assert_eq!(found.id, target.id);
            let upper = target.hostname.as_str().to_uppercase();
            prop_assert_eq!(resolve(&w.access, &w.machines, &upper).unwrap().id, target.id);
        }

        #[test]
        fn a_full_id_resolves_to_exactly_that_machine_or_not_found(spec in arb_fleet_machines(), probe in any::<u128>(), pick in any::<prop::sample::Index>(), use_existing in any::<bool>()) {
            let w = build(spec);
            let id = if use_existing { w.machines[pick.index(w.machines.len())].id } else { MachineId::from_bytes(probe.to_be_bytes()) };
            match resolve(&w.access, &w.machines, &id.to_string()) {
                Ok(m) => {
                    prop_assert_eq!(m.id, id);
                    prop_assert_eq!(m.fleet, w.access.fleet_id());
                }
                Err(ResolveError::NotFound { .. }) => {
                    prop_assert!(!w.machines.iter().any(|m| m.id == id && m.fleet == w.access.fleet_id()));
                }
                Err(other) => prop_assert!(false, "unexpected {other}"),
            }
        }

        #[test]
        fn whatever_resolves_is_in_the_fleet_and_matches_the_query(spec in arb_fleet_machines(), query in "[A-Za-z0-9 -]{0,8}") {
            let w = build(spec);
            match resolve(&w.access, &w.machines, &query) {
                Ok(m) => {
                    prop_assert_eq!(m.fleet, w.access.fleet_id());
                    let q = query.to_lowercase();
                    prop_assert!(
                        m.hostname.as_str() == q
                            || m.display_name().to_lowercase() == q
                            || (q.chars().count() >= MIN_PREFIX_CHARS
                                && (m.id.to_string().starts_with(&q)
                                    || m.hostname.as_str().starts_with(&q)
                                    || m.display_name().to_lowercase().starts_with(&q)))
                    );
                }
                Err(ResolveError::Ambiguous { candidates, .. }) => {
                    prop_assert!(candidates.len() >= 2);
                    for c in candidates {
                        prop_assert!(w.machines.iter().any(|m| m.id == c.id && m.fleet == w.access.fleet_id()));
                    }
                }
                Err(_) => {}
            }
        }
    }
}

mod capabilities {
    use super::*;

    struct Setup {
        trust: Identity,
        client: PublicKey,
        fleet: FleetId,
        machine: MachineId,
        channel: [u8; 16],
        signed: SignedCapability,
    }

    impl Setup {
        fn expect(&self, operation: Operation, now: u64) -> Expected {
            Expected {
                client_key: self.client,
                fleet: self.fleet,
                machine: self.machine,
                channel: self.channel,
                operation,
                now: at(now),
            }
        }
    }

    fn setup() -> Setup {
        let mut rng = rng();
        let trust = Identity::generate(&mut rng);
        let client = Identity::generate(&mut rng).public_key();
        let fleet = FleetId::generate(&mut rng);
        let machine = MachineId::generate(&mut rng);
        let channel = [0x5c; 16];
        let capability = Capability {
            client_key: client,
            fleet,
            machine,
            channel,
            operations: [Operation::Exec, Operation::Copy].into_iter().collect(),
            not_before: at(1_000),
            not_after: at(2_000),
        };
        let signed = capability.sign(&trust);
        Setup {
            trust,
            client,
            fleet,
            machine,
            channel,
            signed,
        }
    }

    #[test]
    fn only_a_credential_that_may_reach_the_fleet_gets_a_grant() {
        let mut rng = rng();
        let prod = fleet(&mut rng, "prod");
        let client = Identity::generate(&mut rng).public_key();
        let access = member_access(&mut rng, &prod);
        let ops = OperationSet::EMPTY.with(Operation::Exec);
        let target = Target {
            machine: MachineId::from_bytes([3; 16]),
            channel: [4; 16],
        };
        let cap = Capability::grant(&access, client, target, ops, (at(100), at(160))).unwrap();
        assert_eq!(
            (cap.fleet, cap.client_key, cap.operations),
            (prod.id, client, ops)
        );
        assert_eq!((cap.machine, cap.channel), (target.machine, target.channel));
        assert_eq!((cap.not_before, cap.not_after), (at(100), at(160)));
        let (record, secret) = api_key(&mut rng, &prod, Role::Agent, None);
        let agent = auth(&record, &secret)
            .fleet_access(&prod, Permission::Enrol)
            .unwrap();
        assert_eq!(
            Capability::grant(&agent, client, target, ops, (at(100), at(160))).unwrap_err(),
            ScopeError::NotPermitted {
                role: Role::Agent,
                need: Permission::Reach
            }
        );
    }

    #[test]
    fn a_valid_capability_verifies_and_round_trips() {
        let s = setup();
        let trust = s.trust.public_key();
        let cap = s
            .signed
            .verify(&trust, &s.expect(Operation::Exec, 1_000))
            .unwrap();
        assert_eq!(cap.fleet, s.fleet);
        let bytes = s.signed.to_bytes();
        let back = SignedCapability::from_bytes(&bytes).unwrap();
        assert_eq!(back, s.signed);
        assert!(
            back.verify(&trust, &s.expect(Operation::Copy, 1_999))
                .is_ok()
        );
        let unsigned = s.signed.unverified_capability().to_bytes();
        assert_eq!(
            &Capability::from_bytes(&unsigned).unwrap(),
            s.signed.unverified_capability()
        );
        assert_eq!(bytes.len(), unsigned.len() + 64);
    }

    #[test]
    fn encoding_is_pinned() {
        let capability = Capability {
            client_key: key_of(7),
            fleet: FleetId::from_bytes([0xab; 16]),
            machine: MachineId::from_bytes([0xcd; 16]),
            channel: [0xef; 16],
            operations: OperationSet::EMPTY
                .with(Operation::Exec)
                .with(Operation::Shell),
            not_before: at(1),
            not_after: at(300),
        };
        let bytes = capability.to_bytes();
        let mut expected = vec![2u8];
        expected.extend_from_slice(key_of(7).as_bytes());
        expected.extend_from_slice(&[0xab; 16]);
        expected.extend_from_slice(&[0xcd; 16]);
        expected.extend_from_slice(&[0xef; 16]);
        expected.extend_from_slice(&[0x03, 0x01, 0xac, 0x02]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn signed_encoding_matches_an_independent_implementation() {
        // Computed with Python's `cryptography` (Ed25519 over 0x13 | "cmdop capability v1" |
        // capability bytes): trust seed [1; 32], client seed [2; 32], fleet 0xab x 16, machine
        // 0xcd x 16, channel 0xef x 16, exec + copy, valid 1_700_000_000 .. 1_700_003_600.
        const GOLDEN: &str = "028139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394ababababababababababababababababcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdefefefefefefefefefefefefefefefef0980e2cfaa0690fecfaa06165644442d40cc29f0b8085c0159266130fe14de43345f12d1f9672b45d6ecd73ef23cd15919aa57699a3d71e53fb50e41e40cd7cc22c76e1975f795eb97a607";
        let seed = |b| cmdop_identity::Seed::from_bytes([b; 32]);
        let trust = Identity::from_seed(&seed(1));
        let client = Identity::from_seed(&seed(2)).public_key();
        let fleet = FleetId::from_bytes([0xab; 16]);
        let machine = MachineId::from_bytes([0xcd; 16]);
        let channel = [0xef; 16];
        let signed = Capability {
            client_key: client,
            fleet,
            machine,
            channel,
            operations: [Operation::Exec, Operation::Copy].into_iter().collect(),
            not_before: at(1_700_000_000),
            not_after: at(1_700_003_600),
        }
        .sign(&trust);
        let hex: String = signed
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, GOLDEN);
        let bytes: Vec<u8> = (0..GOLDEN.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&GOLDEN[i..i + 2], 16).unwrap())
            .collect();
        let decoded = SignedCapability::from_bytes(&bytes).unwrap();
        let expected = Expected {
            client_key: client,
            fleet,
            machine,
            channel,
            operation: Operation::Copy,
            now: at(1_700_000_000),
        };
        assert!(decoded.verify(&trust.public_key(), &expected).is_ok());
    }

    #[test]
    fn every_wrong_input_is_refused_with_its_reason() {
        let s = setup();
        let trust = s.trust.public_key();
        let mut rng = StdRng::seed_from_u64(9);
        let stranger = Identity::generate(&mut rng).public_key();
        let refuse = |trust: &PublicKey, expected: Expected| {
            s.signed.verify(trust, &expected).map(|_| ()).unwrap_err()
        };
        let base = s.expect(Operation::Exec, 1_500);
        assert_eq!(refuse(&stranger, base), CapabilityError::BadSignature);
        assert_eq!(
            refuse(
                &trust,
                Expected {
                    client_key: stranger,
                    ..base
                }
            ),
            CapabilityError::WrongClient
        );
        assert_eq!(
            refuse(
                &trust,
                Expected {
                    fleet: FleetId::generate(&mut rng),
                    ..base
                }
            ),
            CapabilityError::WrongFleet
        );
        assert_eq!(
            refuse(
                &trust,
                Expected {
                    machine: MachineId::generate(&mut rng),
                    ..base
                }
            ),
            CapabilityError::WrongMachine
        );
        assert_eq!(
            refuse(
                &trust,
                Expected {
                    channel: [0x5d; 16],
                    ..base
                }
            ),
            CapabilityError::WrongChannel
        );
        assert_eq!(
            refuse(&trust, s.expect(Operation::Exec, 2_000)),
            CapabilityError::Expired {
                not_after: at(2_000)
            }
        );
        assert_eq!(
            refuse(&trust, s.expect(Operation::Exec, 999)),
            CapabilityError::NotYetValid {
                not_before: at(1_000)
            }
        );
        assert_eq!(
            refuse(&trust, s.expect(Operation::Shell, 1_500)),
            CapabilityError::OperationNotAllowed {
                operation: Operation::Shell
            }
        );
        // A client's own key cannot sign itself a capability.
        let mut rng = StdRng::seed_from_u64(10);
        let client = Identity::generate(&mut rng);
        let self_signed = Capability {
            client_key: client.public_key(),
            ..s.signed.unverified_capability().clone()
        }
        .sign(&client);
        assert_eq!(
            self_signed
                .verify(
                    &trust,
                    &Expected {
                        client_key: client.public_key(),
                        ..base
                    }
                )
                .unwrap_err(),
            CapabilityError::BadSignature
        );
    }

    #[test]
    fn leftover_and_missing_bytes_are_rejected() {
        let s = setup();
        let bytes = s.signed.to_bytes();
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            SignedCapability::from_bytes(&longer).unwrap_err(),
            CapabilityError::TrailingBytes { len: 1 }
        );
        assert_eq!(
            SignedCapability::from_bytes(&bytes[..bytes.len() - 1]).unwrap_err(),
            CapabilityError::Malformed
        );
        let unsigned = s.signed.unverified_capability().to_bytes();
        assert_eq!(
            Capability::from_bytes(&bytes).unwrap_err(),
            CapabilityError::TrailingBytes { len: 64 }
        );
        assert_eq!(
            Capability::from_bytes(&unsigned[..10]).unwrap_err(),
            CapabilityError::Malformed
        );
        assert_eq!(
            SignedCapability::from_bytes(&[]).unwrap_err(),
            CapabilityError::Malformed
        );
        // Version 1 (no machine, no channel) is not accepted any more.
        let mut v1 = unsigned.clone();
        v1[0] = 1;
        assert_eq!(
            Capability::from_bytes(&v1).unwrap_err(),
            CapabilityError::UnsupportedVersion { version: 1 }
        );
        let mut unknown_op = unsigned.clone();
        unknown_op[81] = 0x10;
        assert_eq!(
            Capability::from_bytes(&unknown_op).unwrap_err(),
            CapabilityError::UnknownOperations { bits: 0x10 }
        );
        // An overlong varint for the operations (0x09 as 0x89 0x00) decodes to the same value
        // but is not the canonical form the signature covers.
        let mut overlong = unsigned[..81].to_vec();
        overlong.extend_from_slice(&[0x89, 0x00]);
        overlong.extend_from_slice(&unsigned[82..]);
        assert_eq!(
            Capability::from_bytes(&overlong).unwrap_err(),
            CapabilityError::Malformed
        );
    }

    proptest! {
        #[test]
        fn any_tampered_byte_is_refused(index in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let s = setup();
            let mut bytes = s.signed.to_bytes();
            let i = index.index(bytes.len());
            bytes[i] ^= flip;
            if let Ok(tampered) = SignedCapability::from_bytes(&bytes) {
                let result = tampered.verify(&s.trust.public_key(), &s.expect(Operation::Exec, 1_500));
                prop_assert!(result.is_err());
            }
        }

        #[test]
        fn decoding_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(signed) = SignedCapability::from_bytes(&bytes) {
                prop_assert_eq!(signed.to_bytes(), bytes);
            }
        }

        #[test]
        fn operation_sets_round_trip(bits in any::<u32>()) {
            match OperationSet::from_bits(bits) {
                Some(set) => {
                    prop_assert_eq!(set.bits(), bits);
                    prop_assert_eq!(set.iter().collect::<OperationSet>(), set);
                }
                None => prop_assert!(bits & !OperationSet::all().bits() != 0),
            }
        }
    }
}
