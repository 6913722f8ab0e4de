//! A compromised relay, through the real agent and CLI binaries: the relay runs in this process with a
//! [`Meddler`] that does what an attacker who owns it could (sign capabilities with its own key, substitute
//! machine keys, route to the wrong machine, replay capabilities, serve old revocation lists, strip or forge
//! member certificates and fleet locks, rename machines, inject terminal escapes). Every case must be refused
//! by the agent or the client before the command runs (each runs `touch MARKER`, which must not exist
//! afterwards), and the refusal must say why.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmdop_fleet::lock::{AuthorityState, MachineCertificateBody, MemberCertificate, MemberRole};
use cmdop_fleet::{Capability, FleetId, Hostname, MachineId, OperationSet, Timestamp};
use cmdop_identity::{Identity, PublicKey};
use cmdop_proto::wire::{KeyBytes, MachineInfo, RelayMessage, RouteReady};
use cmdop_relay::server::{MeddledRoute, Meddler, PeerKind, Server, ServerConfig};
use cmdop_relay::tls::TlsIdentity;
use cmdop_tests::Contour;

/// What the relay does wrong right now.
#[derive(Clone, Default)]
enum Case {
    #[default]
    Honest,
    OwnCapability,
    /// A capability seen on an earlier route to `machine`: one issued to another client, or to the same one
    /// (for another stream).
    Replay {
        machine: [u8; 16],
        other_client: bool,
    },
    NewKeyNewId,
    NewKeyOldId,
    /// The stream goes to this machine's agent, whatever the client was told.
    WrongMachine([u8; 16]),
    /// This machine answers (its id, key and agent), under the name it is given.
    Rename {
        machine: [u8; 16],
        hostname: String,
    },
    /// The machine answered keeps its identity, but the relay reports another hostname for it.
    ReportedHostname(String),
    Escapes,
    /// Route answers and fleet-lock pushes carry this revocation list.
    OldRevocations(Vec<u8>),
    /// Route answers carry no lock at all.
    WithholdLock,
    StripMember,
    ForgeMember,
    /// A lock of the relay's own: its own fleet key, machine and member certificates.
    ForgeLock,
}

/// A route as the relay answered it: (machine id, client key, answer).
type Seen = ([u8; 16], [u8; 32], RouteReady);

/// A relay that does whatever the current [`Case`] says, and remembers the routes it answered.
struct Hostile {
    case: Mutex<Case>,
    /// Every route answered.
    seen: Mutex<Vec<Seen>>,
    /// The relay's own key, which signs whatever it forges.
    own: Identity,
}

const INJECTED: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2K";

impl Hostile {
    fn set(&self, case: Case) {
        *self.case.lock().unwrap() = case;
    }

    fn case(&self) -> Case {
        self.case.lock().unwrap().clone()
    }

    fn seen_route(&self, id: [u8; 16]) -> RouteReady {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .find(|s| s.0 == id)
            .map(|s| s.2.clone())
            .expect("a route to that machine was seen")
    }

    fn forged_lock(&self, fleet: FleetId, route: &MeddledRoute) -> cmdop_proto::wire::RouteLock {
        let me = self.own.public_key();
        let now = Timestamp::from_unix_seconds(now());
        let chain = vec![
            AuthorityState {
                fleet,
                serial: 1,
                locked: true,
                admins: vec![me],
                issued_at: now,
                signer: me,
            }
            .sign(&self.own)
            .to_bytes(),
        ];
        let agent_key = PublicKey::from_bytes(&route.ready.machine.public_key.0).unwrap();
        let machine_certificate = MachineCertificateBody {
            fleet,
            machine: MachineId::from_bytes(route.ready.machine.id.0),
            agent_key,
            hostname: Hostname::parse(&route.ready.machine.hostname).unwrap(),
            issued_at: now,
            expires: now.saturating_add_seconds(3600),
        }
        .sign_as_admin(&self.own)
        .to_bytes();
        cmdop_proto::wire::RouteLock {
            authority: chain,
            revocations: None,
            machine_certificate: Some(machine_certificate),
            member_certificate: Some(self.member_certificate(fleet, route.header.client_key)),
        }
    }

    fn member_certificate(&self, fleet: FleetId, client: KeyBytes) -> Vec<u8> {
        let now = Timestamp::from_unix_seconds(now());
        MemberCertificate {
            fleet,
            client_key: PublicKey::from_bytes(&client.0).unwrap(),
            role: MemberRole::Admin,
            issued_at: now,
            expires: now.saturating_add_seconds(3600),
            signer: self.own.public_key(),
        }
        .sign(&self.own)
        .to_bytes()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Meddler for Hostile {
    fn control(&self, to: PeerKind, message: &mut RelayMessage) {
        match (self.case(), message) {
            (Case::Escapes, RelayMessage::Machines(machines)) => {
                for machine in machines {
                    machine.name = format!("{}{INJECTED}", machine.name);
                    machine.os = format!("linux{INJECTED}");
                    machine.agent_version = format!("1{INJECTED}");
                }
            }
            (Case::Escapes, RelayMessage::Error(error)) => error.message.push_str(INJECTED),
            (Case::Escapes, RelayMessage::Welcome(welcome)) => welcome.principal.push_str(INJECTED),
            // Pushed to agents; a client asking (an admin's tools) gets the truth, or it could not sign anything.
            (Case::OldRevocations(list), RelayMessage::FleetLock(lock))
                if to == PeerKind::Agent =>
            {
                lock.revocations = Some(list);
            }
            _ => {}
        }
    }

    fn route(&self, route: &mut MeddledRoute) {
        self.seen.lock().unwrap().push((
            route.ready.machine.id.0,
            route.header.client_key.0,
            route.ready.clone(),
        ));
        let fleet = FleetId::from_bytes(route.ready.fleet_id.0);
        match self.case() {
            Case::Honest | Case::Escapes => {}
            Case::OwnCapability => {
                let capability = Capability {
                    client_key: PublicKey::from_bytes(&route.header.client_key.0).unwrap(),
                    fleet,
                    machine: MachineId::from_bytes(route.ready.machine.id.0),
                    channel: route.ready.channel_id,
                    operations: OperationSet::all(),
                    not_before: Timestamp::from_unix_seconds(now() - 60),
                    not_after: Timestamp::from_unix_seconds(now() + 300),
                };
                route.ready.capability = capability.sign(&self.own).to_bytes();
            }
            Case::Replay {
                machine,
                other_client,
            } => {
                let seen = self.seen.lock().unwrap();
                let client = route.header.client_key.0;
                let old = seen
                    .iter()
                    .rev()
                    .skip(1)
                    .find(|s| s.0 == machine && (s.1 != client) == other_client)
                    .expect("a capability to replay");
                route.ready.capability = old.2.capability.clone();
            }
            Case::NewKeyNewId => {
                route.ready.machine.id.0 = [0x5a; 16];
                route.ready.machine.public_key = KeyBytes(self.own.public_key().to_bytes());
            }
            Case::NewKeyOldId => {
                route.ready.machine.public_key = KeyBytes(self.own.public_key().to_bytes());
            }
            Case::WrongMachine(id) => route.agent = MachineId::from_bytes(id),
            Case::Rename { machine, hostname } => {
                // The other machine's identity and certificate, under the name asked for.
                let other = self.seen_route(machine);
                route.ready.machine = MachineInfo {
                    hostname,
                    ..other.machine
                };
                if let (Some(lock), Some(theirs)) = (&mut route.ready.lock, other.lock) {
                    lock.machine_certificate = theirs.machine_certificate;
                }
                route.agent = MachineId::from_bytes(machine);
            }
            Case::ReportedHostname(hostname) => route.ready.machine.hostname = hostname,
            Case::OldRevocations(list) => {
                if let Some(lock) = &mut route.ready.lock {
                    lock.revocations = Some(list);
                }
            }
            Case::WithholdLock => route.ready.lock = None,
            Case::StripMember => {
                if let Some(lock) = &mut route.ready.lock {
                    lock.member_certificate = None;
                }
            }
            Case::ForgeMember => {
                let forged = self.member_certificate(fleet, route.header.client_key);
                if let Some(lock) = &mut route.ready.lock {
                    lock.member_certificate = Some(forged);
                }
            }
            Case::ForgeLock => route.ready.lock = Some(self.forged_lock(fleet, route)),
        }
    }
}

/// A contour around an in-process relay made hostile by `hostile`, with fleet `prod` and machines `web-1` and
/// `web-2` online.
fn contour(hostile: &Arc<Hostile>, runtime: &tokio::runtime::Runtime) -> Contour {
    let meddler: Arc<dyn Meddler> = hostile.clone();
    let relay = |data_dir: &Path| {
        let (tls, _) = TlsIdentity::load_or_generate(data_dir).unwrap();
        let mut config =
            ServerConfig::new(data_dir.to_owned(), "127.0.0.1:0".parse().unwrap(), tls);
        config.meddler = Some(meddler);
        let server = runtime.block_on(async { Server::bind(config) }).unwrap();
        let address = server.local_addr().unwrap().to_string();
        let fingerprint = server.fingerprint().to_string();
        runtime.spawn(server.run(std::future::pending()));
        (address, fingerprint)
    };
    Contour::builder_in_process(relay)
        .fleet("prod")
        .agent("web-1", "prod")
        .agent("web-2", "prod")
        .start()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn id(c: &Contour, hostname: &str) -> [u8; 16] {
    c.machine(hostname)
        .id
        .parse::<MachineId>()
        .unwrap()
        .to_bytes()
}

/// Runs `touch` on `machine` as `client`; returns the output and whether the marker exists.
fn touch(c: &Contour, client: &str, key: &Path, machine: &str, marker: &str) -> (Output, bool) {
    let path: PathBuf = c.root.path().join(marker);
    let out = cmdop_tests::run(
        c.cli_with_key(client, key)
            .args(["connect", "exec", machine, "--", "touch"])
            .arg(&path),
    );
    (out, path.exists())
}

/// The case is refused before the command runs, with `why` in the message.
fn refused(c: &Contour, client: &str, key: &Path, machine: &str, why: &str) {
    let marker = format!(
        "marker-{}",
        why.replace(|ch: char| !ch.is_ascii_alphanumeric(), "-")
    );
    let (out, ran) = touch(c, client, key, machine, &marker);
    let stderr = text(&out.stderr);
    assert!(!ran, "{why}: the command ran: {stderr}");
    assert_eq!(out.status.code(), Some(255), "{why}: {stderr}");
    assert!(stderr.contains(why), "expected {why:?} in: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "a raw escape reached the terminal: {stderr:?}"
    );
}

fn works(c: &Contour, client: &str, key: &Path, machine: &str, marker: &str) {
    let (out, ran) = touch(c, client, key, machine, marker);
    assert!(ran, "{}", text(&out.stderr));
}

fn hostile() -> Arc<Hostile> {
    Arc::new(Hostile {
        case: Mutex::new(Case::Honest),
        seen: Mutex::new(Vec::new()),
        own: Identity::generate(&mut rand::rngs::OsRng),
    })
}

#[test]
fn an_unlocked_fleet_refuses_what_a_hostile_relay_forges() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let hostile = hostile();
    let c = contour(&hostile, &runtime);
    let member = c.member_key("prod");
    let other = c.api_key("prod", "member").1;
    // First contacts pin both machines (and give the relay capabilities to replay).
    works(&c, "alice", &member, "web-1", "pin-1");
    works(&c, "alice", &member, "web-2", "pin-2");
    works(&c, "bob", &other, "web-1", "bob-1");
    let (web1, web2) = (id(&c, "web-1"), id(&c, "web-2"));

    hostile.set(Case::OwnCapability);
    refused(
        &c,
        "alice",
        &member,
        "web-1",
        "not signed by this fleet's trust key",
    );
    hostile.set(Case::Replay {
        machine: web2,
        other_client: false,
    });
    refused(
        &c,
        "alice",
        &member,
        "web-1",
        "issued for a different machine",
    );
    hostile.set(Case::Replay {
        machine: web1,
        other_client: false,
    });
    refused(
        &c,
        "alice",
        &member,
        "web-1",
        "issued for a different stream",
    );
    hostile.set(Case::Replay {
        machine: web1,
        other_client: true,
    });
    refused(
        &c,
        "alice",
        &member,
        "web-1",
        "issued to a different client key",
    );
    hostile.set(Case::NewKeyNewId);
    refused(
        &c,
        "alice",
        &member,
        "web-1",
        "is not the machine pinned for that name",
    );
    hostile.set(Case::NewKeyOldId);
    refused(&c, "alice", &member, "web-1", "has changed its key");
    hostile.set(Case::WrongMachine(web2));
    refused(&c, "alice", &member, "web-1", "reached a different machine");
    hostile.set(Case::Rename {
        machine: web2,
        hostname: "web-1".into(),
    });
    refused(
        &c,
        "alice",
        &member,
        "web-1",
        "is not the machine pinned for that name",
    );
    hostile.set(Case::ReportedHostname(format!("web-1{INJECTED}")));
    refused(&c, "carol", &member, "web-1", "invalid hostname");

    // Escapes in everything the relay says reach no terminal raw.
    hostile.set(Case::Escapes);
    let list = cmdop_tests::run(c.cli_with_key("alice", &member).args(["connect", "--list"]));
    assert!(list.status.success(), "{}", text(&list.stderr));
    let shown = text(&list.stdout);
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
    assert!(shown.contains("\\e]0;pwned\\x{7}\\e[2K"), "{shown}");
    let status = cmdop_tests::run(c.cli_with_key("alice", &member).arg("status"));
    assert!(
        !text(&status.stdout).contains('\u{1b}'),
        "{:?}",
        text(&status.stdout)
    );
    refused(&c, "alice", &member, "nowhere", "\\e]0;pwned");

    // And an honest relay again: nothing was pinned wrongly on the way.
    hostile.set(Case::Honest);
    works(&c, "alice", &member, "web-1", "after");
}

#[test]
fn a_locked_fleet_refuses_what_a_hostile_relay_forges() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let hostile = hostile();
    let mut c = contour(&hostile, &runtime);
    let member = c.member_key("prod");
    let fleet_key = c.lock_fleet("prod", "admin");
    c.certify("admin", "prod", "web-1");
    c.certify("admin", "prod", "web-2");
    c.add_member("admin", "prod", "alice", &member, "member", &fleet_key);
    c.add_member("admin", "prod", "dave", &member, "member", &fleet_key);
    works(&c, "alice", &member, "web-1", "locked-1");
    works(&c, "alice", &member, "web-2", "locked-2");
    let web2 = id(&c, "web-2");

    // Machine keys and names come from certificates, not from the relay.
    hostile.set(Case::NewKeyOldId);
    refused(&c, "alice", &member, "web-1", "agent key");
    hostile.set(Case::NewKeyNewId);
    refused(&c, "alice", &member, "web-1", "the relay substituted it");
    hostile.set(Case::ReportedHostname("db-7".into()));
    refused(&c, "alice", &member, "web-1", "the relay renamed it");
    hostile.set(Case::Rename {
        machine: web2,
        hostname: "web-2".into(),
    });
    refused(
        &c,
        "alice",
        &member,
        "web-1",
        "display names are not certified",
    );
    hostile.set(Case::WrongMachine(web2));
    refused(&c, "alice", &member, "web-1", "reached a different machine");
    hostile.set(Case::Replay {
        machine: web2,
        other_client: false,
    });
    refused(
        &c,
        "alice",
        &member,
        "web-1",
        "issued for a different machine",
    );
    hostile.set(Case::OwnCapability);
    refused(
        &c,
        "alice",
        &member,
        "web-1",
        "not signed by this fleet's trust key",
    );

    // Membership comes from admins, not from the relay.
    hostile.set(Case::StripMember);
    refused(&c, "alice", &member, "web-1", "no member certificate");
    hostile.set(Case::ForgeMember);
    refused(
        &c,
        "alice",
        &member,
        "web-1",
        "not an admin key of the fleet",
    );
    hostile.set(Case::ForgeLock);
    refused(&c, "alice", &member, "web-1", "not the pinned");
    // A client that never pinned the fleet key does not trust the relay's lock either: no trust on first use.
    refused(
        &c,
        "erin",
        &member,
        "web-1",
        "which this client has not pinned",
    );
    // Withholding the lock: the pinned client refuses; an unpinned one gets through to the agent, which
    // keeps enforcing the lock it holds.
    hostile.set(Case::WithholdLock);
    refused(&c, "alice", &member, "web-1", "withholding it");
    refused(&c, "frank", &member, "web-1", "no member certificate");

    // Revocation lists only move forward. List 1 revokes a spare enrolment key, list 2 dave; the agent got
    // both pushed honestly, alice saw list 2.
    hostile.set(Case::Honest);
    c.enrolment_key("admin", "prod", "spare.key", &[]);
    c.lock_admin_ok("admin", "prod", &["revoke", &spare_enrolment_key(&c)]);
    let first_list = latest_revocations(&c);
    let dave = c.client_fingerprint("dave", &member);
    c.lock_admin_ok("admin", "prod", &["revoke", &dave]);
    works(&c, "alice", &member, "web-1", "list-2");
    // Served list 1 again: alice's client refuses it; dave's client (which never saw list 2) goes on, and
    // the agent, holding list 2, refuses him.
    hostile.set(Case::OldRevocations(first_list));
    refused(&c, "alice", &member, "web-1", "older than serial 2");
    refused(&c, "dave", &member, "web-1", "revoked");
    // The next change pushes list 1 to the agent instead of list 3: it keeps list 2, and dave stays out.
    c.lock_admin_ok("admin", "prod", &["revoke", &c.agent_fingerprint("web-2")]);
    let refusal = c
        .machine_mut("web-1")
        .agent
        .wait_for(Duration::from_secs(10), |line| {
            line.contains("fleet lock update refused")
                .then(|| line.to_owned())
        });
    assert!(
        refusal.contains("older than serial 2 held here"),
        "{refusal}"
    );
    refused(&c, "dave", &member, "web-1", "revoked");
}

/// The relay's current revocation list, as a client asks for it.
fn latest_revocations(c: &Contour) -> Vec<u8> {
    let status: serde_json::Value =
        serde_json::from_str(&c.lock_admin_ok("admin", "prod", &["status", "--json"])).unwrap();
    assert!(status["revocation_serial"].as_u64().unwrap() >= 1);
    // The list bytes themselves come from the store the test shares with the in-process relay.
    let store = cmdop_relay::store::Store::open(&c.data_dir()).unwrap();
    let fleet = store.fleet_by_name("prod").unwrap().unwrap().fleet.id;
    store.stored_lock(fleet).unwrap().revocations.unwrap()
}

/// The fingerprint of the fleet's (first) enrolment key.
fn spare_enrolment_key(c: &Contour) -> String {
    let status: serde_json::Value =
        serde_json::from_str(&c.lock_admin_ok("admin", "prod", &["status", "--json"])).unwrap();
    status["enrolment_keys"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned()
}
