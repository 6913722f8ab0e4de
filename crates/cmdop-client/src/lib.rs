//! Reach machines through a cmdop relay from any Rust program, without the relay server.
//!
//! ```text
//!  your program ── ClientConnection::login ──QUIC/TLS 1.3 (pinned cert)──► relay ◄── AgentConnection ── agent
//!       │  list_machines, open_channel                                        │  routes, splices
//!       └── Channel { sender, receiver } ═══ end-to-end channel (the relay sees ciphertext only) ═══ agent
//! ```
//!
//! Entry points: [`ClientConnection`] for people and tools (log in, list machines, open an end-to-end
//! [`Channel`] to one), [`MachineConnection`] for one login serving many channels to one machine,
//! [`known_machines`] for the machine keys a client pins; [`AgentConnection`] and [`StreamAcceptor`] for
//! agents; [`secure_stream`] and [`tunnel`] for what runs over a channel. Every failure is a [`ClientError`]
//! a caller can match on (not found, ambiguous with the candidates, offline, refused, connection lost). The
//! protocol itself (messages, the channel, operations) is `cmdop-proto`, re-exported as [`proto`]; keys are
//! `cmdop-identity`, re-exported as [`identity`].
//!
//! # Example
//!
//! Connect to a relay with its pinned certificate fingerprint and an API key, list the fleet's machines, and
//! run a command on one. This is `examples/exec.rs` (`cargo run -p cmdop-client --example exec -- …`), which
//! the end-to-end tests run against a real relay and agent:
//!
//! ```no_run
#![doc = include_str!("../examples/exec.rs")]
//! ```

mod channel;
mod connection;
pub mod control;
pub mod fleet_lock;
pub mod known_machines;
pub mod landing;
mod machine;
pub mod secure_stream;
pub mod transport;
pub mod tunnel;

pub use channel::{Channel, MachineConnection};
pub use cmdop_identity as identity;
pub use cmdop_proto as proto;
pub use cmdop_proto::RelayFingerprint;
pub use connection::{
    AgentConnection, AgentRegistration, BACKOFF_INITIAL, BACKOFF_MAX, BUSY_PATIENCE,
    CONNECT_TIMEOUT, ClientConnection, ClientError, ComeBack, Dialer, EnrolmentReply,
    IncomingStream, REQUEST_TIMEOUT, RelayTarget, RoutedStream, StreamAcceptor,
    check_relay_address, reconnect_delay,
};
pub use machine::{Candidate, Machine};
