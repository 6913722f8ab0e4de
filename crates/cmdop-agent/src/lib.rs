//! The cmdop agent runtime, as a library under the thin `cmdop-agent` binary.
//!
//! ```text
//!   relay ──QUIC──► connection (registration, presence) ──► per-stream end-to-end channel ──► exec | shell sessions
//! ```

pub mod copy;
pub mod destination_policy;
pub mod exec;
pub mod fleet_lock;
pub mod forward;
pub mod output_ring;
pub mod presence;
pub mod pty_session;
pub mod settings;
pub mod shell;
pub mod streams;
