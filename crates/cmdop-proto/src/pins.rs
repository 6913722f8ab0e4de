//! What a client pins, sans-IO: the lines of its `known_machines` and `fleet_locks` files, and the decision
//! whether a machine the relay answers with is the one pinned. `cmdop-client` reads and writes the files.
//!
//! ```text
//! known_machines   <relay fingerprint> <fleet id> <hostname> <machine id> <public key>     (current)
//!                  <machine id> <public key> <hostname>                                     (legacy, read)
//! fleet_locks      <relay fingerprint> <fleet id> <fleet key> <authority serial> <revocation serial>
//! ```
//!
//! `#` starts a comment line; blank lines are skipped. A line that is neither is an error naming the line,
//! never skipped: a cut or corrupted pin file must not silently turn pinned machines into first contacts.
//!
//! Pins are keyed by (relay, fleet, hostname): the name a person asks for, not only the id the relay picks. A
//! relay that answers a pinned hostname with another id or key is refused, whatever id it uses. Legacy lines
//! (keyed by machine id only, from before this rule) are still honoured by id and migrated: a match appends
//! the current form.

use std::fmt;

use cmdop_fleet::{FleetId, Hostname, MachineId};
use cmdop_identity::{Fingerprint, PublicKey};

use crate::RelayFingerprint;

/// One pinned machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachinePin {
    /// The current form, keyed by relay, fleet and hostname.
    Current(PinnedMachine),
    /// A line written before pins were keyed by hostname: machine id, key, and the hostname at the time
    /// (informational).
    Legacy {
        /// The machine id.
        machine: MachineId,
        /// Its pinned key.
        key: PublicKey,
        /// The hostname the relay reported then, as written.
        hostname: String,
    },
}

/// A machine as the relay answers with it, and as a current pin line holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedMachine {
    /// The relay's certificate fingerprint.
    pub relay: RelayFingerprint,
    /// The fleet.
    pub fleet: FleetId,
    /// The hostname.
    pub hostname: Hostname,
    /// The machine id.
    pub machine: MachineId,
    /// The agent key.
    pub key: PublicKey,
}

impl fmt::Display for PinnedMachine {
    /// The line, without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {}",
            self.relay, self.fleet, self.hostname, self.machine, self.key
        )
    }
}

/// Why a line of a pin file cannot be read.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinLineError {
    /// Neither form's number of fields.
    #[error(
        "expected `<relay fingerprint> <fleet id> <hostname> <machine id> <public key>`; the line is cut or not a pin"
    )]
    Shape,
    /// A field does not parse.
    #[error("invalid {field}: {reason}")]
    Field {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

fn field<T, E: fmt::Display>(name: &'static str, result: Result<T, E>) -> Result<T, PinLineError> {
    result.map_err(|err| PinLineError::Field {
        field: name,
        reason: err.to_string(),
    })
}

/// One line of `known_machines`: `None` for a blank or comment line.
pub fn parse_machine_line(line: &str) -> Result<Option<MachinePin>, PinLineError> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.as_slice() {
        [relay, fleet, hostname, machine, key] => Ok(Some(MachinePin::Current(PinnedMachine {
            relay: field("relay fingerprint", relay.parse::<RelayFingerprint>())?,
            fleet: field("fleet id", fleet.parse::<FleetId>())?,
            hostname: field("hostname", Hostname::parse(hostname))?,
            machine: field("machine id", machine.parse::<MachineId>())?,
            key: field("public key", key.parse::<PublicKey>())?,
        }))),
        [machine, key, hostname] => Ok(Some(MachinePin::Legacy {
            machine: field("machine id", machine.parse::<MachineId>())?,
            key: field("public key", key.parse::<PublicKey>())?,
            hostname: (*hostname).to_owned(),
        })),
        _ => Err(PinLineError::Shape),
    }
}

/// Every pin of a `known_machines` text with its line number (from 1), or the first line that cannot be read.
pub fn parse_known_machines(text: &str) -> Result<Vec<(usize, MachinePin)>, (usize, PinLineError)> {
    let mut pins = Vec::new();
    for (index, line) in text.lines().enumerate() {
        match parse_machine_line(line) {
            Ok(Some(pin)) => pins.push((index + 1, pin)),
            Ok(None) => {}
            Err(err) => return Err((index + 1, err)),
        }
    }
    Ok(pins)
}

/// What the pins say about a machine the relay answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinDecision {
    /// Pinned exactly so.
    Known,
    /// Pinned by a legacy line (same id and key) or under another hostname of the same machine (same id and
    /// key): write the current line, then go on.
    Append,
    /// Nothing is pinned for this hostname, id or key: a first contact.
    Unknown,
    /// The answer contradicts a pin.
    Conflict(Box<PinConflict>),
}

/// How an answer contradicts a pin; every variant names the line to remove if the change is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinConflict {
    /// The hostname is pinned to another machine id or key.
    Hostname {
        /// The line.
        line: usize,
        /// What is pinned there.
        pinned: PinnedMachine,
    },
    /// The machine id is pinned with another key.
    Key {
        /// The line.
        line: usize,
        /// The pinned key.
        pinned: PublicKey,
        /// The hostname the pin was written with.
        hostname: String,
    },
    /// The key is pinned for another machine id of the fleet: the relay presents a known machine under a new
    /// identity (and so, possibly, under a name that machine does not have).
    KeyElsewhere {
        /// The line.
        line: usize,
        /// What is pinned there.
        pinned: PinnedMachine,
    },
}

impl PinConflict {
    /// The line to remove.
    pub fn line(&self) -> usize {
        match self {
            Self::Hostname { line, .. }
            | Self::Key { line, .. }
            | Self::KeyElsewhere { line, .. } => *line,
        }
    }

    /// What was pinned, as a person compares it: the machine and its key's fingerprint.
    pub fn pinned_description(&self) -> String {
        match self {
            Self::Hostname { pinned, .. } | Self::KeyElsewhere { pinned, .. } => format!(
                "machine {} {} key {}",
                pinned.hostname,
                pinned.machine,
                pinned.key.fingerprint()
            ),
            Self::Key {
                pinned, hostname, ..
            } => format!(
                "key {} (pinned as {})",
                pinned.fingerprint(),
                crate::display::escape(hostname)
            ),
        }
    }

    /// The fingerprint of the pinned key.
    pub fn pinned_fingerprint(&self) -> Fingerprint {
        match self {
            Self::Hostname { pinned, .. } | Self::KeyElsewhere { pinned, .. } => {
                pinned.key.fingerprint()
            }
            Self::Key { pinned, .. } => pinned.fingerprint(),
        }
    }
}

/// Checks the relay's answer `offered` against `pins`. In order: a pin for its (relay, fleet, hostname)
/// must name the same id and key; a pin of its id (current or legacy) must have the same key; its key must not
/// be pinned for another id of the fleet. Then: known, or to be appended (migrated legacy line, same machine
/// under a new hostname), or unknown.
pub fn decide(pins: &[(usize, MachinePin)], offered: &PinnedMachine) -> PinDecision {
    let same_contour =
        |pin: &PinnedMachine| pin.relay == offered.relay && pin.fleet == offered.fleet;
    let mut known = false;
    let mut matched_other = false;
    for (line, pin) in pins {
        match pin {
            MachinePin::Current(pin) if same_contour(pin) => {
                if pin.hostname == offered.hostname && pin.machine != offered.machine {
                    return PinDecision::Conflict(Box::new(PinConflict::Hostname {
                        line: *line,
                        pinned: pin.clone(),
                    }));
                }
                if pin.machine == offered.machine && pin.key != offered.key {
                    return PinDecision::Conflict(Box::new(PinConflict::Key {
                        line: *line,
                        pinned: pin.key,
                        hostname: pin.hostname.to_string(),
                    }));
                }
                if pin.key == offered.key && pin.machine != offered.machine {
                    return PinDecision::Conflict(Box::new(PinConflict::KeyElsewhere {
                        line: *line,
                        pinned: pin.clone(),
                    }));
                }
                if pin.machine == offered.machine {
                    if pin.hostname == offered.hostname {
                        known = true;
                    } else {
                        matched_other = true;
                    }
                }
            }
            MachinePin::Legacy {
                machine,
                key,
                hostname,
            } if *machine == offered.machine => {
                if *key != offered.key {
                    return PinDecision::Conflict(Box::new(PinConflict::Key {
                        line: *line,
                        pinned: *key,
                        hostname: hostname.clone(),
                    }));
                }
                matched_other = true;
            }
            _ => {}
        }
    }
    if known {
        PinDecision::Known
    } else if matched_other {
        PinDecision::Append
    } else {
        PinDecision::Unknown
    }
}

/// One line of `fleet_locks`: the fleet key a client pinned for a fleet of a relay, and the highest serials it
/// has verified (so a relay cannot roll the fleet's authority or revocation list back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetPin {
    /// The relay's certificate fingerprint.
    pub relay: RelayFingerprint,
    /// The fleet.
    pub fleet: FleetId,
    /// The fleet key (the root of the fleet's authority chain).
    pub fleet_key: PublicKey,
    /// The highest authority serial verified.
    pub authority_serial: u64,
    /// The highest revocation-list serial verified (0: none yet).
    pub revocation_serial: u64,
}

impl fmt::Display for FleetPin {
    /// The line, without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {}",
            self.relay, self.fleet, self.fleet_key, self.authority_serial, self.revocation_serial
        )
    }
}

/// One line of `fleet_locks`: `None` for a blank or comment line.
pub fn parse_fleet_line(line: &str) -> Result<Option<FleetPin>, PinLineError> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [relay, fleet, key, authority, revocation] = fields.as_slice() else {
        return Err(PinLineError::Shape);
    };
    Ok(Some(FleetPin {
        relay: field("relay fingerprint", relay.parse::<RelayFingerprint>())?,
        fleet: field("fleet id", fleet.parse::<FleetId>())?,
        fleet_key: field("fleet key", key.parse::<PublicKey>())?,
        authority_serial: field("authority serial", authority.parse::<u64>())?,
        revocation_serial: field("revocation serial", revocation.parse::<u64>())?,
    }))
}

/// Every pin of a `fleet_locks` text with its line number, or the first line that cannot be read.
pub fn parse_fleet_locks(text: &str) -> Result<Vec<(usize, FleetPin)>, (usize, PinLineError)> {
    let mut pins = Vec::new();
    for (index, line) in text.lines().enumerate() {
        match parse_fleet_line(line) {
            Ok(Some(pin)) => pins.push((index + 1, pin)),
            Ok(None) => {}
            Err(err) => return Err((index + 1, err)),
        }
    }
    Ok(pins)
}

#[cfg(test)]
mod tests {
    use cmdop_identity::{Identity, Seed};
    use proptest::prelude::*;

    use super::*;

    fn key(byte: u8) -> PublicKey {
        Identity::from_seed(&Seed::from_bytes([byte; 32])).public_key()
    }

    fn offered(host: &str, machine: u8, k: u8) -> PinnedMachine {
        PinnedMachine {
            relay: RelayFingerprint::from_bytes([1; 32]),
            fleet: FleetId::from_bytes([2; 16]),
            hostname: Hostname::parse(host).unwrap(),
            machine: MachineId::from_bytes([machine; 16]),
            key: key(k),
        }
    }

    fn pins(lines: &[String]) -> Vec<(usize, MachinePin)> {
        parse_known_machines(&lines.join("\n")).unwrap()
    }

    #[test]
    fn lines_round_trip_and_legacy_lines_are_read() {
        let pin = offered("web-1", 3, 4);
        assert_eq!(
            parse_machine_line(&pin.to_string()).unwrap(),
            Some(MachinePin::Current(pin.clone()))
        );
        let legacy = format!("{} {} web-1", pin.machine, pin.key);
        assert!(matches!(
            parse_machine_line(&legacy).unwrap(),
            Some(MachinePin::Legacy { hostname, .. }) if hostname == "web-1"
        ));
        assert_eq!(parse_machine_line("  # note").unwrap(), None);
        assert_eq!(parse_machine_line("").unwrap(), None);
    }

    #[test]
    fn unreadable_lines_are_errors_with_their_number() {
        let good = offered("web-1", 3, 4).to_string();
        let cut = &good[..good.len() - 10];
        assert_eq!(
            parse_known_machines(&format!("# pins\n{good}\n{cut}\n"))
                .unwrap_err()
                .0,
            3
        );
        assert!(matches!(
            parse_known_machines("garbage\n").unwrap_err(),
            (1, PinLineError::Shape)
        ));
        let bad_host = good.replace("web-1", "web_1!");
        assert!(matches!(
            parse_known_machines(&bad_host).unwrap_err(),
            (
                1,
                PinLineError::Field {
                    field: "hostname",
                    ..
                }
            )
        ));
    }

    #[test]
    fn a_pinned_hostname_answered_by_another_id_or_key_is_a_conflict() {
        let pinned = offered("web-1", 3, 4);
        let file = pins(&[pinned.to_string()]);
        assert_eq!(decide(&file, &pinned), PinDecision::Known);
        assert!(matches!(
            decide(&file, &offered("web-1", 9, 9)),
            PinDecision::Conflict(c) if matches!(*c, PinConflict::Hostname { line: 1, .. })
        ));
        assert!(matches!(
            decide(&file, &offered("web-1", 3, 9)),
            PinDecision::Conflict(c) if matches!(*c, PinConflict::Key { line: 1, .. })
        ));
        // The same machine under a new hostname: pin that too.
        assert_eq!(decide(&file, &offered("web-01", 3, 4)), PinDecision::Append);
        // The pinned key under a new id, whatever the name: a known machine in disguise.
        assert!(matches!(
            decide(&file, &offered("db-1", 8, 4)),
            PinDecision::Conflict(c) if matches!(*c, PinConflict::KeyElsewhere { .. })
        ));
        assert_eq!(decide(&file, &offered("db-1", 8, 8)), PinDecision::Unknown);
        // Another relay or fleet is another contour.
        let elsewhere = PinnedMachine {
            fleet: FleetId::from_bytes([7; 16]),
            ..offered("web-1", 9, 9)
        };
        assert_eq!(decide(&file, &elsewhere), PinDecision::Unknown);
    }

    #[test]
    fn legacy_pins_are_honoured_by_id_and_migrated() {
        let pinned = offered("web-1", 3, 4);
        let file = pins(&[format!("{} {} web-1", pinned.machine, pinned.key)]);
        assert_eq!(decide(&file, &pinned), PinDecision::Append);
        assert!(matches!(
            decide(&file, &offered("web-1", 3, 5)),
            PinDecision::Conflict(c) if matches!(*c, PinConflict::Key { line: 1, .. })
        ));
    }

    #[test]
    fn fleet_pins_round_trip() {
        let pin = FleetPin {
            relay: RelayFingerprint::from_bytes([1; 32]),
            fleet: FleetId::from_bytes([2; 16]),
            fleet_key: key(5),
            authority_serial: 3,
            revocation_serial: 0,
        };
        assert_eq!(parse_fleet_line(&pin.to_string()).unwrap(), Some(pin));
        assert!(matches!(
            parse_fleet_locks("a b c d x").unwrap_err(),
            (1, PinLineError::Field { .. })
        ));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,300}") {
            let _ = parse_known_machines(&text);
            let _ = parse_fleet_locks(&text);
        }
    }
}
