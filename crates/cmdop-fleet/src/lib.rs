//! Fleets, credentials and their scope, machine records and the machine-name resolver.
//!
//! Pure logic: no IO, no clock, no async. Skeleton; filled in by issue 3.
