//! Fleets, credentials and their scope, machine records and the machine-name resolver.
//!
//! Pure logic: no IO, no clock, no async; time comes in as a [`Timestamp`] and randomness
//! through a `&mut impl CryptoRngCore`. The relay stores what this crate produces and calls it
//! to decide; the model is described in `docs/fleet.md`.
//!
//! ```text
//!  "cmdop_ak_…"  ──CredentialSecret::parse──▶ CredentialSecret
//!                                                 │ CredentialRecord::authenticate(now)
//!                                                 ▼
//!                                           Authenticated ──select_fleet / fleet_access──▶ FleetAccess
//!                                                                                            │
//!                         resolve · list_machines · register · rename  ◀────────────────────┘
//!
//!  Capability ──sign(trust key)──▶ SignedCapability ──to_bytes/from_bytes──▶ agent: verify(now)
//!
//!  lock: admin keys ──sign──▶ FleetAuthority chain, machine and member certificates, revocation lists
//!        (verified by agents and clients against the fleet key they pinned; `docs/fleet.md`)
//! ```

mod capability;
mod credential;
mod fleet;
mod id;
pub mod lock;
mod machine;
mod machine_label;
mod name;
mod resolve;
mod role;
mod scope;
mod time;

#[cfg(test)]
mod tests;

pub use capability::{
    Capability, CapabilityError, Expected, Operation, OperationSet, SignedCapability, Target,
};
pub use credential::{
    ApiKey, ApiKeySpec, CredentialHash, CredentialKind, CredentialParseError, CredentialRecord,
    CredentialSecret, IssueError, UserToken, UserTokenSpec,
};
pub use fleet::{Fleet, User};
pub use id::{CredentialId, FleetId, IdError, MachineId, UserId, is_uuid_shaped};
pub use machine::{
    AgentInfo, Enrolment, MISSED_HEARTBEATS_OFFLINE, Machine, NameClash, Registration,
    RegistrationError, RenameError, list_machines, register, rename,
};
pub use machine_label::{LabelError, MAX_LABELS, MachineLabels, parse_pair as parse_label};
pub use name::{DisplayName, FleetName, Hostname, Label, NameError, UserName};
pub use resolve::{Candidate, MIN_PREFIX_CHARS, ResolveError, resolve};
pub use role::{Permission, Role, RoleParseError};
pub use scope::{AuthError, Authenticated, FleetAccess, ScopeError, authenticate};
pub use time::Timestamp;
