//! Helpers for the `cmdop-relay` admin verbs: duration parsing and the text and JSON views of store records.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use std::collections::HashMap;

use cmdop_fleet::{CredentialRecord, Fleet, FleetId, Label, Machine, Timestamp, User, UserId};

use crate::store::{AuditRecord, FleetRecord};

/// Why a duration text was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not `<number><unit>` with unit `s`, `m`, `h`, `d` or `w`.
    #[error("invalid duration {0:?}: use a number and a unit, e.g. 90m, 12h, 30d")]
    Invalid(String),
}

/// Parses `45s`, `90m`, `12h`, `30d`, `2w`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError::Invalid(text.to_owned());
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    if number == 0 {
        return Err(bad());
    }
    number
        .checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

/// Formats unix seconds as RFC 3339 UTC, or `-` for none.
pub fn format_time(at: Option<u64>) -> String {
    at.and_then(|secs| i64::try_from(secs).ok())
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// The agent key fingerprint shown for a machine (the cmdop-identity long form).
pub fn machine_fingerprint(machine: &Machine) -> String {
    machine.public_key.fingerprint().to_string()
}

/// Text table of fleets.
pub fn fleets_table(fleets: &[FleetRecord]) -> String {
    let mut out = String::from("NAME\tID\tCREATED\n");
    for record in fleets {
        let _ = writeln!(
            out,
            "{}\t{}\t{}",
            record.fleet.name,
            record.fleet.id,
            format_time(Some(record.created.as_unix_seconds()))
        );
    }
    out
}

/// The names the admin tables show for the ids credentials refer to.
#[derive(Debug, Default)]
pub struct Names {
    fleets: HashMap<FleetId, String>,
    users: HashMap<UserId, String>,
}

impl Names {
    /// Names from the store's fleets and users.
    pub fn new(fleets: &[FleetRecord], users: &[User]) -> Self {
        Self {
            fleets: fleets
                .iter()
                .map(|r| (r.fleet.id, r.fleet.name.to_string()))
                .collect(),
            users: users.iter().map(|u| (u.id, u.name.to_string())).collect(),
        }
    }

    fn fleet(&self, id: FleetId) -> String {
        self.fleets
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    fn user(&self, id: UserId) -> String {
        self.users
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }
}

/// Whether a credential counts as active at `now`: neither revoked nor expired.
pub fn is_active(credential: &CredentialRecord, now: Timestamp) -> bool {
    credential.standing(now).is_ok()
}

/// Text table of credentials.
pub fn credentials_table(
    credentials: &[CredentialRecord],
    names: &Names,
    now: Timestamp,
) -> String {
    let mut out = String::from("ID\tKIND\tROLE/USER\tFLEETS\tLABEL\tEXPIRES\tSTATUS\tLAST USED\n");
    for c in credentials {
        let (id, kind, who, fleets, label, expires, revoked, last_used) = match c {
            CredentialRecord::ApiKey(key) => (
                key.id,
                "api-key",
                key.role.as_str().to_owned(),
                vec![names.fleet(key.fleet)],
                key.label.as_ref(),
                key.expires,
                key.revoked,
                key.last_used,
            ),
            CredentialRecord::UserToken(token) => {
                let mut fleets: Vec<String> =
                    token.fleets.iter().map(|f| names.fleet(*f)).collect();
                fleets.sort();
                (
                    token.id,
                    "user-token",
                    names.user(token.user),
                    fleets,
                    token.label.as_ref(),
                    token.expires,
                    token.revoked,
                    token.last_used,
                )
            }
        };
        let status = if revoked.is_some() {
            "revoked"
        } else if !is_active(c, now) {
            "expired"
        } else {
            "active"
        };
        let seconds = |t: Option<Timestamp>| t.map(Timestamp::as_unix_seconds);
        let _ = writeln!(
            out,
            "{id}\t{kind}\t{who}\t{}\t{}\t{}\t{status}\t{}",
            fleets.join(","),
            label.map_or("-", Label::as_str),
            format_time(seconds(expires)),
            format_time(seconds(last_used)),
        );
    }
    out
}

/// JSON view of a machine: at least `id`, `hostname`, `name`, `fingerprint`, `online`, `last_seen`, `os`, `arch`.
pub fn machine_json(fleet: &Fleet, machine: &Machine) -> Value {
    json!({
        "id": machine.id.to_string(),
        "fleet": fleet.name.as_str(),
        "hostname": machine.hostname.as_str(),
        "name": machine.display_name(),
        "fingerprint": machine_fingerprint(machine),
        "public_key": machine.public_key.to_string(),
        "online": machine.online,
        "last_seen": machine.last_heartbeat.map(Timestamp::as_unix_seconds),
        "os": machine.info.os(),
        "arch": machine.info.arch(),
        "agent_version": machine.info.version(),
        "labels": machine.labels,
    })
}

/// Text table of machines.
pub fn machines_table(machines: &[(Fleet, Machine)]) -> String {
    let mut out = String::from(
        "ID\tFLEET\tHOSTNAME\tNAME\tSTATUS\tLAST SEEN\tOS/ARCH\tFINGERPRINT\tLABELS\n",
    );
    for (fleet, m) in machines {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}/{}\t{}\t{}",
            m.id,
            fleet.name,
            m.hostname,
            m.display_name(),
            if m.online { "online" } else { "offline" },
            format_time(m.last_heartbeat.map(Timestamp::as_unix_seconds)),
            m.info.os(),
            m.info.arch(),
            machine_fingerprint(m),
            if m.labels.is_empty() {
                "-".to_owned()
            } else {
                m.labels.to_string()
            },
        );
    }
    out
}

/// Text view of the audit log.
pub fn audit_table(records: &[AuditRecord]) -> String {
    let mut out = String::new();
    for r in records {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.seq,
            format_time(Some(r.at)),
            r.fleet.as_deref().unwrap_or("-"),
            r.actor,
            r.action,
            r.outcome,
            r.detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            parse_duration("12h").unwrap(),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("45s").unwrap(), Duration::from_secs(45));
        for bad in [
            "",
            "d",
            "10",
            "10y",
            "-1d",
            "0d",
            "99999999999999999999d",
            "1.5h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(format_time(Some(0)), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(None), "-");
    }
}
