//! Golden bytes of the cmdop-e2e/1 channel: each value below is also printed in `docs/e2e-channel.md`, and this
//! test fails if either the code or the document drifts.

// Helpers outside #[test] functions unwrap too: a panic in a test harness is a test failure.
#![allow(clippy::unwrap_used)]

use crate::support::*;
use cmdop_proto::e2e::{AuthFrame, CloseReason, Frame, Role, decode_frame};

const SPEC: &str = include_str!("../../../docs/e2e-channel.md");

/// (name, computed hex). The names are for failure messages only.
fn computed() -> Vec<(&'static str, String)> {
    let agent_id = agent();
    let route = prologue(&agent_id);
    let mut pair = pair();
    let mut data = Vec::new();
    pair.client.send_data(b"hello", now(), &mut data).unwrap();
    let mut end = Vec::new();
    pair.client.send_end(0, now(), &mut end).unwrap();
    let flight = messages(&pair.agent_flight);
    let auth_plain = Frame::Auth(Box::new(AuthFrame {
        role: Role::Agent,
        public_key: agent_id.public_key(),
        capability: Vec::new(),
        signature: cmdop_identity::Signature::from_bytes(&[0x5a; 64]),
    }));
    vec![
        (
            "agent public key",
            hex::encode(agent_id.public_key().as_bytes()),
        ),
        (
            "client public key",
            hex::encode(client().public_key().as_bytes()),
        ),
        ("prologue", hex::encode(route.to_bytes())),
        ("msg1 framed", hex::encode(&pair.msg1)),
        (
            "msg2 framed",
            hex::encode(&pair.agent_flight[..2 + flight[0].len()]),
        ),
        ("handshake hash", hex::encode(pair.client.handshake_hash())),
        (
            "agent auth framed",
            hex::encode(&pair.agent_flight[2 + flight[0].len()..]),
        ),
        ("client auth framed", hex::encode(&pair.client_flight)),
        ("data hello framed", hex::encode(&data)),
        ("end framed", hex::encode(&end)),
        (
            "plain data",
            hex::encode(Frame::Data(b"hi".to_vec()).encode().unwrap()),
        ),
        ("plain rekey", hex::encode(Frame::Rekey.encode().unwrap())),
        (
            "plain end",
            hex::encode(Frame::End { status: 0 }.encode().unwrap()),
        ),
        (
            "plain end 7",
            hex::encode(Frame::End { status: 7 }.encode().unwrap()),
        ),
        (
            "plain close",
            hex::encode(
                Frame::Close {
                    reason: CloseReason::Denied,
                    message: "no".into(),
                }
                .encode()
                .unwrap(),
            ),
        ),
        ("plain auth", hex::encode(auth_plain.encode().unwrap())),
    ]
}

#[test]
fn golden_bytes_match_the_specification() {
    let values = computed();
    if std::env::var_os("CMDOP_PRINT_GOLDEN").is_some() {
        for (name, value) in &values {
            println!("{name}: {value}");
        }
    }
    // The document wraps long hex at 64 characters per line; compare with whitespace removed.
    let spec: String = SPEC.split_whitespace().collect();
    for (name, value) in values {
        assert!(
            spec.contains(&value),
            "docs/e2e-channel.md does not show the current {name}: {value}"
        );
    }
}

#[test]
fn golden_plaintexts_decode_back() {
    assert_eq!(
        decode_frame(&hex::decode("01026869").unwrap()),
        Ok(Frame::Data(b"hi".to_vec()))
    );
    assert_eq!(decode_frame(&hex::decode("02").unwrap()), Ok(Frame::Rekey));
    assert_eq!(
        decode_frame(&hex::decode("0300").unwrap()),
        Ok(Frame::End { status: 0 })
    );
    assert_eq!(
        decode_frame(&hex::decode("0400026e6f").unwrap()),
        Ok(Frame::Close {
            reason: CloseReason::Denied,
            message: "no".into()
        })
    );
}
