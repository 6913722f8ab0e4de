//! The relay's certificate fingerprint: what agents and clients pin instead of trusting the web PKI.
//!
//! SHA-256 of the relay's leaf certificate (DER), written like every fingerprint a person compares:
//! `SHA256:<43 characters of base64>` ([`cmdop_identity::sha256_text`]). The older `sha256:<64 hex digits>`
//! (and bare or colon-separated hex) still parse, so saved logins and config files keep working. The check
//! itself runs inside the TLS handshake (in `cmdop-client`); this module is the value and its text form.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// SHA-256 of the relay's leaf certificate (DER). Text form: `SHA256:<base64>`, see the module docs.
#[derive(Clone, Copy, Eq)]
pub struct RelayFingerprint([u8; 32]);

/// Text that is not a relay fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid relay fingerprint {0:?}: expected SHA256: and 43 characters as printed by `cmdop-relay fingerprint` (the older sha256:<64 hex digits> works too)"
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
        f.write_str(&cmdop_identity::sha256_text(&self.0))
    }
}

impl fmt::Debug for RelayFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayFingerprint({self})")
    }
}

impl FromStr for RelayFingerprint {
    type Err = FingerprintParseError;

    /// Accepts every form [`cmdop_identity::parse_sha256_text`] reads: `SHA256:<base64>`, and the older
    /// `sha256:<hex>`, bare hex and colon-separated hex.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        cmdop_identity::parse_sha256_text(text)
            .map(Self)
            .ok_or_else(|| FingerprintParseError(text.chars().take(120).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_text_round_trip() {
        let fp = RelayFingerprint::of_cert(b"cert");
        let text = fp.to_string();
        assert!(
            text.starts_with("SHA256:") && text.len() == 7 + 43,
            "{text}"
        );
        assert_eq!(text.parse::<RelayFingerprint>().unwrap(), fp);
        // The form every earlier relay printed, and what saved logins and config files hold, still reads.
        let old = format!("sha256:{}", hex::encode(fp.as_bytes()));
        assert_eq!(old.parse::<RelayFingerprint>().unwrap(), fp);
        assert_eq!(old.to_uppercase().parse::<RelayFingerprint>().unwrap(), fp);
        assert_eq!(
            old.trim_start_matches("sha256:")
                .parse::<RelayFingerprint>()
                .unwrap(),
            fp
        );
        let err = "sha256:abcd".parse::<RelayFingerprint>().unwrap_err();
        assert!(err.to_string().contains("SHA256:"), "{err}");
        assert!("".parse::<RelayFingerprint>().is_err());
    }
}
