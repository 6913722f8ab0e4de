//! Credential secrets: the text form shown once at creation, and the hash the store keeps instead.
//!
//! Text form: `cmdop_ak_<id>_<secret>` (API key) or `cmdop_ut_<id>_<secret>` (user token), where `<id>` is 16
//! lowercase hex digits (public, used to find the record and to revoke it) and `<secret>` is 64 lowercase hex
//! digits (256 random bits). The store keeps `SHA-256(secret)`: with 256 bits of entropy a slow KDF adds
//! nothing, and a fast hash keeps authentication cheap enough to run on every login.

use std::fmt;

use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Number of hex digits in a credential id.
pub const CREDENTIAL_ID_LEN: usize = 16;
const SECRET_HEX_LEN: usize = 64;

/// Which kind of credential a text form names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// An API key: exactly one fleet, with a role.
    ApiKey,
    /// A user token: a user's set of fleets.
    UserToken,
}

impl CredentialKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::ApiKey => "cmdop_ak_",
            Self::UserToken => "cmdop_ut_",
        }
    }
}

/// A credential secret as presented by a peer or shown once at creation. Zeroized on drop; `Debug` shows only
/// the kind and id.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct CredentialSecret {
    #[zeroize(skip)]
    kind: CredentialKind,
    id: String,
    secret: String,
}

/// Why a credential text could not be parsed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialParseError {
    /// The text does not have the `cmdop_ak_<id>_<secret>` / `cmdop_ut_<id>_<secret>` shape.
    #[error(
        "not a cmdop credential: expected cmdop_ak_<id>_<secret> or cmdop_ut_<id>_<secret>; copy the whole secret printed at creation"
    )]
    Shape,
}

impl CredentialSecret {
    /// Generates a fresh credential of `kind`.
    pub fn generate<R: CryptoRngCore + ?Sized>(kind: CredentialKind, rng: &mut R) -> Self {
        let mut id = [0u8; CREDENTIAL_ID_LEN / 2];
        let mut secret = [0u8; SECRET_HEX_LEN / 2];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        let text = Self {
            kind,
            id: hex::encode(id),
            secret: hex::encode(secret),
        };
        secret.zeroize();
        text
    }

    /// Parses the text form; surrounding whitespace (a trailing newline from a file) is ignored.
    pub fn parse(text: &str) -> Result<Self, CredentialParseError> {
        let text = text.trim();
        let (kind, rest) = if let Some(rest) = text.strip_prefix(CredentialKind::ApiKey.prefix()) {
            (CredentialKind::ApiKey, rest)
        } else if let Some(rest) = text.strip_prefix(CredentialKind::UserToken.prefix()) {
            (CredentialKind::UserToken, rest)
        } else {
            return Err(CredentialParseError::Shape);
        };
        let (id, secret) = rest.split_once('_').ok_or(CredentialParseError::Shape)?;
        let lower_hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !lower_hex(id, CREDENTIAL_ID_LEN) || !lower_hex(secret, SECRET_HEX_LEN) {
            return Err(CredentialParseError::Shape);
        }
        Ok(Self {
            kind,
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The kind of credential.
    pub fn kind(&self) -> CredentialKind {
        self.kind
    }

    /// The public id (16 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The full text form, to be shown exactly once. Deliberately not `Display`, so it cannot end up in logs.
    pub fn expose_text(&self) -> String {
        format!("{}{}_{}", self.kind.prefix(), self.id, self.secret)
    }

    /// The hash the store keeps.
    pub fn hash(&self) -> CredentialHash {
        CredentialHash(Sha256::digest(self.secret.as_bytes()).into())
    }
}

impl fmt::Debug for CredentialSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialSecret")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a credential secret. Compared in constant time.
#[derive(Clone, Copy)]
pub struct CredentialHash(pub [u8; 32]);

impl CredentialHash {
    /// Constant-time comparison against a stored hash.
    pub fn matches(&self, stored: &[u8]) -> bool {
        stored.len() == 32 && bool::from(self.0.as_slice().ct_eq(stored))
    }
}

impl fmt::Debug for CredentialHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialHash(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_hash_check() {
        let secret = CredentialSecret::generate(CredentialKind::ApiKey, &mut rand_core::OsRng);
        let text = secret.expose_text();
        assert!(text.starts_with("cmdop_ak_"));
        let parsed = CredentialSecret::parse(&format!("{text}\n")).unwrap();
        assert_eq!(parsed.id(), secret.id());
        assert!(parsed.hash().matches(&secret.hash().0));
        assert!(!format!("{parsed:?}").contains(&text[26..]));
    }

    #[test]
    fn malformed_texts_are_refused() {
        for bad in [
            "",
            "cmdop_ak_",
            "cmdop_xx_0123456789abcdef_00",
            "cmdop_ak_0123456789ABCDEF_",
            "token",
        ] {
            assert_eq!(
                CredentialSecret::parse(bad).unwrap_err(),
                CredentialParseError::Shape,
                "{bad}"
            );
        }
    }
}
