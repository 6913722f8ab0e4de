//! The cmdop relay server: accepts agents and clients over QUIC, authenticates them, keeps presence, routes
//! streams between them and splices their ciphertext, with its state in one SQLite file.
//!
//! ```text
//!  agent ──QUIC/TLS 1.3 (pinned cert)──► relay ◄──QUIC/TLS 1.3 (pinned cert)── client
//!          Hello → Challenge → AgentLogin        Hello → Challenge → ClientLogin
//!                  (signed, exporter-bound)              (signed, exporter-bound)
//!                                   │
//!                              store (SQLite)
//! ```
//!
//! Entry points: [`server::Server`] for the relay, [`store::Store`] for the admin operations. The protocol is
//! `cmdop-proto`; agents and clients use `cmdop-client`, which never links this crate.

pub mod admin;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;
