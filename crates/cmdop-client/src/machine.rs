//! Machines as the relay reports them to a client: in a listing, as the target of a routed stream, and as the
//! candidates of a name that matched several.

use std::fmt;

use cmdop_identity::PublicKey;
use cmdop_proto::display::escaped;
use cmdop_proto::wire::{self, MachineInfo};
use uuid::Uuid;

/// A machine as listed by the relay. Its strings come from the relay (and the agent) and are escaped for
/// display ([`cmdop_proto::display`]): a hostile one cannot send a terminal escape through them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Server-issued id.
    pub id: Uuid,
    /// Hostname.
    pub hostname: String,
    /// Display name.
    pub name: String,
    /// The agent's public key (`None` if the relay sent an invalid one).
    pub public_key: Option<PublicKey>,
    /// Whether the machine is online.
    pub online: bool,
    /// Last heartbeat or login, unix seconds.
    pub last_seen: Option<u64>,
    /// Operating system.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// Agent version.
    pub agent_version: String,
    /// The labels the agent reported, (key, value) in key order (as the relay checked them).
    pub labels: Vec<(String, String)>,
}

impl Machine {
    /// Whether the machine carries every one of `wanted` with the same value.
    pub fn has_labels(&self, wanted: &[(String, String)]) -> bool {
        wanted.iter().all(|pair| self.labels.contains(pair))
    }
}

impl From<MachineInfo> for Machine {
    fn from(info: MachineInfo) -> Self {
        Self {
            id: Uuid::from_bytes(info.id.0),
            hostname: escaped(&info.hostname),
            name: escaped(&info.name),
            public_key: PublicKey::from_bytes(&info.public_key.0).ok(),
            online: info.online,
            last_seen: info.last_seen,
            os: escaped(&info.os),
            arch: escaped(&info.arch),
            agent_version: escaped(&info.agent_version),
            labels: info
                .labels
                .iter()
                .map(|(key, value)| (escaped(key), escaped(value)))
                .collect(),
        }
    }
}

/// One of the machines a name matched when it matched several ([`crate::ClientError::Ambiguous`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The machine's id: always reaches exactly this machine.
    pub id: Uuid,
    /// Its hostname.
    pub hostname: String,
    /// Its display name (the hostname if none was set).
    pub name: String,
}

impl From<wire::Candidate> for Candidate {
    fn from(candidate: wire::Candidate) -> Self {
        Self {
            id: Uuid::from_bytes(candidate.id.0),
            hostname: escaped(&candidate.hostname),
            name: escaped(&candidate.name),
        }
    }
}

impl fmt::Display for Candidate {
    /// `name (hostname, id)`, as the relay's message lists it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {})", self.name, self.hostname, self.id)
    }
}
