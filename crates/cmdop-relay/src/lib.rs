//! The cmdop relay protocol and its QUIC transport.
//!
//! Skeleton; filled in by issues 3 and 4.
