//! Versioned schema migrations; `PRAGMA user_version` holds how many have been applied.
//!
//! Append new migrations; never edit one that has shipped.

/// Migration `i` brings the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: fleets, credentials, machines, the audit log.
    r"
CREATE TABLE fleets (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    -- Seed of the fleet's trust key (signs client capabilities). Protected by the file's 0600 mode.
    trust_seed  BLOB NOT NULL CHECK (length(trust_seed) = 32),
    created_at  INTEGER NOT NULL
);
CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    fleet_id     TEXT NOT NULL REFERENCES fleets(id),
    role         TEXT NOT NULL CHECK (role IN ('agent', 'member', 'admin')),
    label        TEXT,
    secret_hash  BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER
);
CREATE TABLE user_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id),
    label        TEXT,
    secret_hash  BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER
);
CREATE TABLE token_fleets (
    token_id  TEXT NOT NULL REFERENCES user_tokens(id),
    fleet_id  TEXT NOT NULL REFERENCES fleets(id),
    PRIMARY KEY (token_id, fleet_id)
);
CREATE TABLE machines (
    id             TEXT PRIMARY KEY,
    fleet_id       TEXT NOT NULL REFERENCES fleets(id),
    public_key     BLOB NOT NULL CHECK (length(public_key) = 32),
    hostname       TEXT NOT NULL,
    display_name   TEXT NOT NULL,
    os             TEXT NOT NULL,
    arch           TEXT NOT NULL,
    agent_version  TEXT NOT NULL,
    online         INTEGER NOT NULL DEFAULT 0,
    last_seen      INTEGER,
    created_at     INTEGER NOT NULL,
    UNIQUE (fleet_id, public_key),
    UNIQUE (fleet_id, hostname)
);
CREATE TABLE audit_log (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    fleet_id TEXT,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE INDEX audit_log_fleet ON audit_log (fleet_id, seq);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
",
    // 2: machine labels (`cmdop-agent run --label role=web`), as the agent last reported them: `key=value`
    // pairs separated by spaces, the text form of cmdop-fleet's MachineLabels.
    r"
ALTER TABLE machines ADD COLUMN labels TEXT NOT NULL DEFAULT '';
",
    // 3: the fleet lock. The relay stores what admins sign and agents prove, and holds no key that could sign
    // any of it; agents and clients verify it all again against the fleet key they pinned.
    r"
CREATE TABLE fleet_authority (
    fleet_id    TEXT NOT NULL REFERENCES fleets(id),
    serial      INTEGER NOT NULL CHECK (serial >= 1),
    state       BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (fleet_id, serial)
);
CREATE TABLE revocation_lists (
    fleet_id    TEXT PRIMARY KEY REFERENCES fleets(id),
    serial      INTEGER NOT NULL CHECK (serial >= 1),
    list        BLOB NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE machine_certificates (
    machine_id     TEXT PRIMARY KEY REFERENCES machines(id),
    fleet_id       TEXT NOT NULL REFERENCES fleets(id),
    certificate    BLOB NOT NULL,
    enrolment_key  BLOB CHECK (enrolment_key IS NULL OR length(enrolment_key) = 32),
    created_at     INTEGER NOT NULL
);
CREATE TABLE member_certificates (
    fleet_id     TEXT NOT NULL REFERENCES fleets(id),
    client_key   BLOB NOT NULL CHECK (length(client_key) = 32),
    certificate  BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (fleet_id, client_key)
);
CREATE TABLE enrolment_keys (
    fleet_id       TEXT NOT NULL REFERENCES fleets(id),
    public_key     BLOB NOT NULL CHECK (length(public_key) = 32),
    authorization  BLOB NOT NULL,
    uses           INTEGER NOT NULL CHECK (uses >= 0),
    used           INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (fleet_id, public_key)
);
CREATE TABLE client_keys (
    fleet_id    TEXT NOT NULL REFERENCES fleets(id),
    public_key  BLOB NOT NULL CHECK (length(public_key) = 32),
    principal   TEXT NOT NULL,
    last_seen   INTEGER NOT NULL,
    PRIMARY KEY (fleet_id, public_key)
);
CREATE TABLE admin_candidates (
    fleet_id    TEXT NOT NULL REFERENCES fleets(id),
    public_key  BLOB NOT NULL CHECK (length(public_key) = 32),
    offered_at  INTEGER NOT NULL,
    PRIMARY KEY (fleet_id, public_key)
);
",
    // 4: case-folded name indexes, so that an agent's login finds the machines its names could clash with
    // (cmdop-fleet's check_names) by index instead of reading the whole fleet.
    r"
CREATE INDEX machines_hostname_folded ON machines (fleet_id, lower(hostname));
CREATE INDEX machines_display_name_folded ON machines (fleet_id, lower(display_name));
",
];
