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

/// A [`Frame`] whose data borrows the plaintext instead of copying it: the same encoding (the variants are
/// in the same order with the same field types), so one decoder serves both.
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub(crate) enum FrameRef<'a> {
    /// See [`Frame::Auth`].
    Auth(Box<AuthFrame>),
    /// See [`Frame::Data`]; the bytes are a slice of the plaintext.
    Data(#[serde(borrow)] &'a [u8]),
    /// See [`Frame::Rekey`].
    Rekey,
    /// See [`Frame::End`].
    End {
        /// See [`Frame::End`].
        status: u8,
    },
    /// See [`Frame::Close`].
    Close {
        /// See [`Frame::Close`].
        reason: CloseReason,
        /// See [`Frame::Close`].
        message: String,
    },
}

impl FrameRef<'_> {
    fn into_owned(self) -> Frame {
        match self {
            Self::Auth(auth) => Frame::Auth(auth),
            Self::Data(bytes) => Frame::Data(bytes.to_vec()),
            Self::Rekey => Frame::Rekey,
            Self::End { status } => Frame::End { status },
            Self::Close { reason, message } => Frame::Close { reason, message },
        }
    }
}

/// Decodes one frame's plaintext without copying its data, refusing trailing bytes and over-long close
/// messages: the one decoder behind [`decode_frame`] and the in-place receive path.
pub(crate) fn decode_frame_ref(plaintext: &[u8]) -> Result<FrameRef<'_>, ChannelError> {
    let (frame, rest) = postcard::take_from_bytes::<FrameRef<'_>>(plaintext)
        .map_err(|_| ChannelError::Malformed)?;
    if !rest.is_empty() {
        return Err(ChannelError::Malformed);
    }
    if let FrameRef::Close { message, .. } = &frame
        && message.len() > MAX_CLOSE_MESSAGE_LEN
    {
        return Err(ChannelError::Malformed);
    }
    Ok(frame)
}

/// Decodes one frame's plaintext, refusing trailing bytes and over-long close messages.
///
/// Total over arbitrary input (never panics, allocates at most the input length): suitable as a fuzz target.
pub fn decode_frame(plaintext: &[u8]) -> Result<Frame, ChannelError> {
    decode_frame_ref(plaintext).map(FrameRef::into_owned)
}

/// The plaintext header of a `Data` frame carrying `len` bytes: the variant index, then `len` as a postcard
/// varint (little-endian groups of seven bits). Returns the header and its length (2 to 4 bytes).
pub(crate) fn data_header(len: usize) -> ([u8; DATA_HEADER_MAX], usize) {
    let mut header = [0u8; DATA_HEADER_MAX];
    header[0] = DATA_VARIANT;
    let mut at = 1;
    let mut rest = len;
    loop {
        let byte = (rest & 0x7f) as u8;
        rest >>= 7;
        if rest == 0 {
            header[at] = byte;
            return (header, at + 1);
        }
        header[at] = byte | 0x80;
        at += 1;
    }
}

/// `Frame::Data`'s variant index on the wire.
const DATA_VARIANT: u8 = 1;

/// The longest `Data` header: the variant byte and a three-byte varint (enough for any length up to
/// 2^21 - 1, far above [`MAX_DATA_PER_FRAME`]).
pub(crate) const DATA_HEADER_MAX: usize = 1 + 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_header_is_postcards() {
        for len in [0, 1, 127, 128, 16_383, 16_384, MAX_DATA_PER_FRAME] {
            let encoded = Frame::Data(vec![7u8; len]).encode().unwrap();
            let (header, header_len) = data_header(len);
            assert_eq!(&encoded[..header_len], &header[..header_len], "{len}");
            assert_eq!(encoded.len(), header_len + len, "{len}");
        }
    }

    #[test]
    fn the_borrowing_decoder_sees_the_same_frames() {
        let frames = [
            Frame::Data(b"hi".to_vec()),
            Frame::Data(Vec::new()),
            Frame::Rekey,
            Frame::End { status: 7 },
            Frame::Close {
                reason: CloseReason::Internal,
                message: "x".into(),
            },
        ];
        for frame in frames {
            let bytes = frame.encode().unwrap();
            assert_eq!(decode_frame_ref(&bytes).unwrap().into_owned(), frame);
        }
        let data = Frame::Data(b"abc".to_vec()).encode().unwrap();
        assert_eq!(decode_frame_ref(&data), Ok(FrameRef::Data(b"abc")));
    }

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
