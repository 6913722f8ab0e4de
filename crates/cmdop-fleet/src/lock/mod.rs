//! The fleet lock: signed documents that put the authority over a fleet's machines and members in keys the
//! fleet's admins hold, not in the relay.
//!
//! ```text
//!  admin key ──signs──▶ FleetAuthority chain (serial 1, 2, …: the admin keys, locked or not)
//!      │                     │ the first state's signer is "the fleet key"; clients and agents pin it
//!      ├──signs──▶ MachineCertificate (fleet, machine id, agent key, hostname, lifetime)
//!      ├──signs──▶ EnrolmentAuthorization (an enrolment key may certify machines for a while)
//!      │              └── enrolment key ──signs──▶ MachineCertificate (the enrolment chain)
//!      ├──signs──▶ MemberCertificate (fleet, client key, role, lifetime)
//!      └──signs──▶ RevocationList (serial, revoked agent, client and enrolment keys)
//! ```
//!
//! Every document is postcard with a version byte first, decoded only in its one canonical form (re-encoding
//! must give back exactly the bytes read), and signed under its own [`Purpose`](cmdop_identity::Purpose)
//! label. Verification is pure: the verifier passes the chain it got, the key it pinned and the time now.
//! Formats and golden bytes: `docs/fleet.md` ("The fleet lock").

mod authority;
mod certificate;
mod credentials;
mod enrolment;
mod revocation;

#[cfg(test)]
mod tests;

use cmdop_identity::{Fingerprint, PublicKey};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::time::Timestamp;

pub use authority::{
    AuthorityState, MAX_ADMINS, MAX_AUTHORITY_STATES, SignedAuthority, VerifiedAuthority,
};
pub use certificate::{
    EnrolmentAuthorization, MachineCertificate, MachineCertificateBody, MachineIssuer,
    MemberCertificate, MemberRole, SignedEnrolmentAuthorization, SignedMemberCertificate,
};
pub use credentials::StreamCredentials;
pub use enrolment::{EnrolmentSecret, EnrolmentSecretError};
pub use revocation::{MAX_REVOKED, RevocationList, SignedRevocationList, VerifiedRevocations};

/// How far a certificate's issue time may lie in the future of the verifier's clock: clocks of admins' laptops
/// and machines drift.
pub const CLOCK_SKEW_SECS: u64 = 300;

/// Why a fleet-lock document was refused. Every message names the document, the problem and the fix.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// The bytes are not a document of this kind (cut short, not canonical, an invalid field).
    #[error(
        "the {what} is malformed; the relay or the file it came from is broken or tampered with"
    )]
    Malformed {
        /// Which document.
        what: &'static str,
    },
    /// Bytes follow the document.
    #[error("the {what} is followed by {len} unexpected bytes; it was tampered with")]
    TrailingBytes {
        /// Which document.
        what: &'static str,
        /// How many.
        len: usize,
    },
    /// An encoding version this build does not know.
    #[error("{what} version {version} is not supported; update cmdop")]
    UnsupportedVersion {
        /// Which document.
        what: &'static str,
        /// The version found.
        version: u8,
    },
    /// The signature does not verify under the key it names.
    #[error("the {what} has an invalid signature; it was forged or tampered with")]
    BadSignature {
        /// Which document.
        what: &'static str,
    },
    /// The document is for another fleet.
    #[error("the {what} is for another fleet; the relay mixed up fleets")]
    WrongFleet {
        /// Which document.
        what: &'static str,
    },
    /// The key that signed is not one of the fleet's admin keys.
    #[error(
        "the {what} is signed by {signer}, which is not an admin key of the fleet; it was forged"
    )]
    NotAnAdmin {
        /// Which document.
        what: &'static str,
        /// The signer's fingerprint.
        signer: Fingerprint,
    },
    /// The relay sent no fleet authority at all.
    #[error("the relay sent no fleet authority")]
    EmptyChain,
    /// More authority states than a verifier accepts.
    #[error("the fleet authority has {len} states, more than the {max} accepted")]
    ChainTooLong {
        /// How many were sent.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A state is missing or out of order in the authority chain.
    #[error(
        "the fleet authority skips from serial {previous} to {found}; the relay withheld or reordered a state"
    )]
    ChainGap {
        /// The serial of the state before.
        previous: u64,
        /// The serial found.
        found: u64,
    },
    /// The chain does not start with the pinned fleet key.
    #[error(
        "the fleet authority is rooted at fleet key {found}, not the pinned {pinned}; the relay substituted the fleet's lock"
    )]
    NotRootedAt {
        /// The fleet key pinned.
        pinned: Fingerprint,
        /// The key the chain starts with.
        found: Fingerprint,
    },
    /// The relay offered an older document than the one already held.
    #[error(
        "the relay offered {what} serial {offered}, older than serial {held} held here; it is replaying an old one"
    )]
    Rollback {
        /// Which document.
        what: &'static str,
        /// The serial held.
        held: u64,
        /// The serial offered.
        offered: u64,
    },
    /// The relay offered a different document with the same serial as the one held: two admins (or a stolen
    /// admin key) signed conflicting states.
    #[error(
        "the relay offered a different {what} with the serial {serial} held here; the fleet's admin keys signed conflicting states"
    )]
    Fork {
        /// Which document.
        what: &'static str,
        /// The serial.
        serial: u64,
    },
    /// A newer revocation list that no longer revokes a key an older one did: revocations are never undone.
    #[error(
        "the new revocation list no longer revokes keys the previous one revoked; revocations are never undone, so it is refused"
    )]
    Unrevoked,
    /// Not valid yet.
    #[error("the {what} is not valid before {} (unix seconds); check the clocks", .at.as_unix_seconds())]
    NotYetValid {
        /// Which document.
        what: &'static str,
        /// Its first valid second.
        at: Timestamp,
    },
    /// Expired.
    #[error("the {what} expired at {} (unix seconds); an admin must sign a new one", .at.as_unix_seconds())]
    Expired {
        /// Which document.
        what: &'static str,
        /// Its first invalid second.
        at: Timestamp,
    },
    /// A key the document relies on is on the fleet's revocation list.
    #[error("the {what} relies on the revoked key {key}; it is no longer valid")]
    Revoked {
        /// Which document.
        what: &'static str,
        /// The revoked key's fingerprint.
        key: Fingerprint,
    },
    /// A certificate for another subject than the one expected (another machine, agent key or client key).
    #[error("the {what} is for {subject} {found}, not {expected}; the relay substituted it")]
    WrongSubject {
        /// Which document.
        what: &'static str,
        /// What differs: `machine`, `agent key`, `client key`, `hostname`.
        subject: &'static str,
        /// What was expected.
        expected: String,
        /// What the document names.
        found: String,
    },
    /// A certificate from an enrolment key outside its authorization (time window or lifetime).
    #[error(
        "the machine certificate was made outside its enrolment authorization ({reason}); the enrolment key was misused"
    )]
    OutsideAuthorization {
        /// What was outside.
        reason: &'static str,
    },
}

/// A decoded postcard value and the bytes after it, accepted only if re-encoding gives back exactly the bytes
/// consumed: every document has one byte form, so a signature covers exactly one meaning.
fn take_canonical<'a, W: DeserializeOwned + Serialize>(
    what: &'static str,
    bytes: &'a [u8],
) -> Result<(W, &'a [u8]), LockError> {
    let (wire, rest) =
        postcard::take_from_bytes::<W>(bytes).map_err(|_| LockError::Malformed { what })?;
    let consumed = bytes.len().saturating_sub(rest.len());
    let again = postcard::to_stdvec(&wire).map_err(|_| LockError::Malformed { what })?;
    if bytes.get(..consumed) != Some(again.as_slice()) {
        return Err(LockError::Malformed { what });
    }
    Ok((wire, rest))
}

/// Exactly one value: leftover bytes are an error.
fn decode_exact<W: DeserializeOwned + Serialize>(
    what: &'static str,
    bytes: &[u8],
) -> Result<W, LockError> {
    let (wire, rest) = take_canonical(what, bytes)?;
    if rest.is_empty() {
        Ok(wire)
    } else {
        Err(LockError::TrailingBytes {
            what,
            len: rest.len(),
        })
    }
}

/// The postcard encoding of a value made of plain integers, arrays, strings and byte vectors, which cannot fail;
/// an empty result would simply fail to decode and verify.
fn encode<W: Serialize>(wire: &W) -> Vec<u8> {
    postcard::to_stdvec(wire).unwrap_or_default()
}

/// A public key read from a document.
fn key(what: &'static str, bytes: &[u8; 32]) -> Result<PublicKey, LockError> {
    PublicKey::from_bytes(bytes).map_err(|_| LockError::Malformed { what })
}

/// The version byte every document starts with.
fn check_version(what: &'static str, found: u8, expected: u8) -> Result<(), LockError> {
    if found == expected {
        Ok(())
    } else {
        Err(LockError::UnsupportedVersion {
            what,
            version: found,
        })
    }
}

/// Splits `bytes` into a body and its trailing 64-byte signature.
fn split_signature<'a>(
    what: &'static str,
    bytes: &'a [u8],
) -> Result<(&'a [u8], cmdop_identity::Signature), LockError> {
    let at = bytes
        .len()
        .checked_sub(64)
        .ok_or(LockError::Malformed { what })?;
    let (body, signature) = bytes.split_at(at);
    let signature: &[u8; 64] = signature
        .try_into()
        .map_err(|_| LockError::Malformed { what })?;
    Ok((body, cmdop_identity::Signature::from_bytes(signature)))
}

/// Keys in a document's list must be strictly ascending: no duplicates, one byte form per set.
fn strictly_ascending(keys: &[[u8; 32]]) -> bool {
    keys.windows(2).all(|pair| match pair {
        [a, b] => a < b,
        _ => true,
    })
}
