//! The end-to-end channel between a client and an agent ("cmdop-e2e/1"), sans-IO: the relay only sees ciphertext.
//!
//! One channel runs inside each relay stream. It is `Noise_NN_25519_AESGCM_SHA256` ([`noise`]) whose prologue
//! binds the route ([`Prologue`]), followed by an Ed25519 signature over the handshake hash from each side
//! ([`Frame::Auth`]). The normative description, with golden bytes, is `docs/e2e-channel.md`.
//!
//! ```text
//!  client (initiator)                        relay                         agent (responder)
//!  ClientHandshake::start ── msg1: e ───────────────────────────────────▶ AgentHandshake::respond
//!  ClientHandshake::read_response ◀──────────────── msg2: e, ee ─┐
//!  ClientAwaitingAgent::read_agent_auth ◀─── T: Auth{Agent} ────┘ (same flight)
//!     └─ Session ── T: Auth{Client, capability} ‖ T: Data… ─────────────▶ AgentAwaitingClient::read_client_auth
//!                                                                            └─ PendingClient: the caller checks
//!                                                                               the capability, then accept() → Session
//! ```
//!
//! Nothing here reads a clock, touches a socket or draws randomness itself: callers pass `now`, an
//! [`Ephemeral`] made from their RNG, and move the bytes. Every outgoing message is already framed
//! (`u16 BE length ‖ Noise message`); incoming bytes go through a [`MessageDecoder`], and each complete
//! message it yields is handed to the state machine.
//!
//! The types enforce the order: only a [`Session`] can open data frames, and the agent gets its `Session`
//! only from [`PendingClient::accept`], after the client's signature verified and the caller authorized it.

mod channel;
mod codec;
mod frame;
pub mod noise;

pub use channel::{
    AgentAwaitingClient, AgentHandshake, ClientAwaitingAgent, ClientHandshake, DATA_HEADROOM,
    Incoming, Opened, PROLOGUE_LABEL, PROLOGUE_LEN, PROTOCOL_VERSION, PendingClient, Prologue,
    RekeyPolicy, Session, StreamKind,
};
pub use codec::{MessageDecoder, complete_message, encode_message};
pub use frame::{
    AuthFrame, CloseReason, Frame, MAX_CLOSE_MESSAGE_LEN, MAX_DATA_PER_FRAME, Role, decode_frame,
};
pub use noise::Ephemeral;

/// Everything that can go wrong on an end-to-end channel.
///
/// Decryption and authentication failures are deliberately generic and never echo the peer's bytes. Every
/// error returned by a state machine is terminal: the state refuses further use with [`ChannelError::Closed`].
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ChannelError {
    /// A length prefix of zero: Noise messages are never empty.
    #[error(
        "empty frame on the end-to-end stream: the peer or the relay is broken; close the stream"
    )]
    EmptyMessage,
    /// A message, or data to seal, larger than a Noise message may be.
    #[error(
        "message of {len} bytes exceeds the 65535-byte noise limit; split it into smaller frames"
    )]
    MessageTooLarge {
        /// The offending length.
        len: usize,
    },
    /// The stream ended in the middle of a length-delimited message.
    #[error("the end-to-end stream ended in the middle of a message: the connection was cut")]
    TruncatedMessage,
    /// The stream ended without the peer's authenticated end frame.
    #[error(
        "the end-to-end stream ended without the peer's end frame: the connection was cut, the result is incomplete"
    )]
    Truncated,
    /// The Noise handshake failed: wrong route (prologue), tampering, or a malformed handshake message.
    #[error(
        "end-to-end handshake failed: the stream reached a different machine or was tampered with; check the machine key and retry"
    )]
    HandshakeFailed,
    /// The peer sent a low-order X25519 ephemeral key, which would make the session key predictable.
    #[error("end-to-end handshake failed: the peer sent a weak key; the stream was tampered with")]
    LowOrderKey,
    /// A transport message failed authentication: it was altered, dropped, duplicated, reordered or spliced.
    #[error("end-to-end decryption failed: the stream was altered in transit; it has been closed")]
    Decrypt,
    /// A decrypted frame did not decode (bad encoding or trailing bytes).
    #[error(
        "malformed end-to-end frame: the peer speaks a different protocol version; close the stream"
    )]
    Malformed,
    /// A frame arrived that the protocol does not allow at this point.
    #[error("unexpected end-to-end frame: expected {expected}; the peer broke the protocol")]
    UnexpectedFrame {
        /// What the state machine was waiting for.
        expected: &'static str,
    },
    /// The agent's authentication frame was for another key or its signature did not verify.
    #[error(
        "the machine failed to prove its identity: it is not the pinned machine or the relay interfered; do not trust this route"
    )]
    AgentAuthentication,
    /// The client's authentication frame did not verify.
    #[error("the client failed to prove its identity; refusing the stream")]
    ClientAuthentication,
    /// The agent was given a prologue naming a key other than its own identity.
    #[error("the prologue names a different agent key than this agent's identity; fix the caller")]
    WrongIdentity,
    /// The nonce counter reached the value Noise reserves; the stream must be replaced by a new one.
    #[error("end-to-end nonce space exhausted; open a new stream")]
    NonceExhausted,
    /// Use after a failure, after a close, or sending after this side's end frame.
    #[error("the end-to-end channel is closed; open a new stream")]
    Closed,
}
