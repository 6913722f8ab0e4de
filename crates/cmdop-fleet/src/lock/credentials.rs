//! What a client presents to an agent inside the end-to-end channel (the `capability` bytes of its `Auth`
//! frame, which its signature covers): the relay's capability for this stream and, in a locked fleet, the
//! member certificate a fleet admin signed for the client's key.
//!
//! ```text
//! version: u8 = 1 | capability: bytes (varint length) | member_certificate: Option<bytes>
//! ```

use serde::{Deserialize, Serialize};

use super::{LockError, check_version, decode_exact, encode};

const WHAT: &str = "stream credentials";
const VERSION: u8 = 1;

/// The client's credentials for one stream, as the agent receives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamCredentials {
    /// The relay's signed capability ([`SignedCapability`](crate::SignedCapability) bytes).
    pub capability: Vec<u8>,
    /// The client's member certificate ([`SignedMemberCertificate`](super::SignedMemberCertificate) bytes),
    /// required in a locked fleet.
    pub member_certificate: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    version: u8,
    capability: Vec<u8>,
    member_certificate: Option<Vec<u8>>,
}

impl StreamCredentials {
    /// The canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(&Wire {
            version: VERSION,
            capability: self.capability.clone(),
            member_certificate: self.member_certificate.clone(),
        })
    }

    /// Decodes exactly one set of credentials; verifying what they hold is the agent's.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LockError> {
        let wire: Wire = decode_exact(WHAT, bytes)?;
        check_version(WHAT, wire.version, VERSION)?;
        Ok(Self {
            capability: wire.capability,
            member_certificate: wire.member_certificate,
        })
    }
}
