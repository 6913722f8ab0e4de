//! The cmdop agent runtime, as a library under the thin `cmdop-agent` binary.
//!
//! ```text
//!   relay ──QUIC──► connection (registration, presence) ──► per-stream end-to-end channel ──► exec
//! ```

pub mod exec;
pub mod presence;
pub mod settings;
pub mod streams;
