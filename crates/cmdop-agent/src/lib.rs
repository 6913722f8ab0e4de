//! The cmdop agent runtime, as a library under the thin `cmdop-agent` binary.
