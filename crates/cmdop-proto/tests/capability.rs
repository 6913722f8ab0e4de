//! The agent's authorization hook with real fleet capabilities: a client is accepted only with a capability
//! signed by the fleet trust key for its own key, this fleet, this operation and now; otherwise it gets an
//! authenticated denial and its first request is never read.

// Helpers outside #[test] functions unwrap too: a panic in a test harness is a test failure.
#![allow(clippy::unwrap_used)]

use crate::support::*;
use cmdop_fleet::{
    Capability, CapabilityError, Expected, FleetId, MachineId, Operation, OperationSet,
    SignedCapability, Timestamp,
};
use cmdop_identity::{Identity, PublicKey};
use cmdop_proto::e2e::{CloseReason, Incoming, PendingClient};

const NOW: u64 = 1_800_000_000;

/// The agent's machine id in these tests; the channel id is the pair harness's [`CHANNEL`].
const MACHINE: [u8; 16] = [0x4d; 16];

fn trust_key() -> Identity {
    identity(0x7E)
}

fn capability(
    client_key: PublicKey,
    fleet: [u8; 16],
    operation: Operation,
    valid: std::ops::Range<u64>,
) -> Vec<u8> {
    Capability {
        client_key,
        fleet: FleetId::from_bytes(fleet),
        machine: MachineId::from_bytes(MACHINE),
        channel: CHANNEL,
        operations: OperationSet::EMPTY.with(operation),
        not_before: Timestamp::from_unix_seconds(valid.start),
        not_after: Timestamp::from_unix_seconds(valid.end),
    }
    .sign(&trust_key())
    .to_bytes()
}

/// What an agent does with a verified client: check the capability against its own trust key and fleet.
fn authorize(pending: &PendingClient) -> Result<(), CapabilityError> {
    let signed = SignedCapability::from_bytes(pending.capability())?;
    signed.verify(
        &trust_key().public_key(),
        &Expected {
            client_key: pending.client_key(),
            fleet: FleetId::from_bytes(FLEET),
            machine: MachineId::from_bytes(MACHINE),
            channel: CHANNEL,
            operation: Operation::Exec,
            now: Timestamp::from_unix_seconds(NOW),
        },
    )?;
    Ok(())
}

/// Runs one stream: returns what the agent read and what the client saw.
fn stream(salt: u8, client_id: &Identity, capability: &[u8]) -> (Vec<Incoming>, Vec<Incoming>) {
    let (pending, mut client_session, request) = pending_with(salt, client_id, capability);
    match authorize(&pending) {
        Ok(()) => {
            let mut agent_session = pending.accept();
            let got = receive(&mut agent_session, &request, 4096);
            (got.delivered, Vec::new())
        }
        Err(error) => {
            let mut denial = Vec::new();
            pending
                .reject(&format!("access denied: {error}"), now(), &mut denial)
                .unwrap();
            (
                Vec::new(),
                receive(&mut client_session, &denial, 4096).delivered,
            )
        }
    }
}

fn assert_denied(salt: u8, client_id: &Identity, capability: &[u8], what: &str) {
    let (agent_read, client_saw) = stream(salt, client_id, capability);
    assert!(agent_read.is_empty(), "{what}: the agent read the request");
    assert!(
        matches!(
            client_saw.as_slice(),
            [Incoming::Close {
                reason: CloseReason::Denied,
                ..
            }]
        ),
        "{what}: {client_saw:?}"
    );
}

#[test]
fn a_valid_capability_is_accepted_and_the_request_is_read() {
    let cap = capability(
        client().public_key(),
        FLEET,
        Operation::Exec,
        NOW - 60..NOW + 60,
    );
    let (agent_read, _) = stream(30, &client(), &cap);
    assert_eq!(agent_read, vec![Incoming::Data(b"first request".to_vec())]);
}

#[test]
fn a_client_without_a_valid_capability_is_refused() {
    let me = client();
    let key = me.public_key();
    assert_denied(31, &me, b"", "no capability");
    assert_denied(32, &me, b"garbage", "malformed capability");
    assert_denied(
        33,
        &me,
        &capability(key, FLEET, Operation::Exec, NOW - 120..NOW - 60),
        "expired",
    );
    assert_denied(
        34,
        &me,
        &capability(key, FLEET, Operation::Shell, NOW - 60..NOW + 60),
        "other operation",
    );
    assert_denied(
        35,
        &me,
        &capability(key, [0x99; 16], Operation::Exec, NOW - 60..NOW + 60),
        "other fleet",
    );
    // A capability stolen from another client: the thief proves its own key, which the capability does not name.
    let victim = identity(0xC9).public_key();
    assert_denied(
        36,
        &me,
        &capability(victim, FLEET, Operation::Exec, NOW - 60..NOW + 60),
        "stolen",
    );
    // Signed by some key other than the fleet's trust key (e.g. the client itself).
    let self_signed = Capability {
        client_key: key,
        fleet: FleetId::from_bytes(FLEET),
        machine: MachineId::from_bytes(MACHINE),
        channel: CHANNEL,
        operations: OperationSet::all(),
        not_before: Timestamp::from_unix_seconds(NOW - 60),
        not_after: Timestamp::from_unix_seconds(NOW + 60),
    }
    .sign(&me)
    .to_bytes();
    assert_denied(37, &me, &self_signed, "self-signed");
    // Issued for another machine, or another stream: a relay replaying a capability it saw.
    let elsewhere = |machine: [u8; 16], channel: [u8; 16]| {
        Capability {
            client_key: key,
            fleet: FleetId::from_bytes(FLEET),
            machine: MachineId::from_bytes(machine),
            channel,
            operations: OperationSet::all(),
            not_before: Timestamp::from_unix_seconds(NOW - 60),
            not_after: Timestamp::from_unix_seconds(NOW + 60),
        }
        .sign(&trust_key())
        .to_bytes()
    };
    assert_denied(38, &me, &elsewhere([0x4e; 16], CHANNEL), "another machine");
    assert_denied(39, &me, &elsewhere(MACHINE, [0x23; 16]), "another channel");
}
