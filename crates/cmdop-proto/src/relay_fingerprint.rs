//! The relay's certificate fingerprint: what agents and clients pin instead of trusting the web PKI.
//!
//! SHA-256 of the relay's leaf certificate (DER), written `sha256:<64 lowercase hex digits>`. The check itself
//! runs inside the TLS handshake (in `cmdop-client`); this module is the value and its text form.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// SHA-256 of the relay's leaf certificate (DER). Text form: `sha256:<64 lowercase hex digits>`.
#[derive(Clone, Copy, Eq)]
pub struct RelayFingerprint([u8; 32]);

/// Text that is not a relay fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid relay fingerprint {0:?}: expected sha256:<64 hex digits> as printed by `cmdop-relay fingerprint`"
)]
pub struct FingerprintParseError(pub String);

impl RelayFingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of_cert(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// A fingerprint from its raw digest.
    pub fn from_bytes(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for RelayFingerprint {
    /// Constant time: a pin comparison must not leak how much of a forged certificate's digest matched.
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl std::hash::Hash for RelayFingerprint {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Consistent with `eq`: equal fingerprints have equal bytes.
        self.0.hash(state);
    }
}

impl fmt::Display for RelayFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for RelayFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayFingerprint({self})")
    }
}

impl FromStr for RelayFingerprint {
    type Err = FingerprintParseError;

    /// Accepts `sha256:<hex>` (prefix case-insensitive), upper- or lowercase hex, with optional `:` separators.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || FingerprintParseError(text.chars().take(120).collect());
        let trimmed = text.trim();
        let hex_part = match trimmed.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => {
                trimmed.get(7..).unwrap_or_default()
            }
            _ => trimmed,
        };
        let compact: String = hex_part.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(compact.to_ascii_lowercase()).map_err(|_| bad())?;
        let digest: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Self(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_text_round_trip() {
        let fp = RelayFingerprint::of_cert(b"cert");
        let text = fp.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 7 + 64);
        assert_eq!(text.parse::<RelayFingerprint>().unwrap(), fp);
        assert_eq!(text.to_uppercase().parse::<RelayFingerprint>().unwrap(), fp);
        assert_eq!(
            text.trim_start_matches("sha256:")
                .parse::<RelayFingerprint>()
                .unwrap(),
            fp
        );
        assert!("sha256:abcd".parse::<RelayFingerprint>().is_err());
        assert!("".parse::<RelayFingerprint>().is_err());
    }
}
