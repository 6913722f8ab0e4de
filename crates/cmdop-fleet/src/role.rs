//! Roles and permissions: what an API key may do in its fleet, and the permissions a fleet-scoped handler
//! asks for. Both credentials (which carry a role) and scope (which checks it) build on this.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What an API key may do in its fleet. User tokens act as [`Role::Member`].
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Only enrols machines (the key an agent runs with).
    Agent,
    /// Lists and reaches machines.
    Member,
    /// Everything a member can, plus enrolling and managing the fleet's machines.
    Admin,
}

impl Role {
    /// Whether this role grants `permission`.
    pub const fn allows(self, permission: Permission) -> bool {
        matches!(
            (self, permission),
            (Self::Admin, _)
                | (Self::Member, Permission::List | Permission::Reach)
                | (Self::Agent, Permission::Enrol)
        )
    }

    /// The text form (`agent`, `member`, `admin`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Member => "member",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of ours.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("role must be agent, member or admin, not {0:?}")]
pub struct RoleParseError(String);

impl FromStr for Role {
    type Err = RoleParseError;

    fn from_str(text: &str) -> Result<Self, RoleParseError> {
        match text {
            "agent" => Ok(Self::Agent),
            "member" => Ok(Self::Member),
            "admin" => Ok(Self::Admin),
            other => Err(RoleParseError(other.chars().take(32).collect())),
        }
    }
}

/// Something a fleet-scoped handler needs permission for.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Register (enrol) a machine: the agent's login.
    Enrol,
    /// List the fleet's machines and resolve their names.
    List,
    /// Open a stream to a machine (exec, shell, forward, copy).
    Reach,
    /// Rename machines and other fleet administration.
    Manage,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Enrol => "enrol machines",
            Self::List => "list machines",
            Self::Reach => "reach machines",
            Self::Manage => "manage the fleet",
        })
    }
}
