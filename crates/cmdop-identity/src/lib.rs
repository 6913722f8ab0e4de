//! Agent and client identity: an Ed25519 keypair derived from a 32-byte seed that never leaves the machine.
//!
//! Skeleton; filled in by the identity work (issue 2).
