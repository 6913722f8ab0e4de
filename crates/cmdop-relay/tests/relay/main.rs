//! The relay server's integration tests, in one binary: the control plane over real QUIC on loopback with a
//! real SQLite file and the public client library, and the `cmdop-relay` binary's admin verbs.

mod cli;
mod control;
mod lock;
