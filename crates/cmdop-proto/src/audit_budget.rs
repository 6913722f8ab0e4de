//! How much of the audit log refusals may take: the relay's audit log is append-only and on disk, so a stranger
//! who fails to log in a million times a minute must not write a million entries.
//!
//! Per wall-clock minute and per source (an address for logins, an actor for a logged-in peer's refused
//! requests), the first refusal is written in full and the rest are counted; when the minute is over, one
//! entry says how many more there were and shows the last one. At most [`MAX_SOURCES_PER_MINUTE`] sources get
//! entries of their own in a minute; refusals from any further source are counted together in one entry.
//! Everything that is not a refusal passes through untouched. So refusals write at most
//! `2 × MAX_SOURCES_PER_MINUTE + 1` entries a minute, whatever their number; the count is never lost.
//!
//! ```text
//!  admit(source, event, now) ──▶ [event]            first refusal of this source this minute
//!                             ──▶ []                 later ones: counted
//!                             ──▶ [summaries…, event] the first one of a new minute, after last minute's counts
//!  flush(now)                ──▶ [summaries…]        once the minute is over (call it every few seconds)
//!  finish()                  ──▶ [summaries…]        on shutdown: the running minute's counts
//! ```

use std::collections::HashMap;

use cmdop_fleet::{FleetId, Timestamp};

use crate::login::AuditEvent;

/// Sources that get entries of their own in one minute; refusals from more are counted together.
pub const MAX_SOURCES_PER_MINUTE: usize = 16;

/// The most audit entries refusals can write in one minute.
pub const MAX_REFUSAL_ENTRIES_PER_MINUTE: usize = 2 * MAX_SOURCES_PER_MINUTE + 1;

/// The outcome whose entries are budgeted.
const REFUSED: &str = "refused";

/// What one source did this minute beyond its first refusal.
#[derive(Debug)]
struct Tally {
    /// Refusals counted, not written.
    more: u64,
    /// The last of them, shown in the summary.
    last: Option<AuditEvent>,
}

/// The refusals of the running minute.
#[derive(Debug, Default)]
pub struct AuditBudget {
    /// The running minute (unix seconds / 60), once anything was admitted.
    minute: Option<u64>,
    sources: HashMap<String, Tally>,
    /// Refusals from sources beyond [`MAX_SOURCES_PER_MINUTE`].
    overflow: u64,
    /// The fleet of the last overflowing refusal, if any, for its summary.
    overflow_fleet: Option<FleetId>,
}

impl AuditBudget {
    /// An empty budget.
    pub fn new() -> Self {
        Self::default()
    }

    /// What to write for `event` from `source` at `now`: the event itself, nothing (counted), or last
    /// minute's summaries first. Events that are not refusals are always written.
    pub fn admit(&mut self, source: &str, event: AuditEvent, now: Timestamp) -> Vec<AuditEvent> {
        let mut write = self.flush(now);
        if event.outcome != REFUSED {
            write.push(event);
            return write;
        }
        self.minute = Some(minute_of(now));
        if let Some(tally) = self.sources.get_mut(source) {
            tally.more = tally.more.saturating_add(1);
            tally.last = Some(event);
        } else if self.sources.len() < MAX_SOURCES_PER_MINUTE {
            self.sources.insert(
                source.to_owned(),
                Tally {
                    more: 0,
                    last: None,
                },
            );
            write.push(event);
        } else {
            self.overflow = self.overflow.saturating_add(1);
            self.overflow_fleet = event.fleet;
        }
        write
    }

    /// The summaries of a minute that is over by `now` (nothing while it runs).
    pub fn flush(&mut self, now: Timestamp) -> Vec<AuditEvent> {
        match self.minute {
            Some(minute) if minute != minute_of(now) => self.finish(),
            _ => Vec::new(),
        }
    }

    /// The summaries of the running minute, now (the relay is stopping); the budget starts afresh.
    pub fn finish(&mut self) -> Vec<AuditEvent> {
        let Some(minute) = self.minute.take() else {
            return Vec::new();
        };
        let from = minute.saturating_mul(60);
        let mut sources: Vec<(String, Tally)> = self.sources.drain().collect();
        sources.sort_by(|a, b| a.0.cmp(&b.0));
        let mut write: Vec<AuditEvent> = sources
            .into_iter()
            .filter_map(|(_, tally)| {
                let last = tally.last?;
                Some(AuditEvent {
                    detail: format!(
                        "{} more like this in the minute from {from} (unix time); the last: {}",
                        tally.more, last.detail
                    ),
                    ..last
                })
            })
            .collect();
        let overflow = std::mem::take(&mut self.overflow);
        if overflow > 0 {
            write.push(AuditEvent {
                fleet: self.overflow_fleet.take(),
                actor: "relay".to_owned(),
                action: "auth",
                outcome: REFUSED,
                detail: format!(
                    "{overflow} more like this in the minute from {from} (unix time), from sources beyond the first {MAX_SOURCES_PER_MINUTE}, not written one by one"
                ),
            });
        }
        write
    }
}

fn minute_of(at: Timestamp) -> u64 {
    at.as_unix_seconds() / 60
}

/// The source a login refusal is counted under: an IPv4 address, or an IPv6 /64 (what one subscriber
/// usually holds, so a host cannot dodge the budget by hopping through its own prefix).
pub fn source_of(address: core::net::IpAddr) -> String {
    match address {
        core::net::IpAddr::V4(v4) => v4.to_string(),
        core::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(actor: &str, detail: &str) -> AuditEvent {
        AuditEvent {
            fleet: None,
            actor: actor.to_owned(),
            action: "auth",
            outcome: REFUSED,
            detail: detail.to_owned(),
        }
    }

    fn at(seconds: u64) -> Timestamp {
        Timestamp::from_unix_seconds(seconds)
    }

    /// The count in a summary's detail, 1 for an entry written in full.
    fn counted(event: &AuditEvent) -> u64 {
        event
            .detail
            .split_once(" more like this")
            .map_or(1, |(n, _)| n.parse().unwrap())
    }

    #[test]
    fn one_source_writes_its_first_refusal_and_a_count() {
        let mut budget = AuditBudget::new();
        // 1,800,000,000 is a whole minute (30,000,000 × 60).
        let start = 1_800_000_000;
        let mut written = Vec::new();
        for i in 0..1_000 {
            written.extend(budget.admit(
                "192.0.2.7",
                refused("peer:192.0.2.7:4000", &format!("wrong secret #{i}")),
                at(start + i * 59 / 1_000),
            ));
        }
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].detail, "wrong secret #0");
        assert!(
            budget.flush(at(start + 59)).is_empty(),
            "the minute still runs"
        );
        let summary = budget.flush(at(start + 60));
        assert_eq!(summary.len(), 1);
        assert!(
            summary[0].detail.starts_with("999 more like this"),
            "{summary:?}"
        );
        assert!(
            summary[0].detail.ends_with("wrong secret #999"),
            "{summary:?}"
        );
        assert!(budget.flush(at(start + 200)).is_empty());
    }

    #[test]
    fn many_sources_stay_within_the_minute_bound_and_every_refusal_is_counted() {
        let mut budget = AuditBudget::new();
        // 1,800,000,000 is a whole minute (30,000,000 × 60).
        let start = 1_800_000_000;
        let mut written = Vec::new();
        let mut total = 0u64;
        for minute in 0..3u64 {
            let mut this_minute = 0;
            for i in 0..100_000u64 {
                let source = format!("198.51.{}.{}", i % 250, (i / 250) % 250);
                let out = budget.admit(
                    &source,
                    refused(&format!("peer:{source}:1"), "unknown credential id"),
                    at(start + minute * 60 + i * 59 / 100_000),
                );
                this_minute += out.len();
                written.extend(out);
                total += 1;
            }
            assert!(
                this_minute <= MAX_REFUSAL_ENTRIES_PER_MINUTE,
                "{this_minute}"
            );
        }
        written.extend(budget.finish());
        assert_eq!(written.iter().map(counted).sum::<u64>(), total);
    }

    #[test]
    fn what_is_not_a_refusal_passes_untouched() {
        let mut budget = AuditBudget::new();
        for _ in 0..100 {
            let accepted = AuditEvent {
                outcome: "accepted",
                ..refused("api_key:x", "client key …")
            };
            assert_eq!(
                budget.admit("192.0.2.1", accepted.clone(), at(0)),
                vec![accepted]
            );
        }
        assert!(budget.finish().is_empty());
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let a = source_of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = source_of("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = source_of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(source_of("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1");
    }
}
