//! The cmdop relay protocol, sans-IO: what agents, clients and the relay say to each other, with no sockets,
//! clocks, threads or ambient randomness. Bytes, time and randomness come in as arguments.
//!
//! ```text
//!  agent ──QUIC/TLS 1.3 (pinned cert)──► relay ◄──QUIC/TLS 1.3 (pinned cert)── client
//!     wire: Hello → Challenge → AgentLogin       wire: Hello → Challenge → ClientLogin
//!                                   │
//!       e2e: Noise NN + Ed25519 inside each routed stream, the relay sees ciphertext only
//!       ops: exec, shell, forward and copy messages inside the e2e channel
//! ```
//!
//! Modules: [`wire`] (framing and the relay's messages, `docs/protocol.md`), [`login`], [`presence`] and
//! [`routing`] (the relay's and the peers' state machines around those messages), [`e2e`] (the end-to-end
//! channel, `docs/e2e-channel.md`), [`ops`] (the operations inside it), [`relay_fingerprint`] (what peers
//! pin), [`display`] (what a peer sent, escaped before a terminal or a log sees it, and bounded for the
//! audit log), [`audit_budget`] (how many
//! audit entries refusals may write), [`admission`] (which connection attempts may start logging in). The IO
//! shells around them are `cmdop-client` (agents, the CLI, other tools) and `cmdop-relay` (the server).

pub mod admission;
pub mod audit_budget;
pub mod display;
pub mod e2e;
pub mod lock;
pub mod login;
pub mod ops;
pub mod pins;
pub mod presence;
pub mod relay_fingerprint;
pub mod routing;
pub mod wire;

pub use relay_fingerprint::{FingerprintParseError, RelayFingerprint};
