//! Known-answer tests: fingerprints, public key text forms and labelled signatures against vectors computed
//! outside this crate, plus the purpose-label registry in docs/security.md.

use std::collections::HashSet;

use cmdop_identity::{Fingerprint, Identity, KeyPurpose, PublicKey, Purpose, Seed, Signature};

/// Splits a vector file into blocks of `key: value` fields, skipping comments.
fn blocks(text: &str) -> Vec<Vec<(String, String)>> {
    text.split("\n\n")
        .map(|block| {
            block
                .lines()
                .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
                .map(|line| {
                    let (key, value) = line.split_once(':').expect("vector lines are `key: value`");
                    (key.to_owned(), value.trim().to_owned())
                })
                .collect::<Vec<_>>()
        })
        .filter(|block| !block.is_empty())
        .collect()
}

fn field<'a>(block: &'a [(String, String)], key: &str) -> &'a str {
    &block
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("missing {key} in {block:?}"))
        .1
}

#[test]
fn fingerprints_and_text_forms_match_the_vectors() {
    let vectors = blocks(include_str!("vectors/fingerprints.txt"));
    assert_eq!(vectors.len(), 5);
    for v in &vectors {
        let name = field(v, "name");
        let seed: [u8; 32] = hex::decode(field(v, "seed")).unwrap().try_into().unwrap();
        let key = Identity::from_seed(&Seed::from_bytes(seed)).public_key();
        assert_eq!(
            hex::encode(key.as_bytes()),
            field(v, "public"),
            "{name}: public key"
        );
        assert_eq!(key.to_string(), field(v, "text"), "{name}: text form");
        assert_eq!(
            field(v, "text").parse::<PublicKey>().unwrap(),
            key,
            "{name}: text parses back"
        );

        let fingerprint = key.fingerprint();
        assert_eq!(
            fingerprint.to_string(),
            field(v, "long"),
            "{name}: long fingerprint"
        );
        assert_eq!(
            fingerprint.short(),
            field(v, "short"),
            "{name}: short fingerprint"
        );
        assert_eq!(
            field(v, "long").parse::<Fingerprint>().unwrap(),
            fingerprint,
            "{name}: long parses back"
        );
        assert!(
            fingerprint.matches_short(&field(v, "short").to_uppercase().replace('-', "")),
            "{name}"
        );
    }
}

#[test]
fn labelled_signatures_match_the_vectors() {
    let vectors = blocks(include_str!("vectors/labelled-signatures.txt"));
    let seed =
        hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").unwrap();
    let identity = Identity::from_seed(&Seed::from_bytes(seed.try_into().unwrap()));
    assert_eq!(vectors.len(), Purpose::ALL.len(), "one vector per purpose");
    for purpose in Purpose::ALL {
        let v = vectors
            .iter()
            .find(|v| field(v, "label") == purpose.label())
            .unwrap();
        let message = hex::decode(field(v, "message")).unwrap();
        let expected: [u8; 64] = hex::decode(field(v, "signature"))
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            identity.sign(purpose, &message).to_bytes(),
            expected,
            "{purpose:?}"
        );
        let sig = Signature::from_bytes(&expected);
        assert_eq!(
            identity.public_key().verify(purpose, &message, &sig),
            Ok(()),
            "{purpose:?}"
        );
    }
}

#[test]
fn purpose_labels_are_distinct_short_versioned_and_registered() {
    let registry = include_str!("../../../docs/security.md");
    let mut seen = HashSet::new();
    for purpose in Purpose::ALL {
        let label = purpose.label();
        assert!(seen.insert(label), "{label} used twice");
        assert!(
            label.len() <= 255,
            "{label} does not fit the one-byte length prefix"
        );
        assert!(
            label.starts_with("cmdop ") && label.ends_with(" v1"),
            "{label} is not a versioned cmdop label"
        );
        assert!(
            registry.contains(&format!("`{label}`")),
            "{label} is not registered in docs/security.md"
        );
    }
    // Hash and KDF labels share the namespace: none may equal a signature label, and each is registered.
    for label in [
        "cmdop fingerprint v1",
        KeyPurpose::ClientLoginStore.label(),
        KeyPurpose::EnrolmentKey.label(),
    ] {
        assert!(seen.insert(label), "{label} used twice");
        assert!(
            registry.contains(&format!("`{label}`")),
            "{label} is not registered in docs/security.md"
        );
    }
}
