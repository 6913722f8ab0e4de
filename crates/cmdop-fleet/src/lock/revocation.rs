//! The fleet's revocation list: the agent, client and enrolment keys no certificate may rely on any more,
//! signed by an admin, with a serial that only grows. Verifiers keep the highest serial they have seen and
//! refuse older lists, so a relay can withhold a new list (bounded by certificate lifetimes) but never undo one.
//!
//! ```text
//! version: u8 = 1 | fleet: 16 | serial: u64 | issued_at: u64 | revoked: Vec<32> (sorted, ≤ 1000) | signer: 32
//!                                                               ── signed under `cmdop revocation-list v1`
//! signature: 64
//! ```

use cmdop_identity::{Identity, PublicKey, Purpose, Signature};
use serde::{Deserialize, Serialize};

use super::{
    LockError, VerifiedAuthority, check_version, decode_exact, encode, key, split_signature,
    strictly_ascending,
};
use crate::id::FleetId;
use crate::time::Timestamp;

const WHAT: &str = "revocation list";
const VERSION: u8 = 1;

/// The most keys one list revokes: it travels with every routed stream, inside one 64 KiB frame.
pub const MAX_REVOKED: usize = 1000;

/// What a revocation list says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationList {
    /// The fleet.
    pub fleet: FleetId,
    /// 1 for the first list, one more for each new one.
    pub serial: u64,
    /// When it was signed.
    pub issued_at: Timestamp,
    /// The revoked keys, sorted by their bytes.
    pub revoked: Vec<PublicKey>,
    /// The admin key that signs it.
    pub signer: PublicKey,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    version: u8,
    fleet: [u8; 16],
    serial: u64,
    issued_at: u64,
    revoked: Vec<[u8; 32]>,
    signer: [u8; 32],
}

impl RevocationList {
    /// The canonical bytes the signer signs.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(&Wire {
            version: VERSION,
            fleet: self.fleet.to_bytes(),
            serial: self.serial,
            issued_at: self.issued_at.as_unix_seconds(),
            revoked: self.revoked.iter().map(PublicKey::to_bytes).collect(),
            signer: self.signer.to_bytes(),
        })
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, LockError> {
        let wire: Wire = decode_exact(WHAT, bytes)?;
        check_version(WHAT, wire.version, VERSION)?;
        if wire.revoked.len() > MAX_REVOKED
            || !strictly_ascending(&wire.revoked)
            || wire.serial == 0
        {
            return Err(LockError::Malformed { what: WHAT });
        }
        Ok(Self {
            fleet: FleetId::from_bytes(wire.fleet),
            serial: wire.serial,
            issued_at: Timestamp::from_unix_seconds(wire.issued_at),
            revoked: wire
                .revoked
                .iter()
                .map(|bytes| key(WHAT, bytes))
                .collect::<Result<_, _>>()?,
            signer: key(WHAT, &wire.signer)?,
        })
    }

    /// The list after this one with `more` revoked too (sorted, without duplicates), signed by `signer`.
    pub fn successor(
        previous: Option<&Self>,
        fleet: FleetId,
        more: &[PublicKey],
        signer: PublicKey,
        now: Timestamp,
    ) -> Self {
        let mut revoked: Vec<PublicKey> = previous.map(|p| p.revoked.clone()).unwrap_or_default();
        revoked.extend_from_slice(more);
        revoked.sort();
        revoked.dedup();
        Self {
            fleet,
            serial: previous.map_or(1, |p| p.serial.saturating_add(1)),
            issued_at: now,
            revoked,
            signer,
        }
    }

    /// Signs the list with `admin`, whose key must be [`signer`](Self::signer).
    pub fn sign(self, admin: &Identity) -> SignedRevocationList {
        let signature = admin.sign(Purpose::RevocationList, &self.to_bytes());
        SignedRevocationList {
            list: self,
            signature,
        }
    }
}

/// A [`RevocationList`] with its signature, not yet verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRevocationList {
    list: RevocationList,
    signature: Signature,
}

impl SignedRevocationList {
    /// The list bytes followed by the 64-byte signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.list.to_bytes();
        bytes.extend_from_slice(&self.signature.to_bytes());
        bytes
    }

    /// Decodes one signed list; does not verify it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LockError> {
        let (body, signature) = split_signature(WHAT, bytes)?;
        Ok(Self {
            list: RevocationList::from_bytes(body)?,
            signature,
        })
    }

    /// Verifies the list against the fleet's authority: its fleet, a current admin as signer, the signature.
    pub fn verify(self, authority: &VerifiedAuthority) -> Result<VerifiedRevocations, LockError> {
        if self.list.fleet != authority.fleet() {
            return Err(LockError::WrongFleet { what: WHAT });
        }
        authority.require_admin(WHAT, &self.list.signer)?;
        self.list
            .signer
            .verify(
                Purpose::RevocationList,
                &self.list.to_bytes(),
                &self.signature,
            )
            .map_err(|_| LockError::BadSignature { what: WHAT })?;
        let bytes = self.to_bytes();
        Ok(VerifiedRevocations {
            list: Some(self.list),
            bytes,
        })
    }

    /// The list without any check, for display only.
    pub fn unverified_list(&self) -> &RevocationList {
        &self.list
    }
}

/// The revocations a verifier holds: a verified list, or none yet (nothing revoked).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifiedRevocations {
    list: Option<RevocationList>,
    bytes: Vec<u8>,
}

impl VerifiedRevocations {
    /// No list: nothing is revoked.
    pub fn none() -> Self {
        Self::default()
    }

    /// Verifies `offered` (if any) against `authority` and returns what to hold from now on: a list older
    /// than `held_serial` is a rollback; no list at all when one is held keeps nothing newer (the caller keeps
    /// its own).
    pub fn verify_offered(
        authority: &VerifiedAuthority,
        offered: Option<&[u8]>,
        held_serial: u64,
    ) -> Result<Self, LockError> {
        let Some(bytes) = offered else {
            return Ok(Self::none());
        };
        let verified = SignedRevocationList::from_bytes(bytes)?.verify(authority)?;
        if verified.serial() < held_serial {
            return Err(LockError::Rollback {
                what: WHAT,
                held: held_serial,
                offered: verified.serial(),
            });
        }
        Ok(verified)
    }

    /// Checks that this list may replace `held`: not older; at the same serial, the very same list (anything
    /// else means admins signed two different lists with one serial); and, when newer, revoking every key
    /// `held` revokes, because a revocation is never undone (a new list that drops a key was made from a list
    /// the relay lied about, or by a misused admin key).
    pub fn check_replaces(&self, held: &Self) -> Result<(), LockError> {
        if self.serial() < held.serial() {
            return Err(LockError::Rollback {
                what: WHAT,
                held: held.serial(),
                offered: self.serial(),
            });
        }
        if self.serial() == held.serial() {
            return if self.bytes == held.bytes {
                Ok(())
            } else {
                Err(LockError::Fork {
                    what: WHAT,
                    serial: held.serial(),
                })
            };
        }
        match held.list() {
            Some(old) if old.revoked.iter().any(|key| !self.is_revoked(key)) => {
                Err(LockError::Unrevoked)
            }
            _ => Ok(()),
        }
    }

    /// The serial (0 with no list).
    pub fn serial(&self) -> u64 {
        self.list.as_ref().map_or(0, |list| list.serial)
    }

    /// Whether `key` is revoked.
    pub fn is_revoked(&self, key: &PublicKey) -> bool {
        self.list
            .as_ref()
            .is_some_and(|list| list.revoked.binary_search(key).is_ok())
    }

    /// `Ok` unless `key` is revoked; the refusal names `what` relied on it.
    pub fn require_not_revoked(
        &self,
        what: &'static str,
        key: &PublicKey,
    ) -> Result<(), LockError> {
        if self.is_revoked(key) {
            Err(LockError::Revoked {
                what,
                key: key.fingerprint(),
            })
        } else {
            Ok(())
        }
    }

    /// The list, if any.
    pub fn list(&self) -> Option<&RevocationList> {
        self.list.as_ref()
    }

    /// The signed bytes of the list (empty with no list).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A list held from an earlier verification (the verifier's own 0600 file), trusted as it is.
    pub fn from_held(bytes: &[u8]) -> Result<Self, LockError> {
        let signed = SignedRevocationList::from_bytes(bytes)?;
        signed
            .list
            .signer
            .verify(
                Purpose::RevocationList,
                &signed.list.to_bytes(),
                &signed.signature,
            )
            .map_err(|_| LockError::BadSignature { what: WHAT })?;
        Ok(Self {
            list: Some(signed.list),
            bytes: bytes.to_vec(),
        })
    }
}
