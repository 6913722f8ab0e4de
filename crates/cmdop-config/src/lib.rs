//! TOML config files for the binaries: reading one into a typed struct, with errors that name the file, the
//! line and the fix; the log format every binary accepts; where a setting came from
//! ([`flag_or_env`]); and completion scripts and man pages ([`generated`]).
//!
//! Precedence is the same everywhere: a flag beats its environment variable (clap handles those two), which
//! beats the config file, which beats the built-in default. Unknown keys are errors
//! (`#[serde(deny_unknown_fields)]` on the file's struct), so a typo never silently does nothing.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub mod generated;

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsFileError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong kind. The message carries the
    /// line and column and quotes the offending line.
    #[error("{}: {message}\nfix the line above; `{binary} config check --config {}` checks the file", path.display(), path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said, with the line.
        message: String,
        /// The binary to name in the hint.
        binary: &'static str,
    },
    /// A value parsed but is not acceptable (a duration that does not parse, a cert without a key).
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Reads and parses `path` as `T`; `binary` names the command in the hint of a parse error.
pub fn load<T: DeserializeOwned>(
    path: &Path,
    binary: &'static str,
) -> Result<T, SettingsFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path, binary)
}

/// Parses `text` (the contents of `path`) as `T`.
pub fn parse<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    binary: &'static str,
) -> Result<T, SettingsFileError> {
    toml::from_str(text).map_err(|err| SettingsFileError::Parse {
        path: path.to_path_buf(),
        message: err.to_string().trim_end().to_owned(),
        binary,
    })
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal unless `NO_COLOR` is set.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global tracing subscriber: `RUST_LOG` if set, else `default_filter`; stderr; `format`.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(colour_stderr()).init(),
    }
}

/// Where a setting that clap merged from a flag and its environment variable came from, for messages:
/// `--flag` when the command line carries it (as `--flag VALUE` or `--flag=VALUE`), else `env`. A setting
/// that came from neither is the config file's, and the caller names the file instead.
pub fn flag_or_env(flag: &str, env: &str) -> String {
    flag_or_env_in(std::env::args_os().skip(1), flag, env)
}

fn flag_or_env_in(args: impl Iterator<Item = std::ffi::OsString>, flag: &str, env: &str) -> String {
    let given = args.take_while(|arg| arg != "--").any(|arg| {
        arg.to_str().is_some_and(|arg| {
            arg == flag
                || arg
                    .strip_prefix(flag)
                    .is_some_and(|rest| rest.starts_with('='))
        })
    });
    if given {
        flag.to_owned()
    } else {
        env.to_owned()
    }
}

/// Whether stderr gets colours: only on a terminal, and never with `NO_COLOR` set (<https://no-color.org>).
pub fn colour_stderr() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Example {
        listen: Option<std::net::SocketAddr>,
        log_format: Option<LogFormat>,
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_the_line() {
        let text = "listen = \"127.0.0.1:1\"\n\nlisten_adress = \"x\"\n";
        let err = parse::<Example>(text, Path::new("relay.toml"), "cmdop-relay")
            .unwrap_err()
            .to_string();
        assert!(err.contains("relay.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("listen_adress"), "{err}");
        assert!(err.contains("config check"), "{err}");
    }

    #[test]
    fn a_setting_is_the_flag_s_when_the_command_line_carries_it() {
        let args = |list: &[&str]| {
            list.iter()
                .map(std::ffi::OsString::from)
                .collect::<Vec<_>>()
                .into_iter()
        };
        let origin = |list: &[&str]| flag_or_env_in(args(list), "--listen", "CMDOP_RELAY_LISTEN");
        assert_eq!(origin(&["serve", "--listen", "x"]), "--listen");
        assert_eq!(origin(&["serve", "--listen=x"]), "--listen");
        assert_eq!(origin(&["serve", "--listener", "x"]), "CMDOP_RELAY_LISTEN");
        assert_eq!(origin(&["serve"]), "CMDOP_RELAY_LISTEN");
        assert_eq!(origin(&["exec", "--", "--listen"]), "CMDOP_RELAY_LISTEN");
    }

    #[test]
    fn a_bad_value_names_its_line_and_good_values_parse() {
        let err = parse::<Example>("log_format = \"xml\"\n", Path::new("a.toml"), "cmdop-agent")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && err.contains("xml"), "{err}");
        let ok: Example = parse(
            "listen = \"127.0.0.1:9\"\nlog_format = \"json\"\n",
            Path::new("a.toml"),
            "cmdop-agent",
        )
        .unwrap();
        assert_eq!(ok.log_format, Some(LogFormat::Json));
    }
}
