//! End-to-end tests that drive the real `cmdop`, `cmdop-agent` and `cmdop-relay` binaries on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

/// `cmdop connect exec`: output, exit codes, signals, timeout, stdin, large output, concurrency, pinning.
mod exec;
/// Registration, presence, identity across restarts and renames, relay restarts.
mod presence;
/// Fleet boundaries, credential scope, revocation and expiry, relay pinning.
mod scope;
