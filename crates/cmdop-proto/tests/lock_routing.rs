//! Routing in a locked fleet, sans IO: the relay resolves names over the certified machines by their
//! certified hostnames, says so when only an uncertified machine matches, hands the client the lock material
//! with the route, and refuses a client too old to check it.

// Helpers outside #[test] functions unwrap too: a panic in a test harness is a test failure.
#![allow(clippy::unwrap_used)]

use cmdop_fleet::lock::{AuthorityState, MachineCertificateBody};
use cmdop_fleet::{
    AgentInfo, ApiKey, ApiKeySpec, CredentialRecord, Fleet, FleetId, FleetName, Hostname, Machine,
    MachineId, Role, Timestamp,
};
use cmdop_identity::{Identity, Seed};
use cmdop_proto::e2e::StreamKind;
use cmdop_proto::login::ClientSession;
use cmdop_proto::routing::{LockMaterial, RouteContext, resolve_route, scope};
use cmdop_proto::wire::{ErrorCode, OpenStream};
use rand::SeedableRng;
use rand::rngs::StdRng;

const NOW: u64 = 1_700_000_000;

fn id(byte: u8) -> Identity {
    Identity::from_seed(&Seed::from_bytes([byte; 32]))
}

fn machine(fleet: FleetId, byte: u8, hostname: &str) -> Machine {
    Machine {
        id: MachineId::from_bytes([byte; 16]),
        fleet,
        public_key: id(byte).public_key(),
        hostname: Hostname::parse(hostname).unwrap(),
        name: None,
        info: AgentInfo::new("linux", "x86_64", "1").unwrap(),
        labels: cmdop_fleet::MachineLabels::default(),
        online: true,
        last_heartbeat: Some(Timestamp::from_unix_seconds(NOW)),
        registered: Timestamp::from_unix_seconds(NOW),
    }
}

fn client(fleet: &Fleet) -> ClientSession {
    let mut rng = StdRng::seed_from_u64(1);
    let (record, secret) = ApiKey::issue(
        ApiKeySpec {
            fleet: fleet.id,
            role: Role::Member,
            label: None,
            expires: None,
        },
        Timestamp::from_unix_seconds(NOW),
        &mut rng,
    )
    .unwrap();
    let authenticated = CredentialRecord::ApiKey(record)
        .authenticate(&secret, Timestamp::from_unix_seconds(NOW))
        .unwrap();
    ClientSession {
        authenticated,
        fleets: vec![fleet.clone()],
        client_key: id(0x77).public_key(),
        description: "api key".into(),
    }
}

fn certificate(admin: &Identity, m: &Machine, hostname: &str) -> Vec<u8> {
    MachineCertificateBody {
        fleet: m.fleet,
        machine: m.id,
        agent_key: m.public_key,
        hostname: Hostname::parse(hostname).unwrap(),
        issued_at: Timestamp::from_unix_seconds(NOW),
        expires: Timestamp::from_unix_seconds(NOW + 3600),
    }
    .sign_as_admin(admin)
    .to_bytes()
}

#[test]
fn a_locked_fleet_routes_certified_machines_by_their_certified_names() {
    let fleet = Fleet {
        id: FleetId::from_bytes([1; 16]),
        name: FleetName::parse("prod").unwrap(),
    };
    let admin = id(0x0a);
    // web-1 was certified as web-1 and now reports "web-9"; db-7 is not certified.
    let web = machine(fleet.id, 2, "web-9");
    let db = machine(fleet.id, 3, "db-7");
    let machines = vec![web.clone(), db];
    let lock = LockMaterial {
        authority: vec![
            AuthorityState {
                fleet: fleet.id,
                serial: 1,
                locked: true,
                admins: vec![admin.public_key()],
                issued_at: Timestamp::from_unix_seconds(NOW),
                signer: admin.public_key(),
            }
            .sign(&admin)
            .to_bytes(),
        ],
        revocations: None,
        machine_certificates: vec![(web.id, certificate(&admin, &web, "web-1"))],
        member_certificate: Some(vec![9]),
    };
    let session = client(&fleet);
    let trust = id(0x7e);
    let route = |name: &str| {
        let request = OpenStream {
            workspace: None,
            machine: name.to_owned(),
            kind: StreamKind::Exec.to_byte(),
        };
        let scoped = scope(&session, &request).unwrap();
        resolve_route(
            &scoped,
            &request,
            &machines,
            &RouteContext {
                client_key: session.client_key,
                trust_key: &trust,
                channel_id: [4; 16],
                now: Timestamp::from_unix_seconds(NOW),
                lock: &lock,
            },
        )
    };
    let found = route("web-1").unwrap();
    assert_eq!(found.machine.id, web.id);
    assert_eq!(found.ready.machine.hostname, "web-1");
    let material = found.ready.lock.as_ref().unwrap();
    assert_eq!(material.authority, lock.authority);
    assert_eq!(material.member_certificate, Some(vec![9]));
    assert!(material.machine_certificate.is_some());
    // The name the agent reports now is not the certified one.
    assert_eq!(
        route("web-9").unwrap_err().code,
        ErrorCode::MACHINE_NOT_FOUND
    );
    // An uncertified machine is named as such.
    let refusal = route("db-7").unwrap_err();
    assert_eq!(refusal.code, ErrorCode::NOT_CERTIFIED);
    assert!(
        refusal.message.contains("cmdop fleet lock sign"),
        "{}",
        refusal.message
    );
    // A client that asked with OpenStream cannot check the lock: refused.
    assert_eq!(
        found.stream_ready().unwrap_err().code,
        ErrorCode::FLEET_LOCKED
    );
}
