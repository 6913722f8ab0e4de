//! End-to-end tests that drive the real `cmdop`, `cmdop-agent` and `cmdop-relay` binaries.
