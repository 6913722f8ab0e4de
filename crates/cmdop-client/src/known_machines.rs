//! `known_machines`: the machine keys a client has pinned, like ssh's `known_hosts`.
//!
//! The first contact with a machine pins the key the relay reports (trust on first use, shown to the
//! person); from then on the end-to-end handshake uses the pinned key, so a relay that later substitutes
//! another key is caught, and a changed key is a loud error until the person removes the old line.
//!
//! Format: one machine per line, `<machine id> <public key> <hostname>`; `#` starts a comment.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use cmdop_identity::{IdentityError, PublicKey};
use uuid::Uuid;

/// The file name the `cmdop` CLI uses inside its client directory.
pub const FILE_NAME: &str = "known_machines";

/// What the pin store says about a machine's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinStatus {
    /// The key matches the pinned one.
    Known,
    /// No key was pinned; this one has just been added (first contact: worth telling the person).
    Added,
}

/// Why the pin store refused a key or could not be used. Nothing has been sent to the machine.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum KnownMachinesError {
    /// The file exists but cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The pin file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A line does not start with a machine id and a key.
    #[error(
        "{}:{line}: malformed line; expected `<machine id> <public key> <hostname>`",
        path.display()
    )]
    MalformedLine {
        /// The pin file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
    },
    /// The pinned key of the machine asked for is not a valid public key.
    #[error("{}:{line}: malformed public key", path.display())]
    MalformedKey {
        /// The pin file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// Why the key does not parse.
        source: IdentityError,
    },
    /// The machine reports a key other than the pinned one: an impersonation, or a re-installed machine.
    #[error("{0}")]
    KeyChanged(Box<KeyChange>),
    /// The file's directory cannot be created.
    #[error("cannot create {}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The new pin cannot be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The pin file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

/// A machine whose reported key differs from its pinned one ([`KnownMachinesError::KeyChanged`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// The pin file.
    pub path: PathBuf,
    /// The line holding the pinned key, from 1: the one to remove if the change is expected.
    pub line: usize,
    /// The machine.
    pub machine: Uuid,
    /// Its hostname, as the relay reports it.
    pub hostname: String,
    /// The key pinned at first contact.
    pub pinned: PublicKey,
    /// The key the relay reports now.
    pub reported: PublicKey,
}

impl fmt::Display for KeyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WARNING: the key of machine {} ({}) has changed!\n\
             pinned:   {} ({})\n\
             reported: {} ({})\n\
             Someone may be impersonating the machine, or it was re-installed. Nothing was sent to it.\n\
             If the change is expected, remove line {} of {} and try again.",
            self.hostname,
            self.machine,
            self.pinned.fingerprint(),
            self.pinned,
            self.reported.fingerprint(),
            self.reported,
            self.line,
            self.path.display()
        )
    }
}

/// A pin store: one file, created (0600) on the first pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownMachines {
    path: PathBuf,
}

impl KnownMachines {
    /// The pin store in the file `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The pin store [`FILE_NAME`] in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self::new(dir.join(FILE_NAME))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks `key` for `machine` against the pins, pinning it on first contact. A different pinned key is an
    /// error naming the line to remove.
    pub fn check_or_pin(
        &self,
        machine: Uuid,
        hostname: &str,
        key: &PublicKey,
    ) -> Result<PinStatus, KnownMachinesError> {
        let path = &self.path;
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(KnownMachinesError::Read {
                    path: path.clone(),
                    source,
                });
            }
        };
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(id), Some(pinned)) = (fields.next(), fields.next()) else {
                return Err(KnownMachinesError::MalformedLine {
                    path: path.clone(),
                    line: index + 1,
                });
            };
            if id != machine.to_string() {
                continue;
            }
            let pinned: PublicKey =
                pinned
                    .parse()
                    .map_err(|source| KnownMachinesError::MalformedKey {
                        path: path.clone(),
                        line: index + 1,
                        source,
                    })?;
            if pinned == *key {
                return Ok(PinStatus::Known);
            }
            return Err(KnownMachinesError::KeyChanged(Box::new(KeyChange {
                path: path.clone(),
                line: index + 1,
                machine,
                hostname: hostname.to_owned(),
                pinned,
                reported: *key,
            })));
        }
        self.append(&format!("{machine} {key} {hostname}\n"))?;
        Ok(PinStatus::Added)
    }

    fn append(&self, line: &str) -> Result<(), KnownMachinesError> {
        let path = &self.path;
        let dir: PathBuf = path.parent().map(Path::to_path_buf).unwrap_or_default();
        fs::create_dir_all(&dir).map_err(|source| KnownMachinesError::CreateDir {
            dir: dir.clone(),
            source,
        })?;
        let write = |source| KnownMachinesError::Write {
            path: path.clone(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(write)?;
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(write)
    }
}

#[cfg(test)]
mod tests {
    use cmdop_identity::Identity;
    use rand_core::OsRng;

    use super::*;

    #[test]
    fn first_contact_pins_and_a_changed_key_is_refused_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownMachines::in_dir(dir.path());
        let machine = Uuid::from_bytes([1; 16]);
        let key = Identity::generate(&mut OsRng).public_key();
        assert_eq!(
            known.check_or_pin(machine, "web-1", &key).unwrap(),
            PinStatus::Added
        );
        assert_eq!(
            known.check_or_pin(machine, "web-1", &key).unwrap(),
            PinStatus::Known
        );
        let other = Identity::generate(&mut OsRng).public_key();
        let err = known
            .check_or_pin(machine, "web-1", &other)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("has changed") && err.contains("remove line 1"),
            "{err}"
        );
        // Another machine pins independently.
        assert_eq!(
            known
                .check_or_pin(Uuid::from_bytes([2; 16]), "db-1", &other)
                .unwrap(),
            PinStatus::Added
        );
    }

    #[test]
    fn a_changed_key_is_reported_in_the_words_the_cli_always_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let machine = Uuid::from_bytes([1; 16]);
        let pinned = Identity::generate(&mut OsRng).public_key();
        let reported = Identity::generate(&mut OsRng).public_key();
        fs::write(&path, format!("# pins\n\n{machine} {pinned} web-1\n")).unwrap();
        let err = KnownMachines::new(&path)
            .check_or_pin(machine, "web-1", &reported)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "WARNING: the key of machine web-1 ({machine}) has changed!\n\
                 pinned:   {} ({})\n\
                 reported: {} ({})\n\
                 Someone may be impersonating the machine, or it was re-installed. Nothing was sent to it.\n\
                 If the change is expected, remove line 3 of {} and try again.",
                pinned.fingerprint(),
                pinned,
                reported.fingerprint(),
                reported,
                path.display()
            )
        );
    }

    #[test]
    fn a_malformed_file_is_an_error_not_a_silent_re_pin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        fs::write(&path, "garbage\n").unwrap();
        let key = Identity::generate(&mut OsRng).public_key();
        let err = KnownMachines::new(&path)
            .check_or_pin(Uuid::from_bytes([1; 16]), "m", &key)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":1: malformed"), "{err}");
    }
}
