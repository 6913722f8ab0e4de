//! `cmdop fleet lock status`: what a fleet's lock holds, each document verified here against the fleet key
//! (pinned, or claimed on an admin's first look), with the reason next to anything that does not verify.

use cmdop_client::ClientError;
use cmdop_fleet::lock::{
    MachineCertificate, MachineIssuer, SignedEnrolmentAuthorization, SignedMemberCertificate,
    SignedRevocationList, VerifiedAuthority, VerifiedRevocations,
};
use cmdop_fleet::{FleetId, Timestamp};
use cmdop_identity::PublicKey;
use cmdop_proto::display::escaped;
use cmdop_proto::wire::{FleetLockState, LockItem};
use serde_json::{Value, json};

use crate::exit::Failure;
use crate::fleet_lock::{Admin, now};
use crate::table::{print_columns, rfc3339};

/// Prints the lock of the fleet named `workspace` (or the only one).
pub(crate) async fn show(
    admin: &mut Admin<'_>,
    workspace: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    // Members may look at the lock; only admins see what the relay stores for it.
    let (lock, items) = match admin.client.fleet_lock_items(workspace).await {
        Ok(found) => found,
        Err(ClientError::Forbidden(_)) => (admin.lock(workspace).await?.0, Vec::new()),
        Err(err) => return Err(err.into()),
    };
    let fleet = FleetId::from_bytes(lock.fleet_id.0);
    if lock.authority.is_empty() {
        if json {
            println!(
                "{:#}",
                json!({ "fleet": fleet.to_string(), "locked": false, "authority": null })
            );
        } else {
            println!("fleet {fleet} is not locked; `cmdop fleet lock init` locks it");
        }
        return Ok(());
    }
    let (authority, pinned) = admin_view(admin, &lock, fleet)?;
    let revocations = revocations(&authority, &lock);
    let me = admin.admin_key(fleet)?.map(|key| key.public_key());
    let report = Report::new(&authority, &revocations, &items, now());
    if json {
        println!("{:#}", report.json(&authority, &revocations, pinned, me));
    } else {
        report.print(&authority, &revocations, pinned, me);
    }
    Ok(())
}

/// The authority verified from the pinned fleet key (`true`), or from the one the chain claims (`false`).
fn admin_view(
    admin: &Admin<'_>,
    lock: &FleetLockState,
    fleet: FleetId,
) -> Result<(VerifiedAuthority, bool), Failure> {
    let known = cmdop_client::known_machines::KnownMachines::in_dir(admin.profile_dir());
    let pinned = known
        .fleet_pin(&admin.relay_fingerprint(), fleet)?
        .is_some();
    let (authority, _) = admin.verified(lock, fleet)?;
    Ok((authority, pinned))
}

fn revocations(authority: &VerifiedAuthority, lock: &FleetLockState) -> VerifiedRevocations {
    lock.revocations
        .as_deref()
        .and_then(|bytes| SignedRevocationList::from_bytes(bytes).ok())
        .and_then(|list| list.verify(authority).ok())
        .unwrap_or_default()
}

/// Every key the relay's items name (agent, member, client, enrolment and candidate keys): what `revoke`
/// looks a fingerprint up in.
pub(crate) fn keys_of(items: &[LockItem]) -> Vec<PublicKey> {
    let mut keys = Vec::new();
    for item in items {
        match item {
            LockItem::MachineCertificate(bytes) => {
                if let Ok(certificate) = MachineCertificate::from_bytes(bytes) {
                    keys.push(certificate.unverified_body().agent_key);
                    keys.extend(certificate.enrolment_key());
                }
            }
            LockItem::MemberCertificate(bytes) => {
                if let Ok(certificate) = SignedMemberCertificate::from_bytes(bytes) {
                    keys.push(certificate.unverified().client_key);
                }
            }
            LockItem::EnrolmentKey { authorization, .. } => {
                if let Ok(signed) = SignedEnrolmentAuthorization::from_bytes(authorization) {
                    keys.push(signed.unverified().enrolment_key);
                }
            }
            LockItem::ClientKey { public_key, .. } | LockItem::AdminCandidate(public_key) => {
                keys.extend(PublicKey::from_bytes(&public_key.0).ok());
            }
        }
    }
    keys
}

/// One row per document, with its verdict.
struct Report {
    machines: Vec<Row>,
    members: Vec<Row>,
    enrolment_keys: Vec<Row>,
    clients: Vec<Row>,
    candidates: Vec<Row>,
}

/// A row of a section: its cells, and its JSON.
struct Row {
    cells: Vec<String>,
    json: Value,
}

fn verdict<T, E: std::fmt::Display>(result: &Result<T, E>) -> String {
    match result {
        Ok(_) => "valid".to_owned(),
        Err(err) => format!("INVALID: {err}"),
    }
}

fn when(at: Timestamp) -> String {
    rfc3339(at.as_unix_seconds()).unwrap_or_else(|| at.as_unix_seconds().to_string())
}

impl Report {
    fn new(
        authority: &VerifiedAuthority,
        revocations: &VerifiedRevocations,
        items: &[LockItem],
        now: Timestamp,
    ) -> Self {
        let mut report = Self {
            machines: Vec::new(),
            members: Vec::new(),
            enrolment_keys: Vec::new(),
            clients: Vec::new(),
            candidates: Vec::new(),
        };
        let certificates: Vec<MachineCertificate> = items
            .iter()
            .filter_map(|item| match item {
                LockItem::MachineCertificate(bytes) => MachineCertificate::from_bytes(bytes).ok(),
                _ => None,
            })
            .collect();
        for certificate in &certificates {
            report
                .machines
                .push(machine_row(certificate, authority, revocations, now));
        }
        let members: Vec<PublicKey> = items
            .iter()
            .filter_map(|item| match item {
                LockItem::MemberCertificate(bytes) => {
                    let certificate = SignedMemberCertificate::from_bytes(bytes).ok()?;
                    let key = certificate.unverified().client_key;
                    report
                        .members
                        .push(member_row(&certificate, authority, revocations, now));
                    Some(key)
                }
                _ => None,
            })
            .collect();
        for item in items {
            match item {
                LockItem::EnrolmentKey {
                    authorization,
                    used,
                } => report.enrolment_keys.extend(enrolment_row(
                    authorization,
                    *used,
                    &certificates,
                    authority,
                )),
                LockItem::ClientKey {
                    public_key,
                    principal,
                } => report.clients.extend(
                    PublicKey::from_bytes(&public_key.0)
                        .ok()
                        .filter(|key| !members.contains(key))
                        .map(|key| simple_row(&key, &escaped(principal))),
                ),
                LockItem::AdminCandidate(key) => report.candidates.extend(
                    PublicKey::from_bytes(&key.0)
                        .ok()
                        .filter(|key| !authority.is_admin(key))
                        .map(|key| simple_row(&key, "offered with `lock init`")),
                ),
                _ => {}
            }
        }
        report
    }

    fn print(
        &self,
        authority: &VerifiedAuthority,
        revocations: &VerifiedRevocations,
        pinned: bool,
        me: Option<PublicKey>,
    ) {
        let fleet_key = authority.fleet_key().fingerprint();
        println!("fleet:       {}", authority.fleet());
        println!(
            "fleet key:   {fleet_key} ({})",
            if pinned {
                "pinned here".to_owned()
            } else {
                format!("NOT pinned here; `cmdop fleet lock trust {fleet_key}` after checking it")
            }
        );
        println!(
            "state:       {} (authority serial {})",
            if authority.is_locked() {
                "locked"
            } else {
                "lock disabled"
            },
            authority.serial()
        );
        for admin in &authority.latest().admins {
            let mine = if Some(*admin) == me {
                " (this machine)"
            } else {
                ""
            };
            println!("admin key:   {}{mine}", admin.fingerprint());
        }
        match revocations.list() {
            Some(list) => {
                println!(
                    "revocations: serial {}, {} key(s)",
                    list.serial,
                    list.revoked.len()
                );
                for key in &list.revoked {
                    println!("  revoked:   {}", key.fingerprint());
                }
            }
            None => println!("revocations: none"),
        }
        section(
            "machines",
            &["HOSTNAME", "ID", "KEY", "SIGNED BY", "EXPIRES", "STATUS"],
            &self.machines,
        );
        section(
            "members",
            &["KEY", "ROLE", "EXPIRES", "STATUS"],
            &self.members,
        );
        section(
            "enrolment keys",
            &["KEY", "USABLE UNTIL", "USES", "STATUS"],
            &self.enrolment_keys,
        );
        section(
            "client keys without a membership",
            &["KEY", "WHO"],
            &self.clients,
        );
        section("offered admin keys", &["KEY", "NOTE"], &self.candidates);
    }

    fn json(
        &self,
        authority: &VerifiedAuthority,
        revocations: &VerifiedRevocations,
        pinned: bool,
        me: Option<PublicKey>,
    ) -> Value {
        let rows = |rows: &[Row]| rows.iter().map(|row| row.json.clone()).collect::<Vec<_>>();
        json!({
            "fleet": authority.fleet().to_string(),
            "fleet_key": authority.fleet_key().fingerprint().to_string(),
            "fleet_key_pinned": pinned,
            "locked": authority.is_locked(),
            "authority_serial": authority.serial(),
            "admin_keys": authority.latest().admins.iter().map(|k| k.fingerprint().to_string()).collect::<Vec<_>>(),
            "this_machine_admin_key": me.filter(|k| authority.is_admin(k)).map(|k| k.fingerprint().to_string()),
            "revocation_serial": revocations.serial(),
            "revoked": revocations.list().map(|l| l.revoked.iter().map(|k| k.fingerprint().to_string()).collect::<Vec<_>>()).unwrap_or_default(),
            "machines": rows(&self.machines),
            "members": rows(&self.members),
            "enrolment_keys": rows(&self.enrolment_keys),
            "client_keys": rows(&self.clients),
            "offered_admin_keys": rows(&self.candidates),
        })
    }
}

fn section(title: &str, header: &[&str], rows: &[Row]) {
    println!("\n{title}:");
    if rows.is_empty() {
        println!("  (none)");
        return;
    }
    let cells: Vec<Vec<String>> = rows.iter().map(|row| row.cells.clone()).collect();
    print_columns(header, &cells);
}

fn machine_row(
    certificate: &MachineCertificate,
    authority: &VerifiedAuthority,
    revocations: &VerifiedRevocations,
    now: Timestamp,
) -> Row {
    let body = certificate.unverified_body();
    let signer = match certificate.issuer() {
        MachineIssuer::Admin { key, .. } => format!("admin {}", key.fingerprint()),
        MachineIssuer::Enrolment { authorization, .. } => {
            format!(
                "enrolment key {}",
                authorization.unverified().enrolment_key.fingerprint()
            )
        }
    };
    let status = verdict(&certificate.verify(authority, revocations, now));
    Row {
        cells: vec![
            body.hostname.to_string(),
            body.machine.to_string(),
            body.agent_key.fingerprint().to_string(),
            signer.clone(),
            when(body.expires),
            status.clone(),
        ],
        json: json!({
            "hostname": body.hostname.as_str(),
            "id": body.machine.to_string(),
            "fingerprint": body.agent_key.fingerprint().to_string(),
            "signed_by": signer,
            "expires": when(body.expires),
            "status": status,
        }),
    }
}

fn member_row(
    certificate: &SignedMemberCertificate,
    authority: &VerifiedAuthority,
    revocations: &VerifiedRevocations,
    now: Timestamp,
) -> Row {
    let member = certificate.unverified();
    let status = verdict(&certificate.verify(authority, revocations, &member.client_key, now));
    Row {
        cells: vec![
            member.client_key.fingerprint().to_string(),
            member.role.to_string(),
            when(member.expires),
            status.clone(),
        ],
        json: json!({
            "fingerprint": member.client_key.fingerprint().to_string(),
            "role": member.role.as_str(),
            "expires": when(member.expires),
            "status": status,
        }),
    }
}

/// An enrolment key's row; the machines its certificates name are counted here too, so a relay that let more
/// machines enrol than the key allowed shows up (the relay's own count could lie).
fn enrolment_row(
    bytes: &[u8],
    used: u32,
    certificates: &[MachineCertificate],
    authority: &VerifiedAuthority,
) -> Option<Row> {
    let signed = SignedEnrolmentAuthorization::from_bytes(bytes).ok()?;
    let authorization = signed.unverified();
    let key = authorization.enrolment_key;
    let seen = certificates
        .iter()
        .filter(|c| c.enrolment_key() == Some(key))
        .count();
    let mut status = verdict(&signed.verify(authority));
    if seen > usize::try_from(authorization.uses).unwrap_or(usize::MAX) {
        status = format!(
            "OVERUSED: {seen} machines hold certificates from it, {} allowed; the relay let extra machines enrol (revoke the key)",
            authorization.uses
        );
    }
    Some(Row {
        cells: vec![
            key.fingerprint().to_string(),
            when(authorization.not_after),
            format!("{used}/{} (certificates seen: {seen})", authorization.uses),
            status.clone(),
        ],
        json: json!({
            "fingerprint": key.fingerprint().to_string(),
            "usable_until": when(authorization.not_after),
            "uses": authorization.uses,
            "used": used,
            "certificates_seen": seen,
            "status": status,
        }),
    })
}

fn simple_row(key: &PublicKey, note: &str) -> Row {
    Row {
        cells: vec![key.fingerprint().to_string(), note.to_owned()],
        json: json!({ "fingerprint": key.fingerprint().to_string(), "note": note }),
    }
}
