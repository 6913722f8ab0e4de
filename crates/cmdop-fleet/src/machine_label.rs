//! Machine labels: `KEY=VALUE` pairs an agent reports about its machine (`cmdop-agent run --label role=web`),
//! so that people can pick machines by what they are (`cmdop connect exec --label role=web -- …`).
//!
//! They come from the agent and are shown to people and matched by scripts, so both halves are short plain
//! words: a key is `[a-z0-9][a-z0-9._-]{0,62}`, a value `[A-Za-z0-9._-]{1,63}`, at most [`MAX_LABELS`] per
//! machine, each key once. The relay stores what the agent last reported; an agent that stops reporting a
//! label removes it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The most labels one machine may carry.
pub const MAX_LABELS: usize = 16;
/// The longest key or value, in characters.
const MAX_LEN: usize = 63;

/// A label that is not valid; the message names the rule and how to write it.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// The text has no `=` between key and value.
    #[error("label {0:?} is not KEY=VALUE; write it like role=web")]
    NotAPair(String),
    /// The key breaks the key rule.
    #[error(
        "label key {0:?} must be 1 to 63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    BadKey(String),
    /// The value breaks the value rule.
    #[error("label value {value:?} of {key} must be 1 to 63 letters, digits, '.', '_' or '-'")]
    BadValue {
        /// The label's key.
        key: String,
        /// The offending value.
        value: String,
    },
    /// The same key was given twice.
    #[error("label {0} is given twice; give each key once")]
    Duplicate(String),
    /// More labels than a machine may carry.
    #[error("{0} labels given; a machine carries at most {MAX_LABELS}")]
    TooMany(usize),
}

/// A machine's labels, each key once, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct MachineLabels(BTreeMap<String, String>);

impl MachineLabels {
    /// Validates `pairs` (key, value).
    pub fn new<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Result<Self, LabelError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let mut labels = BTreeMap::new();
        for (key, value) in pairs {
            let (key, value) = (key.into(), value.into());
            check_key(&key)?;
            check_value(&key, &value)?;
            if labels.contains_key(&key) {
                return Err(LabelError::Duplicate(key));
            }
            labels.insert(key, value);
        }
        if labels.len() > MAX_LABELS {
            return Err(LabelError::TooMany(labels.len()));
        }
        Ok(Self(labels))
    }

    /// Parses labels written `KEY=VALUE`, one per item (as `--label` takes them).
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Self, LabelError> {
        let pairs = texts
            .iter()
            .map(|text| parse_pair(text.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(pairs)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `key`, if the machine carries it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// (key, value) in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether every one of `wanted` is among these labels with the same value.
    pub fn contains_all(&self, wanted: &Self) -> bool {
        wanted
            .iter()
            .all(|(key, value)| self.get(key) == Some(value))
    }

    /// The pairs, for the wire.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.0.clone().into_iter().collect()
    }
}

impl fmt::Display for MachineLabels {
    /// `key=value` pairs separated by spaces (neither half may contain a space), as stored and listed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (key, value)) in self.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for MachineLabels {
    type Err = LabelError;

    /// The [`Display`](fmt::Display) form back: `key=value` pairs separated by whitespace.
    fn from_str(text: &str) -> Result<Self, LabelError> {
        let pairs: Vec<&str> = text.split_whitespace().collect();
        Self::parse(&pairs)
    }
}

impl TryFrom<BTreeMap<String, String>> for MachineLabels {
    type Error = LabelError;

    fn try_from(map: BTreeMap<String, String>) -> Result<Self, LabelError> {
        Self::new(map)
    }
}

impl From<MachineLabels> for BTreeMap<String, String> {
    fn from(labels: MachineLabels) -> Self {
        labels.0
    }
}

/// Splits `KEY=VALUE` at the first `=` and checks both halves.
pub fn parse_pair(text: &str) -> Result<(String, String), LabelError> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| LabelError::NotAPair(shorten(text)))?;
    check_key(key)?;
    check_value(key, value)?;
    Ok((key.to_owned(), value.to_owned()))
}

fn check_key(key: &str) -> Result<(), LabelError> {
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if first_ok && rest_ok && key.len() <= MAX_LEN {
        Ok(())
    } else {
        Err(LabelError::BadKey(shorten(key)))
    }
}

fn check_value(key: &str, value: &str) -> Result<(), LabelError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(LabelError::BadValue {
            key: shorten(key),
            value: shorten(value),
        })
    }
}

/// Peer-supplied text in messages stays bounded.
fn shorten(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_sort_and_print() {
        let labels = MachineLabels::parse(&["role=web", "env=prod", "zone=eu-1.a"]).unwrap();
        assert_eq!(labels.to_string(), "env=prod role=web zone=eu-1.a");
        assert_eq!(labels.to_string().parse::<MachineLabels>().unwrap(), labels);
        assert_eq!(labels.get("role"), Some("web"));
        assert!(labels.contains_all(&MachineLabels::parse(&["role=web"]).unwrap()));
        assert!(!labels.contains_all(&MachineLabels::parse(&["role=db"]).unwrap()));
        assert!(labels.contains_all(&MachineLabels::default()));
        assert_eq!(
            "".parse::<MachineLabels>().unwrap(),
            MachineLabels::default()
        );
    }

    #[test]
    fn bad_labels_say_what_to_write() {
        for (bad, words) in [
            ("role", "KEY=VALUE"),
            ("=web", "label key"),
            ("Role=web", "label key"),
            ("-x=web", "label key"),
            ("role=", "label value"),
            ("role=a b", "label value"),
            ("role=x\u{1b}[2J", "label value"),
        ] {
            let err = MachineLabels::parse(&[bad]).unwrap_err().to_string();
            assert!(err.contains(words), "{bad:?}: {err}");
        }
        let err = MachineLabels::parse(&["a=1", "a=2"]).unwrap_err();
        assert_eq!(err, LabelError::Duplicate("a".into()));
        let many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("k{i}=v")).collect();
        assert_eq!(
            MachineLabels::parse(&many).unwrap_err(),
            LabelError::TooMany(MAX_LABELS + 1)
        );
        assert!(MachineLabels::parse(&["a=".to_owned() + &"v".repeat(64)]).is_err());
    }

    #[test]
    fn deserialising_runs_the_same_checks() {
        let ok: MachineLabels = serde_json::from_str(r#"{"role":"web"}"#).unwrap();
        assert_eq!(ok.get("role"), Some("web"));
        assert!(serde_json::from_str::<MachineLabels>(r#"{"Role":"web"}"#).is_err());
    }
}
