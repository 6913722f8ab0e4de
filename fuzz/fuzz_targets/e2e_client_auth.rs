//! Fuzzes `AgentAwaitingClient::read_client_auth`, the agent's first look at what a client sends after the
//! handshake (docs/e2e-channel.md §6, §10): a whole transport message, authenticated before anything in it is
//! believed.
//!
//! The first input byte picks what the rest becomes: a plaintext the target seals with the client's real key
//! (so the frame decoder and the checks behind decryption are reached), a validly signed client `Auth` with
//! the rest as its capability (so the accepted path and the capability check are reached), or raw bytes on
//! the wire. The channel uses the document's keys and ephemerals, so the document's sealed client `Auth` (a
//! seed) is genuine raw input and reaches the refusal path with its capability.
#![no_main]

use std::time::Instant;

use cmdop_fleet::{Expected, FleetId, MachineId, Operation, SignedCapability, Timestamp};
use cmdop_fuzz::{
    CHANNEL, CLIENT, DOCUMENT_EPHEMERALS, FLEET, MACHINE, TRUST, agent_awaiting_client, capability_bytes,
    client_auth_plaintext,
};
use cmdop_proto::e2e::noise::MAX_MESSAGE_LEN;
use cmdop_proto::e2e::{CloseReason, Frame, Role, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let (agent, mut client) = agent_awaiting_client(now, DOCUMENT_EPHEMERALS);
    let mut signed_capability = None;
    let (message, genuine_auth) = match mode % 3 {
        0 => {
            let Some(plaintext) = rest.get(..rest.len().min(MAX_MESSAGE_LEN - 16)) else {
                return;
            };
            let genuine = false;
            (
                client
                    .send
                    .encrypt_with_ad(&[], plaintext)
                    .expect("sealing"),
                genuine,
            )
        }
        1 => {
            let role = if mode & 0x80 == 0 {
                Role::Client
            } else {
                Role::Agent
            };
            // Empty: the capability the trust key really issued, so that the accepted path is reached too.
            let capability = match rest.get(..rest.len().min(4096)).unwrap_or_default() {
                [] => capability_bytes(),
                given => given.to_vec(),
            };
            let plaintext = client_auth_plaintext(&client.handshake_hash, role, &capability);
            signed_capability = Some(capability);
            (
                client
                    .send
                    .encrypt_with_ad(&[], &plaintext)
                    .expect("sealing"),
                role == Role::Client,
            )
        }
        _ => (rest.to_vec(), false),
    };
    match agent.read_client_auth(&message) {
        Ok(pending) => {
            assert_eq!(
                pending.client_key(),
                CLIENT.public_key(),
                "a client was accepted under another key"
            );
            if let Some(capability) = &signed_capability {
                assert_eq!(pending.capability(), capability.as_slice());
            }
            // What the agent's caller does next: check the capability, then accept or refuse.
            let allowed =
                SignedCapability::from_bytes(pending.capability()).is_ok_and(|capability| {
                    let expected = Expected {
                        client_key: pending.client_key(),
                        fleet: FleetId::from_bytes(FLEET),
                        machine: MachineId::from_bytes(MACHINE),
                        channel: CHANNEL,
                        operation: Operation::Exec,
                        now: Timestamp::from_unix_seconds(1_700_000_000),
                    };
                    capability.verify(&TRUST.public_key(), &expected).is_ok()
                });
            if allowed {
                let _ = pending.accept();
            } else {
                let mut out = Vec::new();
                pending
                    .reject("no capability for exec", now, &mut out)
                    .expect("a refusal seals");
                let close = client
                    .recv
                    .decrypt_with_ad(&[], &out[2..])
                    .expect("the refusal authenticates");
                assert!(matches!(
                    decode_frame(&close),
                    Ok(Frame::Close {
                        reason: CloseReason::Denied,
                        ..
                    })
                ));
            }
        }
        Err(error) => {
            assert!(
                !genuine_auth,
                "a validly signed client auth was refused: {error}"
            );
            assert!(!error.to_string().is_empty());
        }
    }
});
