//! The fleet lock's formats and rules: golden bytes computed independently (`vectors/lock_golden.py`: Python
//! `cryptography`, postcard by hand; `docs/fleet.md` shows the same bytes), every refusal with its reason, and
//! properties over arbitrary and tampered input.

use cmdop_identity::{Identity, PublicKey, Seed};
use proptest::prelude::*;

use super::*;
use crate::capability::Operation;
use crate::id::{FleetId, MachineId};
use crate::name::Hostname;
use crate::time::Timestamp;

// Seeds: admin A 0a×32, admin B 0b×32, agent 0c×32, client 0d×32; enrolment secret 0e×32; fleet 11×16,
// machine 22×16, hostname "web-1", T = 1_700_000_000.
const AUTHORITY_GENESIS: &str = "011111111111111111111111111111111101010143a72e714401762df66b68c26dfbdf2682aaec9f2474eca4613e424a0fbafd3c80e2cfaa0643a72e714401762df66b68c26dfbdf2682aaec9f2474eca4613e424a0fbafd3c1e7bfe3c4ff1ab125893df2607964ab0eb12d6993018633cff9647211fce812b3466ad1954f28f7580c6168d3dfc77833459f3e43778eff5e979eab53caf6503";
const MACHINE_ADMIN: &str = "0111111111111111111111111111111111222222222222222222222222222222220b513ad9b4924015ca0902ed079044d3ac5dbec2306f06948c10da8eb6e39f2d057765622d3180e2cfaa068085d5aa060043a72e714401762df66b68c26dfbdf2682aaec9f2474eca4613e424a0fbafd3c3b62622180a8202f6c977ebd15f556a5266a747c1f61054b2ed81ed9ef2cf44855eae51f70cdb76a19d1be62b9b27be3ca3e03dd9fc6a63b88912f02ad3a6305";
const ENROLMENT_AUTHORIZATION: &str = "0111111111111111111111111111111111a0650caf51bf2e08ab3a0bbb9abc73416c0a1490c7ffe53c063843b51e71c5a480e2cfaa0690fecfaa060380e7840f43a72e714401762df66b68c26dfbdf2682aaec9f2474eca4613e424a0fbafd3c1d2b1757fc855d70ae9b62e42369d33656193b6ff547df97412479b1291fe4bd740203496c4a32b4bd2f9d13fee268515a706df7e52a17a00909e6cda708d303";
const MACHINE_ENROLLED: &str = "0111111111111111111111111111111111222222222222222222222222222222220b513ad9b4924015ca0902ed079044d3ac5dbec2306f06948c10da8eb6e39f2d057765622d3180e2cfaa068085d5aa0601a0010111111111111111111111111111111111a0650caf51bf2e08ab3a0bbb9abc73416c0a1490c7ffe53c063843b51e71c5a480e2cfaa0690fecfaa060380e7840f43a72e714401762df66b68c26dfbdf2682aaec9f2474eca4613e424a0fbafd3c1d2b1757fc855d70ae9b62e42369d33656193b6ff547df97412479b1291fe4bd740203496c4a32b4bd2f9d13fee268515a706df7e52a17a00909e6cda708d303e46adce52487e397f06f4334c43df20d528185250861a7715f0020a93210f299675f420cfd0d28ed2e6d7acea82316493b47b90fb24a74a0305334b39e186004";
const MEMBER: &str = "011111111111111111111111111111111191a28a0b74381593a4d9469579208926afc8ad82c8839b7644359b9eba9a4b3a0180e2cfaa0680fcedab0643a72e714401762df66b68c26dfbdf2682aaec9f2474eca4613e424a0fbafd3c6f25cae90da50c79761440dc9281b68938fb73aaa1463b30c92d0ba2dd39f3b65e81e78b0495add53d7275c54c7b990e0c71536fb3182ffc343962ffb46d520a";
const REVOCATIONS: &str = "01111111111111111111111111111111110180e2cfaa060191a28a0b74381593a4d9469579208926afc8ad82c8839b7644359b9eba9a4b3a43a72e714401762df66b68c26dfbdf2682aaec9f2474eca4613e424a0fbafd3c4c37e6c98df51cb4d1c4d546dbcd8464dbda4c1201e079927373b415bc9c5fb190694f57df2b250833c1160682f1fc2922a646511a3022d34ab81fc9756b9b07";
const CREDENTIALS: &str = "0102cafe0102beef";
const ENROLMENT_SECRET: &str = "cmdop_ek_iots44keaf3c35tlndbg3667e2bkv3e7er2ozjdbhzbeud527u6a_byha4dqobyha4dqobyha4dqobyha4dqobyha4dqobyha4dqobyha";
const ENROLMENT_PUBLIC: &str = "a0650caf51bf2e08ab3a0bbb9abc73416c0a1490c7ffe53c063843b51e71c5a4";

const T: u64 = 1_700_000_000;

fn id(byte: u8) -> Identity {
    Identity::from_seed(&Seed::from_bytes([byte; 32]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn at(secs: u64) -> Timestamp {
    Timestamp::from_unix_seconds(secs)
}

fn fleet() -> FleetId {
    FleetId::from_bytes([0x11; 16])
}

fn machine() -> MachineId {
    MachineId::from_bytes([0x22; 16])
}

fn genesis(admin: &Identity) -> Vec<u8> {
    AuthorityState {
        fleet: fleet(),
        serial: 1,
        locked: true,
        admins: vec![admin.public_key()],
        issued_at: at(T),
        signer: admin.public_key(),
    }
    .sign(admin)
    .to_bytes()
}

/// A: genesis; A adds B; B disables the lock.
fn three_states() -> Vec<Vec<u8>> {
    let (a, b) = (id(0x0a), id(0x0b));
    let first = genesis(&a);
    let one =
        VerifiedAuthority::verify(fleet(), &a.public_key(), std::slice::from_ref(&first)).unwrap();
    let second = one
        .next_state(
            vec![b.public_key(), a.public_key()],
            true,
            a.public_key(),
            at(T + 1),
        )
        .sign(&a)
        .to_bytes();
    let two = VerifiedAuthority::verify(fleet(), &a.public_key(), &[first.clone(), second.clone()])
        .unwrap();
    let third = two
        .next_state(
            two.latest().admins.clone(),
            false,
            b.public_key(),
            at(T + 2),
        )
        .sign(&b)
        .to_bytes();
    vec![first, second, third]
}

fn authority() -> VerifiedAuthority {
    VerifiedAuthority::verify(fleet(), &id(0x0a).public_key(), &[genesis(&id(0x0a))]).unwrap()
}

fn body(agent: &Identity) -> MachineCertificateBody {
    MachineCertificateBody {
        fleet: fleet(),
        machine: machine(),
        agent_key: agent.public_key(),
        hostname: Hostname::parse("web-1").unwrap(),
        issued_at: at(T),
        expires: at(T + 86_400),
    }
}

fn secret() -> EnrolmentSecret {
    EnrolmentSecret::parse(ENROLMENT_SECRET).unwrap()
}

fn authorization(signer: &Identity) -> SignedEnrolmentAuthorization {
    EnrolmentAuthorization {
        fleet: fleet(),
        enrolment_key: secret().public_key(),
        not_before: at(T),
        not_after: at(T + 3_600),
        uses: 3,
        certificate_lifetime: 31_536_000,
        signer: signer.public_key(),
    }
    .sign(signer)
}

fn member(signer: &Identity, role: MemberRole) -> SignedMemberCertificate {
    MemberCertificate {
        fleet: fleet(),
        client_key: id(0x0d).public_key(),
        role,
        issued_at: at(T),
        expires: at(T + 2_592_000),
        signer: signer.public_key(),
    }
    .sign(signer)
}

fn revoking(keys: &[PublicKey], serial_after: Option<&RevocationList>) -> SignedRevocationList {
    RevocationList::successor(serial_after, fleet(), keys, id(0x0a).public_key(), at(T))
        .sign(&id(0x0a))
}

#[test]
fn golden_bytes_match_an_independent_implementation() {
    let a = id(0x0a);
    assert_eq!(hex(&genesis(&a)), AUTHORITY_GENESIS);
    assert_eq!(
        hex(&body(&id(0x0c)).sign_as_admin(&a).to_bytes()),
        MACHINE_ADMIN
    );
    assert_eq!(hex(&authorization(&a).to_bytes()), ENROLMENT_AUTHORIZATION);
    assert_eq!(hex(secret().public_key().as_bytes()), ENROLMENT_PUBLIC);
    let enrolled = body(&id(0x0c)).sign_as_enrolment(&secret().signing_key(), authorization(&a));
    assert_eq!(hex(&enrolled.to_bytes()), MACHINE_ENROLLED);
    assert_eq!(hex(&member(&a, MemberRole::Member).to_bytes()), MEMBER);
    assert_eq!(
        hex(&revoking(&[id(0x0d).public_key()], None).to_bytes()),
        REVOCATIONS
    );
    let credentials = StreamCredentials {
        capability: vec![0xca, 0xfe],
        member_certificate: Some(vec![0xbe, 0xef]),
    };
    assert_eq!(hex(&credentials.to_bytes()), CREDENTIALS);
    let fresh = EnrolmentSecret::parse(ENROLMENT_SECRET).unwrap();
    assert_eq!(fresh.expose_text().as_str(), ENROLMENT_SECRET);
    assert_eq!(fresh.fleet_key(), a.public_key());

    // The golden bytes decode back to what made them.
    let state = SignedAuthority::from_bytes(&unhex(AUTHORITY_GENESIS)).unwrap();
    assert_eq!(state.unverified_state().admins, vec![a.public_key()]);
    assert_eq!(
        MachineCertificate::from_bytes(&unhex(MACHINE_ENROLLED)).unwrap(),
        enrolled
    );
    assert_eq!(
        StreamCredentials::from_bytes(&unhex(CREDENTIALS)).unwrap(),
        credentials
    );
}

/// A signed document has exactly one encoding: a hostname in any other case than the canonical lower case is
/// refused, not quietly lowered (which made the decoder accept bytes it would never produce; found by the
/// `fleet_lock_documents` fuzz target).
#[test]
fn a_machine_certificate_with_a_hostname_in_another_case_is_malformed() {
    let mut bytes = body(&id(0x0c)).sign_as_admin(&id(0x0a)).to_bytes();
    let at = bytes
        .windows(5)
        .position(|w| w == b"web-1")
        .expect("the hostname is in the encoding");
    bytes[at..at + 5].copy_from_slice(b"wEb-1");
    assert!(matches!(
        MachineCertificate::from_bytes(&bytes),
        Err(LockError::Malformed { .. })
    ));
}

#[test]
fn the_golden_bytes_are_the_ones_in_the_docs() {
    let doc: String = include_str!("../../../../docs/fleet.md")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    for golden in [
        AUTHORITY_GENESIS,
        MACHINE_ADMIN,
        ENROLMENT_AUTHORIZATION,
        MACHINE_ENROLLED,
        MEMBER,
        REVOCATIONS,
        CREDENTIALS,
        ENROLMENT_SECRET,
    ] {
        assert!(doc.contains(golden), "docs/fleet.md lacks {golden}");
    }
}

#[test]
fn a_chain_verifies_only_from_its_fleet_key_without_gaps_or_strangers() {
    let (a, b) = (id(0x0a), id(0x0b));
    let chain = three_states();
    let verified = VerifiedAuthority::verify(fleet(), &a.public_key(), &chain).unwrap();
    assert_eq!(verified.serial(), 3);
    assert!(!verified.is_locked());
    assert!(verified.is_admin(&b.public_key()));
    assert_eq!(verified.fleet_key(), a.public_key());
    assert_eq!(
        VerifiedAuthority::claimed_fleet_key(&chain).unwrap(),
        a.public_key()
    );

    // Rooted at another key (B is an admin, but not the one that created the lock).
    assert_eq!(
        VerifiedAuthority::verify(fleet(), &b.public_key(), &chain).unwrap_err(),
        LockError::NotRootedAt {
            pinned: b.public_key().fingerprint(),
            found: a.public_key().fingerprint(),
        }
    );
    // A withheld middle state.
    assert_eq!(
        VerifiedAuthority::verify(
            fleet(),
            &a.public_key(),
            &[chain[0].clone(), chain[2].clone()]
        )
        .unwrap_err(),
        LockError::ChainGap {
            previous: 1,
            found: 3
        }
    );
    assert_eq!(
        VerifiedAuthority::verify(fleet(), &a.public_key(), &[]).unwrap_err(),
        LockError::EmptyChain
    );
    assert!(matches!(
        VerifiedAuthority::verify(FleetId::from_bytes([9; 16]), &a.public_key(), &chain),
        Err(LockError::WrongFleet { .. })
    ));
    // A state signed by a key that is not an admin of the state before (the relay's own key).
    let relay = id(0x99);
    let one = VerifiedAuthority::verify(fleet(), &a.public_key(), &chain[..1]).unwrap();
    let forged = one
        .next_state(
            vec![relay.public_key()],
            true,
            relay.public_key(),
            at(T + 5),
        )
        .sign(&relay)
        .to_bytes();
    assert_eq!(
        VerifiedAuthority::verify(fleet(), &a.public_key(), &[chain[0].clone(), forged])
            .unwrap_err(),
        LockError::NotAnAdmin {
            what: "fleet authority",
            signer: relay.public_key().fingerprint(),
        }
    );
    // A relay's own genesis naming the real fleet key as an admin is still not rooted at it.
    let fake = AuthorityState {
        fleet: fleet(),
        serial: 1,
        locked: true,
        admins: AuthorityState::sorted_admins(vec![a.public_key(), relay.public_key()]),
        issued_at: at(T),
        signer: relay.public_key(),
    }
    .sign(&relay)
    .to_bytes();
    assert!(matches!(
        VerifiedAuthority::verify(fleet(), &a.public_key(), &[fake]),
        Err(LockError::NotRootedAt { .. })
    ));
    // A flipped bit anywhere.
    let mut tampered = chain[1].clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(
        VerifiedAuthority::verify(fleet(), &a.public_key(), &[chain[0].clone(), tampered])
            .unwrap_err(),
        LockError::BadSignature {
            what: "fleet authority"
        }
    );
    let long: Vec<Vec<u8>> = (0..=MAX_AUTHORITY_STATES)
        .map(|_| chain[0].clone())
        .collect();
    assert!(matches!(
        VerifiedAuthority::verify(fleet(), &a.public_key(), &long),
        Err(LockError::ChainTooLong { .. })
    ));
}

#[test]
fn an_older_or_conflicting_chain_is_refused() {
    let a = id(0x0a);
    let chain = three_states();
    let newest = VerifiedAuthority::verify(fleet(), &a.public_key(), &chain).unwrap();
    let older = VerifiedAuthority::verify(fleet(), &a.public_key(), &chain[..2]).unwrap();
    assert_eq!(
        older.check_not_older(3, None).unwrap_err(),
        LockError::Rollback {
            what: "fleet authority",
            held: 3,
            offered: 2
        }
    );
    newest
        .check_not_older(3, Some(newest.latest_bytes()))
        .unwrap();
    newest
        .check_not_older(2, Some(older.latest_bytes()))
        .unwrap();
    assert_eq!(
        newest
            .check_not_older(3, Some(older.latest_bytes()))
            .unwrap_err(),
        LockError::Fork {
            what: "fleet authority",
            serial: 3
        }
    );
    let held = VerifiedAuthority::from_held(a.public_key(), newest.latest_bytes()).unwrap();
    assert_eq!(held, newest);
}

#[test]
fn states_must_be_canonical_and_bounded() {
    let a = id(0x0a);
    let make = |admins: Vec<PublicKey>, serial| {
        let state = AuthorityState {
            fleet: fleet(),
            serial,
            locked: true,
            admins,
            issued_at: at(T),
            signer: a.public_key(),
        };
        state.sign(&a).to_bytes()
    };
    let mut two = vec![a.public_key(), id(0x0b).public_key()];
    two.sort();
    two.reverse();
    assert!(matches!(
        SignedAuthority::from_bytes(&make(two, 1)),
        Err(LockError::Malformed { .. })
    ));
    assert!(matches!(
        SignedAuthority::from_bytes(&make(vec![], 1)),
        Err(LockError::Malformed { .. })
    ));
    assert!(matches!(
        SignedAuthority::from_bytes(&make(vec![a.public_key()], 0)),
        Err(LockError::Malformed { .. })
    ));
    let many: Vec<PublicKey> =
        AuthorityState::sorted_admins((1..=9).map(|b| id(b).public_key()).collect());
    assert!(matches!(
        SignedAuthority::from_bytes(&make(many, 1)),
        Err(LockError::Malformed { .. })
    ));
    let mut v2 = genesis(&a);
    v2[0] = 2;
    assert_eq!(
        SignedAuthority::from_bytes(&v2).unwrap_err(),
        LockError::UnsupportedVersion {
            what: "fleet authority",
            version: 2
        }
    );
}

#[test]
fn machine_certificates_verify_from_an_admin_or_an_authorized_enrolment_key() {
    let (a, agent) = (id(0x0a), id(0x0c));
    let auth = authority();
    let none = VerifiedRevocations::none();
    let direct = body(&agent).sign_as_admin(&a);
    let checked = direct
        .verify_for(&auth, &none, machine(), &agent.public_key(), at(T + 10))
        .unwrap();
    assert_eq!(checked.hostname.as_str(), "web-1");
    let enrolled = body(&agent).sign_as_enrolment(&secret().signing_key(), authorization(&a));
    enrolled
        .verify_for(&auth, &none, machine(), &agent.public_key(), at(T + 10))
        .unwrap();
    assert_eq!(enrolled.enrolment_key(), Some(secret().public_key()));
    assert_eq!(
        MachineCertificate::from_bytes(&direct.to_bytes()).unwrap(),
        direct
    );

    // The relay's own key is no admin, and cannot authorize an enrolment key either.
    let relay = id(0x99);
    assert!(matches!(
        body(&agent)
            .sign_as_admin(&relay)
            .verify(&auth, &none, at(T)),
        Err(LockError::NotAnAdmin { .. })
    ));
    assert!(matches!(
        body(&agent)
            .sign_as_enrolment(&secret().signing_key(), authorization(&relay))
            .verify(&auth, &none, at(T)),
        Err(LockError::NotAnAdmin { .. })
    ));
    // A proof signed with another key than the authorized enrolment key (a relay reusing an authorization).
    assert!(matches!(
        body(&agent)
            .sign_as_enrolment(&relay, authorization(&a))
            .verify(&auth, &none, at(T)),
        Err(LockError::BadSignature { .. })
    ));
    // A proof seen for one agent key does not certify another: the signature covers the key.
    let MachineIssuer::Enrolment { signature, .. } = enrolled.issuer().clone() else {
        panic!("enrolment issuer")
    };
    let mut other = enrolled.to_bytes();
    let key_at = 1 + 16 + 16;
    other[key_at..key_at + 32].copy_from_slice(id(0x77).public_key().as_bytes());
    let swapped = MachineCertificate::from_bytes(&other).unwrap();
    assert!(
        matches!(swapped.issuer(), MachineIssuer::Enrolment { signature: s, .. } if *s == signature)
    );
    assert!(matches!(
        swapped.verify(&auth, &none, at(T)),
        Err(LockError::BadSignature { .. })
    ));

    // Outside the enrolment key's window, or longer-lived than it allows.
    let late = MachineCertificateBody {
        issued_at: at(T + 3_600),
        expires: at(T + 7_200),
        ..body(&agent)
    };
    assert!(matches!(
        late.sign_as_enrolment(&secret().signing_key(), authorization(&a))
            .verify(&auth, &none, at(T + 3_700)),
        Err(LockError::OutsideAuthorization { .. })
    ));
    let long = MachineCertificateBody {
        expires: at(T + 31_536_001),
        ..body(&agent)
    };
    assert!(matches!(
        long.sign_as_enrolment(&secret().signing_key(), authorization(&a))
            .verify(&auth, &none, at(T)),
        Err(LockError::OutsideAuthorization { .. })
    ));

    // Subjects, lifetime, revocation.
    assert!(matches!(
        direct.verify_for(
            &auth,
            &none,
            MachineId::from_bytes([3; 16]),
            &agent.public_key(),
            at(T)
        ),
        Err(LockError::WrongSubject {
            subject: "machine",
            ..
        })
    ));
    assert!(matches!(
        direct.verify_for(&auth, &none, machine(), &id(0x77).public_key(), at(T)),
        Err(LockError::WrongSubject {
            subject: "agent key",
            ..
        })
    ));
    assert_eq!(
        direct.verify(&auth, &none, at(T + 86_400)).unwrap_err(),
        LockError::Expired {
            what: "machine certificate",
            at: at(T + 86_400)
        }
    );
    assert!(matches!(
        direct.verify(&auth, &none, at(T - CLOCK_SKEW_SECS - 1)),
        Err(LockError::NotYetValid { .. })
    ));
    let revoked_agent = revoking(&[agent.public_key()], None).verify(&auth).unwrap();
    assert!(matches!(
        direct.verify(&auth, &revoked_agent, at(T)),
        Err(LockError::Revoked { .. })
    ));
    let revoked_enrolment = revoking(&[secret().public_key()], None)
        .verify(&auth)
        .unwrap();
    assert!(matches!(
        enrolled.verify(&auth, &revoked_enrolment, at(T)),
        Err(LockError::Revoked { .. })
    ));
    direct.verify(&auth, &revoked_enrolment, at(T)).unwrap();
}

#[test]
fn member_certificates_grant_their_role_to_their_key_only() {
    let a = id(0x0a);
    let auth = authority();
    let none = VerifiedRevocations::none();
    let client = id(0x0d).public_key();
    assert_eq!(
        member(&a, MemberRole::Viewer)
            .verify(&auth, &none, &client, at(T))
            .unwrap(),
        MemberRole::Viewer
    );
    assert!(MemberRole::Viewer.allows(Operation::Shell));
    assert!(!MemberRole::Viewer.allows(Operation::Exec));
    assert!(MemberRole::Member.allows(Operation::Copy));
    assert!(matches!(
        member(&a, MemberRole::Member).verify(&auth, &none, &id(0x77).public_key(), at(T)),
        Err(LockError::WrongSubject {
            subject: "client key",
            ..
        })
    ));
    assert!(matches!(
        member(&id(0x99), MemberRole::Admin).verify(&auth, &none, &client, at(T)),
        Err(LockError::NotAnAdmin { .. })
    ));
    let revoked = revoking(&[client], None).verify(&auth).unwrap();
    assert!(matches!(
        member(&a, MemberRole::Member).verify(&auth, &revoked, &client, at(T)),
        Err(LockError::Revoked { .. })
    ));
    assert!(matches!(
        member(&a, MemberRole::Member).verify(&auth, &none, &client, at(T + 2_592_000)),
        Err(LockError::Expired { .. })
    ));
    let mut bytes = member(&a, MemberRole::Member).to_bytes();
    bytes[1 + 16 + 32] = 7;
    assert!(matches!(
        SignedMemberCertificate::from_bytes(&bytes),
        Err(LockError::Malformed { .. })
    ));
    assert_eq!("viewer".parse::<MemberRole>().unwrap(), MemberRole::Viewer);
    assert!("root".parse::<MemberRole>().is_err());
}

#[test]
fn revocation_lists_only_grow_and_only_admins_sign_them() {
    let auth = authority();
    let first = revoking(&[id(0x0d).public_key()], None);
    let second = revoking(&[id(0x0c).public_key()], Some(first.unverified_list()));
    assert_eq!(second.unverified_list().serial, 2);
    assert_eq!(second.unverified_list().revoked.len(), 2);
    let held = VerifiedRevocations::verify_offered(&auth, Some(&second.to_bytes()), 1).unwrap();
    assert!(held.is_revoked(&id(0x0d).public_key()) && held.is_revoked(&id(0x0c).public_key()));
    assert_eq!(
        VerifiedRevocations::verify_offered(&auth, Some(&first.to_bytes()), 2).unwrap_err(),
        LockError::Rollback {
            what: "revocation list",
            held: 2,
            offered: 1
        }
    );
    let forged =
        RevocationList::successor(None, fleet(), &[], id(0x99).public_key(), at(T)).sign(&id(0x99));
    assert!(matches!(
        forged.verify(&auth),
        Err(LockError::NotAnAdmin { .. })
    ));
    assert_eq!(VerifiedRevocations::from_held(held.bytes()).unwrap(), held);
    assert_eq!(
        VerifiedRevocations::verify_offered(&auth, None, 5)
            .unwrap()
            .serial(),
        0
    );
}

#[test]
fn enrolment_secrets_parse_only_their_one_form_and_never_show_the_secret() {
    let s = secret();
    assert!(!format!("{s:?}").contains("byha"));
    assert_eq!(
        EnrolmentSecret::parse(&format!("  {ENROLMENT_SECRET}\n")).unwrap(),
        s
    );
    assert_eq!(
        EnrolmentSecret::parse("cmdop_ak_x").unwrap_err(),
        EnrolmentSecretError::WrongPrefix
    );
    assert!(matches!(
        EnrolmentSecret::parse(&ENROLMENT_SECRET[..100]),
        Err(EnrolmentSecretError::WrongLength { .. })
    ));
    let upper = ENROLMENT_SECRET.replace("byha", "BYHA");
    assert!(matches!(
        EnrolmentSecret::parse(&upper),
        Err(EnrolmentSecretError::BadCharacter { .. })
    ));
    // Stray bits in the last character of the secret.
    let mut stray = ENROLMENT_SECRET.to_owned();
    stray.pop();
    stray.push('b');
    assert_eq!(
        EnrolmentSecret::parse(&stray).unwrap_err(),
        EnrolmentSecretError::BadEncoding
    );
    let fresh = EnrolmentSecret::generate(id(0x0a).public_key(), &mut rand::rngs::OsRng);
    assert_eq!(EnrolmentSecret::parse(&fresh.expose_text()).unwrap(), fresh);
    assert_ne!(fresh.public_key(), s.public_key());
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..400)
}

proptest! {
    #[test]
    fn decoders_never_panic_and_accept_only_canonical_bytes(bytes in arb_bytes()) {
        if let Ok(x) = SignedAuthority::from_bytes(&bytes) { prop_assert_eq!(x.to_bytes(), bytes.clone()); }
        if let Ok(x) = MachineCertificate::from_bytes(&bytes) { prop_assert_eq!(x.to_bytes(), bytes.clone()); }
        if let Ok(x) = SignedEnrolmentAuthorization::from_bytes(&bytes) { prop_assert_eq!(x.to_bytes(), bytes.clone()); }
        if let Ok(x) = SignedMemberCertificate::from_bytes(&bytes) { prop_assert_eq!(x.to_bytes(), bytes.clone()); }
        if let Ok(x) = SignedRevocationList::from_bytes(&bytes) { prop_assert_eq!(x.to_bytes(), bytes.clone()); }
        if let Ok(x) = StreamCredentials::from_bytes(&bytes) { prop_assert_eq!(x.to_bytes(), bytes.clone()); }
    }

    #[test]
    fn any_tampered_byte_of_any_document_is_refused(which in 0usize..5, index in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let (a, agent) = (id(0x0a), id(0x0c));
        let auth = authority();
        let none = VerifiedRevocations::none();
        let documents = [
            genesis(&a),
            body(&agent).sign_as_admin(&a).to_bytes(),
            body(&agent).sign_as_enrolment(&secret().signing_key(), authorization(&a)).to_bytes(),
            member(&a, MemberRole::Member).to_bytes(),
            revoking(&[], None).to_bytes(),
        ];
        let mut bytes = documents[which].clone();
        let i = index.index(bytes.len());
        bytes[i] ^= flip;
        let accepted = match which {
            0 => VerifiedAuthority::verify(fleet(), &a.public_key(), &[bytes]).is_ok(),
            1 | 2 => MachineCertificate::from_bytes(&bytes)
                .is_ok_and(|c| c.verify_for(&auth, &none, machine(), &agent.public_key(), at(T)).is_ok()),
            3 => SignedMemberCertificate::from_bytes(&bytes)
                .is_ok_and(|c| c.verify(&auth, &none, &id(0x0d).public_key(), at(T)).is_ok()),
            _ => SignedRevocationList::from_bytes(&bytes).is_ok_and(|l| l.verify(&auth).is_ok()),
        };
        prop_assert!(!accepted, "a tampered document {which} verified");
    }
}
