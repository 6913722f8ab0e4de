//! The agent's saved enrolment settings (`agent.json`) and API key (`agent_api_key`), so that after
//! `cmdop-agent enroll …` a plain `cmdop-agent run` needs no flags.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// File name of the saved settings inside the config directory.
pub const SETTINGS_FILE: &str = "agent.json";
/// File name of the saved API key inside the config directory (mode 0600).
pub const API_KEY_FILE: &str = "agent_api_key";
/// File name of the pinned fleet trust keys inside the config directory: `<fleet id> <public key>` per line
/// (`docs/agent.md`, "Files"). Blank lines and lines starting with `#` are ignored; any other line that does not
/// read as a pin makes the agent refuse to start, so a damaged file can never re-pin a key unnoticed.
pub const TRUST_FILE: &str = "fleet_trust_keys";

/// What `enroll` saves and `run` falls back to for every flag it is not given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `HOST:PORT` of the relay.
    pub relay: Option<String>,
    /// The relay's certificate fingerprint, `SHA256:…` (an older `sha256:<hex>` reads too).
    pub relay_fingerprint: Option<String>,
    /// The fleet to enrol into.
    pub workspace: Option<String>,
    /// A hostname to report instead of the system's.
    pub hostname: Option<String>,
    /// A display name to report.
    pub name: Option<String>,
    /// The fleet key to trust for a locked fleet (`SHA256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_key: Option<String>,
    /// Networks forwards may never reach, checked before anything else (`docs/agent.md`), e.g. `10.9.0.0/16`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_deny: Vec<String>,
    /// Networks forwards may reach beyond loopback and private networks, e.g. `203.0.113.7` or `0.0.0.0/0`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_allow: Vec<String>,
    /// The machine's labels, `KEY=VALUE` each (`--label role=web`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

/// Why settings could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// Reading or writing a file failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The settings file is not valid.
    #[error("{} is not valid agent settings ({source}); fix it or run `cmdop-agent enroll` again", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// The relay presented a fleet trust key other than the one pinned at enrolment.
    #[error(
        "the relay presented a different trust key for fleet {fleet}: pinned {pinned}, presented {presented}; \
         capabilities signed by it will not be accepted. If the fleet was re-created on purpose, remove its line from {}",
        path.display()
    )]
    TrustKeyChanged {
        /// The fleet.
        fleet: String,
        /// The pinned key.
        pinned: String,
        /// The key the relay presented now.
        presented: String,
        /// The pin file.
        path: PathBuf,
    },
    /// A line of the trust-key pin file is not a pin: cut short, edited, or damaged.
    #[error(
        "{}:{line} is not a `<fleet id> <public key>` pin ({reason}); the file was cut short or edited. \
         Restore it from a backup or fix that line; deleting the line makes the agent pin whatever key the relay presents next",
        path.display()
    )]
    TrustFileLine {
        /// The pin file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A secret file can be read by other users.
    #[error("{} is readable by other users (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
}

impl Settings {
    /// Loads `agent.json` from `dir`; a missing file is empty settings.
    pub fn load(dir: &Path) -> Result<Self, SettingsError> {
        let path = dir.join(SETTINGS_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| SettingsError::Parse { path, source }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(SettingsError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// Saves `agent.json` into `dir` atomically.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, SettingsError> {
        let path = dir.join(SETTINGS_FILE);
        let mut text = serde_json::to_vec_pretty(self).map_err(|source| SettingsError::Parse {
            path: path.clone(),
            source,
        })?;
        text.push(b'\n');
        write_private(&path, &text)?;
        Ok(path)
    }
}

/// Saves the API key into `dir/agent_api_key`, mode 0600, atomically.
pub fn save_api_key(dir: &Path, key: &str) -> Result<PathBuf, SettingsError> {
    let path = dir.join(API_KEY_FILE);
    write_private(&path, format!("{}\n", key.trim()).as_bytes())?;
    Ok(path)
}

/// Reads an API key file, refusing one that other users can read. `None` if it does not exist.
pub fn read_api_key(path: &Path) -> Result<Option<Zeroizing<String>>, SettingsError> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SettingsError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SettingsError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(|source| SettingsError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Some(Zeroizing::new(text.trim().to_owned())))
}

/// Checks the fleet trust key the relay presented against the one pinned on first registration, pinning it
/// then. The agent accepts capabilities only under the pinned key, so a relay cannot swap the key later
/// without a person noticing. Every line of the file must read as a pin (or be blank or a `#` comment): a
/// damaged file is an error, never a reason to pin again. A new pin goes on a line of its own (a newline is
/// added first if the file lacks one), and the file is replaced atomically.
pub fn pin_trust_key(dir: &Path, fleet: &str, presented: &str) -> Result<(), SettingsError> {
    let path = dir.join(TRUST_FILE);
    let mut text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(SettingsError::Io {
                action: "read",
                path,
                source,
            });
        }
    };
    let pins = parse_pins(&text).map_err(|(line, reason)| SettingsError::TrustFileLine {
        path: path.clone(),
        line,
        reason,
    })?;
    if let Some((_, pinned)) = pins.iter().find(|(pinned_fleet, _)| *pinned_fleet == fleet) {
        if *pinned == presented {
            return Ok(());
        }
        return Err(SettingsError::TrustKeyChanged {
            fleet: fleet.to_owned(),
            pinned: (*pinned).to_owned(),
            presented: presented.to_owned(),
            path,
        });
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("{fleet} {presented}\n"));
    write_private(&path, text.as_bytes())
}

/// The pins in the trust-key file's text, as (fleet id, public key); or the first line (from 1) that is not
/// one, and why.
fn parse_pins(text: &str) -> Result<Vec<(&str, &str)>, (usize, &'static str)> {
    let mut pins = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |reason| (index + 1, reason);
        let mut fields = line.split_whitespace();
        let (Some(fleet), Some(key), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(fail("it must hold exactly two fields"));
        };
        let canonical =
            uuid::Uuid::try_parse(fleet).is_ok_and(|id| id.hyphenated().to_string() == fleet);
        if !canonical {
            return Err(fail("the fleet id is not a UUID"));
        }
        if key.parse::<cmdop_identity::PublicKey>().is_err() {
            return Err(fail("the key is not an `ed25519:` public key"));
        }
        pins.push((fleet, key));
    }
    Ok(pins)
}

/// Writes a private file through the identity store's one implementation (atomic, 0600, directory 0700).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SettingsError> {
    cmdop_identity::store::write_private_file(path, bytes).map_err(|source| SettingsError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Settings::load(dir.path()).unwrap(), Settings::default());
        let settings = Settings {
            relay: Some("127.0.0.1:4433".into()),
            workspace: Some("prod".into()),
            ..Settings::default()
        };
        settings.save(dir.path()).unwrap();
        assert_eq!(Settings::load(dir.path()).unwrap(), settings);
    }

    #[test]
    fn api_key_file_is_private_and_loose_modes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = save_api_key(dir.path(), "cmdop_ak_x_y").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            read_api_key(&path).unwrap().unwrap().as_str(),
            "cmdop_ak_x_y"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_api_key(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    const FLEET_A: &str = "0b6f3a52-3c1e-4a8e-9f7d-1d2c3b4a5f60";
    const FLEET_B: &str = "5e1d7c9a-8b2f-4c3d-a1e0-6f5e4d3c2b1a";

    /// A public key in its text form, different for each `n`.
    fn key(n: u8) -> String {
        cmdop_identity::Identity::from_seed(&cmdop_identity::Seed::from_bytes([n; 32]))
            .public_key()
            .to_string()
    }

    #[test]
    fn a_trust_key_is_pinned_once_and_a_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        pin_trust_key(dir.path(), FLEET_A, &key(1)).unwrap();
        pin_trust_key(dir.path(), FLEET_A, &key(1)).unwrap();
        pin_trust_key(dir.path(), FLEET_B, &key(2)).unwrap();
        let err = pin_trust_key(dir.path(), FLEET_A, &key(3))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("different trust key") && err.contains(TRUST_FILE),
            "{err}"
        );
    }

    /// Issue 13, hole 10: a pin line cut short or replaced by garbage was skipped, and the agent then pinned
    /// (and trusted) whatever key the relay presented, glued onto the damaged line.
    #[test]
    fn a_cut_or_garbage_pin_line_is_refused_naming_the_file_and_line() {
        let good = format!("{FLEET_B} {}\n", key(2));
        let full = format!("{FLEET_A} {}", key(1));
        let extra = format!("{full} extra");
        for (damage, what) in [
            (&full[..20], "a fleet id cut short"),
            (&full[..FLEET_A.len() + 12], "a key cut short"),
            (FLEET_A, "a fleet id without its key"),
            ("\u{0}\u{0}\u{0}garbage", "garbage"),
            (extra.as_str(), "a third field"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(TRUST_FILE);
            let text = format!("{good}{damage}\n{good}");
            fs::write(&path, &text).unwrap();
            let err = pin_trust_key(dir.path(), FLEET_A, &key(3))
                .expect_err(what)
                .to_string();
            assert!(
                err.contains(&format!("{}:2", path.display())),
                "{what}: {err}"
            );
            assert_eq!(
                fs::read_to_string(&path).unwrap(),
                text,
                "{what}: file changed"
            );
        }
    }

    #[test]
    fn a_pin_is_appended_on_a_line_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TRUST_FILE);
        fs::write(&path, format!("# pinned by hand\n\n{FLEET_A} {}", key(1))).unwrap();
        pin_trust_key(dir.path(), FLEET_B, &key(2)).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!(
                "# pinned by hand\n\n{FLEET_A} {}\n{FLEET_B} {}\n",
                key(1),
                key(2)
            )
        );
        pin_trust_key(dir.path(), FLEET_A, &key(1)).unwrap();
        pin_trust_key(dir.path(), FLEET_B, &key(2)).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_broken_settings_file_names_itself_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SETTINGS_FILE), b"{not json").unwrap();
        let err = Settings::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("agent.json") && err.contains("enroll"),
            "{err}"
        );
    }
}
