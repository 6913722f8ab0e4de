//! Fingerprints: the stable, copy-pasteable names people compare to check they have the right public key.

use std::fmt;
use std::str::FromStr;

use data_encoding::{BASE32_NOPAD, BASE64_NOPAD};
use sha2::{Digest, Sha256};

use crate::domain::framed;
use crate::error::IdentityError;
use crate::text::{decode_fixed, strip_tag};

/// Domain-separation label hashed in front of the key, so a fingerprint is never the hash of anything else.
pub(crate) const FINGERPRINT_LABEL: &str = "cmdop fingerprint v1";
const LONG_PREFIX: &str = "SHA256:";
const LONG_TEXT_LEN: usize = 43;
/// Characters of base32 in the short form (50 bits), split into two groups of five for reading aloud.
const SHORT_CHARS: usize = 10;

/// SHA-256 of the domain-separated public key.
///
/// `Display` is the long form, `SHA256:` + 43 characters of unpadded standard base64 (the shape OpenSSH
/// users know; the value differs from `ssh-keygen -l` because of the domain separation). [`Fingerprint::short`]
/// is 10 lowercase base32 characters in two groups (`abcde-fghij`), for reading aloud; it identifies a key
/// well enough for a person to confirm, but the long form is what tools pin.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a validated public key, from its 32 canonical bytes. `PublicKey::fingerprint` is
    /// the way in; taking bytes rather than the key keeps this module independent of `keys`.
    pub(crate) fn of_key_bytes(key: &[u8; 32]) -> Self {
        Self(Sha256::digest(framed(FINGERPRINT_LABEL, key)).into())
    }

    /// The short form, `abcde-fghij`: the first 50 bits of the digest in lowercase base32.
    pub fn short(&self) -> String {
        let encoded = BASE32_NOPAD.encode(&self.0).to_ascii_lowercase();
        let chars: String = encoded.chars().take(SHORT_CHARS).collect();
        let (left, right) = chars.split_at(SHORT_CHARS / 2);
        format!("{left}-{right}")
    }

    /// Whether `text` is this fingerprint's short form, ignoring case, surrounding spaces and the hyphen.
    pub fn matches_short(&self, text: &str) -> bool {
        let normalize = |s: &str| -> String {
            s.trim()
                .chars()
                .filter(|c| *c != '-')
                .map(|c| c.to_ascii_lowercase())
                .collect()
        };
        normalize(text) == normalize(&self.short())
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{LONG_PREFIX}{}", BASE64_NOPAD.encode(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = IdentityError;

    /// Parses the long form only; the short form is too short to be an identifier.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let body = strip_tag(text, "fingerprint", LONG_PREFIX)?;
        decode_fixed(
            body,
            "fingerprint",
            LONG_TEXT_LEN,
            &BASE64_NOPAD,
            "base64 (A-Z a-z 0-9 + /)",
        )
        .map(Self)
    }
}
