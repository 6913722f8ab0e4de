//! Capabilities: what a fleet's trust key lets one client key do on one machine, on one stream.
//!
//! The agent accepts a client on an end-to-end stream only with a [`SignedCapability`] for the
//! client's key, the agent's fleet, the agent's own machine, the stream's channel id and the
//! stream's operation, valid now. The trust key signs the canonical bytes under
//! [`Purpose::Capability`], so the signature can never be mistaken for any other signed message,
//! and a capability issued for one machine, client or channel is useless for any other.
//!
//! Encoding (postcard, all integers varint unless noted; specified in `docs/fleet.md`):
//!
//! ```text
//! version: u8 = 2 | client_key: 32 raw bytes | fleet: 16 raw bytes | machine: 16 raw bytes
//! | channel: 16 raw bytes | operations: u32 bits | not_before: u64 | not_after: u64
//!                                                            ── the signed capability bytes
//! signature: 64 raw bytes                                    ── appended for SignedCapability
//! ```
//!
//! Version 1 (without machine and channel) is no longer accepted: the relay, which issues
//! capabilities, and the agent, which checks them, are upgraded together, and nothing stores one.

use std::fmt;

use cmdop_identity::{Identity, PublicKey, Purpose, Signature};
use serde::{Deserialize, Serialize};

use crate::id::{FleetId, MachineId};
use crate::role::Permission;
use crate::scope::{FleetAccess, ScopeError};
use crate::time::Timestamp;

/// The encoding version this code writes and accepts.
const VERSION: u8 = 2;
/// Length of the signature appended to the capability bytes.
const SIGNATURE_LEN: usize = 64;

/// One kind of end-to-end stream a capability can allow.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Run a command (`cmdop connect exec`).
    Exec,
    /// An interactive shell.
    Shell,
    /// Port forwarding.
    Forward,
    /// File copy.
    Copy,
}

impl Operation {
    /// Every operation, in bit order.
    pub const ALL: [Self; 4] = [Self::Exec, Self::Shell, Self::Forward, Self::Copy];

    /// The bit that stands for this operation in an [`OperationSet`]; part of the format,
    /// so new operations take new bits and old bits never change meaning.
    pub const fn bit(self) -> u32 {
        match self {
            Self::Exec => 1 << 0,
            Self::Shell => 1 << 1,
            Self::Forward => 1 << 2,
            Self::Copy => 1 << 3,
        }
    }

    /// The lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Shell => "shell",
            Self::Forward => "forward",
            Self::Copy => "copy",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Operation`]s, stored as bits.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OperationSet(u32);

impl OperationSet {
    /// No operation.
    pub const EMPTY: Self = Self(0);

    /// Every operation this version knows.
    pub const fn all() -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < Operation::ALL.len() {
            bits |= Operation::ALL[i].bit();
            i += 1;
        }
        Self(bits)
    }

    /// The set with these bits, or `None` if a bit stands for no known operation (a
    /// capability from a newer signer is refused rather than half understood).
    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits & !Self::all().0 == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }

    /// The bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// This set plus `operation`.
    #[must_use]
    pub const fn with(self, operation: Operation) -> Self {
        Self(self.0 | operation.bit())
    }

    /// Whether `operation` is in the set.
    pub const fn contains(self, operation: Operation) -> bool {
        self.0 & operation.bit() != 0
    }

    /// The operations in the set, in bit order.
    pub fn iter(self) -> impl Iterator<Item = Operation> {
        Operation::ALL
            .into_iter()
            .filter(move |op| self.contains(*op))
    }
}

impl FromIterator<Operation> for OperationSet {
    fn from_iter<I: IntoIterator<Item = Operation>>(iter: I) -> Self {
        iter.into_iter().fold(Self::EMPTY, Self::with)
    }
}

impl fmt::Debug for OperationSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// A grant from a fleet's trust key: `client_key` may open `operations` streams to `machine` of
/// `fleet` on the stream `channel`, from `not_before` (inclusive) until `not_after` (exclusive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    /// The client identity the grant is for.
    pub client_key: PublicKey,
    /// The fleet of the machine.
    pub fleet: FleetId,
    /// The one machine it reaches.
    pub machine: MachineId,
    /// The relay's random id of the one stream it is for (bound into the end-to-end prologue too).
    pub channel: [u8; 16],
    /// What kinds of stream it allows.
    pub operations: OperationSet,
    /// First second of validity.
    pub not_before: Timestamp,
    /// First second it is no longer valid.
    pub not_after: Timestamp,
}

/// The postcard layout; field order is the wire order.
#[derive(Serialize, Deserialize)]
struct Wire {
    version: u8,
    client_key: [u8; 32],
    fleet: [u8; 16],
    machine: [u8; 16],
    channel: [u8; 16],
    operations: u32,
    not_before: u64,
    not_after: u64,
}

impl Capability {
    /// The canonical bytes, which are what the trust key signs.
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = Wire {
            version: VERSION,
            client_key: self.client_key.to_bytes(),
            fleet: self.fleet.to_bytes(),
            machine: self.machine.to_bytes(),
            channel: self.channel,
            operations: self.operations.bits(),
            not_before: self.not_before.as_unix_seconds(),
            not_after: self.not_after.as_unix_seconds(),
        };
        // Serialising plain integers and arrays into a Vec cannot fail; an empty result
        // would simply fail to decode and verify.
        postcard::to_stdvec(&wire).unwrap_or_default()
    }

    /// Decodes exactly one capability; leftover bytes are an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CapabilityError> {
        let (capability, rest) = Self::take_from_bytes(bytes)?;
        if rest.is_empty() {
            Ok(capability)
        } else {
            Err(CapabilityError::TrailingBytes { len: rest.len() })
        }
    }

    /// Decodes one capability from the front of `bytes`, returning the rest. Non-canonical
    /// encodings are refused so that every capability has exactly one byte form.
    fn take_from_bytes(bytes: &[u8]) -> Result<(Self, &[u8]), CapabilityError> {
        let (wire, rest) =
            postcard::take_from_bytes::<Wire>(bytes).map_err(|_| CapabilityError::Malformed)?;
        if wire.version != VERSION {
            return Err(CapabilityError::UnsupportedVersion {
                version: wire.version,
            });
        }
        let client_key =
            PublicKey::from_bytes(&wire.client_key).map_err(|_| CapabilityError::BadClientKey)?;
        let operations =
            OperationSet::from_bits(wire.operations).ok_or(CapabilityError::UnknownOperations {
                bits: wire.operations,
            })?;
        let capability = Self {
            client_key,
            fleet: FleetId::from_bytes(wire.fleet),
            machine: MachineId::from_bytes(wire.machine),
            channel: wire.channel,
            operations,
            not_before: Timestamp::from_unix_seconds(wire.not_before),
            not_after: Timestamp::from_unix_seconds(wire.not_after),
        };
        let consumed = bytes.len().saturating_sub(rest.len());
        if bytes.get(..consumed) != Some(capability.to_bytes().as_slice()) {
            return Err(CapabilityError::Malformed);
        }
        Ok((capability, rest))
    }

    /// A capability for `client_key` on `target` in the fleet of `access`, which must allow
    /// [`Permission::Reach`], valid from `valid.0` until `valid.1`. Tying issuance to a
    /// [`FleetAccess`] means a capability is only ever granted to a credential that covers the
    /// fleet.
    pub fn grant(
        access: &FleetAccess,
        client_key: PublicKey,
        target: Target,
        operations: OperationSet,
        valid: (Timestamp, Timestamp),
    ) -> Result<Self, ScopeError> {
        access.require(Permission::Reach)?;
        Ok(Self {
            client_key,
            fleet: access.fleet_id(),
            machine: target.machine,
            channel: target.channel,
            operations,
            not_before: valid.0,
            not_after: valid.1,
        })
    }

    /// Signs the canonical bytes with the fleet's trust key.
    pub fn sign(self, trust_key: &Identity) -> SignedCapability {
        let signature = trust_key.sign(Purpose::Capability, &self.to_bytes());
        SignedCapability {
            capability: self,
            signature,
        }
    }

    /// Whether `now` is inside `[not_before, not_after)`.
    pub fn is_valid_at(&self, now: Timestamp) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// The one machine and stream a capability is issued for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The machine the stream goes to.
    pub machine: MachineId,
    /// The relay's random id of the stream.
    pub channel: [u8; 16],
}

/// What the agent expects a capability to name: the client key that authenticated the
/// end-to-end handshake, its own fleet and machine, the stream's channel id and operation, and
/// the time now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The client key proven in the channel.
    pub client_key: PublicKey,
    /// The agent's fleet.
    pub fleet: FleetId,
    /// The agent's own machine id.
    pub machine: MachineId,
    /// The channel id of this stream.
    pub channel: [u8; 16],
    /// The stream's operation.
    pub operation: Operation,
    /// The time now.
    pub now: Timestamp,
}

/// A [`Capability`] with the trust key's signature. Its contents are reachable only through
/// [`verify`](Self::verify), or explicitly unverified for logging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCapability {
    capability: Capability,
    signature: Signature,
}

impl SignedCapability {
    /// The capability bytes followed by the 64-byte signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.capability.to_bytes();
        bytes.extend_from_slice(&self.signature.to_bytes());
        bytes
    }

    /// Decodes exactly one signed capability; leftover or missing bytes are an error. This
    /// does not verify it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CapabilityError> {
        let (capability, rest) = Capability::take_from_bytes(bytes)?;
        let signature: &[u8; SIGNATURE_LEN] = match rest.len() {
            SIGNATURE_LEN => rest.try_into().map_err(|_| CapabilityError::Malformed)?,
            len if len > SIGNATURE_LEN => {
                return Err(CapabilityError::TrailingBytes {
                    len: len - SIGNATURE_LEN,
                });
            }
            _ => return Err(CapabilityError::Malformed),
        };
        Ok(Self {
            capability,
            signature: Signature::from_bytes(signature),
        })
    }

    /// Checks, in this order, that the signature is the trust key's, that the capability is for
    /// the expected client key, fleet, machine and channel, that `now` is inside its validity, and
    /// that it allows the operation. Only then is the capability handed out.
    pub fn verify(
        &self,
        trust_key: &PublicKey,
        expected: &Expected,
    ) -> Result<&Capability, CapabilityError> {
        let capability = &self.capability;
        let Expected {
            client_key,
            fleet,
            machine,
            channel,
            operation,
            now,
        } = *expected;
        trust_key
            .verify(Purpose::Capability, &capability.to_bytes(), &self.signature)
            .map_err(|_| CapabilityError::BadSignature)?;
        if capability.client_key != client_key {
            return Err(CapabilityError::WrongClient);
        }
        if capability.fleet != fleet {
            return Err(CapabilityError::WrongFleet);
        }
        if capability.machine != machine {
            return Err(CapabilityError::WrongMachine);
        }
        if capability.channel != channel {
            return Err(CapabilityError::WrongChannel);
        }
        if now < capability.not_before {
            return Err(CapabilityError::NotYetValid {
                not_before: capability.not_before,
            });
        }
        if now >= capability.not_after {
            return Err(CapabilityError::Expired {
                not_after: capability.not_after,
            });
        }
        if !capability.operations.contains(operation) {
            return Err(CapabilityError::OperationNotAllowed { operation });
        }
        Ok(capability)
    }

    /// The capability without any check, for logs and diagnostics only; never decide on it.
    pub fn unverified_capability(&self) -> &Capability {
        &self.capability
    }
}

/// Why a capability was refused.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// The bytes are not a capability (cut short, or not canonical).
    #[error("the capability is malformed; ask the relay for a new one")]
    Malformed,
    /// Bytes follow the capability.
    #[error("the capability is followed by {len} unexpected bytes")]
    TrailingBytes {
        /// How many.
        len: usize,
    },
    /// An encoding version this build does not know.
    #[error("capability version {version} is not supported; update the agent")]
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// The client key is not a valid Ed25519 public key.
    #[error("the capability names an invalid client key")]
    BadClientKey,
    /// Operation bits this build does not know.
    #[error("the capability grants unknown operations (bits {bits:#x}); update the agent")]
    UnknownOperations {
        /// The operation bits found.
        bits: u32,
    },
    /// The signature is not the fleet trust key's.
    #[error("the capability is not signed by this fleet's trust key")]
    BadSignature,
    /// The capability is for another client key.
    #[error("the capability was issued to a different client key")]
    WrongClient,
    /// The capability is for another fleet.
    #[error("the capability is for a different fleet")]
    WrongFleet,
    /// The capability was issued for another machine: the relay replayed it, or routed the stream
    /// to the wrong machine.
    #[error(
        "the capability was issued for a different machine; the relay misrouted or replayed it"
    )]
    WrongMachine,
    /// The capability was issued for another stream: the relay replayed it.
    #[error("the capability was issued for a different stream (channel id); the relay replayed it")]
    WrongChannel,
    /// The capability is not valid yet.
    #[error("the capability is not valid before {}; check the clocks", .not_before.as_unix_seconds())]
    NotYetValid {
        /// Its first valid second.
        not_before: Timestamp,
    },
    /// The capability has expired.
    #[error("the capability expired at {}; ask the relay for a new one", .not_after.as_unix_seconds())]
    Expired {
        /// Its first invalid second.
        not_after: Timestamp,
    },
    /// The operation is not in the capability.
    #[error("the capability does not allow {operation}")]
    OperationNotAllowed {
        /// The operation asked for.
        operation: Operation,
    },
}
