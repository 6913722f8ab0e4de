//! Operation messages: what a client and an agent say to each other *inside* the end-to-end channel.
//!
//! The relay never sees these; they travel as the channel's application data, framed exactly like the relay
//! wire protocol (`u32` big-endian length, postcard body, [`MAX_FRAME_SIZE`](crate::wire::MAX_FRAME_SIZE)),
//! so one decoder serves both. Variants are only ever appended. Specified in `docs/protocol.md`
//! ("Operations") and pinned by the golden tests below.
//!
//! ```text
//!  client                                   agent
//!  ClientOp::Exec{argv, timeout, stdin} ──▶ spawns the command
//!  ClientOp::Stdin / StdinEof / Signal  ──▶
//!                                       ◀── AgentOp::Stdout / Stderr (live, in order per stream)
//!                                       ◀── AgentOp::Exited(status), then the channel's End frame
//! ```

use serde::{Deserialize, Serialize};

pub mod copy;
pub mod forward;
pub mod shell;

/// The largest chunk of stdin, stdout or stderr carried in one message; leaves room under the frame limit.
///
/// Byte payloads use serde's byte-string form (`serde_bytes`): postcard encodes it exactly like a sequence of
/// `u8` (varint length, raw bytes), so the wire is unchanged, but it is one copy instead of a per-byte loop.
pub const MAX_CHUNK: usize = 32 * 1024;

/// A request to run one command, the first message on an exec stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments, as given after `--`.
    pub argv: Vec<String>,
    /// Kill the remote process group after this many milliseconds; `None` for no limit.
    pub timeout_ms: Option<u64>,
    /// Whether the client forwards stdin; when `false` the command's stdin is closed at once.
    pub stdin: bool,
}

/// Client to agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientOp {
    /// Run a command (first message only).
    Exec(ExecRequest),
    /// Bytes for the command's stdin (at most [`MAX_CHUNK`]).
    Stdin(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The client's stdin ended.
    StdinEof,
    /// Deliver this signal number to the command's process group (e.g. 2 for SIGINT on Ctrl-C).
    Signal(i32),
}

/// How a remote command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// This signal ended it.
    Signal(i32),
    /// The timeout expired and its process group was killed.
    TimedOut,
}

impl ExitStatus {
    /// The exit code a shell would show: the code, 128+N for a signal, 124 for a timeout (as `timeout(1)`).
    pub fn shell_code(self) -> i32 {
        match self {
            Self::Code(code) => code,
            Self::Signal(signal) => 128_i32.saturating_add(signal),
            Self::TimedOut => 124,
        }
    }
}

/// Agent to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentOp {
    /// A chunk of the command's stdout (at most [`MAX_CHUNK`]).
    Stdout(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A chunk of the command's stderr (at most [`MAX_CHUNK`]).
    Stderr(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The command ended; nothing but the channel's end frame follows.
    Exited(ExitStatus),
    /// The command could not be run (e.g. no such program); nothing but the end frame follows.
    Failed {
        /// What went wrong, for the person at the client.
        message: String,
    },
}

/// What every operation module's property tests do with frames.
#[cfg(test)]
pub(crate) mod testing {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::wire::{FrameDecoder, encode};

    /// The frames of `ops`, back to back.
    pub(crate) fn encode_all<M: Serialize>(ops: &[M]) -> Vec<u8> {
        ops.iter()
            .flat_map(|op| encode(op).expect("an operation that fits a frame"))
            .collect()
    }

    /// Every message the frame decoder yields from `bytes`; panics on a decoding error.
    pub(crate) fn decode_all<M: Serialize + DeserializeOwned>(bytes: &[u8]) -> Vec<M> {
        let mut decoder = FrameDecoder::new();
        let mut input = bytes;
        let mut decoded = Vec::new();
        while let Some(op) = decoder.decode::<M>(&mut input).expect("well-formed frames") {
            decoded.push(op);
        }
        decoded
    }

    /// Feeds arbitrary bytes to the frame decoder as `M` until it stops; the point is that it never panics.
    pub(crate) fn decode_garbage<M: Serialize + DeserializeOwned>(bytes: &[u8]) {
        let mut decoder = FrameDecoder::new();
        let mut input = bytes;
        while let Ok(Some(_)) = decoder.decode::<M>(&mut input) {}
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::testing;
    use super::*;
    use crate::wire::encode;

    fn hex(bytes: &[u8]) -> String {
        hex::encode(bytes)
    }

    #[test]
    fn golden_bytes() {
        let exec = ClientOp::Exec(ExecRequest {
            argv: vec!["uname".into(), "-a".into()],
            timeout_ms: Some(30_000),
            stdin: false,
        });
        assert_eq!(
            hex(&encode(&exec).unwrap()),
            "00000010000205756e616d65022d6101b0ea0100"
        );
        assert_eq!(
            hex(&encode(&ClientOp::Stdin(b"hi\n".to_vec())).unwrap()),
            "00000005010368690a"
        );
        assert_eq!(hex(&encode(&ClientOp::StdinEof).unwrap()), "0000000102");
        assert_eq!(hex(&encode(&ClientOp::Signal(2)).unwrap()), "000000020304");
        assert_eq!(
            hex(&encode(&AgentOp::Stdout(b"ok".to_vec())).unwrap()),
            "0000000400026f6b"
        );
        assert_eq!(
            hex(&encode(&AgentOp::Stderr(vec![])).unwrap()),
            "000000020100"
        );
        assert_eq!(
            hex(&encode(&AgentOp::Exited(ExitStatus::Code(3))).unwrap()),
            "00000003020006"
        );
        assert_eq!(
            hex(&encode(&AgentOp::Exited(ExitStatus::Signal(9))).unwrap()),
            "00000003020112"
        );
        assert_eq!(
            hex(&encode(&AgentOp::Exited(ExitStatus::TimedOut)).unwrap()),
            "000000020202"
        );
        assert_eq!(
            hex(&encode(&AgentOp::Failed {
                message: "no".into()
            })
            .unwrap()),
            "0000000403026e6f"
        );
    }

    #[test]
    fn shell_codes() {
        assert_eq!(ExitStatus::Code(0).shell_code(), 0);
        assert_eq!(ExitStatus::Signal(2).shell_code(), 130);
        assert_eq!(ExitStatus::TimedOut.shell_code(), 124);
    }

    #[test]
    fn a_full_chunk_fits_in_one_frame() {
        let op = AgentOp::Stdout(vec![0xff; MAX_CHUNK]);
        assert!(encode(&op).is_ok());
    }

    fn client_op() -> impl Strategy<Value = ClientOp> {
        prop_oneof![
            (
                prop::collection::vec(".{0,20}", 0..5),
                any::<Option<u64>>(),
                any::<bool>()
            )
                .prop_map(|(argv, timeout_ms, stdin)| ClientOp::Exec(ExecRequest {
                    argv,
                    timeout_ms,
                    stdin
                })),
            prop::collection::vec(any::<u8>(), 0..100).prop_map(ClientOp::Stdin),
            Just(ClientOp::StdinEof),
            any::<i32>().prop_map(ClientOp::Signal),
        ]
    }

    proptest! {
        #[test]
        fn client_ops_round_trip_through_the_frame_decoder(ops in prop::collection::vec(client_op(), 1..8)) {
            prop_assert_eq!(testing::decode_all::<ClientOp>(&testing::encode_all(&ops)), ops);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            testing::decode_garbage::<AgentOp>(&bytes);
        }
    }
}
