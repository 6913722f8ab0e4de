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
    /// The hostname (or the display name asked for) is another machine's display name (or hostname): the
    /// resolver would then send that machine's connections here.
    #[error(transparent)]
    NameClash(#[from] NameClash),
}

/// A name one machine would share with another across the two kinds of names: a hostname equal to another
/// machine's display name, or a display name equal to another machine's hostname. The resolver prefers exact
/// hostnames, so such a machine would take over connections meant for the other.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the {kind} {name:?} is the {other_kind} of machine {existing} in this fleet; a machine may not take another's name, so pick another {kind} (or rename the other machine)"
)]
pub struct NameClash {
    /// `hostname` or `display name`: the name being set.
    pub kind: &'static str,
    /// The name.
    pub name: String,
    /// The other machine's kind of name it equals.
    pub other_kind: &'static str,
    /// The machine that has it.
    pub existing: MachineId,
}

/// Why a rename was refused.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenameError {
    /// The access does not allow it, or the machine is not in the fleet.
    #[error(transparent)]
    Scope(#[from] ScopeError),
    /// The new display name is another machine's hostname.
    #[error(transparent)]
    NameClash(#[from] NameClash),
}

/// Refuses a hostname that is another machine's display name, and a display name that is another machine's
/// hostname (both compared ignoring case, as the resolver falls back to). `others` may hold `own` itself and
/// machines of other fleets; only other machines of `fleet` count.
fn check_names(
    fleet: FleetId,
    own: &PublicKey,
    hostname: Option<&Hostname>,
    display: Option<&DisplayName>,
    others: &[Machine],
) -> Result<(), NameClash> {
    for other in others
        .iter()
        .filter(|m| m.fleet == fleet && m.public_key != *own)
    {
        if let (Some(hostname), Some(name)) = (hostname, other.name.as_ref())
            && name.as_str().eq_ignore_ascii_case(hostname.as_str())
        {
            return Err(NameClash {
                kind: "hostname",
                name: hostname.to_string(),
                other_kind: "display name",
                existing: other.id,
            });
        }
        if let Some(display) = display
            && display
                .as_str()
                .eq_ignore_ascii_case(other.hostname.as_str())
        {
            return Err(NameClash {
                kind: "display name",
                name: display.to_string(),
                other_kind: "hostname",
                existing: other.id,
            });
        }
    }
    Ok(())
}

/// Decides a registration in the fleet of `access` (which must allow [`Permission::Enrol`]).
///
/// `machines` may hold machines of any fleet; only those of this fleet are considered.
/// - The same public key gets the same id back, with hostname, info, labels and (if given)
///   display name updated.
/// - A hostname held by another key's machine is a [`RegistrationError::HostnameTaken`]
///   conflict: hostnames are unique within a fleet, and silently taking over a hostname would
///   let one agent shadow another in the resolver.
/// - A hostname equal to another machine's display name, or a display name (asked for, or kept)
///   equal to another machine's hostname, is a [`RegistrationError::NameClash`] for the same
///   reason: the resolver prefers an exact hostname, so the newcomer would receive the other's
///   connections.
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
    // Only names that change are checked: a machine whose names clashed before this rule existed keeps
    // registering as it always did (an admin can rename it), rather than being locked out by an upgrade.
    let new_hostname = existing
        .is_none_or(|m| m.hostname != enrolment.hostname)
        .then_some(&enrolment.hostname);
    let new_name = enrolment
        .name
        .as_ref()
        .filter(|name| existing.is_none_or(|m| m.name.as_ref() != Some(*name)));
    check_names(
        fleet,
        &enrolment.public_key,
        new_hostname,
        new_name,
        machines,
    )?;
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
    Ok(Registration {
        machine: Machine {
            id: fresh_machine_id(machines, rng),
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

/// A new machine id that no machine in `machines` has. A collision of random 122-bit ids is
/// practically impossible, but a duplicate id would merge two machines, so it costs nothing to make
/// sure.
fn fresh_machine_id<R: CryptoRngCore + ?Sized>(machines: &[Machine], rng: &mut R) -> MachineId {
    loop {
        let id = MachineId::generate(rng);
        if !machines.iter().any(|m| m.id == id) {
            return id;
        }
    }
}

/// Renames `machine` (`access` must allow [`Permission::Manage`] in the machine's fleet).
/// Display names need not be unique (the resolver reports a clash as ambiguous), but one may not
/// be another machine's hostname: `others` are the fleet's machines (`machine` itself may be
/// among them).
pub fn rename(
    access: &FleetAccess,
    machine: &mut Machine,
    name: DisplayName,
    others: &[Machine],
) -> Result<(), RenameError> {
    access.require(Permission::Manage)?;
    if machine.fleet != access.fleet_id() {
        // Same answer as for a machine that does not exist: other fleets are invisible.
        return Err(ScopeError::NoSuchMachine { id: machine.id }.into());
    }
    check_names(
        machine.fleet,
        &machine.public_key,
        None,
        Some(&name),
        others,
    )?;
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
