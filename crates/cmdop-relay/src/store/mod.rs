//! The relay's embedded store: one SQLite file, `<data-dir>/relay.db`, shared by the server and the admin verbs.
//!
//! It persists cmdop-fleet's model and nothing else: [`Fleet`]s (with their trust-key seed), [`User`]s,
//! [`CredentialRecord`]s (hashes only), [`Machine`](cmdop_fleet::Machine)s, the fleet lock's signed documents
//! (which it stores, never makes), plus the append-only audit log. Decisions about those
//! records (authentication, scope, registration, renaming) are cmdop-fleet's functions; the store only maps
//! rows to and from its types. All times are passed in by the caller, so tests control time. The admin verbs
//! run in another process than the server; SQLite's WAL mode and `busy_timeout` let both write safely, and
//! [`Store::data_version`] lets the server notice their changes cheaply.

mod lock;
mod machines;
mod rows;
mod schema;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cmdop_fleet::{
    ApiKey, ApiKeySpec, CredentialId, CredentialKind, CredentialRecord, CredentialSecret, Fleet,
    FleetId, FleetName, IdError, IssueError, Label, NameError, Role, Timestamp, User, UserId,
    UserName, UserToken, UserTokenSpec,
};
use cmdop_proto::display;
use cmdop_proto::login::CredentialLookup;
use rand_core::{OsRng, RngCore};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use self::rows::{api_key_from_row, fleet_from_row, sql_time, token_from_row, user_from_row};

/// The database file name inside the data dir.
pub const DB_FILE: &str = "relay.db";

/// Most characters of an audit entry's actor.
const AUDIT_ACTOR_CHARS: usize = 160;
/// Most characters of an audit entry's action, outcome or fleet name.
const AUDIT_WORD_CHARS: usize = 64;
/// Most characters of an audit entry's detail.
const AUDIT_DETAIL_CHARS: usize = 600;
/// Most characters of one audit entry's text fields together (the bound `docs/relay.md` states).
pub const MAX_AUDIT_ENTRY_CHARS: usize =
    AUDIT_ACTOR_CHARS + 3 * AUDIT_WORD_CHARS + AUDIT_DETAIL_CHARS;

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
    /// A file holding secrets (relay.db holds every fleet's trust seed) can be accessed by group or others.
    #[error(
        "{} is accessible by group or others (mode {mode:04o}) and is refused, since it holds secrets; run `chmod 600 {}`, and rotate what it holds if someone else may have read it",
        path.display(),
        path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// SQLite failed; the message says what kind of failure it was and what to do (see [`sql_advice`]).
    #[error("relay database error: {}; {}", .0, sql_advice(.0))]
    Sql(#[from] rusqlite::Error),
    /// A row holds a value this relay cannot read as a valid record.
    #[error(
        "relay.db holds an invalid {what}: {reason}; the file was changed outside cmdop-relay or is corrupted"
    )]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
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
    /// A name or label is not valid.
    #[error("invalid {what} {given:?}: {reason}")]
    InvalidName {
        /// What was being named: `fleet name`, `user name`, `display name`, `label`.
        what: &'static str,
        /// The text given.
        given: String,
        /// The rule it breaks and how to fix it.
        reason: NameError,
    },
    /// Another machine of the fleet already uses that hostname.
    #[error(
        "hostname {0:?} is already used by another machine of this fleet; rename or remove the old machine"
    )]
    HostnameTaken(String),
    /// A credential could not be issued.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// A new display name is another machine's hostname.
    #[error(transparent)]
    NameClash(#[from] cmdop_fleet::NameClash),
}

/// What to do about a SQLite failure. Only failures of the disk or the file blame them: a logic error (a
/// constraint, a statement the schema does not support) must not send an admin to check free space.
pub fn sql_advice(err: &rusqlite::Error) -> &'static str {
    use rusqlite::ErrorCode as Code;
    match err.sqlite_error_code() {
        Some(Code::DiskFull) => "the disk holding relay.db is full; free some space",
        Some(
            Code::SystemIoFailure | Code::CannotOpen | Code::ReadOnly | Code::PermissionDenied,
        ) => {
            "check that the data dir and relay.db are writable by this user and that the disk is healthy"
        }
        Some(Code::DatabaseCorrupt | Code::NotADatabase) => {
            "relay.db is damaged or not a cmdop relay database; restore it from a backup"
        }
        Some(Code::DatabaseBusy | Code::DatabaseLocked) => {
            "another process kept relay.db locked for more than 5 s; retry, and check for a stuck cmdop-relay process"
        }
        Some(Code::ConstraintViolation) => {
            "another change to the same record happened at the same moment; retry the command"
        }
        _ => "this is a bug in cmdop-relay; please report it with the command that failed",
    }
}

/// A fleet with the time it was created (for the admin's listing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetRecord {
    /// The fleet.
    pub fleet: Fleet,
    /// When it was created.
    pub created: Timestamp,
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
    pub at: Timestamp,
    /// Fleet concerned, if any.
    pub fleet: Option<FleetId>,
    /// Who acted.
    pub actor: &'a str,
    /// What happened.
    pub action: &'a str,
    /// `accepted`, `refused` or `done`.
    pub outcome: &'a str,
    /// Details.
    pub detail: &'a str,
}

/// A handle on `relay.db`.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/relay.db`: data dir 0700, file 0600 (an existing one that group
    /// or others can access is refused), WAL, foreign keys on, migrations applied.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        prepare_private_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        create_private_file(&path)?;
        // SQLite's write-ahead log and index hold the same data and take the database file's mode.
        for sidecar in ["-wal", "-shm"] {
            refuse_if_open(&data_dir.join(format!("{DB_FILE}{sidecar}")))?;
        }
        let conn = Connection::open(&path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        enable_wal(&conn)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let mut store = Self { conn };
        store.migrate()?;
        Ok(store)
    }

    /// Brings the schema to the newest version in one exclusive transaction. Whoever opens a fresh data dir
    /// first migrates it; everyone else waits for the write lock (up to [`BUSY_TIMEOUT`]), then re-reads the
    /// version under it and finds nothing left to do. So `serve` and an admin verb started at the same moment
    /// never both create the tables, and nobody sees a half-made schema.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let supported = i64::try_from(schema::MIGRATIONS.len()).unwrap_or(i64::MAX);
        let version = |conn: &Connection| -> Result<i64, StoreError> {
            Ok(conn.query_row("PRAGMA user_version", [], |row| row.get(0))?)
        };
        let too_new = |found: i64| StoreError::SchemaTooNew { found, supported };
        // Already migrated (every open but the first): no write lock needed.
        match version(&self.conn)? {
            current if current == supported => return Ok(()),
            current if current > supported => return Err(too_new(current)),
            _ => {}
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        let current = version(&tx)?;
        if current > supported {
            return Err(too_new(current));
        }
        for migration in schema::MIGRATIONS
            .iter()
            .skip(usize::try_from(current).unwrap_or(0))
        {
            tx.execute_batch(migration)?;
        }
        tx.pragma_update(None, "user_version", supported)?;
        tx.commit()?;
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

    /// Creates a fleet named `name` with a fresh id and trust-key seed.
    pub fn create_fleet(&self, name: &str, now: Timestamp) -> Result<FleetRecord, StoreError> {
        let name = FleetName::parse(name).map_err(|reason| StoreError::InvalidName {
            what: "fleet name",
            given: name.to_owned(),
            reason,
        })?;
        if self.fleet_by_name(name.as_str())?.is_some() {
            return Err(StoreError::FleetExists(name.to_string()));
        }
        let fleet = Fleet {
            id: FleetId::generate(&mut OsRng),
            name,
        };
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(seed.as_mut());
        self.conn
            .execute(
                "INSERT INTO fleets (id, name, trust_seed, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    fleet.id.to_string(),
                    fleet.name.as_str(),
                    seed.as_slice(),
                    sql_time(now)
                ],
            )
            .map_err(|err| taken(err, || StoreError::FleetExists(fleet.name.to_string())))?;
        self.append_audit(&AuditEntry {
            at: now,
            fleet: Some(fleet.id),
            actor: "admin",
            action: "fleet.create",
            outcome: "done",
            detail: &format!("fleet {}", fleet.name),
        })?;
        Ok(FleetRecord {
            fleet,
            created: now,
        })
    }

    /// All fleets, by name.
    pub fn fleets(&self) -> Result<Vec<FleetRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, created_at FROM fleets ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok(fleet_from_row(r)))?;
        rows.map(|row| row?).collect()
    }

    /// The fleet with this name, if any.
    pub fn fleet_by_name(&self, name: &str) -> Result<Option<FleetRecord>, StoreError> {
        self.conn
            .query_row(
                "SELECT id, name, created_at FROM fleets WHERE name = ?1",
                [name],
                |r| Ok(fleet_from_row(r)),
            )
            .optional()?
            .transpose()
    }

    fn require_fleet(&self, name: &str) -> Result<Fleet, StoreError> {
        self.fleet_by_name(name)?
            .map(|record| record.fleet)
            .ok_or_else(|| StoreError::UnknownFleet(name.to_owned()))
    }

    /// Issues an API key for one fleet (cmdop-fleet's [`ApiKey::issue`]) and stores its record; the returned
    /// secret is the only time its text exists.
    pub fn create_api_key(
        &self,
        fleet: &str,
        role: Role,
        label: Option<&str>,
        expires: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<(ApiKey, CredentialSecret), StoreError> {
        let fleet = self.require_fleet(fleet)?;
        let label = parse_label(label)?;
        let spec = ApiKeySpec {
            fleet: fleet.id,
            role,
            label,
            expires,
        };
        let (record, secret) = ApiKey::issue(spec, now, &mut OsRng)?;
        self.conn.execute(
            "INSERT INTO api_keys (id, fleet_id, role, label, secret_hash, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                record.id.to_string(),
                record.fleet.to_string(),
                record.role.as_str(),
                record.label.as_ref().map(Label::as_str),
                record.hash.to_bytes().as_slice(),
                sql_time(record.created),
                record.expires.map(sql_time)
            ],
        )?;
        self.append_audit(&AuditEntry {
            at: now,
            fleet: Some(fleet.id),
            actor: "admin",
            action: "key.create",
            outcome: "done",
            detail: &format!("api key {} role {}", record.id, role.as_str()),
        })?;
        Ok((record, secret))
    }

    /// Creates a user.
    pub fn create_user(&self, name: &str, now: Timestamp) -> Result<User, StoreError> {
        let name = UserName::parse(name).map_err(|reason| StoreError::InvalidName {
            what: "user name",
            given: name.to_owned(),
            reason,
        })?;
        if self.user_by_name(name.as_str())?.is_some() {
            return Err(StoreError::UserExists(name.to_string()));
        }
        let user = User {
            id: UserId::generate(&mut OsRng),
            name,
        };
        self.conn
            .execute(
                "INSERT INTO users (id, name, created_at) VALUES (?1, ?2, ?3)",
                params![user.id.to_string(), user.name.as_str(), sql_time(now)],
            )
            .map_err(|err| taken(err, || StoreError::UserExists(user.name.to_string())))?;
        self.append_audit(&AuditEntry {
            at: now,
            fleet: None,
            actor: "admin",
            action: "user.create",
            outcome: "done",
            detail: &format!("user {}", user.name),
        })?;
        Ok(user)
    }

    /// The user with this name, if any.
    pub fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.conn
            .query_row("SELECT id, name FROM users WHERE name = ?1", [name], |r| {
                Ok(user_from_row(r))
            })
            .optional()?
            .transpose()
    }

    /// Every user.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name FROM users ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok(user_from_row(r)))?;
        rows.map(|row| row?).collect()
    }

    /// Issues a user token spanning `fleets` (cmdop-fleet's [`UserToken::issue`]) and stores its record.
    pub fn create_user_token(
        &mut self,
        user: &str,
        fleets: &[String],
        expires: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<(UserToken, CredentialSecret), StoreError> {
        let holder = self
            .user_by_name(user)?
            .ok_or_else(|| StoreError::UnknownUser(user.to_owned()))?;
        let fleet_ids = fleets
            .iter()
            .map(|f| self.require_fleet(f).map(|fleet| fleet.id))
            .collect::<Result<_, _>>()?;
        let spec = UserTokenSpec {
            user: holder.id,
            fleets: fleet_ids,
            label: None,
            expires,
        };
        let (record, secret) = UserToken::issue(spec, now, &mut OsRng)?;
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO user_tokens (id, user_id, secret_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                record.id.to_string(),
                record.user.to_string(),
                record.hash.to_bytes().as_slice(),
                sql_time(record.created),
                record.expires.map(sql_time)
            ],
        )?;
        for fleet in &record.fleets {
            tx.execute(
                "INSERT OR IGNORE INTO token_fleets (token_id, fleet_id) VALUES (?1, ?2)",
                params![record.id.to_string(), fleet.to_string()],
            )?;
        }
        tx.commit()?;
        self.append_audit(&AuditEntry {
            at: now,
            fleet: None,
            actor: "admin",
            action: "token.create",
            outcome: "done",
            detail: &format!(
                "user token {} for {user} fleets {}",
                record.id,
                fleets.join(",")
            ),
        })?;
        Ok((record, secret))
    }

    /// Revokes an API key or user token by id. Live connections using it are closed by the server within a second.
    pub fn revoke(&self, id: &str, now: Timestamp) -> Result<CredentialRecord, StoreError> {
        let unknown = || StoreError::UnknownCredential(id.to_owned());
        let parsed: CredentialId = id.parse().map_err(|_: IdError| unknown())?;
        let record = self.credential(parsed)?.ok_or_else(unknown)?;
        let (table, fleet) = match &record {
            CredentialRecord::UserToken(_) => ("user_tokens", None),
            CredentialRecord::ApiKey(key) => ("api_keys", Some(key.fleet)),
        };
        self.conn.execute(
            &format!("UPDATE {table} SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1"),
            params![parsed.to_string(), sql_time(now)],
        )?;
        self.append_audit(&AuditEntry {
            at: now,
            fleet,
            actor: "admin",
            action: "revoke",
            outcome: "done",
            detail: &format!("credential {parsed}"),
        })?;
        self.credential(parsed)?.ok_or_else(unknown)
    }

    /// One credential's record (its hash, never its secret).
    pub fn credential(&self, id: CredentialId) -> Result<Option<CredentialRecord>, StoreError> {
        let key = self
            .conn
            .query_row(
                "SELECT id, fleet_id, role, label, secret_hash, created_at, expires_at, revoked_at, last_used_at
                 FROM api_keys WHERE id = ?1",
                [id.to_string()],
                |r| Ok(api_key_from_row(r)),
            )
            .optional()?
            .transpose()?;
        if let Some(key) = key {
            return Ok(Some(CredentialRecord::ApiKey(key)));
        }
        let token = self
            .conn
            .query_row(
                "SELECT id, user_id, label, secret_hash, created_at, expires_at, revoked_at, last_used_at
                 FROM user_tokens WHERE id = ?1",
                [id.to_string()],
                |r| Ok(token_from_row(r)),
            )
            .optional()?
            .transpose()?;
        match token {
            Some(mut token) => {
                token.fleets = self.token_fleets(id)?;
                Ok(Some(CredentialRecord::UserToken(token)))
            }
            None => Ok(None),
        }
    }

    /// All credentials (API keys first, then user tokens, each by creation), optionally only those reaching
    /// the fleet named `fleet`.
    pub fn credentials(&self, fleet: Option<&str>) -> Result<Vec<CredentialRecord>, StoreError> {
        let only = fleet.map(|name| self.require_fleet(name)).transpose()?;
        let mut ids: Vec<String> = Vec::new();
        for table in ["api_keys", "user_tokens"] {
            let mut stmt = self
                .conn
                .prepare(&format!("SELECT id FROM {table} ORDER BY created_at, id"))?;
            for id in stmt.query_map([], |r| r.get(0))? {
                ids.push(id?);
            }
        }
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            let id: CredentialId = id.parse().map_err(|err: IdError| StoreError::Corrupt {
                what: "credential id",
                reason: err.to_string(),
            })?;
            if let Some(record) = self.credential(id)?
                && only.as_ref().is_none_or(|f| reaches(&record, f.id))
            {
                records.push(record);
            }
        }
        Ok(records)
    }

    fn token_fleets(
        &self,
        token: CredentialId,
    ) -> Result<std::collections::BTreeSet<FleetId>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT fleet_id FROM token_fleets WHERE token_id = ?1")?;
        let rows = stmt.query_map([token.to_string()], |r| r.get::<_, String>(0))?;
        rows.map(|row| rows::parse_id::<FleetId>("fleet id", &row?))
            .collect()
    }

    /// What the login state machine needs to authenticate the credential with this id: its record, every
    /// fleet, and the holder's name for a user token.
    pub fn credential_lookup(&self, id: CredentialId) -> Result<CredentialLookup, StoreError> {
        let record = self.credential(id)?;
        let user = match &record {
            Some(CredentialRecord::UserToken(token)) => self.user_name(token.user)?,
            _ => None,
        };
        let fleets = self.fleets()?.into_iter().map(|r| r.fleet).collect();
        Ok(CredentialLookup {
            record,
            fleets,
            user,
        })
    }

    fn user_name(&self, id: UserId) -> Result<Option<UserName>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, name FROM users WHERE id = ?1",
                [id.to_string()],
                |r| Ok(user_from_row(r)),
            )
            .optional()?
            .transpose()?
            .map(|user| user.name))
    }

    /// Records a successful authentication (for `key list`'s last-used column).
    pub fn mark_used(&self, id: CredentialId, now: Timestamp) -> Result<(), StoreError> {
        for table in ["api_keys", "user_tokens"] {
            self.conn.execute(
                &format!("UPDATE {table} SET last_used_at = ?2 WHERE id = ?1"),
                params![id.to_string(), sql_time(now)],
            )?;
        }
        Ok(())
    }

    /// The fleet's trust key, which signs client capabilities. Its seed lives in `relay.db` (0600): in this
    /// version the relay is the fleet's authority (see docs/security.md).
    pub fn fleet_trust_key(&self, fleet: FleetId) -> Result<cmdop_identity::Identity, StoreError> {
        let seed: Vec<u8> = self.conn.query_row(
            "SELECT trust_seed FROM fleets WHERE id = ?1",
            [fleet.to_string()],
            |r| r.get(0),
        )?;
        // The schema's CHECK keeps the seed at 32 bytes; a row that breaks it is a corrupt database.
        let seed: [u8; 32] = seed.try_into().map_err(|_| StoreError::Corrupt {
            what: "fleet trust seed",
            reason: "it is not 32 bytes".to_owned(),
        })?;
        Ok(cmdop_identity::Identity::from_seed(
            &cmdop_identity::Seed::from_bytes(seed),
        ))
    }

    /// Appends to the audit log. There is deliberately no way to change or delete entries (the schema refuses it too).
    /// Every field is stored bounded and without terminal controls ([`display::for_terminal`]): whatever a
    /// peer managed to put into one, an entry stays under [`MAX_AUDIT_ENTRY_CHARS`].
    pub fn append_audit(&self, entry: &AuditEntry<'_>) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO audit_log (at, fleet_id, actor, action, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                sql_time(entry.at),
                entry.fleet.map(|id| id.to_string()),
                display::for_terminal(entry.actor, AUDIT_ACTOR_CHARS),
                display::for_terminal(entry.action, AUDIT_WORD_CHARS),
                display::for_terminal(entry.outcome, AUDIT_WORD_CHARS),
                display::for_terminal(entry.detail, AUDIT_DETAIL_CHARS),
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
        // Rows written by an older relay may hold raw peer text: bound and escape on the way out as well.
        let shown = |text: String, max: usize| display::for_terminal(&text, max);
        let rows = stmt.query_map([fleet_id], |r| {
            Ok(AuditRecord {
                seq: r.get(0)?,
                at: rows::unix_seconds(r.get(1)?),
                fleet: r
                    .get::<_, Option<String>>(2)?
                    .map(|f| shown(f, AUDIT_WORD_CHARS)),
                actor: shown(r.get(3)?, AUDIT_ACTOR_CHARS),
                action: shown(r.get(4)?, AUDIT_WORD_CHARS),
                outcome: shown(r.get(5)?, AUDIT_WORD_CHARS),
                detail: shown(r.get(6)?, AUDIT_DETAIL_CHARS),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// A unique name taken between the check and the insert (another process created it at that moment) is the
/// same "already exists" as one taken before; any other failure stays what it is.
fn taken(err: rusqlite::Error, exists: impl FnOnce() -> StoreError) -> StoreError {
    match &err {
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            exists()
        }
        _ => StoreError::Sql(err),
    }
}

/// Switches the file to WAL mode (persistent: once any opener did it, the file stays in WAL). SQLite answers
/// the switch with "database is locked" at once, without its busy handler, while another connection is
/// opening the same fresh file; so wait and retry here, up to [`BUSY_TIMEOUT`] like every other statement.
fn enable_wal(conn: &Connection) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(())) {
            Err(err)
                if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return Ok(result?),
        }
    }
}

/// Whether a credential reaches `fleet`.
pub fn reaches(record: &CredentialRecord, fleet: FleetId) -> bool {
    match record {
        CredentialRecord::ApiKey(key) => key.fleet == fleet,
        CredentialRecord::UserToken(token) => token.fleets.contains(&fleet),
    }
}

/// The kind of a credential record, for display.
pub fn kind_of(record: &CredentialRecord) -> CredentialKind {
    match record {
        CredentialRecord::ApiKey(_) => CredentialKind::ApiKey,
        CredentialRecord::UserToken(_) => CredentialKind::UserToken,
    }
}

fn parse_label(label: Option<&str>) -> Result<Option<Label>, StoreError> {
    label
        .map(|text| {
            Label::parse(text).map_err(|reason| StoreError::InvalidName {
                what: "label",
                given: text.to_owned(),
                reason,
            })
        })
        .transpose()
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

/// Creates `path` if missing with mode 0600 (whatever the umask); an existing file that group or others can
/// access is refused and left as it is. A secret file found open may already have been read, which its owner
/// must know about; quietly tightening it would hide that.
pub fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::DataDir {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        #[cfg(unix)]
        Ok(file) => {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(err)
        }
        #[cfg(not(unix))]
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => refuse_if_open(path),
        Err(e) => Err(err(e)),
    }
}

/// Refuses `path` if it exists and group or others have any access to it.
pub fn refuse_if_open(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let metadata = match fs::metadata(path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(StoreError::DataDir {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(StoreError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
