//! The fleet lock in the store: the authority chain, the revocation list, machine and member certificates,
//! enrolment keys with their use counts, and the client and admin keys the admin tools look up by
//! fingerprint. The store keeps bytes the admins signed; cmdop-proto's `lock` decides what may be stored.

use cmdop_fleet::{FleetId, MachineId, Timestamp};
use cmdop_identity::PublicKey;
use cmdop_proto::lock::{StoredEnrolmentKey, StoredLock};
use cmdop_proto::wire::{KeyBytes, LockItem};
use rusqlite::{OptionalExtension, params};

use super::rows::{parse_id, sql_time};
use super::{Store, StoreError};

/// How the store says a key column holds a key.
fn key_from(bytes: &[u8], what: &'static str) -> Result<PublicKey, StoreError> {
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        what,
        reason: "it is not 32 bytes".to_owned(),
    })?;
    PublicKey::from_bytes(&bytes).map_err(|err| StoreError::Corrupt {
        what,
        reason: err.to_string(),
    })
}

impl Store {
    /// The fleet's authority chain and latest revocation list.
    pub fn stored_lock(&self, fleet: FleetId) -> Result<StoredLock, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT state FROM fleet_authority WHERE fleet_id = ?1 ORDER BY serial")?;
        let authority = stmt
            .query_map([fleet.to_string()], |r| r.get::<_, Vec<u8>>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let revocations = self
            .conn
            .query_row(
                "SELECT list FROM revocation_lists WHERE fleet_id = ?1",
                [fleet.to_string()],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?;
        Ok(StoredLock {
            authority,
            revocations,
        })
    }

    /// Appends the next authority state (`serial` must be the next one; a racing writer loses on the primary
    /// key).
    pub fn append_authority(
        &self,
        fleet: FleetId,
        serial: u64,
        state: &[u8],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO fleet_authority (fleet_id, serial, state, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                fleet.to_string(),
                i64::try_from(serial).unwrap_or(i64::MAX),
                state,
                sql_time(now)
            ],
        )?;
        Ok(())
    }

    /// Replaces the revocation list with a newer one (the serial only grows).
    pub fn save_revocations(
        &self,
        fleet: FleetId,
        serial: u64,
        list: &[u8],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO revocation_lists (fleet_id, serial, list, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (fleet_id) DO UPDATE SET serial = excluded.serial, list = excluded.list,
             updated_at = excluded.updated_at WHERE excluded.serial > revocation_lists.serial",
            params![
                fleet.to_string(),
                i64::try_from(serial).unwrap_or(i64::MAX),
                list,
                sql_time(now)
            ],
        )?;
        Ok(())
    }

    /// Stores (or replaces) a machine's certificate.
    pub fn save_machine_certificate(
        &self,
        fleet: FleetId,
        machine: MachineId,
        certificate: &[u8],
        enrolment_key: Option<PublicKey>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO machine_certificates (machine_id, fleet_id, certificate, enrolment_key, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (machine_id) DO UPDATE SET certificate = excluded.certificate,
             enrolment_key = excluded.enrolment_key, created_at = excluded.created_at",
            params![
                machine.to_string(),
                fleet.to_string(),
                certificate,
                enrolment_key.map(|k| k.to_bytes().to_vec()),
                sql_time(now)
            ],
        )?;
        Ok(())
    }

    /// The stored machine certificates of a fleet, by machine.
    pub fn machine_certificates(
        &self,
        fleet: FleetId,
    ) -> Result<Vec<(MachineId, Vec<u8>)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT machine_id, certificate FROM machine_certificates WHERE fleet_id = ?1 ORDER BY machine_id",
        )?;
        let rows = stmt.query_map([fleet.to_string()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        rows.map(|row| {
            let (id, certificate) = row?;
            Ok((parse_id::<MachineId>("machine id", &id)?, certificate))
        })
        .collect()
    }

    /// Stores (or replaces) a member certificate.
    pub fn save_member_certificate(
        &self,
        fleet: FleetId,
        client_key: PublicKey,
        certificate: &[u8],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO member_certificates (fleet_id, client_key, certificate, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (fleet_id, client_key) DO UPDATE SET certificate = excluded.certificate,
             created_at = excluded.created_at",
            params![
                fleet.to_string(),
                client_key.to_bytes().as_slice(),
                certificate,
                sql_time(now)
            ],
        )?;
        Ok(())
    }

    /// The member certificate stored for a client key.
    pub fn member_certificate(
        &self,
        fleet: FleetId,
        client_key: &PublicKey,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT certificate FROM member_certificates WHERE fleet_id = ?1 AND client_key = ?2",
                params![fleet.to_string(), client_key.to_bytes().as_slice()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Stores an enrolment authorization, meant for `uses` machines.
    pub fn save_enrolment_key(
        &self,
        fleet: FleetId,
        key: PublicKey,
        authorization: &[u8],
        uses: u32,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO enrolment_keys (fleet_id, public_key, authorization, uses, used, created_at)
             VALUES (?1, ?2, ?3, ?4, 0, ?5)
             ON CONFLICT (fleet_id, public_key) DO UPDATE SET authorization = excluded.authorization,
             uses = excluded.uses",
            params![
                fleet.to_string(),
                key.to_bytes().as_slice(),
                authorization,
                uses,
                sql_time(now)
            ],
        )?;
        Ok(())
    }

    /// An enrolment key's authorization and use count.
    pub fn enrolment_key(
        &self,
        fleet: FleetId,
        key: &PublicKey,
    ) -> Result<Option<StoredEnrolmentKey>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT authorization, used FROM enrolment_keys WHERE fleet_id = ?1 AND public_key = ?2",
                params![fleet.to_string(), key.to_bytes().as_slice()],
                |r| {
                    Ok(StoredEnrolmentKey {
                        authorization: r.get(0)?,
                        used: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Stores an enrolled machine's certificate and counts one use of its enrolment key, in one transaction:
    /// `false` (and nothing stored) if the key has no use left, so concurrent enrolments never exceed it.
    pub fn enrol_machine(
        &mut self,
        fleet: FleetId,
        machine: MachineId,
        enrolment_key: PublicKey,
        certificate: &[u8],
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let counted = tx.execute(
            "UPDATE enrolment_keys SET used = used + 1 WHERE fleet_id = ?1 AND public_key = ?2 AND used < uses",
            params![fleet.to_string(), enrolment_key.to_bytes().as_slice()],
        )?;
        if counted == 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO machine_certificates (machine_id, fleet_id, certificate, enrolment_key, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (machine_id) DO UPDATE SET certificate = excluded.certificate,
             enrolment_key = excluded.enrolment_key, created_at = excluded.created_at",
            params![
                machine.to_string(),
                fleet.to_string(),
                certificate,
                enrolment_key.to_bytes().as_slice(),
                sql_time(now)
            ],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Remembers that `key` logged in with a credential covering `fleet` (what `add-member FP` looks up).
    pub fn record_client_key(
        &self,
        fleet: FleetId,
        key: &PublicKey,
        principal: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO client_keys (fleet_id, public_key, principal, last_seen) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (fleet_id, public_key) DO UPDATE SET principal = excluded.principal,
             last_seen = excluded.last_seen",
            params![
                fleet.to_string(),
                key.to_bytes().as_slice(),
                principal,
                sql_time(now)
            ],
        )?;
        Ok(())
    }

    /// Remembers a key offered as a new admin key.
    pub fn save_admin_candidate(
        &self,
        fleet: FleetId,
        key: &PublicKey,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO admin_candidates (fleet_id, public_key, offered_at) VALUES (?1, ?2, ?3)",
            params![fleet.to_string(), key.to_bytes().as_slice(), sql_time(now)],
        )?;
        Ok(())
    }

    /// Everything the store holds for a fleet's lock besides the chain and the list, for `lock status` and
    /// the admin verbs that look keys up by fingerprint.
    pub fn lock_items(&self, fleet: FleetId) -> Result<Vec<LockItem>, StoreError> {
        let mut items: Vec<LockItem> = self
            .machine_certificates(fleet)?
            .into_iter()
            .map(|(_, certificate)| LockItem::MachineCertificate(certificate))
            .collect();
        let blobs = |sql: &str| -> Result<Vec<Vec<u8>>, StoreError> {
            let mut stmt = self.conn.prepare(sql)?;
            let rows = stmt.query_map([fleet.to_string()], |r| r.get::<_, Vec<u8>>(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        items.extend(
            blobs("SELECT certificate FROM member_certificates WHERE fleet_id = ?1 ORDER BY created_at")?
                .into_iter()
                .map(LockItem::MemberCertificate),
        );
        let mut stmt = self.conn.prepare(
            "SELECT authorization, used FROM enrolment_keys WHERE fleet_id = ?1 ORDER BY created_at",
        )?;
        let keys = stmt.query_map([fleet.to_string()], |r| {
            Ok(LockItem::EnrolmentKey {
                authorization: r.get(0)?,
                used: r.get(1)?,
            })
        })?;
        items.extend(keys.collect::<Result<Vec<_>, _>>()?);
        let mut stmt = self.conn.prepare(
            "SELECT public_key, principal FROM client_keys WHERE fleet_id = ?1 ORDER BY last_seen DESC",
        )?;
        let clients = stmt.query_map([fleet.to_string()], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in clients {
            let (key, principal) = row?;
            items.push(LockItem::ClientKey {
                public_key: KeyBytes(key_from(&key, "client key")?.to_bytes()),
                principal,
            });
        }
        for key in blobs(
            "SELECT public_key FROM admin_candidates WHERE fleet_id = ?1 ORDER BY offered_at",
        )? {
            items.push(LockItem::AdminCandidate(KeyBytes(
                key_from(&key, "admin key candidate")?.to_bytes(),
            )));
        }
        Ok(items)
    }
}
