//! Helpers for the `cmdop-relay` admin verbs: duration parsing and the text and JSON views of store records.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::store::{AuditRecord, CredentialKind, CredentialRecord, FleetRecord, MachineRecord};

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
pub fn machine_fingerprint(machine: &MachineRecord) -> String {
    cmdop_identity::PublicKey::from_bytes(&machine.public_key)
        .map(|key| key.fingerprint().to_string())
        .unwrap_or_else(|_| "invalid-key".to_owned())
}

/// Text table of fleets.
pub fn fleets_table(fleets: &[FleetRecord]) -> String {
    let mut out = String::from("NAME\tID\tCREATED\n");
    for fleet in fleets {
        let _ = writeln!(
            out,
            "{}\t{}\t{}",
            fleet.name,
            fleet.id,
            format_time(Some(fleet.created_at))
        );
    }
    out
}

/// Text table of credentials.
pub fn credentials_table(credentials: &[CredentialRecord], now: u64) -> String {
    let mut out = String::from("ID\tKIND\tROLE/USER\tFLEETS\tLABEL\tEXPIRES\tSTATUS\tLAST USED\n");
    for c in credentials {
        let kind = match c.kind {
            CredentialKind::UserToken => "user-token",
            _ => "api-key",
        };
        let who = c
            .role
            .map(|r| r.as_str().to_owned())
            .or_else(|| c.user.clone())
            .unwrap_or_default();
        let status = if c.revoked_at.is_some() {
            "revoked"
        } else if c.expires_at.is_some_and(|at| at <= now) {
            "expired"
        } else {
            "active"
        };
        let _ = writeln!(
            out,
            "{}\t{kind}\t{who}\t{}\t{}\t{}\t{status}\t{}",
            c.id,
            c.fleets.join(","),
            c.label.as_deref().unwrap_or("-"),
            format_time(c.expires_at),
            format_time(c.last_used_at),
        );
    }
    out
}

/// JSON view of a machine: at least `id`, `hostname`, `name`, `fingerprint`, `online`, `last_seen`, `os`, `arch`.
pub fn machine_json(machine: &MachineRecord) -> Value {
    json!({
        "id": machine.id.to_string(),
        "fleet": machine.fleet,
        "hostname": machine.hostname,
        "name": machine.name,
        "fingerprint": machine_fingerprint(machine),
        "public_key": hex::encode(machine.public_key),
        "online": machine.online,
        "last_seen": machine.last_seen,
        "os": machine.os,
        "arch": machine.arch,
        "agent_version": machine.agent_version,
    })
}

/// Text table of machines.
pub fn machines_table(machines: &[MachineRecord]) -> String {
    let mut out =
        String::from("ID\tFLEET\tHOSTNAME\tNAME\tSTATUS\tLAST SEEN\tOS/ARCH\tFINGERPRINT\n");
    for m in machines {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}/{}\t{}",
            m.id,
            m.fleet,
            m.hostname,
            m.name,
            if m.online { "online" } else { "offline" },
            format_time(m.last_seen),
            m.os,
            m.arch,
            machine_fingerprint(m),
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
