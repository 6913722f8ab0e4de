//! End-to-end tests that drive the real `cmdop`, `cmdop-agent` and `cmdop-relay` binaries on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

/// The public client library's example (also its crate-level doc example) against a real relay and agent.
mod client_library;
/// `cmdop connect cp`: trees with modes, hostile names, resume after a cut.
mod copy;
/// `cmdop connect exec`: output, exit codes, signals, timeout, stdin, large output, concurrency, pinning.
mod exec;
/// Hostile peers with credentials: silent streams that hold an agent's slots.
mod floods;
/// `cmdop connect forward`: bulk and parallel connections, half-close, per-connection errors, destination policy.
mod forward;
/// A compromised relay (in-process, made hostile by a `Meddler`) against the real agent and CLI: every forgery,
/// substitution, replay, rollback and injection is refused before the command runs.
mod hostile_relay;
/// Locked fleets: certified machines, members with roles, enrolment keys, revocation, disabling.
mod lock;
/// Config files, JSON logs without secrets, metrics, status, draining, systemd units, CLI conventions.
mod operations;
/// Registration, presence, identity across restarts and renames, relay restarts.
mod presence;
/// The relay sees only ciphertext; a cut stream is never success; Ctrl-C reaches the remote command.
mod relay_blindness;
/// A thousand agents from one process: registration, a listing larger than a frame, a SIGKILL storm.
mod scale;
/// Fleet boundaries, credential scope, revocation and expiry, relay pinning.
mod scope;
/// Interactive sessions through a real terminal: raw mode, resize, Ctrl-C, full-screen programs, detach and
/// reattach, resume after a killed client or a restarted relay, read-only observers.
mod shell;
/// rsync, git, tar, ssh and many machines at once, through cmdop as through ssh.
mod tools;
