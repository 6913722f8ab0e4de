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

use crate::cli::ServeArgs;

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

/// The flag/environment values of `serve`, before the file and defaults fill the gaps. Addresses stay text
/// until [`Loaded::serve`], so that a bad one is named with where it came from (a flag, or a variable the
/// person may not know is set) rather than as a flag they never passed.
#[derive(Debug, Default)]
pub(crate) struct ServeFlags {
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) listen: Option<String>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) metrics: Option<String>,
    pub(crate) drain_timeout: Option<String>,
    pub(crate) max_connections: Option<usize>,
}

impl From<ServeArgs> for ServeFlags {
    fn from(args: ServeArgs) -> Self {
        Self {
            data_dir: args.data.data_dir,
            listen: args.listen,
            cert: args.cert,
            key: args.key,
            metrics: args.metrics,
            drain_timeout: args.drain_timeout,
            max_connections: args.max_connections,
        }
    }
}

/// A socket address given as a flag or in the environment; the error names which, and how to write it.
fn address(text: &str, flag: &str, env: &str) -> Result<SocketAddr> {
    text.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "invalid address {text:?} from {}: write IP:PORT, e.g. 0.0.0.0:4433 or [::]:4433",
            cmdop_config::flag_or_env(flag, env)
        )
    })
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
        let listen = match (flags.listen, file.listen) {
            (Some(text), _) => address(&text, "--listen", "CMDOP_RELAY_LISTEN")?,
            (None, Some(listen)) => listen,
            (None, None) => DEFAULT_LISTEN
                .parse()
                .context("the built-in listen address does not parse")?,
        };
        let metrics = match flags.metrics {
            Some(text) => Some(address(&text, "--metrics", "CMDOP_RELAY_METRICS")?),
            None => file.metrics,
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
            (Some(text), _) => admin::parse_duration(&text).with_context(|| {
                format!(
                    "{} {text:?}",
                    cmdop_config::flag_or_env("--drain-timeout", "CMDOP_RELAY_DRAIN_TIMEOUT")
                )
            })?,
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
            metrics,
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
                listen: Some("127.0.0.1:6000".into()),
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
        // A bad address from the flags or the environment is named as such, never as a bare flag error.
        let err = loaded("data_dir = \"/d\"\n")
            .serve(ServeFlags {
                listen: Some("garbage".into()),
                ..ServeFlags::default()
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"garbage\"")
                && err.contains("CMDOP_RELAY_LISTEN")
                && err.contains("IP:PORT"),
            "{err}"
        );
    }
}
