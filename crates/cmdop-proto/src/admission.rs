//! Which connection attempts the relay lets start logging in, as a sans-IO decision: the table of attempts not
//! yet logged in, with address validation under load, a cap per source and a fair share when it is full.
//!
//! Every attempt holds a slot from its first packet until it logs in or fails, for at most the login deadline.
//! Three rules keep a flood from locking everyone out:
//!
//! - **Address validation when load rises.** Once [`AdmissionConfig::retry_from`] attempts are pending, an
//!   attempt from an address not yet validated is answered with a QUIC Retry (a stateless
//!   packet carrying a token); only a sender that receives at its address comes back, with the token. Spoofed
//!   Initials then never take a slot. Below that load nothing changes, so an ordinary reconnect of a whole
//!   fleet pays no extra round trip.
//! - **A cap per source** (an IPv4 address or an IPv6 /64, see [`crate::audit_budget::source_of`]):
//!   [`AdmissionConfig::max_per_source`] pending attempts each.
//! - **A fair share when full.** A new attempt takes the slot of the oldest attempt of the source holding the
//!   most, as long as that source holds at least as many as the newcomer's source would: a flood from many
//!   addresses rotates through the table instead of freezing it, so an attempt that finishes its login in
//!   less time than the flood takes to cycle the table gets in. A source never displaces itself or a lighter
//!   one.
//!
//! ```text
//!  admit(source, validated) ─▶ Accept(ticket) | AcceptEvicting{ticket, evicted} | Retry | Refuse(why)
//!  done(ticket)                   (logged in, refused, timed out or evicted: the slot is free)
//! ```

use std::collections::{BTreeMap, HashMap};

/// The admission limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Attempts pending at once (the relay's `max_unauthenticated`).
    pub max_pending: usize,
    /// Pending attempts of one source at once.
    pub max_per_source: usize,
    /// From this many pending attempts on, an unvalidated address gets a Retry first.
    pub retry_from: usize,
}

impl AdmissionConfig {
    /// The relay's defaults for `max_pending` slots: half of them per source (a script running many commands
    /// at once, or a NAT in front of many machines reconnecting after a relay restart, is not refused), Retry
    /// from a quarter full.
    pub fn for_slots(max_pending: usize) -> Self {
        Self {
            max_pending,
            max_per_source: (max_pending / 2).max(1),
            retry_from: (max_pending / 4).max(1),
        }
    }
}

/// One admitted attempt's slot; hand it back with [`Admission::done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

/// Why an attempt was refused.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source already has [`AdmissionConfig::max_per_source`] attempts pending.
    SourceBusy,
    /// Every slot is taken by sources holding no more than this one would.
    Full,
}

/// What to do with a new attempt.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Let it log in.
    Accept(Ticket),
    /// Let it log in, and end the attempt holding `evicted` to make room.
    AcceptEvicting {
        /// The new attempt's slot.
        ticket: Ticket,
        /// The attempt to end now.
        evicted: Ticket,
    },
    /// Answer with a QUIC Retry: the sender must prove it receives at its address.
    Retry,
    /// Refuse it.
    Refuse(Refusal),
}

/// A pending attempt.
#[derive(Debug, Clone)]
struct Pending {
    source: String,
}

/// The table of attempts not yet logged in.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    next: u64,
    /// Pending attempts by ticket; tickets grow with time, so the first of a source's is its oldest.
    pending: BTreeMap<Ticket, Pending>,
    /// Pending attempts per source, oldest first.
    by_source: HashMap<String, Vec<Ticket>>,
}

impl Admission {
    /// An empty table.
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            config,
            next: 0,
            pending: BTreeMap::new(),
            by_source: HashMap::new(),
        }
    }

    /// Attempts pending now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Decides on a new attempt from `source`; `validated` says whether its address is proven (it came back
    /// with a Retry token, or a token from an earlier connection).
    pub fn admit(&mut self, source: &str, validated: bool) -> Admit {
        if !validated && self.pending.len() >= self.config.retry_from {
            return Admit::Retry;
        }
        let held = self.by_source.get(source).map_or(0, Vec::len);
        if held >= self.config.max_per_source {
            return Admit::Refuse(Refusal::SourceBusy);
        }
        if self.pending.len() < self.config.max_pending {
            return Admit::Accept(self.insert(source));
        }
        // Full: the heaviest source (the oldest attempt among equals) gives up its oldest attempt, if it
        // holds at least as many as this source will.
        let heaviest = self
            .by_source
            .iter()
            .filter_map(|(name, tickets)| {
                tickets.first().map(|oldest| (tickets.len(), *oldest, name))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        match heaviest {
            Some((count, oldest, name)) if count > held && name != source => {
                self.done(oldest);
                let ticket = self.insert(source);
                Admit::AcceptEvicting {
                    ticket,
                    evicted: oldest,
                }
            }
            _ => Admit::Refuse(Refusal::Full),
        }
    }

    /// Frees the slot of `ticket` (logged in, failed, timed out or evicted); freeing twice does nothing.
    pub fn done(&mut self, ticket: Ticket) {
        let Some(pending) = self.pending.remove(&ticket) else {
            return;
        };
        if let Some(tickets) = self.by_source.get_mut(&pending.source) {
            tickets.retain(|t| *t != ticket);
            if tickets.is_empty() {
                self.by_source.remove(&pending.source);
            }
        }
    }

    fn insert(&mut self, source: &str) -> Ticket {
        let ticket = Ticket(self.next);
        self.next = self.next.wrapping_add(1);
        self.pending.insert(
            ticket,
            Pending {
                source: source.to_owned(),
            },
        );
        self.by_source
            .entry(source.to_owned())
            .or_default()
            .push(ticket);
        ticket
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AdmissionConfig {
        AdmissionConfig {
            max_pending: 8,
            max_per_source: 3,
            retry_from: 2,
        }
    }

    fn ticket(admit: Admit) -> Ticket {
        match admit {
            Admit::Accept(ticket) | Admit::AcceptEvicting { ticket, .. } => ticket,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn below_the_retry_load_everyone_gets_in_without_a_round_trip() {
        let mut table = Admission::new(config());
        assert!(matches!(table.admit("a", false), Admit::Accept(_)));
        assert!(matches!(table.admit("b", false), Admit::Accept(_)));
        // From two pending on, an unproven address must come back with a Retry token.
        assert_eq!(table.admit("c", false), Admit::Retry);
        assert!(matches!(table.admit("c", true), Admit::Accept(_)));
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share() {
        let mut table = Admission::new(config());
        for _ in 0..3 {
            ticket(table.admit("flood", true));
        }
        assert_eq!(
            table.admit("flood", true),
            Admit::Refuse(Refusal::SourceBusy)
        );
        assert!(matches!(table.admit("person", true), Admit::Accept(_)));
    }

    #[test]
    fn a_full_table_rotates_the_heaviest_source_out_and_never_the_lightest() {
        let mut table = Admission::new(AdmissionConfig {
            max_pending: 4,
            max_per_source: 4,
            retry_from: 4,
        });
        let first = ticket(table.admit("flood", true));
        for _ in 0..3 {
            ticket(table.admit("flood", true));
        }
        // A newcomer displaces the flood's oldest attempt.
        assert_eq!(
            table.admit("person", true),
            Admit::AcceptEvicting {
                ticket: Ticket(4),
                evicted: first
            }
        );
        // The flood cannot displace its own attempts or the newcomer's.
        assert_eq!(table.admit("flood", true), Admit::Refuse(Refusal::Full));
        assert_eq!(table.pending(), 4);
    }

    #[test]
    fn a_flood_from_many_addresses_cycles_through_and_a_quick_login_survives_it() {
        let mut table = Admission::new(AdmissionConfig::for_slots(128));
        let mut flood = 0u32;
        let mut arrive = |table: &mut Admission, n: u32| {
            for _ in 0..n {
                flood += 1;
                let source = format!("10.{}.{}.{}", flood >> 16, (flood >> 8) & 255, flood & 255);
                // Every flood address answers the Retry (a real host), so only the table's rules apply.
                let admitted = match table.admit(&source, false) {
                    Admit::Retry => table.admit(&source, true),
                    other => other,
                };
                assert!(
                    matches!(admitted, Admit::Accept(_) | Admit::AcceptEvicting { .. }),
                    "{admitted:?}"
                );
            }
        };
        arrive(&mut table, 1_000);
        assert_eq!(table.pending(), 128);
        // A person arrives mid-flood, is let in, and finishes logging in before 127 more flood attempts come.
        let person = match table.admit("192.0.2.50", false) {
            Admit::Retry => table.admit("192.0.2.50", true),
            other => other,
        };
        let person = ticket(person);
        arrive(&mut table, 127);
        assert!(
            table.pending.contains_key(&person),
            "the person was evicted too early"
        );
        table.done(person);
        table.done(person);
        assert_eq!(table.pending(), 127);
    }
}
