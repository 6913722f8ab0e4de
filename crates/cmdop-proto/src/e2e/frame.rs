//! The plaintext of every transport message: one postcard-encoded [`Frame`], nothing recursive, no trailing bytes.
//!
//! Variants are only ever appended (postcard encodes the variant index), so existing encodings never change;
//! golden bytes for each variant are in `docs/e2e-channel.md` and pinned by `tests/e2e_golden.rs`.

use cmdop_identity::{PublicKey, Signature};
use serde::{Deserialize, Serialize};

use super::ChannelError;
use super::noise::{MAX_MESSAGE_LEN, TAG_LEN};

/// Most data bytes one [`Frame::Data`] carries: a Noise message minus the tag, the variant byte and a
/// three-byte length varint.
pub const MAX_DATA_PER_FRAME: usize = MAX_MESSAGE_LEN - TAG_LEN - 1 - 3;

/// Longest message a [`Frame::Close`] may carry, in bytes; longer text is cut (at a character boundary) when
/// sending and refused when receiving.
pub const MAX_CLOSE_MESSAGE_LEN: usize = 1024;

/// One transport frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Proof of identity: the first frame in each direction, never sent again.
    Auth(Box<AuthFrame>),
    /// Application bytes (at most [`MAX_DATA_PER_FRAME`]).
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The sender switched its sending key with Noise `Rekey()` right after this frame.
    Rekey,
    /// The sender finished sending, cleanly; `status` is the application's (0 = success). A stream whose
    /// peer stops without this frame is truncated.
    End {
        /// Application-defined status; 0 means success.
        status: u8,
    },
    /// The sender aborts the stream, for both directions.
    Close {
        /// Why.
        reason: CloseReason,
        /// Human-readable detail from the authenticated peer, at most [`MAX_CLOSE_MESSAGE_LEN`] bytes.
        message: String,
    },
}

/// Which side of the channel signed an [`AuthFrame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The agent (Noise responder).
    Agent,
    /// The client (Noise initiator).
    Client,
}

/// The identity proof: a signature over the handshake hash by the sender's Ed25519 identity.
///
/// Agent: `sign(E2eAgentAuth, h ‖ agent_pk)`. Client: `sign(E2eClientAuth, h ‖ client_pk ‖ SHA-256(capability))`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthFrame {
    /// Who signed.
    pub role: Role,
    /// The signer's identity key.
    pub public_key: PublicKey,
    /// Opaque signed capability bytes (client only; empty for the agent). The agent's caller interprets them.
    #[serde(with = "serde_bytes")]
    pub capability: Vec<u8>,
    /// The signature.
    pub signature: Signature,
}

/// Why a stream was closed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    /// The agent refused the client (no valid capability for this operation).
    Denied,
    /// The peer is shutting down.
    Shutdown,
    /// The peer saw a protocol violation.
    Protocol,
    /// The peer failed internally.
    Internal,
}

impl Frame {
    /// The postcard encoding, appended to `out`.
    pub(crate) fn encode_into(&self, out: Vec<u8>) -> Result<Vec<u8>, ChannelError> {
        postcard::to_extend(self, out).map_err(|_| ChannelError::Malformed)
    }

    /// The postcard encoding.
    pub fn encode(&self) -> Result<Vec<u8>, ChannelError> {
        self.encode_into(Vec::new())
    }
}

/// Decodes one frame's plaintext, refusing trailing bytes and over-long close messages.
///
/// Total over arbitrary input (never panics, allocates at most the input length): suitable as a fuzz target.
pub fn decode_frame(plaintext: &[u8]) -> Result<Frame, ChannelError> {
    let (frame, rest) =
        postcard::take_from_bytes::<Frame>(plaintext).map_err(|_| ChannelError::Malformed)?;
    if !rest.is_empty() {
        return Err(ChannelError::Malformed);
    }
    if let Frame::Close { message, .. } = &frame
        && message.len() > MAX_CLOSE_MESSAGE_LEN
    {
        return Err(ChannelError::Malformed);
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = Frame::Rekey.encode().unwrap();
        assert_eq!(decode_frame(&bytes), Ok(Frame::Rekey));
        bytes.push(0);
        assert_eq!(decode_frame(&bytes), Err(ChannelError::Malformed));
    }

    #[test]
    fn largest_data_frame_fits_one_noise_message() {
        let bytes = Frame::Data(vec![0u8; MAX_DATA_PER_FRAME]).encode().unwrap();
        assert_eq!(bytes.len() + TAG_LEN, MAX_MESSAGE_LEN);
    }

    #[test]
    fn unknown_variant_and_huge_lengths_are_refused() {
        assert_eq!(decode_frame(&[9]), Err(ChannelError::Malformed));
        assert_eq!(
            decode_frame(&[1, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            Err(ChannelError::Malformed)
        );
        assert_eq!(decode_frame(&[]), Err(ChannelError::Malformed));
    }

    #[test]
    fn over_long_close_message_is_refused() {
        let frame = Frame::Close {
            reason: CloseReason::Denied,
            message: "x".repeat(MAX_CLOSE_MESSAGE_LEN + 1),
        };
        assert_eq!(
            decode_frame(&frame.encode().unwrap()),
            Err(ChannelError::Malformed)
        );
    }
}
