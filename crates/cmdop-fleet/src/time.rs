//! `Timestamp`: the one representation of time in this crate (unix seconds, always passed in).

use serde::{Deserialize, Serialize};

/// A point in time as whole seconds since the Unix epoch (UTC).
///
/// The crate never reads a clock: every check that depends on time takes a `now: Timestamp`
/// from the caller, which keeps the logic deterministic and testable. Whole seconds are enough
/// for expiry and presence and store as a plain integer in SQLite and on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch itself.
    pub const EPOCH: Self = Self(0);

    /// A timestamp `secs` seconds after the Unix epoch.
    pub const fn from_unix_seconds(secs: u64) -> Self {
        Self(secs)
    }

    /// Seconds since the Unix epoch.
    pub const fn as_unix_seconds(self) -> u64 {
        self.0
    }

    /// This timestamp moved `secs` seconds later, saturating at the far future.
    #[must_use]
    pub const fn saturating_add_seconds(self, secs: u64) -> Self {
        Self(self.0.saturating_add(secs))
    }

    /// Seconds elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub const fn seconds_since(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}
