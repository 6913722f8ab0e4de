//! Fuzzes `Session::open`, which decrypts and interprets every transport message after authentication
//! (docs/e2e-channel.md §5, §7-§10), on an agent session that accepted a real client.
//!
//! The input is a script of records `op ‖ len (u16 LE) ‖ bytes`. The target plays the client with its real
//! sending key: it seals a plaintext, or alters the sealed message (a flipped bit, a drop, a replay), or
//! hands the agent raw bytes. Checked: an altered, dropped, replayed or forged message is refused; a refusal
//! closes the session for good; data arrives exactly as sealed; a `Rekey` keeps both sides in step.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use cmdop_fuzz::{
    PRIVATE_EPHEMERALS, agent_awaiting_client, capability_bytes, client_auth_plaintext,
};
use cmdop_proto::e2e::noise::MAX_MESSAGE_LEN;
use cmdop_proto::e2e::{ChannelError, Frame, Incoming, Role, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    // Not the document's ephemerals: none of its messages is genuine here, so every forged one must fail.
    let (agent, mut client) = agent_awaiting_client(now, PRIVATE_EPHEMERALS);
    // The handshake is deterministic, so the client's signed Auth frame is the same on every run.
    static AUTH: OnceLock<Vec<u8>> = OnceLock::new();
    let auth = AUTH.get_or_init(|| {
        client_auth_plaintext(&client.handshake_hash, Role::Client, &capability_bytes())
    });
    let sealed = client.send.encrypt_with_ad(&[], auth).expect("sealing");
    let mut session = agent
        .read_client_auth(&sealed)
        .expect("the genuine client authenticates")
        .accept();

    let mut script = data;
    let mut last_sealed: Option<Vec<u8>> = None;
    let mut ended = false;
    while let [op, lo, hi, rest @ ..] = script {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
        let (bytes, tail) = rest.split_at(len);
        script = tail;
        let was_closed = session.is_closed();
        let plaintext = bytes
            .get(..bytes.len().min(MAX_MESSAGE_LEN - 16))
            .unwrap_or_default();
        let (message, intact) = match op % 5 {
            // Sealed as the client would, delivered intact.
            0 => (
                client
                    .send
                    .encrypt_with_ad(&[], plaintext)
                    .expect("sealing"),
                true,
            ),
            // Sealed, then one bit flipped.
            1 => {
                let mut message = client
                    .send
                    .encrypt_with_ad(&[], plaintext)
                    .expect("sealing");
                let at = usize::from(u16::from_le_bytes([*lo, *hi])) % (message.len() * 8);
                message[at / 8] ^= 1 << (at % 8);
                (message, false)
            }
            // Sealed and dropped: the next message is the one after it.
            2 => {
                let _dropped = client
                    .send
                    .encrypt_with_ad(&[], plaintext)
                    .expect("sealing");
                (
                    client
                        .send
                        .encrypt_with_ad(&[], plaintext)
                        .expect("sealing"),
                    false,
                )
            }
            // The last message again.
            3 => match &last_sealed {
                Some(message) => (message.clone(), false),
                None => continue,
            },
            // Raw bytes from a forger who has no key.
            _ => (bytes.to_vec(), false),
        };
        let result = session.open(&message);
        if was_closed {
            assert_eq!(
                result,
                Err(ChannelError::Closed),
                "a closed session opened a message"
            );
            continue;
        }
        if !intact {
            assert!(
                result.is_err(),
                "an altered, dropped, replayed or forged message was accepted"
            );
            assert!(
                session.is_closed(),
                "a refused message left the session open"
            );
            continue;
        }
        last_sealed = Some(message);
        let frame = decode_frame(plaintext);
        match (&frame, &result) {
            (Err(_), _) => assert!(
                result.is_err() && session.is_closed(),
                "an undecodable frame was accepted"
            ),
            (Ok(Frame::Data(sent)), Ok(Some(Incoming::Data(got)))) => {
                assert!(!ended, "data was accepted after the end frame");
                assert_eq!(sent, got, "data arrived altered");
            }
            (Ok(Frame::Rekey), Ok(None)) => client.send.rekey().expect("the client rekeys"),
            (Ok(Frame::End { status }), Ok(Some(Incoming::End { status: got }))) => {
                assert_eq!(status, got);
                ended = true;
            }
            (
                Ok(Frame::Close { reason, message }),
                Ok(Some(Incoming::Close {
                    reason: r,
                    message: m,
                })),
            ) => {
                assert_eq!((reason, message), (r, m));
                assert!(session.is_closed());
            }
            (Ok(_), Err(_)) => {
                assert!(session.is_closed(), "a refused frame left the session open")
            }
            (Ok(sent), Ok(got)) => panic!("{sent:?} was opened as {got:?}"),
        }
    }
    let _ = session.finish();
});
