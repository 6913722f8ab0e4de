//! Credentials: API keys and user tokens, their pasteable secret text, and the stored hash.
//!
//! A credential's text carries its kind and id next to the secret:
//!
//! ```text
//! cmdop_ak_<id: 26 base32 chars>_<secret: 52 base32 chars>    API key
//! cmdop_ut_<id: 26 base32 chars>_<secret: 52 base32 chars>    user token
//! ```
//!
//! The server looks the record up by id and compares a hash of the presented secret with the
//! stored one in constant time. The secret itself is shown once, at creation, and never stored.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::id::{CredentialId, FleetId, UserId};
use crate::name::Label;
use crate::role::Role;
use crate::time::Timestamp;

/// Domain label of the credential hash, framed like signature labels (length byte, then the
/// label; see docs/identity.md); bump the version if the hashed layout ever changes.
const HASH_DOMAIN: &[u8] = b"\x18cmdop credential-hash v1";
/// Length of a credential id in the text form (16 bytes, unpadded base32).
const ID_CHARS: usize = 26;
/// Length of a credential secret in the text form (32 bytes, unpadded base32).
const SECRET_CHARS: usize = 52;
/// `cmdop_xx_` + id + `_` + secret.
const TEXT_CHARS: usize = 9 + ID_CHARS + 1 + SECRET_CHARS;

/// What a credential is.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// An API key: one fleet, one role; for agents, scripts and CI.
    ApiKey,
    /// A user token: one user, a set of fleets, member rights in each.
    UserToken,
}

impl CredentialKind {
    /// The text prefix of this kind's secrets (`cmdop_ak_` or `cmdop_ut_`).
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::ApiKey => "cmdop_ak_",
            Self::UserToken => "cmdop_ut_",
        }
    }

    const fn hash_tag(self) -> u8 {
        match self {
            Self::ApiKey => 1,
            Self::UserToken => 2,
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ApiKey => "api key",
            Self::UserToken => "user token",
        })
    }
}

/// Credential text that did not parse. The messages never repeat the secret.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialParseError {
    /// The text does not start with a known prefix.
    #[error(
        "a cmdop credential starts with cmdop_ak_ (api key) or cmdop_ut_ (user token); check that you pasted the whole key"
    )]
    WrongPrefix,
    /// The text has the wrong length.
    #[error(
        "a cmdop credential is {expected} characters long, this one has {found}; check that you pasted the whole key"
    )]
    WrongLength {
        /// The length of every valid credential.
        expected: usize,
        /// The length given.
        found: usize,
    },
    /// A character is outside the lowercase base32 alphabet, or a separator is missing.
    #[error(
        "a cmdop credential contains only a-z, 2-7 and '_' separators; position {position} does not fit; check for typos"
    )]
    BadCharacter {
        /// Zero-based character position of the first bad character.
        position: usize,
    },
    /// The characters are valid but do not encode the id or secret canonically.
    #[error("the cmdop credential is corrupted (non-canonical encoding); copy it again")]
    BadEncoding,
}

/// The secret half of a credential: a kind, an id and 32 random bytes.
///
/// Zeroized on drop, compared in constant time, redacted in `Debug` and without `Display`;
/// [`expose_text`](Self::expose_text) is the one deliberate way to see it.
pub struct CredentialSecret {
    kind: CredentialKind,
    id: CredentialId,
    secret: [u8; 32],
}

impl CredentialSecret {
    /// A fresh credential of `kind` with a random id and secret.
    pub fn generate<R: CryptoRngCore + ?Sized>(kind: CredentialKind, rng: &mut R) -> Self {
        let id = CredentialId::generate(rng);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Self { kind, id, secret }
    }

    /// Parses the text form. Surrounding ASCII whitespace (a trailing newline in a key file, a
    /// space from a paste) is ignored.
    pub fn parse(text: &str) -> Result<Self, CredentialParseError> {
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        let kind = if text.starts_with(CredentialKind::ApiKey.prefix()) {
            CredentialKind::ApiKey
        } else if text.starts_with(CredentialKind::UserToken.prefix()) {
            CredentialKind::UserToken
        } else {
            return Err(CredentialParseError::WrongPrefix);
        };
        if text.len() != TEXT_CHARS {
            return Err(CredentialParseError::WrongLength {
                expected: TEXT_CHARS,
                found: text.chars().count(),
            });
        }
        let bytes = text.as_bytes();
        let separator = 9 + ID_CHARS;
        for (position, b) in bytes.iter().enumerate().skip(9) {
            let ok = if position == separator {
                *b == b'_'
            } else {
                b.is_ascii_lowercase() || (b'2'..=b'7').contains(b)
            };
            if !ok {
                return Err(CredentialParseError::BadCharacter { position });
            }
        }
        let id_text = bytes
            .get(9..separator)
            .ok_or(CredentialParseError::BadEncoding)?;
        let secret_text = bytes
            .get(separator + 1..)
            .ok_or(CredentialParseError::BadEncoding)?;
        let mut id = [0u8; 16];
        decode_lower(id_text, &mut id)?;
        let mut secret = [0u8; 32];
        decode_lower(secret_text, &mut secret)?;
        Ok(Self {
            kind,
            id: CredentialId::from_bytes(id),
            secret,
        })
    }

    /// The kind, readable without touching the secret.
    pub fn kind(&self) -> CredentialKind {
        self.kind
    }

    /// The id, readable without touching the secret: the server looks the record up by it.
    pub fn id(&self) -> CredentialId {
        self.id
    }

    /// The full text form. Show it once, at creation, or write it where the user asked.
    pub fn expose_text(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(TEXT_CHARS));
        out.push_str(self.kind.prefix());
        let mut id = [0u8; ID_CHARS];
        BASE32_NOPAD.encode_mut(&self.id.to_bytes(), &mut id);
        let mut secret = Zeroizing::new([0u8; SECRET_CHARS]);
        BASE32_NOPAD.encode_mut(&self.secret, &mut secret[..]);
        for b in id.iter().chain(b"_").chain(secret.iter()) {
            out.push(char::from(b.to_ascii_lowercase()));
        }
        out
    }

    /// The hash to store for this secret.
    pub fn hash(&self) -> CredentialHash {
        let mut hasher = Sha256::new();
        hasher.update(HASH_DOMAIN);
        hasher.update([self.kind.hash_tag()]);
        hasher.update(self.id.to_bytes());
        hasher.update(self.secret);
        CredentialHash(hasher.finalize().into())
    }
}

/// Decodes lowercase unpadded base32 into exactly `out.len()` bytes, rejecting non-canonical
/// trailing bits so every secret has exactly one text form.
fn decode_lower(text: &[u8], out: &mut [u8]) -> Result<(), CredentialParseError> {
    let mut upper = Zeroizing::new([0u8; SECRET_CHARS]);
    let upper = upper
        .get_mut(..text.len())
        .ok_or(CredentialParseError::BadEncoding)?;
    for (u, b) in upper.iter_mut().zip(text) {
        *u = b.to_ascii_uppercase();
    }
    match BASE32_NOPAD.decode_len(upper.len()) {
        Ok(len) if len == out.len() => {}
        _ => return Err(CredentialParseError::BadEncoding),
    }
    match BASE32_NOPAD.decode_mut(upper, out) {
        Ok(len) if len == out.len() => Ok(()),
        _ => Err(CredentialParseError::BadEncoding),
    }
}

impl FromStr for CredentialSecret {
    type Err = CredentialParseError;

    fn from_str(text: &str) -> Result<Self, CredentialParseError> {
        Self::parse(text)
    }
}

impl Drop for CredentialSecret {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for CredentialSecret {}

impl fmt::Debug for CredentialSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialSecret")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PartialEq for CredentialSecret {
    fn eq(&self, other: &Self) -> bool {
        let same_secret: bool = self.secret.ct_eq(&other.secret).into();
        same_secret & (self.kind == other.kind) & (self.id == other.id)
    }
}

impl Eq for CredentialSecret {}

/// What is stored instead of a secret: SHA-256 over a domain label, the kind, the id and the
/// secret.
///
/// A fast hash is right here: the secret is 256 bits from a CSPRNG, so there is nothing for a
/// slow password hash to protect against guessing.
#[derive(Clone, Copy)]
pub struct CredentialHash([u8; 32]);

impl CredentialHash {
    /// A hash read back from storage.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The bytes to store.
    pub const fn to_bytes(self) -> [u8; 32] {
        self.0
    }

    /// Whether `presented` hashes to this value, compared in constant time.
    pub fn verify(&self, presented: &CredentialSecret) -> bool {
        self.0.ct_eq(&presented.hash().0).into()
    }
}

impl PartialEq for CredentialHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for CredentialHash {}

impl fmt::Debug for CredentialHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialHash(..)")
    }
}

/// A credential that could not be issued.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The expiry is not after the creation time.
    #[error("the expiry must be in the future; pass a positive --expires duration")]
    ExpiryNotInFuture,
    /// A user token was asked for without any fleet.
    #[error("a user token needs at least one fleet; pass --fleet NAME")]
    NoFleets,
}

/// What to issue an API key for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeySpec {
    /// The one fleet the key reaches.
    pub fleet: FleetId,
    /// What it may do there.
    pub role: Role,
    /// An optional note.
    pub label: Option<Label>,
    /// When it stops working, if ever.
    pub expires: Option<Timestamp>,
}

/// The stored record of an API key. The secret is not here, only its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// Its id (also embedded in the secret's text).
    pub id: CredentialId,
    /// The one fleet it reaches.
    pub fleet: FleetId,
    /// What it may do there.
    pub role: Role,
    /// An optional note.
    pub label: Option<Label>,
    /// The hash of the secret.
    pub hash: CredentialHash,
    /// When it was issued.
    pub created: Timestamp,
    /// When it stops working, if ever (it is expired from this second on).
    pub expires: Option<Timestamp>,
    /// When it was revoked; a revoked key never authenticates again.
    pub revoked: Option<Timestamp>,
    /// When it last authenticated.
    pub last_used: Option<Timestamp>,
}

impl ApiKey {
    /// Issues a new key at `now`: the record to store and the secret to show once.
    pub fn issue<R: CryptoRngCore + ?Sized>(
        spec: ApiKeySpec,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<(Self, CredentialSecret), IssueError> {
        check_expiry(spec.expires, now)?;
        let secret = CredentialSecret::generate(CredentialKind::ApiKey, rng);
        let record = Self {
            id: secret.id(),
            fleet: spec.fleet,
            role: spec.role,
            label: spec.label,
            hash: secret.hash(),
            created: now,
            expires: spec.expires,
            revoked: None,
            last_used: None,
        };
        Ok((record, secret))
    }
}

/// What to issue a user token for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserTokenSpec {
    /// The user who holds it.
    pub user: UserId,
    /// The fleets it reaches, as a member (at least one).
    pub fleets: BTreeSet<FleetId>,
    /// An optional note.
    pub label: Option<Label>,
    /// When it stops working, if ever.
    pub expires: Option<Timestamp>,
}

/// The stored record of a user token. The secret is not here, only its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserToken {
    /// Its id (also embedded in the secret's text).
    pub id: CredentialId,
    /// The user who holds it.
    pub user: UserId,
    /// The fleets it reaches; it acts as a member in each.
    pub fleets: BTreeSet<FleetId>,
    /// An optional note.
    pub label: Option<Label>,
    /// The hash of the secret.
    pub hash: CredentialHash,
    /// When it was issued.
    pub created: Timestamp,
    /// When it stops working, if ever (it is expired from this second on).
    pub expires: Option<Timestamp>,
    /// When it was revoked; a revoked token never authenticates again.
    pub revoked: Option<Timestamp>,
    /// When it last authenticated.
    pub last_used: Option<Timestamp>,
}

impl UserToken {
    /// Issues a new token at `now`: the record to store and the secret to show once.
    pub fn issue<R: CryptoRngCore + ?Sized>(
        spec: UserTokenSpec,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<(Self, CredentialSecret), IssueError> {
        check_expiry(spec.expires, now)?;
        if spec.fleets.is_empty() {
            return Err(IssueError::NoFleets);
        }
        let secret = CredentialSecret::generate(CredentialKind::UserToken, rng);
        let record = Self {
            id: secret.id(),
            user: spec.user,
            fleets: spec.fleets,
            label: spec.label,
            hash: secret.hash(),
            created: now,
            expires: spec.expires,
            revoked: None,
            last_used: None,
        };
        Ok((record, secret))
    }
}

fn check_expiry(expires: Option<Timestamp>, now: Timestamp) -> Result<(), IssueError> {
    match expires {
        Some(at) if at <= now => Err(IssueError::ExpiryNotInFuture),
        _ => Ok(()),
    }
}

/// Either kind of stored credential, as the server finds it by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialRecord {
    /// An API key.
    ApiKey(ApiKey),
    /// A user token.
    UserToken(UserToken),
}

impl CredentialRecord {
    /// Its id.
    pub fn id(&self) -> CredentialId {
        match self {
            Self::ApiKey(key) => key.id,
            Self::UserToken(token) => token.id,
        }
    }

    /// Its kind.
    pub fn kind(&self) -> CredentialKind {
        match self {
            Self::ApiKey(_) => CredentialKind::ApiKey,
            Self::UserToken(_) => CredentialKind::UserToken,
        }
    }

    /// The stored hash.
    pub fn hash(&self) -> &CredentialHash {
        match self {
            Self::ApiKey(key) => &key.hash,
            Self::UserToken(token) => &token.hash,
        }
    }

    /// When it expires, if ever.
    pub fn expires(&self) -> Option<Timestamp> {
        match self {
            Self::ApiKey(key) => key.expires,
            Self::UserToken(token) => token.expires,
        }
    }

    /// When it was revoked, if it was.
    pub fn revoked(&self) -> Option<Timestamp> {
        match self {
            Self::ApiKey(key) => key.revoked,
            Self::UserToken(token) => token.revoked,
        }
    }
}

impl From<ApiKey> for CredentialRecord {
    fn from(key: ApiKey) -> Self {
        Self::ApiKey(key)
    }
}

impl From<UserToken> for CredentialRecord {
    fn from(token: UserToken) -> Self {
        Self::UserToken(token)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(1)
    }

    #[test]
    fn text_form_round_trips_and_has_the_documented_shape() {
        let mut rng = rng();
        for kind in [CredentialKind::ApiKey, CredentialKind::UserToken] {
            let secret = CredentialSecret::generate(kind, &mut rng);
            let text = secret.expose_text();
            assert_eq!(text.len(), 88);
            assert!(text.starts_with(kind.prefix()));
            assert_eq!(text.as_bytes()[35], b'_');
            assert!(
                text[9..]
                    .bytes()
                    .all(|b| b == b'_' || b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
            );
            let back = CredentialSecret::parse(&text).unwrap();
            assert_eq!(back, secret);
            assert_eq!(back.kind(), kind);
            assert_eq!(back.id(), secret.id());
            assert_eq!(back.hash(), secret.hash());
            assert_eq!(
                CredentialSecret::parse(&format!("  {}\n", *text)).unwrap(),
                secret
            );
        }
    }

    #[test]
    fn parse_errors_are_specific_and_never_echo_the_secret() {
        let secret = CredentialSecret::generate(CredentialKind::ApiKey, &mut rng());
        let text = secret.expose_text();
        let cases: Vec<(String, CredentialParseError)> = vec![
            (
                text.replacen("cmdop_ak_", "cmdop_xx_", 1),
                CredentialParseError::WrongPrefix,
            ),
            (String::new(), CredentialParseError::WrongPrefix),
            (
                text[..87].to_owned(),
                CredentialParseError::WrongLength {
                    expected: 88,
                    found: 87,
                },
            ),
            (
                format!("{}a", *text),
                CredentialParseError::WrongLength {
                    expected: 88,
                    found: 89,
                },
            ),
            (
                format!("{}A{}", &text[..40], &text[41..]),
                CredentialParseError::BadCharacter { position: 40 },
            ),
            (
                format!("{}1{}", &text[..12], &text[13..]),
                CredentialParseError::BadCharacter { position: 12 },
            ),
            (
                format!("{}a{}", &text[..35], &text[36..]),
                CredentialParseError::BadCharacter { position: 35 },
            ),
        ];
        for (bad, expected) in cases {
            let err = CredentialSecret::parse(&bad).unwrap_err();
            assert_eq!(err, expected, "{bad}");
            assert!(!err.to_string().contains(&text[36..]));
        }
    }

    #[test]
    fn non_canonical_trailing_bits_are_rejected() {
        // 52 base32 characters carry 260 bits for 32 bytes: the last character's low four
        // bits are padding and must be zero, so each secret has exactly one spelling.
        let secret = CredentialSecret::generate(CredentialKind::UserToken, &mut rng());
        let text = secret.expose_text();
        let last = text.as_bytes()[87];
        let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
        let index = alphabet.iter().position(|c| *c == last).unwrap();
        let flipped = alphabet[index ^ 1];
        let bad = format!("{}{}", &text[..87], char::from(flipped));
        assert_eq!(
            CredentialSecret::parse(&bad).unwrap_err(),
            CredentialParseError::BadEncoding
        );
    }

    #[test]
    fn hash_matches_the_documented_construction() {
        // Computed independently with Python's hashlib:
        // sha256(b"\x18cmdop credential-hash v1" + b"\x01" + bytes(range(16)) + bytes(range(32, 64)))
        assert_eq!(usize::from(HASH_DOMAIN[0]), HASH_DOMAIN.len() - 1);
        let text = "cmdop_ak_aaaqeayeaudaocajbifqydiob4_eaqseizeeutcokbjfivsyljof4ydcmrtgq2tmnzyhe5dwpb5hy7q";
        let secret = CredentialSecret::parse(text).unwrap();
        assert_eq!(
            secret.id().to_bytes(),
            core::array::from_fn::<u8, 16, _>(|i| i as u8)
        );
        assert_eq!(*secret.expose_text(), text);
        let hex: String = secret
            .hash()
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "9fc3d712f823edcada74450c9a7f3325262e189ecb7041c97936e43a454aac50"
        );
    }

    #[test]
    fn debug_is_redacted() {
        let secret = CredentialSecret::generate(CredentialKind::ApiKey, &mut rng());
        let text = secret.expose_text();
        let debug = format!("{secret:?} {:?}", secret.hash());
        assert!(!debug.contains(&text[36..]), "{debug}");
        assert!(debug.contains(&secret.id().to_string()));
        assert!(debug.contains("CredentialHash(..)"));
    }

    #[test]
    fn hash_binds_kind_and_id() {
        let secret = CredentialSecret::generate(CredentialKind::ApiKey, &mut rng());
        let hash = secret.hash();
        assert!(hash.verify(&secret));
        let mut other_kind = CredentialSecret::parse(&secret.expose_text()).unwrap();
        other_kind.kind = CredentialKind::UserToken;
        assert!(!hash.verify(&other_kind));
        let mut other_id = CredentialSecret::parse(&secret.expose_text()).unwrap();
        other_id.id = CredentialId::from_bytes([9; 16]);
        assert!(!hash.verify(&other_id));
        assert_eq!(CredentialHash::from_bytes(hash.to_bytes()), hash);
    }

    #[test]
    fn issue_checks_expiry_and_fleets() {
        let mut rng = rng();
        let now = Timestamp::from_unix_seconds(1_000);
        let fleet = FleetId::generate(&mut rng);
        let spec = |expires| ApiKeySpec {
            fleet,
            role: Role::Agent,
            label: None,
            expires,
        };
        assert_eq!(
            ApiKey::issue(spec(Some(now)), now, &mut rng).unwrap_err(),
            IssueError::ExpiryNotInFuture
        );
        let (record, secret) =
            ApiKey::issue(spec(Some(now.saturating_add_seconds(1))), now, &mut rng).unwrap();
        assert_eq!(record.id, secret.id());
        assert!(record.hash.verify(&secret));
        assert_eq!(record.created, now);
        let token = UserTokenSpec {
            user: UserId::generate(&mut rng),
            fleets: BTreeSet::new(),
            label: None,
            expires: None,
        };
        assert_eq!(
            UserToken::issue(token, now, &mut rng).unwrap_err(),
            IssueError::NoFleets
        );
    }
}
