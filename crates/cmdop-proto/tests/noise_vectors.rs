//! Proves the Noise layer against the cacophony `Noise_NN_25519_AESGCM_SHA256` vector, byte for byte.

// Helpers outside #[test] functions unwrap too: a panic in a test harness is a test failure.
#![allow(clippy::unwrap_used)]

use cmdop_proto::e2e::Ephemeral;
use cmdop_proto::e2e::noise::{NnInitiator, NnResponder, PROTOCOL_NAME};
use serde_json::Value;

const VECTOR: &str = include_str!("vectors/noise-NN_25519_AESGCM_SHA256.json");

fn field(vector: &Value, name: &str) -> Vec<u8> {
    hex::decode(vector[name].as_str().unwrap()).unwrap()
}

fn key(vector: &Value, name: &str) -> [u8; 32] {
    field(vector, name).try_into().unwrap()
}

#[test]
fn cacophony_nn_vector_matches_byte_for_byte() {
    let vector: Value = serde_json::from_str(VECTOR).unwrap();
    assert_eq!(
        vector["protocol_name"].as_str().unwrap().as_bytes(),
        PROTOCOL_NAME
    );
    let messages = vector["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 6);
    let payload = |i: usize| hex::decode(messages[i]["payload"].as_str().unwrap()).unwrap();
    let ciphertext = |i: usize| hex::decode(messages[i]["ciphertext"].as_str().unwrap()).unwrap();

    // Message 1: -> e (payload in clear, no key yet).
    let mut msg1 = Vec::new();
    let initiator = NnInitiator::start(
        &field(&vector, "init_prologue"),
        Ephemeral::danger_from_bytes(key(&vector, "init_ephemeral")),
        &payload(0),
        &mut msg1,
    )
    .unwrap();
    assert_eq!(hex::encode(&msg1), hex::encode(ciphertext(0)), "message 1");
    let (responder, received) = NnResponder::read(&field(&vector, "resp_prologue"), &msg1).unwrap();
    assert_eq!(received, payload(0));

    // Message 2: <- e, ee (payload encrypted under the first key).
    let mut msg2 = Vec::new();
    let mut resp = responder
        .respond(
            Ephemeral::danger_from_bytes(key(&vector, "resp_ephemeral")),
            &payload(1),
            &mut msg2,
        )
        .unwrap();
    assert_eq!(hex::encode(&msg2), hex::encode(ciphertext(1)), "message 2");
    let (received, mut init) = initiator.finish(&msg2).unwrap();
    assert_eq!(received, payload(1));

    // The vector's own `handshake_hash` is h after message 1 (see the note in the file); the real final hash
    // is `final_handshake_hash`, and both sides must agree on it.
    let final_hash = field(&vector, "final_handshake_hash");
    assert_eq!(init.handshake_hash.to_vec(), final_hash);
    assert_eq!(resp.handshake_hash.to_vec(), final_hash);
    assert_ne!(field(&vector, "handshake_hash"), final_hash);

    // Messages 3-6: transport, alternating initiator -> responder, responder -> initiator.
    for i in 2..6 {
        let (sender, receiver) = if i % 2 == 0 {
            (&mut init, &mut resp)
        } else {
            (&mut resp, &mut init)
        };
        let sealed = sender.send.encrypt_with_ad(&[], &payload(i)).unwrap();
        assert_eq!(
            hex::encode(&sealed),
            hex::encode(ciphertext(i)),
            "message {}",
            i + 1
        );
        assert_eq!(
            receiver.recv.decrypt_with_ad(&[], &sealed).unwrap(),
            payload(i)
        );
    }
}

#[test]
fn vector_handshake_hash_field_is_h_after_message_one() {
    // Pins the file's note: recomputing h after message 1 by hand gives the `handshake_hash` field.
    use sha2::{Digest, Sha256};
    let vector: Value = serde_json::from_str(VECTOR).unwrap();
    let mut h = [0u8; 32];
    h[..PROTOCOL_NAME.len()].copy_from_slice(PROTOCOL_NAME);
    let mix = |h: [u8; 32], data: &[u8]| -> [u8; 32] {
        Sha256::new()
            .chain_update(h)
            .chain_update(data)
            .finalize()
            .into()
    };
    let msg1 = hex::decode(vector["messages"][0]["ciphertext"].as_str().unwrap()).unwrap();
    let payload = hex::decode(vector["messages"][0]["payload"].as_str().unwrap()).unwrap();
    h = mix(h, &field(&vector, "init_prologue"));
    h = mix(h, &msg1[..32]);
    h = mix(h, &payload);
    assert_eq!(h.to_vec(), field(&vector, "handshake_hash"));
}
