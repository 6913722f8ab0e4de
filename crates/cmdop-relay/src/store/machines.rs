//! Machines in the store: what cmdop-fleet's `register` and `rename` decided, written down; presence; listings.

use cmdop_fleet::{
    DisplayName, Fleet, FleetAccess, FleetId, Machine, MachineId, Registration, RenameError,
    Timestamp, rename,
};
use cmdop_proto::login::FleetQuery;
use cmdop_proto::presence::PresenceWrite;
use rusqlite::{OptionalExtension, params};

use super::rows::{MACHINE_COLUMNS, machine_from_row, sql_time};
use super::{AuditEntry, Store, StoreError};

impl Store {
    /// Writes what [`cmdop_fleet::register`] decided: a new machine, or the refreshed record of a known key.
    /// A hostname another machine took meanwhile (another relay process, a race) is
    /// [`StoreError::HostnameTaken`], thanks to the schema's `UNIQUE (fleet_id, hostname)`.
    pub fn save_registration(&self, registration: &Registration) -> Result<(), StoreError> {
        let m = &registration.machine;
        let written = if registration.is_new {
            self.conn.execute(
                "INSERT INTO machines (id, fleet_id, public_key, hostname, display_name, os, arch, agent_version,
                 online, last_seen, created_at, labels) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?10, ?11)",
                params![
                    m.id.to_string(),
                    m.fleet.to_string(),
                    m.public_key.to_bytes().as_slice(),
                    m.hostname.as_str(),
                    m.display_name(),
                    m.info.os(),
                    m.info.arch(),
                    m.info.version(),
                    m.last_heartbeat.map(sql_time),
                    sql_time(m.registered),
                    m.labels.to_string()
                ],
            )
        } else {
            self.conn.execute(
                "UPDATE machines SET hostname = ?2, display_name = ?3, os = ?4, arch = ?5, agent_version = ?6,
                 last_seen = ?7, labels = ?8 WHERE id = ?1",
                params![
                    m.id.to_string(),
                    m.hostname.as_str(),
                    m.display_name(),
                    m.info.os(),
                    m.info.arch(),
                    m.info.version(),
                    m.last_heartbeat.map(sql_time),
                    m.labels.to_string()
                ],
            )
        };
        match written {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(err, _))
                if err.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::HostnameTaken(m.hostname.to_string()))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Sets a machine's presence; `last_seen` moves to `now`.
    pub fn set_presence(
        &self,
        machine: MachineId,
        online: bool,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.store_presence(&[PresenceWrite {
            machine,
            online,
            last_seen: now,
        }])
    }

    /// Writes a batch of presence changes (a relay's [`cmdop_proto::presence::PresenceBook`]) in one
    /// transaction: one commit for the whole batch instead of one per heartbeat.
    pub fn store_presence(&self, writes: &[PresenceWrite]) -> Result<(), StoreError> {
        let transaction = self.conn.unchecked_transaction()?;
        {
            let mut update = transaction
                .prepare_cached("UPDATE machines SET online = ?2, last_seen = ?3 WHERE id = ?1")?;
            for write in writes {
                update.execute(params![
                    write.machine.to_string(),
                    write.online,
                    sql_time(write.last_seen)
                ])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// Marks every machine offline (at server start: no connection survives a restart).
    pub fn mark_all_offline(&self) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE machines SET online = 0 WHERE online = 1", [])?;
        Ok(())
    }

    /// One machine by id (as text, the way an admin types it).
    pub fn machine(&self, id: &str) -> Result<Option<Machine>, StoreError> {
        let Ok(id) = id.parse::<MachineId>() else {
            return Ok(None);
        };
        self.conn
            .query_row(
                &format!("SELECT {MACHINE_COLUMNS} FROM machines m WHERE m.id = ?1"),
                [id.to_string()],
                |r| Ok(machine_from_row(r)),
            )
            .optional()?
            .transpose()
    }

    /// The machines of a fleet an agent's registration depends on ([`FleetQuery`]): the one with its key and
    /// those whose names its hostname or display name could clash with, each found by index whatever the
    /// fleet's size.
    pub fn machines_for_registration(
        &self,
        query: &FleetQuery,
    ) -> Result<Vec<Machine>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&registration_query())?;
        let name = query.name.as_ref().map(|name| name.as_str());
        let rows = stmt.query_map(
            params![
                query.fleet.to_string(),
                query.public_key.to_bytes().as_slice(),
                query.hostname.as_str(),
                name
            ],
            |r| Ok(machine_from_row(r)),
        )?;
        rows.map(|row| row?).collect()
    }

    /// The machines of one fleet, by hostname.
    pub fn machines_of(&self, fleet: FleetId) -> Result<Vec<Machine>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {MACHINE_COLUMNS} FROM machines m WHERE m.fleet_id = ?1 ORDER BY m.hostname"
        ))?;
        let rows = stmt.query_map([fleet.to_string()], |r| Ok(machine_from_row(r)))?;
        rows.map(|row| row?).collect()
    }

    /// Admin view: every machine with its fleet, or those of the fleet named `fleet`; by fleet, then hostname.
    pub fn machines(&self, fleet: Option<&str>) -> Result<Vec<(Fleet, Machine)>, StoreError> {
        let fleets = match fleet {
            Some(name) => vec![self.require_fleet(name)?],
            None => self.fleets()?.into_iter().map(|r| r.fleet).collect(),
        };
        let mut all = Vec::new();
        for fleet in fleets {
            for machine in self.machines_of(fleet.id)? {
                all.push((fleet.clone(), machine));
            }
        }
        Ok(all)
    }

    /// Changes a machine's display name, as the relay's operator: cmdop-fleet's [`rename`] decides, with the
    /// operator's access to the machine's fleet.
    pub fn rename_machine(
        &self,
        id: &str,
        name: &str,
        now: Timestamp,
    ) -> Result<Machine, StoreError> {
        let display = DisplayName::parse(name).map_err(|reason| StoreError::InvalidName {
            what: "display name",
            given: name.to_owned(),
            reason,
        })?;
        let mut machine = self
            .machine(id)?
            .ok_or_else(|| StoreError::UnknownMachine(id.to_owned()))?;
        let fleet = self
            .fleets()?
            .into_iter()
            .map(|r| r.fleet)
            .find(|f| f.id == machine.fleet)
            .ok_or_else(|| StoreError::UnknownMachine(id.to_owned()))?;
        let before = machine.display_name().to_owned();
        let others = self.machines_of(fleet.id)?;
        rename(
            &FleetAccess::relay_operator(&fleet),
            &mut machine,
            display,
            &others,
        )
        .map_err(|err| match err {
            RenameError::NameClash(clash) => StoreError::NameClash(clash),
            other => StoreError::Corrupt {
                what: "machine's fleet",
                reason: other.to_string(),
            },
        })?;
        self.conn.execute(
            "UPDATE machines SET display_name = ?2 WHERE id = ?1",
            params![machine.id.to_string(), machine.display_name()],
        )?;
        self.append_audit(&AuditEntry {
            at: now,
            fleet: Some(machine.fleet),
            actor: "admin",
            action: "rename",
            outcome: "done",
            detail: &format!(
                "machine {} {before:?} -> {:?}",
                machine.id,
                machine.display_name()
            ),
        })?;
        Ok(machine)
    }
}

/// The query behind [`Store::machines_for_registration`]: one indexed lookup per name it may clash with
/// (migration 4 for the case-folded ones), joined with `UNION`. Written as one `WHERE … OR …`, SQLite scanned
/// the whole fleet instead (5.9 ms a login at 10,000 machines, against 0.02 ms). SQLite's `lower()` folds
/// ASCII only, as cmdop-fleet's name checks do. `?1` fleet, `?2` key, `?3` hostname, `?4` display name.
pub(super) fn registration_query() -> String {
    [
        "m.public_key = ?2",
        "lower(m.hostname) = lower(?3)",
        "lower(m.display_name) = lower(?3)",
        "lower(m.hostname) = lower(?4)",
        "lower(m.display_name) = lower(?4)",
    ]
    .map(|term| {
        format!("SELECT {MACHINE_COLUMNS} FROM machines m WHERE m.fleet_id = ?1 AND {term}")
    })
    .join(" UNION ")
}
