//! The cmdop relay: wire protocol, embedded store, QUIC transport, server and client library.
//!
//! ```text
//!  agent ──QUIC/TLS 1.3 (pinned cert)──► relay ◄──QUIC/TLS 1.3 (pinned cert)── cmdop CLI
//!          Hello → Challenge → AgentLogin        Hello → Challenge → ClientLogin
//!                  (signed, exporter-bound)              (signed, exporter-bound)
//!                                   │
//!                              store (SQLite)
//! ```
//!
//! Entry points: [`server::Server`] for the relay, [`client`] for agents and the CLI, [`wire`] for the sans-IO
//! protocol (specified in `docs/protocol.md`), [`store::Store`] for the admin operations.

pub mod admin;
pub mod client;
mod control;
pub mod e2e;
pub mod metrics;
pub mod ops;
pub mod secure_stream;
pub mod server;
pub mod settings_file;
pub mod store;
pub mod transport;
pub mod tunnel;
pub mod wire;
