//! Keys derived with HKDF-SHA256, one per registered purpose: symmetric keys from an identity's seed, for local
//! encryption at rest (the CLI seals its saved credential with one), and signing seeds from a shared secret (an
//! enrolment secret becomes the Ed25519 key that proves holding it). Derived keys are independent of each other
//! and of their input: HKDF-SHA256 with the seed or secret as input keying material and a versioned label as
//! `info`.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::keys::Identity;
use crate::seed::Seed;

/// What a derived key is for. Each purpose has its own label, registered in `docs/security.md`.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPurpose {
    /// AES-256-GCM key that seals the credential `cmdop login` saves.
    ClientLoginStore,
    /// The Ed25519 seed of a fleet's enrolment key, derived from the enrolment secret an admin hands out: whoever
    /// holds the secret can sign with the key, and the relay, which sees only the public half and signatures,
    /// learns nothing that would let it sign.
    EnrolmentKey,
}

impl KeyPurpose {
    /// The HKDF `info` label, versioned so a format change never reuses a key.
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientLoginStore => "cmdop client-login-store v1",
            Self::EnrolmentKey => "cmdop enrolment-key v1",
        }
    }
}

/// HKDF-SHA256 (no salt) of `ikm`, expanded to 32 bytes with `purpose`'s label as `info`.
fn expand(ikm: &[u8], purpose: KeyPurpose) -> Zeroizing<[u8; 32]> {
    let hkdf = Hkdf::<Sha256>::new(None, ikm);
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    if hkdf
        .expand(purpose.label().as_bytes(), key.as_mut_slice())
        .is_err()
    {
        unreachable!("HKDF-SHA256 can always expand 32 bytes");
    }
    key
}

impl Seed {
    /// The signing seed for `purpose` derived from a 32-byte `secret` (for [`KeyPurpose::EnrolmentKey`]: the
    /// enrolment secret). Everyone holding the secret derives the same key; nobody without it can.
    pub fn derive_from_secret(secret: &[u8; 32], purpose: KeyPurpose) -> Self {
        Self::from_bytes(*expand(secret, purpose))
    }
}

impl Identity {
    /// A 32-byte key for `purpose`, derived from this identity's seed. Never equal to the seed or the signing
    /// key, and never equal across purposes.
    pub fn derive_key(&self, purpose: KeyPurpose) -> Zeroizing<[u8; 32]> {
        expand(self.seed_bytes().as_slice(), purpose)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Seed;

    #[test]
    fn derived_key_is_stable_and_matches_rfc5869_hkdf() {
        let identity = Identity::from_seed(&Seed::from_bytes([7u8; 32]));
        let key = identity.derive_key(KeyPurpose::ClientLoginStore);
        assert_eq!(*key, *identity.derive_key(KeyPurpose::ClientLoginStore));
        assert_ne!(key.as_slice(), [7u8; 32].as_slice());
        // Independent computation: HKDF-Extract with an all-zero salt, then one Expand block.
        use hmac_check::hkdf_reference;
        assert_eq!(
            *key,
            hkdf_reference(&[7u8; 32], KeyPurpose::ClientLoginStore.label().as_bytes())
        );
    }

    #[test]
    fn enrolment_seed_is_hkdf_of_the_secret_and_differs_from_other_purposes() {
        use hmac_check::hkdf_reference;
        let secret = [9u8; 32];
        let seed = Seed::derive_from_secret(&secret, KeyPurpose::EnrolmentKey);
        let expected = hkdf_reference(&secret, KeyPurpose::EnrolmentKey.label().as_bytes());
        assert_eq!(seed, Seed::from_bytes(expected));
        assert_ne!(
            seed,
            Seed::derive_from_secret(&secret, KeyPurpose::ClientLoginStore)
        );
        assert_ne!(seed, Seed::from_bytes(secret));
    }

    mod hmac_check {
        use sha2::{Digest, Sha256};

        fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
            let mut k = [0u8; 64];
            k[..key.len()].copy_from_slice(key);
            let mut inner = Sha256::new();
            inner.update(k.map(|b| b ^ 0x36));
            inner.update(data);
            let mut outer = Sha256::new();
            outer.update(k.map(|b| b ^ 0x5c));
            outer.update(inner.finalize());
            outer.finalize().into()
        }

        pub(super) fn hkdf_reference(ikm: &[u8], info: &[u8]) -> [u8; 32] {
            let prk = hmac(&[0u8; 32], ikm);
            hmac(&prk, &[info, &[1u8]].concat())
        }
    }
}
