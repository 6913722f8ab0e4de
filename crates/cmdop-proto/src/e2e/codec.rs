//! Framing of Noise messages inside a relay stream: `u16 big-endian length ‖ message`, lengths 1..=65535.
//!
//! The decoder is incremental (it takes whatever chunks come off the stream) and bounded: it never buffers
//! more than one message and allocates at most the length the prefix states.

use super::ChannelError;
use super::noise::MAX_MESSAGE_LEN;

/// Appends `message` to `out` with its length prefix.
pub fn encode_message(message: &[u8], out: &mut Vec<u8>) -> Result<(), ChannelError> {
    let len = u16::try_from(message.len())
        .map_err(|_| ChannelError::MessageTooLarge { len: message.len() })?;
    if len == 0 {
        return Err(ChannelError::EmptyMessage);
    }
    out.reserve(2 + message.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Ok(())
}

/// Whether `buffer` starts with a whole framed message: `Ok(Some(len))` means `buffer[2..2 + len]` is one
/// Noise message, `Ok(None)` that more bytes are needed. A zero length is an error. For receivers that keep
/// the stream in one buffer and open each message where it lies; [`MessageDecoder`] is the copying variant.
pub fn complete_message(buffer: &[u8]) -> Result<Option<usize>, ChannelError> {
    let Some(prefix) = buffer.get(..2) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
    if len == 0 {
        return Err(ChannelError::EmptyMessage);
    }
    Ok((buffer.len() >= 2 + len).then_some(len))
}

/// Splits a byte stream into Noise messages.
///
/// ```text
/// let mut chunk: &[u8] = &bytes_from_stream;
/// while let Some(message) = decoder.feed(&mut chunk)? { handle(message) }
/// // chunk is now empty; read more from the stream
/// ```
#[derive(Debug, Default)]
pub struct MessageDecoder {
    header: [u8; 2],
    header_len: usize,
    body: Vec<u8>,
    expected: usize,
    failed: bool,
}

impl MessageDecoder {
    /// A decoder at a message boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes bytes from the front of `input` up to the end of the next complete message and returns it.
    ///
    /// Returns `Ok(None)` once `input` is exhausted without completing a message (the partial message is
    /// kept). A zero length is an error, after which the decoder refuses further input.
    pub fn feed(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, ChannelError> {
        if self.failed {
            return Err(ChannelError::Closed);
        }
        while self.header_len < 2 {
            let Some((&byte, rest)) = input.split_first() else {
                return Ok(None);
            };
            *input = rest;
            if let Some(slot) = self.header.get_mut(self.header_len) {
                *slot = byte;
            }
            self.header_len += 1;
            if self.header_len == 2 {
                self.expected = usize::from(u16::from_be_bytes(self.header));
                if self.expected == 0 {
                    self.failed = true;
                    return Err(ChannelError::EmptyMessage);
                }
                debug_assert!(self.expected <= MAX_MESSAGE_LEN);
                self.body = Vec::with_capacity(self.expected);
            }
        }
        let wanted = self.expected - self.body.len();
        let take = wanted.min(input.len());
        let (now, rest) = input.split_at(take);
        self.body.extend_from_slice(now);
        *input = rest;
        if self.body.len() < self.expected {
            return Ok(None);
        }
        self.header_len = 0;
        self.expected = 0;
        Ok(Some(std::mem::take(&mut self.body)))
    }

    /// Whether the decoder is between messages (no partial message buffered).
    pub fn is_at_boundary(&self) -> bool {
        self.header_len == 0
    }

    /// Call when the stream ends: an error if it ended in the middle of a message.
    pub fn finish(&self) -> Result<(), ChannelError> {
        if self.is_at_boundary() {
            Ok(())
        } else {
            Err(ChannelError::TruncatedMessage)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(
        decoder: &mut MessageDecoder,
        mut input: &[u8],
    ) -> Result<Vec<Vec<u8>>, ChannelError> {
        let mut messages = Vec::new();
        while let Some(message) = decoder.feed(&mut input)? {
            messages.push(message);
        }
        assert!(input.is_empty());
        Ok(messages)
    }

    #[test]
    fn byte_by_byte_equals_all_at_once() {
        let mut wire = Vec::new();
        encode_message(b"hello", &mut wire).unwrap();
        encode_message(&[7u8; 300], &mut wire).unwrap();
        let mut whole = MessageDecoder::new();
        let expected = decode_all(&mut whole, &wire).unwrap();
        assert_eq!(expected, vec![b"hello".to_vec(), vec![7u8; 300]]);

        let mut split = MessageDecoder::new();
        let mut got = Vec::new();
        for byte in &wire {
            got.extend(decode_all(&mut split, std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(got, expected);
        assert!(split.finish().is_ok());
    }

    #[test]
    fn zero_length_is_rejected_and_the_decoder_stays_failed() {
        let mut decoder = MessageDecoder::new();
        assert_eq!(
            decode_all(&mut decoder, &[0, 0, 1]),
            Err(ChannelError::EmptyMessage)
        );
        assert_eq!(
            decode_all(&mut decoder, &[0, 1, 1]),
            Err(ChannelError::Closed)
        );
        assert_eq!(
            encode_message(b"", &mut Vec::new()),
            Err(ChannelError::EmptyMessage)
        );
    }

    #[test]
    fn oversize_cannot_be_encoded_and_max_size_round_trips() {
        assert!(matches!(
            encode_message(&vec![0u8; 65_536], &mut Vec::new()),
            Err(ChannelError::MessageTooLarge { len: 65_536 })
        ));
        let mut wire = Vec::new();
        encode_message(&vec![1u8; 65_535], &mut wire).unwrap();
        assert_eq!(&wire[..2], &[0xff, 0xff]);
        assert_eq!(
            decode_all(&mut MessageDecoder::new(), &wire).unwrap(),
            vec![vec![1u8; 65_535]]
        );
    }

    #[test]
    fn a_cut_inside_a_message_is_reported() {
        let mut decoder = MessageDecoder::new();
        assert!(decode_all(&mut decoder, &[0, 5, 1, 2]).unwrap().is_empty());
        assert_eq!(decoder.finish(), Err(ChannelError::TruncatedMessage));
        let mut header_only = MessageDecoder::new();
        assert!(decode_all(&mut header_only, &[0]).unwrap().is_empty());
        assert_eq!(header_only.finish(), Err(ChannelError::TruncatedMessage));
    }

    #[test]
    fn complete_messages_are_found_where_they_lie() {
        let mut wire = Vec::new();
        encode_message(b"hello", &mut wire).unwrap();
        assert_eq!(complete_message(&wire), Ok(Some(5)));
        assert_eq!(complete_message(&wire[..6]), Ok(None));
        assert_eq!(complete_message(&wire[..1]), Ok(None));
        assert_eq!(complete_message(&[]), Ok(None));
        assert_eq!(
            complete_message(&[0, 0, 1]),
            Err(ChannelError::EmptyMessage)
        );
    }

    #[test]
    fn allocation_never_exceeds_the_stated_length() {
        let mut decoder = MessageDecoder::new();
        let mut input: &[u8] = &[0, 3, 1];
        assert_eq!(decoder.feed(&mut input).unwrap(), None);
        assert!(decoder.body.capacity() >= 3 && decoder.body.capacity() < 64);
    }
}
