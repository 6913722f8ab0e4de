//! Public keys, fingerprints and signatures through the public API: parsing errors, weak keys, serde forms,
//! purpose separation and property-based round trips.

use cmdop_identity::{Fingerprint, Identity, IdentityError, PublicKey, Purpose, Seed, Signature};
use proptest::prelude::*;

const TEST1_TEXT: &str = "ed25519:11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

fn identity(byte: u8) -> Identity {
    Identity::from_seed(&Seed::from_bytes([byte; 32]))
}

#[test]
fn public_key_text_errors_name_the_problem() {
    let check = |text: &str, expected: &str| {
        let err = text.parse::<PublicKey>().unwrap_err();
        assert!(err.to_string().contains(expected), "{text:?}: {err}");
    };
    check(
        "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        "must start with `ed25519:`",
    );
    check(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5",
        "must start with `ed25519:`",
    );
    check(
        "ed25519:11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIa",
        "must be 43 characters",
    );
    check(&format!("{TEST1_TEXT}A"), "must be 43 characters");
    check(
        "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        "invalid character at position 13",
    );
    check(
        "ed25519:11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHUR=",
        "invalid character at position 42",
    );
    // 'p' carries bits below the 256th that a canonical encoder leaves zero.
    check(
        "ed25519:11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURp",
        "not canonically encoded",
    );
    assert_eq!(
        TEST1_TEXT.parse::<PublicKey>().unwrap().to_string(),
        TEST1_TEXT
    );
}

#[test]
fn small_order_and_invalid_points_are_refused() {
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    assert_eq!(
        PublicKey::from_bytes(&identity_point),
        Err(IdentityError::WeakKey)
    );
    // y = -1 has order 2.
    let mut order_two = [0xffu8; 32];
    order_two[0] = 0xec;
    order_two[31] = 0x7f;
    assert_eq!(
        PublicKey::from_bytes(&order_two),
        Err(IdentityError::WeakKey)
    );
    // y = p is a non-canonical encoding of y = 0.
    let mut y_is_p = [0xffu8; 32];
    y_is_p[0] = 0xed;
    y_is_p[31] = 0x7f;
    assert!(PublicKey::from_bytes(&y_is_p).is_err());
    // The identity point with the sign bit set: x = 0 has no negative, so this encoding is not canonical.
    let mut negative_zero = identity_point;
    negative_zero[31] |= 0x80;
    assert!(PublicKey::from_bytes(&negative_zero).is_err());
    // y = 2 is not on the curve (no x satisfies the curve equation for it).
    let mut off_curve = [0u8; 32];
    off_curve[0] = 2;
    assert_eq!(
        PublicKey::from_bytes(&off_curve),
        Err(IdentityError::InvalidPoint)
    );

    let weak_text = format!(
        "ed25519:{}",
        data_encoding::BASE64URL_NOPAD.encode(&identity_point)
    );
    assert!(
        weak_text
            .parse::<PublicKey>()
            .unwrap_err()
            .to_string()
            .contains("small-order")
    );
}

#[test]
fn fingerprint_text_errors_name_the_problem() {
    let long = identity(7).public_key().fingerprint().to_string();
    assert_eq!(long.parse::<Fingerprint>().unwrap().to_string(), long);
    let body = long.strip_prefix("SHA256:").unwrap();
    assert!(
        body.parse::<Fingerprint>()
            .unwrap_err()
            .to_string()
            .contains("must start with `SHA256:`")
    );
    assert!(
        long[..20]
            .parse::<Fingerprint>()
            .unwrap_err()
            .to_string()
            .contains("must be 43 characters")
    );
    let short = identity(7).public_key().fingerprint().short();
    assert!(
        short.parse::<Fingerprint>().is_err(),
        "the short form is not an identifier"
    );
}

#[test]
fn every_digest_a_person_compares_has_one_text_and_the_old_ones_still_read() {
    let digest: [u8; 32] = std::array::from_fn(|i| u8::try_from(i * 7).unwrap());
    let canonical = cmdop_identity::sha256_text(&digest);
    assert!(
        canonical.starts_with("SHA256:") && canonical.len() == 7 + 43,
        "{canonical}"
    );
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let colons: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    for form in [
        canonical.clone(),
        format!("sha256:{}", &canonical[7..]),
        format!("{canonical}="),
        format!("  {canonical}\n"),
        format!("sha256:{hex}"),
        format!("SHA256:{}", hex.to_uppercase()),
        hex.clone(),
        colons.join(":"),
    ] {
        assert_eq!(
            cmdop_identity::parse_sha256_text(&form),
            Some(digest),
            "{form:?}"
        );
    }
    for bad in [
        "",
        "SHA256:",
        "sha256:abcd",
        "md5:00",
        &hex[..62],
        &canonical[..40],
    ] {
        assert_eq!(cmdop_identity::parse_sha256_text(bad), None, "{bad:?}");
    }
    // A key's fingerprint is that text too, and a public key reads as its fingerprint.
    let key = identity(3).public_key();
    assert_eq!(
        cmdop_identity::sha256_text(key.fingerprint().as_bytes()),
        key.fingerprint().to_string()
    );
    assert_eq!(
        key.to_string().parse::<Fingerprint>().unwrap(),
        key.fingerprint()
    );
    assert_eq!(
        key.fingerprint().with_short(),
        format!("{} ({})", key.fingerprint(), key.fingerprint().short())
    );
}

#[test]
fn short_fingerprint_is_readable() {
    let short = identity(9).public_key().fingerprint().short();
    assert_eq!(short.len(), 11);
    assert_eq!(short.as_bytes()[5], b'-');
    assert!(
        short
            .chars()
            .all(|c| c == '-' || c.is_ascii_lowercase() || ('2'..='7').contains(&c)),
        "{short}"
    );
}

#[test]
fn signatures_are_bound_to_their_purpose() {
    let id = identity(1);
    let key = id.public_key();
    for signer in Purpose::ALL {
        let sig = id.sign(signer, b"challenge");
        for verifier in Purpose::ALL {
            assert_eq!(
                key.verify(verifier, b"challenge", &sig).is_ok(),
                signer == verifier,
                "{signer:?}/{verifier:?}"
            );
        }
        assert!(key.verify(signer, b"challengf", &sig).is_err());
        assert!(
            identity(2)
                .public_key()
                .verify(signer, b"challenge", &sig)
                .is_err()
        );
    }
    let err = key
        .verify(Purpose::RelayLogin, b"x", &Signature::from_bytes(&[0; 64]))
        .unwrap_err();
    assert_eq!(err.to_string(), "signature verification failed");
}

#[test]
fn debug_output_shows_no_secrets() {
    let id = identity(3);
    let debug = format!("{id:?}");
    assert!(
        debug.contains(&id.public_key().fingerprint().to_string()),
        "{debug}"
    );
    assert!(!debug.contains("0303"), "{debug}");
    assert_eq!(format!("{:?}", Seed::from_bytes([3; 32])), "Seed(..)");
}

#[test]
fn serde_forms() {
    let key = identity(4).public_key();
    let sig = identity(4).sign(Purpose::Capability, b"cap");

    let binary = postcard::to_allocvec(&key).unwrap();
    assert_eq!(
        binary,
        key.as_bytes(),
        "binary form is exactly the 32 raw bytes"
    );
    assert_eq!(postcard::from_bytes::<PublicKey>(&binary).unwrap(), key);
    let binary_sig = postcard::to_allocvec(&sig).unwrap();
    assert_eq!(
        binary_sig,
        sig.to_bytes(),
        "binary form is exactly the 64 raw bytes"
    );
    assert_eq!(postcard::from_bytes::<Signature>(&binary_sig).unwrap(), sig);

    assert_eq!(serde_json::to_string(&key).unwrap(), format!("\"{key}\""));
    assert_eq!(
        serde_json::from_str::<PublicKey>(&format!("\"{key}\"")).unwrap(),
        key
    );
    let json_sig = serde_json::to_string(&sig).unwrap();
    assert_eq!(json_sig, format!("\"{}\"", hex::encode(sig.to_bytes())));
    assert_eq!(serde_json::from_str::<Signature>(&json_sig).unwrap(), sig);

    // Weak keys are refused on the way in, whatever the format.
    let mut weak = [0u8; 32];
    weak[0] = 1;
    assert!(postcard::from_bytes::<PublicKey>(&weak).is_err());
    assert!(postcard::from_bytes::<PublicKey>(&binary[..31]).is_err());
    assert!(serde_json::from_str::<PublicKey>("\"ed25519:AAAA\"").is_err());
    assert!(serde_json::from_str::<Signature>("\"00\"").is_err());
}

fn purpose() -> impl Strategy<Value = Purpose> {
    proptest::sample::select(Purpose::ALL.to_vec())
}

proptest! {
    #[test]
    fn text_forms_round_trip(seed in proptest::array::uniform32(0u8..)) {
        let key = Identity::from_seed(&Seed::from_bytes(seed)).public_key();
        let text = key.to_string();
        prop_assert_eq!(text.len(), "ed25519:".len() + 43);
        prop_assert_eq!(text.parse::<PublicKey>().unwrap(), key);
        prop_assert_eq!(PublicKey::from_bytes(&key.to_bytes()).unwrap(), key);
        let fingerprint = key.fingerprint();
        prop_assert_eq!(fingerprint.to_string().parse::<Fingerprint>().unwrap(), fingerprint);
        prop_assert!(fingerprint.matches_short(&fingerprint.short()));
    }

    #[test]
    fn signatures_round_trip(
        seed in proptest::array::uniform32(0u8..),
        purpose in purpose(),
        message in proptest::collection::vec(0u8.., 0..300),
        flip in 0usize..64 * 8,
    ) {
        let id = Identity::from_seed(&Seed::from_bytes(seed));
        let sig = id.sign(purpose, &message);
        prop_assert!(id.public_key().verify(purpose, &message, &sig).is_ok());
        prop_assert_eq!(Signature::from_bytes(&sig.to_bytes()), sig);
        let mut bytes = sig.to_bytes();
        bytes[flip / 8] ^= 1 << (flip % 8);
        prop_assert!(id.public_key().verify(purpose, &message, &Signature::from_bytes(&bytes)).is_err());
        let back: Signature = postcard::from_bytes(&postcard::to_allocvec(&sig).unwrap()).unwrap();
        prop_assert_eq!(back, sig);
    }

    #[test]
    fn parsers_never_panic(text in ".{0,80}") {
        let _ = text.parse::<PublicKey>();
        let _ = text.parse::<Fingerprint>();
        let _ = format!("ed25519:{text}").parse::<PublicKey>();
        let _ = format!("SHA256:{text}").parse::<Fingerprint>();
    }
}
