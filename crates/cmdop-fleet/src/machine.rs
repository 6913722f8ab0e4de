//! Machine records and the pure decisions about them: registration, renaming, presence.
//!
//! A machine is bound to (fleet, agent public key). The same key coming back is the same
//! machine, whatever its hostname or display name now; a different key is a different machine.

use cmdop_identity::{Fingerprint, PublicKey};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};

use crate::id::{FleetId, MachineId};
use crate::machine_label::MachineLabels;
use crate::name::{DisplayName, Hostname, NameError};
use crate::role::Permission;
use crate::scope::{FleetAccess, ScopeError};
use crate::time::Timestamp;

/// Heartbeats a machine may miss before it counts as offline.
pub const MISSED_HEARTBEATS_OFFLINE: u64 = 3;

/// A machine enrolled in a fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Server-issued, permanent.
    pub id: MachineId,
    /// The fleet it belongs to.
    pub fleet: FleetId,
    /// The agent's identity; the machine is bound to it.
    pub public_key: PublicKey,
    /// The hostname the agent reported, unique within the fleet.
    pub hostname: Hostname,
    /// The display name if one was set; otherwise the hostname is shown.
    pub name: Option<DisplayName>,
    /// What the agent reported about itself.
    pub info: AgentInfo,
    /// The labels the agent last reported (`--label role=web`).
    #[serde(default)]
    pub labels: MachineLabels,
    /// Whether the agent is connected (as the relay last saw it).
    pub online: bool,
    /// When the last heartbeat (or registration) arrived.
    pub last_heartbeat: Option<Timestamp>,
    /// When the machine was first registered.
    pub registered: Timestamp,
}

impl Machine {
    /// The name to show: the display name, or the hostname when none was set.
    pub fn display_name(&self) -> &str {
        self.name
            .as_ref()
            .map_or(self.hostname.as_str(), DisplayName::as_str)
    }

    /// The fingerprint of the agent's key, as people compare it.
    pub fn fingerprint(&self) -> Fingerprint {
        self.public_key.fingerprint()
    }

    /// Whether the machine still counts as online at `now`, given the heartbeat interval:
    /// it must be marked online and have missed fewer than
    /// [`MISSED_HEARTBEATS_OFFLINE`] heartbeats.
    pub fn is_online_at(&self, now: Timestamp, heartbeat_interval_secs: u64) -> bool {
        let window = heartbeat_interval_secs.saturating_mul(MISSED_HEARTBEATS_OFFLINE);
        self.online
            && self
                .last_heartbeat
                .is_some_and(|at| now.seconds_since(at) < window)
    }
}

/// What the agent reports about itself: OS, architecture and agent version, each 1 to 64
/// printable characters (they come from the agent and are shown to people, so they are bounded
/// and free of control characters).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AgentInfoFields", into = "AgentInfoFields")]
pub struct AgentInfo {
    os: String,
    arch: String,
    version: String,
}

#[derive(Serialize, Deserialize)]
struct AgentInfoFields {
    os: String,
    arch: String,
    version: String,
}

impl AgentInfo {
    /// Validates the three fields.
    pub fn new(os: &str, arch: &str, version: &str) -> Result<Self, NameError> {
        Ok(Self {
            os: check_info("os", os)?,
            arch: check_info("arch", arch)?,
            version: check_info("agent version", version)?,
        })
    }

    /// The operating system, e.g. `linux`.
    pub fn os(&self) -> &str {
        &self.os
    }

    /// The CPU architecture, e.g. `x86_64`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The agent's version.
    pub fn version(&self) -> &str {
        &self.version
    }
}

impl TryFrom<AgentInfoFields> for AgentInfo {
    type Error = NameError;

    fn try_from(fields: AgentInfoFields) -> Result<Self, NameError> {
        Self::new(&fields.os, &fields.arch, &fields.version)
    }
}

impl From<AgentInfo> for AgentInfoFields {
    fn from(info: AgentInfo) -> Self {
        Self {
            os: info.os,
            arch: info.arch,
            version: info.version,
        }
    }
}

fn check_info(kind: &'static str, text: &str) -> Result<String, NameError> {
    let len = text.chars().count();
    if len == 0 {
        return Err(NameError::Empty { kind });
    }
    if len > 64 {
        return Err(NameError::TooLong { kind, len, max: 64 });
    }
    if let Some(found) = text.chars().find(|c| c.is_control()) {
        return Err(NameError::BadCharacter {
            kind,
            found,
            allowed: "printable characters",
        });
    }
    Ok(text.to_owned())
}

/// What an agent presents when it registers. The key must be the one it proved possession of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolment {
    /// The agent's verified public key.
    pub public_key: PublicKey,
    /// Its hostname.
    pub hostname: Hostname,
    /// A display name it asks for (`--name`); `None` keeps the current one.
    pub name: Option<DisplayName>,
    /// OS, architecture, version.
    pub info: AgentInfo,
    /// Its labels; they replace the ones stored, so a label the agent no longer reports goes away.
    pub labels: MachineLabels,
}

/// The outcome of a successful registration: the record to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The machine as it now is, marked online with a heartbeat at the registration time.
    pub machine: Machine,
    /// Whether a new machine id was issued (false: a known key came back).
    pub is_new: bool,
}

/// Why a registration was refused.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// The credential may not enrol machines in this fleet.
    #[error(transparent)]
    Scope(#[from] ScopeError),
    /// Another machine (another key) in the fleet already has this hostname.
    #[error(
        "hostname {hostname} is already used by machine {existing} in this fleet; start the agent with a different --hostname, or remove the old machine"
    )]
    HostnameTaken {
        /// The contested hostname.
        hostname: Hostname,
        /// The machine that holds it.
        existing: MachineId,
    },
}

/// Decides a registration in the fleet of `access` (which must allow [`Permission::Enrol`]).
///
/// `machines` may hold machines of any fleet; only those of this fleet are considered.
/// - The same public key gets the same id back, with hostname, info, labels and (if given)
///   display name updated.
/// - A hostname held by another key's machine is a [`RegistrationError::HostnameTaken`]
///   conflict: hostnames are unique within a fleet, and silently taking over a hostname would
///   let one agent shadow another in the resolver.
/// - A new key gets a fresh id from `rng`.
pub fn register<R: CryptoRngCore + ?Sized>(
    access: &FleetAccess,
    machines: &[Machine],
    enrolment: Enrolment,
    now: Timestamp,
    rng: &mut R,
) -> Result<Registration, RegistrationError> {
    access.require(Permission::Enrol)?;
    let fleet = access.fleet_id();
    let mut ours = machines.iter().filter(|m| m.fleet == fleet);
    let existing = ours.clone().find(|m| m.public_key == enrolment.public_key);
    if let Some(holder) =
        ours.find(|m| m.hostname == enrolment.hostname && m.public_key != enrolment.public_key)
    {
        return Err(RegistrationError::HostnameTaken {
            hostname: enrolment.hostname,
            existing: holder.id,
        });
    }
    let Enrolment {
        public_key,
        hostname,
        name,
        info,
        labels,
    } = enrolment;
    if let Some(previous) = existing {
        let machine = Machine {
            hostname,
            name: name.or_else(|| previous.name.clone()),
            info,
            labels,
            online: true,
            last_heartbeat: Some(now),
            ..previous.clone()
        };
        return Ok(Registration {
            machine,
            is_new: false,
        });
    }
    let id = loop {
        // A collision of random 122-bit ids is practically impossible, but a duplicate id
        // would merge two machines, so it costs nothing to make sure.
        let id = MachineId::generate(rng);
        if !machines.iter().any(|m| m.id == id) {
            break id;
        }
    };
    Ok(Registration {
        machine: Machine {
            id,
            fleet,
            public_key,
            hostname,
            name,
            info,
            labels,
            online: true,
            last_heartbeat: Some(now),
            registered: now,
        },
        is_new: true,
    })
}

/// Renames `machine` (`access` must allow [`Permission::Manage`] in the machine's fleet).
/// Display names need not be unique; the resolver reports a clash as ambiguous.
pub fn rename(
    access: &FleetAccess,
    machine: &mut Machine,
    name: DisplayName,
) -> Result<(), ScopeError> {
    access.require(Permission::Manage)?;
    if machine.fleet != access.fleet_id() {
        // Same answer as for a machine that does not exist: other fleets are invisible.
        return Err(ScopeError::NoSuchMachine { id: machine.id });
    }
    machine.name = Some(name);
    Ok(())
}

/// The machines of the fleet of `access` (which must allow [`Permission::List`]), in the
/// order given.
pub fn list_machines<'m>(
    access: &FleetAccess,
    machines: &'m [Machine],
) -> Result<impl Iterator<Item = &'m Machine> + use<'m>, ScopeError> {
    access.require(Permission::List)?;
    let fleet = access.fleet_id();
    Ok(machines.iter().filter(move |m| m.fleet == fleet))
}
