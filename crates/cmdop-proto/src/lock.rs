//! The relay's decisions about a fleet's lock, sans-IO: whether a submitted document may be stored, and how an
//! agent's enrolment goes.
//!
//! ```text
//!  admin CLI ── LockSubmit{document} ──▶ check_submission(stored lock, fleet's machines, now) ──▶ Accepted | refusal
//!  agent ── Enrol{enrolment key} ──▶ enrolment_answer(stored lock, authorization, uses, certified?, now)
//!  agent ── EnrolProof{certificate} ──▶ check_enrolment(stored lock, authorization, agent, now) ──▶ store, count a use
//! ```
//!
//! The relay checks documents so that it stores only what verifies (the same checks clients and agents run),
//! but it is not trusted for them: it holds no admin key, so whatever it stores, agents and clients verify
//! again against the fleet key they pinned. What the relay alone decides is bookkeeping: how many machines an
//! enrolment key certified (see `docs/security.md` on what a hostile relay can do with that).

use cmdop_fleet::lock::{
    LockError, MachineCertificate, MachineIssuer, SignedAuthority, SignedEnrolmentAuthorization,
    SignedMemberCertificate, SignedRevocationList, VerifiedAuthority, VerifiedRevocations,
};
use cmdop_fleet::{FleetId, Machine, MachineId, Timestamp};
use cmdop_identity::PublicKey;

use crate::wire::Submission;

/// A fleet's lock as the relay stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredLock {
    /// The fleet authority chain, every state from serial 1 on (empty: never locked).
    pub authority: Vec<Vec<u8>>,
    /// The latest revocation list.
    pub revocations: Option<Vec<u8>>,
}

/// The stored lock, checked for consistency.
#[derive(Debug, Clone)]
pub struct CheckedLock {
    /// The authority, verified from the key that signed its first state.
    pub authority: VerifiedAuthority,
    /// The revocations.
    pub revocations: VerifiedRevocations,
}

impl StoredLock {
    /// The chain and list checked against each other, rooted at the key that signed state 1; `None` for a
    /// fleet that was never locked.
    pub fn check(&self, fleet: FleetId) -> Result<Option<CheckedLock>, LockError> {
        if self.authority.is_empty() {
            return Ok(None);
        }
        let fleet_key = VerifiedAuthority::claimed_fleet_key(&self.authority)?;
        let authority = VerifiedAuthority::verify(fleet, &fleet_key, &self.authority)?;
        let revocations = match &self.revocations {
            Some(bytes) => SignedRevocationList::from_bytes(bytes)?.verify(&authority)?,
            None => VerifiedRevocations::none(),
        };
        Ok(Some(CheckedLock {
            authority,
            revocations,
        }))
    }
}

/// What a checked submission is, for the store and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// The next authority state (serial 1 creates the lock).
    Authority {
        /// Its serial.
        serial: u64,
        /// Whether the fleet is locked after it.
        locked: bool,
        /// How many admin keys it names.
        admins: usize,
    },
    /// A machine certificate for a machine of the fleet.
    MachineCertificate {
        /// The machine.
        machine: MachineId,
        /// The hostname it certifies.
        hostname: String,
        /// The enrolment key that made it, if any.
        enrolment_key: Option<PublicKey>,
    },
    /// A member certificate.
    MemberCertificate {
        /// The member's key.
        client_key: PublicKey,
        /// Its role.
        role: String,
    },
    /// An enrolment authorization.
    EnrolmentAuthorization {
        /// The enrolment key it authorizes.
        enrolment_key: PublicKey,
        /// How many machines it is meant for.
        uses: u32,
    },
    /// A newer revocation list.
    RevocationList {
        /// Its serial.
        serial: u64,
        /// How many keys it revokes.
        revoked: usize,
    },
    /// A key offered as an admin key.
    AdminCandidate(PublicKey),
}

impl Accepted {
    /// One line for the audit log and the admin's terminal.
    pub fn describe(&self) -> String {
        match self {
            Self::Authority {
                serial,
                locked,
                admins,
            } => format!(
                "fleet authority serial {serial}: {} with {admins} admin key{}",
                if *locked { "locked" } else { "lock disabled" },
                if *admins == 1 { "" } else { "s" }
            ),
            Self::MachineCertificate {
                machine,
                hostname,
                enrolment_key,
            } => format!(
                "machine certificate for {hostname} ({machine}){}",
                enrolment_key.map_or_else(String::new, |key| format!(
                    " by enrolment key {}",
                    key.fingerprint()
                ))
            ),
            Self::MemberCertificate { client_key, role } => {
                format!(
                    "member certificate for {} as {role}",
                    client_key.fingerprint()
                )
            }
            Self::EnrolmentAuthorization {
                enrolment_key,
                uses,
            } => format!(
                "enrolment key {} for {uses} machine{}",
                enrolment_key.fingerprint(),
                if *uses == 1 { "" } else { "s" }
            ),
            Self::RevocationList { serial, revoked } => {
                format!("revocation list serial {serial} revoking {revoked} key(s)")
            }
            Self::AdminCandidate(key) => format!("admin key candidate {}", key.fingerprint()),
        }
    }
}

/// Why the relay refuses a submission or an enrolment; the message is what the peer is told.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockRefusal {
    /// The document does not verify.
    #[error(transparent)]
    Invalid(#[from] LockError),
    /// The fleet has no lock yet and the document needs one.
    #[error("this fleet is not locked; run `cmdop fleet lock init` first")]
    NotLocked,
    /// A new authority state that does not follow the stored one.
    #[error(
        "the fleet authority is at serial {stored}; a new state must be serial {expected} signed by a current admin"
    )]
    Stale {
        /// The stored serial.
        stored: u64,
        /// The serial expected.
        expected: u64,
    },
    /// A certificate for a machine the relay does not know in this fleet (or with another key).
    #[error("no machine {machine} with that key in this fleet; check `cmdop connect --list`")]
    UnknownMachine {
        /// The machine named.
        machine: MachineId,
    },
    /// The relay has no authorization for the enrolment key.
    #[error(
        "no enrolment authorization for this enrolment key in this fleet; ask a fleet admin for a new one (`cmdop fleet lock enrol-key`)"
    )]
    UnknownEnrolmentKey,
    /// The enrolment key's time to live is over.
    #[error(
        "the enrolment key expired; ask a fleet admin for a new one (`cmdop fleet lock enrol-key`)"
    )]
    EnrolmentKeyExpired,
    /// The enrolment key certified as many machines as it was meant for.
    #[error(
        "the enrolment key was already used for {uses} machine(s); ask a fleet admin for a new one (`cmdop fleet lock enrol-key --uses N`)"
    )]
    UsedUp {
        /// How many it was meant for.
        uses: u32,
    },
    /// An enrolment certificate for another machine, key or hostname than the agent's own.
    #[error("the enrolment certificate is not for this machine ({reason}); the agent is broken")]
    NotThisMachine {
        /// What differs.
        reason: &'static str,
    },
    /// The submitted key is not a valid public key.
    #[error("the submitted key is not a valid ed25519 public key")]
    InvalidKey,
}

/// Checks `submission` against the stored lock of `fleet` and the fleet's `machines` at `now`.
pub fn check_submission(
    stored: &StoredLock,
    fleet: FleetId,
    submission: &Submission,
    machines: &[Machine],
    now: Timestamp,
) -> Result<Accepted, LockRefusal> {
    if let Submission::Authority(bytes) = submission {
        return check_authority(stored, fleet, bytes);
    }
    if let Submission::AdminCandidate(key) = submission {
        return PublicKey::from_bytes(&key.0)
            .map(Accepted::AdminCandidate)
            .map_err(|_| LockRefusal::InvalidKey);
    }
    let lock = stored.check(fleet)?.ok_or(LockRefusal::NotLocked)?;
    match submission {
        Submission::MachineCertificate(bytes) => {
            let certificate = MachineCertificate::from_bytes(bytes)?;
            let body = certificate.verify(&lock.authority, &lock.revocations, now)?;
            let known = machines.iter().any(|m| {
                m.fleet == fleet && m.id == body.machine && m.public_key == body.agent_key
            });
            if !known {
                return Err(LockRefusal::UnknownMachine {
                    machine: body.machine,
                });
            }
            Ok(Accepted::MachineCertificate {
                machine: body.machine,
                hostname: body.hostname.to_string(),
                enrolment_key: certificate.enrolment_key(),
            })
        }
        Submission::MemberCertificate(bytes) => {
            let signed = SignedMemberCertificate::from_bytes(bytes)?;
            let client_key = signed.unverified().client_key;
            let role = signed.verify(&lock.authority, &lock.revocations, &client_key, now)?;
            Ok(Accepted::MemberCertificate {
                client_key,
                role: role.to_string(),
            })
        }
        Submission::EnrolmentAuthorization(bytes) => {
            let signed = SignedEnrolmentAuthorization::from_bytes(bytes)?;
            let authorization = signed.verify(&lock.authority)?;
            Ok(Accepted::EnrolmentAuthorization {
                enrolment_key: authorization.enrolment_key,
                uses: authorization.uses,
            })
        }
        Submission::RevocationList(bytes) => {
            let verified = VerifiedRevocations::verify_offered(
                &lock.authority,
                Some(bytes),
                lock.revocations.serial().saturating_add(1),
            )?;
            verified.check_replaces(&lock.revocations)?;
            Ok(Accepted::RevocationList {
                serial: verified.serial(),
                revoked: verified.list().map_or(0, |list| list.revoked.len()),
            })
        }
        Submission::Authority(_) | Submission::AdminCandidate(_) => Err(LockRefusal::NotLocked),
    }
}

/// A new authority state: the first (self-signed by its own admin, the fleet key) or the next one.
fn check_authority(
    stored: &StoredLock,
    fleet: FleetId,
    bytes: &[u8],
) -> Result<Accepted, LockRefusal> {
    let mut chain = stored.authority.clone();
    chain.push(bytes.to_vec());
    let fleet_key = VerifiedAuthority::claimed_fleet_key(&chain)?;
    let verified = VerifiedAuthority::verify(fleet, &fleet_key, &chain).map_err(|err| {
        let offered = SignedAuthority::from_bytes(bytes).map(|s| s.unverified_state().serial);
        let expected = u64::try_from(chain.len()).unwrap_or(u64::MAX);
        match (err, offered) {
            (LockError::ChainGap { .. }, Ok(_)) => LockRefusal::Stale {
                stored: expected.saturating_sub(1),
                expected,
            },
            (err, _) => LockRefusal::Invalid(err),
        }
    })?;
    Ok(Accepted::Authority {
        serial: verified.serial(),
        locked: verified.is_locked(),
        admins: verified.latest().admins.len(),
    })
}

/// What the relay answers an agent's [`Enrol`](crate::wire::PeerMessage::Enrol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrolmentAnswer {
    /// The machine already holds a valid certificate for its key: nothing to do, no use counted.
    AlreadyCertified,
    /// The authorization to sign a certificate with.
    Authorization(Vec<u8>),
}

/// The stored enrolment authorization of one enrolment key and how many machines used it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEnrolmentKey {
    /// The signed authorization.
    pub authorization: Vec<u8>,
    /// How many machines enrolled with it.
    pub used: u32,
}

/// Decides the answer to an agent's enrolment request: already certified, or the authorization if the key
/// is known, not expired and not used up.
pub fn enrolment_answer(
    stored: Option<&StoredEnrolmentKey>,
    already_certified: bool,
    now: Timestamp,
) -> Result<EnrolmentAnswer, LockRefusal> {
    if already_certified {
        return Ok(EnrolmentAnswer::AlreadyCertified);
    }
    let stored = stored.ok_or(LockRefusal::UnknownEnrolmentKey)?;
    let authorization = SignedEnrolmentAuthorization::from_bytes(&stored.authorization)?;
    let authorization = authorization.unverified();
    if now >= authorization.not_after {
        return Err(LockRefusal::EnrolmentKeyExpired);
    }
    if stored.used >= authorization.uses {
        return Err(LockRefusal::UsedUp {
            uses: authorization.uses,
        });
    }
    Ok(EnrolmentAnswer::Authorization(stored.authorization.clone()))
}

/// Checks the certificate an agent made with its enrolment key: it verifies (the full check every client
/// runs), it came from an enrolment key, and it is for the agent's own machine, key and reported hostname.
/// The caller then counts the use (only if uses remain) and stores it.
pub fn check_enrolment(
    lock: &CheckedLock,
    certificate: &[u8],
    agent: &Machine,
    now: Timestamp,
) -> Result<(MachineCertificate, PublicKey), LockRefusal> {
    let certificate = MachineCertificate::from_bytes(certificate)?;
    let body = certificate.verify_for(
        &lock.authority,
        &lock.revocations,
        agent.id,
        &agent.public_key,
        now,
    )?;
    if body.hostname != agent.hostname {
        return Err(LockRefusal::NotThisMachine {
            reason: "another hostname",
        });
    }
    let MachineIssuer::Enrolment { authorization, .. } = certificate.issuer() else {
        return Err(LockRefusal::NotThisMachine {
            reason: "not made with an enrolment key",
        });
    };
    let key = authorization.unverified().enrolment_key;
    Ok((certificate, key))
}
