//! The sans-IO protocol core's integration tests, in one binary: the end-to-end channel (in memory, against a
//! hostile relay), its golden bytes, the cacophony Noise vector, capabilities at the agent's hook, property
//! tests, and the check that the core stays free of IO.

mod capability;
mod channel;
mod golden;
mod lock_routing;
mod noise_vectors;
mod pair;
mod properties;
mod sans_io;
mod support;
