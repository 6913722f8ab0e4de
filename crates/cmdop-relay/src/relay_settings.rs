//! `cmdop-relay`'s config file (TOML) and how it combines with flags and the environment into the settings
//! `serve` and the admin verbs use.
//!
//! Precedence: flag > environment variable (clap merges those two) > config file > default. The file is
//! `--config FILE` (or `CMDOP_RELAY_CONFIG`), else `/etc/cmdop/relay.toml` when that exists.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use cmdop_client::transport::Limits;
use cmdop_config::LogFormat;
use cmdop_relay::admin;
use cmdop_relay::server::{DEFAULT_DRAIN_TIMEOUT, DEFAULT_LISTEN};
use serde::Deserialize;

/// Where the relay looks for its config file when none is named.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/cmdop/relay.toml";

/// The config file's keys: one per flag, same names with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RelayFile {
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) metrics: Option<SocketAddr>,
    pub(crate) drain_timeout: Option<String>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) log_format: Option<LogFormat>,
}

/// The config file in force, if any.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) file: RelayFile,
    pub(crate) path: Option<PathBuf>,
}

/// Everything `serve` needs, resolved.
#[derive(Debug)]
pub(crate) struct ServeSettings {
    pub(crate) data_dir: PathBuf,
    pub(crate) listen: SocketAddr,
    pub(crate) cert: Option<(PathBuf, PathBuf)>,
    pub(crate) metrics: Option<SocketAddr>,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_connections: usize,
}

/// The flag/environment values of `serve`, before the file and defaults fill the gaps.
#[derive(Debug, Default)]
pub(crate) struct ServeFlags {
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) metrics: Option<SocketAddr>,
    pub(crate) drain_timeout: Option<String>,
    pub(crate) max_connections: Option<usize>,
}

/// Loads the named config file (which must exist), else the default one if it exists, else nothing.
pub(crate) fn load(explicit: Option<&Path>) -> Result<Loaded> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None if Path::new(DEFAULT_CONFIG).is_file() => PathBuf::from(DEFAULT_CONFIG),
        None => return Ok(Loaded::default()),
    };
    let file = cmdop_config::load(&path, "cmdop-relay")?;
    Ok(Loaded {
        file,
        path: Some(path),
    })
}

impl Loaded {
    /// The data directory: the flag or environment, else the file; there is no default.
    pub(crate) fn data_dir(&self, flag: Option<PathBuf>) -> Result<PathBuf> {
        flag.or_else(|| self.file.data_dir.clone()).context(
            "no data directory; pass --data-dir DIR, set CMDOP_RELAY_DATA_DIR, or set data_dir in the config file",
        )
    }

    /// Fills the `serve` flags from the file and the defaults, and checks that they fit together.
    pub(crate) fn serve(&self, flags: ServeFlags) -> Result<ServeSettings> {
        let file = &self.file;
        let data_dir = self.data_dir(flags.data_dir)?;
        let listen = match flags.listen.or(file.listen) {
            Some(listen) => listen,
            None => DEFAULT_LISTEN
                .parse()
                .context("the built-in listen address does not parse")?,
        };
        let cert = match (
            flags.cert.or_else(|| file.cert.clone()),
            flags.key.or_else(|| file.key.clone()),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                bail!("a certificate is set (--cert or cert) without its key; set --key or key too")
            }
            (None, Some(_)) => {
                bail!("a key is set (--key or key) without its certificate; set --cert or cert too")
            }
        };
        let drain_timeout = match (flags.drain_timeout, &file.drain_timeout) {
            (Some(text), _) => {
                admin::parse_duration(&text).with_context(|| format!("--drain-timeout {text:?}"))?
            }
            (None, Some(text)) => admin::parse_duration(text)
                .with_context(|| format!("drain_timeout = {text:?} in {}", self.describe()))?,
            (None, None) => DEFAULT_DRAIN_TIMEOUT,
        };
        let max_connections = flags
            .max_connections
            .or(file.max_connections)
            .unwrap_or(Limits::default().max_connections);
        if max_connections == 0 {
            bail!("max_connections (--max-connections) must be at least 1");
        }
        Ok(ServeSettings {
            data_dir,
            listen,
            cert,
            metrics: flags.metrics.or(file.metrics),
            drain_timeout,
            max_connections,
        })
    }

    /// The file's path for messages.
    pub(crate) fn describe(&self) -> String {
        self.path
            .as_deref()
            .map_or_else(|| "no config file".to_owned(), |p| p.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(text: &str) -> Loaded {
        Loaded {
            file: cmdop_config::parse(text, Path::new("relay.toml"), "cmdop-relay").unwrap(),
            path: Some(PathBuf::from("relay.toml")),
        }
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let file = loaded(
            "data_dir = \"/srv/relay\"\nlisten = \"127.0.0.1:5000\"\nmetrics = \"127.0.0.1:9464\"\n",
        );
        let serve = file
            .serve(ServeFlags {
                listen: Some("127.0.0.1:6000".parse().unwrap()),
                ..ServeFlags::default()
            })
            .unwrap();
        assert_eq!(serve.data_dir, PathBuf::from("/srv/relay"));
        assert_eq!(serve.listen, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(serve.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(serve.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(serve.max_connections, Limits::default().max_connections);
        let defaults = loaded("").serve(ServeFlags {
            data_dir: Some("/d".into()),
            ..ServeFlags::default()
        });
        assert_eq!(defaults.unwrap().listen, DEFAULT_LISTEN.parse().unwrap());
    }

    #[test]
    fn half_a_certificate_and_a_bad_duration_are_explained() {
        let err = loaded("data_dir = \"/d\"\ncert = \"c.pem\"\n")
            .serve(ServeFlags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("without its key"), "{err}");
        let err = loaded("data_dir = \"/d\"\ndrain_timeout = \"soon\"\n")
            .serve(ServeFlags::default())
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("drain_timeout") && err.contains("relay.toml"),
            "{err}"
        );
        let err = loaded("data_dir = \"/d\"\nmax_connections = 0\n")
            .serve(ServeFlags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_connections"), "{err}");
        let err = loaded("").data_dir(None).unwrap_err().to_string();
        assert!(err.contains("--data-dir"), "{err}");
    }
}
