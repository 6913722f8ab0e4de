//! `known_machines`: the machine keys this client has pinned, like ssh's `known_hosts`.
//!
//! The first contact with a machine pins the key the relay reports (trust on first use, shown to the
//! person); from then on the end-to-end handshake uses the pinned key, so a relay that later substitutes
//! another key is caught, and a changed key is a loud error until the person removes the old line.
//!
//! Format: one machine per line, `<machine id> <public key> <hostname>`; `#` starts a comment.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use cmdop_identity::PublicKey;
use uuid::Uuid;

/// The file name inside the client directory.
pub(crate) const FILE_NAME: &str = "known_machines";

/// What the pin store says about a machine's key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pin {
    /// The key matches the pinned one.
    Known,
    /// No key was pinned; this one has just been added.
    Added,
}

/// Checks `key` for `machine` against the pins in `path`, pinning it on first contact. A different pinned key
/// is an error naming the line to remove.
pub(crate) fn check_or_pin(
    path: &Path,
    machine: Uuid,
    hostname: &str,
    key: &PublicKey,
) -> anyhow::Result<Pin> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(id), Some(pinned)) = (fields.next(), fields.next()) else {
            bail!(
                "{}:{}: malformed line; expected `<machine id> <public key> <hostname>`",
                path.display(),
                index + 1
            );
        };
        if id != machine.to_string() {
            continue;
        }
        let pinned: PublicKey = pinned
            .parse()
            .with_context(|| format!("{}:{}: malformed public key", path.display(), index + 1))?;
        if pinned == *key {
            return Ok(Pin::Known);
        }
        bail!(
            "WARNING: the key of machine {hostname} ({machine}) has changed!\n\
             pinned:   {} ({})\n\
             reported: {} ({})\n\
             Someone may be impersonating the machine, or it was re-installed. Nothing was sent to it.\n\
             If the change is expected, remove line {} of {} and try again.",
            pinned.fingerprint(),
            pinned,
            key.fingerprint(),
            key,
            index + 1,
            path.display()
        );
    }
    append(path, &format!("{machine} {key} {hostname}\n"))?;
    Ok(Pin::Added)
}

fn append(path: &Path, line: &str) -> anyhow::Result<()> {
    let dir: PathBuf = path.parent().map(Path::to_path_buf).unwrap_or_default();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use cmdop_identity::Identity;
    use rand::rngs::OsRng;

    use super::*;

    #[test]
    fn first_contact_pins_and_a_changed_key_is_refused_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let machine = Uuid::from_bytes([1; 16]);
        let key = Identity::generate(&mut OsRng).public_key();
        assert_eq!(
            check_or_pin(&path, machine, "web-1", &key).unwrap(),
            Pin::Added
        );
        assert_eq!(
            check_or_pin(&path, machine, "web-1", &key).unwrap(),
            Pin::Known
        );
        let other = Identity::generate(&mut OsRng).public_key();
        let err = check_or_pin(&path, machine, "web-1", &other)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("has changed") && err.contains("remove line 1"),
            "{err}"
        );
        // Another machine pins independently.
        assert_eq!(
            check_or_pin(&path, Uuid::from_bytes([2; 16]), "db-1", &other).unwrap(),
            Pin::Added
        );
    }

    #[test]
    fn a_malformed_file_is_an_error_not_a_silent_re_pin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        fs::write(&path, "garbage\n").unwrap();
        let key = Identity::generate(&mut OsRng).public_key();
        let err = check_or_pin(&path, Uuid::from_bytes([1; 16]), "m", &key)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":1: malformed"), "{err}");
    }
}
