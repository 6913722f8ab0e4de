//! The cmdop channel state machines: route-binding prologue, identity proofs, and the transport [`Session`].
//!
//! Each state is a separate type consumed by its transition, so a caller cannot read data before the peer is
//! authenticated (and, on the agent, authorized) and cannot reuse a state after an error.

use std::fmt;
use std::ops::Range;
use std::time::{Duration, Instant};

use cmdop_identity::{Identity, PublicKey, Purpose};
use sha2::{Digest, Sha256};

use super::ChannelError;
use super::codec::encode_message;
use super::frame::{
    AuthFrame, CloseReason, DATA_HEADER_MAX, Frame, FrameRef, MAX_CLOSE_MESSAGE_LEN,
    MAX_DATA_PER_FRAME, Role, data_header, decode_frame, decode_frame_ref,
};
use super::noise::{
    CipherState, DH_LEN, Ephemeral, NnInitiator, NnResponder, TAG_LEN, TransportState,
};

/// First bytes of every prologue: names the protocol so its transcripts cannot be confused with another's.
pub const PROLOGUE_LABEL: &[u8] = b"cmdop-e2e";

/// The channel's version, bound into the prologue; there is no negotiation (one suite per version).
pub const PROTOCOL_VERSION: u8 = 1;

/// Length of [`Prologue::to_bytes`]: label, version, fleet id, agent key, channel id, kind.
pub const PROLOGUE_LEN: usize = PROLOGUE_LABEL.len() + 1 + 16 + 32 + 16 + 1;

/// What a stream is for; bound into the prologue so a stream opened as one kind cannot be replayed as another.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// An interactive shell.
    Shell,
    /// A single command (`cmdop connect exec`).
    Exec,
    /// One tunnelled connection.
    Tunnel,
    /// One file copy.
    Copy,
}

impl StreamKind {
    /// The byte used in the prologue.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Shell => 1,
            Self::Exec => 2,
            Self::Tunnel => 3,
            Self::Copy => 4,
        }
    }

    /// The kind for a prologue byte, if it is one.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Shell),
            2 => Some(Self::Exec),
            3 => Some(Self::Tunnel),
            4 => Some(Self::Copy),
            _ => None,
        }
    }

    /// The fleet operation a stream of this kind performs: what the relay issues a capability for and what
    /// the agent checks it against. The one place the mapping is written; adding a kind fails to compile here
    /// until it names its operation.
    pub fn operation(self) -> cmdop_fleet::Operation {
        match self {
            Self::Shell => cmdop_fleet::Operation::Shell,
            Self::Exec => cmdop_fleet::Operation::Exec,
            Self::Tunnel => cmdop_fleet::Operation::Forward,
            Self::Copy => cmdop_fleet::Operation::Copy,
        }
    }
}

/// The route a stream is supposed to take, bound into the Noise prologue.
///
/// Both ends must build exactly the same value, or the client fails at the handshake: the client takes
/// `agent_key` from its own pin store (never from the relay alone), the agent uses its own key, and the relay
/// tells both ends `fleet_id` and the fresh random `channel_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prologue {
    /// The fleet the stream belongs to.
    pub fleet_id: [u8; 16],
    /// The agent the client means to reach.
    pub agent_key: PublicKey,
    /// Random per stream, chosen by the relay and told to both ends.
    pub channel_id: [u8; 16],
    /// What the stream is for.
    pub kind: StreamKind,
}

impl Prologue {
    /// `label ‖ version ‖ fleet_id ‖ agent_key ‖ channel_id ‖ kind`.
    pub fn to_bytes(&self) -> [u8; PROLOGUE_LEN] {
        let mut bytes = [0u8; PROLOGUE_LEN];
        let mut at = 0;
        for part in [
            PROLOGUE_LABEL,
            &[PROTOCOL_VERSION],
            &self.fleet_id,
            self.agent_key.as_bytes(),
            &self.channel_id,
            &[self.kind.to_byte()],
        ] {
            if let Some(slot) = bytes.get_mut(at..at + part.len()) {
                slot.copy_from_slice(part);
            }
            at += part.len();
        }
        bytes
    }
}

/// When a sender switches to a new key; whichever limit is reached first triggers a rekey.
///
/// Limits apply per direction and only to the sender; the receiver follows the in-band [`Frame::Rekey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyPolicy {
    /// Frames sealed under one key.
    pub max_frames: u64,
    /// Plaintext bytes sealed under one key.
    pub max_bytes: u64,
    /// Time since the key's first use.
    pub max_age: Duration,
}

impl Default for RekeyPolicy {
    /// 2^20 frames, 1 GiB or 10 minutes: far inside AES-GCM's per-key limits, and bounds how much past traffic
    /// a leaked key exposes.
    fn default() -> Self {
        Self {
            max_frames: 1 << 20,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(600),
        }
    }
}

/// The client (Noise initiator) after sending message 1.
#[must_use = "the handshake stalls unless this state is driven with the next message"]
pub struct ClientHandshake {
    prologue: Prologue,
    noise: NnInitiator,
    policy: RekeyPolicy,
}

impl ClientHandshake {
    /// Starts a channel over `prologue`: appends the framed message 1 to `out`.
    pub fn start(
        prologue: Prologue,
        ephemeral: Ephemeral,
        policy: RekeyPolicy,
        out: &mut Vec<u8>,
    ) -> Result<Self, ChannelError> {
        let mut message = Vec::with_capacity(DH_LEN);
        let noise = NnInitiator::start(&prologue.to_bytes(), ephemeral, &[], &mut message)?;
        encode_message(&message, out)?;
        Ok(Self {
            prologue,
            noise,
            policy,
        })
    }

    /// Reads the agent's message 2; fails if the agent used a different prologue (another route, another
    /// agent key) or the message was altered.
    pub fn read_response(self, message: &[u8]) -> Result<ClientAwaitingAgent, ChannelError> {
        if message.len() != DH_LEN + TAG_LEN {
            return Err(ChannelError::HandshakeFailed);
        }
        let (payload, transport) = self.noise.finish(message)?;
        if !payload.is_empty() {
            return Err(ChannelError::HandshakeFailed);
        }
        Ok(ClientAwaitingAgent {
            agent_key: self.prologue.agent_key,
            session: Session::new(transport, self.policy),
        })
    }
}

impl fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("prologue", &self.prologue)
            .finish_non_exhaustive()
    }
}

/// The client after the Noise handshake: waits for the agent's identity proof.
#[derive(Debug)]
#[must_use = "the handshake stalls unless this state is driven with the next message"]
pub struct ClientAwaitingAgent {
    agent_key: PublicKey,
    session: Session,
}

impl ClientAwaitingAgent {
    /// Verifies the agent's `Auth` frame against the pinned key, then appends the client's own `Auth` frame
    /// (signed by `identity`, carrying `capability`) to `out` and returns the session.
    ///
    /// The caller may seal its first request into the same `out`, so it travels in the same flight.
    pub fn read_agent_auth(
        mut self,
        message: &[u8],
        identity: &Identity,
        capability: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<Session, ChannelError> {
        let frame = self.session.open_frame(message)?;
        let Frame::Auth(auth) = frame else {
            return Err(self.session.fail(ChannelError::UnexpectedFrame {
                expected: "the agent's auth frame",
            }));
        };
        let mut signed = Vec::with_capacity(64);
        signed.extend_from_slice(&self.session.handshake_hash);
        signed.extend_from_slice(auth.public_key.as_bytes());
        let valid = auth.role == Role::Agent
            && auth.public_key == self.agent_key
            && auth.capability.is_empty()
            && auth
                .public_key
                .verify(Purpose::E2eAgentAuth, &signed, &auth.signature)
                .is_ok();
        if !valid {
            return Err(self.session.fail(ChannelError::AgentAuthentication));
        }
        self.session.peer_key = Some(auth.public_key);

        let client_key = identity.public_key();
        let signature = identity.sign(
            Purpose::E2eClientAuth,
            &client_signed_message(&self.session.handshake_hash, &client_key, capability),
        );
        let auth = Frame::Auth(Box::new(AuthFrame {
            role: Role::Client,
            public_key: client_key,
            capability: capability.to_vec(),
            signature,
        }));
        self.session.seal(&auth, now, out)?;
        Ok(self.session)
    }
}

/// The agent's side before a client arrives: the route it expects and its rekey policy.
#[derive(Debug, Clone, Copy)]
pub struct AgentHandshake {
    prologue: Prologue,
    policy: RekeyPolicy,
}

impl AgentHandshake {
    /// Expects a channel over `prologue`, whose `agent_key` must be this agent's own key.
    pub fn new(prologue: Prologue, policy: RekeyPolicy) -> Self {
        Self { prologue, policy }
    }

    /// Reads the client's message 1 and appends message 2 and the agent's `Auth` frame to `out`.
    ///
    /// A low-order client ephemeral is refused before anything is written.
    pub fn respond(
        self,
        message: &[u8],
        identity: &Identity,
        ephemeral: Ephemeral,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<AgentAwaitingClient, ChannelError> {
        let agent_key = identity.public_key();
        if agent_key != self.prologue.agent_key {
            return Err(ChannelError::WrongIdentity);
        }
        if message.len() != DH_LEN {
            return Err(ChannelError::HandshakeFailed);
        }
        let (responder, _empty) = NnResponder::read(&self.prologue.to_bytes(), message)?;
        let mut message2 = Vec::with_capacity(DH_LEN + TAG_LEN);
        let transport = responder.respond(ephemeral, &[], &mut message2)?;
        let mut session = Session::new(transport, self.policy);

        let mut signed = Vec::with_capacity(64);
        signed.extend_from_slice(&session.handshake_hash);
        signed.extend_from_slice(agent_key.as_bytes());
        let auth = Frame::Auth(Box::new(AuthFrame {
            role: Role::Agent,
            public_key: agent_key,
            capability: Vec::new(),
            signature: identity.sign(Purpose::E2eAgentAuth, &signed),
        }));
        let start = out.len();
        encode_message(&message2, out)?;
        if let Err(error) = session.seal(&auth, now, out) {
            out.truncate(start);
            return Err(error);
        }
        Ok(AgentAwaitingClient { session })
    }
}

/// The agent after answering: processes nothing but the client's `Auth` frame.
#[derive(Debug)]
#[must_use = "the handshake stalls unless this state is driven with the next message"]
pub struct AgentAwaitingClient {
    session: Session,
}

impl AgentAwaitingClient {
    /// Verifies the client's `Auth` frame. The result is not yet a session: the caller must authorize the
    /// client (check the capability) and then [`PendingClient::accept`] or [`PendingClient::reject`].
    pub fn read_client_auth(mut self, message: &[u8]) -> Result<PendingClient, ChannelError> {
        let frame = self.session.open_frame(message)?;
        let Frame::Auth(auth) = frame else {
            return Err(self.session.fail(ChannelError::UnexpectedFrame {
                expected: "the client's auth frame",
            }));
        };
        let signed = client_signed_message(
            &self.session.handshake_hash,
            &auth.public_key,
            &auth.capability,
        );
        let valid = auth.role == Role::Client
            && auth
                .public_key
                .verify(Purpose::E2eClientAuth, &signed, &auth.signature)
                .is_ok();
        if !valid {
            return Err(self.session.fail(ChannelError::ClientAuthentication));
        }
        self.session.peer_key = Some(auth.public_key);
        Ok(PendingClient {
            session: self.session,
            client_key: auth.public_key,
            capability: auth.capability,
        })
    }
}

/// `h ‖ client_pk ‖ SHA-256(capability)`: what the client signs.
fn client_signed_message(
    handshake_hash: &[u8; 32],
    client_key: &PublicKey,
    capability: &[u8],
) -> Vec<u8> {
    let mut signed = Vec::with_capacity(96);
    signed.extend_from_slice(handshake_hash);
    signed.extend_from_slice(client_key.as_bytes());
    signed.extend_from_slice(&Sha256::digest(capability));
    signed
}

/// An authenticated client the caller has not yet authorized. No data can be read until [`accept`].
///
/// [`accept`]: PendingClient::accept
#[derive(Debug)]
#[must_use = "call accept() or reject() after checking the capability"]
pub struct PendingClient {
    session: Session,
    client_key: PublicKey,
    capability: Vec<u8>,
}

impl PendingClient {
    /// The client's proven identity key.
    pub fn client_key(&self) -> PublicKey {
        self.client_key
    }

    /// The capability bytes the client presented (and signed); the caller verifies them.
    pub fn capability(&self) -> &[u8] {
        &self.capability
    }

    /// The caller authorized the client: data may flow.
    pub fn accept(self) -> Session {
        self.session
    }

    /// The caller refused the client: appends an authenticated `Close { Denied }` frame to `out`.
    pub fn reject(
        mut self,
        message: &str,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), ChannelError> {
        self.session
            .send_close(CloseReason::Denied, message, now, out)
    }
}

/// What [`Session::open`] hands to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Application bytes.
    Data(Vec<u8>),
    /// The peer finished sending, cleanly, with this status; it will send nothing else but a `Close`.
    End {
        /// The peer's status (0 = success).
        status: u8,
    },
    /// The peer aborted the stream; the session is now closed.
    Close {
        /// Why.
        reason: CloseReason,
        /// The peer's detail text (authenticated, but chosen by the peer: display it as untrusted text).
        message: String,
    },
}

/// What [`Session::open_in_place`] found: like [`Incoming`], but the data stays where it was decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Application bytes: this range of the message buffer.
    Data(Range<usize>),
    /// See [`Incoming::End`].
    End {
        /// The peer's status (0 = success).
        status: u8,
    },
    /// See [`Incoming::Close`].
    Close {
        /// Why.
        reason: CloseReason,
        /// The peer's detail text (untrusted).
        message: String,
    },
}

/// Room to leave in front of the data given to [`Session::seal_data_in_place`]: the message's two-byte length
/// prefix and the frame's variant byte and length.
pub const DATA_HEADROOM: usize = 2 + DATA_HEADER_MAX;

/// An authenticated, encrypted channel: per-direction keys, 64-bit counters, rekey by volume and time.
///
/// Any error is terminal: the keys are wiped and every later call returns [`ChannelError::Closed`].
pub struct Session {
    send: CipherState,
    recv: CipherState,
    handshake_hash: [u8; 32],
    policy: RekeyPolicy,
    peer_key: Option<PublicKey>,
    send_frames: u64,
    send_bytes: u64,
    send_key_since: Option<Instant>,
    sent_end: bool,
    received_end: bool,
    closed: bool,
}

impl Session {
    fn new(transport: TransportState, policy: RekeyPolicy) -> Self {
        Self {
            send: transport.send,
            recv: transport.recv,
            handshake_hash: transport.handshake_hash,
            policy,
            peer_key: None,
            send_frames: 0,
            send_bytes: 0,
            send_key_since: None,
            sent_end: false,
            received_end: false,
            closed: false,
        }
    }

    /// The peer's authenticated identity key.
    pub fn peer_key(&self) -> Option<PublicKey> {
        self.peer_key
    }

    /// The Noise handshake hash: unique to this stream, identical at both ends (useful to log and compare).
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.handshake_hash
    }

    /// Appends `data` to `out` as one or more framed `Data` messages (split at [`MAX_DATA_PER_FRAME`]),
    /// preceded by a `Rekey` frame whenever the policy says the sending key is used up. Empty `data` sends
    /// nothing.
    pub fn send_data(
        &mut self,
        data: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), ChannelError> {
        if self.sent_end {
            return Err(ChannelError::Closed);
        }
        for chunk in data.chunks(MAX_DATA_PER_FRAME) {
            self.seal(&Frame::Data(chunk.to_vec()), now, out)?;
        }
        Ok(())
    }

    /// Seals the data in `buffer[DATA_HEADROOM..]` (at most [`MAX_DATA_PER_FRAME`] bytes) as one framed `Data`
    /// message in place: the header goes into the headroom, the data is encrypted where it lies and the tag is
    /// appended. Returns where the framed message starts in `buffer` (the headroom a short length does not need
    /// is skipped), or `None` when there is no data. The bytes are those [`Self::send_data`] would produce.
    ///
    /// When the policy says the sending key is used up, the `Rekey` message that must go first is appended to
    /// `control`; the caller sends `control` before the buffer.
    pub fn seal_data_in_place(
        &mut self,
        buffer: &mut Vec<u8>,
        now: Instant,
        control: &mut Vec<u8>,
    ) -> Result<Option<usize>, ChannelError> {
        if self.sent_end || self.closed {
            return Err(ChannelError::Closed);
        }
        let len = buffer.len().saturating_sub(DATA_HEADROOM);
        if len == 0 {
            return Ok(None);
        }
        if len > MAX_DATA_PER_FRAME {
            return Err(ChannelError::MessageTooLarge { len });
        }
        self.rekey_if_due(now, control)?;
        let (header, header_len) = data_header(len);
        let start = DATA_HEADROOM - header_len - 2;
        let plaintext_len = header_len + len;
        // At most MAX_MESSAGE_LEN by the check above, so the prefix fits.
        let wire_len =
            u16::try_from(plaintext_len + TAG_LEN).map_err(|_| ChannelError::MessageTooLarge {
                len: plaintext_len + TAG_LEN,
            })?;
        if let Some(slot) = buffer.get_mut(start..DATA_HEADROOM) {
            slot[..2].copy_from_slice(&wire_len.to_be_bytes());
            slot[2..].copy_from_slice(&header[..header_len]);
        }
        let body = buffer.get_mut(start + 2..).unwrap_or_default();
        match self.send.encrypt_in_place(&[], body) {
            Ok(Some(tag)) => buffer.extend_from_slice(&tag),
            Ok(None) => return Err(self.fail(ChannelError::Closed)),
            Err(error) => return Err(self.fail(error)),
        }
        self.send_frames += 1;
        self.send_bytes = self.send_bytes.saturating_add(plaintext_len as u64);
        Ok(Some(start))
    }

    /// Appends the authenticated end frame: this side will send no more data.
    pub fn send_end(
        &mut self,
        status: u8,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), ChannelError> {
        if self.sent_end {
            return Err(ChannelError::Closed);
        }
        self.seal(&Frame::End { status }, now, out)?;
        self.sent_end = true;
        Ok(())
    }

    /// Appends an authenticated close frame and closes the session. `message` is cut to
    /// [`MAX_CLOSE_MESSAGE_LEN`] bytes.
    pub fn send_close(
        &mut self,
        reason: CloseReason,
        message: &str,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), ChannelError> {
        let mut cut = message.len().min(MAX_CLOSE_MESSAGE_LEN);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        let message = message.get(..cut).unwrap_or_default().to_owned();
        let result = self.seal(&Frame::Close { reason, message }, now, out);
        self.wipe();
        result
    }

    /// Decrypts and interprets one message from the [`super::MessageDecoder`].
    ///
    /// `Ok(None)` means a control frame (rekey) was handled and there is nothing for the application.
    pub fn open(&mut self, message: &[u8]) -> Result<Option<Incoming>, ChannelError> {
        let mut buffer = message.to_vec();
        Ok(match self.open_in_place(&mut buffer)? {
            None => None,
            Some(Opened::Data(range)) => {
                buffer.truncate(range.end);
                buffer.drain(..range.start);
                Some(Incoming::Data(buffer))
            }
            Some(Opened::End { status }) => Some(Incoming::End { status }),
            Some(Opened::Close { reason, message }) => Some(Incoming::Close { reason, message }),
        })
    }

    /// Decrypts one message (without its length prefix) where it lies and interprets it, as [`Self::open`]
    /// does; data is returned as a range of `message` instead of a copy. Nothing in `message` may be used if
    /// this fails.
    pub fn open_in_place(&mut self, message: &mut [u8]) -> Result<Option<Opened>, ChannelError> {
        if self.closed {
            return Err(ChannelError::Closed);
        }
        let len = match self.recv.decrypt_in_place(&[], message) {
            Ok(len) => len,
            Err(error) => return Err(self.fail(error)),
        };
        let plaintext = message.get(..len).unwrap_or_default();
        let frame = match decode_frame_ref(plaintext) {
            Ok(frame) => frame,
            Err(error) => return Err(self.fail(error)),
        };
        // A sender may still rekey (its policy is checked on every seal) and close after its end frame.
        if self.received_end && !matches!(frame, FrameRef::Close { .. } | FrameRef::Rekey) {
            return Err(self.fail(ChannelError::UnexpectedFrame {
                expected: "nothing after the end frame",
            }));
        }
        match frame {
            // No trailing bytes are allowed, so the data is the plaintext's tail.
            FrameRef::Data(data) => Ok(Some(Opened::Data(len - data.len()..len))),
            FrameRef::Rekey => match self.recv.rekey() {
                Ok(()) => Ok(None),
                Err(error) => Err(self.fail(error)),
            },
            FrameRef::End { status } => {
                self.received_end = true;
                Ok(Some(Opened::End { status }))
            }
            FrameRef::Close { reason, message } => {
                self.wipe();
                Ok(Some(Opened::Close { reason, message }))
            }
            FrameRef::Auth(_) => Err(self.fail(ChannelError::UnexpectedFrame {
                expected: "data, rekey, end or close",
            })),
        }
    }

    /// Call when the peer's stream ended (FIN): `Ok` only if the peer sent its end frame (or closed).
    pub fn finish(&self) -> Result<(), ChannelError> {
        if self.received_end {
            Ok(())
        } else {
            Err(ChannelError::Truncated)
        }
    }

    /// Whether the peer's authenticated end frame arrived.
    pub fn has_received_end(&self) -> bool {
        self.received_end
    }

    /// Whether the session can no longer be used (after an error or a close in either direction).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn open_frame(&mut self, message: &[u8]) -> Result<Frame, ChannelError> {
        if self.closed {
            return Err(ChannelError::Closed);
        }
        let mut buffer = message.to_vec();
        let len = match self.recv.decrypt_in_place(&[], &mut buffer) {
            Ok(len) => len,
            Err(error) => return Err(self.fail(error)),
        };
        let plaintext = buffer.get(..len).unwrap_or_default();
        decode_frame(plaintext).map_err(|error| self.fail(error))
    }

    /// Appends a `Rekey` message and switches the sending key when the policy says the key is used up.
    fn rekey_if_due(&mut self, now: Instant, out: &mut Vec<u8>) -> Result<(), ChannelError> {
        let since = *self.send_key_since.get_or_insert(now);
        let due = self.send_frames >= self.policy.max_frames
            || self.send_bytes >= self.policy.max_bytes
            || now.saturating_duration_since(since) >= self.policy.max_age;
        if due {
            self.seal_one(&Frame::Rekey, out)
                .map_err(|error| self.fail(error))?;
            self.send.rekey().map_err(|error| self.fail(error))?;
            self.send_frames = 0;
            self.send_bytes = 0;
            self.send_key_since = Some(now);
        }
        Ok(())
    }

    fn seal(&mut self, frame: &Frame, now: Instant, out: &mut Vec<u8>) -> Result<(), ChannelError> {
        if self.closed {
            return Err(ChannelError::Closed);
        }
        self.rekey_if_due(now, out)?;
        let len = self
            .seal_one(frame, out)
            .map_err(|error| self.fail(error))?;
        self.send_frames += 1;
        self.send_bytes = self.send_bytes.saturating_add(len as u64);
        Ok(())
    }

    /// Encrypts one frame and appends it, framed, to `out`; returns the plaintext length.
    fn seal_one(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<usize, ChannelError> {
        let plaintext = frame.encode()?;
        let ciphertext_len = plaintext.len() + TAG_LEN;
        let wire_len =
            u16::try_from(ciphertext_len).map_err(|_| ChannelError::MessageTooLarge {
                len: ciphertext_len,
            })?;
        let start = out.len();
        out.reserve(2 + ciphertext_len);
        out.extend_from_slice(&wire_len.to_be_bytes());
        out.extend_from_slice(&plaintext);
        let body = start + 2;
        match self
            .send
            .encrypt_in_place(&[], out.get_mut(body..).unwrap_or_default())
        {
            Ok(Some(tag)) => out.extend_from_slice(&tag),
            Ok(None) => {
                out.truncate(start);
                return Err(ChannelError::Closed);
            }
            Err(error) => {
                out.truncate(start);
                return Err(error);
            }
        }
        Ok(plaintext.len())
    }

    fn fail(&mut self, error: ChannelError) -> ChannelError {
        self.wipe();
        error
    }

    fn wipe(&mut self) {
        self.closed = true;
        self.send.clear();
        self.recv.clear();
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("peer_key", &self.peer_key)
            .field("send", &self.send)
            .field("recv", &self.recv)
            .field("sent_end", &self.sent_end)
            .field("received_end", &self.received_end)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}
