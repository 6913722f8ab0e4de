//! Identifiers: UUID newtypes for fleets, users, machines and credentials.
//!
//! Each kind of id is its own type so a machine id can never be passed where a fleet id is
//! expected. They are built only by parsing (text or bytes) or by drawing fresh random bytes
//! from a caller-supplied CSPRNG; the server issues them, clients only echo them back.

use std::fmt;
use std::str::FromStr;

use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An identifier that did not parse.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The text is not a UUID in the `8-4-4-4-12` hexadecimal form.
    #[error("{kind} must be a UUID like 8f23a4b0-1c2d-4e5f-8a9b-0c1d2e3f4a5b, got {found:?}")]
    NotAUuid {
        /// Which kind of id was expected.
        kind: &'static str,
        /// The text that was given.
        found: String,
    },
}

/// Whether `text` has the hyphenated `8-4-4-4-12` UUID shape (any case).
///
/// The resolver uses exactly this test to decide that a query names an id and must not fall
/// through to names, so ids parse only in this shape too.
pub fn is_uuid_shaped(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn parse_uuid(kind: &'static str, text: &str) -> Result<Uuid, IdError> {
    let not_a_uuid = || IdError::NotAUuid {
        kind,
        found: text.chars().take(64).collect(),
    };
    if !is_uuid_shaped(text) {
        return Err(not_a_uuid());
    }
    Uuid::try_parse(text).map_err(|_| not_a_uuid())
}

fn random_uuid<R: CryptoRngCore + ?Sized>(rng: &mut R) -> Uuid {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random (version 4) id drawn from `rng`.
            pub fn generate<R: CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
                Self(random_uuid(rng))
            }

            /// The id with these 16 bytes (as stored in a database or sent on the wire).
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }

            /// The 16 bytes of the id.
            pub const fn to_bytes(self) -> [u8; 16] {
                *self.0.as_bytes()
            }

            /// The id as a UUID.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            /// Parses the hyphenated `8-4-4-4-12` form, in either case.
            fn from_str(text: &str) -> Result<Self, IdError> {
                parse_uuid($kind, text).map(Self)
            }
        }

        impl fmt::Display for $name {
            /// The lowercase hyphenated form.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }
    };
}

uuid_id!(
    /// The permanent id of a fleet (what the wire calls `workspace_id`).
    FleetId,
    "fleet id"
);
uuid_id!(
    /// The permanent id of a user (a person who holds user tokens).
    UserId,
    "user id"
);
uuid_id!(
    /// The server-issued id of a machine, bound to (fleet, agent public key).
    MachineId,
    "machine id"
);
uuid_id!(
    /// The id of an API key or user token; it is the lookup key for the stored hash and is
    /// embedded in the credential's text form.
    CredentialId,
    "credential id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_cases_and_displays_lowercase() {
        let id: MachineId = "8F23A4B0-1C2D-4E5F-8A9B-0C1D2E3F4A5B".parse().unwrap();
        assert_eq!(id.to_string(), "8f23a4b0-1c2d-4e5f-8a9b-0c1d2e3f4a5b");
        assert_eq!(id, id.to_string().parse().unwrap());
        assert_eq!(MachineId::from_bytes(id.to_bytes()), id);
    }

    #[test]
    fn rejects_other_uuid_spellings_and_junk() {
        for bad in [
            "",
            "8f23a4b01c2d4e5f8a9b0c1d2e3f4a5b",
            "{8f23a4b0-1c2d-4e5f-8a9b-0c1d2e3f4a5b}",
            "urn:uuid:8f23a4b0-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
            "8f23a4b0-1c2d-4e5f-8a9b-0c1d2e3f4a5g",
            "8f23a4b0-1c2d-4e5f-8a9b-0c1d2e3f4a5",
            "web-1",
        ] {
            let err = bad.parse::<FleetId>().unwrap_err();
            assert!(
                err.to_string().starts_with("fleet id must be a UUID"),
                "{err}"
            );
        }
    }

    #[test]
    fn generate_draws_from_the_rng() {
        use rand::SeedableRng;
        let mut a = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = rand::rngs::StdRng::seed_from_u64(7);
        let x = CredentialId::generate(&mut a);
        assert_eq!(x, CredentialId::generate(&mut b));
        assert_ne!(x, CredentialId::generate(&mut a));
        assert_eq!(x.as_uuid().get_version_num(), 4);
    }
}
