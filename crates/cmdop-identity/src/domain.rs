//! Domain separation: the purpose labels every signature carries, and the length-prefixed framing that puts a
//! label in front of what is signed or hashed.

/// What a signature is for. Each purpose has its own versioned label that is signed along with the message,
/// so a signature made for one purpose never verifies for another.
///
/// New purposes are appended; a label never changes meaning (a new meaning gets a new `vN`). The registry is
/// `docs/security.md`.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// An agent or CLI proves key possession to the relay (signs challenge + TLS exporter + own key).
    RelayLogin,
    /// The agent signs the Noise handshake hash on an end-to-end stream.
    E2eAgentAuth,
    /// The client signs the Noise handshake hash on an end-to-end stream.
    E2eClientAuth,
    /// A fleet trust key signs a client capability.
    Capability,
    /// A fleet admin key signs a state of the fleet's lock: the set of admin keys, and whether it is locked.
    FleetAuthority,
    /// A fleet admin key certifies a machine: its id, agent key, fleet and hostname.
    MachineCertificate,
    /// A fleet admin key authorizes an enrolment key to certify machines for a while.
    EnrolmentAuthorization,
    /// An enrolment key (derived from an enrolment secret) certifies a machine, under an authorization.
    EnrolmentProof,
    /// A fleet admin key certifies a client key as a member of the fleet, with a role.
    MemberCertificate,
    /// A fleet admin key signs the fleet's revocation list.
    RevocationList,
}

impl Purpose {
    /// Every purpose, for registries and tests.
    pub const ALL: [Self; 10] = [
        Self::RelayLogin,
        Self::E2eAgentAuth,
        Self::E2eClientAuth,
        Self::Capability,
        Self::FleetAuthority,
        Self::MachineCertificate,
        Self::EnrolmentAuthorization,
        Self::EnrolmentProof,
        Self::MemberCertificate,
        Self::RevocationList,
    ];

    /// The label signed in front of the message, for example `"cmdop relay-login v1"`.
    pub fn label(self) -> &'static str {
        match self {
            Self::RelayLogin => "cmdop relay-login v1",
            Self::E2eAgentAuth => "cmdop e2e-agent-auth v1",
            Self::E2eClientAuth => "cmdop e2e-client-auth v1",
            Self::Capability => "cmdop capability v1",
            Self::FleetAuthority => "cmdop fleet-authority v1",
            Self::MachineCertificate => "cmdop machine-certificate v1",
            Self::EnrolmentAuthorization => "cmdop enrolment-authorization v1",
            Self::EnrolmentProof => "cmdop enrolment-proof v1",
            Self::MemberCertificate => "cmdop member-certificate v1",
            Self::RevocationList => "cmdop revocation-list v1",
        }
    }
}

/// The bytes actually signed: one length byte, the label, then the message. The length prefix makes the
/// encoding injective, so no (label, message) pair can collide with another even if one label were a prefix
/// of another.
pub(crate) fn framed(label: &str, message: &[u8]) -> Vec<u8> {
    let label = label.as_bytes();
    // Labels are short compile-time constants; the registry test checks they fit in one byte.
    let len = u8::try_from(label.len()).unwrap_or(u8::MAX);
    let mut out = Vec::with_capacity(1 + label.len() + message.len());
    out.push(len);
    out.extend_from_slice(label);
    out.extend_from_slice(message);
    out
}
