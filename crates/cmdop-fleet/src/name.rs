//! Validated names: fleet and user names, machine hostnames and display names, credential labels.
//!
//! Every name is checked once, when it is parsed, so the rest of the system never sees an
//! empty, overlong or ambiguous one. Deserialising runs the same checks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::id::is_uuid_shaped;

/// A name that failed validation; the message says which rule and how to fix it.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// What was being named.
        kind: &'static str,
    },
    /// The name is longer than allowed.
    #[error("{kind} is {len} characters long; use at most {max}")]
    TooLong {
        /// What was being named.
        kind: &'static str,
        /// Its length in characters.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The first or last character is not allowed there.
    #[error("{kind} must start and end with {allowed}, not {found:?}")]
    BadEnd {
        /// What was being named.
        kind: &'static str,
        /// The offending character.
        found: char,
        /// What is allowed.
        allowed: &'static str,
    },
    /// A character is not allowed anywhere in the name.
    #[error("{kind} may only contain {allowed}; found {found:?}")]
    BadCharacter {
        /// What was being named.
        kind: &'static str,
        /// The offending character.
        found: char,
        /// What is allowed.
        allowed: &'static str,
    },
    /// A display name has the shape of a UUID, which the resolver would treat as an id.
    #[error("{kind} must not look like a machine id (a UUID); pick another name")]
    LooksLikeId {
        /// What was being named.
        kind: &'static str,
    },
}

fn check_len(kind: &'static str, text: &str, max: usize) -> Result<(), NameError> {
    let len = text.chars().count();
    if len == 0 {
        return Err(NameError::Empty { kind });
    }
    if len > max {
        return Err(NameError::TooLong { kind, len, max });
    }
    Ok(())
}

/// The rule shared by fleet and user names: `[a-z0-9][a-z0-9_-]{0,62}`.
fn check_slug(kind: &'static str, text: &str) -> Result<(), NameError> {
    const ALLOWED: &str = "lowercase letters, digits, '-' and '_'";
    check_len(kind, text, 63)?;
    for (i, c) in text.chars().enumerate() {
        let alnum = c.is_ascii_lowercase() || c.is_ascii_digit();
        if i == 0 && !alnum {
            return Err(NameError::BadEnd {
                kind,
                found: c,
                allowed: "a lowercase letter or digit",
            });
        }
        if !(alnum || c == '-' || c == '_') {
            return Err(NameError::BadCharacter {
                kind,
                found: c,
                allowed: ALLOWED,
            });
        }
    }
    Ok(())
}

macro_rules! string_name {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `text`.
            pub fn parse(text: &str) -> Result<Self, NameError> {
                let check: fn(&str) -> Result<String, NameError> = $check;
                check(text).map(Self)
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;

            fn from_str(text: &str) -> Result<Self, NameError> {
                Self::parse(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;

            fn try_from(text: String) -> Result<Self, NameError> {
                Self::parse(&text)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

string_name!(
    /// The unique human name of a fleet, the value of `--workspace`: 1 to 63 characters of
    /// lowercase letters, digits, `-` and `_`, starting with a letter or digit.
    FleetName,
    |text| check_slug("fleet name", text).map(|()| text.to_owned())
);

string_name!(
    /// The unique name of a user, with the same rule as [`FleetName`].
    UserName,
    |text| check_slug("user name", text).map(|()| text.to_owned())
);

string_name!(
    /// A machine's hostname as the agent reports it, unique within a fleet.
    ///
    /// 1 to 253 characters of ASCII letters, digits, `-`, `_` and `.`, starting and ending with
    /// a letter or digit. Hostnames are case-insensitive (as in DNS), so parsing lowercases
    /// them; uniqueness and the resolver then compare exactly.
    Hostname,
    |text| {
        const KIND: &str = "hostname";
        check_len(KIND, text, 253)?;
        for c in text.chars() {
            if !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                return Err(NameError::BadCharacter {
                    kind: KIND,
                    found: c,
                    allowed: "ASCII letters, digits, '-', '_' and '.'",
                });
            }
        }
        for c in [text.chars().next(), text.chars().last()].into_iter().flatten() {
            if !c.is_ascii_alphanumeric() {
                return Err(NameError::BadEnd {
                    kind: KIND,
                    found: c,
                    allowed: "a letter or digit",
                });
            }
        }
        Ok(text.to_ascii_lowercase())
    }
);

string_name!(
    /// A machine's editable display name (it defaults to the hostname).
    ///
    /// 1 to 64 characters of any printable text without leading or trailing whitespace. A
    /// name shaped like a UUID is refused: the resolver reads such a query as an id only, so
    /// the machine could never be reached by that name.
    DisplayName,
    |text| {
        const KIND: &str = "display name";
        check_len(KIND, text, 64)?;
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(NameError::BadCharacter {
                kind: KIND,
                found: c,
                allowed: "printable characters",
            });
        }
        for c in [text.chars().next(), text.chars().last()].into_iter().flatten() {
            if c.is_whitespace() {
                return Err(NameError::BadEnd {
                    kind: KIND,
                    found: c,
                    allowed: "a visible character",
                });
            }
        }
        if is_uuid_shaped(text) {
            return Err(NameError::LooksLikeId { kind: KIND });
        }
        Ok(text.to_owned())
    }
);

string_name!(
    /// A free-text note on a credential (`--label`), e.g. "ci deploy key": 1 to 128 printable
    /// characters.
    Label,
    |text| {
        const KIND: &str = "label";
        check_len(KIND, text, 128)?;
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(NameError::BadCharacter {
                kind: KIND,
                found: c,
                allowed: "printable characters",
            });
        }
        Ok(text.to_owned())
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_names_follow_the_slug_rule() {
        for good in ["a", "prod", "0day", "team_a-1", &"x".repeat(63)] {
            assert_eq!(FleetName::parse(good).unwrap().as_str(), good);
        }
        let cases: [(&str, &str); 6] = [
            ("", "fleet name must not be empty"),
            (
                &"x".repeat(64),
                "fleet name is 64 characters long; use at most 63",
            ),
            (
                "-prod",
                "fleet name must start and end with a lowercase letter or digit, not '-'",
            ),
            (
                "_prod",
                "fleet name must start and end with a lowercase letter or digit, not '_'",
            ),
            (
                "Prod",
                "fleet name must start and end with a lowercase letter or digit, not 'P'",
            ),
            (
                "my fleet",
                "fleet name may only contain lowercase letters, digits, '-' and '_'; found ' '",
            ),
        ];
        for (bad, message) in cases {
            assert_eq!(FleetName::parse(bad).unwrap_err().to_string(), message);
        }
        assert!(UserName::parse("alice").is_ok());
        assert!(
            UserName::parse("Alice")
                .unwrap_err()
                .to_string()
                .starts_with("user name")
        );
    }

    #[test]
    fn hostnames_are_lowercased_and_checked() {
        assert_eq!(
            Hostname::parse("Web-1.Local").unwrap().as_str(),
            "web-1.local"
        );
        assert!(Hostname::parse("a").is_ok());
        assert!(Hostname::parse(&"h".repeat(253)).is_ok());
        assert!(Hostname::parse(&"h".repeat(254)).is_err());
        assert!(Hostname::parse("web-1.").is_err());
        assert!(Hostname::parse("-web").is_err());
        assert!(Hostname::parse("web 1").is_err());
        assert!(Hostname::parse("wéb").is_err());
    }

    #[test]
    fn display_names_allow_text_but_not_ids_or_control_characters() {
        assert!(DisplayName::parse("Build box (Berlin) ☃").is_ok());
        assert!(DisplayName::parse(" padded").is_err());
        assert!(DisplayName::parse("tab\there").is_err());
        assert_eq!(
            DisplayName::parse("8f23a4b0-1c2d-4e5f-8a9b-0c1d2e3f4a5b").unwrap_err(),
            NameError::LooksLikeId {
                kind: "display name"
            }
        );
        assert!(DisplayName::parse(&"é".repeat(64)).is_ok());
        assert!(DisplayName::parse(&"é".repeat(65)).is_err());
        assert!(Label::parse("ci deploy key").is_ok());
        assert!(Label::parse("line\nbreak").is_err());
    }

    #[test]
    fn deserialising_validates() {
        let ok: FleetName = serde_json::from_str("\"prod\"").unwrap();
        assert_eq!(ok.as_str(), "prod");
        assert!(serde_json::from_str::<FleetName>("\"Prod!\"").is_err());
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"prod\"");
    }
}
