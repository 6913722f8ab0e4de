//! A client's check of a locked fleet's route: the machine key is accepted only with a machine certificate
//! that chains to the fleet key this client pinned, never on the relay's word.
//!
//! ```text
//!  RouteReady{machine, lock?} + fleet pin (relay, fleet) ──▶ check_route
//!     no lock, no pin   ─▶ Unlocked (known_machines decides)
//!     no lock, pin      ─▶ Withheld (the relay hides a lock this client knows)
//!     lock, no pin      ─▶ NotPinned if locked (pin the fleet key first), Unlocked if disabled
//!     lock, pin         ─▶ chain from the pinned key, not older than seen, revocations not older than seen,
//!                          machine certificate for this machine id and key, hostname as certified ─▶ Certified
//! ```

use std::fmt;

use cmdop_fleet::lock::{
    LockError, MachineCertificate, StreamCredentials, VerifiedAuthority, VerifiedRevocations,
};
use cmdop_fleet::{FleetId, Hostname, MachineId, Timestamp, is_uuid_shaped};
use cmdop_identity::{Fingerprint, PublicKey};
use cmdop_proto::RelayFingerprint;
use cmdop_proto::display::escape;
use cmdop_proto::pins::FleetPin;
use cmdop_proto::wire::{FleetLockState, RouteLock};

/// Why a locked fleet's route was refused. Nothing was sent to the machine.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockCheckError {
    /// This client pinned the fleet's key, and the relay sent no lock.
    #[error(
        "fleet {fleet} is locked (fleet key {fleet_key} is pinned here), but the relay sent no lock; it is withholding it. Nothing was sent to the machine."
    )]
    Withheld {
        /// The fleet.
        fleet: FleetId,
        /// The pinned fleet key's fingerprint.
        fleet_key: Fingerprint,
    },
    /// The fleet is locked and this client has not pinned its fleet key.
    #[error(
        "fleet {fleet} is locked with fleet key {claimed}, which this client has not pinned; compare it with your fleet admin, then run `cmdop fleet lock trust {claimed}` (or `cmdop login --fleet-key {claimed}`)"
    )]
    NotPinned {
        /// The fleet.
        fleet: FleetId,
        /// The fleet key the relay's chain claims, unverified.
        claimed: Fingerprint,
    },
    /// A lock document does not verify: forged, stale or tampered with.
    #[error("fleet {fleet}'s lock is refused: {error}. Nothing was sent to the machine.")]
    Invalid {
        /// The fleet.
        fleet: FleetId,
        /// Why.
        error: LockError,
    },
    /// The machine has no certificate.
    #[error(
        "machine {hostname} ({machine}) has no machine certificate in locked fleet {fleet}; a fleet admin must sign it (`cmdop fleet lock sign {machine}`). Nothing was sent to it."
    )]
    NoCertificate {
        /// The fleet.
        fleet: FleetId,
        /// The machine id.
        machine: MachineId,
        /// Its hostname as the relay reports it (escaped).
        hostname: String,
    },
    /// The relay reports a hostname other than the certified one: it renamed the machine.
    #[error(
        "the relay calls machine {machine} {reported:?}, but its certificate says {certified:?}; the relay renamed it. Nothing was sent to it."
    )]
    Renamed {
        /// The machine id.
        machine: MachineId,
        /// What the relay says (escaped).
        reported: String,
        /// What the certificate says.
        certified: Hostname,
    },
    /// The name asked for is not the certified name (or id) of the machine the relay answered with.
    #[error(
        "asked for {query:?}, the relay answered with the machine certified as {certified} ({machine}); in a locked fleet only certified hostnames, ids and their prefixes name machines (display names are not certified). Nothing was sent to it."
    )]
    WrongName {
        /// The name asked for (escaped).
        query: String,
        /// The certified hostname.
        certified: Hostname,
        /// The machine id.
        machine: MachineId,
    },
}

/// How the name asked for matched a certified machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameMatch {
    /// Its certified hostname or its id.
    Exact,
    /// A prefix of either, which the relay resolved: worth showing the certified hostname to the person.
    Relayed,
}

/// What a route's lock check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
// Made once per stream and matched at once; boxing the certified case would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum RouteTrust {
    /// Not a locked fleet (never locked, or disabled by a signed state): the client's machine pins decide.
    Unlocked,
    /// The machine key is certified by the fleet.
    Certified {
        /// The agent key the certificate names (the prologue binds it).
        agent_key: PublicKey,
        /// The certified hostname.
        hostname: Hostname,
        /// How the name asked for matched.
        matched: NameMatch,
        /// The client's member certificate, to hand to the agent.
        member_certificate: Option<Vec<u8>>,
    },
}

/// What a route check needs to know about the route.
#[derive(Debug, Clone, Copy)]
pub struct RouteFacts<'a> {
    /// The relay's fingerprint.
    pub relay: &'a RelayFingerprint,
    /// The fleet.
    pub fleet: FleetId,
    /// The machine id the relay routed to.
    pub machine: MachineId,
    /// The machine's key as the relay reports it (`None`: invalid).
    pub key: Option<PublicKey>,
    /// The machine's hostname as the relay reports it.
    pub hostname: &'a str,
    /// What the person asked for.
    pub query: &'a str,
    /// The wall-clock time.
    pub now: Timestamp,
}

/// Checks a route's lock against the client's fleet pin. On success also returns the pin to save when the
/// relay showed newer serials (so they can never be rolled back).
pub fn check_route(
    facts: &RouteFacts<'_>,
    lock: Option<&RouteLock>,
    pin: Option<&FleetPin>,
) -> Result<(RouteTrust, Option<FleetPin>), LockCheckError> {
    let fleet = facts.fleet;
    let (lock, pin) = match (lock, pin) {
        (None, None) => return Ok((RouteTrust::Unlocked, None)),
        (None, Some(pin)) => {
            return Err(LockCheckError::Withheld {
                fleet,
                fleet_key: pin.fleet_key.fingerprint(),
            });
        }
        (Some(lock), None) => {
            return match claimed_lock(fleet, &lock.authority) {
                Some((claimed, true)) => Err(LockCheckError::NotPinned { fleet, claimed }),
                _ => Ok((RouteTrust::Unlocked, None)),
            };
        }
        (Some(lock), Some(pin)) => (lock, pin),
    };
    let invalid = |error| LockCheckError::Invalid { fleet, error };
    let (authority, revocations, newer) = verify_lock(
        pin,
        &FleetLockState {
            fleet_id: cmdop_proto::wire::IdBytes(fleet.to_bytes()),
            authority: lock.authority.clone(),
            revocations: lock.revocations.clone(),
        },
    )
    .map_err(invalid)?;
    if !authority.is_locked() {
        return Ok((RouteTrust::Unlocked, newer));
    }
    let no_certificate = || LockCheckError::NoCertificate {
        fleet,
        machine: facts.machine,
        hostname: escape(facts.hostname).into_owned(),
    };
    let bytes = lock
        .machine_certificate
        .as_deref()
        .ok_or_else(no_certificate)?;
    let key = facts.key.ok_or_else(no_certificate)?;
    let certificate = MachineCertificate::from_bytes(bytes).map_err(invalid)?;
    let body = certificate
        .verify_for(&authority, &revocations, facts.machine, &key, facts.now)
        .map_err(invalid)?;
    if facts.hostname != body.hostname.as_str() {
        return Err(LockCheckError::Renamed {
            machine: facts.machine,
            reported: escape(facts.hostname).into_owned(),
            certified: body.hostname.clone(),
        });
    }
    let matched = name_match(facts.query, &body.hostname, facts.machine)?;
    Ok((
        RouteTrust::Certified {
            agent_key: body.agent_key,
            hostname: body.hostname.clone(),
            matched,
            member_certificate: lock.member_certificate.clone(),
        },
        newer,
    ))
}

/// Verifies a fleet's chain and list against `pin`: rooted at its fleet key, not older than its serials.
/// Returns the pin with the serials raised, if they grew.
pub fn verify_lock(
    pin: &FleetPin,
    lock: &FleetLockState,
) -> Result<(VerifiedAuthority, VerifiedRevocations, Option<FleetPin>), LockError> {
    let fleet = FleetId::from_bytes(lock.fleet_id.0);
    let authority = VerifiedAuthority::verify(fleet, &pin.fleet_key, &lock.authority)?;
    authority.check_not_older(pin.authority_serial, None)?;
    let revocations = VerifiedRevocations::verify_offered(
        &authority,
        lock.revocations.as_deref(),
        pin.revocation_serial,
    )?;
    if lock.revocations.is_none() && pin.revocation_serial > 0 {
        return Err(LockError::Rollback {
            what: "revocation list",
            held: pin.revocation_serial,
            offered: 0,
        });
    }
    let raised = FleetPin {
        authority_serial: authority.serial().max(pin.authority_serial),
        revocation_serial: revocations.serial().max(pin.revocation_serial),
        ..pin.clone()
    };
    let newer = (raised != *pin).then_some(raised);
    Ok((authority, revocations, newer))
}

/// The fleet key a chain claims and whether its latest state says locked, without verifying anything: what
/// a person is asked to confirm, and what a client without a pin can tell about a fleet.
pub fn claimed_lock(fleet: FleetId, chain: &[Vec<u8>]) -> Option<(Fingerprint, bool)> {
    let claimed = VerifiedAuthority::claimed_fleet_key(chain).ok()?;
    // The chain verifies from its own claimed root or not at all; a relay's garbage reads as "no lock".
    let verified = VerifiedAuthority::verify(fleet, &claimed, chain).ok()?;
    Some((claimed.fingerprint(), verified.is_locked()))
}

/// How `query` names the machine certified as `hostname` with id `machine`. In a locked fleet a name must
/// be the certified hostname, the id, or a prefix of either (of at least 2 characters); display names are
/// not certified, so a relay could point one anywhere.
fn name_match(
    query: &str,
    hostname: &Hostname,
    machine: MachineId,
) -> Result<NameMatch, LockCheckError> {
    let wrong = || LockCheckError::WrongName {
        query: escape(query).into_owned(),
        certified: hostname.clone(),
        machine,
    };
    if is_uuid_shaped(query) {
        return match query.parse::<MachineId>() {
            Ok(id) if id == machine => Ok(NameMatch::Exact),
            _ => Err(wrong()),
        };
    }
    if query.eq_ignore_ascii_case(hostname.as_str()) {
        return Ok(NameMatch::Exact);
    }
    let lower = query.to_ascii_lowercase();
    let prefix = lower.chars().count() >= cmdop_fleet::MIN_PREFIX_CHARS
        && (hostname.as_str().starts_with(&lower) || machine.to_string().starts_with(&lower));
    if prefix {
        Ok(NameMatch::Relayed)
    } else {
        Err(wrong())
    }
}

/// The client's credentials for a stream, as the agent gets them inside the channel.
pub fn stream_credentials(capability: &[u8], member_certificate: Option<Vec<u8>>) -> Vec<u8> {
    StreamCredentials {
        capability: capability.to_vec(),
        member_certificate,
    }
    .to_bytes()
}

impl fmt::Display for NameMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Exact => "exact",
            Self::Relayed => "relayed",
        })
    }
}

#[cfg(test)]
mod tests {
    use cmdop_fleet::lock::{
        AuthorityState, MachineCertificateBody, MemberCertificate, MemberRole, RevocationList,
    };
    use cmdop_identity::{Identity, Seed};

    use super::*;

    const T: u64 = 1_700_000_000;

    fn id(byte: u8) -> Identity {
        Identity::from_seed(&Seed::from_bytes([byte; 32]))
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_seconds(secs)
    }

    struct World {
        admin: Identity,
        agent: Identity,
        fleet: FleetId,
        machine: MachineId,
        relay: RelayFingerprint,
        chain: Vec<Vec<u8>>,
        certificate: Vec<u8>,
    }

    fn world() -> World {
        let (admin, agent) = (id(1), id(2));
        let fleet = FleetId::from_bytes([3; 16]);
        let machine = MachineId::from_bytes([4; 16]);
        let chain = vec![
            AuthorityState {
                fleet,
                serial: 1,
                locked: true,
                admins: vec![admin.public_key()],
                issued_at: at(T),
                signer: admin.public_key(),
            }
            .sign(&admin)
            .to_bytes(),
        ];
        let certificate = MachineCertificateBody {
            fleet,
            machine,
            agent_key: agent.public_key(),
            hostname: Hostname::parse("web-1").unwrap(),
            issued_at: at(T),
            expires: at(T + 1000),
        }
        .sign_as_admin(&admin)
        .to_bytes();
        World {
            admin,
            agent,
            fleet,
            machine,
            relay: RelayFingerprint::from_bytes([5; 32]),
            chain,
            certificate,
        }
    }

    impl World {
        fn facts<'a>(&'a self, hostname: &'a str, query: &'a str) -> RouteFacts<'a> {
            RouteFacts {
                relay: &self.relay,
                fleet: self.fleet,
                machine: self.machine,
                key: Some(self.agent.public_key()),
                hostname,
                query,
                now: at(T + 10),
            }
        }

        fn lock(&self) -> RouteLock {
            RouteLock {
                authority: self.chain.clone(),
                revocations: None,
                machine_certificate: Some(self.certificate.clone()),
                member_certificate: Some(vec![1, 2, 3]),
            }
        }

        fn pin(&self, revocation_serial: u64) -> FleetPin {
            FleetPin {
                relay: self.relay,
                fleet: self.fleet,
                fleet_key: self.admin.public_key(),
                authority_serial: 1,
                revocation_serial,
            }
        }
    }

    #[test]
    fn a_certificate_from_the_pinned_fleet_key_is_accepted_by_certified_name_or_id() {
        let w = world();
        let machine = w.machine.to_string();
        for (query, matched) in [
            ("web-1", NameMatch::Exact),
            ("WEB-1", NameMatch::Exact),
            (machine.as_str(), NameMatch::Exact),
            ("we", NameMatch::Relayed),
        ] {
            let (trust, newer) =
                check_route(&w.facts("web-1", query), Some(&w.lock()), Some(&w.pin(0))).unwrap();
            assert_eq!(
                trust,
                RouteTrust::Certified {
                    agent_key: w.agent.public_key(),
                    hostname: Hostname::parse("web-1").unwrap(),
                    matched,
                    member_certificate: Some(vec![1, 2, 3]),
                }
            );
            assert_eq!(newer, None);
        }
    }

    #[test]
    fn every_way_of_the_relay_to_lie_is_refused() {
        let w = world();
        let pin = w.pin(0);
        let check = |facts: RouteFacts<'_>, lock: Option<RouteLock>, pin: Option<&FleetPin>| {
            check_route(&facts, lock.as_ref(), pin).unwrap_err()
        };
        assert!(matches!(
            check(w.facts("web-1", "web-1"), None, Some(&pin)),
            LockCheckError::Withheld { .. }
        ));
        assert!(matches!(
            check(w.facts("web-1", "web-1"), Some(w.lock()), None),
            LockCheckError::NotPinned { .. }
        ));
        assert!(matches!(
            check(w.facts("db-7", "db-7"), Some(w.lock()), Some(&pin)),
            LockCheckError::Renamed { .. }
        ));
        assert!(matches!(
            check(w.facts("web-1", "prod-db"), Some(w.lock()), Some(&pin)),
            LockCheckError::WrongName { .. }
        ));
        assert!(matches!(
            check(
                w.facts("web-1", "11111111-1111-1111-1111-111111111111"),
                Some(w.lock()),
                Some(&pin)
            ),
            LockCheckError::WrongName { .. }
        ));
        let no_certificate = RouteLock {
            machine_certificate: None,
            ..w.lock()
        };
        assert!(matches!(
            check(w.facts("web-1", "web-1"), Some(no_certificate), Some(&pin)),
            LockCheckError::NoCertificate { .. }
        ));
        let other_key = RouteFacts {
            key: Some(id(9).public_key()),
            ..w.facts("web-1", "web-1")
        };
        assert!(matches!(
            check(other_key, Some(w.lock()), Some(&pin)),
            LockCheckError::Invalid {
                error: LockError::WrongSubject { .. },
                ..
            }
        ));
        // A lock of the relay's own, rooted at its key.
        let relay_key = id(8);
        let forged = RouteLock {
            authority: vec![
                AuthorityState {
                    fleet: w.fleet,
                    serial: 1,
                    locked: true,
                    admins: vec![relay_key.public_key()],
                    issued_at: at(T),
                    signer: relay_key.public_key(),
                }
                .sign(&relay_key)
                .to_bytes(),
            ],
            ..w.lock()
        };
        assert!(matches!(
            check(w.facts("web-1", "web-1"), Some(forged), Some(&pin)),
            LockCheckError::Invalid {
                error: LockError::NotRootedAt { .. },
                ..
            }
        ));
        // A revocation list older than the one seen, or none when one was seen.
        assert!(matches!(
            check(w.facts("web-1", "web-1"), Some(w.lock()), Some(&w.pin(2))),
            LockCheckError::Invalid {
                error: LockError::Rollback { .. },
                ..
            }
        ));
    }

    #[test]
    fn newer_serials_are_pinned_and_a_revoked_machine_is_refused() {
        let w = world();
        let list = RevocationList::successor(
            None,
            w.fleet,
            &[w.agent.public_key()],
            w.admin.public_key(),
            at(T),
        )
        .sign(&w.admin)
        .to_bytes();
        let lock = RouteLock {
            revocations: Some(list),
            ..w.lock()
        };
        let err =
            check_route(&w.facts("web-1", "web-1"), Some(&lock), Some(&w.pin(0))).unwrap_err();
        assert!(
            matches!(
                err,
                LockCheckError::Invalid {
                    error: LockError::Revoked { .. },
                    ..
                }
            ),
            "{err}"
        );
        let empty = RevocationList::successor(None, w.fleet, &[], w.admin.public_key(), at(T))
            .sign(&w.admin)
            .to_bytes();
        let lock = RouteLock {
            revocations: Some(empty),
            ..w.lock()
        };
        let (_, newer) =
            check_route(&w.facts("web-1", "web-1"), Some(&lock), Some(&w.pin(0))).unwrap();
        assert_eq!(newer.map(|p| p.revocation_serial), Some(1));
    }

    #[test]
    fn a_disabled_lock_leaves_the_machine_to_the_pins() {
        let w = world();
        let one = VerifiedAuthority::verify(w.fleet, &w.admin.public_key(), &w.chain).unwrap();
        let mut chain = w.chain.clone();
        chain.push(
            one.next_state(
                vec![w.admin.public_key()],
                false,
                w.admin.public_key(),
                at(T + 1),
            )
            .sign(&w.admin)
            .to_bytes(),
        );
        let lock = RouteLock {
            authority: chain,
            ..w.lock()
        };
        let (trust, newer) =
            check_route(&w.facts("web-1", "web-1"), Some(&lock), Some(&w.pin(0))).unwrap();
        assert_eq!(trust, RouteTrust::Unlocked);
        assert_eq!(newer.map(|p| p.authority_serial), Some(2));
        // And a client that never pinned a fleet key treats it as what it is, an unlocked fleet.
        assert_eq!(
            check_route(&w.facts("web-1", "web-1"), Some(&lock), None)
                .unwrap()
                .0,
            RouteTrust::Unlocked
        );
        assert_eq!(
            claimed_lock(w.fleet, &w.chain),
            Some((w.admin.public_key().fingerprint(), true))
        );
        let member = MemberCertificate {
            fleet: w.fleet,
            client_key: id(7).public_key(),
            role: MemberRole::Viewer,
            issued_at: at(T),
            expires: at(T + 1),
            signer: w.admin.public_key(),
        }
        .sign(&w.admin)
        .to_bytes();
        let credentials = stream_credentials(b"cap", Some(member.clone()));
        assert_eq!(
            StreamCredentials::from_bytes(&credentials)
                .unwrap()
                .member_certificate,
            Some(member)
        );
    }
}
