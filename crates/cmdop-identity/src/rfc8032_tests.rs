//! RFC 8032 §7.1 known-answer tests for the unlabelled signature path, and the proof that labelled signing is
//! exactly that path over the framed message.
//!
//! The public API only signs framed messages (label first), so the RFC vectors cannot be checked through it.
//! These unit tests use the crate-private `sign_raw`/`verify_raw`, which are what `sign`/`verify` call after
//! framing; a second test proves that `sign(purpose, m)` is exactly `sign_raw(framed(label, m))`.

use crate::domain::framed;
use crate::{Identity, PublicKey, Purpose, Seed, Signature};

struct Vector {
    name: String,
    secret: [u8; 32],
    public: [u8; 32],
    message: Vec<u8>,
    signature: [u8; 64],
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("../tests/vectors/rfc8032.txt");
    text.split("\n\n")
        .filter(|block| block.contains("name:"))
        .map(|block| {
            let field = |key: &str| {
                block
                    .lines()
                    .find_map(|line| {
                        line.strip_prefix(key)
                            .and_then(|rest| rest.strip_prefix(':'))
                    })
                    .unwrap_or_else(|| panic!("vector block lacks {key}: {block}"))
                    .trim()
                    .to_owned()
            };
            Vector {
                name: field("name"),
                secret: hex::decode(field("secret")).unwrap().try_into().unwrap(),
                public: hex::decode(field("public")).unwrap().try_into().unwrap(),
                message: hex::decode(field("message")).unwrap(),
                signature: hex::decode(field("signature")).unwrap().try_into().unwrap(),
            }
        })
        .collect()
}

#[test]
fn rfc8032_vectors_derive_sign_and_verify() {
    let vectors = vectors();
    assert_eq!(
        vectors.len(),
        4,
        "the vector file should hold TEST 1, 2, 3 and SHA(abc)"
    );
    for v in vectors {
        let identity = Identity::from_seed(&Seed::from_bytes(v.secret));
        assert_eq!(
            identity.public_key().to_bytes(),
            v.public,
            "{}: public key",
            v.name
        );
        let signature = identity.sign_raw(&v.message);
        assert_eq!(signature.to_bytes(), v.signature, "{}: signature", v.name);
        let public = PublicKey::from_bytes(&v.public).unwrap();
        assert_eq!(
            public.verify_raw(&v.message, &Signature::from_bytes(&v.signature)),
            Ok(()),
            "{}",
            v.name
        );

        let mut flipped = v.signature;
        flipped[0] ^= 1;
        assert!(
            public
                .verify_raw(&v.message, &Signature::from_bytes(&flipped))
                .is_err(),
            "{}",
            v.name
        );
    }
}

#[test]
fn labelled_signing_is_raw_signing_over_the_framed_message() {
    let v = &vectors()[1];
    let identity = Identity::from_seed(&Seed::from_bytes(v.secret));
    for purpose in Purpose::ALL {
        let framed_message = framed(purpose.label(), &v.message);
        assert_eq!(framed_message[0] as usize, purpose.label().len());
        assert_eq!(
            identity.sign(purpose, &v.message),
            identity.sign_raw(&framed_message),
            "{purpose:?}"
        );
        // A raw signature over the bare message must not pass as a labelled one.
        let raw = identity.sign_raw(&v.message);
        assert!(
            identity
                .public_key()
                .verify(purpose, &v.message, &raw)
                .is_err(),
            "{purpose:?}"
        );
    }
}
