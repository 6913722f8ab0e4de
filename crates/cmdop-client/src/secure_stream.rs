//! The end-to-end channel ([`cmdop_proto::e2e`]) running over one QUIC bidirectional stream, carrying operation
//! messages ([`cmdop_proto::ops`]): the IO shell around the sans-IO state machines.
//!
//! After the handshake the channel splits into a [`SecureSender`] and a [`SecureReceiver`] that share the
//! session's cipher states behind a mutex held only for the synchronous seal/open, never across an await, so
//! one task can stream stdin while another reads output.

use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmdop_identity::{Identity, PublicKey};
use quinn::{RecvStream, SendStream};
use rand_core::OsRng;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::connection::{IncomingStream, RawStream, RoutedStream};
use cmdop_proto::e2e::noise::TAG_LEN;
use cmdop_proto::e2e::{
    AgentHandshake, ChannelError, ClientHandshake, CloseReason, DATA_HEADROOM, Ephemeral,
    MAX_DATA_PER_FRAME, MessageDecoder, Opened, Prologue, RekeyPolicy, Session, complete_message,
};
use cmdop_proto::wire::{FrameDecoder, WireError, encode_into, encoded_len};

/// How many bytes one read from the QUIC stream takes at most.
const READ_CHUNK: usize = 64 * 1024;

/// The receive buffer's starting size: whole messages are opened where they lie, so it holds a partial
/// message plus one read; larger than that, moving the partial message to the front is rare.
const RAW_BUFFER: usize = 256 * 1024;

/// Why a secure stream failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SecureStreamError {
    /// The end-to-end channel failed (handshake, authentication, tampering, truncation).
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// An operation message inside the channel was malformed.
    #[error("malformed operation message from the peer: {0}")]
    Ops(#[from] WireError),
    /// The QUIC stream failed.
    #[error("the stream to the relay broke: {0}; the connection was lost")]
    Io(String),
    /// The peer refused or aborted the stream with an authenticated reason.
    #[error("{side} closed the stream ({reason:?}): {message}")]
    Closed {
        /// Who closed it.
        side: &'static str,
        /// The authenticated reason.
        reason: CloseReason,
        /// The peer's text (untrusted content).
        message: String,
    },
    /// The caller's authorization hook refused the client.
    #[error("refused the client: {0}")]
    Refused(String),
    /// The client did not complete its end-to-end handshake within [`HANDSHAKE_DEADLINE`].
    #[error(
        "the client did not complete the end-to-end handshake within {} s; the stream was closed",
        HANDSHAKE_DEADLINE.as_secs()
    )]
    HandshakeTimeout,
}

/// How long the agent waits for a client's end-to-end handshake (its first message and its authentication)
/// on a routed stream. A loopback handshake takes milliseconds and one across the world a few round trips; a
/// stream silent for longer is a client gone or one holding the stream on purpose.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// The sending half.
pub struct SecureSender {
    send: SendStream,
    session: Arc<Mutex<Session>>,
    /// A `Rekey` message due before the next data message, reused.
    control: Vec<u8>,
}

/// The receiving half.
///
/// The stream's bytes land in one buffer where each whole message is decrypted in place and its data handed
/// out from there: one copy (out of QUIC's buffers) per byte received.
pub struct SecureReceiver {
    recv: RecvStream,
    session: Arc<Mutex<Session>>,
    ops: FrameDecoder,
    /// Bytes from the stream; those before `start` are consumed.
    raw: Vec<u8>,
    start: usize,
    /// The decrypted data of the last message, in `raw`, not yet handed out.
    plain: Range<usize>,
    side: &'static str,
    ended: bool,
}

impl std::fmt::Debug for SecureSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureSender").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SecureReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureReceiver")
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

/// Runs the client side of the handshake on a routed stream. `prologue.agent_key` must come from the client's
/// own pin store, never from the relay's answer alone.
pub async fn connect(
    routed: RoutedStream,
    prologue: Prologue,
    identity: &Identity,
    capability: &[u8],
) -> Result<(SecureSender, SecureReceiver), SecureStreamError> {
    let RawStream {
        mut send,
        mut recv,
        leftover,
    } = routed.streams;
    let mut out = Vec::new();
    let handshake = ClientHandshake::start(
        prologue,
        Ephemeral::generate(&mut OsRng),
        RekeyPolicy::default(),
        &mut out,
    )?;
    write(&mut send, &out).await?;
    let mut messages = MessageDecoder::new();
    let mut buffer = leftover;
    let response = next_message(&mut recv, &mut messages, &mut buffer).await?;
    let awaiting = handshake.read_response(&response)?;
    let auth = next_message(&mut recv, &mut messages, &mut buffer).await?;
    out.clear();
    let session =
        awaiting.read_agent_auth(&auth, identity, capability, Instant::now(), &mut out)?;
    write(&mut send, &out).await?;
    Ok(halves(send, recv, session, messages, buffer, "the machine"))
}

/// Runs the agent side of the handshake. `authorize` sees the client's authenticated key and its capability
/// bytes, and returns `Err(reason)` to refuse; nothing flows before it says yes. The reason's text is what
/// the client is told, inside the channel.
pub async fn accept<E: std::fmt::Display>(
    incoming: IncomingStream,
    prologue: Prologue,
    identity: &Identity,
    authorize: impl FnOnce(&PublicKey, &[u8]) -> Result<(), E>,
) -> Result<(SecureSender, SecureReceiver), SecureStreamError> {
    let RawStream {
        mut send,
        mut recv,
        leftover,
    } = incoming.streams;
    let mut messages = MessageDecoder::new();
    let mut buffer = leftover;
    let mut out = Vec::new();
    // The whole handshake, up to the client's authentication, within one deadline; on expiry the stream is
    // reset so that a silent client holds nothing.
    let handshake = async {
        let first = next_message(&mut recv, &mut messages, &mut buffer).await?;
        let awaiting = AgentHandshake::new(prologue, RekeyPolicy::default()).respond(
            &first,
            identity,
            Ephemeral::generate(&mut OsRng),
            Instant::now(),
            &mut out,
        )?;
        write(&mut send, &out).await?;
        let auth = next_message(&mut recv, &mut messages, &mut buffer).await?;
        Ok::<_, SecureStreamError>(awaiting.read_client_auth(&auth)?)
    };
    let pending = match tokio::time::timeout(HANDSHAKE_DEADLINE, handshake).await {
        Ok(pending) => pending?,
        Err(_) => {
            let _ = send.reset(0u32.into());
            let _ = recv.stop(0u32.into());
            return Err(SecureStreamError::HandshakeTimeout);
        }
    };
    if let Err(refusal) = authorize(&pending.client_key(), pending.capability()) {
        let reason = refusal.to_string();
        out.clear();
        pending.reject(&reason, Instant::now(), &mut out)?;
        write(&mut send, &out).await?;
        let _ = send.finish();
        return Err(SecureStreamError::Refused(reason));
    }
    Ok(halves(
        send,
        recv,
        pending.accept(),
        messages,
        buffer,
        "the client",
    ))
}

fn halves(
    send: SendStream,
    recv: RecvStream,
    session: Session,
    messages: MessageDecoder,
    leftover: Vec<u8>,
    side: &'static str,
) -> (SecureSender, SecureReceiver) {
    // The handshake reader stops at a message boundary; what follows is in `leftover`.
    debug_assert!(messages.is_at_boundary());
    let session = Arc::new(Mutex::new(session));
    let sender = SecureSender {
        send,
        session: Arc::clone(&session),
        control: Vec::new(),
    };
    // Bytes that arrived with the handshake (the client's first request travels in the same flight) are
    // still undecrypted in `leftover`; the receiver starts with them.
    let mut raw = leftover;
    raw.reserve(RAW_BUFFER.saturating_sub(raw.len()));
    let receiver = SecureReceiver {
        recv,
        session,
        ops: FrameDecoder::new(),
        raw,
        start: 0,
        plain: 0..0,
        side,
        ended: false,
    };
    (sender, receiver)
}

/// A buffer for [`SecureSender::send_buffer`] with room for `data` bytes: [`DATA_HEADROOM`] bytes of room
/// come first, then the caller appends up to [`MAX_DATA_PER_FRAME`] bytes of data.
pub fn data_buffer(data: usize) -> Vec<u8> {
    let data = data.min(MAX_DATA_PER_FRAME);
    let mut buffer = Vec::with_capacity(DATA_HEADROOM + data + TAG_LEN);
    buffer.resize(DATA_HEADROOM, 0);
    buffer
}

impl SecureSender {
    /// Encrypts and sends one operation message. It is encoded straight into the buffer it is sealed in, and
    /// that buffer is handed to QUIC without a copy.
    pub async fn send<M: Serialize>(&mut self, op: &M) -> Result<(), SecureStreamError> {
        let mut buffer = data_buffer(encoded_len(op)?);
        encode_into(op, &mut buffer)?;
        if buffer.len() - DATA_HEADROOM <= MAX_DATA_PER_FRAME {
            self.send_buffer(buffer).await
        } else {
            // Larger than one channel frame: split, which copies.
            self.send_bytes(buffer.get(DATA_HEADROOM..).unwrap_or_default())
                .await
        }
    }

    /// Encrypts and sends application bytes as they are, without operation framing: for streams that switch
    /// to raw bytes after their first messages (tunnels). Empty `data` sends nothing.
    pub async fn send_bytes(&mut self, data: &[u8]) -> Result<(), SecureStreamError> {
        for chunk in data.chunks(MAX_DATA_PER_FRAME) {
            let mut buffer = data_buffer(chunk.len());
            buffer.extend_from_slice(chunk);
            self.send_buffer(buffer).await?;
        }
        Ok(())
    }

    /// Seals the data in a [`data_buffer`] (everything after its first [`DATA_HEADROOM`] bytes, at most
    /// [`MAX_DATA_PER_FRAME`]) where it lies and hands the buffer to QUIC as it is. A buffer without data sends
    /// nothing.
    pub async fn send_buffer(&mut self, mut buffer: Vec<u8>) -> Result<(), SecureStreamError> {
        self.control.clear();
        let start = lock(&self.session).seal_data_in_place(
            &mut buffer,
            Instant::now(),
            &mut self.control,
        )?;
        if !self.control.is_empty() {
            write(&mut self.send, &self.control).await?;
        }
        let Some(start) = start else {
            return Ok(());
        };
        self.send
            .write_chunk(Bytes::from(buffer).slice(start..))
            .await
            .map_err(|err| SecureStreamError::Io(err.to_string()))
    }

    /// Sends the authenticated end frame and finishes the stream: a cut stream is then distinguishable from a
    /// complete one.
    pub async fn end(mut self, status: u8) -> Result<(), SecureStreamError> {
        let mut out = Vec::new();
        lock(&self.session).send_end(status, Instant::now(), &mut out)?;
        write(&mut self.send, &out).await?;
        self.send
            .finish()
            .map_err(|err| SecureStreamError::Io(err.to_string()))?;
        // Wait until the peer has the data, so that dropping the connection right after cannot lose it.
        let _ = self.send.stopped().await;
        Ok(())
    }

    /// Aborts the stream with an authenticated close frame.
    pub async fn close(mut self, reason: CloseReason, message: &str) {
        let mut out = Vec::new();
        if lock(&self.session)
            .send_close(reason, message, Instant::now(), &mut out)
            .is_ok()
        {
            let _ = write(&mut self.send, &out).await;
        }
        let _ = self.send.finish();
    }
}

impl SecureReceiver {
    /// The next operation message, or `None` after the peer's authenticated end frame. A stream that stops
    /// without that frame is an error ([`ChannelError::Truncated`]), never a clean end.
    pub async fn recv<M: Serialize + DeserializeOwned>(
        &mut self,
    ) -> Result<Option<M>, SecureStreamError> {
        loop {
            if !self.plain.is_empty() {
                let mut slice = self.raw.get(self.plain.clone()).unwrap_or_default();
                let decoded = self.ops.decode::<M>(&mut slice)?;
                self.plain.start = self.plain.end - slice.len();
                if let Some(op) = decoded {
                    return Ok(Some(op));
                }
                continue;
            }
            if self.ended {
                if self.ops.is_mid_frame() {
                    return Err(ChannelError::Truncated.into());
                }
                return Ok(None);
            }
            self.next_plain().await?;
        }
    }

    /// The next application bytes as they arrived, without operation framing: for streams that switched to
    /// raw bytes. Bytes that arrived behind the last operation message come first. The slice is the
    /// decrypted message where it lies, valid until the next call. `None` after the peer's authenticated end
    /// frame; a cut stream is an error, as in [`Self::recv`].
    pub async fn recv_slice(&mut self) -> Result<Option<&[u8]>, SecureStreamError> {
        while self.plain.is_empty() {
            if self.ended {
                return Ok(None);
            }
            self.next_plain().await?;
        }
        let range = std::mem::replace(&mut self.plain, 0..0);
        Ok(Some(self.raw.get(range).unwrap_or_default()))
    }

    /// Like [`Self::recv_slice`], but copies the bytes into `buffer` (replacing its contents); `false` at the
    /// end.
    pub async fn recv_bytes(&mut self, buffer: &mut Vec<u8>) -> Result<bool, SecureStreamError> {
        buffer.clear();
        match self.recv_slice().await? {
            Some(bytes) => {
                buffer.extend_from_slice(bytes);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Opens messages (reading from the stream when none is whole) until one with data, the end frame, or a
    /// failure. Memory stays bounded: the buffer holds at most a partial message and one read.
    async fn next_plain(&mut self) -> Result<(), SecureStreamError> {
        loop {
            let pending = self.raw.get_mut(self.start..).unwrap_or_default();
            if let Some(len) = complete_message(pending)? {
                let body = self.start + 2;
                self.start = body + len;
                let message = self.raw.get_mut(body..body + len).unwrap_or_default();
                match lock(&self.session).open_in_place(message)? {
                    None => {}
                    Some(Opened::Data(range)) => {
                        self.plain = body + range.start..body + range.end;
                        if !self.plain.is_empty() {
                            return Ok(());
                        }
                    }
                    Some(Opened::End { .. }) => {
                        self.ended = true;
                        return Ok(());
                    }
                    Some(Opened::Close { reason, message }) => {
                        return Err(SecureStreamError::Closed {
                            side: self.side,
                            reason,
                            // Authenticated, but the peer's own words: escaped before anyone shows them.
                            message: cmdop_proto::display::escaped(&message),
                        });
                    }
                }
                continue;
            }
            self.read_more().await?;
            if self.ended {
                return Ok(());
            }
        }
    }

    /// Appends one read from the stream, first moving a partial message to the front when the buffer is
    /// out of room. At FIN: an error unless the peer's authenticated end frame came first.
    async fn read_more(&mut self) -> Result<(), SecureStreamError> {
        match self.recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => {
                if self.start == self.raw.len() {
                    self.raw.clear();
                    self.start = 0;
                } else if self.raw.capacity() - self.raw.len() < chunk.bytes.len() {
                    self.raw.drain(..self.start);
                    self.start = 0;
                }
                self.raw.extend_from_slice(&chunk.bytes);
                Ok(())
            }
            Ok(None) => {
                // FIN without the authenticated end frame: cut, not complete.
                if self.start < self.raw.len() {
                    return Err(ChannelError::TruncatedMessage.into());
                }
                lock(&self.session).finish()?;
                self.ended = true;
                Ok(())
            }
            Err(err) => Err(SecureStreamError::Io(err.to_string())),
        }
    }
}

fn lock(session: &Mutex<Session>) -> std::sync::MutexGuard<'_, Session> {
    // A panic while holding the lock leaves a session that refuses further use on its own; keep going.
    session.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn write(send: &mut SendStream, bytes: &[u8]) -> Result<(), SecureStreamError> {
    send.write_all(bytes)
        .await
        .map_err(|err| SecureStreamError::Io(err.to_string()))
}

/// Reads until `decoder` yields one complete handshake message; extra bytes stay in `buffer`.
async fn next_message(
    recv: &mut RecvStream,
    decoder: &mut MessageDecoder,
    buffer: &mut Vec<u8>,
) -> Result<Vec<u8>, SecureStreamError> {
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let mut slice = buffer.as_slice();
        let found = decoder.feed(&mut slice)?;
        let consumed = buffer.len() - slice.len();
        buffer.drain(..consumed);
        if let Some(message) = found {
            return Ok(message);
        }
        match recv.read(&mut chunk).await {
            Ok(Some(n)) => buffer.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Ok(None) => return Err(ChannelError::TruncatedMessage.into()),
            Err(err) => return Err(SecureStreamError::Io(err.to_string())),
        }
    }
}
