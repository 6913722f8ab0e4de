//! The relay wire protocol, sans-IO: message types, framing and the login transcript.
//!
//! Normative description: `docs/protocol.md`. Every frame is a `u32` big-endian length followed by a postcard
//! body. Peers send [`PeerMessage`]s, the relay answers with [`RelayMessage`]s. Rules that keep old peers working:
//! enum variants and error codes are only ever appended, fields are never reordered, and the protocol version in
//! [`Hello`] changes when an existing message changes shape. No wire type is recursive, so decoding depth is
//! bounded by the types, not by the input.

mod frame;

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use frame::{
    FrameDecoder, LENGTH_PREFIX_LEN, MAX_FRAME_SIZE, decode_body, encode, encode_into, encoded_len,
};

/// The protocol version carried in [`Hello`]; the relay refuses any other. Version 2 appended `labels` to
/// [`AgentLogin`] and [`MachineInfo`].
pub const PROTOCOL_VERSION: u16 = 2;

/// The QUIC ALPN identifier of this protocol.
pub const ALPN: &[u8] = b"cmdop/1";

/// The TLS keying-material exporter label bound into every login signature (RFC 5705 / RFC 8446 §7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-cmdop relay-login v1";

/// Length of the TLS exporter output bound into a login signature.
pub const EXPORTER_LEN: usize = 32;

/// Prefix of the login transcript, so the signed bytes cannot be mistaken for any other cmdop message.
pub const LOGIN_TRANSCRIPT_LABEL: &[u8] = b"cmdop relay-login transcript v1";

/// The auth capability an agent must advertise: it proves its key with an Ed25519 signature.
pub const AUTH_CAPABILITY_ED25519: &str = "ed25519";

/// The capability an agent advertises when it understands the fleet lock: the relay then sends it a
/// [`RelayMessage::FleetLock`] right after [`RelayMessage::Registered`] and whenever the lock changes, and
/// answers [`PeerMessage::Enrol`].
pub const AUTH_CAPABILITY_FLEET_LOCK: &str = "fleet-lock-v1";

/// The capability an agent advertises when it understands [`RelayMessage::GoAway`]: a relay stopping on
/// purpose then tells it when to come back. An agent without it is only closed (close code 7), since a
/// message it cannot decode would read to it as a protocol error.
pub const AUTH_CAPABILITY_GO_AWAY: &str = "go-away-v1";

/// Errors of the wire layer.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A frame announced (or a message needed) more than [`MAX_FRAME_SIZE`] bytes.
    #[error(
        "frame of {len} bytes exceeds the {MAX_FRAME_SIZE}-byte limit; the peer must send smaller messages"
    )]
    FrameTooLarge {
        /// The announced or required body length.
        len: usize,
    },
    /// The body is not a valid message of the expected type.
    #[error(
        "malformed frame: the body is not a valid cmdop/1 message; check that both sides run compatible versions"
    )]
    Malformed,
    /// The message used a longer encoding than the canonical one (an overlong varint), so the same message
    /// would have more than one wire form.
    #[error(
        "malformed frame: the message is not in its canonical encoding; the peer's encoder is broken"
    )]
    NonCanonical,
    /// A complete message was followed by unexpected bytes inside the same frame.
    #[error(
        "malformed frame: {len} bytes left over after the message; the peer's encoder is broken"
    )]
    TrailingBytes {
        /// How many bytes were left over.
        len: usize,
    },
    /// The message could not be serialized.
    #[error("message could not be encoded; this is a bug in cmdop")]
    Encode,
}

/// Which side of the relay a connecting peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A machine's agent, registering itself.
    Agent,
    /// A person or script using the `cmdop` CLI.
    Client,
}

/// An Ed25519 public key as it travels: 32 raw bytes, validated by the relay after decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyBytes(pub [u8; 32]);

/// An Ed25519 signature as it travels: exactly 64 raw bytes, no length prefix.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignatureBytes(pub [u8; 64]);

/// A 16-byte UUID as it travels (machine and fleet ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdBytes(pub [u8; 16]);

/// The first message on a control stream, from agents and clients alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must be [`PROTOCOL_VERSION`].
    pub version: u16,
    /// Whether an agent or a client is connecting.
    pub role: Role,
    /// Free-form software name and version, for the audit log (e.g. `cmdop-agent 0.1.0`).
    pub client_software: String,
}

/// The relay's fresh challenge, answered by a login message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// 32 random bytes, new for every connection.
    pub nonce: [u8; 32],
}

/// A credential's text as it travels in a login message (`cmdop_ak_…` or `cmdop_ut_…`): on the wire a plain
/// postcard string, in memory zeroized on drop, redacted in `Debug` (only the non-secret id part shows) and
/// compared in constant time.
#[derive(Clone, Default)]
pub struct CredentialText(zeroize::Zeroizing<String>);

impl CredentialText {
    /// Wraps the text.
    pub fn new(text: String) -> Self {
        Self(zeroize::Zeroizing::new(text))
    }

    /// The text, for the one place that parses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for CredentialText {
    fn from(text: &str) -> Self {
        Self::new(text.to_owned())
    }
}

impl From<String> for CredentialText {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl fmt::Debug for CredentialText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `cmdop_ak_<id>_<secret>`: the id is logged on purpose elsewhere; everything after it is not shown.
        // Anything else (a malformed text) is shown only by its length.
        let parts: Vec<&str> = self.0.splitn(4, '_').collect();
        match parts.as_slice() {
            ["cmdop", kind, id, _]
                if id.len() <= 32 && id.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                write!(f, "CredentialText(cmdop_{kind}_{id}_…)")
            }
            _ => write!(f, "CredentialText({} bytes, redacted)", self.0.len()),
        }
    }
}

impl PartialEq for CredentialText {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for CredentialText {}

impl Serialize for CredentialText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CredentialText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// An agent's login and registration request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLogin {
    /// The API key text (`cmdop_ak_<id>_<secret>`, role `agent`).
    pub credential: CredentialText,
    /// The fleet name the agent enrols into; must be the key's fleet.
    pub workspace: String,
    /// The agent's Ed25519 public key.
    pub public_key: KeyBytes,
    /// Signature with purpose `RelayLogin` over [`login_transcript`].
    pub signature: SignatureBytes,
    /// The machine's hostname (unique within a fleet).
    pub hostname: String,
    /// A display name; the hostname when absent.
    pub display_name: Option<String>,
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture, e.g. `x86_64`.
    pub arch: String,
    /// The agent's version string.
    pub agent_version: String,
    /// Proof methods the agent supports; must contain [`AUTH_CAPABILITY_ED25519`].
    pub auth_capabilities: Vec<String>,
    /// The machine's labels as (key, value) pairs (`cmdop-agent run --label role=web`); since version 2.
    pub labels: Vec<(String, String)>,
}

/// A person's or script's login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLogin {
    /// An API key (`cmdop_ak_…`, role member or admin) or a user token (`cmdop_ut_…`).
    pub credential: CredentialText,
    /// The client's Ed25519 public key.
    pub public_key: KeyBytes,
    /// Signature with purpose `RelayLogin` over [`login_transcript`].
    pub signature: SignatureBytes,
}

/// A client's request to reach a machine: the first and only framed message on a new stream, after which
/// the stream carries the end-to-end channel as opaque bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenStream {
    /// The fleet; may be omitted when exactly one fleet is in scope.
    pub workspace: Option<String>,
    /// The machine, as a person names it (id, hostname, display name or a unique prefix).
    pub machine: String,
    /// The stream kind, as in the end-to-end prologue (1 shell, 2 exec, 3 tunnel, 4 copy).
    pub kind: u8,
}

/// The relay's answer to [`OpenStream`]: the route is set up; everything after this is the peer's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReady {
    /// Fresh random id of this stream, bound into the end-to-end prologue by both ends.
    pub channel_id: [u8; 16],
    /// The fleet the machine belongs to.
    pub fleet_id: IdBytes,
    /// The machine the name resolved to.
    pub machine: MachineInfo,
    /// A capability for the client's key, signed by the fleet trust key, for the agent to check.
    pub capability: Vec<u8>,
}

/// The header the relay writes on a stream it opens to an agent; after it, the client's bytes follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    /// The stream's random id, the same the client was told.
    pub channel_id: [u8; 16],
    /// The fleet, as the relay routed it.
    pub fleet_id: IdBytes,
    /// The stream kind.
    pub kind: u8,
    /// The client's key as the relay authenticated it (informational: the agent trusts only the channel).
    pub client_key: KeyBytes,
}

/// The relay's answer to [`PeerMessage::OpenRoute`]: [`StreamReady`] plus the fleet's lock material, which the
/// client checks before it trusts the machine key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteReady {
    /// Fresh random id of this stream, bound into the end-to-end prologue by both ends.
    pub channel_id: [u8; 16],
    /// The fleet the machine belongs to.
    pub fleet_id: IdBytes,
    /// The machine the name resolved to.
    pub machine: MachineInfo,
    /// A capability for the client's key, this machine and this stream, signed by the fleet trust key.
    pub capability: Vec<u8>,
    /// The fleet's lock, if it has one (locked, or disabled by a signed state).
    pub lock: Option<RouteLock>,
}

/// The signed fleet-lock documents a client needs to reach one machine of a locked fleet (`docs/fleet.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteLock {
    /// The fleet authority chain, every state from serial 1 on.
    pub authority: Vec<Vec<u8>>,
    /// The fleet's latest revocation list.
    pub revocations: Option<Vec<u8>>,
    /// The machine's certificate.
    pub machine_certificate: Option<Vec<u8>>,
    /// The member certificate of the client's key, which the client passes to the agent.
    pub member_certificate: Option<Vec<u8>>,
}

/// A fleet's lock as the relay holds it: sent to agents after registration and when it changes, and to
/// clients that ask with [`PeerMessage::LockQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetLockState {
    /// The fleet.
    pub fleet_id: IdBytes,
    /// The fleet authority chain, every state from serial 1 on; empty if the fleet was never locked.
    pub authority: Vec<Vec<u8>>,
    /// The fleet's latest revocation list.
    pub revocations: Option<Vec<u8>>,
}

/// A client's request for a fleet's lock; with `items`, also everything the relay stores for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockQuery {
    /// The fleet; may be omitted when exactly one fleet is in scope.
    pub workspace: Option<String>,
    /// Whether to follow the [`FleetLockState`] with [`RelayMessage::LockItems`] frames, the last one empty.
    pub items: bool,
}

/// A signed fleet-lock document (or an admin's offered key) for the relay to check and store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockSubmit {
    /// The fleet; may be omitted when exactly one fleet is in scope.
    pub workspace: Option<String>,
    /// What is submitted.
    pub submission: Submission,
}

/// What an admin's CLI submits. Each document is signed by an admin key; the relay checks it against the
/// fleet's chain before storing it, but holds no key that could make one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Submission {
    /// The next fleet authority state (or the first, which creates the lock).
    Authority(Vec<u8>),
    /// A machine certificate.
    MachineCertificate(Vec<u8>),
    /// A member certificate.
    MemberCertificate(Vec<u8>),
    /// An enrolment authorization.
    EnrolmentAuthorization(Vec<u8>),
    /// A new revocation list.
    RevocationList(Vec<u8>),
    /// A key someone offers as a new admin key (not signed: `lock add-admin FP` signs it in after the
    /// fingerprint was compared out of band).
    AdminCandidate(KeyBytes),
}

/// One of the things the relay stores for a locked fleet, listed by [`RelayMessage::LockItems`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockItem {
    /// A stored machine certificate.
    MachineCertificate(Vec<u8>),
    /// A stored member certificate.
    MemberCertificate(Vec<u8>),
    /// An enrolment authorization and how many machines used it so far.
    EnrolmentKey {
        /// The signed authorization.
        authorization: Vec<u8>,
        /// How many machines enrolled with it.
        used: u32,
    },
    /// A client key that logged in with a credential covering the fleet (what `add-member FP` looks up).
    ClientKey {
        /// The key.
        public_key: KeyBytes,
        /// Who the credential belongs to, as the relay describes it.
        principal: String,
    },
    /// A key offered as a new admin key.
    AdminCandidate(KeyBytes),
}

/// A client's request for the machines of one fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMachines {
    /// The fleet; may be omitted when exactly one fleet is in scope.
    pub workspace: Option<String>,
}

/// The relay's answer to a successful agent login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The machine's server-issued id, stable for this (fleet, public key).
    pub machine_id: IdBytes,
    /// The fleet the machine belongs to.
    pub fleet_id: IdBytes,
    /// How often the agent must send [`PeerMessage::Heartbeat`].
    pub heartbeat_interval_secs: u32,
    /// The fleet's trust key: capabilities presented to the agent must carry its signature.
    pub trust_key: KeyBytes,
}

/// The relay's answer to a successful client login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Who the credential belongs to, for display (e.g. `user alice` or `api key 0123… (member)`).
    pub principal: String,
    /// Names of the fleets in the credential's scope.
    pub fleets: Vec<String>,
}

/// One machine in a [`RelayMessage::Machines`] answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// Server-issued id.
    pub id: IdBytes,
    /// Hostname, unique within the fleet.
    pub hostname: String,
    /// Display name.
    pub name: String,
    /// The agent's public key.
    pub public_key: KeyBytes,
    /// Whether the machine is connected and heartbeating.
    pub online: bool,
    /// Last heartbeat or login, unix seconds; `None` if never seen.
    pub last_seen: Option<u64>,
    /// Operating system.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// Agent version.
    pub agent_version: String,
    /// The labels the agent reported, as (key, value) pairs in key order; since version 2.
    pub labels: Vec<(String, String)>,
}

/// The most machines a [`RelayMessage::Candidates`] answer lists: this many of the largest (a 253-byte hostname
/// and a 64-character display name) still fit one frame.
pub const MAX_CANDIDATES: usize = 100;

/// One of the machines an ambiguous name matched, in a [`RelayMessage::Candidates`] answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The machine's id.
    pub id: IdBytes,
    /// Its hostname.
    pub hostname: String,
    /// Its display name (the hostname if none was set).
    pub name: String,
}

/// The relay is stopping on purpose (a restart, an upgrade). The agent keeps serving the streams still running
/// on this connection until the relay closes it (close code 7, once its commands and copies have finished or
/// its drain timeout passed), then reconnects, to this relay's next run or its replacement, no sooner than
/// `reconnect_after_ms` after the close, at a moment picked uniformly at random within the `spread_ms` after
/// that: a fleet told to come back spreads itself over the window instead of arriving at once (iroh's relay
/// does the same with its `Restarting` frame). Sent only to agents that advertised
/// [`AUTH_CAPABILITY_GO_AWAY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoAway {
    /// Wait at least this long (milliseconds) after the close before reconnecting.
    pub reconnect_after_ms: u32,
    /// Then spread the reconnect over this window (milliseconds); 0 for at once.
    pub spread_ms: u32,
}

/// A refusal or failure, followed by the relay closing the stream unless stated otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// Machine-readable code (see [`ErrorCode`]).
    pub code: ErrorCode,
    /// Human-readable explanation that names the fix.
    pub message: String,
}

/// A numeric error code. Kept open (a plain number) so a newer relay's codes still decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The frame was malformed, oversized or had trailing bytes.
    pub const BAD_FRAME: Self = Self(1);
    /// The [`Hello`] version is not supported.
    pub const UNSUPPORTED_VERSION: Self = Self(2);
    /// A message arrived that is not valid in the current state.
    pub const UNEXPECTED_MESSAGE: Self = Self(3);
    /// The credential is unknown, wrong, revoked or expired, or the signature is invalid.
    pub const AUTHENTICATION_FAILED: Self = Self(4);
    /// The credential is valid but its role does not allow this.
    pub const FORBIDDEN: Self = Self(5);
    /// The named fleet does not exist or is not in the credential's scope (indistinguishable on purpose).
    pub const FLEET_NOT_FOUND: Self = Self(6);
    /// Several fleets are in scope and no workspace was named.
    pub const WORKSPACE_REQUIRED: Self = Self(7);
    /// Another machine of the fleet already uses this hostname.
    pub const HOSTNAME_TAKEN: Self = Self(8);
    /// The agent does not support a required capability.
    pub const MISSING_CAPABILITY: Self = Self(9);
    /// The relay is at a configured limit; retry later.
    pub const BUSY: Self = Self(10);
    /// The relay failed internally; retry later.
    pub const INTERNAL: Self = Self(11);
    /// The login did not finish within the deadline.
    pub const TIMEOUT: Self = Self(12);
    /// No machine of the fleet matches the name.
    pub const MACHINE_NOT_FOUND: Self = Self(13);
    /// Several machines match the name; the message lists them, and a [`RelayMessage::Candidates`] follows.
    pub const AMBIGUOUS: Self = Self(14);
    /// The machine is not connected to the relay.
    pub const MACHINE_OFFLINE: Self = Self(15);
    /// The agent's registration names an invalid hostname, display name or system description.
    pub const INVALID_REGISTRATION: Self = Self(16);
    /// A fleet-lock document, or an enrolment, was refused (bad signature, stale serial, unknown or used-up
    /// enrolment key); the message says which. The connection stays open.
    pub const LOCK_REFUSED: Self = Self(17);
    /// The machine is in a locked fleet and has no valid machine certificate yet.
    pub const NOT_CERTIFIED: Self = Self(18);
    /// The fleet is locked and the client asked with [`PeerMessage::OpenStream`], whose answer cannot carry the
    /// certificates a client needs: the client is too old.
    pub const FLEET_LOCKED: Self = Self(19);
}

/// A QUIC application close code the relay uses when it ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u32);

impl CloseCode {
    /// Normal end (goodbye, client done).
    pub const NORMAL: Self = Self(0);
    /// The peer broke the protocol (bad frame, unexpected message).
    pub const PROTOCOL_ERROR: Self = Self(1);
    /// The login was refused.
    pub const LOGIN_REFUSED: Self = Self(2);
    /// The credential of this connection was revoked or expired.
    pub const CREDENTIAL_REVOKED: Self = Self(3);
    /// The login did not finish within the deadline.
    pub const LOGIN_TIMEOUT: Self = Self(4);
    /// No heartbeat for three intervals.
    pub const HEARTBEAT_TIMEOUT: Self = Self(5);
    /// The same machine connected again; this older connection is closed.
    pub const REPLACED: Self = Self(6);
    /// The relay is shutting down.
    pub const SHUTDOWN: Self = Self(7);
    /// The relay could not re-check the connection's credential (its store failed), so it closed the
    /// connection rather than keep serving a credential that may have been revoked; reconnect later.
    pub const CREDENTIAL_UNCHECKED: Self = Self(8);
}

/// Messages sent by agents and clients to the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// First message of a control stream.
    Hello(Hello),
    /// Agent login answering a [`Challenge`].
    AgentLogin(AgentLogin),
    /// Client login answering a [`Challenge`].
    ClientLogin(ClientLogin),
    /// Agent presence; answered with [`RelayMessage::HeartbeatAck`].
    Heartbeat,
    /// Client request for the machines of a fleet.
    ListMachines(ListMachines),
    /// Graceful stop: the relay marks the machine offline at once.
    Goodbye,
    /// Client request to route this (new) stream to a machine.
    OpenStream(OpenStream),
    /// Like [`OpenStream`](Self::OpenStream), from a client that understands the fleet lock: answered with
    /// [`RelayMessage::RouteReady`] instead of `StreamReady`.
    OpenRoute(OpenStream),
    /// A request for a fleet's lock (and, for admins, what the relay stores for it).
    LockQuery(LockQuery),
    /// A signed fleet-lock document for the relay to store; answered with [`RelayMessage::LockAccepted`] or an
    /// `Error` with code [`ErrorCode::LOCK_REFUSED`] (the connection stays open). Needs the admin role.
    LockSubmit(LockSubmit),
    /// An agent asks for the enrolment authorization of its enrolment key (the public half); answered with
    /// [`RelayMessage::EnrolAuthorization`], [`RelayMessage::Enrolled`] if the machine is already certified, or
    /// an `Error`.
    Enrol(KeyBytes),
    /// An agent's machine certificate, signed with its enrolment key; answered with
    /// [`RelayMessage::Enrolled`] or an `Error`.
    EnrolProof(Vec<u8>),
}

/// Messages sent by the relay to agents and clients.
// `StreamReady` (with its machine's labels) is the large one; it is made once per routed stream and moved
// once, so boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayMessage {
    /// Answer to [`Hello`].
    Challenge(Challenge),
    /// Successful agent login.
    Registered(Registered),
    /// Successful client login.
    Welcome(Welcome),
    /// Answer to a heartbeat.
    HeartbeatAck,
    /// Answer to [`ListMachines`].
    Machines(Vec<MachineInfo>),
    /// A refusal or failure.
    Error(ErrorMessage),
    /// Answer to [`OpenStream`]: the stream is routed.
    StreamReady(StreamReady),
    /// Header of a stream the relay opens to an agent.
    IncomingStream(StreamHeader),
    /// The machines an ambiguous name matched (at most [`MAX_CANDIDATES`], sorted by name, hostname and id):
    /// sent on a routed stream right after the [`Error`](Self::Error) with code [`ErrorCode::AMBIGUOUS`], before
    /// the relay finishes the stream. A client that reads only the error (an older one) misses nothing else.
    Candidates(Vec<Candidate>),
    /// Answer to [`PeerMessage::OpenRoute`]: the stream is routed, with the fleet's lock material.
    RouteReady(Box<RouteReady>),
    /// A fleet's lock: to an agent after `Registered` and whenever it changes; to a client answering
    /// [`PeerMessage::LockQuery`].
    FleetLock(FleetLockState),
    /// Part of what the relay stores for a locked fleet, after a `FleetLock` that answered a
    /// [`LockQuery`] with `items`; an empty list ends it.
    LockItems(Vec<LockItem>),
    /// A [`PeerMessage::LockSubmit`] was checked and stored; the text says what changed.
    LockAccepted(String),
    /// The signed enrolment authorization of the key an agent asked about.
    EnrolAuthorization(Vec<u8>),
    /// The agent's machine is certified.
    Enrolled,
    /// Part of the answer to [`ListMachines`] when it does not fit one frame (a fleet of more than a few
    /// hundred machines): more follows, and the last part is a [`Machines`](Self::Machines). Built by
    /// [`machines_answer`]; an answer that fits one frame is a lone `Machines`, as before this message existed.
    MoreMachines(Vec<MachineInfo>),
    /// On an agent's control stream: the relay is stopping on purpose; finish what runs, then come back as
    /// [`GoAway`] says.
    GoAway(GoAway),
}

/// The answer to [`ListMachines`] as frames: [`RelayMessage::MoreMachines`] parts, each as full as a frame
/// allows, then one [`RelayMessage::Machines`] with the rest (the only message when everything fits).
pub fn machines_answer(machines: Vec<MachineInfo>) -> Vec<RelayMessage> {
    // A body is the message's tag (1 byte), the list's length (a varint, at most 5 bytes) and the items.
    const BUDGET: usize = MAX_FRAME_SIZE - 1 - 5;
    let mut answer = Vec::new();
    let mut part = Vec::new();
    let mut size = 0;
    for machine in machines {
        // Every field is bounded by cmdop-fleet's validation, so one machine is far below a frame.
        let len = encoded_len(&machine).map_or(BUDGET, |len| len - LENGTH_PREFIX_LEN);
        if size + len > BUDGET && !part.is_empty() {
            answer.push(RelayMessage::MoreMachines(std::mem::take(&mut part)));
            size = 0;
        }
        size += len;
        part.push(machine);
    }
    answer.push(RelayMessage::Machines(part));
    answer
}

/// The bytes a peer signs (purpose `RelayLogin`) to log in: label ‖ challenge ‖ TLS exporter ‖ public key.
///
/// The challenge makes the signature fresh, the exporter binds it to this one TLS session (a relayed or logged
/// signature is useless on any other connection) and the public key binds it to the claimed identity.
pub fn login_transcript(
    challenge: &[u8; 32],
    exporter: &[u8; EXPORTER_LEN],
    public_key: &KeyBytes,
) -> Vec<u8> {
    let mut transcript = Vec::with_capacity(LOGIN_TRANSCRIPT_LABEL.len() + 32 + EXPORTER_LEN + 32);
    transcript.extend_from_slice(LOGIN_TRANSCRIPT_LABEL);
    transcript.extend_from_slice(challenge);
    transcript.extend_from_slice(exporter);
    transcript.extend_from_slice(&public_key.0);
    transcript
}

impl fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignatureBytes({})", hex::encode(self.0))
    }
}

impl Serialize for SignatureBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // serde only derives arrays up to 32 elements; a 64-element tuple keeps postcard's encoding at 64 raw bytes.
        let mut tuple = serializer.serialize_tuple(64)?;
        for byte in &self.0 {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for SignatureBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SignatureVisitor;

        impl<'de> Visitor<'de> for SignatureVisitor {
            type Value = SignatureBytes;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SignatureBytes, A::Error> {
                let mut bytes = [0u8; 64];
                for (index, slot) in bytes.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(index, &self))?;
                }
                Ok(SignatureBytes(bytes))
            }
        }

        deserializer.deserialize_tuple(64, SignatureVisitor)
    }
}

#[cfg(test)]
mod tests;
