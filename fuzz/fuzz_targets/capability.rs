//! Fuzzes signed capabilities as an agent receives them from a client: the decoder accepts only the one
//! canonical encoding, and verification grants exactly what the trust key signed, to whom, when and for what.
#![no_main]

use std::sync::LazyLock;

use cmdop_fleet::{
    Capability, CapabilityError, Expected, FleetId, MachineId, Operation, SignedCapability, Timestamp,
};
use cmdop_identity::{Identity, PublicKey, Purpose, Seed, Signature};
use libfuzzer_sys::fuzz_target;

/// The trust key of the golden capability in `cmdop-fleet`'s tests (seed `01` x 32).
static TRUST: LazyLock<Identity> =
    LazyLock::new(|| Identity::from_seed(&Seed::from_bytes([1; 32])));
/// A key that signed nothing.
static STRANGER: LazyLock<PublicKey> =
    LazyLock::new(|| Identity::from_seed(&Seed::from_bytes([9; 32])).public_key());

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    if selector & 1 == 0 {
        // What arrives in a client's Auth frame: decoded, and checked against the trust key as-is.
        if let Ok(signed) = SignedCapability::from_bytes(bytes) {
            assert_eq!(
                signed.to_bytes(),
                bytes,
                "a non-canonical signed capability was accepted"
            );
            check_verify(&signed, selector);
        }
    } else if let Ok(capability) = Capability::from_bytes(bytes) {
        // A capability the trust key really signed: everything after the signature check is reached.
        assert_eq!(
            capability.to_bytes(),
            bytes,
            "a non-canonical capability was accepted"
        );
        let signed = capability.sign(&TRUST);
        let back =
            SignedCapability::from_bytes(&signed.to_bytes()).expect("a signed capability decodes");
        assert_eq!(back, signed);
        check_verify(&back, selector);
    }
});

/// Verifies `signed` at the edges of its validity, for every operation, with the right and wrong client,
/// fleet, machine, channel and trust key; asserts that it passes exactly when everything matches.
fn check_verify(signed: &SignedCapability, selector: u8) {
    let capability = signed.unverified_capability().clone();
    let bytes = signed.to_bytes();
    let (body, signature) = bytes.split_at(bytes.len() - 64);
    let signature = Signature::from_bytes(signature.try_into().expect("64 signature bytes"));
    let genuine = TRUST
        .public_key()
        .verify(Purpose::Capability, body, &signature)
        .is_ok();
    let start = capability.not_before.as_unix_seconds();
    let end = capability.not_after.as_unix_seconds();
    let moments = [
        start.saturating_sub(1),
        start,
        end.saturating_sub(1),
        end,
        u64::from(selector) << 56,
    ];
    for operation in Operation::ALL {
        for now in moments {
            let now = Timestamp::from_unix_seconds(now);
            let right = Expected {
                client_key: capability.client_key,
                fleet: capability.fleet,
                machine: capability.machine,
                channel: capability.channel,
                operation,
                now,
            };
            let valid =
                genuine && capability.is_valid_at(now) && capability.operations.contains(operation);
            match signed.verify(&TRUST.public_key(), &right) {
                Ok(granted) => {
                    assert!(
                        valid,
                        "verify granted {operation} at {now:?} outside what was signed"
                    );
                    assert_eq!(granted, &capability);
                }
                Err(error) => {
                    assert!(!valid, "verify refused a genuine, current grant: {error}");
                    let _ = error.to_string();
                }
            }
            assert_eq!(
                signed.verify(&STRANGER, &right).err(),
                Some(CapabilityError::BadSignature),
            );
            if genuine {
                check_each_binding(signed, &capability, right);
            }
        }
    }
}

/// A genuine capability presented for another client, fleet, machine or channel is refused, naming which.
fn check_each_binding(signed: &SignedCapability, capability: &Capability, right: Expected) {
    let trust = TRUST.public_key();
    if capability.client_key != *STRANGER {
        let wrong = Expected {
            client_key: *STRANGER,
            ..right
        };
        assert_eq!(
            signed.verify(&trust, &wrong).err(),
            Some(CapabilityError::WrongClient)
        );
    }
    let wrong = Expected {
        fleet: FleetId::from_bytes(capability.fleet.to_bytes().map(|b| b ^ 0xff)),
        ..right
    };
    assert_eq!(
        signed.verify(&trust, &wrong).err(),
        Some(CapabilityError::WrongFleet)
    );
    let wrong = Expected {
        machine: MachineId::from_bytes(capability.machine.to_bytes().map(|b| b ^ 0xff)),
        ..right
    };
    assert_eq!(
        signed.verify(&trust, &wrong).err(),
        Some(CapabilityError::WrongMachine)
    );
    let wrong = Expected {
        channel: capability.channel.map(|b| b ^ 0xff),
        ..right
    };
    assert_eq!(
        signed.verify(&trust, &wrong).err(),
        Some(CapabilityError::WrongChannel)
    );
}
