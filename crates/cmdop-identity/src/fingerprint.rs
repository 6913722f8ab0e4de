//! Fingerprints: the stable, copy-pasteable names people compare to check they have the right public key.
//!
//! **One text form everywhere a person compares keys:** `SHA256:` followed by 43 characters of unpadded
//! standard base64 ([`sha256_text`]). Machine and client keys ([`Fingerprint`]), the relay's certificate
//! (`cmdop_proto::RelayFingerprint`) and every other digest a person is asked to compare are written this way;
//! the short form (`abcde-fghij`, [`Fingerprint::short`]) may stand beside a key's. Input accepts the older
//! spellings too ([`parse_sha256_text`]): `sha256:<hex>`, bare or colon-separated hex.

use std::fmt;
use std::str::FromStr;

use data_encoding::{BASE32_NOPAD, BASE64_NOPAD, HEXLOWER_PERMISSIVE};
use sha2::{Digest, Sha256};

use crate::domain::framed;
use crate::error::IdentityError;
use crate::keys::PublicKey;
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

    /// The long form with the short one beside it, `SHA256:… (abcde-fghij)`: how a key is shown to a person
    /// who may compare either.
    pub fn with_short(&self) -> String {
        format!("{self} ({})", self.short())
    }
}

/// The canonical text of a SHA-256 digest that a person compares: `SHA256:` + 43 characters of unpadded
/// standard base64, the shape OpenSSH users know. [`Fingerprint`]'s `Display` is this.
pub fn sha256_text(digest: &[u8; 32]) -> String {
    format!("{LONG_PREFIX}{}", BASE64_NOPAD.encode(digest))
}

/// Reads a SHA-256 digest written in any of the forms cmdop has printed: the canonical `SHA256:<base64>` (the
/// prefix in any case, `=` padding allowed), and the older `sha256:<64 hex digits>`, bare hex, and hex with
/// `:` between the bytes (as `openssl x509 -fingerprint` prints it), in either case. Surrounding spaces are
/// ignored. `None` when the text is none of these.
pub fn parse_sha256_text(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let body = match text.get(..LONG_PREFIX.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(LONG_PREFIX) => {
            text.get(LONG_PREFIX.len()..).unwrap_or_default()
        }
        _ => text,
    };
    let hex: String = body.chars().filter(|c| *c != ':').collect();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return HEXLOWER_PERMISSIVE
            .decode(hex.as_bytes())
            .ok()?
            .try_into()
            .ok();
    }
    let base64 = body.trim_end_matches('=');
    if base64.len() != LONG_TEXT_LEN {
        return None;
    }
    BASE64_NOPAD.decode(base64.as_bytes()).ok()?.try_into().ok()
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&sha256_text(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = IdentityError;

    /// Parses the long form, or a public key (`ed25519:…`, as `known_machines` and older messages show keys)
    /// as its fingerprint; the short form is too short to be an identifier.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.starts_with(crate::keys::PUBLIC_KEY_PREFIX) {
            return text.parse::<PublicKey>().map(|key| key.fingerprint());
        }
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
