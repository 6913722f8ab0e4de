//! Errors for parsing and validating public keys and fingerprints.

/// Why a public key or fingerprint was rejected.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The text does not start with the expected tag.
    #[error(
        "{what} must start with `{expected}` (got `{found}`); copy the whole value including its prefix"
    )]
    WrongPrefix {
        /// What was being parsed ("public key" or "fingerprint").
        what: &'static str,
        /// The prefix that was expected.
        expected: &'static str,
        /// The start of the offending text, shortened.
        found: String,
    },
    /// A character outside the encoding's alphabet, or padding, was found.
    #[error(
        "{what} has an invalid character at position {position}; expected {alphabet} without `=` padding"
    )]
    BadCharacter {
        /// What was being parsed.
        what: &'static str,
        /// Zero-based position of the offending character after the prefix.
        position: usize,
        /// The alphabet that was expected.
        alphabet: &'static str,
    },
    /// The encoded value has the wrong length.
    #[error(
        "{what} must be {expected} characters after the prefix, got {found}; it may have been cut off when copied"
    )]
    BadLength {
        /// What was being parsed.
        what: &'static str,
        /// The expected number of characters after the prefix.
        expected: usize,
        /// The number of characters found.
        found: usize,
    },
    /// The last character carries bits that a canonical encoder never sets, so this is not our encoding.
    #[error(
        "{what} is not canonically encoded (its last character has stray bits); copy it again from the source"
    )]
    NonCanonicalText {
        /// What was being parsed.
        what: &'static str,
    },
    /// The 32 bytes do not decode to a point on the Ed25519 curve, or not in canonical form.
    #[error(
        "public key is not a valid ed25519 point; check that it was copied completely and from the right place"
    )]
    InvalidPoint,
    /// The point has small order: signatures under it prove nothing.
    #[error(
        "public key is a small-order (weak) ed25519 point and is refused; it cannot belong to a real identity"
    )]
    WeakKey,
}
