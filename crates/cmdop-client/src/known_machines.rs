//! What a client pins, like ssh's `known_hosts`: machine keys (`known_machines`) and, for locked fleets, the
//! fleet key with the newest authority and revocation serials seen (`fleet_locks`). Both files live in one
//! directory; the line formats and the decision rules are `cmdop_proto::pins` (sans-IO).
//!
//! In an unlocked fleet a machine is pinned by (relay fingerprint, fleet, hostname). A first contact is
//! confirmed by the person (or accepted by policy, [`FirstContact`]); from then on the end-to-end handshake uses
//! the pinned key, and a pinned hostname answered by another id or key is a loud refusal naming both
//! fingerprints and the line to remove. Lines written before pins were keyed by hostname (`<machine id>
//! <public key> <hostname>`) are still honoured by id and migrated on use. A line that cannot be read is an
//! error naming the file and line, never skipped.

use std::fmt;
use std::fs;
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cmdop_proto::pins::{
    FleetPin, MachinePin, PinConflict, PinDecision, PinLineError, PinnedMachine, decide,
    parse_fleet_locks, parse_known_machines,
};

/// The machine-pin file name the `cmdop` CLI uses inside its client directory.
pub const FILE_NAME: &str = "known_machines";
/// The fleet-lock pin file name, beside it.
pub const FLEET_LOCKS_FILE: &str = "fleet_locks";

/// What the pin store says about a machine's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinStatus {
    /// The key matches the pinned one.
    Known,
    /// No key was pinned; this one has just been added (first contact: worth telling the person).
    Added,
    /// The machine's key is vouched for by a certificate of its locked fleet; nothing is pinned per machine.
    Certified,
}

/// What to do when a machine is met for the first time (nothing pinned for its hostname, id or key).
#[derive(Clone, Default)]
pub enum FirstContact {
    /// Refuse, with an error that says how to accept it.
    #[default]
    Refuse,
    /// Pin it and go on (scripts; ssh's `StrictHostKeyChecking=accept-new`).
    AcceptNew,
    /// Ask someone (a person on a terminal): `true` pins it and goes on. Called on a blocking thread.
    Ask(Arc<dyn Fn(&NewMachine) -> bool + Send + Sync>),
}

impl fmt::Debug for FirstContact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Refuse => "Refuse",
            Self::AcceptNew => "AcceptNew",
            Self::Ask(_) => "Ask(..)",
        })
    }
}

/// A machine met for the first time, as a person is asked about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMachine {
    /// The machine as the relay answered.
    pub machine: PinnedMachine,
    /// The pin file it would be added to.
    pub path: PathBuf,
}

impl fmt::Display for NewMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.machine;
        write!(
            f,
            "the authenticity of machine {} ({}) in fleet {} on relay {} can't be established.\n\
             Its key fingerprint is {}; compare it with `cmdop-agent identity show` on the machine.",
            m.hostname,
            m.machine,
            m.fleet,
            m.relay,
            m.key.fingerprint()
        )
    }
}

/// Why the pin store refused a machine or could not be used. Nothing has been sent to the machine.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum KnownMachinesError {
    /// A pin file exists but cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The pin file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A line of a pin file cannot be read (cut, garbage); pins are never skipped.
    #[error("{}:{line}: cannot read this pin: {reason}; fix the line or remove it (nothing is skipped)", path.display())]
    Unreadable {
        /// The pin file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: PinLineError,
    },
    /// The relay's answer contradicts a pin: an impersonation, or a re-installed machine.
    #[error("{0}")]
    Conflict(Box<Conflict>),
    /// A first contact that policy refuses.
    #[error(
        "{0}\nNothing was sent to it. To trust it, confirm it on a terminal, or accept new machines explicitly (cmdop: --accept-new)."
    )]
    FirstContact(Box<NewMachine>),
    /// A first contact the person declined.
    #[error("machine {} was not trusted; nothing was sent to it", .0.machine.hostname)]
    Declined(Box<NewMachine>),
    /// The relay answered with a hostname that is not a valid hostname, which cannot be pinned.
    #[error("the relay answered with an invalid hostname {0}; nothing was sent to the machine")]
    InvalidHostname(String),
    /// The file's directory cannot be created.
    #[error("cannot create {}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A pin cannot be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The pin file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

/// A relay answer that contradicts a pin ([`KnownMachinesError::Conflict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The pin file.
    pub path: PathBuf,
    /// What the relay answered with.
    pub offered: PinnedMachine,
    /// What it contradicts.
    pub conflict: PinConflict,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let offered = &self.offered;
        let what = match self.conflict {
            PinConflict::Hostname { .. } => "is not the machine pinned for that name",
            PinConflict::Key { .. } => "has changed its key",
            PinConflict::KeyElsewhere { .. } => "has the key of another pinned machine",
        };
        write!(
            f,
            "WARNING: machine {} ({}) in fleet {} on relay {} {what}!\n\
             pinned:  {} (line {})\n\
             offered: machine {} {} key {}\n\
             Someone may be impersonating the machine, or it was re-installed. Nothing was sent to it.\n\
             If the change is expected, remove line {} of {} and try again.",
            offered.hostname,
            offered.machine,
            offered.fleet,
            offered.relay,
            self.conflict.pinned_description(),
            self.conflict.line(),
            offered.hostname,
            offered.machine,
            offered.key.fingerprint(),
            self.conflict.line(),
            self.path.display()
        )
    }
}

/// A pin store: two files in one directory, created (0600) on the first pin.
#[derive(Debug, Clone)]
pub struct KnownMachines {
    path: PathBuf,
    locks: PathBuf,
    first_contact: FirstContact,
}

impl PartialEq for KnownMachines {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.locks == other.locks
    }
}

impl KnownMachines {
    /// The machine pins in the file `path`, the fleet-lock pins beside it; first contacts are refused.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let locks = path.parent().map_or_else(
            || PathBuf::from(FLEET_LOCKS_FILE),
            |d| d.join(FLEET_LOCKS_FILE),
        );
        Self {
            path,
            locks,
            first_contact: FirstContact::Refuse,
        }
    }

    /// The pin store [`FILE_NAME`] (and [`FLEET_LOCKS_FILE`]) in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self::new(dir.join(FILE_NAME))
    }

    /// The same store with `policy` for first contacts.
    #[must_use]
    pub fn with_first_contact(mut self, policy: FirstContact) -> Self {
        self.first_contact = policy;
        self
    }

    /// The first-contact policy.
    pub fn first_contact(&self) -> &FirstContact {
        &self.first_contact
    }

    /// The machine pin file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fleet-lock pin file.
    pub fn fleet_locks_path(&self) -> &Path {
        &self.locks
    }

    /// What the pins say about `offered`: a conflict is an error; a legacy pin or a known machine under a new
    /// hostname is written in the current form now.
    pub fn check(&self, offered: &PinnedMachine) -> Result<PinDecision, KnownMachinesError> {
        let text = read_optional(&self.path)?;
        let pins = parse_known_machines(&text).map_err(|(line, reason)| {
            KnownMachinesError::Unreadable {
                path: self.path.clone(),
                line,
                reason,
            }
        })?;
        match decide(&pins, offered) {
            PinDecision::Conflict(conflict) => {
                Err(KnownMachinesError::Conflict(Box::new(Conflict {
                    path: self.path.clone(),
                    offered: offered.clone(),
                    conflict: *conflict,
                })))
            }
            PinDecision::Append => {
                self.pin(offered)?;
                Ok(PinDecision::Known)
            }
            other => Ok(other),
        }
    }

    /// Pins `machine` (appends its line).
    pub fn pin(&self, machine: &PinnedMachine) -> Result<(), KnownMachinesError> {
        append_line(&self.path, &machine.to_string())
    }

    /// The first contact `machine` as this store's policy sees it, before anyone is asked.
    pub fn new_machine(&self, machine: &PinnedMachine) -> NewMachine {
        NewMachine {
            machine: machine.clone(),
            path: self.path.clone(),
        }
    }

    /// The fleet-lock pin of `fleet` on `relay`, if any.
    pub fn fleet_pin(
        &self,
        relay: &cmdop_proto::RelayFingerprint,
        fleet: cmdop_fleet::FleetId,
    ) -> Result<Option<FleetPin>, KnownMachinesError> {
        Ok(self
            .fleet_pins()?
            .into_iter()
            .find(|pin| pin.relay == *relay && pin.fleet == fleet))
    }

    fn fleet_pins(&self) -> Result<Vec<FleetPin>, KnownMachinesError> {
        let text = read_optional(&self.locks)?;
        let pins =
            parse_fleet_locks(&text).map_err(|(line, reason)| KnownMachinesError::Unreadable {
                path: self.locks.clone(),
                line,
                reason,
            })?;
        Ok(pins.into_iter().map(|(_, pin)| pin).collect())
    }

    /// Saves `pin`, replacing the one of its (relay, fleet); the file is rewritten atomically (0600).
    pub fn save_fleet_pin(&self, pin: &FleetPin) -> Result<(), KnownMachinesError> {
        let mut pins = self.fleet_pins()?;
        pins.retain(|p| !(p.relay == pin.relay && p.fleet == pin.fleet));
        pins.push(pin.clone());
        let mut text = String::from(
            "# cmdop fleet-lock pins: <relay fingerprint> <fleet id> <fleet key> <authority serial> <revocation serial>\n",
        );
        for p in &pins {
            text.push_str(&p.to_string());
            text.push('\n');
        }
        ensure_dir(&self.locks)?;
        cmdop_identity::store::write_private_file(&self.locks, text.as_bytes()).map_err(|source| {
            KnownMachinesError::Write {
                path: self.locks.clone(),
                source,
            }
        })
    }
}

impl KnownMachines {
    /// Carries every pin made under the relay certificate `old` over to `new` (`cmdop login --repin`, after
    /// the relay's certificate was rotated): the same machines and fleet keys are then known under the new
    /// fingerprint, instead of all becoming first contacts. The old lines stay (they name the old relay);
    /// nothing is carried that is already pinned under `new`. Returns how many pins were carried.
    pub fn carry_over(
        &self,
        old: &cmdop_proto::RelayFingerprint,
        new: &cmdop_proto::RelayFingerprint,
    ) -> Result<usize, KnownMachinesError> {
        let text = read_optional(&self.path)?;
        let pins = parse_known_machines(&text).map_err(|(line, reason)| {
            KnownMachinesError::Unreadable {
                path: self.path.clone(),
                line,
                reason,
            }
        })?;
        let current: Vec<PinnedMachine> = pins
            .into_iter()
            .filter_map(|(_, pin)| match pin {
                MachinePin::Current(pin) => Some(pin),
                MachinePin::Legacy { .. } => None,
            })
            .collect();
        let mut carried = 0;
        for pin in current.iter().filter(|pin| pin.relay == *old) {
            let already = current
                .iter()
                .any(|p| p.relay == *new && p.fleet == pin.fleet && p.hostname == pin.hostname);
            if !already {
                self.pin(&PinnedMachine {
                    relay: *new,
                    ..pin.clone()
                })?;
                carried += 1;
            }
        }
        for pin in self.fleet_pins()? {
            if pin.relay == *old && self.fleet_pin(new, pin.fleet)?.is_none() {
                self.save_fleet_pin(&FleetPin { relay: *new, ..pin })?;
                carried += 1;
            }
        }
        Ok(carried)
    }
}

/// The whole file, or nothing if it does not exist.
fn read_optional(path: &Path) -> Result<String, KnownMachinesError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(KnownMachinesError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn ensure_dir(path: &Path) -> Result<(), KnownMachinesError> {
    let dir: PathBuf = path.parent().map(Path::to_path_buf).unwrap_or_default();
    fs::create_dir_all(&dir).map_err(|source| KnownMachinesError::CreateDir { dir, source })
}

/// Appends `line` and a newline (0600 on creation). A file that does not end with a newline (cut by hand or
/// by a crash) gets one first, so the new pin never merges into the last line.
fn append_line(path: &Path, line: &str) -> Result<(), KnownMachinesError> {
    ensure_dir(path)?;
    let write = |source| KnownMachinesError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(write)?;
    let mut text = String::with_capacity(line.len() + 2);
    let len = file.metadata().map_err(write)?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::End(-1)).map_err(write)?;
        file.read_exact(&mut last).map_err(write)?;
        if last[0] != b'\n' {
            text.push('\n');
        }
    }
    text.push_str(line);
    text.push('\n');
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write)
}

#[cfg(test)]
mod tests {
    use cmdop_fleet::{FleetId, Hostname, MachineId};
    use cmdop_identity::Identity;
    use cmdop_proto::RelayFingerprint;
    use rand_core::OsRng;

    use super::*;

    fn offered(hostname: &str, machine: u8, key: cmdop_identity::PublicKey) -> PinnedMachine {
        PinnedMachine {
            relay: RelayFingerprint::from_bytes([1; 32]),
            fleet: FleetId::from_bytes([2; 16]),
            hostname: Hostname::parse(hostname).unwrap(),
            machine: MachineId::from_bytes([machine; 16]),
            key,
        }
    }

    #[test]
    fn a_pinned_hostname_answered_by_a_new_machine_is_refused_naming_both_keys_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownMachines::in_dir(dir.path());
        let key = Identity::generate(&mut OsRng).public_key();
        let web = offered("web-1", 1, key);
        assert_eq!(known.check(&web).unwrap(), PinDecision::Unknown);
        known.pin(&web).unwrap();
        assert_eq!(known.check(&web).unwrap(), PinDecision::Known);
        let other = Identity::generate(&mut OsRng).public_key();
        let err = known
            .check(&offered("web-1", 9, other))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is not the machine pinned for that name"),
            "{err}"
        );
        assert!(err.contains(&key.fingerprint().to_string()), "{err}");
        assert!(err.contains(&other.fingerprint().to_string()), "{err}");
        assert!(err.contains("remove line 1 of"), "{err}");
    }

    #[test]
    fn a_repinned_relay_keeps_the_machines_and_fleet_keys_pinned_under_its_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownMachines::in_dir(dir.path());
        let key = Identity::generate(&mut OsRng).public_key();
        let web = offered("web-1", 1, key);
        known.pin(&web).unwrap();
        let fleet_key = Identity::generate(&mut OsRng).public_key();
        known
            .save_fleet_pin(&FleetPin {
                relay: web.relay,
                fleet: web.fleet,
                fleet_key,
                authority_serial: 3,
                revocation_serial: 1,
            })
            .unwrap();
        let new = RelayFingerprint::from_bytes([7; 32]);
        let moved = PinnedMachine {
            relay: new,
            ..web.clone()
        };
        assert_eq!(known.check(&moved).unwrap(), PinDecision::Unknown);
        assert_eq!(known.carry_over(&web.relay, &new).unwrap(), 2);
        assert_eq!(known.check(&moved).unwrap(), PinDecision::Known);
        let pin = known.fleet_pin(&new, web.fleet).unwrap().unwrap();
        assert_eq!((pin.fleet_key, pin.authority_serial), (fleet_key, 3));
        // A second run carries nothing twice, and the old pins still stand.
        assert_eq!(known.carry_over(&web.relay, &new).unwrap(), 0);
        assert_eq!(known.check(&web).unwrap(), PinDecision::Known);
        // A key that changed under the new certificate is still refused.
        let other = Identity::generate(&mut OsRng).public_key();
        assert!(
            known
                .check(&PinnedMachine {
                    key: other,
                    machine: MachineId::from_bytes([9; 16]),
                    ..moved
                })
                .is_err()
        );
    }

    #[test]
    fn legacy_lines_are_read_and_migrated_never_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let key = Identity::generate(&mut OsRng).public_key();
        let web = offered("web-1", 1, key);
        let legacy = format!("# pins\n\n{} {key} web-1\n", web.machine);
        fs::write(&path, &legacy).unwrap();
        let known = KnownMachines::new(&path);
        assert_eq!(known.check(&web).unwrap(), PinDecision::Known);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&legacy), "{text}");
        assert!(text.ends_with(&format!("{web}\n")), "{text}");
        let other = Identity::generate(&mut OsRng).public_key();
        let err = known
            .check(&offered("web-9", 1, other))
            .unwrap_err()
            .to_string();
        assert!(err.contains("has changed its key"), "{err}");
    }

    #[test]
    fn an_unreadable_line_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let key = Identity::generate(&mut OsRng).public_key();
        let web = offered("web-1", 1, key).to_string();
        fs::write(&path, format!("{web}\n{}\n", &web[..40])).unwrap();
        let err = KnownMachines::new(&path)
            .check(&offered("db-1", 2, key))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("{}:2:", path.display())), "{err}");
        fs::write(&path, "garbage\n").unwrap();
        let err = KnownMachines::new(&path)
            .check(&offered("db-1", 2, key))
            .unwrap_err()
            .to_string();
        assert!(err.contains(":1: cannot read this pin"), "{err}");
    }

    #[test]
    fn appending_to_a_file_without_a_final_newline_keeps_both_lines_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let first = offered("web-1", 1, Identity::generate(&mut OsRng).public_key());
        fs::write(&path, first.to_string()).unwrap();
        let known = KnownMachines::new(&path);
        let second = offered("db-1", 2, Identity::generate(&mut OsRng).public_key());
        known.pin(&second).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{first}\n{second}\n")
        );
        assert_eq!(known.check(&first).unwrap(), PinDecision::Known);
        assert_eq!(known.check(&second).unwrap(), PinDecision::Known);
        use std::os::unix::fs::PermissionsExt as _;
        let fresh = dir.path().join("fresh").join(FILE_NAME);
        KnownMachines::new(&fresh).pin(&second).unwrap();
        assert_eq!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn fleet_pins_replace_their_own_line_only() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownMachines::in_dir(dir.path());
        let key = Identity::generate(&mut OsRng).public_key();
        let relay = RelayFingerprint::from_bytes([1; 32]);
        let pin = |fleet: u8, serial| FleetPin {
            relay,
            fleet: FleetId::from_bytes([fleet; 16]),
            fleet_key: key,
            authority_serial: serial,
            revocation_serial: 0,
        };
        known.save_fleet_pin(&pin(1, 1)).unwrap();
        known.save_fleet_pin(&pin(2, 1)).unwrap();
        known.save_fleet_pin(&pin(1, 4)).unwrap();
        assert_eq!(
            known
                .fleet_pin(&relay, FleetId::from_bytes([1; 16]))
                .unwrap(),
            Some(pin(1, 4))
        );
        assert_eq!(
            known
                .fleet_pin(&relay, FleetId::from_bytes([2; 16]))
                .unwrap(),
            Some(pin(2, 1))
        );
    }
}
