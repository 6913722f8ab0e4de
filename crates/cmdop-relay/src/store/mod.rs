//! The relay's embedded store: one SQLite file, `<data-dir>/relay.db`, shared by the server and the admin verbs.
//!
//! Everything persistent lives here: fleets (with their trust-key seed), users, hashed credentials, machines and
//! the append-only audit log. All timestamps are unix seconds and are passed in by the caller, so tests control
//! time. The admin verbs run in another process than the server; SQLite's WAL mode and `busy_timeout` let both
//! write safely, and [`Store::data_version`] lets the server notice their changes cheaply.

mod schema;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cmdop_fleet::{AuthError, Role as FleetRole, Timestamp};
use rand_core::{OsRng, RngCore};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use uuid::Uuid;

// Credential texts and hashes are cmdop-fleet's (format and hashing specified in docs/fleet.md).
pub use cmdop_fleet::{
    CredentialHash, CredentialId, CredentialKind, CredentialParseError, CredentialSecret,
};

/// The database file name inside the data dir.
pub const DB_FILE: &str = "relay.db";

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the store.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data dir or database file could not be created or secured.
    #[error(
        "cannot prepare data dir {path}: {source}; check that the path is writable by this user"
    )]
    DataDir {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("relay database error: {0}; check disk space and that relay.db is not corrupted")]
    Sql(#[from] rusqlite::Error),
    /// The database was written by a newer relay.
    #[error(
        "relay.db has schema version {found}, newer than this relay understands ({supported}); upgrade cmdop-relay"
    )]
    SchemaTooNew {
        /// Version found in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// A fleet name is already taken.
    #[error("a fleet named {0:?} already exists; pick another name")]
    FleetExists(String),
    /// A user name is already taken.
    #[error("a user named {0:?} already exists; pick another name")]
    UserExists(String),
    /// No fleet has that name.
    #[error("no fleet named {0:?}; see `cmdop-relay fleet list`")]
    UnknownFleet(String),
    /// No user has that name.
    #[error("no user named {0:?}; create it with `cmdop-relay user create`")]
    UnknownUser(String),
    /// No credential has that id.
    #[error("no credential with id {0:?}; see `cmdop-relay key list`")]
    UnknownCredential(String),
    /// No machine has that id.
    #[error("no machine with id {0:?}; see `cmdop-relay machines list`")]
    UnknownMachine(String),
    /// A name is empty, too long or contains characters outside `[A-Za-z0-9._-]`.
    #[error("invalid name {0:?}: use 1-64 characters from A-Z a-z 0-9 . _ -")]
    InvalidName(String),
    /// Another machine of the fleet already uses that hostname.
    #[error(
        "hostname {0:?} is already used by another machine of this fleet; rename or remove the old machine"
    )]
    HostnameTaken(String),
    /// A user token needs at least one fleet.
    #[error("a user token needs at least one --fleet")]
    NoFleets,
}

/// A fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetRecord {
    /// Server-issued id.
    pub id: Uuid,
    /// Unique human name (the `--workspace` value).
    pub name: String,
    /// Creation time.
    pub created_at: u64,
}

/// The role of an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Enrols machines.
    Agent,
    /// Uses machines.
    Member,
    /// Uses and administers machines.
    Admin,
}

impl KeyRole {
    /// The stored and displayed form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Member => "member",
            Self::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "agent" => Some(Self::Agent),
            "member" => Some(Self::Member),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// A credential's metadata (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialRecord {
    /// Public id (a UUID, also embedded in the credential text).
    pub id: String,
    /// API key or user token.
    #[serde(serialize_with = "serialize_kind")]
    pub kind: CredentialKind,
    /// Role, for API keys.
    pub role: Option<KeyRole>,
    /// Owner, for user tokens.
    pub user: Option<String>,
    /// Fleet names in scope.
    pub fleets: Vec<String>,
    /// Free-form label.
    pub label: Option<String>,
    /// Creation time.
    pub created_at: u64,
    /// Expiry, if any.
    pub expires_at: Option<u64>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<u64>,
    /// Last successful authentication.
    pub last_used_at: Option<u64>,
}

/// The table holding credentials of `kind`.
fn credential_table(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::UserToken => "user_tokens",
        // cmdop-fleet may add kinds; until the store knows them, they are looked up nowhere else.
        _ => "api_keys",
    }
}

fn serialize_kind<S: serde::Serializer>(kind: &CredentialKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match kind {
        CredentialKind::UserToken => "user_token",
        _ => "api_key",
    })
}

/// A machine record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineRecord {
    /// Server-issued id, stable for (fleet, public key).
    pub id: Uuid,
    /// The fleet's id.
    pub fleet_id: Uuid,
    /// The fleet's name.
    pub fleet: String,
    /// The agent's Ed25519 public key.
    #[serde(serialize_with = "serialize_hex")]
    pub public_key: [u8; 32],
    /// Hostname (unique within the fleet).
    pub hostname: String,
    /// Display name.
    pub name: String,
    /// Operating system.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// Agent version.
    pub agent_version: String,
    /// Whether the machine is connected and heartbeating.
    pub online: bool,
    /// Last heartbeat or login.
    pub last_seen: Option<u64>,
    /// First registration.
    pub created_at: u64,
}

fn serialize_hex<S: serde::Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// What an agent reports about itself at registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineReport {
    /// Hostname.
    pub hostname: String,
    /// Display name; the hostname when `None`.
    pub display_name: Option<String>,
    /// Operating system.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// Agent version.
    pub agent_version: String,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Position in the log (strictly increasing).
    pub seq: i64,
    /// Time of the event.
    pub at: u64,
    /// Fleet concerned, if any.
    pub fleet: Option<String>,
    /// Who acted: `admin`, `api_key:<id>`, `user_token:<id>`, `peer:<addr>`.
    pub actor: String,
    /// What happened: `auth`, `register`, `rename`, `revoke`, `fleet.create`, …
    pub action: String,
    /// `accepted`, `refused` or `done`.
    pub outcome: String,
    /// Details, including the refusal reason.
    pub detail: String,
}

/// An entry to append to the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry<'a> {
    /// Time of the event.
    pub at: u64,
    /// Fleet concerned, if any.
    pub fleet_id: Option<Uuid>,
    /// Who acted.
    pub actor: &'a str,
    /// What happened.
    pub action: &'a str,
    /// `accepted`, `refused` or `done`.
    pub outcome: &'a str,
    /// Details.
    pub detail: &'a str,
}

/// Why a credential was refused. The peer only ever sees "authentication failed"; the reason goes to the audit log.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    /// The text is not a credential.
    #[error("malformed credential")]
    Malformed,
    /// No credential has that id.
    #[error("unknown credential id")]
    Unknown,
    /// The secret does not match.
    #[error("wrong secret")]
    WrongSecret,
    /// The credential was revoked.
    #[error("credential revoked")]
    Revoked,
    /// The credential expired.
    #[error("credential expired")]
    Expired,
}

/// An authenticated credential and what it may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Kind of credential.
    pub kind: CredentialKind,
    /// Credential id.
    pub credential_id: String,
    /// Role, for API keys.
    pub role: Option<KeyRole>,
    /// The user, for tokens.
    pub user: Option<String>,
    /// Expiry, if any.
    pub expires_at: Option<u64>,
    fleets: Vec<FleetRecord>,
    /// cmdop-fleet's proof that the credential verified; fleet-scoped decisions (routing) go through it.
    authenticated: cmdop_fleet::Authenticated,
}

/// Proof that an authenticated principal may reach one fleet. Only [`Principal::fleet_access`] builds it, and
/// every fleet-scoped store read takes one, so a handler cannot reach a fleet the credential does not cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetAccess {
    fleet: FleetRecord,
}

/// Why a principal cannot reach a fleet.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// The fleet does not exist or is not in scope; the two are indistinguishable on purpose.
    #[error("fleet {0:?} not found; check --workspace")]
    NotFound(String),
    /// Several fleets are in scope and none was named.
    #[error("several fleets are in scope ({}); choose one with --workspace", .0.join(", "))]
    WorkspaceRequired(Vec<String>),
}

impl Principal {
    /// The actor string for the audit log: `api_key:<id>` or `user_token:<id>`.
    pub fn actor(&self) -> String {
        match self.kind {
            CredentialKind::UserToken => format!("user_token:{}", self.credential_id),
            _ => format!("api_key:{}", self.credential_id),
        }
    }

    /// A short human description, e.g. `user alice` or `api key 8f23a4b0-1c2d-4e5f-8a9b-0c1d2e3f4a5b (member)`.
    pub fn description(&self) -> String {
        match (&self.user, self.role) {
            (Some(user), _) => format!("user {user}"),
            (None, Some(role)) => format!("api key {} ({})", self.credential_id, role.as_str()),
            (None, None) => format!("credential {}", self.credential_id),
        }
    }

    /// Names of the fleets in scope.
    pub fn fleet_names(&self) -> Vec<String> {
        self.fleets.iter().map(|f| f.name.clone()).collect()
    }

    /// Selects a fleet: the named one if in scope, or the only one when no name is given.
    pub fn fleet_access(&self, workspace: Option<&str>) -> Result<FleetAccess, ScopeError> {
        match workspace {
            Some(name) => self
                .fleets
                .iter()
                .find(|f| f.name == name)
                .map(|fleet| FleetAccess {
                    fleet: fleet.clone(),
                })
                .ok_or_else(|| ScopeError::NotFound(name.to_owned())),
            None => match self.fleets.as_slice() {
                [only] => Ok(FleetAccess {
                    fleet: only.clone(),
                }),
                [] => Err(ScopeError::NotFound(String::new())),
                _ => Err(ScopeError::WorkspaceRequired(self.fleet_names())),
            },
        }
    }
}

impl Principal {
    /// cmdop-fleet's access to the fleet of `access` with permission `need`: the role check, and the only key
    /// to cmdop-fleet's resolver and capability grants.
    pub fn fleet_permission(
        &self,
        access: &FleetAccess,
        need: cmdop_fleet::Permission,
    ) -> Result<cmdop_fleet::FleetAccess, cmdop_fleet::ScopeError> {
        let fleet = cmdop_fleet::Fleet {
            id: cmdop_fleet::FleetId::from_bytes(access.fleet.id.into_bytes()),
            name: cmdop_fleet::FleetName::parse(&access.fleet.name)
                .map_err(|_| cmdop_fleet::ScopeError::NoFleet)?,
        };
        self.authenticated.fleet_access(&fleet, need)
    }
}

impl FleetAccess {
    /// The fleet this access covers.
    pub fn fleet(&self) -> &FleetRecord {
        &self.fleet
    }
}

/// A handle on `relay.db`.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/relay.db`: data dir 0700, file 0600, WAL, foreign keys on,
    /// migrations applied.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        prepare_private_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        create_private_file(&path)?;
        let conn = Connection::open(&path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let mut store = Self { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let current: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))?;
        let supported = i64::try_from(schema::MIGRATIONS.len()).unwrap_or(i64::MAX);
        if current > supported {
            return Err(StoreError::SchemaTooNew {
                found: current,
                supported,
            });
        }
        for (index, migration) in schema::MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(current).unwrap_or(0))
        {
            let tx = self.conn.transaction()?;
            tx.execute_batch(migration)?;
            tx.pragma_update(
                None,
                "user_version",
                i64::try_from(index + 1).unwrap_or(i64::MAX),
            )?;
            tx.commit()?;
        }
        Ok(())
    }

    /// The schema version in the file.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))?)
    }

    /// SQLite's `data_version`: changes whenever another connection (e.g. an admin verb) commits.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))?)
    }

    /// Creates a fleet with a fresh trust-key seed.
    pub fn create_fleet(&self, name: &str, now: u64) -> Result<FleetRecord, StoreError> {
        check_name(name)?;
        if self.fleet_by_name(name)?.is_some() {
            return Err(StoreError::FleetExists(name.to_owned()));
        }
        let id = Uuid::new_v4();
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(seed.as_mut());
        self.conn.execute(
            "INSERT INTO fleets (id, name, trust_seed, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id.to_string(), name, seed.as_slice(), to_sql_time(now)],
        )?;
        self.append_audit(&AuditEntry {
            at: now,
            fleet_id: Some(id),
            actor: "admin",
            action: "fleet.create",
            outcome: "done",
            detail: &format!("fleet {name}"),
        })?;
        Ok(FleetRecord {
            id,
            name: name.to_owned(),
            created_at: now,
        })
    }

    /// All fleets, by name.
    pub fn fleets(&self) -> Result<Vec<FleetRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, created_at FROM fleets ORDER BY name")?;
        let rows = stmt.query_map([], fleet_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The fleet with this name, if any.
    pub fn fleet_by_name(&self, name: &str) -> Result<Option<FleetRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, name, created_at FROM fleets WHERE name = ?1",
                [name],
                fleet_from_row,
            )
            .optional()?)
    }

    fn require_fleet(&self, name: &str) -> Result<FleetRecord, StoreError> {
        self.fleet_by_name(name)?
            .ok_or_else(|| StoreError::UnknownFleet(name.to_owned()))
    }

    /// Creates an API key for one fleet; the returned secret is the only time its text exists.
    pub fn create_api_key(
        &self,
        fleet: &str,
        role: KeyRole,
        label: Option<&str>,
        expires_at: Option<u64>,
        now: u64,
    ) -> Result<(CredentialRecord, CredentialSecret), StoreError> {
        let fleet = self.require_fleet(fleet)?;
        let secret = CredentialSecret::generate(CredentialKind::ApiKey, &mut OsRng);
        let id = secret.id().to_string();
        self.conn.execute(
            "INSERT INTO api_keys (id, fleet_id, role, label, secret_hash, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                id,
                fleet.id.to_string(),
                role.as_str(),
                label,
                secret.hash().to_bytes().as_slice(),
                to_sql_time(now),
                expires_at.map(to_sql_time)
            ],
        )?;
        self.append_audit(&AuditEntry {
            at: now,
            fleet_id: Some(fleet.id),
            actor: "admin",
            action: "key.create",
            outcome: "done",
            detail: &format!("api key {} role {}", id, role.as_str()),
        })?;
        let record = self
            .credential(&id)?
            .ok_or_else(|| StoreError::UnknownCredential(id.clone()))?;
        Ok((record, secret))
    }

    /// Creates a user.
    pub fn create_user(&self, name: &str, now: u64) -> Result<(), StoreError> {
        check_name(name)?;
        let exists: Option<String> = self
            .conn
            .query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0))
            .optional()?;
        if exists.is_some() {
            return Err(StoreError::UserExists(name.to_owned()));
        }
        self.conn.execute(
            "INSERT INTO users (id, name, created_at) VALUES (?1, ?2, ?3)",
            params![Uuid::new_v4().to_string(), name, to_sql_time(now)],
        )?;
        self.append_audit(&AuditEntry {
            at: now,
            fleet_id: None,
            actor: "admin",
            action: "user.create",
            outcome: "done",
            detail: &format!("user {name}"),
        })?;
        Ok(())
    }

    /// Creates a user token spanning `fleets`.
    pub fn create_user_token(
        &mut self,
        user: &str,
        fleets: &[String],
        expires_at: Option<u64>,
        now: u64,
    ) -> Result<(CredentialRecord, CredentialSecret), StoreError> {
        if fleets.is_empty() {
            return Err(StoreError::NoFleets);
        }
        let user_id: String = self
            .conn
            .query_row("SELECT id FROM users WHERE name = ?1", [user], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::UnknownUser(user.to_owned()))?;
        let fleet_records = fleets
            .iter()
            .map(|f| self.require_fleet(f))
            .collect::<Result<Vec<_>, _>>()?;
        let secret = CredentialSecret::generate(CredentialKind::UserToken, &mut OsRng);
        let id = secret.id().to_string();
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO user_tokens (id, user_id, secret_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, user_id, secret.hash().to_bytes().as_slice(), to_sql_time(now), expires_at.map(to_sql_time)],
        )?;
        for fleet in &fleet_records {
            tx.execute(
                "INSERT OR IGNORE INTO token_fleets (token_id, fleet_id) VALUES (?1, ?2)",
                params![id, fleet.id.to_string()],
            )?;
        }
        tx.commit()?;
        self.append_audit(&AuditEntry {
            at: now,
            fleet_id: None,
            actor: "admin",
            action: "token.create",
            outcome: "done",
            detail: &format!("user token {} for {user} fleets {}", id, fleets.join(",")),
        })?;
        let record = self
            .credential(&id)?
            .ok_or_else(|| StoreError::UnknownCredential(id.clone()))?;
        Ok((record, secret))
    }

    /// Revokes an API key or user token by id. Live connections using it are closed by the server within a second.
    pub fn revoke(&self, id: &str, now: u64) -> Result<CredentialRecord, StoreError> {
        let record = self
            .credential(id)?
            .ok_or_else(|| StoreError::UnknownCredential(id.to_owned()))?;
        let table = credential_table(record.kind);
        self.conn.execute(
            &format!("UPDATE {table} SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1"),
            params![id, to_sql_time(now)],
        )?;
        let fleet_id = match record.fleets.as_slice() {
            [only] => self.fleet_by_name(only)?.map(|f| f.id),
            _ => None,
        };
        self.append_audit(&AuditEntry {
            at: now,
            fleet_id,
            actor: "admin",
            action: "revoke",
            outcome: "done",
            detail: &format!("credential {id}"),
        })?;
        self.credential(id)?
            .ok_or_else(|| StoreError::UnknownCredential(id.to_owned()))
    }

    /// One credential's metadata.
    pub fn credential(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let key = self
            .conn
            .query_row(
                "SELECT k.id, k.role, f.name, k.label, k.created_at, k.expires_at, k.revoked_at, k.last_used_at
                 FROM api_keys k JOIN fleets f ON f.id = k.fleet_id WHERE k.id = ?1",
                [id],
                api_key_from_row,
            )
            .optional()?;
        if key.is_some() {
            return Ok(key);
        }
        let token = self
            .conn
            .query_row(
                "SELECT t.id, u.name, t.created_at, t.expires_at, t.revoked_at, t.last_used_at
                 FROM user_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = ?1",
                [id],
                user_token_from_row,
            )
            .optional()?;
        match token {
            Some(mut token) => {
                token.fleets = self
                    .token_fleets(&token.id)?
                    .into_iter()
                    .map(|f| f.name)
                    .collect();
                Ok(Some(token))
            }
            None => Ok(None),
        }
    }

    /// All credentials (API keys first, then user tokens), optionally only those reaching `fleet`.
    pub fn credentials(&self, fleet: Option<&str>) -> Result<Vec<CredentialRecord>, StoreError> {
        if let Some(name) = fleet {
            self.require_fleet(name)?;
        }
        let mut ids: Vec<String> = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM api_keys ORDER BY created_at, id")?;
        for id in stmt.query_map([], |r| r.get(0))? {
            ids.push(id?);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM user_tokens ORDER BY created_at, id")?;
        for id in stmt.query_map([], |r| r.get(0))? {
            ids.push(id?);
        }
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(record) = self.credential(&id)?
                && fleet.is_none_or(|name| record.fleets.iter().any(|f| f == name))
            {
                records.push(record);
            }
        }
        Ok(records)
    }

    fn token_fleets(&self, token_id: &str) -> Result<Vec<FleetRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT f.id, f.name, f.created_at FROM token_fleets tf JOIN fleets f ON f.id = tf.fleet_id
             WHERE tf.token_id = ?1 ORDER BY f.name",
        )?;
        let rows = stmt.query_map([token_id], fleet_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Checks a presented credential. On success records the last use; never writes the audit log (the caller
    /// knows the context and does).
    pub fn authenticate(
        &self,
        text: &str,
        now: u64,
    ) -> Result<Result<Principal, AuthRefusal>, StoreError> {
        let Ok(secret) = CredentialSecret::parse(text) else {
            return Ok(Err(AuthRefusal::Malformed));
        };
        let id = secret.id().to_string();
        let Some(record) = self.credential(&id)? else {
            return Ok(Err(AuthRefusal::Unknown));
        };
        // A credential of one kind presented with the other kind's prefix is simply unknown.
        if record.kind != secret.kind() {
            return Ok(Err(AuthRefusal::Unknown));
        }
        let table = credential_table(record.kind);
        // The decision (hash in constant time, revocation, expiry) is cmdop-fleet's; the store only maps rows.
        let fleet_record = self.fleet_credential_record(&record, &secret)?;
        let authenticated =
            match fleet_record.authenticate(&secret, Timestamp::from_unix_seconds(now)) {
                Ok(authenticated) => authenticated,
                Err(err) => {
                    return Ok(Err(match err {
                        AuthError::BadSecret { .. } => AuthRefusal::WrongSecret,
                        AuthError::Revoked { .. } => AuthRefusal::Revoked,
                        AuthError::Expired { .. } => AuthRefusal::Expired,
                        _ => AuthRefusal::Unknown,
                    }));
                }
            };
        self.conn.execute(
            &format!("UPDATE {table} SET last_used_at = ?2 WHERE id = ?1"),
            params![id, to_sql_time(now)],
        )?;
        let fleets = match record.kind {
            CredentialKind::UserToken => self.token_fleets(&id)?,
            _ => record
                .fleets
                .iter()
                .filter_map(|n| self.fleet_by_name(n).transpose())
                .collect::<Result<_, _>>()?,
        };
        Ok(Ok(Principal {
            kind: record.kind,
            credential_id: record.id,
            role: record.role,
            user: record.user,
            expires_at: record.expires_at,
            fleets,
            authenticated,
        }))
    }

    /// The cmdop-fleet view of a stored credential, for its authentication decision.
    fn fleet_credential_record(
        &self,
        record: &CredentialRecord,
        secret: &CredentialSecret,
    ) -> Result<cmdop_fleet::CredentialRecord, StoreError> {
        let id = record.id.as_str();
        let table = credential_table(record.kind);
        let (owner, stored): (String, Vec<u8>) = self.conn.query_row(
            &format!(
                "SELECT {}, secret_hash FROM {table} WHERE id = ?1",
                if record.kind == CredentialKind::UserToken {
                    "user_id"
                } else {
                    "fleet_id"
                }
            ),
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        // A stored hash of the wrong length can match nothing; an all-zero hash stands in for it.
        let hash =
            CredentialHash::from_bytes(<[u8; 32]>::try_from(stored.as_slice()).unwrap_or([0; 32]));
        let owner = parse_uuid(0, &owner)?.into_bytes();
        let stamp = Timestamp::from_unix_seconds;
        Ok(if record.kind == CredentialKind::UserToken {
            let fleets = self
                .token_fleets(id)?
                .into_iter()
                .map(|f| cmdop_fleet::FleetId::from_bytes(f.id.into_bytes()))
                .collect();
            cmdop_fleet::CredentialRecord::UserToken(cmdop_fleet::UserToken {
                id: secret.id(),
                user: cmdop_fleet::UserId::from_bytes(owner),
                fleets,
                label: None,
                hash,
                created: stamp(record.created_at),
                expires: record.expires_at.map(stamp),
                revoked: record.revoked_at.map(stamp),
                last_used: record.last_used_at.map(stamp),
            })
        } else {
            let role = match record.role {
                Some(KeyRole::Agent) => FleetRole::Agent,
                Some(KeyRole::Admin) => FleetRole::Admin,
                _ => FleetRole::Member,
            };
            cmdop_fleet::CredentialRecord::ApiKey(cmdop_fleet::ApiKey {
                id: secret.id(),
                fleet: cmdop_fleet::FleetId::from_bytes(owner),
                role,
                label: None,
                hash,
                created: stamp(record.created_at),
                expires: record.expires_at.map(stamp),
                revoked: record.revoked_at.map(stamp),
                last_used: record.last_used_at.map(stamp),
            })
        })
    }

    /// The fleet's trust key, which signs client capabilities. Its seed lives in `relay.db` (0600): in this
    /// version the relay is the fleet's authority (see docs/security.md).
    pub fn fleet_trust_key(&self, fleet_id: Uuid) -> Result<cmdop_identity::Identity, StoreError> {
        let seed: Vec<u8> = self.conn.query_row(
            "SELECT trust_seed FROM fleets WHERE id = ?1",
            [fleet_id.to_string()],
            |r| r.get(0),
        )?;
        // The schema's CHECK keeps the seed at 32 bytes; a row that breaks it is a corrupt database.
        let seed: [u8; 32] = seed.try_into().map_err(|_| {
            StoreError::Sql(rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Blob,
                "trust seed is not 32 bytes".into(),
            ))
        })?;
        Ok(cmdop_identity::Identity::from_seed(
            &cmdop_identity::Seed::from_bytes(seed),
        ))
    }

    /// Whether a credential is still usable at `now` (exists, not revoked, not expired).
    pub fn credential_usable(&self, id: &str, now: u64) -> Result<bool, StoreError> {
        Ok(self
            .credential(id)?
            .is_some_and(|c| c.revoked_at.is_none() && c.expires_at.is_none_or(|at| at > now)))
    }

    /// Registers (or re-registers) the machine with this public key in the fleet. The same (fleet, key) always
    /// gets the same id; hostname, OS, arch and version are refreshed, the display name only if one is given.
    pub fn register_machine(
        &self,
        access: &FleetAccess,
        public_key: &[u8; 32],
        report: &MachineReport,
        now: u64,
    ) -> Result<MachineRecord, StoreError> {
        let fleet_id = access.fleet.id.to_string();
        let existing: Option<String> = self
            .conn
            .query_row(
                "SELECT id FROM machines WHERE fleet_id = ?1 AND public_key = ?2",
                params![fleet_id, public_key.as_slice()],
                |r| r.get(0),
            )
            .optional()?;
        let hostname_owner: Option<String> = self
            .conn
            .query_row(
                "SELECT id FROM machines WHERE fleet_id = ?1 AND hostname = ?2",
                params![fleet_id, report.hostname],
                |r| r.get(0),
            )
            .optional()?;
        if hostname_owner.is_some() && hostname_owner != existing {
            return Err(StoreError::HostnameTaken(report.hostname.clone()));
        }
        let id = match existing {
            Some(id) => {
                self.conn.execute(
                    "UPDATE machines SET hostname = ?2, display_name = COALESCE(?3, display_name), os = ?4, arch = ?5,
                     agent_version = ?6, last_seen = ?7 WHERE id = ?1",
                    params![
                        id,
                        report.hostname,
                        report.display_name,
                        report.os,
                        report.arch,
                        report.agent_version,
                        to_sql_time(now)
                    ],
                )?;
                id
            }
            None => {
                let id = Uuid::new_v4().to_string();
                self.conn.execute(
                    "INSERT INTO machines (id, fleet_id, public_key, hostname, display_name, os, arch, agent_version,
                     online, last_seen, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?9)",
                    params![
                        id,
                        fleet_id,
                        public_key.as_slice(),
                        report.hostname,
                        report.display_name.as_deref().unwrap_or(&report.hostname),
                        report.os,
                        report.arch,
                        report.agent_version,
                        to_sql_time(now)
                    ],
                )?;
                id
            }
        };
        self.machine(&id)?.ok_or(StoreError::UnknownMachine(id))
    }

    /// Sets a machine's presence; `last_seen` moves to `now`.
    pub fn set_presence(&self, machine_id: Uuid, online: bool, now: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE machines SET online = ?2, last_seen = ?3 WHERE id = ?1",
            params![machine_id.to_string(), online, to_sql_time(now)],
        )?;
        Ok(())
    }

    /// Marks every machine offline (at server start: no connection survives a restart).
    pub fn mark_all_offline(&self) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE machines SET online = 0 WHERE online = 1", [])?;
        Ok(())
    }

    /// One machine by id.
    pub fn machine(&self, id: &str) -> Result<Option<MachineRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("{MACHINE_SELECT} WHERE m.id = ?1"),
                [id],
                machine_from_row,
            )
            .optional()?)
    }

    /// The machines of the fleet an access proves, by hostname.
    pub fn machines_in(&self, access: &FleetAccess) -> Result<Vec<MachineRecord>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "{MACHINE_SELECT} WHERE m.fleet_id = ?1 ORDER BY m.hostname"
        ))?;
        let rows = stmt.query_map([access.fleet.id.to_string()], machine_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Admin view: all machines, or those of one fleet.
    pub fn machines(&self, fleet: Option<&str>) -> Result<Vec<MachineRecord>, StoreError> {
        let fleet_id = match fleet {
            Some(name) => Some(self.require_fleet(name)?.id.to_string()),
            None => None,
        };
        let mut stmt = self.conn.prepare(&format!(
            "{MACHINE_SELECT} WHERE ?1 IS NULL OR m.fleet_id = ?1 ORDER BY f.name, m.hostname"
        ))?;
        let rows = stmt.query_map([fleet_id], machine_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Changes a machine's display name.
    pub fn rename_machine(
        &self,
        id: &str,
        name: &str,
        now: u64,
    ) -> Result<MachineRecord, StoreError> {
        if name.trim().is_empty() || name.len() > 128 {
            return Err(StoreError::InvalidName(name.to_owned()));
        }
        let machine = self
            .machine(id)?
            .ok_or_else(|| StoreError::UnknownMachine(id.to_owned()))?;
        self.conn.execute(
            "UPDATE machines SET display_name = ?2 WHERE id = ?1",
            params![id, name],
        )?;
        self.append_audit(&AuditEntry {
            at: now,
            fleet_id: Some(machine.fleet_id),
            actor: "admin",
            action: "rename",
            outcome: "done",
            detail: &format!("machine {id} {:?} -> {name:?}", machine.name),
        })?;
        self.machine(id)?
            .ok_or_else(|| StoreError::UnknownMachine(id.to_owned()))
    }

    /// Appends to the audit log. There is deliberately no way to change or delete entries (the schema refuses it too).
    pub fn append_audit(&self, entry: &AuditEntry<'_>) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO audit_log (at, fleet_id, actor, action, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                to_sql_time(entry.at),
                entry.fleet_id.map(|id| id.to_string()),
                entry.actor,
                entry.action,
                entry.outcome,
                entry.detail
            ],
        )?;
        Ok(())
    }

    /// The audit log in order, optionally only one fleet's entries.
    pub fn audit(&self, fleet: Option<&str>) -> Result<Vec<AuditRecord>, StoreError> {
        let fleet_id = match fleet {
            Some(name) => Some(self.require_fleet(name)?.id.to_string()),
            None => None,
        };
        let mut stmt = self.conn.prepare(
            "SELECT a.seq, a.at, f.name, a.actor, a.action, a.outcome, a.detail FROM audit_log a
             LEFT JOIN fleets f ON f.id = a.fleet_id WHERE ?1 IS NULL OR a.fleet_id = ?1 ORDER BY a.seq",
        )?;
        let rows = stmt.query_map([fleet_id], |r| {
            Ok(AuditRecord {
                seq: r.get(0)?,
                at: from_sql_time(r.get(1)?),
                fleet: r.get(2)?,
                actor: r.get(3)?,
                action: r.get(4)?,
                outcome: r.get(5)?,
                detail: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

const MACHINE_SELECT: &str = "SELECT m.id, m.fleet_id, f.name, m.public_key, m.hostname, m.display_name, m.os, m.arch,
     m.agent_version, m.online, m.last_seen, m.created_at FROM machines m JOIN fleets f ON f.id = m.fleet_id";

fn parse_uuid(index: usize, text: &str) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn fleet_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FleetRecord> {
    Ok(FleetRecord {
        id: parse_uuid(0, &r.get::<_, String>(0)?)?,
        name: r.get(1)?,
        created_at: from_sql_time(r.get(2)?),
    })
}

fn api_key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CredentialRecord> {
    let role: String = r.get(1)?;
    Ok(CredentialRecord {
        id: r.get(0)?,
        kind: CredentialKind::ApiKey,
        role: KeyRole::parse(&role),
        user: None,
        fleets: vec![r.get(2)?],
        label: r.get(3)?,
        created_at: from_sql_time(r.get(4)?),
        expires_at: r.get::<_, Option<i64>>(5)?.map(from_sql_time),
        revoked_at: r.get::<_, Option<i64>>(6)?.map(from_sql_time),
        last_used_at: r.get::<_, Option<i64>>(7)?.map(from_sql_time),
    })
}

fn user_token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CredentialRecord> {
    Ok(CredentialRecord {
        id: r.get(0)?,
        kind: CredentialKind::UserToken,
        role: None,
        user: Some(r.get(1)?),
        fleets: Vec::new(),
        label: None,
        created_at: from_sql_time(r.get(2)?),
        expires_at: r.get::<_, Option<i64>>(3)?.map(from_sql_time),
        revoked_at: r.get::<_, Option<i64>>(4)?.map(from_sql_time),
        last_used_at: r.get::<_, Option<i64>>(5)?.map(from_sql_time),
    })
}

fn machine_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MachineRecord> {
    let key: Vec<u8> = r.get(3)?;
    let public_key: [u8; 32] = key.as_slice().try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            3,
            rusqlite::types::Type::Blob,
            "public key is not 32 bytes".into(),
        )
    })?;
    Ok(MachineRecord {
        id: parse_uuid(0, &r.get::<_, String>(0)?)?,
        fleet_id: parse_uuid(1, &r.get::<_, String>(1)?)?,
        fleet: r.get(2)?,
        public_key,
        hostname: r.get(4)?,
        name: r.get(5)?,
        os: r.get(6)?,
        arch: r.get(7)?,
        agent_version: r.get(8)?,
        online: r.get(9)?,
        last_seen: r.get::<_, Option<i64>>(10)?.map(from_sql_time),
        created_at: from_sql_time(r.get(11)?),
    })
}

// SQLite integers are i64; times beyond 2^63 s are clamped rather than wrapped.
fn to_sql_time(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn from_sql_time(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_owned()))
    }
}

/// Creates `dir` (and parents) and restricts it to the owner (0700).
pub fn prepare_private_dir(dir: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::DataDir {
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Creates `path` if missing with mode 0600 and tightens it to 0600 if it exists.
pub fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::DataDir {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
