//! Reach machines through a cmdop relay from any Rust program, without the relay server.
//!
//! ```text
//!  your program ── ClientConnection::login ──QUIC/TLS 1.3 (pinned cert)──► relay ◄── AgentConnection ── agent
//!       │  list_machines, open_stream                                         │  routes, splices
//!       └── secure_stream::connect ═══ end-to-end channel (the relay sees ciphertext only) ═══ agent
//! ```
//!
//! Entry points: [`ClientConnection`] for people and tools, [`AgentConnection`] and [`StreamAcceptor`] for
//! agents, [`secure_stream`] for the end-to-end channel over a routed stream, [`tunnel`] for raw byte pipes.
//! The protocol itself (messages, the channel, operations) is `cmdop-proto`, re-exported as [`proto`].

mod channel;
mod connection;
pub mod control;
pub mod known_machines;
mod machine;
pub mod secure_stream;
pub mod transport;
pub mod tunnel;

pub use channel::{Channel, MachineConnection};
pub use cmdop_proto as proto;
pub use cmdop_proto::RelayFingerprint;
pub use connection::{
    AgentConnection, AgentRegistration, BACKOFF_INITIAL, BACKOFF_MAX, CONNECT_TIMEOUT,
    ClientConnection, ClientError, IncomingStream, REQUEST_TIMEOUT, RelayTarget, RoutedStream,
    StreamAcceptor, reconnect_delay,
};
pub use machine::{Candidate, Machine};
