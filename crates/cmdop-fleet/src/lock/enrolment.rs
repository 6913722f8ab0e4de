//! Enrolment secrets: what `cmdop fleet lock enrol-key` prints and `cmdop-agent run --enrol-key-file` reads.
//!
//! ```text
//! cmdop_ek_<fleet key>_<secret>
//!   fleet key = the 32-byte fleet key (the lock's root), lowercase unpadded base32: 52 characters
//!   secret    = 32 bytes from the OS CSPRNG, lowercase unpadded base32: 52 characters
//! ```
//!
//! The fleet key tells the agent which lock to trust, out of band; the secret never leaves the admin and the
//! agent. Both derive the enrolment key from it (HKDF-SHA256, `info` = `cmdop enrolment-key v1`); the relay
//! sees only the enrolment key's public half and its signatures.

use std::fmt;

use cmdop_identity::{Identity, KeyPurpose, PublicKey, Seed};
use data_encoding::BASE32_NOPAD;
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

const PREFIX: &str = "cmdop_ek_";
const PART_CHARS: usize = 52;
const TEXT_CHARS: usize = PREFIX.len() + PART_CHARS + 1 + PART_CHARS;

/// Why an enrolment secret did not parse. The message never repeats the secret.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnrolmentSecretError {
    /// The text does not start with `cmdop_ek_`.
    #[error(
        "an enrolment key starts with `cmdop_ek_`; copy the whole line `cmdop fleet lock enrol-key` printed"
    )]
    WrongPrefix,
    /// Wrong length.
    #[error(
        "an enrolment key is {expected} characters long, this one {found}; it may have been cut when copied"
    )]
    WrongLength {
        /// The length it must have.
        expected: usize,
        /// The length found.
        found: usize,
    },
    /// A character outside lowercase base32, or a misplaced separator.
    #[error("the enrolment key has an invalid character at position {position}; copy it again")]
    BadCharacter {
        /// Zero-based position.
        position: usize,
    },
    /// Valid characters, but not a canonical encoding, or the fleet key is not a valid key.
    #[error("the enrolment key is corrupted; copy it again")]
    BadEncoding,
}

/// An enrolment secret with the fleet key it belongs to. Zeroized on drop, redacted in `Debug`, no `Display`.
pub struct EnrolmentSecret {
    fleet_key: PublicKey,
    secret: [u8; 32],
}

impl EnrolmentSecret {
    /// A fresh secret for the fleet whose lock is rooted at `fleet_key`.
    pub fn generate<R: CryptoRngCore + ?Sized>(fleet_key: PublicKey, rng: &mut R) -> Self {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Self { fleet_key, secret }
    }

    /// Parses the text form; surrounding whitespace (a trailing newline in a key file) is ignored.
    pub fn parse(text: &str) -> Result<Self, EnrolmentSecretError> {
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if !text.starts_with(PREFIX) {
            return Err(EnrolmentSecretError::WrongPrefix);
        }
        if text.len() != TEXT_CHARS {
            return Err(EnrolmentSecretError::WrongLength {
                expected: TEXT_CHARS,
                found: text.chars().count(),
            });
        }
        let separator = PREFIX.len() + PART_CHARS;
        for (position, b) in text.bytes().enumerate().skip(PREFIX.len()) {
            let ok = if position == separator {
                b == b'_'
            } else {
                b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)
            };
            if !ok {
                return Err(EnrolmentSecretError::BadCharacter { position });
            }
        }
        let part = |range: std::ops::Range<usize>| -> Result<[u8; 32], EnrolmentSecretError> {
            let upper = Zeroizing::new(
                text.get(range)
                    .ok_or(EnrolmentSecretError::BadEncoding)?
                    .to_ascii_uppercase(),
            );
            let mut out = [0u8; 32];
            match BASE32_NOPAD.decode_mut(upper.as_bytes(), &mut out) {
                Ok(32) => Ok(out),
                _ => Err(EnrolmentSecretError::BadEncoding),
            }
        };
        let fleet_key = PublicKey::from_bytes(&part(PREFIX.len()..separator)?)
            .map_err(|_| EnrolmentSecretError::BadEncoding)?;
        let secret = part(separator + 1..TEXT_CHARS)?;
        Ok(Self { fleet_key, secret })
    }

    /// The full text form. Show it once, or write it where the admin asked.
    pub fn expose_text(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(TEXT_CHARS));
        out.push_str(PREFIX);
        out.push_str(
            &BASE32_NOPAD
                .encode(self.fleet_key.as_bytes())
                .to_ascii_lowercase(),
        );
        out.push('_');
        let mut secret = Zeroizing::new(BASE32_NOPAD.encode(&self.secret));
        secret.make_ascii_lowercase();
        out.push_str(&secret);
        out
    }

    /// The fleet key this secret belongs to: the lock root the agent must trust.
    pub fn fleet_key(&self) -> PublicKey {
        self.fleet_key
    }

    /// The enrolment key derived from the secret, which signs machine certificates.
    pub fn signing_key(&self) -> Identity {
        Identity::from_seed(&Seed::derive_from_secret(
            &self.secret,
            KeyPurpose::EnrolmentKey,
        ))
    }

    /// The public half of [`signing_key`](Self::signing_key): what the admin authorizes and the relay sees.
    pub fn public_key(&self) -> PublicKey {
        self.signing_key().public_key()
    }
}

impl fmt::Debug for EnrolmentSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrolmentSecret")
            .field("fleet_key", &self.fleet_key.fingerprint())
            .finish_non_exhaustive()
    }
}

impl PartialEq for EnrolmentSecret {
    fn eq(&self, other: &Self) -> bool {
        self.fleet_key == other.fleet_key && bool::from(self.secret.ct_eq(&other.secret))
    }
}

impl Eq for EnrolmentSecret {}

impl Drop for EnrolmentSecret {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}
