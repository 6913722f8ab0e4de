//! Fuzzes the text forms of identities that people paste and files store (`known_machines`, configs): the
//! public key `ed25519:…` and the long fingerprint `SHA256:…`. Every accepted text is the one canonical
//! form of its value, so `parse(text).to_string() == text` (docs/identity.md); a public key's text also parses as
//! a fingerprint: its own.
#![no_main]

use std::sync::LazyLock;

use cmdop_identity::{Fingerprint, Identity, PublicKey, Seed};
use libfuzzer_sys::fuzz_target;

static KNOWN: LazyLock<Fingerprint> = LazyLock::new(|| {
    Identity::from_seed(&Seed::from_bytes([0xa1; 32]))
        .public_key()
        .fingerprint()
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<PublicKey>() {
        Ok(key) => {
            assert_eq!(
                key.to_string(),
                text,
                "a non-canonical public key text was accepted"
            );
            assert_eq!(PublicKey::from_bytes(key.as_bytes()).ok(), Some(key));
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
    match text.parse::<Fingerprint>() {
        // A public key's text is accepted as that key's fingerprint (docs/cli.md: older spellings).
        Ok(fingerprint) => match text.parse::<PublicKey>() {
            Ok(key) => assert_eq!(
                key.fingerprint(),
                fingerprint,
                "a public key text parsed to another key's fingerprint"
            ),
            Err(_) => assert_eq!(
                fingerprint.to_string(),
                text,
                "a non-canonical fingerprint was accepted"
            ),
        },
        Err(error) => assert!(!error.to_string().is_empty()),
    }
    let _ = KNOWN.matches_short(text);
});
