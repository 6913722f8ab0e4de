//! Rows to cmdop-fleet records: every value read back from SQLite is parsed into its validated type, so a
//! hand-edited or corrupted row is a named error, never a half-valid record.

use std::str::FromStr;

use cmdop_fleet::{
    AgentInfo, ApiKey, CredentialHash, CredentialId, DisplayName, Fleet, FleetId, FleetName,
    Hostname, Label, Machine, MachineId, MachineLabels, Role, Timestamp, User, UserId, UserName,
    UserToken,
};
use cmdop_identity::PublicKey;

use super::{FleetRecord, StoreError};

/// SQLite integers are i64; times beyond 2^63 s are clamped rather than wrapped.
pub(super) fn sql_time(at: Timestamp) -> i64 {
    i64::try_from(at.as_unix_seconds()).unwrap_or(i64::MAX)
}

/// A stored time back as unix seconds; negative values (never written) read as the epoch.
pub(super) fn unix_seconds(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn timestamp(value: i64) -> Timestamp {
    Timestamp::from_unix_seconds(unix_seconds(value))
}

fn corrupt(what: &'static str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        reason: reason.to_string(),
    }
}

/// Parses a stored id of type `T`.
pub(super) fn parse_id<T: FromStr>(what: &'static str, text: &str) -> Result<T, StoreError>
where
    T::Err: ToString,
{
    text.parse().map_err(|err: T::Err| corrupt(what, err))
}

fn parse_name<T: FromStr>(what: &'static str, text: &str) -> Result<T, StoreError>
where
    T::Err: ToString,
{
    text.parse().map_err(|err: T::Err| corrupt(what, err))
}

fn optional_time(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Option<Timestamp>> {
    Ok(row.get::<_, Option<i64>>(index)?.map(timestamp))
}

fn hash(bytes: &[u8]) -> Result<CredentialHash, StoreError> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| corrupt("credential hash", "it is not 32 bytes"))?;
    Ok(CredentialHash::from_bytes(bytes))
}

fn label(text: Option<String>) -> Result<Option<Label>, StoreError> {
    text.map(|text| parse_name::<Label>("label", &text))
        .transpose()
}

/// `id, name, created_at` of `fleets`.
pub(super) fn fleet_from_row(row: &rusqlite::Row<'_>) -> Result<FleetRecord, StoreError> {
    let id: String = row.get(0)?;
    let name: String = row.get(1)?;
    Ok(FleetRecord {
        fleet: Fleet {
            id: parse_id::<FleetId>("fleet id", &id)?,
            name: parse_name::<FleetName>("fleet name", &name)?,
        },
        created: timestamp(row.get(2)?),
    })
}

/// `id, name` of `users`.
pub(super) fn user_from_row(row: &rusqlite::Row<'_>) -> Result<User, StoreError> {
    let id: String = row.get(0)?;
    let name: String = row.get(1)?;
    Ok(User {
        id: parse_id::<UserId>("user id", &id)?,
        name: parse_name::<UserName>("user name", &name)?,
    })
}

/// `id, fleet_id, role, label, secret_hash, created_at, expires_at, revoked_at, last_used_at` of `api_keys`.
pub(super) fn api_key_from_row(row: &rusqlite::Row<'_>) -> Result<ApiKey, StoreError> {
    let id: String = row.get(0)?;
    let fleet: String = row.get(1)?;
    let role: String = row.get(2)?;
    let stored_hash: Vec<u8> = row.get(4)?;
    Ok(ApiKey {
        id: parse_id::<CredentialId>("credential id", &id)?,
        fleet: parse_id::<FleetId>("fleet id", &fleet)?,
        role: parse_name::<Role>("role", &role)?,
        label: label(row.get(3)?)?,
        hash: hash(&stored_hash)?,
        created: timestamp(row.get(5)?),
        expires: optional_time(row, 6)?,
        revoked: optional_time(row, 7)?,
        last_used: optional_time(row, 8)?,
    })
}

/// `id, user_id, label, secret_hash, created_at, expires_at, revoked_at, last_used_at` of `user_tokens`; the
/// fleets come from `token_fleets` and are filled in by the caller.
pub(super) fn token_from_row(row: &rusqlite::Row<'_>) -> Result<UserToken, StoreError> {
    let id: String = row.get(0)?;
    let user: String = row.get(1)?;
    let stored_hash: Vec<u8> = row.get(3)?;
    Ok(UserToken {
        id: parse_id::<CredentialId>("credential id", &id)?,
        user: parse_id::<UserId>("user id", &user)?,
        fleets: std::collections::BTreeSet::new(),
        label: label(row.get(2)?)?,
        hash: hash(&stored_hash)?,
        created: timestamp(row.get(4)?),
        expires: optional_time(row, 5)?,
        revoked: optional_time(row, 6)?,
        last_used: optional_time(row, 7)?,
    })
}

/// The columns [`machine_from_row`] reads, in order.
pub(super) const MACHINE_COLUMNS: &str = "m.id, m.fleet_id, m.public_key, m.hostname, m.display_name, m.os, m.arch, \
     m.agent_version, m.online, m.last_seen, m.created_at, m.labels";

/// A `machines` row as cmdop-fleet's [`Machine`]. The stored display name equals the hostname when none was
/// set (the column is never empty), which reads back as no display name.
pub(super) fn machine_from_row(row: &rusqlite::Row<'_>) -> Result<Machine, StoreError> {
    let id: String = row.get(0)?;
    let fleet: String = row.get(1)?;
    let key: Vec<u8> = row.get(2)?;
    let hostname: String = row.get(3)?;
    let display: String = row.get(4)?;
    let key: [u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| corrupt("machine key", "it is not 32 bytes"))?;
    let hostname = parse_name::<Hostname>("hostname", &hostname)?;
    let name = if display == hostname.as_str() {
        None
    } else {
        Some(parse_name::<DisplayName>("display name", &display)?)
    };
    let os: String = row.get(5)?;
    let arch: String = row.get(6)?;
    let version: String = row.get(7)?;
    let labels: String = row.get(11)?;
    Ok(Machine {
        id: parse_id::<MachineId>("machine id", &id)?,
        fleet: parse_id::<FleetId>("fleet id", &fleet)?,
        public_key: PublicKey::from_bytes(&key).map_err(|err| corrupt("machine key", err))?,
        hostname,
        name,
        info: AgentInfo::new(&os, &arch, &version)
            .map_err(|err| corrupt("agent description", err))?,
        labels: parse_name::<MachineLabels>("machine labels", &labels)?,
        online: row.get(8)?,
        last_heartbeat: optional_time(row, 9)?,
        registered: timestamp(row.get(10)?),
    })
}
