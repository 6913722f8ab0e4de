//! Length-prefixed framing: `u32` big-endian body length, then a postcard body.
//!
//! The decoder is incremental and sans-IO: it is fed byte chunks as they arrive and never buffers more than
//! one frame ([`MAX_FRAME_SIZE`] plus the prefix), whatever the peer sends.

use serde::{Serialize, de::DeserializeOwned};

use super::WireError;

/// The largest frame body accepted or produced, in bytes. Checked before any body byte is buffered.
pub const MAX_FRAME_SIZE: usize = 64 * 1024;

/// Size of the length prefix in front of every frame body.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Encodes `message` as one frame: the 4-byte big-endian body length followed by the postcard body.
pub fn encode<M: Serialize>(message: &M) -> Result<Vec<u8>, WireError> {
    let body_len =
        postcard::experimental::serialized_size(message).map_err(|_| WireError::Encode)?;
    if body_len > MAX_FRAME_SIZE {
        return Err(WireError::FrameTooLarge { len: body_len });
    }
    let mut frame = Vec::with_capacity(LENGTH_PREFIX_LEN + body_len);
    let prefix = u32::try_from(body_len).map_err(|_| WireError::FrameTooLarge { len: body_len })?;
    frame.extend_from_slice(&prefix.to_be_bytes());
    let frame = postcard::to_extend(message, frame).map_err(|_| WireError::Encode)?;
    Ok(frame)
}

/// Appends `message` to `out` as one frame, exactly as [`encode`] would produce it: for callers that build a
/// frame in a buffer with room in front (the end-to-end channel seals it where it lies).
pub fn encode_into<M: Serialize>(message: &M, out: &mut Vec<u8>) -> Result<(), WireError> {
    let body_len =
        postcard::experimental::serialized_size(message).map_err(|_| WireError::Encode)?;
    if body_len > MAX_FRAME_SIZE {
        return Err(WireError::FrameTooLarge { len: body_len });
    }
    let prefix = u32::try_from(body_len).map_err(|_| WireError::FrameTooLarge { len: body_len })?;
    out.reserve(LENGTH_PREFIX_LEN + body_len);
    out.extend_from_slice(&prefix.to_be_bytes());
    let start = out.len();
    match postcard::to_extend(message, std::mem::take(out)) {
        Ok(extended) => {
            *out = extended;
            Ok(())
        }
        Err(_) => {
            // postcard hands the buffer back only on success; what was appended so far is lost with it.
            out.truncate(start);
            Err(WireError::Encode)
        }
    }
}

/// The exact number of bytes [`encode`] produces for `message`, prefix included.
pub fn encoded_len<M: Serialize>(message: &M) -> Result<usize, WireError> {
    let body_len =
        postcard::experimental::serialized_size(message).map_err(|_| WireError::Encode)?;
    Ok(LENGTH_PREFIX_LEN + body_len)
}

/// Decodes one complete frame body; bytes left over after the message are an error, not ignored, and so is an
/// encoding longer than the canonical one.
///
/// postcard accepts overlong varints (`83 00` for 3), so one message could have many wire forms. The only
/// non-canonical postcard encodings are longer than the canonical one, so comparing the body's length with
/// the message's encoded size (computed without encoding) is enough to refuse them, at no copy.
pub fn decode_body<M: Serialize + DeserializeOwned>(body: &[u8]) -> Result<M, WireError> {
    let (message, rest) = postcard::take_from_bytes::<M>(body).map_err(|_| WireError::Malformed)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes { len: rest.len() });
    }
    let canonical =
        postcard::experimental::serialized_size(&message).map_err(|_| WireError::Malformed)?;
    if canonical != body.len() {
        return Err(WireError::NonCanonical);
    }
    Ok(message)
}

/// Incremental frame decoder.
///
/// Feed it with [`FrameDecoder::decode`] as bytes arrive; it consumes only the bytes of the current frame, so
/// pipelined frames stay in the caller's buffer and memory stays bounded by one frame.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    prefix: [u8; LENGTH_PREFIX_LEN],
    prefix_filled: usize,
    body: Vec<u8>,
    body_len: Option<usize>,
}

impl FrameDecoder {
    /// A decoder waiting for the first byte of a frame.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes bytes from the front of `input` until one message is complete.
    ///
    /// Returns `Ok(None)` when `input` ran out first (feed more later), `Ok(Some(message))` when a frame completed
    /// (unconsumed bytes stay in `input`). An error means the stream is unusable: the caller must close it.
    pub fn decode<M: Serialize + DeserializeOwned>(
        &mut self,
        input: &mut &[u8],
    ) -> Result<Option<M>, WireError> {
        if self.body_len.is_none() && self.prefix_filled == 0 {
            // A whole frame at the front of the input decodes where it lies, without a copy.
            if let Some(prefix) = input.get(..LENGTH_PREFIX_LEN) {
                let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
                if (1..=MAX_FRAME_SIZE).contains(&len)
                    && let Some(body) = input.get(LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + len)
                {
                    let message = decode_body(body)?;
                    *input = input.get(LENGTH_PREFIX_LEN + len..).unwrap_or_default();
                    return Ok(Some(message));
                }
            }
        }
        if self.body_len.is_none() {
            let want = LENGTH_PREFIX_LEN - self.prefix_filled;
            let take = want.min(input.len());
            let (head, tail) = input.split_at(take);
            self.prefix[self.prefix_filled..self.prefix_filled + take].copy_from_slice(head);
            self.prefix_filled += take;
            *input = tail;
            if self.prefix_filled < LENGTH_PREFIX_LEN {
                return Ok(None);
            }
            let len = u32::from_be_bytes(self.prefix) as usize;
            // The size check happens here, before a single body byte is buffered.
            if len > MAX_FRAME_SIZE {
                return Err(WireError::FrameTooLarge { len });
            }
            if len == 0 {
                return Err(WireError::Malformed);
            }
            self.body_len = Some(len);
            self.body = Vec::with_capacity(len.min(4096));
        }
        let Some(len) = self.body_len else {
            return Ok(None);
        };
        let take = (len - self.body.len()).min(input.len());
        let (head, tail) = input.split_at(take);
        self.body.extend_from_slice(head);
        *input = tail;
        if self.body.len() < len {
            return Ok(None);
        }
        let body = std::mem::take(&mut self.body);
        self.body_len = None;
        self.prefix_filled = 0;
        decode_body(&body).map(Some)
    }

    /// Whether the decoder holds part of a frame (a stream ending now would be truncated).
    pub fn is_mid_frame(&self) -> bool {
        self.prefix_filled > 0
    }
}
