//! A framed QUIC stream: one bidirectional stream carrying length-prefixed wire messages. The control stream
//! of every connection, and the header of every routed stream, on both the peers' and the relay's side.

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use cmdop_proto::wire::{self, FrameDecoder, WireError};

/// Bytes taken from QUIC per read; also the most the stream holds beyond the current frame.
const READ_CHUNK: usize = 4096;

/// Why the control stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The bytes received are not valid frames.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// QUIC failed or the peer reset the stream.
    #[error("connection lost: {0}")]
    Read(#[from] quinn::ReadError),
    /// QUIC failed while sending.
    #[error("connection lost: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
}

/// A framed control stream.
#[derive(Debug)]
pub struct ControlStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    /// The chunk quinn handed over, not yet all decoded. quinn's own bytes rather than a copy, so a waiting
    /// stream holds no read buffer: thousands of idle agents' control streams cost nothing here between
    /// messages (a chunk is dropped as soon as it is consumed).
    pending: Bytes,
    pos: usize,
}

impl ControlStream {
    /// Frames messages over the two halves of one bidirectional stream.
    pub fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        Self {
            send,
            recv,
            decoder: FrameDecoder::new(),
            pending: Bytes::new(),
            pos: 0,
        }
    }

    /// Sends one message.
    pub async fn send<M: Serialize>(&mut self, message: &M) -> Result<(), StreamError> {
        let frame = wire::encode(message)?;
        self.send.write_all(&frame).await?;
        Ok(())
    }

    /// Receives one message; `Ok(None)` when the peer finished the stream cleanly.
    ///
    /// Cancel-safe: the only await is quinn's `read_chunk`, which loses nothing when dropped, and the buffered
    /// state changes only after it completed. Drivers race this against timers and other inputs in `select!`,
    /// and a dropped call must not leave bytes it already decoded to be decoded again.
    pub async fn recv<M: Serialize + DeserializeOwned>(
        &mut self,
    ) -> Result<Option<M>, StreamError> {
        loop {
            if let Some(rest) = self.pending.get(self.pos..) {
                let mut input = rest;
                let decoded = self.decoder.decode(&mut input)?;
                self.pos = self.pending.len() - input.len();
                if self.pos == self.pending.len() {
                    // All consumed: let go of quinn's buffer now rather than at the next read.
                    self.pending = Bytes::new();
                    self.pos = 0;
                }
                if decoded.is_some() {
                    return Ok(decoded);
                }
            }
            // Everything pending went into the decoder; take the next chunk.
            match self.recv.read_chunk(READ_CHUNK, true).await? {
                Some(chunk) => {
                    self.pending = chunk.bytes;
                    self.pos = 0;
                }
                None => {
                    self.pending = Bytes::new();
                    self.pos = 0;
                    return if self.decoder.is_mid_frame() {
                        Err(StreamError::Truncated)
                    } else {
                        Ok(None)
                    };
                }
            }
        }
    }

    /// Gives back the raw streams and any bytes read past the last message, for a stream that switches from
    /// framed messages to opaque bytes (a routed stream after its header).
    pub fn into_parts(self) -> (quinn::SendStream, quinn::RecvStream, Vec<u8>) {
        let leftover = self
            .pending
            .get(self.pos..)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();

        (self.send, self.recv, leftover)
    }

    /// Finishes the sending side and waits (bounded) until the peer has received everything, so a final
    /// error message is not lost when the connection is closed right after.
    pub async fn finish_and_flush(&mut self, wait: std::time::Duration) {
        if self.send.finish().is_ok() {
            let _ = tokio::time::timeout(wait, self.send.stopped()).await;
        }
    }
}
