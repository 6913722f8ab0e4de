//! Certificates the fleet's admins sign: machine certificates (directly, or through an enrolment key they
//! authorized) and member certificates.
//!
//! ```text
//! MachineCertificate = body ‖ issuer
//!   body:   version: u8 = 1 | fleet: 16 | machine: 16 | agent_key: 32 | hostname: String | issued_at: u64
//!           | expires: u64
//!   issuer: 0 Admin { key: 32, signature: 64 }               signature over body, `cmdop machine-certificate v1`
//!         | 1 Enrolment { authorization: bytes, signature: 64 }   signature by the enrolment key over body,
//!                                                              `cmdop enrolment-proof v1`
//! EnrolmentAuthorization = version: u8 = 1 | fleet: 16 | enrolment_key: 32 | not_before: u64 | not_after: u64
//!           | uses: u32 | certificate_lifetime: u64 | signer: 32 ‖ signature: 64  (`cmdop enrolment-authorization v1`)
//! MemberCertificate = version: u8 = 1 | fleet: 16 | client_key: 32 | role: u8 | issued_at: u64 | expires: u64
//!           | signer: 32 ‖ signature: 64                                 (`cmdop member-certificate v1`)
//! ```

use std::fmt;
use std::str::FromStr;

use cmdop_identity::{Identity, PublicKey, Purpose, Signature};
use serde::{Deserialize, Serialize};

use super::{
    CLOCK_SKEW_SECS, LockError, VerifiedAuthority, VerifiedRevocations, check_version,
    decode_exact, encode, key, split_signature, take_canonical,
};
use crate::capability::Operation;
use crate::id::{FleetId, MachineId};
use crate::name::Hostname;
use crate::time::Timestamp;

const MACHINE: &str = "machine certificate";
const AUTHORIZATION: &str = "enrolment authorization";
const MEMBER: &str = "member certificate";
const VERSION: u8 = 1;

/// `issued_at - skew <= now < expires`, or the refusal naming `what`.
fn check_validity(
    what: &'static str,
    issued_at: Timestamp,
    expires: Timestamp,
    now: Timestamp,
) -> Result<(), LockError> {
    if now.saturating_add_seconds(CLOCK_SKEW_SECS) < issued_at {
        return Err(LockError::NotYetValid {
            what,
            at: issued_at,
        });
    }
    if now >= expires {
        return Err(LockError::Expired { what, at: expires });
    }
    Ok(())
}

/// The certificate's hostname, which must already be in the form [`Hostname::parse`] gives it (lower case):
/// a signed document has one encoding, so that what was signed, what is shown and what the resolver matches are
/// the same bytes, and a relay cannot pass off `WEB-1` for a certificate signed for `web-1`.
fn canonical_hostname(text: &str) -> Result<Hostname, LockError> {
    match Hostname::parse(text) {
        Ok(hostname) if hostname.as_str() == text => Ok(hostname),
        _ => Err(LockError::Malformed { what: MACHINE }),
    }
}

/// What a machine certificate says: this agent key is machine `machine` of `fleet`, named `hostname`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineCertificateBody {
    /// The fleet.
    pub fleet: FleetId,
    /// The machine id the relay issued.
    pub machine: MachineId,
    /// The agent's public key.
    pub agent_key: PublicKey,
    /// The hostname at signing; in a locked fleet, the name the resolver uses.
    pub hostname: Hostname,
    /// When it was signed.
    pub issued_at: Timestamp,
    /// When it stops being valid.
    pub expires: Timestamp,
}

#[derive(Serialize, Deserialize)]
struct BodyWire {
    version: u8,
    fleet: [u8; 16],
    machine: [u8; 16],
    agent_key: [u8; 32],
    hostname: String,
    issued_at: u64,
    expires: u64,
}

impl MachineCertificateBody {
    /// The canonical bytes the issuer signs.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(&self.wire())
    }

    fn wire(&self) -> BodyWire {
        BodyWire {
            version: VERSION,
            fleet: self.fleet.to_bytes(),
            machine: self.machine.to_bytes(),
            agent_key: self.agent_key.to_bytes(),
            hostname: self.hostname.as_str().to_owned(),
            issued_at: self.issued_at.as_unix_seconds(),
            expires: self.expires.as_unix_seconds(),
        }
    }

    fn from_wire(wire: BodyWire) -> Result<Self, LockError> {
        check_version(MACHINE, wire.version, VERSION)?;
        Ok(Self {
            fleet: FleetId::from_bytes(wire.fleet),
            machine: MachineId::from_bytes(wire.machine),
            agent_key: key(MACHINE, &wire.agent_key)?,
            hostname: canonical_hostname(&wire.hostname)?,
            issued_at: Timestamp::from_unix_seconds(wire.issued_at),
            expires: Timestamp::from_unix_seconds(wire.expires),
        })
    }

    /// Signs the body with an admin key: the approval path (`cmdop fleet lock sign`).
    pub fn sign_as_admin(self, admin: &Identity) -> MachineCertificate {
        let signature = admin.sign(Purpose::MachineCertificate, &self.to_bytes());
        MachineCertificate {
            body: self,
            issuer: MachineIssuer::Admin {
                key: admin.public_key(),
                signature,
            },
        }
    }

    /// Signs the body with an enrolment key under `authorization`: the enrolment path (`cmdop-agent run
    /// --enrol-key-file`).
    pub fn sign_as_enrolment(
        self,
        enrolment_key: &Identity,
        authorization: SignedEnrolmentAuthorization,
    ) -> MachineCertificate {
        let signature = enrolment_key.sign(Purpose::EnrolmentProof, &self.to_bytes());
        MachineCertificate {
            body: self,
            issuer: MachineIssuer::Enrolment {
                authorization: Box::new(authorization),
                signature,
            },
        }
    }
}

/// Who vouches for a machine certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineIssuer {
    /// An admin key signed it (after comparing the agent's fingerprint).
    Admin {
        /// The admin key.
        key: PublicKey,
        /// Its signature over the body.
        signature: Signature,
    },
    /// An enrolment key signed it, under an admin's authorization.
    Enrolment {
        /// The admin-signed authorization of the enrolment key.
        authorization: Box<SignedEnrolmentAuthorization>,
        /// The enrolment key's signature over the body.
        signature: Signature,
    },
}

#[derive(Serialize, Deserialize)]
enum IssuerWire {
    Admin {
        key: [u8; 32],
        signature: Signature,
    },
    Enrolment {
        authorization: Vec<u8>,
        signature: Signature,
    },
}

/// A machine certificate: the body and who signed it. Not verified until [`verify`](Self::verify).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineCertificate {
    body: MachineCertificateBody,
    issuer: MachineIssuer,
}

impl MachineCertificate {
    /// The body bytes followed by the issuer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.body.to_bytes();
        let issuer = match &self.issuer {
            MachineIssuer::Admin { key, signature } => IssuerWire::Admin {
                key: key.to_bytes(),
                signature: *signature,
            },
            MachineIssuer::Enrolment {
                authorization,
                signature,
            } => IssuerWire::Enrolment {
                authorization: authorization.to_bytes(),
                signature: *signature,
            },
        };
        bytes.extend_from_slice(&encode(&issuer));
        bytes
    }

    /// Decodes exactly one certificate; does not verify it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LockError> {
        let (body, rest) = take_canonical::<BodyWire>(MACHINE, bytes)?;
        let body = MachineCertificateBody::from_wire(body)?;
        let issuer = match decode_exact::<IssuerWire>(MACHINE, rest)? {
            IssuerWire::Admin {
                key: bytes,
                signature,
            } => MachineIssuer::Admin {
                key: key(MACHINE, &bytes)?,
                signature,
            },
            IssuerWire::Enrolment {
                authorization,
                signature,
            } => MachineIssuer::Enrolment {
                authorization: Box::new(SignedEnrolmentAuthorization::from_bytes(&authorization)?),
                signature,
            },
        };
        Ok(Self { body, issuer })
    }

    /// The body, unverified: for display and lookups only.
    pub fn unverified_body(&self) -> &MachineCertificateBody {
        &self.body
    }

    /// Who signed it, unverified.
    pub fn issuer(&self) -> &MachineIssuer {
        &self.issuer
    }

    /// The enrolment key behind it, if it came from one.
    pub fn enrolment_key(&self) -> Option<PublicKey> {
        match &self.issuer {
            MachineIssuer::Enrolment { authorization, .. } => {
                Some(authorization.authorization.enrolment_key)
            }
            MachineIssuer::Admin { .. } => None,
        }
    }

    /// Verifies the certificate against the fleet's authority and revocations at `now`: the fleet, the
    /// validity, an admin's signature (or an enrolment key's, under an admin's authorization, inside its time
    /// window and lifetime), and that neither the agent key nor the enrolment key is revoked.
    pub fn verify(
        &self,
        authority: &VerifiedAuthority,
        revocations: &VerifiedRevocations,
        now: Timestamp,
    ) -> Result<&MachineCertificateBody, LockError> {
        let body = &self.body;
        if body.fleet != authority.fleet() {
            return Err(LockError::WrongFleet { what: MACHINE });
        }
        let signed = body.to_bytes();
        match &self.issuer {
            MachineIssuer::Admin { key, signature } => {
                authority.require_admin(MACHINE, key)?;
                key.verify(Purpose::MachineCertificate, &signed, signature)
                    .map_err(|_| LockError::BadSignature { what: MACHINE })?;
            }
            MachineIssuer::Enrolment {
                authorization,
                signature,
            } => {
                let grant = authorization.verify(authority)?;
                revocations.require_not_revoked(MACHINE, &grant.enrolment_key)?;
                grant.covers(body)?;
                grant
                    .enrolment_key
                    .verify(Purpose::EnrolmentProof, &signed, signature)
                    .map_err(|_| LockError::BadSignature { what: MACHINE })?;
            }
        }
        revocations.require_not_revoked(MACHINE, &body.agent_key)?;
        check_validity(MACHINE, body.issued_at, body.expires, now)?;
        Ok(body)
    }

    /// [`verify`](Self::verify), then checks that it is for `machine` with `agent_key`.
    pub fn verify_for(
        &self,
        authority: &VerifiedAuthority,
        revocations: &VerifiedRevocations,
        machine: MachineId,
        agent_key: &PublicKey,
        now: Timestamp,
    ) -> Result<&MachineCertificateBody, LockError> {
        let body = self.verify(authority, revocations, now)?;
        if body.machine != machine {
            return Err(LockError::WrongSubject {
                what: MACHINE,
                subject: "machine",
                expected: machine.to_string(),
                found: body.machine.to_string(),
            });
        }
        if body.agent_key != *agent_key {
            return Err(LockError::WrongSubject {
                what: MACHINE,
                subject: "agent key",
                expected: agent_key.fingerprint().to_string(),
                found: body.agent_key.fingerprint().to_string(),
            });
        }
        Ok(body)
    }
}

/// An admin's permission for one enrolment key to certify machines: from `not_before` until `not_after`, each
/// certificate valid at most `certificate_lifetime` seconds. `uses` is how many machines the admin meant it for;
/// the relay counts them, which a compromised relay could ignore (see `docs/security.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrolmentAuthorization {
    /// The fleet.
    pub fleet: FleetId,
    /// The public half of the key derived from the enrolment secret.
    pub enrolment_key: PublicKey,
    /// First second a certificate may be issued.
    pub not_before: Timestamp,
    /// First second no certificate may be issued any more (the secret's time to live).
    pub not_after: Timestamp,
    /// How many machines it is meant for (enforced by the relay).
    pub uses: u32,
    /// The longest a certificate it issues may live, in seconds.
    pub certificate_lifetime: u64,
    /// The admin key that signs it.
    pub signer: PublicKey,
}

#[derive(Serialize, Deserialize)]
struct AuthorizationWire {
    version: u8,
    fleet: [u8; 16],
    enrolment_key: [u8; 32],
    not_before: u64,
    not_after: u64,
    uses: u32,
    certificate_lifetime: u64,
    signer: [u8; 32],
}

impl EnrolmentAuthorization {
    /// The canonical bytes the admin signs.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(&AuthorizationWire {
            version: VERSION,
            fleet: self.fleet.to_bytes(),
            enrolment_key: self.enrolment_key.to_bytes(),
            not_before: self.not_before.as_unix_seconds(),
            not_after: self.not_after.as_unix_seconds(),
            uses: self.uses,
            certificate_lifetime: self.certificate_lifetime,
            signer: self.signer.to_bytes(),
        })
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, LockError> {
        let wire: AuthorizationWire = decode_exact(AUTHORIZATION, bytes)?;
        check_version(AUTHORIZATION, wire.version, VERSION)?;
        Ok(Self {
            fleet: FleetId::from_bytes(wire.fleet),
            enrolment_key: key(AUTHORIZATION, &wire.enrolment_key)?,
            not_before: Timestamp::from_unix_seconds(wire.not_before),
            not_after: Timestamp::from_unix_seconds(wire.not_after),
            uses: wire.uses,
            certificate_lifetime: wire.certificate_lifetime,
            signer: key(AUTHORIZATION, &wire.signer)?,
        })
    }

    /// Signs it with `admin`, whose key must be [`signer`](Self::signer).
    pub fn sign(self, admin: &Identity) -> SignedEnrolmentAuthorization {
        let signature = admin.sign(Purpose::EnrolmentAuthorization, &self.to_bytes());
        SignedEnrolmentAuthorization {
            authorization: self,
            signature,
        }
    }

    /// Whether `body` lies inside this authorization: issued inside the window, living at most the lifetime,
    /// in this fleet.
    fn covers(&self, body: &MachineCertificateBody) -> Result<(), LockError> {
        if body.fleet != self.fleet {
            return Err(LockError::WrongFleet { what: MACHINE });
        }
        if body.issued_at < self.not_before || body.issued_at >= self.not_after {
            return Err(LockError::OutsideAuthorization {
                reason: "issued outside the enrolment key's time to live",
            });
        }
        if body.expires.seconds_since(body.issued_at) > self.certificate_lifetime
            || body.expires < body.issued_at
        {
            return Err(LockError::OutsideAuthorization {
                reason: "valid longer than the authorization allows",
            });
        }
        Ok(())
    }

    /// The body of a certificate for `machine` this authorization would cover when issued at `now`: what an
    /// agent holding the enrolment secret signs.
    pub fn certificate_body(
        &self,
        machine: MachineId,
        agent_key: PublicKey,
        hostname: Hostname,
        now: Timestamp,
    ) -> MachineCertificateBody {
        MachineCertificateBody {
            fleet: self.fleet,
            machine,
            agent_key,
            hostname,
            issued_at: now,
            expires: now.saturating_add_seconds(self.certificate_lifetime),
        }
    }
}

/// An [`EnrolmentAuthorization`] with the admin's signature, not yet verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEnrolmentAuthorization {
    authorization: EnrolmentAuthorization,
    signature: Signature,
}

impl SignedEnrolmentAuthorization {
    /// The authorization bytes followed by the 64-byte signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.authorization.to_bytes();
        bytes.extend_from_slice(&self.signature.to_bytes());
        bytes
    }

    /// Decodes one signed authorization; does not verify it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LockError> {
        let (body, signature) = split_signature(AUTHORIZATION, bytes)?;
        Ok(Self {
            authorization: EnrolmentAuthorization::from_bytes(body)?,
            signature,
        })
    }

    /// Verifies it against the fleet's authority: the fleet, a current admin as signer, the signature.
    pub fn verify(
        &self,
        authority: &VerifiedAuthority,
    ) -> Result<&EnrolmentAuthorization, LockError> {
        let authorization = &self.authorization;
        if authorization.fleet != authority.fleet() {
            return Err(LockError::WrongFleet {
                what: AUTHORIZATION,
            });
        }
        authority.require_admin(AUTHORIZATION, &authorization.signer)?;
        authorization
            .signer
            .verify(
                Purpose::EnrolmentAuthorization,
                &authorization.to_bytes(),
                &self.signature,
            )
            .map_err(|_| LockError::BadSignature {
                what: AUTHORIZATION,
            })?;
        Ok(authorization)
    }

    /// The authorization without any check, for display and for the relay's bookkeeping.
    pub fn unverified(&self) -> &EnrolmentAuthorization {
        &self.authorization
    }
}

/// What a member may do on the fleet's machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberRole {
    /// List sessions and attach read-only; nothing else.
    Viewer,
    /// Every operation.
    Member,
    /// Every operation (and, by convention, the people who hold admin keys).
    Admin,
}

impl MemberRole {
    /// Every role.
    pub const ALL: [Self; 3] = [Self::Viewer, Self::Member, Self::Admin];

    const fn to_byte(self) -> u8 {
        match self {
            Self::Viewer => 0,
            Self::Member => 1,
            Self::Admin => 2,
        }
    }

    const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Viewer),
            1 => Some(Self::Member),
            2 => Some(Self::Admin),
            _ => None,
        }
    }

    /// The lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Member => "member",
            Self::Admin => "admin",
        }
    }

    /// Whether the role may open a stream of `operation` at all. A viewer may open shell streams only, and
    /// on them only list sessions and attach read-only (the agent enforces the rest per request).
    pub const fn allows(self, operation: Operation) -> bool {
        match self {
            Self::Member | Self::Admin => true,
            Self::Viewer => matches!(operation, Operation::Shell),
        }
    }

    /// Whether the role may type into sessions, kill them, and run anything.
    pub const fn is_viewer(self) -> bool {
        matches!(self, Self::Viewer)
    }
}

impl fmt::Display for MemberRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MemberRole {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "member role must be admin, member or viewer, not {:?}",
                    text.chars().take(32).collect::<String>()
                )
            })
    }
}

/// A fleet admin's word that `client_key` is a member of `fleet` with `role` until `expires`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberCertificate {
    /// The fleet.
    pub fleet: FleetId,
    /// The member's client key (`cmdop status` prints its fingerprint).
    pub client_key: PublicKey,
    /// What the member may do.
    pub role: MemberRole,
    /// When it was signed.
    pub issued_at: Timestamp,
    /// When it stops being valid.
    pub expires: Timestamp,
    /// The admin key that signs it.
    pub signer: PublicKey,
}

#[derive(Serialize, Deserialize)]
struct MemberWire {
    version: u8,
    fleet: [u8; 16],
    client_key: [u8; 32],
    role: u8,
    issued_at: u64,
    expires: u64,
    signer: [u8; 32],
}

impl MemberCertificate {
    /// The canonical bytes the admin signs.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(&MemberWire {
            version: VERSION,
            fleet: self.fleet.to_bytes(),
            client_key: self.client_key.to_bytes(),
            role: self.role.to_byte(),
            issued_at: self.issued_at.as_unix_seconds(),
            expires: self.expires.as_unix_seconds(),
            signer: self.signer.to_bytes(),
        })
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, LockError> {
        let wire: MemberWire = decode_exact(MEMBER, bytes)?;
        check_version(MEMBER, wire.version, VERSION)?;
        Ok(Self {
            fleet: FleetId::from_bytes(wire.fleet),
            client_key: key(MEMBER, &wire.client_key)?,
            role: MemberRole::from_byte(wire.role).ok_or(LockError::Malformed { what: MEMBER })?,
            issued_at: Timestamp::from_unix_seconds(wire.issued_at),
            expires: Timestamp::from_unix_seconds(wire.expires),
            signer: key(MEMBER, &wire.signer)?,
        })
    }

    /// Signs it with `admin`, whose key must be [`signer`](Self::signer).
    pub fn sign(self, admin: &Identity) -> SignedMemberCertificate {
        let signature = admin.sign(Purpose::MemberCertificate, &self.to_bytes());
        SignedMemberCertificate {
            certificate: self,
            signature,
        }
    }
}

/// A [`MemberCertificate`] with the admin's signature, not yet verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedMemberCertificate {
    certificate: MemberCertificate,
    signature: Signature,
}

impl SignedMemberCertificate {
    /// The certificate bytes followed by the 64-byte signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.certificate.to_bytes();
        bytes.extend_from_slice(&self.signature.to_bytes());
        bytes
    }

    /// Decodes one signed certificate; does not verify it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LockError> {
        let (body, signature) = split_signature(MEMBER, bytes)?;
        Ok(Self {
            certificate: MemberCertificate::from_bytes(body)?,
            signature,
        })
    }

    /// Verifies it for `client_key` against the fleet's authority and revocations at `now`, and returns the
    /// role: the fleet, a current admin as signer, the signature, the client key, not revoked, valid now.
    pub fn verify(
        &self,
        authority: &VerifiedAuthority,
        revocations: &VerifiedRevocations,
        client_key: &PublicKey,
        now: Timestamp,
    ) -> Result<MemberRole, LockError> {
        let certificate = &self.certificate;
        if certificate.fleet != authority.fleet() {
            return Err(LockError::WrongFleet { what: MEMBER });
        }
        authority.require_admin(MEMBER, &certificate.signer)?;
        certificate
            .signer
            .verify(
                Purpose::MemberCertificate,
                &certificate.to_bytes(),
                &self.signature,
            )
            .map_err(|_| LockError::BadSignature { what: MEMBER })?;
        if certificate.client_key != *client_key {
            return Err(LockError::WrongSubject {
                what: MEMBER,
                subject: "client key",
                expected: client_key.fingerprint().to_string(),
                found: certificate.client_key.fingerprint().to_string(),
            });
        }
        revocations.require_not_revoked(MEMBER, client_key)?;
        check_validity(MEMBER, certificate.issued_at, certificate.expires, now)?;
        Ok(certificate.role)
    }

    /// The certificate without any check, for display and lookups only.
    pub fn unverified(&self) -> &MemberCertificate {
        &self.certificate
    }
}
