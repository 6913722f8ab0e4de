//! `cmdop-agent`'s config file (TOML): every flag of `run` plus the global ones, so a service can be set up
//! with one file instead of a long command line.
//!
//! Precedence: flag > environment variable (clap merges those two) > this file > what `enroll` saved in
//! `agent.json` > default. The file is `--config FILE` (or `CMDOP_AGENT_CONFIG`), else `agent.toml` in the
//! config directory when that exists.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use cmdop_config::LogFormat;
use serde::Deserialize;

/// The file name looked for in the config directory when `--config` is not given.
pub(crate) const CONFIG_FILE: &str = "agent.toml";

/// The accepted sizes of `session_buffer` here and of `--session-buffer` on `run`.
pub(crate) const SESSION_BUFFER_RANGE: std::ops::RangeInclusive<u64> = 65_536..=(1 << 30);

/// The spelling of [`cmdop_identity::store::KekBackend`] on the command line (`--kek-backend`) and in this
/// file (`kek_backend`).
#[derive(Debug, Clone, Copy, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KekChoice {
    Auto,
    Keyring,
    File,
}

/// The config file's keys: one per flag, same names with `_` for `-`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentFile {
    pub(crate) relay: Option<String>,
    pub(crate) relay_fingerprint: Option<String>,
    pub(crate) workspace: Option<String>,
    pub(crate) api_key_file: Option<PathBuf>,
    pub(crate) hostname: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) kek_backend: Option<KekChoice>,
    pub(crate) log_format: Option<LogFormat>,
    pub(crate) max_sessions: Option<usize>,
    pub(crate) session_idle_ttl: Option<String>,
    pub(crate) session_buffer: Option<u64>,
    pub(crate) forward_deny: Option<Vec<String>>,
    pub(crate) forward_allow: Option<Vec<String>>,
    pub(crate) fleet_key: Option<String>,
    pub(crate) enrol_key_file: Option<PathBuf>,
    /// `--label`, repeatable on the command line; a list here.
    pub(crate) labels: Option<Vec<String>>,
}

/// The config file in force, if any.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) file: AgentFile,
    pub(crate) path: Option<PathBuf>,
}

/// Loads the named file (which must exist), else `agent.toml` in `config_dir` if it exists, else nothing.
pub(crate) fn load(explicit: Option<&Path>, config_dir: Option<&Path>) -> Result<Loaded> {
    let path = match (explicit, config_dir) {
        (Some(path), _) => path.to_path_buf(),
        (None, Some(dir)) if dir.join(CONFIG_FILE).is_file() => dir.join(CONFIG_FILE),
        _ => return Ok(Loaded::default()),
    };
    let file: AgentFile = cmdop_config::load(&path, "cmdop-agent")?;
    if let Some(fingerprint) = &file.relay_fingerprint {
        fingerprint
            .parse::<cmdop_proto::RelayFingerprint>()
            .with_context(|| {
                format!(
                    "{}: relay_fingerprint {fingerprint:?} is not a fingerprint; copy it from `cmdop-relay fingerprint`",
                    path.display()
                )
            })?;
    }
    if let Some(text) = &file.session_idle_ttl {
        humantime::parse_duration(text).map_err(|err| {
            anyhow::anyhow!(
                "{}: session_idle_ttl {text:?} is not a duration ({err}); write it like \"24h\" or \"90m\"",
                path.display()
            )
        })?;
    }
    if let Some(bytes) = file.session_buffer {
        let range = SESSION_BUFFER_RANGE;
        if !range.contains(&bytes) {
            anyhow::bail!(
                "{}: session_buffer = {bytes} is outside {}..={} bytes",
                path.display(),
                range.start(),
                range.end()
            );
        }
    }
    Ok(Loaded {
        file,
        path: Some(path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_file_must_exist_and_agent_toml_is_found_in_the_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(Some(&dir.path().join("nope.toml")), None).unwrap_err();
        assert!(format!("{err:#}").contains("nope.toml"), "{err:#}");
        assert!(load(None, Some(dir.path())).unwrap().path.is_none());
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "relay = \"relay.example:4433\"\nworkspace = \"prod\"\nkek_backend = \"file\"\n",
        )
        .unwrap();
        let loaded = load(None, Some(dir.path())).unwrap();
        assert_eq!(loaded.file.relay.as_deref(), Some("relay.example:4433"));
        assert!(matches!(loaded.file.kek_backend, Some(KekChoice::File)));
    }

    #[test]
    fn a_typo_and_a_bad_fingerprint_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "relay = \"r:1\"\nworkspce = \"prod\"\n").unwrap();
        let err = format!("{:#}", load(Some(&path), None).unwrap_err());
        assert!(err.contains("line 2") && err.contains("workspce"), "{err}");
        std::fs::write(&path, "relay_fingerprint = \"md5:nope\"\n").unwrap();
        let err = format!("{:#}", load(Some(&path), None).unwrap_err());
        assert!(err.contains("relay_fingerprint"), "{err}");
        std::fs::write(&path, "session_buffer = 10\n").unwrap();
        let err = format!("{:#}", load(Some(&path), None).unwrap_err());
        assert!(
            err.contains("session_buffer") && err.contains("65536"),
            "{err}"
        );
        std::fs::write(&path, "session_idle_ttl = \"soon\"\n").unwrap();
        let err = format!("{:#}", load(Some(&path), None).unwrap_err());
        assert!(
            err.contains("session_idle_ttl") && err.contains("24h"),
            "{err}"
        );
    }
}
