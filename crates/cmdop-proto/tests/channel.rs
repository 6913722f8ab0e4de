//! The cmdop-e2e/1 channel end to end in memory: handshake, data, a hostile relay, misrouting, auth order,
//! rekey and the authenticated end.

// Helpers outside #[test] functions unwrap too: a panic in a test harness is a test failure.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::support::*;
use cmdop_identity::{Purpose, Signature};
use cmdop_proto::e2e::{
    AuthFrame, ChannelError, ClientHandshake, CloseReason, DATA_HEADROOM, Ephemeral, Frame,
    Incoming, MAX_DATA_PER_FRAME, Opened, Prologue, RekeyPolicy, Role, StreamKind,
};

fn data_flight(session: &mut cmdop_proto::e2e::Session, frames: &[&[u8]], end: bool) -> Vec<u8> {
    let at = now();
    let mut wire = Vec::new();
    for frame in frames {
        session.send_data(frame, at, &mut wire).unwrap();
    }
    if end {
        session.send_end(0, at, &mut wire).unwrap();
    }
    wire
}

fn expected(frames: &[&[u8]], end: bool) -> Vec<Incoming> {
    let mut out: Vec<Incoming> = frames.iter().map(|f| Incoming::Data(f.to_vec())).collect();
    if end {
        out.push(Incoming::End { status: 0 });
    }
    out
}

const FRAMES: [&[u8]; 3] = [b"uname -a", b"stdin: secret marker 7f3a", b"\x00\x01\x02"];

#[test]
fn handshake_then_data_both_ways_and_clean_end() {
    let mut pair = pair();
    assert_eq!(pair.client.handshake_hash(), pair.agent.handshake_hash());
    assert_eq!(pair.client.peer_key(), Some(agent().public_key()));
    assert_eq!(pair.agent.peer_key(), Some(client().public_key()));

    let to_agent = data_flight(&mut pair.client, &FRAMES, true);
    let got = receive(&mut pair.agent, &to_agent, 7);
    assert_eq!(got.delivered, expected(&FRAMES, true));
    assert_eq!(got.outcome, Ok(()));

    // Half-close: the agent still answers after the client's end frame.
    let big = vec![0x5a; 3 * MAX_DATA_PER_FRAME + 17];
    let to_client = data_flight(&mut pair.agent, &[&big], true);
    let got = receive(&mut pair.client, &to_client, 4096);
    let mut joined = Vec::new();
    for incoming in &got.delivered[..got.delivered.len() - 1] {
        let Incoming::Data(data) = incoming else {
            panic!("unexpected {incoming:?}")
        };
        joined.extend_from_slice(data);
    }
    assert_eq!(joined, big);
    assert_eq!(got.delivered.last(), Some(&Incoming::End { status: 0 }));
    assert_eq!(got.outcome, Ok(()));
}

#[test]
fn plaintext_never_appears_on_the_wire() {
    let mut pair = pair();
    let marker = b"MARKER-d1f0c2a9-secret";
    let wire = data_flight(&mut pair.client, &[marker], true);
    let all = [
        pair.msg1.clone(),
        pair.agent_flight.clone(),
        pair.client_flight.clone(),
        wire,
    ]
    .concat();
    assert!(!all.windows(marker.len()).any(|w| w == marker));
    assert!(!hex::encode(&all).contains(&hex::encode(marker)));
    // The capability is encrypted too.
    assert!(!all.windows(CAPABILITY.len()).any(|w| w == CAPABILITY));
}

#[test]
fn random_ephemerals_work_and_differ_per_stream() {
    let agent_id = agent();
    let p = prologue(&agent_id);
    let mut hashes = Vec::new();
    for _ in 0..2 {
        let mut msg1 = Vec::new();
        let hs = ClientHandshake::start(
            p,
            Ephemeral::generate(&mut rand_core::OsRng),
            RekeyPolicy::default(),
            &mut msg1,
        )
        .unwrap();
        let mut flight = Vec::new();
        let awaiting = cmdop_proto::e2e::AgentHandshake::new(p, RekeyPolicy::default())
            .respond(
                &messages(&msg1)[0],
                &agent_id,
                Ephemeral::generate(&mut rand_core::OsRng),
                now(),
                &mut flight,
            )
            .unwrap();
        let flight = messages(&flight);
        let mut out = Vec::new();
        let session = hs
            .read_response(&flight[0])
            .unwrap()
            .read_agent_auth(&flight[1], &client(), b"", now(), &mut out)
            .unwrap();
        let agent_session = awaiting
            .read_client_auth(&messages(&out)[0])
            .unwrap()
            .accept();
        assert_eq!(session.handshake_hash(), agent_session.handshake_hash());
        hashes.push(session.handshake_hash());
    }
    assert_ne!(hashes[0], hashes[1]);
}

/// The reference flight (client → agent after the handshake) and what an honest receiver delivers.
fn reference() -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut pair = pair();
    let wire = data_flight(&mut pair.client, &FRAMES, true);
    let msgs = messages(&wire);
    (wire, msgs)
}

fn fresh_agent() -> cmdop_proto::e2e::Session {
    pair().agent
}

fn frame_all(msgs: &[Vec<u8>]) -> Vec<u8> {
    let mut wire = Vec::new();
    for m in msgs {
        cmdop_proto::e2e::encode_message(m, &mut wire).unwrap();
    }
    wire
}

/// Whatever the relay did, the receiver fails, and everything it delivered first is an unaltered prefix.
fn assert_detected(wire: &[u8], what: &str) {
    let honest = expected(&FRAMES, true);
    for chunk in [1, 5, 4096] {
        let got = receive(&mut fresh_agent(), wire, chunk);
        assert!(got.outcome.is_err(), "{what}: not detected (chunk {chunk})");
        assert_eq!(
            got.delivered,
            honest[..got.delivered.len()],
            "{what}: altered bytes delivered"
        );
    }
}

#[test]
fn relay_flipping_any_bit_is_detected_before_use() {
    let (wire, _) = reference();
    for i in 0..wire.len() {
        for mask in [0x01, 0x80] {
            let mut tampered = wire.clone();
            tampered[i] ^= mask;
            assert_detected(&tampered, &format!("flip byte {i} mask {mask:#x}"));
        }
    }
}

#[test]
fn relay_dropping_duplicating_reordering_is_detected() {
    let (_, msgs) = reference();
    for i in 0..msgs.len() {
        let mut dropped = msgs.clone();
        dropped.remove(i);
        assert_detected(&frame_all(&dropped), &format!("drop {i}"));

        let mut duplicated = msgs.clone();
        duplicated.insert(i, msgs[i].clone());
        assert_detected(&frame_all(&duplicated), &format!("duplicate {i}"));

        if i + 1 < msgs.len() {
            let mut swapped = msgs.clone();
            swapped.swap(i, i + 1);
            assert_detected(&frame_all(&swapped), &format!("swap {i}"));
        }
    }
}

#[test]
fn relay_truncating_anywhere_is_never_success() {
    let (wire, _) = reference();
    for cut in 0..wire.len() {
        assert_detected(&wire[..cut], &format!("cut at {cut}"));
    }
    // A cut exactly on a frame boundary before the end frame is reported as truncation, by name.
    let (_, msgs) = reference();
    let got = receive(
        &mut fresh_agent(),
        &frame_all(&msgs[..msgs.len() - 1]),
        4096,
    );
    assert_eq!(got.outcome, Err(ChannelError::Truncated));
    assert_eq!(got.delivered, expected(&FRAMES, false));
}

#[test]
fn relay_splicing_frames_from_another_session_is_detected() {
    let (_, msgs) = reference();
    // Same identities and route, other ephemerals: what a relay could record from a parallel stream.
    let agent_id = agent();
    let mut other = pair_with(
        9,
        prologue(&agent_id),
        prologue(&agent_id),
        RekeyPolicy::default(),
    );
    let foreign = messages(&data_flight(&mut other.client, &FRAMES, true));
    for i in 0..msgs.len() {
        let mut spliced = msgs.clone();
        spliced[i] = foreign[i].clone();
        assert_detected(&frame_all(&spliced), &format!("splice {i}"));
    }
    // A whole foreign stream replayed from its start, including its handshake, fails at the handshake.
    let got = receive(&mut fresh_agent(), &frame_all(&foreign), 4096);
    assert_eq!(got.outcome, Err(ChannelError::Decrypt));
    assert!(got.delivered.is_empty());
}

#[test]
fn tampering_with_any_handshake_byte_fails_the_handshake() {
    let agent_id = agent();
    let p = prologue(&agent_id);
    let honest = pair();
    for (name, which) in [("msg1", 0), ("agent flight", 1), ("client flight", 2)] {
        let original = [&honest.msg1, &honest.agent_flight, &honest.client_flight][which].clone();
        for i in 0..original.len() {
            let mut tampered = original.clone();
            tampered[i] ^= 0x04;
            let result = run_with(p, which, &tampered);
            assert!(
                result.is_err(),
                "{name} byte {i} tampered but the handshake succeeded"
            );
        }
    }
}

/// A handshake where the relay replaces flight `which` with `bytes`.
fn run_with(p: Prologue, which: usize, bytes: &[u8]) -> Result<(), ChannelError> {
    let at = now();
    let nth = |wire: &[u8], n: usize| -> Result<Vec<u8>, ChannelError> {
        try_messages(wire)?
            .get(n)
            .cloned()
            .ok_or(ChannelError::TruncatedMessage)
    };
    let mut msg1 = Vec::new();
    let hs = ClientHandshake::start(p, client_ephemeral(0), RekeyPolicy::default(), &mut msg1)?;
    if which == 0 {
        msg1 = bytes.to_vec();
    }
    let mut flight = Vec::new();
    let awaiting = start_agent(
        p,
        RekeyPolicy::default(),
        &nth(&msg1, 0)?,
        &agent(),
        0,
        at,
        &mut flight,
    )?;
    if which == 1 {
        flight = bytes.to_vec();
    }
    let mut out = Vec::new();
    let _client = hs.read_response(&nth(&flight, 0)?)?.read_agent_auth(
        &nth(&flight, 1)?,
        &client(),
        CAPABILITY,
        at,
        &mut out,
    )?;
    if which == 2 {
        out = bytes.to_vec();
    }
    awaiting.read_client_auth(&nth(&out, 0)?)?.accept();
    Ok(())
}

#[test]
fn relay_routing_to_another_agent_or_route_fails_at_the_client() {
    let agent_a = agent();
    let agent_b = identity(0xB2);
    let expected_route = prologue(&agent_a);
    // The stream reaches agent B, which builds its prologue from its own key.
    let reached_b = try_pair_with_agent(expected_route, prologue(&agent_b), &agent_b);
    assert_eq!(reached_b.err(), Some(ChannelError::HandshakeFailed));

    for (what, other) in [
        (
            "fleet",
            Prologue {
                fleet_id: [0x12; 16],
                ..expected_route
            },
        ),
        (
            "channel id",
            Prologue {
                channel_id: [0x23; 16],
                ..expected_route
            },
        ),
        (
            "kind",
            Prologue {
                kind: StreamKind::Shell,
                ..expected_route
            },
        ),
    ] {
        let result = try_pair(0, expected_route, other, RekeyPolicy::default());
        assert_eq!(result.err(), Some(ChannelError::HandshakeFailed), "{what}");
    }
}

fn try_pair_with_agent(
    client_route: Prologue,
    agent_route: Prologue,
    agent_id: &cmdop_identity::Identity,
) -> Result<(), ChannelError> {
    let mut msg1 = Vec::new();
    let hs = ClientHandshake::start(
        client_route,
        client_ephemeral(0),
        RekeyPolicy::default(),
        &mut msg1,
    )?;
    let mut flight = Vec::new();
    let _awaiting = start_agent(
        agent_route,
        RekeyPolicy::default(),
        &messages(&msg1)[0],
        agent_id,
        0,
        now(),
        &mut flight,
    )?;
    let flight = messages(&flight);
    hs.read_response(&flight[0])?.read_agent_auth(
        &flight[1],
        &client(),
        CAPABILITY,
        now(),
        &mut Vec::new(),
    )?;
    Ok(())
}

#[test]
fn an_agent_refuses_a_prologue_naming_another_key() {
    let result = start_agent(
        prologue(&identity(0xB2)),
        RekeyPolicy::default(),
        &[9; 32],
        &agent(),
        0,
        now(),
        &mut Vec::new(),
    );
    assert_eq!(result.err(), Some(ChannelError::WrongIdentity));
}

#[test]
fn relay_substituting_the_agent_key_fails_agent_authentication() {
    // The relay itself completes the Noise handshake with the client's exact prologue (it knows every field),
    // but it cannot sign the handshake hash with the pinned agent key.
    let agent_a = agent();
    let route = prologue(&agent_a);
    let impostor = identity(0xE1);
    let forged = |auth: AuthFrame| -> Result<(), ChannelError> {
        let mut msg1 = Vec::new();
        let hs = ClientHandshake::start(
            route,
            client_ephemeral(0),
            RekeyPolicy::default(),
            &mut msg1,
        )
        .unwrap();
        let (mut transport, msg2) = raw_agent(0, route, &messages(&msg1)[0]);
        let auth = Frame::Auth(Box::new(AuthFrame {
            signature: sign_for(&auth, &impostor, &transport.handshake_hash),
            ..auth
        }));
        let sealed = seal_raw(&mut transport, &auth);
        hs.read_response(&msg2)?.read_agent_auth(
            &messages(&sealed)[0],
            &client(),
            CAPABILITY,
            now(),
            &mut Vec::new(),
        )?;
        Ok(())
    };
    let base = AuthFrame {
        role: Role::Agent,
        public_key: agent_a.public_key(),
        capability: Vec::new(),
        signature: Signature::from_bytes(&[0; 64]),
    };
    // Claims the pinned key but signs with its own.
    assert_eq!(
        forged(base.clone()).err(),
        Some(ChannelError::AgentAuthentication)
    );
    // Presents its own key (correctly signed).
    assert_eq!(
        forged(AuthFrame {
            public_key: impostor.public_key(),
            ..base
        })
        .err(),
        Some(ChannelError::AgentAuthentication)
    );
}

fn sign_for(auth: &AuthFrame, signer: &cmdop_identity::Identity, h: &[u8; 32]) -> Signature {
    let mut message = h.to_vec();
    message.extend_from_slice(auth.public_key.as_bytes());
    signer.sign(Purpose::E2eAgentAuth, &message)
}

/// Every small-order X25519 encoding, canonical and with the ignored top bit set.
const LOW_ORDER: [&str; 14] = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "0100000000000000000000000000000000000000000000000000000000000080",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
];

#[test]
fn low_order_ephemerals_are_rejected_on_both_sides() {
    let route = prologue(&agent());
    for point in LOW_ORDER {
        let point = hex::decode(point).unwrap();
        // At the agent: nothing is written back.
        let mut out = Vec::new();
        let result = start_agent(
            route,
            RekeyPolicy::default(),
            &point,
            &agent(),
            0,
            now(),
            &mut out,
        );
        assert_eq!(
            result.err(),
            Some(ChannelError::LowOrderKey),
            "agent accepted {}",
            hex::encode(&point)
        );
        assert!(out.is_empty());

        // At the client: a relay answering with a low-order `e` (the tag cannot matter).
        let mut msg1 = Vec::new();
        let hs = ClientHandshake::start(
            route,
            client_ephemeral(0),
            RekeyPolicy::default(),
            &mut msg1,
        )
        .unwrap();
        let msg2 = [point.as_slice(), &[0u8; 16]].concat();
        assert_eq!(
            hs.read_response(&msg2).err(),
            Some(ChannelError::LowOrderKey),
            "client accepted {}",
            hex::encode(&point)
        );
    }
}

/// Builds a (possibly forged) client auth frame from the session's handshake hash.
type MakeAuth<'a> = Box<dyn Fn(&[u8; 32]) -> AuthFrame + 'a>;

#[test]
fn agent_processes_nothing_before_a_valid_client_auth() {
    let route = prologue(&agent());
    // Data first.
    let (awaiting, mut transport, _) = raw_client(3, route);
    let sealed = seal_raw(&mut transport, &Frame::Data(b"rm -rf /".to_vec()));
    assert_eq!(
        awaiting.read_client_auth(&messages(&sealed)[0]).err(),
        Some(ChannelError::UnexpectedFrame {
            expected: "the client's auth frame"
        })
    );

    let client_id = client();
    let good_message = |h: &[u8; 32], cap: &[u8]| {
        use sha2::{Digest, Sha256};
        [
            h.as_slice(),
            client_id.public_key().as_bytes(),
            &Sha256::digest(cap),
        ]
        .concat()
    };
    let attempts: Vec<(&str, MakeAuth<'_>)> = vec![
        (
            "reflected agent role",
            Box::new(|h| AuthFrame {
                role: Role::Agent,
                public_key: client_id.public_key(),
                capability: CAPABILITY.to_vec(),
                signature: client_id.sign(Purpose::E2eClientAuth, &good_message(h, CAPABILITY)),
            }),
        ),
        (
            "agent purpose label",
            Box::new(|h| AuthFrame {
                role: Role::Client,
                public_key: client_id.public_key(),
                capability: CAPABILITY.to_vec(),
                signature: client_id.sign(Purpose::E2eAgentAuth, &good_message(h, CAPABILITY)),
            }),
        ),
        (
            "capability swapped after signing",
            Box::new(|h| AuthFrame {
                role: Role::Client,
                public_key: client_id.public_key(),
                capability: b"a better capability".to_vec(),
                signature: client_id.sign(Purpose::E2eClientAuth, &good_message(h, CAPABILITY)),
            }),
        ),
        (
            "other session's hash",
            Box::new(|_| AuthFrame {
                role: Role::Client,
                public_key: client_id.public_key(),
                capability: CAPABILITY.to_vec(),
                signature: client_id
                    .sign(Purpose::E2eClientAuth, &good_message(&[0; 32], CAPABILITY)),
            }),
        ),
        (
            "claims another client's key",
            Box::new(|h| AuthFrame {
                role: Role::Client,
                public_key: identity(0xC2).public_key(),
                capability: CAPABILITY.to_vec(),
                signature: client_id.sign(Purpose::E2eClientAuth, &good_message(h, CAPABILITY)),
            }),
        ),
    ];
    for (what, make) in attempts {
        let (awaiting, mut transport, _) = raw_client(4, route);
        let auth = make(&transport.handshake_hash);
        let sealed = seal_raw(&mut transport, &Frame::Auth(Box::new(auth)));
        assert_eq!(
            awaiting.read_client_auth(&messages(&sealed)[0]).err(),
            Some(ChannelError::ClientAuthentication),
            "{what}"
        );
    }

    // The honest construction, through the same raw path, is accepted: the attempts above failed for their flaw.
    let (awaiting, mut transport, _) = raw_client(5, route);
    let auth = AuthFrame {
        role: Role::Client,
        public_key: client_id.public_key(),
        capability: CAPABILITY.to_vec(),
        signature: client_id.sign(
            Purpose::E2eClientAuth,
            &good_message(&transport.handshake_hash, CAPABILITY),
        ),
    };
    let sealed = seal_raw(&mut transport, &Frame::Auth(Box::new(auth)));
    assert!(awaiting.read_client_auth(&messages(&sealed)[0]).is_ok());
}

#[test]
fn client_sends_nothing_before_a_valid_agent_auth() {
    let route = prologue(&agent());
    let mut msg1 = Vec::new();
    let hs = ClientHandshake::start(
        route,
        client_ephemeral(6),
        RekeyPolicy::default(),
        &mut msg1,
    )
    .unwrap();
    let (mut transport, msg2) = raw_agent(6, route, &messages(&msg1)[0]);
    let sealed = seal_raw(&mut transport, &Frame::Data(b"fake output".to_vec()));
    let mut out = Vec::new();
    let result = hs.read_response(&msg2).unwrap().read_agent_auth(
        &messages(&sealed)[0],
        &client(),
        CAPABILITY,
        now(),
        &mut out,
    );
    assert_eq!(
        result.err(),
        Some(ChannelError::UnexpectedFrame {
            expected: "the agent's auth frame"
        })
    );
    assert!(
        out.is_empty(),
        "the client revealed its identity to an unauthenticated peer"
    );
}

#[test]
fn authorization_hook_decides_before_any_data_is_read() {
    // Rejected: the client sees an authenticated denial; its request was never decrypted by the agent.
    let (pending, mut client_session, _request) = pending(7);
    assert_eq!(pending.client_key(), client().public_key());
    assert_eq!(pending.capability(), CAPABILITY);
    let mut out = Vec::new();
    pending
        .reject("no capability for exec on this machine", now(), &mut out)
        .unwrap();
    let got = receive(&mut client_session, &out, 4096);
    assert_eq!(
        got.delivered,
        vec![Incoming::Close {
            reason: CloseReason::Denied,
            message: "no capability for exec on this machine".into()
        }]
    );
    assert!(client_session.is_closed());

    // Accepted: the first request from the same flight is then readable.
    let (pending, _client_session, request) = pending_again(8);
    let mut agent_session = pending.accept();
    let got = receive(&mut agent_session, &request, 4096);
    assert_eq!(
        got.delivered,
        vec![Incoming::Data(b"first request".to_vec())]
    );
}

fn pending_again(
    salt: u8,
) -> (
    cmdop_proto::e2e::PendingClient,
    cmdop_proto::e2e::Session,
    Vec<u8>,
) {
    pending(salt)
}

#[test]
fn rekey_by_frame_count_interoperates_and_old_keys_stop_working() {
    let route = prologue(&agent());
    let policy = RekeyPolicy {
        max_frames: 3,
        ..RekeyPolicy::default()
    };
    let mut pair = pair_with(10, route, route, policy);
    let frames: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 10]).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let wire = data_flight(&mut pair.client, &refs, true);
    let msgs = messages(&wire);
    // The auth frame used one slot of the first key: rekeys before frames 3, 6 and 9 (counting auth as 1).
    assert_eq!(
        msgs.len(),
        11 + 3 + 1 - 1,
        "unexpected number of rekey frames"
    );
    let got = receive(&mut pair.agent, &wire, 13);
    assert_eq!(got.delivered, expected(&refs, true));
    assert_eq!(got.outcome, Ok(()));

    // A receiver that misses a rekey frame (the relay dropped it) cannot read anything under the new key,
    // and a frame from before the rekey cannot be replayed after it.
    let mut pair = pair_with(10, route, route, policy);
    let msgs = messages(&data_flight(&mut pair.client, &refs, true));
    let rekey_at = (0..msgs.len()).find(|&i| msgs[i].len() == 1 + 16).unwrap();
    let mut without = msgs;
    without.remove(rekey_at);
    let got = receive(&mut pair.agent, &frame_all(&without), 4096);
    assert_eq!(got.outcome, Err(ChannelError::Decrypt));
    assert_eq!(got.delivered.len(), rekey_at);

    let mut pair = pair_with(10, route, route, policy);
    let msgs = messages(&data_flight(&mut pair.client, &refs, true));
    let mut replayed = msgs[..=rekey_at].to_vec();
    replayed.push(msgs[0].clone());
    let got = receive(&mut pair.agent, &frame_all(&replayed), 4096);
    assert_eq!(got.outcome, Err(ChannelError::Decrypt));
}

#[test]
fn rekey_by_volume_and_by_time() {
    let route = prologue(&agent());
    let policy = RekeyPolicy {
        max_bytes: 1000,
        ..RekeyPolicy::default()
    };
    let mut pair = pair_with(11, route, route, policy);
    let t0 = now();
    let mut wire = Vec::new();
    for _ in 0..5 {
        pair.agent.send_data(&[7u8; 600], t0, &mut wire).unwrap();
    }
    let msgs = messages(&wire);
    // The agent's auth frame (~140 bytes) and 600-byte frames: a rekey before every second frame after the first.
    let rekeys = msgs.iter().filter(|m| m.len() == 17).count();
    assert_eq!(rekeys, 2);
    let got = receive(&mut pair.client, &wire, 999);
    assert_eq!(got.delivered.len(), 5);
    assert_eq!(
        got.outcome,
        Err(ChannelError::Truncated),
        "no end frame was sent"
    );

    let policy = RekeyPolicy {
        max_age: Duration::from_secs(600),
        ..RekeyPolicy::default()
    };
    let mut pair = pair_with(12, route, route, policy);
    let mut wire = Vec::new();
    // The key's clock started when the client sealed its auth frame (at handshake time).
    pair.client.send_data(b"a", t0, &mut wire).unwrap();
    assert_eq!(messages(&wire).len(), 1);
    pair.client
        .send_data(b"b", t0 + Duration::from_secs(599), &mut wire)
        .unwrap();
    assert_eq!(messages(&wire).len(), 2);
    pair.client
        .send_data(b"c", t0 + Duration::from_secs(601), &mut wire)
        .unwrap();
    assert_eq!(
        messages(&wire).len(),
        4,
        "a rekey frame precedes the data once the key is 10 minutes old"
    );
    pair.client
        .send_data(b"d", t0 + Duration::from_secs(602), &mut wire)
        .unwrap();
    assert_eq!(messages(&wire).len(), 5);
    let got = receive(&mut pair.agent, &wire, 3);
    assert_eq!(
        got.delivered,
        vec![
            Incoming::Data(b"a".to_vec()),
            Incoming::Data(b"b".to_vec()),
            Incoming::Data(b"c".to_vec()),
            Incoming::Data(b"d".to_vec())
        ]
    );
}

#[test]
fn end_frame_rules() {
    let mut pair = pair();
    let mut wire = Vec::new();
    pair.agent.send_end(3, now(), &mut wire).unwrap();
    assert_eq!(
        pair.agent.send_data(b"late", now(), &mut Vec::new()),
        Err(ChannelError::Closed)
    );
    assert_eq!(
        pair.agent.send_end(0, now(), &mut Vec::new()),
        Err(ChannelError::Closed)
    );
    let got = receive(&mut pair.client, &wire, 1);
    assert_eq!(got.delivered, vec![Incoming::End { status: 3 }]);
    assert_eq!(got.outcome, Ok(()));
    assert!(pair.client.has_received_end());

    // A peer sending data after its end frame is breaking the protocol.
    let route = prologue(&agent());
    let mut msg1 = Vec::new();
    let hs = ClientHandshake::start(
        route,
        client_ephemeral(14),
        RekeyPolicy::default(),
        &mut msg1,
    )
    .unwrap();
    let (mut raw, msg2) = raw_agent(14, route, &messages(&msg1)[0]);
    let mut signed = raw.handshake_hash.to_vec();
    signed.extend_from_slice(agent().public_key().as_bytes());
    let auth = Frame::Auth(Box::new(AuthFrame {
        role: Role::Agent,
        public_key: agent().public_key(),
        capability: Vec::new(),
        signature: agent().sign(Purpose::E2eAgentAuth, &signed),
    }));
    let auth = seal_raw(&mut raw, &auth);
    let mut session = hs
        .read_response(&msg2)
        .unwrap()
        .read_agent_auth(&messages(&auth)[0], &client(), b"", now(), &mut Vec::new())
        .unwrap();
    let wire = [
        seal_raw(&mut raw, &Frame::End { status: 0 }),
        seal_raw(&mut raw, &Frame::Data(b"after".to_vec())),
    ]
    .concat();
    let got = receive(&mut session, &wire, 4096);
    assert_eq!(got.delivered, vec![Incoming::End { status: 0 }]);
    assert_eq!(
        got.outcome,
        Err(ChannelError::UnexpectedFrame {
            expected: "nothing after the end frame"
        })
    );
}

#[test]
fn errors_are_terminal_and_generic() {
    let mut pair = pair();
    let wire = data_flight(&mut pair.client, &FRAMES, true);
    let msgs = messages(&wire);
    let mut bad = msgs[0].clone();
    bad[0] ^= 1;
    let error = pair.agent.open(&bad).unwrap_err();
    assert_eq!(error, ChannelError::Decrypt);
    // The genuine frame is refused too: the keys are gone.
    assert_eq!(pair.agent.open(&msgs[0]), Err(ChannelError::Closed));
    assert_eq!(
        pair.agent.send_data(b"x", now(), &mut Vec::new()),
        Err(ChannelError::Closed)
    );
    assert!(pair.agent.is_closed());
    // The message is fixed text: nothing from the attacker's bytes (not even a length) is echoed.
    assert!(
        !error.to_string().chars().any(|c| c.is_ascii_digit()),
        "{error}"
    );
    // Debug output of a session shows no key material.
    let debug = format!("{:?}", pair.client);
    assert!(debug.contains("has_key"), "{debug}");

    // An Auth frame after the handshake is a protocol error.
    let (mut agent_session, mut raw) = {
        let route = prologue(&agent());
        let (awaiting, mut transport, _) = raw_client(15, route);
        use sha2::{Digest, Sha256};
        let signed = [
            transport.handshake_hash.as_slice(),
            client().public_key().as_bytes(),
            &Sha256::digest(b""),
        ]
        .concat();
        let auth = Frame::Auth(Box::new(AuthFrame {
            role: Role::Client,
            public_key: client().public_key(),
            capability: Vec::new(),
            signature: client().sign(Purpose::E2eClientAuth, &signed),
        }));
        let sealed = seal_raw(&mut transport, &auth);
        (
            awaiting
                .read_client_auth(&messages(&sealed)[0])
                .unwrap()
                .accept(),
            transport,
        )
    };
    let again = Frame::Auth(Box::new(AuthFrame {
        role: Role::Client,
        public_key: client().public_key(),
        capability: Vec::new(),
        signature: Signature::from_bytes(&[0; 64]),
    }));
    let got = receive(&mut agent_session, &seal_raw(&mut raw, &again), 4096);
    assert_eq!(
        got.outcome,
        Err(ChannelError::UnexpectedFrame {
            expected: "data, rekey, end or close"
        })
    );
}

#[test]
fn close_message_is_bounded() {
    let mut pair = pair();
    let mut wire = Vec::new();
    pair.agent
        .send_close(CloseReason::Shutdown, &"é".repeat(2000), now(), &mut wire)
        .unwrap();
    assert!(pair.agent.is_closed());
    let got = receive(&mut pair.client, &wire, 4096);
    let Incoming::Close { reason, message } = &got.delivered[0] else {
        panic!("{got:?}")
    };
    assert_eq!(*reason, CloseReason::Shutdown);
    assert_eq!(message.len(), 1024);
}

#[test]
fn close_after_end_survives_a_time_rekey() {
    let mut pair = pair();
    let t0 = now();
    let mut wire = Vec::new();
    pair.agent.send_end(0, t0, &mut wire).unwrap();
    pair.agent
        .send_close(
            CloseReason::Shutdown,
            "bye",
            t0 + Duration::from_secs(3600),
            &mut wire,
        )
        .unwrap();
    assert_eq!(
        messages(&wire).len(),
        3,
        "end, rekey (the key is an hour old), close"
    );
    let got = receive(&mut pair.client, &wire, 4096);
    assert_eq!(
        got.delivered,
        vec![
            Incoming::End { status: 0 },
            Incoming::Close {
                reason: CloseReason::Shutdown,
                message: "bye".into()
            }
        ]
    );
    assert_eq!(got.outcome, Ok(()));
}

/// The in-place paths the bulk streams use are the same protocol: sealing where the data lies gives the bytes
/// `send_data` gives (rekeys included), and opening where the message lies gives what `open` gives, with
/// tampering still detected before any data is used.
#[test]
fn sealing_and_opening_in_place_match_the_copying_paths_byte_for_byte() {
    let route = prologue(&agent());
    let policy = RekeyPolicy {
        max_frames: 3,
        ..RekeyPolicy::default()
    };
    let sizes = [
        1usize,
        127,
        128,
        16_383,
        16_384,
        MAX_DATA_PER_FRAME,
        5,
        0,
        300,
    ];
    let chunks: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect())
        .collect();
    let at = now();
    let mut copying = pair_with(11, route, route, policy);
    let mut in_place = pair_with(11, route, route, policy);
    let mut expected_wire = Vec::new();
    let mut wire = Vec::new();
    for chunk in &chunks {
        copying
            .client
            .send_data(chunk, at, &mut expected_wire)
            .unwrap();
        let mut buffer = vec![0xEE; DATA_HEADROOM];
        buffer.extend_from_slice(chunk);
        let mut control = Vec::new();
        let start = in_place
            .client
            .seal_data_in_place(&mut buffer, at, &mut control)
            .unwrap();
        wire.extend_from_slice(&control);
        match start {
            Some(start) => wire.extend_from_slice(&buffer[start..]),
            None => assert!(chunk.is_empty() && control.is_empty()),
        }
    }
    assert_eq!(wire, expected_wire);

    let mut delivered = Vec::new();
    for mut message in messages(&wire) {
        match in_place.agent.open_in_place(&mut message).unwrap() {
            None => {}
            Some(Opened::Data(range)) => delivered.push(message[range].to_vec()),
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
    let non_empty: Vec<Vec<u8>> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
    assert_eq!(delivered, non_empty);

    // One flipped bit anywhere in a message fails it, and the session with it.
    let mut tampered = pair_with(11, route, route, policy);
    let mut message = messages(&wire).remove(0);
    let last = message.len() - 1;
    message[last / 2] ^= 0x01;
    assert_eq!(
        tampered.agent.open_in_place(&mut message),
        Err(ChannelError::Decrypt)
    );
    let mut next = messages(&wire).remove(1);
    assert_eq!(
        tampered.agent.open_in_place(&mut next),
        Err(ChannelError::Closed)
    );
}

#[test]
fn sealing_in_place_refuses_an_oversized_chunk_and_a_closed_session() {
    let mut pair = pair();
    let mut buffer = vec![0; DATA_HEADROOM + MAX_DATA_PER_FRAME + 1];
    assert_eq!(
        pair.client
            .seal_data_in_place(&mut buffer, now(), &mut Vec::new()),
        Err(ChannelError::MessageTooLarge {
            len: MAX_DATA_PER_FRAME + 1
        })
    );
    pair.client.send_end(0, now(), &mut Vec::new()).unwrap();
    let mut buffer = vec![0; DATA_HEADROOM + 1];
    assert_eq!(
        pair.client
            .seal_data_in_place(&mut buffer, now(), &mut Vec::new()),
        Err(ChannelError::Closed)
    );
}
