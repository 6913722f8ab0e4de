//! The keypair, public keys and signatures; every signature is domain separated (`domain.rs`).

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE64URL_NOPAD;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::{Purpose, framed};
use crate::error::IdentityError;
use crate::fingerprint::Fingerprint;
use crate::seed::Seed;
use crate::text::{decode_fixed, strip_tag};

/// Prefix of the public key text form.
pub(crate) const PUBLIC_KEY_PREFIX: &str = "ed25519:";
const PUBLIC_KEY_TEXT_LEN: usize = 43;
const SIGNATURE_LEN: usize = 64;

/// An Ed25519 keypair held in memory. Private key bytes are never handed out; `Debug` shows only the
/// fingerprint. The signing key is zeroized on drop.
pub struct Identity {
    signing: SigningKey,
    public: PublicKey,
}

impl Identity {
    /// Derives the keypair from `seed` (RFC 8032 key generation).
    pub fn from_seed(seed: &Seed) -> Self {
        let signing = SigningKey::from_bytes(seed.expose());
        let public = PublicKey(signing.verifying_key());
        Self { signing, public }
    }

    /// Creates an identity from a fresh seed; for trust keys and tests that need no persistence.
    pub fn generate<R: CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        Self::from_seed(&Seed::generate(rng))
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Signs `message` for `purpose`; the signature verifies only with the same purpose.
    pub fn sign(&self, purpose: Purpose, message: &[u8]) -> Signature {
        self.sign_raw(&framed(purpose.label(), message))
    }

    /// The seed, for deriving purpose-bound symmetric keys inside this crate only (see `derive.rs`).
    pub(crate) fn seed_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.signing.to_bytes())
    }

    /// Plain RFC 8032 Ed25519 over exactly `bytes`, with no label; kept private so that every signature the
    /// crate hands out is domain separated. The RFC 8032 known-answer tests use it directly.
    pub(crate) fn sign_raw(&self, bytes: &[u8]) -> Signature {
        Signature(self.signing.sign(bytes).to_bytes())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.public.fingerprint().to_string())
            .finish_non_exhaustive()
    }
}

/// A validated Ed25519 public key: on the curve, canonically encoded, not of small order.
///
/// Text form: `ed25519:` followed by the 32 bytes in unpadded base64url (43 characters).
///
/// Equality, ordering and hashing are over the canonical 32 bytes.
#[derive(Clone, Copy)]
pub struct PublicKey(VerifyingKey);

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for PublicKey {}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl PublicKey {
    /// Validates 32 bytes as a public key; rejects non-points, non-canonical encodings and small-order keys.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, IdentityError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| IdentityError::InvalidPoint)?;
        // ed25519-dalek accepts y >= p and "negative zero"; re-encoding catches both, so that one key has
        // exactly one byte form and comparing bytes compares keys.
        if key.to_edwards().compress().as_bytes() != bytes {
            return Err(IdentityError::InvalidPoint);
        }
        if key.is_weak() {
            return Err(IdentityError::WeakKey);
        }
        Ok(Self(key))
    }

    /// The 32-byte encoding.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The 32-byte encoding, borrowed.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Checks `signature` over `message` for `purpose` with `verify_strict` (no malleable or weak-key
    /// signatures).
    pub fn verify(
        &self,
        purpose: Purpose,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        self.verify_raw(&framed(purpose.label(), message), signature)
    }

    /// Strict RFC 8032 verification over exactly `bytes`; private for the same reason as `Identity::sign_raw`.
    pub(crate) fn verify_raw(
        &self,
        bytes: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.0
            .verify_strict(bytes, &signature)
            .map_err(|_| SignatureError(()))
    }

    /// The fingerprint people compare out of band.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_key_bytes(self.as_bytes())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PUBLIC_KEY_PREFIX}{}",
            BASE64URL_NOPAD.encode(self.as_bytes())
        )
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = IdentityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let body = strip_tag(text, "public key", PUBLIC_KEY_PREFIX)?;
        let bytes: [u8; 32] = decode_fixed(
            body,
            "public key",
            PUBLIC_KEY_TEXT_LEN,
            &BASE64URL_NOPAD,
            "base64url (A-Z a-z 0-9 - _)",
        )?;
        Self::from_bytes(&bytes)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serialize_raw(self.as_bytes(), serializer)
        }
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            text.parse().map_err(de::Error::custom)
        } else {
            let bytes: [u8; 32] = deserialize_raw(deserializer)?;
            Self::from_bytes(&bytes).map_err(de::Error::custom)
        }
    }
}

/// An Ed25519 signature (64 bytes). Serialized as 64 raw bytes in binary formats and lowercase hex in
/// human-readable ones.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; SIGNATURE_LEN]);

impl Signature {
    /// Wraps 64 signature bytes; whether they are a valid signature is decided by [`PublicKey::verify`].
    pub fn from_bytes(bytes: &[u8; SIGNATURE_LEN]) -> Self {
        Self(*bytes)
    }

    /// The 64-byte encoding (R followed by s).
    pub fn to_bytes(&self) -> [u8; SIGNATURE_LEN] {
        self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&data_encoding::HEXLOWER.encode(&self.0))
        } else {
            serialize_raw(&self.0, serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            let bytes = data_encoding::HEXLOWER_PERMISSIVE
                .decode(text.as_bytes())
                .map_err(|e| de::Error::custom(format_args!("signature is not hex: {e}")))?;
            let bytes: [u8; SIGNATURE_LEN] = bytes.try_into().map_err(|v: Vec<u8>| {
                de::Error::custom(format_args!("signature must be 64 bytes, got {}", v.len()))
            })?;
            Ok(Self(bytes))
        } else {
            deserialize_raw(deserializer).map(Self)
        }
    }
}

/// Writes `N` bytes as a fixed-size tuple, which postcard encodes with no length prefix.
fn serialize_raw<const N: usize, S: Serializer>(
    bytes: &[u8; N],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut tuple = serializer.serialize_tuple(N)?;
    for byte in bytes {
        tuple.serialize_element(byte)?;
    }
    tuple.end()
}

/// Reads the fixed-size tuple written by [`serialize_raw`].
fn deserialize_raw<'de, const N: usize, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<[u8; N], D::Error> {
    struct Raw<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for Raw<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{N} bytes")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = [0u8; N];
            for (i, slot) in out.iter_mut().enumerate() {
                *slot = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(i, &self))?;
            }
            Ok(out)
        }
    }

    deserializer.deserialize_tuple(N, Raw::<N>)
}

/// A signature did not verify. Deliberately opaque: telling an attacker why helps only the attacker.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signature verification failed")]
pub struct SignatureError(());
