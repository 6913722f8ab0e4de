//! The fleet authority: a chain of signed states, each naming the fleet's admin keys and whether the fleet is
//! locked. State 1 is signed by the key that created the lock, the fleet key; every later state by an admin of
//! the state before it. Clients and agents pin the fleet key and accept only chains rooted at it.
//!
//! ```text
//! version: u8 = 1 | fleet: 16 | serial: u64 | locked: bool | admins: Vec<32> (sorted, 1..=8)
//! | issued_at: u64 | signer: 32                                 ── signed under `cmdop fleet-authority v1`
//! signature: 64
//! ```

use cmdop_identity::{Identity, PublicKey, Purpose, Signature};
use serde::{Deserialize, Serialize};

use super::{
    LockError, check_version, decode_exact, encode, key, split_signature, strictly_ascending,
};
use crate::id::FleetId;
use crate::time::Timestamp;

const WHAT: &str = "fleet authority";
const VERSION: u8 = 1;

/// The most admin keys a fleet trusts at once.
pub const MAX_ADMINS: usize = 8;

/// The most states an authority chain may have: admin changes are rare, and the whole chain travels with
/// every routed stream.
pub const MAX_AUTHORITY_STATES: usize = 64;

/// One state of a fleet's lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorityState {
    /// The fleet.
    pub fleet: FleetId,
    /// 1 for the state that created the lock, then one more for each change.
    pub serial: u64,
    /// Whether the fleet is locked (false: the admins disabled the lock, with this signed state).
    pub locked: bool,
    /// The admin keys, sorted by their bytes, 1 to [`MAX_ADMINS`].
    pub admins: Vec<PublicKey>,
    /// When it was signed.
    pub issued_at: Timestamp,
    /// The admin key that signs it: for serial 1 one of its own admins (the fleet key), later an admin of the
    /// state before.
    pub signer: PublicKey,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    version: u8,
    fleet: [u8; 16],
    serial: u64,
    locked: bool,
    admins: Vec<[u8; 32]>,
    issued_at: u64,
    signer: [u8; 32],
}

impl AuthorityState {
    /// The canonical bytes the signer signs.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(&Wire {
            version: VERSION,
            fleet: self.fleet.to_bytes(),
            serial: self.serial,
            locked: self.locked,
            admins: self.admins.iter().map(PublicKey::to_bytes).collect(),
            issued_at: self.issued_at.as_unix_seconds(),
            signer: self.signer.to_bytes(),
        })
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, LockError> {
        let wire: Wire = decode_exact(WHAT, bytes)?;
        check_version(WHAT, wire.version, VERSION)?;
        if wire.admins.is_empty()
            || wire.admins.len() > MAX_ADMINS
            || !strictly_ascending(&wire.admins)
            || wire.serial == 0
        {
            return Err(LockError::Malformed { what: WHAT });
        }
        let admins = wire
            .admins
            .iter()
            .map(|bytes| key(WHAT, bytes))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            fleet: FleetId::from_bytes(wire.fleet),
            serial: wire.serial,
            locked: wire.locked,
            admins,
            issued_at: Timestamp::from_unix_seconds(wire.issued_at),
            signer: key(WHAT, &wire.signer)?,
        })
    }

    /// Whether `key` is one of the admin keys.
    pub fn is_admin(&self, key: &PublicKey) -> bool {
        self.admins.contains(key)
    }

    /// Signs this state with `admin`, whose key must be [`signer`](Self::signer).
    pub fn sign(self, admin: &Identity) -> SignedAuthority {
        let signature = admin.sign(Purpose::FleetAuthority, &self.to_bytes());
        SignedAuthority {
            state: self,
            signature,
        }
    }

    /// The admin set sorted as the format requires, duplicates removed.
    pub fn sorted_admins(mut admins: Vec<PublicKey>) -> Vec<PublicKey> {
        admins.sort();
        admins.dedup();
        admins
    }
}

/// An [`AuthorityState`] with its signature; not verified until it is part of a [`VerifiedAuthority`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedAuthority {
    state: AuthorityState,
    signature: Signature,
}

impl SignedAuthority {
    /// The state bytes followed by the 64-byte signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.state.to_bytes();
        bytes.extend_from_slice(&self.signature.to_bytes());
        bytes
    }

    /// Decodes one signed state; does not verify it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LockError> {
        let (body, signature) = split_signature(WHAT, bytes)?;
        Ok(Self {
            state: AuthorityState::from_bytes(body)?,
            signature,
        })
    }

    /// The state, unverified: for display, and to find out which fleet key a chain claims to be rooted at
    /// before asking a person to confirm it. Never decide on it.
    pub fn unverified_state(&self) -> &AuthorityState {
        &self.state
    }

    fn verify_signature(&self) -> Result<(), LockError> {
        self.state
            .signer
            .verify(
                Purpose::FleetAuthority,
                &self.state.to_bytes(),
                &self.signature,
            )
            .map_err(|_| LockError::BadSignature { what: WHAT })
    }
}

/// A fleet authority chain that verified from its pinned fleet key: the latest state is what the fleet's
/// admins last signed (as far as the relay let the verifier see).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedAuthority {
    fleet_key: PublicKey,
    latest: AuthorityState,
    latest_bytes: Vec<u8>,
}

impl VerifiedAuthority {
    /// Verifies `chain` (every state from serial 1 on, each as [`SignedAuthority::to_bytes`]) for `fleet`,
    /// rooted at `fleet_key`: state 1 is signed by `fleet_key`, which is one of its admins; state n+1 by an
    /// admin of state n; serials count up from 1 without gaps.
    pub fn verify(
        fleet: FleetId,
        fleet_key: &PublicKey,
        chain: &[Vec<u8>],
    ) -> Result<Self, LockError> {
        if chain.len() > MAX_AUTHORITY_STATES {
            return Err(LockError::ChainTooLong {
                len: chain.len(),
                max: MAX_AUTHORITY_STATES,
            });
        }
        let mut previous: Option<AuthorityState> = None;
        let mut latest_bytes = None;
        for bytes in chain {
            let signed = SignedAuthority::from_bytes(bytes)?;
            let state = &signed.state;
            if state.fleet != fleet {
                return Err(LockError::WrongFleet { what: WHAT });
            }
            let expected_serial = previous.as_ref().map_or(1, |p| p.serial.saturating_add(1));
            if state.serial != expected_serial {
                return Err(LockError::ChainGap {
                    previous: expected_serial.saturating_sub(1),
                    found: state.serial,
                });
            }
            let trusted = previous.as_ref().map_or(
                // State 1 creates the lock: its signer is the fleet key, and an admin of itself.
                state.signer == *fleet_key && state.is_admin(fleet_key),
                |p| p.is_admin(&state.signer),
            );
            if !trusted {
                if previous.is_none() {
                    return Err(LockError::NotRootedAt {
                        pinned: fleet_key.fingerprint(),
                        found: state.signer.fingerprint(),
                    });
                }
                return Err(LockError::NotAnAdmin {
                    what: WHAT,
                    signer: state.signer.fingerprint(),
                });
            }
            signed.verify_signature()?;
            latest_bytes = Some(bytes.clone());
            previous = Some(signed.state);
        }
        match (previous, latest_bytes) {
            (Some(latest), Some(latest_bytes)) => Ok(Self {
                fleet_key: *fleet_key,
                latest,
                latest_bytes,
            }),
            _ => Err(LockError::EmptyChain),
        }
    }

    /// The key a chain claims to be rooted at (the signer of its first state), without verifying anything:
    /// what a person is asked to confirm before pinning, and what the admin's own tools compare.
    pub fn claimed_fleet_key(chain: &[Vec<u8>]) -> Result<PublicKey, LockError> {
        let first = chain.first().ok_or(LockError::EmptyChain)?;
        Ok(SignedAuthority::from_bytes(first)?.state.signer)
    }

    /// Checks that this chain is not older than what the verifier holds: a lower serial is a rollback, the
    /// same serial with other bytes a fork. `held_latest` is the held latest state's bytes, when known.
    pub fn check_not_older(
        &self,
        held_serial: u64,
        held_latest: Option<&[u8]>,
    ) -> Result<(), LockError> {
        if self.latest.serial < held_serial {
            return Err(LockError::Rollback {
                what: WHAT,
                held: held_serial,
                offered: self.latest.serial,
            });
        }
        if let Some(held) = held_latest
            && self.latest.serial == held_serial
            && held != self.latest_bytes.as_slice()
        {
            return Err(LockError::Fork {
                what: WHAT,
                serial: held_serial,
            });
        }
        Ok(())
    }

    /// A state held from an earlier verification (the verifier's own 0600 file), trusted as it is.
    pub fn from_held(fleet_key: PublicKey, latest_bytes: &[u8]) -> Result<Self, LockError> {
        let signed = SignedAuthority::from_bytes(latest_bytes)?;
        signed.verify_signature()?;
        Ok(Self {
            fleet_key,
            latest: signed.state,
            latest_bytes: latest_bytes.to_vec(),
        })
    }

    /// The fleet key the chain is rooted at.
    pub fn fleet_key(&self) -> PublicKey {
        self.fleet_key
    }

    /// The fleet.
    pub fn fleet(&self) -> FleetId {
        self.latest.fleet
    }

    /// The latest state.
    pub fn latest(&self) -> &AuthorityState {
        &self.latest
    }

    /// The latest state's signed bytes.
    pub fn latest_bytes(&self) -> &[u8] {
        &self.latest_bytes
    }

    /// The latest serial.
    pub fn serial(&self) -> u64 {
        self.latest.serial
    }

    /// Whether the fleet is locked now.
    pub fn is_locked(&self) -> bool {
        self.latest.locked
    }

    /// Whether `key` is an admin key now.
    pub fn is_admin(&self, key: &PublicKey) -> bool {
        self.latest.is_admin(key)
    }

    /// `Ok` if `key` is an admin key now, the refusal naming `what` otherwise.
    pub fn require_admin(&self, what: &'static str, key: &PublicKey) -> Result<(), LockError> {
        if self.is_admin(key) {
            Ok(())
        } else {
            Err(LockError::NotAnAdmin {
                what,
                signer: key.fingerprint(),
            })
        }
    }

    /// The next state after this one, to be signed by a current admin: `serial + 1`, with `admins` and
    /// `locked` as given.
    pub fn next_state(
        &self,
        admins: Vec<PublicKey>,
        locked: bool,
        signer: PublicKey,
        now: Timestamp,
    ) -> AuthorityState {
        AuthorityState {
            fleet: self.latest.fleet,
            serial: self.latest.serial.saturating_add(1),
            locked,
            admins: AuthorityState::sorted_admins(admins),
            issued_at: now,
            signer,
        }
    }
}
