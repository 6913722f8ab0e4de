//! Authentication and scope: from a presented secret to an [`Authenticated`] principal, and
//! from that to a [`FleetAccess`] proof for one fleet.
//!
//! ```text
//! CredentialSecret ──CredentialRecord::authenticate(now)──▶ Authenticated
//!                                                              │ select_fleet / fleet_access
//!                                                              ▼
//!                                     FleetAccess ──▶ resolve, list_machines, register, rename
//! ```
//!
//! Neither [`Authenticated`] nor [`FleetAccess`] has a public constructor, so a handler that
//! holds one has been through the checks. A fleet the credential does not cover and a fleet
//! that does not exist produce the same [`ScopeError::NoSuchFleet`].

use std::collections::BTreeSet;

use crate::credential::{CredentialKind, CredentialRecord, CredentialSecret};
use crate::fleet::Fleet;
use crate::id::{CredentialId, FleetId, MachineId, UserId};
use crate::name::FleetName;
use crate::role::{Permission, Role};
use crate::time::Timestamp;

/// Why a presented credential was refused.
///
/// The variants (and `Display`) are for the audit log. The peer is told only
/// [`peer_message`](Self::peer_message), the same text whatever the reason, so a caller cannot
/// probe which ids exist or which keys were revoked.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential of that kind has that id.
    #[error("unknown credential id {id}")]
    UnknownCredential {
        /// The id the caller presented.
        id: CredentialId,
    },
    /// The id exists but the secret does not match its hash.
    #[error("wrong secret for credential {id}")]
    BadSecret {
        /// The credential's id.
        id: CredentialId,
    },
    /// The credential was revoked.
    #[error("credential {id} was revoked at {at}", at = at.as_unix_seconds())]
    Revoked {
        /// The credential's id.
        id: CredentialId,
        /// When it was revoked.
        at: Timestamp,
    },
    /// The credential expired.
    #[error("credential {id} expired at {at}", at = at.as_unix_seconds())]
    Expired {
        /// The credential's id.
        id: CredentialId,
        /// When it expired.
        at: Timestamp,
    },
}

impl AuthError {
    /// The only text to send to the peer, identical for every reason.
    pub const fn peer_message(&self) -> &'static str {
        "authentication failed: the credential is unknown, revoked or expired; ask a fleet admin for a new one"
    }

    /// The credential id involved, for the audit log.
    pub const fn credential_id(&self) -> CredentialId {
        match self {
            Self::UnknownCredential { id }
            | Self::BadSecret { id }
            | Self::Revoked { id, .. }
            | Self::Expired { id, .. } => *id,
        }
    }
}

/// Authenticates `presented` against whatever the store found under its id (`None` if
/// nothing), at `now`.
pub fn authenticate(
    presented: &CredentialSecret,
    found: Option<&CredentialRecord>,
    now: Timestamp,
) -> Result<Authenticated, AuthError> {
    match found {
        Some(record) => record.authenticate(presented, now),
        None => Err(AuthError::UnknownCredential { id: presented.id() }),
    }
}

impl CredentialRecord {
    /// Checks `presented` against this record at `now`: same kind and id, matching hash
    /// (constant time), not revoked, not expired (a credential is expired from its expiry
    /// second on). The secret is checked first, so only its holder learns anything else.
    pub fn authenticate(
        &self,
        presented: &CredentialSecret,
        now: Timestamp,
    ) -> Result<Authenticated, AuthError> {
        let id = presented.id();
        if presented.kind() != self.kind() || id != self.id() {
            return Err(AuthError::UnknownCredential { id });
        }
        if !self.hash().verify(presented) {
            return Err(AuthError::BadSecret { id });
        }
        self.standing(now)?;
        let subject = match self {
            Self::ApiKey(key) => Subject::Fleet {
                fleet: key.fleet,
                role: key.role,
            },
            Self::UserToken(token) => Subject::User {
                user: token.user,
                fleets: token.fleets.clone(),
            },
        };
        Ok(Authenticated {
            credential: id,
            expires: self.expires(),
            subject,
        })
    }

    /// Whether the credential may still be used at `now`: not revoked, not expired. A relay
    /// re-checks this for live connections (the secret is long gone by then) and closes those
    /// whose credential no longer stands.
    pub fn standing(&self, now: Timestamp) -> Result<(), AuthError> {
        let id = self.id();
        if let Some(at) = self.revoked() {
            return Err(AuthError::Revoked { id, at });
        }
        if let Some(at) = self.expires().filter(|at| now >= *at) {
            return Err(AuthError::Expired { id, at });
        }
        Ok(())
    }

    /// Records a successful use at `now` (for `key list`'s last-used column).
    pub fn mark_used(&mut self, now: Timestamp) {
        match self {
            Self::ApiKey(key) => key.last_used = Some(now),
            Self::UserToken(token) => token.last_used = Some(now),
        }
    }
}

/// A credential that has just been verified. Only [`CredentialRecord::authenticate`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    credential: CredentialId,
    expires: Option<Timestamp>,
    subject: Subject,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Subject {
    Fleet {
        fleet: FleetId,
        role: Role,
    },
    User {
        user: UserId,
        fleets: BTreeSet<FleetId>,
    },
}

impl Authenticated {
    /// The credential that was verified (to log, and to cut connections on revocation).
    pub fn credential_id(&self) -> CredentialId {
        self.credential
    }

    /// The kind of credential.
    pub fn kind(&self) -> CredentialKind {
        match self.subject {
            Subject::Fleet { .. } => CredentialKind::ApiKey,
            Subject::User { .. } => CredentialKind::UserToken,
        }
    }

    /// The user, for a user token.
    pub fn user(&self) -> Option<UserId> {
        match self.subject {
            Subject::Fleet { .. } => None,
            Subject::User { user, .. } => Some(user),
        }
    }

    /// When the credential expires; a long-lived connection must end then.
    pub fn expires(&self) -> Option<Timestamp> {
        self.expires
    }

    /// Whether the credential has expired at `now`.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires.is_some_and(|at| now >= at)
    }

    /// The role this credential has in `fleet`, or `None` if it does not cover it.
    pub fn role_in(&self, fleet: FleetId) -> Option<Role> {
        match &self.subject {
            Subject::Fleet { fleet: own, role } => (*own == fleet).then_some(*role),
            Subject::User { fleets, .. } => fleets.contains(&fleet).then_some(Role::Member),
        }
    }

    /// The ids of the fleets this credential covers.
    pub fn fleet_ids(&self) -> Vec<FleetId> {
        match &self.subject {
            Subject::Fleet { fleet, .. } => vec![*fleet],
            Subject::User { fleets, .. } => fleets.iter().copied().collect(),
        }
    }

    /// Proof that this credential may do `need` in `fleet`.
    pub fn fleet_access(&self, fleet: &Fleet, need: Permission) -> Result<FleetAccess, ScopeError> {
        let Some(role) = self.role_in(fleet.id) else {
            return Err(ScopeError::NoSuchFleet {
                name: fleet.name.clone(),
            });
        };
        if !role.allows(need) {
            return Err(ScopeError::NotPermitted { role, need });
        }
        Ok(FleetAccess {
            fleet: fleet.clone(),
            credential: self.credential,
            role,
        })
    }

    /// Picks the fleet to act in from all existing `fleets`, following `--workspace`.
    ///
    /// With a name, the fleet of that name if this credential covers it; otherwise
    /// [`ScopeError::NoSuchFleet`], whether it exists or not. Without a name, the one fleet in
    /// scope, or [`ScopeError::WorkspaceRequired`] listing them when there are several.
    pub fn select_fleet<'f>(
        &self,
        workspace: Option<&FleetName>,
        fleets: &'f [Fleet],
    ) -> Result<&'f Fleet, ScopeError> {
        let mut in_scope = fleets.iter().filter(|f| self.role_in(f.id).is_some());
        if let Some(name) = workspace {
            return in_scope
                .find(|f| f.name == *name)
                .ok_or_else(|| ScopeError::NoSuchFleet { name: name.clone() });
        }
        let first = in_scope.next().ok_or(ScopeError::NoFleet)?;
        let rest: Vec<&Fleet> = in_scope.collect();
        if rest.is_empty() {
            return Ok(first);
        }
        let mut available: Vec<FleetName> = std::iter::once(first)
            .chain(rest)
            .map(|f| f.name.clone())
            .collect();
        available.sort();
        Err(ScopeError::WorkspaceRequired { available })
    }

    /// [`select_fleet`](Self::select_fleet) then [`fleet_access`](Self::fleet_access).
    pub fn workspace_access(
        &self,
        workspace: Option<&FleetName>,
        fleets: &[Fleet],
        need: Permission,
    ) -> Result<FleetAccess, ScopeError> {
        let fleet = self.select_fleet(workspace, fleets)?;
        self.fleet_access(fleet, need)
    }
}

/// Proof that an authenticated credential may act in one fleet with a given role.
///
/// Every fleet-scoped operation takes `&FleetAccess`; there is no other way to make one than
/// [`Authenticated::fleet_access`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetAccess {
    fleet: Fleet,
    credential: CredentialId,
    role: Role,
}

impl FleetAccess {
    /// The access of the relay's operator, who runs `cmdop-relay`'s admin verbs on the data directory: the
    /// admin role in `fleet` for `credential`-less local administration. Whoever can open `relay.db` holds
    /// every fleet's records anyway; this names that authority instead of faking a credential. Peers never
    /// get one: their access comes only from [`Authenticated::fleet_access`].
    pub fn relay_operator(fleet: &Fleet) -> Self {
        Self {
            fleet: fleet.clone(),
            credential: CredentialId::from_bytes([0; 16]),
            role: Role::Admin,
        }
    }

    /// The fleet this access is for.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The fleet's id.
    pub fn fleet_id(&self) -> FleetId {
        self.fleet.id
    }

    /// The credential behind this access.
    pub fn credential_id(&self) -> CredentialId {
        self.credential
    }

    /// The role held in this fleet.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether this access also allows `permission`.
    pub fn allows(&self, permission: Permission) -> bool {
        self.role.allows(permission)
    }

    /// `Ok` if this access allows `permission`, the refusal otherwise.
    pub fn require(&self, permission: Permission) -> Result<(), ScopeError> {
        if self.allows(permission) {
            Ok(())
        } else {
            Err(ScopeError::NotPermitted {
                role: self.role,
                need: permission,
            })
        }
    }
}

/// Why a credential may not act in a fleet. Safe to show to the peer.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// The fleet does not exist or the credential does not cover it (deliberately the same).
    #[error(
        "no fleet named {name} is available to this credential; check --workspace (`cmdop status` lists yours)"
    )]
    NoSuchFleet {
        /// The name asked for.
        name: FleetName,
    },
    /// Several fleets are in scope and none was chosen.
    #[error("this credential reaches several fleets ({}); choose one with --workspace", list(.available))]
    WorkspaceRequired {
        /// The fleets in scope, sorted by name.
        available: Vec<FleetName>,
    },
    /// The machine is not in this fleet (whether it exists elsewhere or not).
    #[error("no machine {id} in this fleet; `cmdop connect --list` shows its machines")]
    NoSuchMachine {
        /// The machine asked for.
        id: MachineId,
    },
    /// The credential covers no existing fleet.
    #[error("this credential reaches no fleet; ask a fleet admin to add one")]
    NoFleet,
    /// The role does not grant what was asked.
    #[error("a credential with the {role} role may not {need}; use one whose role allows it")]
    NotPermitted {
        /// The role held.
        role: Role,
        /// What was needed.
        need: Permission,
    },
}

fn list(names: &[FleetName]) -> String {
    names
        .iter()
        .map(FleetName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
