//! Shared harness for the end-to-end channel tests: fixed identities, a deterministic handshake, a wire reader.
// Test harness: a panic here is a test failure, which is what unwrap is for.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::time::Instant;

use cmdop_identity::{Identity, Seed};
use cmdop_proto::e2e::noise::{NnInitiator, NnResponder, TransportState};
use cmdop_proto::e2e::{
    AgentAwaitingClient, AgentHandshake, ChannelError, ClientHandshake, Ephemeral, Frame, Incoming,
    MessageDecoder, PendingClient, Prologue, RekeyPolicy, Session, StreamKind,
};

pub const FLEET: [u8; 16] = [0x11; 16];
pub const CHANNEL: [u8; 16] = [0x22; 16];
pub const CAPABILITY: &[u8] = b"signed capability bytes";

pub fn identity(byte: u8) -> Identity {
    Identity::from_seed(&Seed::from_bytes([byte; 32]))
}

pub fn agent() -> Identity {
    identity(0xA1)
}

pub fn client() -> Identity {
    identity(0xC1)
}

pub fn prologue(agent: &Identity) -> Prologue {
    Prologue {
        fleet_id: FLEET,
        agent_key: agent.public_key(),
        channel_id: CHANNEL,
        kind: StreamKind::Exec,
    }
}

/// Splits framed bytes into messages, reporting broken framing as an error.
pub fn try_messages(wire: &[u8]) -> Result<Vec<Vec<u8>>, ChannelError> {
    let mut decoder = MessageDecoder::new();
    let mut input = wire;
    let mut out = Vec::new();
    while let Some(message) = decoder.feed(&mut input)? {
        out.push(message);
    }
    decoder.finish()?;
    Ok(out)
}

/// Splits framed bytes into messages; panics on framing errors (test input is well-formed).
pub fn messages(wire: &[u8]) -> Vec<Vec<u8>> {
    let mut decoder = MessageDecoder::new();
    let mut input = wire;
    let mut out = Vec::new();
    while let Some(message) = decoder.feed(&mut input).unwrap() {
        out.push(message);
    }
    assert!(decoder.finish().is_ok(), "wire ended mid-message");
    out
}

/// Everything the relay saw during a handshake, and the two sessions.
pub struct Pair {
    pub client: Session,
    pub agent: Session,
    /// msg1 (client → agent), framed.
    pub msg1: Vec<u8>,
    /// msg2 ‖ agent auth (agent → client), framed.
    pub agent_flight: Vec<u8>,
    /// client auth (client → agent), framed.
    pub client_flight: Vec<u8>,
}

pub fn now() -> Instant {
    // The channel never reads the clock; tests pick one base instant and move it forward explicitly.
    Instant::now()
}

/// A deterministic handshake: `salt` picks the ephemerals so different salts give unrelated sessions.
pub fn pair_with(
    salt: u8,
    prologue_client: Prologue,
    prologue_agent: Prologue,
    policy: RekeyPolicy,
) -> Pair {
    try_pair(salt, prologue_client, prologue_agent, policy).unwrap()
}

pub fn try_pair(
    salt: u8,
    prologue_client: Prologue,
    prologue_agent: Prologue,
    policy: RekeyPolicy,
) -> Result<Pair, ChannelError> {
    let at = now();
    let (agent_id, client_id) = (agent(), client());
    let mut msg1 = Vec::new();
    let handshake =
        ClientHandshake::start(prologue_client, client_ephemeral(salt), policy, &mut msg1)?;
    let mut agent_flight = Vec::new();
    let awaiting = start_agent(
        prologue_agent,
        policy,
        &messages(&msg1)[0],
        &agent_id,
        salt,
        at,
        &mut agent_flight,
    )?;
    let flight = messages(&agent_flight);
    let client_awaiting = handshake.read_response(&flight[0])?;
    let mut client_flight = Vec::new();
    let client = client_awaiting.read_agent_auth(
        &flight[1],
        &client_id,
        CAPABILITY,
        at,
        &mut client_flight,
    )?;
    let pending = awaiting.read_client_auth(&messages(&client_flight)[0])?;
    Ok(Pair {
        client,
        agent: pending.accept(),
        msg1,
        agent_flight,
        client_flight,
    })
}

pub fn pair() -> Pair {
    let agent_id = agent();
    pair_with(
        0,
        prologue(&agent_id),
        prologue(&agent_id),
        RekeyPolicy::default(),
    )
}

pub fn client_ephemeral(salt: u8) -> Ephemeral {
    Ephemeral::danger_from_bytes([salt.wrapping_mul(2).wrapping_add(1); 32])
}

pub fn agent_ephemeral(salt: u8) -> Ephemeral {
    Ephemeral::danger_from_bytes([salt.wrapping_mul(2).wrapping_add(2); 32])
}

pub fn start_agent(
    prologue: Prologue,
    policy: RekeyPolicy,
    msg1: &[u8],
    identity: &Identity,
    salt: u8,
    at: Instant,
    out: &mut Vec<u8>,
) -> Result<AgentAwaitingClient, ChannelError> {
    AgentHandshake::new(prologue, policy).respond(msg1, identity, agent_ephemeral(salt), at, out)
}

/// Agent side up to (not including) accept: for tests of authorization.
pub fn pending(salt: u8) -> (PendingClient, Session, Vec<u8>) {
    pending_with(salt, &client(), CAPABILITY)
}

/// Like [`pending`], for a chosen client identity and capability. Returns the agent's pending client, the
/// client's session, and the client's first request (sealed in the same flight as its auth frame).
pub fn pending_with(
    salt: u8,
    client_id: &Identity,
    capability: &[u8],
) -> (PendingClient, Session, Vec<u8>) {
    let at = now();
    let agent_id = agent();
    let p = prologue(&agent_id);
    let mut msg1 = Vec::new();
    let handshake =
        ClientHandshake::start(p, client_ephemeral(salt), RekeyPolicy::default(), &mut msg1)
            .unwrap();
    let mut agent_flight = Vec::new();
    let awaiting = start_agent(
        p,
        RekeyPolicy::default(),
        &messages(&msg1)[0],
        &agent_id,
        salt,
        at,
        &mut agent_flight,
    )
    .unwrap();
    let flight = messages(&agent_flight);
    let mut client_flight = Vec::new();
    let mut client = handshake
        .read_response(&flight[0])
        .unwrap()
        .read_agent_auth(&flight[1], client_id, capability, at, &mut client_flight)
        .unwrap();
    let auth = messages(&client_flight);
    let mut request = Vec::new();
    client
        .send_data(b"first request", at, &mut request)
        .unwrap();
    let pending = awaiting.read_client_auth(&auth[0]).unwrap();
    (pending, client, request)
}

/// A raw Noise NN initiator (no cmdop auth): lets tests play a malicious client.
pub fn raw_client(salt: u8, prologue: Prologue) -> (AgentAwaitingClient, TransportState, Vec<u8>) {
    let at = now();
    let mut msg1 = Vec::new();
    let initiator =
        NnInitiator::start(&prologue.to_bytes(), client_ephemeral(salt), &[], &mut msg1).unwrap();
    let mut framed = Vec::new();
    cmdop_proto::e2e::encode_message(&msg1, &mut framed).unwrap();
    let mut agent_flight = Vec::new();
    let awaiting = start_agent(
        prologue,
        RekeyPolicy::default(),
        &msg1,
        &agent(),
        salt,
        at,
        &mut agent_flight,
    )
    .unwrap();
    let flight = messages(&agent_flight);
    let (_, mut transport) = initiator.finish(&flight[0]).unwrap();
    // Consume the agent's auth frame so the receive nonce is in step.
    let _ = transport.recv.decrypt_with_ad(b"", &flight[1]).unwrap();
    (awaiting, transport, agent_flight)
}

/// A raw Noise NN responder playing a malicious agent (or a relay pretending to be one).
pub fn raw_agent(salt: u8, prologue: Prologue, msg1: &[u8]) -> (TransportState, Vec<u8>) {
    let (responder, _) = NnResponder::read(&prologue.to_bytes(), msg1).unwrap();
    let mut msg2 = Vec::new();
    let transport = responder
        .respond(agent_ephemeral(salt), &[], &mut msg2)
        .unwrap();
    (transport, msg2)
}

/// Encrypts `frame` with a raw transport state and frames it.
pub fn seal_raw(transport: &mut TransportState, frame: &Frame) -> Vec<u8> {
    let ciphertext = transport
        .send
        .encrypt_with_ad(b"", &frame.encode().unwrap())
        .unwrap();
    let mut framed = Vec::new();
    cmdop_proto::e2e::encode_message(&ciphertext, &mut framed).unwrap();
    framed
}

/// What a receiver made of a byte stream that then ended (FIN).
#[derive(Debug)]
pub struct Received {
    pub delivered: Vec<Incoming>,
    pub outcome: Result<(), ChannelError>,
}

/// Feeds `wire` in chunks of `chunk` bytes to `session`, as a reader task would, then signals end of stream.
pub fn receive(session: &mut Session, wire: &[u8], chunk: usize) -> Received {
    let mut decoder = MessageDecoder::new();
    let mut delivered = Vec::new();
    for mut piece in wire.chunks(chunk.max(1)) {
        loop {
            match decoder.feed(&mut piece) {
                Ok(Some(message)) => match session.open(&message) {
                    Ok(Some(incoming)) => delivered.push(incoming),
                    Ok(None) => {}
                    Err(error) => {
                        return Received {
                            delivered,
                            outcome: Err(error),
                        };
                    }
                },
                Ok(None) => break,
                Err(error) => {
                    return Received {
                        delivered,
                        outcome: Err(error),
                    };
                }
            }
        }
    }
    let outcome = decoder.finish().and_then(|()| session.finish());
    Received { delivered, outcome }
}
