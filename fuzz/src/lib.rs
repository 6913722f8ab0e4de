//! What several fuzz targets share: an end-to-end channel brought to a given state with the fixed keys of
//! `docs/e2e-channel.md`, so that a target's input reaches the code behind the authentication checks.

use std::sync::LazyLock;
use std::time::Instant;

use cmdop_fleet::{Capability, FleetId, MachineId, Operation, Timestamp};
use cmdop_identity::{Identity, Seed};
use cmdop_proto::e2e::noise::{NnInitiator, TransportState};
use cmdop_proto::e2e::{
    AgentAwaitingClient, AgentHandshake, AuthFrame, Ephemeral, Frame, MessageDecoder, Prologue,
    RekeyPolicy, Role, StreamKind,
};
use sha2::{Digest, Sha256};

/// The agent identity of the document's examples (seed `a1` x 32).
pub static AGENT: LazyLock<Identity> =
    LazyLock::new(|| Identity::from_seed(&Seed::from_bytes([0xa1; 32])));
/// The client identity of the document's examples (seed `c1` x 32).
pub static CLIENT: LazyLock<Identity> =
    LazyLock::new(|| Identity::from_seed(&Seed::from_bytes([0xc1; 32])));
/// The fleet trust key that signs the client's capability (seed `01` x 32, as in cmdop-fleet's golden).
pub static TRUST: LazyLock<Identity> =
    LazyLock::new(|| Identity::from_seed(&Seed::from_bytes([1; 32])));

/// The fleet id of the document's prologue example.
pub const FLEET: [u8; 16] = [0x11; 16];

/// The channel id of the document's prologue example.
pub const CHANNEL: [u8; 16] = [0x22; 16];

/// The machine the capability names (any fixed id: the channel fuzz targets do not check it).
pub const MACHINE: [u8; 16] = [0x33; 16];

/// The route of the document's prologue example: fleet `11…`, channel `22…`, an exec stream to [`AGENT`].
pub fn prologue() -> Prologue {
    Prologue {
        fleet_id: FLEET,
        agent_key: AGENT.public_key(),
        channel_id: CHANNEL,
        kind: StreamKind::Exec,
    }
}

/// A capability for [`CLIENT`] to exec on machine [`MACHINE`] over channel [`CHANNEL`] at any time, signed by
/// [`TRUST`].
pub fn capability_bytes() -> Vec<u8> {
    static BYTES: LazyLock<Vec<u8>> = LazyLock::new(issue_capability);
    BYTES.clone()
}

fn issue_capability() -> Vec<u8> {
    Capability {
        client_key: CLIENT.public_key(),
        fleet: FleetId::from_bytes(FLEET),
        machine: MachineId::from_bytes(MACHINE),
        channel: CHANNEL,
        operations: [Operation::Exec].into_iter().collect(),
        not_before: Timestamp::from_unix_seconds(0),
        not_after: Timestamp::from_unix_seconds(u64::MAX),
    }
    .sign(&TRUST)
    .to_bytes()
}

/// The ephemerals of the document's examples (`01` x 32 for the client, `02` x 32 for the agent): with them
/// the channel is byte for byte the document's transcript, so its sealed messages are genuine here.
pub const DOCUMENT_EPHEMERALS: ([u8; 32], [u8; 32]) = ([1; 32], [2; 32]);
/// Ephemerals of no published transcript: no message a fuzzer could have seen is genuine under them.
pub const PRIVATE_EPHEMERALS: ([u8; 32], [u8; 32]) = ([3; 32], [4; 32]);

/// The agent after the Noise handshake and its own `Auth` frame, waiting for the client's `Auth`; and the
/// client's transport keys, with which a target seals whatever plaintext it wants the agent to open.
pub fn agent_awaiting_client(
    now: Instant,
    (client_ephemeral, agent_ephemeral): ([u8; 32], [u8; 32]),
) -> (AgentAwaitingClient, TransportState) {
    let prologue = prologue();
    let mut message1 = Vec::new();
    let initiator = NnInitiator::start(
        &prologue.to_bytes(),
        Ephemeral::danger_from_bytes(client_ephemeral),
        &[],
        &mut message1,
    )
    .expect("message 1");
    let mut flight = Vec::new();
    let agent = AgentHandshake::new(prologue, RekeyPolicy::default())
        .respond(
            &message1,
            &AGENT,
            Ephemeral::danger_from_bytes(agent_ephemeral),
            now,
            &mut flight,
        )
        .expect("the agent answers message 1");
    let mut input = flight.as_slice();
    let mut decoder = MessageDecoder::new();
    let message2 = decoder
        .feed(&mut input)
        .expect("framing")
        .expect("message 2");
    let (_, mut client) = initiator
        .finish(&message2)
        .expect("message 2 authenticates");
    let agent_auth = decoder
        .feed(&mut input)
        .expect("framing")
        .expect("the agent's auth");
    client
        .recv
        .decrypt_with_ad(&[], &agent_auth)
        .expect("the agent's auth decrypts");
    (agent, client)
}

/// The plaintext of the client's `Auth` frame with a valid signature over `capability`, claiming `role`.
pub fn client_auth_plaintext(handshake_hash: &[u8; 32], role: Role, capability: &[u8]) -> Vec<u8> {
    let client_key = CLIENT.public_key();
    let mut signed = Vec::with_capacity(96);
    signed.extend_from_slice(handshake_hash);
    signed.extend_from_slice(client_key.as_bytes());
    signed.extend_from_slice(&Sha256::digest(capability));
    let signature = CLIENT.sign(cmdop_identity::Purpose::E2eClientAuth, &signed);
    Frame::Auth(Box::new(AuthFrame {
        role,
        public_key: client_key,
        capability: capability.to_vec(),
        signature,
    }))
    .encode()
    .expect("an auth frame encodes")
}
