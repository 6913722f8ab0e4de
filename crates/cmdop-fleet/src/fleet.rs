//! Fleets and users: the tenants machines belong to and the people who hold tokens.

use serde::{Deserialize, Serialize};

use crate::id::{FleetId, UserId};
use crate::name::{FleetName, UserName};

/// A fleet: a set of machines that never sees any other fleet.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fleet {
    /// Its permanent id.
    pub id: FleetId,
    /// Its unique human name, the `--workspace` value.
    pub name: FleetName,
}

/// A person (or robot account) who holds user tokens spanning several fleets.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct User {
    /// Its permanent id.
    pub id: UserId,
    /// Its unique name.
    pub name: UserName,
}
