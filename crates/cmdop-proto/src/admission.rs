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
//!   one, and no attempt is displaced before [`AdmissionConfig::min_age`]: when the table is full of young
//!   attempts the newcomer is refused (and retries later) instead. Without that floor a reconnect storm of a
//!   real fleet, thousands of machines each from its own address, turned the table into a queue in which every
//!   attempt was displaced before its login could finish, and nobody got in.
//!
//! ```text
//!  admit(source, validated) ─▶ Accept(ticket) | AcceptEvicting{ticket, evicted} | Retry | Refuse(why)
//!  done(ticket)                   (logged in, refused, timed out or evicted: the slot is free)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// How long an attempt keeps its slot before a newcomer may take it: several times a login's round trips and
/// work, under a flood of silent attempts a fraction of the time they would otherwise hold it (the login
/// deadline).
pub const MIN_AGE: Duration = Duration::from_millis(250);

/// The admission limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Attempts pending at once (the relay's `max_unauthenticated`).
    pub max_pending: usize,
    /// Pending attempts of one source at once.
    pub max_per_source: usize,
    /// From this many pending attempts on, an unvalidated address gets a Retry first.
    pub retry_from: usize,
    /// An attempt younger than this is never displaced to make room.
    pub min_age: Duration,
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
            min_age: MIN_AGE,
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
    /// When it was admitted, on the caller's monotonic clock.
    since: Duration,
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

    /// Decides on a new attempt from `source` arriving at `now` (a monotonic clock of the caller's, such as the
    /// time since it started); `validated` says whether its address is proven (it came back with a Retry token,
    /// or a token from an earlier connection).
    pub fn admit(&mut self, source: &str, validated: bool, now: Duration) -> Admit {
        if !validated && self.pending.len() >= self.config.retry_from {
            return Admit::Retry;
        }
        let held = self.by_source.get(source).map_or(0, Vec::len);
        if held >= self.config.max_per_source {
            return Admit::Refuse(Refusal::SourceBusy);
        }
        if self.pending.len() < self.config.max_pending {
            return Admit::Accept(self.insert(source, now));
        }
        // Full: the heaviest source (the oldest attempt among equals) gives up its oldest attempt, if it
        // holds at least as many as this source will and that attempt has had its minimum time.
        let old_enough = |ticket: &Ticket| {
            self.pending
                .get(ticket)
                .is_some_and(|p| now.saturating_sub(p.since) >= self.config.min_age)
        };
        let heaviest = self
            .by_source
            .iter()
            .filter_map(|(name, tickets)| {
                tickets
                    .first()
                    .filter(|oldest| old_enough(oldest))
                    .map(|oldest| (tickets.len(), *oldest, name))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        match heaviest {
            Some((count, oldest, name)) if count > held && name != source => {
                self.done(oldest);
                let ticket = self.insert(source, now);
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

    fn insert(&mut self, source: &str, now: Duration) -> Ticket {
        let ticket = Ticket(self.next);
        self.next = self.next.wrapping_add(1);
        self.pending.insert(
            ticket,
            Pending {
                source: source.to_owned(),
                since: now,
            },
        );
        self.by_source
            .entry(source.to_owned())
            .or_default()
            .push(ticket);
        ticket
    }
}

/// Attempts that found every slot taken (or their source's share), waiting for one instead of being refused.
///
/// A refused attempt backs off, and a machine refused a few times over waits its longest backoff (30 s) before
/// it tries again, whatever the relay could take meanwhile: in a reconnect storm of 10,000 agents that, not
/// the relay's work, set the p99. A waiting attempt costs the relay only what its transport keeps of its first packets
/// (capped by the endpoint's incoming buffers), and gets the next free slot, oldest first. The room is bounded
/// in total and per source, like every other pre-login resource, and nobody waits longer than `max_wait`:
/// past that the caller refuses the attempt, well before the peer's own connection timeout.
#[derive(Debug)]
pub struct WaitingRoom<T> {
    queue: std::collections::VecDeque<Waiting<T>>,
    per_source: HashMap<String, usize>,
    capacity: usize,
    per_source_cap: usize,
    max_wait: Duration,
}

#[derive(Debug)]
struct Waiting<T> {
    source: String,
    since: Duration,
    item: T,
}

impl<T> WaitingRoom<T> {
    /// An empty room for at most `capacity` attempts, `per_source_cap` of one source, none for longer than
    /// `max_wait`.
    pub fn new(capacity: usize, per_source_cap: usize, max_wait: Duration) -> Self {
        Self {
            queue: std::collections::VecDeque::new(),
            per_source: HashMap::new(),
            capacity,
            per_source_cap,
            max_wait,
        }
    }

    /// Attempts waiting now.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues `item`, an attempt from `source` arriving at `now`; hands it back when the room or the source's
    /// share of it is full (the caller then refuses it).
    pub fn push(&mut self, source: &str, item: T, now: Duration) -> Result<(), T> {
        let held = self.per_source.get(source).copied().unwrap_or(0);
        if self.queue.len() >= self.capacity || held >= self.per_source_cap {
            return Err(item);
        }
        *self.per_source.entry(source.to_owned()).or_default() += 1;
        self.queue.push_back(Waiting {
            source: source.to_owned(),
            since: now,
            item,
        });
        Ok(())
    }

    /// Takes out every attempt that has waited `max_wait` or longer by `now`, for the caller to refuse.
    pub fn expire(&mut self, now: Duration) -> Vec<T> {
        let mut expired = Vec::new();
        while self
            .queue
            .front()
            .is_some_and(|w| now.saturating_sub(w.since) >= self.max_wait)
        {
            if let Some(waiting) = self.pop() {
                expired.push(waiting.item);
            }
        }
        expired
    }

    /// When the longest-waiting attempt runs out of time (on the caller's clock), if anybody waits.
    pub fn next_expiry(&self) -> Option<Duration> {
        self.queue.front().map(|w| w.since + self.max_wait)
    }

    /// The attempt `index` places from the front (0: the longest-waiting) and its source, without taking it
    /// out. A caller looks past the front when the front's source is at its share of the slots, so that one
    /// source's attempts cannot hold up everybody else's.
    pub fn peek(&self, index: usize) -> Option<(&str, &T)> {
        self.queue.get(index).map(|w| (w.source.as_str(), &w.item))
    }

    /// Takes out the attempt `index` places from the front.
    pub fn take(&mut self, index: usize) -> Option<T> {
        self.remove(index).map(|w| w.item)
    }

    /// Takes out the longest-waiting attempt.
    pub fn take_front(&mut self) -> Option<T> {
        self.take(0)
    }

    fn pop(&mut self) -> Option<Waiting<T>> {
        self.remove(0)
    }

    fn remove(&mut self, index: usize) -> Option<Waiting<T>> {
        let waiting = self.queue.remove(index)?;
        if let Some(held) = self.per_source.get_mut(&waiting.source) {
            *held -= 1;
            if *held == 0 {
                self.per_source.remove(&waiting.source);
            }
        }
        Some(waiting)
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
            min_age: MIN_AGE,
        }
    }

    /// A moment on the test's clock, this many milliseconds in; every attempt in these tests is old enough to
    /// be displaced unless a test says otherwise.
    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    const LATER: Duration = Duration::from_secs(60);

    fn ticket(admit: Admit) -> Ticket {
        match admit {
            Admit::Accept(ticket) | Admit::AcceptEvicting { ticket, .. } => ticket,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn below_the_retry_load_everyone_gets_in_without_a_round_trip() {
        let mut table = Admission::new(config());
        assert!(matches!(table.admit("a", false, LATER), Admit::Accept(_)));
        assert!(matches!(table.admit("b", false, LATER), Admit::Accept(_)));
        // From two pending on, an unproven address must come back with a Retry token.
        assert_eq!(table.admit("c", false, LATER), Admit::Retry);
        assert!(matches!(table.admit("c", true, LATER), Admit::Accept(_)));
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share() {
        let mut table = Admission::new(config());
        for _ in 0..3 {
            ticket(table.admit("flood", true, LATER));
        }
        assert_eq!(
            table.admit("flood", true, LATER),
            Admit::Refuse(Refusal::SourceBusy)
        );
        assert!(matches!(
            table.admit("person", true, LATER),
            Admit::Accept(_)
        ));
    }

    #[test]
    fn a_full_table_rotates_the_heaviest_source_out_and_never_the_lightest() {
        let mut table = Admission::new(AdmissionConfig {
            max_pending: 4,
            max_per_source: 4,
            retry_from: 4,
            min_age: MIN_AGE,
        });
        let first = ticket(table.admit("flood", true, at(0)));
        for ms in 1..4 {
            ticket(table.admit("flood", true, at(ms)));
        }
        // While the flood's attempts are young, a newcomer waits its turn (refused: it retries).
        assert_eq!(
            table.admit("person", true, at(100)),
            Admit::Refuse(Refusal::Full)
        );
        // Once they have had their time, a newcomer displaces the flood's oldest attempt.
        assert_eq!(
            table.admit("person", true, at(300)),
            Admit::AcceptEvicting {
                ticket: Ticket(4),
                evicted: first
            }
        );
        // The flood cannot displace its own attempts or the newcomer's.
        assert_eq!(
            table.admit("flood", true, LATER),
            Admit::Refuse(Refusal::Full)
        );
        assert_eq!(table.pending(), 4);
    }

    /// Attempts from `count` addresses of their own (10.x.y.z), one every `every_ms`, from `start_ms` on; each
    /// answers the Retry (a real host), so only the table's rules apply. Returns how many were let in.
    fn arrivals(
        table: &mut Admission,
        first: u32,
        count: u32,
        start_ms: u64,
        every_ms: u64,
    ) -> usize {
        let mut admitted = 0;
        for n in 0..count {
            let id = first + n;
            let source = format!("10.{}.{}.{}", id >> 16, (id >> 8) & 255, id & 255);
            let now = at(start_ms + u64::from(n) * every_ms);
            let decision = match table.admit(&source, false, now) {
                Admit::Retry => table.admit(&source, true, now),
                other => other,
            };
            if matches!(decision, Admit::Accept(_) | Admit::AcceptEvicting { .. }) {
                admitted += 1;
            }
        }
        admitted
    }

    #[test]
    fn a_flood_from_many_addresses_cycles_through_and_a_quick_login_survives_it() {
        let mut table = Admission::new(AdmissionConfig::for_slots(128));
        // 250 silent attempts a second from 1,000 addresses: each slot lives about half a second, past the
        // minimum age, so every attempt is let in and the table rotates.
        assert_eq!(arrivals(&mut table, 0, 1_000, 0, 4), 1_000);
        assert_eq!(table.pending(), 128);
        // A person arrives mid-flood, is let in, and finishes logging in while the flood goes on.
        let now = at(4_000);
        let person = match table.admit("192.0.2.50", false, now) {
            Admit::Retry => table.admit("192.0.2.50", true, now),
            other => other,
        };
        let person = ticket(person);
        arrivals(&mut table, 1_000, 127, 4_004, 4);
        assert!(
            table.pending.contains_key(&person),
            "the person was evicted too early"
        );
        table.done(person);
        table.done(person);
        assert_eq!(table.pending(), 127);
    }

    /// A reconnect storm: 10,000 machines, each from its own address, arrive within 10 s. Without the minimum
    /// age every arrival displaced the oldest attempt, each slot lived 13 ms, and no login that takes longer
    /// could finish; now an attempt keeps its slot for at least `MIN_AGE`, and the rest are refused and retry.
    #[test]
    fn a_reconnect_storm_from_many_addresses_lets_attempts_finish() {
        let mut table = Admission::new(AdmissionConfig::for_slots(128));
        let mut admitted_at = HashMap::new();
        let mut refused = 0;
        for id in 0..10_000u32 {
            let source = format!("10.{}.{}.{}", id >> 16, (id >> 8) & 255, id & 255);
            let now = at(u64::from(id));
            match table.admit(&source, true, now) {
                Admit::Accept(ticket) => {
                    admitted_at.insert(ticket, now);
                }
                Admit::AcceptEvicting { ticket, evicted } => {
                    let age = now - admitted_at[&evicted];
                    assert!(age >= MIN_AGE, "an attempt lost its slot after {age:?}");
                    admitted_at.insert(ticket, now);
                }
                Admit::Refuse(Refusal::Full) => refused += 1,
                other => panic!("{other:?}"),
            }
        }
        // Every 250 ms the 128 slots can change hands once: at most 41 rounds in 10 s, and they do rotate.
        let admitted = admitted_at.len();
        assert!(
            (128 * 30..=128 * 41).contains(&admitted),
            "{admitted} let in"
        );
        assert_eq!(admitted + refused, 10_000);
    }

    #[test]
    fn the_waiting_room_serves_oldest_first_within_its_bounds() {
        let mut room = WaitingRoom::new(3, 2, Duration::from_secs(3));
        let at = Duration::from_millis;
        assert!(room.push("a", 1, at(0)).is_ok());
        assert!(room.push("a", 2, at(10)).is_ok());
        // The source's share is full; another source still gets in, up to the room's size.
        assert_eq!(room.push("a", 3, at(20)), Err(3));
        assert!(room.push("b", 4, at(30)).is_ok());
        assert_eq!(room.push("c", 5, at(40)), Err(5));
        assert_eq!(room.peek(0), Some(("a", &1)));
        assert_eq!(room.peek(2), Some(("b", &4)));
        assert_eq!(room.peek(3), None);
        assert_eq!(room.take_front(), Some(1));
        // A place taken out is a place free again, for the room and for its source.
        assert!(room.push("a", 6, at(50)).is_ok());
        assert_eq!(room.next_expiry(), Some(at(3010)));
        assert_eq!(room.expire(at(3009)), Vec::<i32>::new());
        assert_eq!(room.expire(at(3030)), vec![2, 4]);
        assert_eq!(room.len(), 1);
        // Taken from the middle: its source's place is free again too.
        assert!(room.push("b", 7, at(3040)).is_ok());
        assert_eq!(room.take(1), Some(7));
        assert!(room.push("b", 8, at(3050)).is_ok());
        assert!(room.push("b", 9, at(3060)).is_ok());
        assert_eq!(room.take_front(), Some(6));
        assert_eq!(room.take_front(), Some(8));
        assert_eq!(room.take_front(), Some(9));
        assert!(room.is_empty());
        assert_eq!(room.next_expiry(), None);
    }
}
