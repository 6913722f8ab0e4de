//! Agent and client identity: an Ed25519 keypair derived from a 32-byte seed that never leaves the machine.
//!
//! The entry point is [`Identity`], built from a [`Seed`]; the seed is the only secret and the only thing
//! persisted, encrypted, in the seed file laid out by [`store::format`] (the store that keeps it, with its
//! key-encryption key in the OS keyring or a key file, is the `cmdop-keystore` crate). Everything that is
//! signed carries a [`Purpose`] label so a signature made for one protocol step can never be replayed as
//! another.
//!
//! ```text
//!  OS CSPRNG ──► Seed ──(store::format: AES-256-GCM under a KEK)──► agent_keypair.bin
//!                 │
//!                 ▼
//!              Identity ──sign(Purpose, msg)──► Signature
//!                 │                                 │
//!                 ▼                                 ▼
//!              PublicKey ──verify(Purpose, msg, sig) (verify_strict)
//!                 │
//!                 ▼
//!              Fingerprint  "SHA256:…" (long)  /  "abcde-fghij" (short)
//! ```
//!
//! Formats (text forms, fingerprint derivation, file layout) are specified in `docs/identity.md`; the purpose
//! labels are registered in `docs/security.md`.

mod derive;
mod domain;
mod error;
mod fingerprint;
mod keys;
mod seed;
pub mod store;
mod text;

#[cfg(test)]
mod rfc8032_tests;

pub use derive::KeyPurpose;
pub use domain::Purpose;
pub use error::IdentityError;
pub use fingerprint::{Fingerprint, parse_sha256_text, sha256_text};
pub use keys::{Identity, PublicKey, Signature, SignatureError};
pub use seed::Seed;
