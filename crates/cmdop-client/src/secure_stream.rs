//! The end-to-end channel ([`cmdop_proto::e2e`]) running over one QUIC bidirectional stream, carrying operation
//! messages ([`cmdop_proto::ops`]): the IO shell around the sans-IO state machines.
//!
//! After the handshake the channel splits into a [`SecureSender`] and a [`SecureReceiver`] that share the
//! session's cipher states behind a mutex held only for the synchronous seal/open, never across an await, so
//! one task can stream stdin while another reads output.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cmdop_identity::{Identity, PublicKey};
use quinn::{RecvStream, SendStream};
use rand_core::OsRng;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::connection::{IncomingStream, RawStream, RoutedStream};
use cmdop_proto::e2e::{
    AgentHandshake, ChannelError, ClientHandshake, CloseReason, Ephemeral, Incoming,
    MessageDecoder, Prologue, RekeyPolicy, Session,
};
use cmdop_proto::wire::{FrameDecoder, WireError, encode};

/// How many bytes one read from the QUIC stream takes at most.
const READ_CHUNK: usize = 64 * 1024;

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
    /// Sealed bytes on their way out, reused so that a bulk stream does not allocate per chunk.
    out: Vec<u8>,
}

/// The receiving half.
pub struct SecureReceiver {
    recv: RecvStream,
    session: Arc<Mutex<Session>>,
    messages: MessageDecoder,
    ops: FrameDecoder,
    /// Ciphertext read from the stream, not yet a complete message.
    raw: Vec<u8>,
    /// Decrypted application bytes, not yet a complete operation.
    data: Vec<u8>,
    /// The buffer one read from the stream lands in, reused.
    chunk: Vec<u8>,
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
    let session = Arc::new(Mutex::new(session));
    let sender = SecureSender {
        send,
        session: Arc::clone(&session),
        out: Vec::new(),
    };
    // Bytes that arrived with the handshake (the client's first request travels in the same flight) are
    // still undecrypted in `leftover`; the receiver starts by draining them.
    let receiver = SecureReceiver {
        recv,
        session,
        messages,
        ops: FrameDecoder::new(),
        raw: leftover,
        data: Vec::new(),
        chunk: vec![0u8; READ_CHUNK],
        side,
        ended: false,
    };
    (sender, receiver)
}

impl SecureSender {
    /// Encrypts and sends one operation message.
    pub async fn send<M: Serialize>(&mut self, op: &M) -> Result<(), SecureStreamError> {
        let plain = encode(op)?;
        self.send_bytes(&plain).await
    }

    /// Encrypts and sends application bytes as they are, without operation framing: for streams that switch
    /// to raw bytes after their first messages (tunnels). Empty `data` sends nothing.
    pub async fn send_bytes(&mut self, data: &[u8]) -> Result<(), SecureStreamError> {
        self.out.clear();
        lock(&self.session).send_data(data, Instant::now(), &mut self.out)?;
        write(&mut self.send, &self.out).await
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
            let mut slice = self.data.as_slice();
            let decoded = self.ops.decode::<M>(&mut slice)?;
            let consumed = self.data.len() - slice.len();
            self.data.drain(..consumed);
            if let Some(op) = decoded {
                return Ok(Some(op));
            }
            if self.ended {
                if self.ops.is_mid_frame() {
                    return Err(ChannelError::Truncated.into());
                }
                return Ok(None);
            }
            self.pump().await?;
        }
    }

    /// The next application bytes as they arrived, without operation framing, into `buffer` (replacing its
    /// contents): for streams that switched to raw bytes. Bytes that arrived behind the last operation message
    /// come first. `false` after the peer's authenticated end frame; a cut stream is an error, as in
    /// [`Self::recv`].
    pub async fn recv_bytes(&mut self, buffer: &mut Vec<u8>) -> Result<bool, SecureStreamError> {
        loop {
            if !self.data.is_empty() {
                buffer.clear();
                // Swapping hands over the bytes without a copy and recycles the caller's buffer.
                std::mem::swap(buffer, &mut self.data);
                return Ok(true);
            }
            if self.ended {
                return Ok(false);
            }
            self.pump().await?;
        }
    }

    /// Reads from the stream until application data, the end frame, or a failure arrives. Memory stays
    /// bounded: at most one read's worth of ciphertext is decrypted at a time.
    async fn pump(&mut self) -> Result<(), SecureStreamError> {
        loop {
            let mut slice = self.raw.as_slice();
            let mut progressed = false;
            while let Some(message) = self.messages.feed(&mut slice)? {
                match lock(&self.session).open(&message)? {
                    None => {}
                    Some(Incoming::Data(data)) => {
                        if self.data.is_empty() {
                            self.data = data;
                        } else {
                            self.data.extend_from_slice(&data);
                        }
                        progressed = true;
                    }
                    Some(Incoming::End { .. }) => {
                        self.ended = true;
                        progressed = true;
                        break;
                    }
                    Some(Incoming::Close { reason, message }) => {
                        return Err(SecureStreamError::Closed {
                            side: self.side,
                            reason,
                            // Authenticated, but the peer's own words: escaped before anyone shows them.
                            message: cmdop_proto::display::escaped(&message),
                        });
                    }
                }
            }
            let consumed = self.raw.len() - slice.len();
            self.raw.drain(..consumed);
            if progressed {
                return Ok(());
            }
            match self.recv.read(&mut self.chunk).await {
                Ok(Some(n)) => self
                    .raw
                    .extend_from_slice(self.chunk.get(..n).unwrap_or_default()),
                Ok(None) => {
                    // FIN without the authenticated end frame: cut, not complete.
                    self.messages.finish()?;
                    lock(&self.session).finish()?;
                    self.ended = true;
                    return Ok(());
                }
                Err(err) => return Err(SecureStreamError::Io(err.to_string())),
            }
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
