//! The 32-byte Ed25519 seed: the one secret an identity is made of.

use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of a [`Seed`] in bytes.
pub(crate) const SEED_LEN: usize = 32;

/// The 32-byte secret an [`Identity`](crate::Identity) is derived from.
///
/// Zeroized on drop, redacted in `Debug`, no `Display`, and compared in constant time. It is deliberately not
/// `Clone`: every copy of a secret is one more place it can leak from.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Seed([u8; SEED_LEN]);

impl Seed {
    /// Draws a fresh seed from `rng`, which must be a cryptographically secure generator (for example the OS one).
    pub fn generate<R: CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; SEED_LEN];
        rng.fill_bytes(&mut bytes);
        let seed = Self(bytes);
        bytes.zeroize();
        seed
    }

    /// Wraps known seed bytes, for known-answer tests and for the store's decryption path.
    pub fn from_bytes(bytes: [u8; SEED_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw seed, for deriving the signing key and for encryption at rest; never leaves the crate.
    pub(crate) fn expose(&self) -> &[u8; SEED_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed(..)")
    }
}

impl PartialEq for Seed {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Seed {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let seed = Seed::from_bytes([0x42; 32]);
        assert_eq!(format!("{seed:?}"), "Seed(..)");
        assert_eq!(format!("{seed:#?}"), "Seed(..)");
    }

    #[test]
    fn equality_compares_every_byte() {
        let mut other = [0x42; 32];
        assert_eq!(Seed::from_bytes([0x42; 32]), Seed::from_bytes(other));
        other[31] = 0x43;
        assert_ne!(Seed::from_bytes([0x42; 32]), Seed::from_bytes(other));
    }
}
