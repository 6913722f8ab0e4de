//! The cmdop agent runtime, as a library under the thin `cmdop-agent` binary.
//!
//! ```text
//!   relay ──QUIC──► connection (registration, presence) ──► per-stream end-to-end channel ──► exec
//! ```

pub mod copy;
pub mod destination_policy;
pub mod exec;
pub mod forward;
pub mod presence;
pub mod settings;
pub mod streams;
