//! After login, as sans-IO state machines: the relay's view of one logged-in connection ([`RelaySession`]:
//! heartbeats and presence, listing, the standing of the credential), the relay's presence of every machine
//! kept in memory and written to its store in batches ([`PresenceBook`]), and an agent's heartbeat schedule
//! ([`HeartbeatSchedule`]).
//!
//! ```text
//!  agent (HeartbeatSchedule)                  relay (RelaySession)
//!  handle_timeout(now) ── Heartbeat ────────▶ handle(Message): Presence{online}, Send(HeartbeatAck)
//!  handle_ack(now)     ◀─ HeartbeatAck ─────┘
//!                                             silent for 3 intervals ─▶ Close(HEARTBEAT_TIMEOUT)
//!                                             Standing(Err(revoked)) or expiry ─▶ Close(CREDENTIAL_REVOKED)
//!                                             StandingUnknown (store failed) ─▶ Close(CREDENTIAL_UNCHECKED)
//!  finish streams, reconnect after   ◀─ GoAway ─┘ Stopping (relay stops on purpose) ─▶ Send(GoAway), once,
//!  the close (ComeBack)                          to a go-away-v1 agent; the driver then closes (code 7)
//! ```
//!
//! The relay keeps one `RelaySession` per connection; the driver feeds it messages, the answers of the store
//! and the periodic re-check of the credential, and calls `handle_timeout` at `poll_timeout`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use cmdop_fleet::{
    AuthError, Authenticated, FleetAccess, FleetId, FleetName, Machine, MachineId, Permission,
    Timestamp, list_machines,
};

use crate::login::{
    AuditEvent, ClientSession, LoggedIn, Time, actor, machine_info, no_such_fleet, scope_refusal,
};
use crate::wire::{
    CloseCode, ErrorCode, ErrorMessage, GoAway, ListMachines, PeerMessage, RelayMessage,
    machines_answer,
};

/// A machine is offline after this many heartbeat intervals without one.
pub const MISSED_HEARTBEATS: u32 = 3;

/// What the relay feeds a logged-in connection's state machine.
#[derive(Debug)]
#[non_exhaustive]
// Inputs are moved into `handle` once and never stored, so their size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum SessionInput {
    /// A message the peer sent on its control stream.
    Message(PeerMessage),
    /// The answer to [`SessionAction::LookUpMachines`]: the machines of that fleet.
    Machines(Vec<Machine>),
    /// The credential's standing as the store has it now (re-checked periodically, and when it changes).
    Standing(Result<(), AuthError>),
    /// The store could not say whether the credential still stands (a re-check failed). The session ends:
    /// serving on while revocations cannot be seen would fail open.
    StandingUnknown,
    /// The store could not answer.
    StoreFailed,
    /// A message the relay sends the peer on its own initiative (the fleet's lock to an agent, when it
    /// changes).
    Push(RelayMessage),
    /// The relay is stopping on purpose (a restart, an upgrade): an agent that understands it is told, once,
    /// when to come back. A client is not told anything: the close that follows (code 7) is its signal to
    /// reconnect at once, which it already does. The session goes on until the driver closes the connection.
    Stopping(GoAway),
}

/// What a logged-in connection's state machine asks its driver to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionAction {
    /// Send this message on the control stream.
    Send(RelayMessage),
    /// The machine was heard from at this time (a heartbeat); record it.
    Presence {
        /// The machine.
        machine: MachineId,
        /// When.
        at: Timestamp,
    },
    /// Look up the machines of this fleet and answer with [`SessionInput::Machines`].
    LookUpMachines(FleetAccess),
    /// Append this to the audit log.
    Audit(AuditEvent),
    /// The session is over: flush what was sent, then close the connection with this code and reason.
    Close {
        /// The QUIC application close code.
        code: CloseCode,
        /// The reason, for the peer.
        reason: String,
    },
}

/// The relay's state of one logged-in connection.
pub struct RelaySession {
    peer: LoggedIn,
    /// The peer's address, for the audit log.
    address: String,
    /// For agents: the heartbeat interval; silence for [`MISSED_HEARTBEATS`] of them ends the session.
    heartbeat_interval: Duration,
    last_heard: Instant,
    /// When the credential expires, on the monotonic clock.
    expires: Option<Instant>,
    /// A `ListMachines` waiting for its lookup.
    listing: Option<FleetAccess>,
    closed: bool,
    /// Whether the peer was told to go away (the relay is stopping).
    told_to_go: bool,
    actions: VecDeque<SessionAction>,
}

impl RelaySession {
    /// The session of `peer`, connected from `address`, that just logged in at `now`.
    pub fn new(peer: LoggedIn, address: String, heartbeat_interval: Duration, now: Time) -> Self {
        let authenticated = match &peer {
            LoggedIn::Agent(agent) => &agent.authenticated,
            LoggedIn::Client(client) => &client.authenticated,
        };
        let expires = authenticated
            .expires()
            .map(|at| now.instant + Duration::from_secs(at.seconds_since(now.unix)));
        Self {
            peer,
            address,
            heartbeat_interval,
            last_heard: now.instant,
            expires,
            listing: None,
            closed: false,
            told_to_go: false,
            actions: VecDeque::new(),
        }
    }

    /// Who this session is.
    pub fn peer(&self) -> &LoggedIn {
        &self.peer
    }

    /// The credential behind this session.
    pub fn authenticated(&self) -> &Authenticated {
        match &self.peer {
            LoggedIn::Agent(agent) => &agent.authenticated,
            LoggedIn::Client(client) => &client.authenticated,
        }
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The next thing the driver must do, if any.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<SessionAction> {
        let action = self.actions.pop_front();
        if action.is_none() && self.actions.capacity() > 0 {
            // An idle session holds no queue: a relay keeps thousands of them between heartbeats.
            self.actions = VecDeque::new();
        }
        action
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let silence = match self.peer {
            LoggedIn::Agent(_) => Some(self.last_heard + self.silence_limit()),
            LoggedIn::Client(_) => None,
        };
        match (silence, self.expires) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends the session if the agent went silent or the credential expired by `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.closed {
            return;
        }
        if self.expires.is_some_and(|at| now.instant >= at) {
            self.cut("credential expired");
            return;
        }
        if matches!(self.peer, LoggedIn::Agent(_))
            && now.instant >= self.last_heard + self.silence_limit()
        {
            self.close(CloseCode::HEARTBEAT_TIMEOUT, "no heartbeat");
        }
    }

    /// Feeds one input.
    pub fn handle(&mut self, input: SessionInput, now: Time) {
        if self.closed {
            return;
        }
        match input {
            SessionInput::Message(message) => self.on_message(message, now),
            SessionInput::Machines(machines) => self.on_machines(&machines),
            SessionInput::Standing(Ok(())) => {}
            SessionInput::Standing(Err(AuthError::Expired { .. })) => {
                self.cut("credential expired")
            }
            SessionInput::Standing(Err(_)) => self.cut("credential revoked"),
            SessionInput::StandingUnknown => self.cut_with(
                CloseCode::CREDENTIAL_UNCHECKED,
                "the relay could not re-check the credential; reconnect later",
            ),
            SessionInput::Push(message) => self.send(message),
            SessionInput::Stopping(go_away) => self.go_away(go_away),
            SessionInput::StoreFailed => {
                self.listing = None;
                self.send(RelayMessage::Error(ErrorMessage {
                    code: ErrorCode::INTERNAL,
                    message: "relay internal error; retry later".to_owned(),
                }));
            }
        }
    }

    /// Tells an agent that understands it to come back as `go_away` says, once.
    fn go_away(&mut self, go_away: GoAway) {
        let understands = matches!(&self.peer, LoggedIn::Agent(agent) if agent.go_away);
        if understands && !std::mem::replace(&mut self.told_to_go, true) {
            self.send(RelayMessage::GoAway(go_away));
        }
    }

    fn silence_limit(&self) -> Duration {
        self.heartbeat_interval.saturating_mul(MISSED_HEARTBEATS)
    }

    fn on_message(&mut self, message: PeerMessage, now: Time) {
        match (&self.peer, message) {
            (_, PeerMessage::Goodbye) => self.close(CloseCode::NORMAL, "bye"),
            (LoggedIn::Agent(agent), PeerMessage::Heartbeat) => {
                let machine = agent.machine.id;
                self.last_heard = now.instant;
                self.actions.push_back(SessionAction::Presence {
                    machine,
                    at: now.unix,
                });
                self.send(RelayMessage::HeartbeatAck);
            }
            (LoggedIn::Agent(_), _) => {
                self.protocol_error("agents may only send Heartbeat or Goodbye after registering")
            }
            (LoggedIn::Client(_), PeerMessage::Heartbeat) => self.send(RelayMessage::HeartbeatAck),
            (LoggedIn::Client(client), PeerMessage::ListMachines(request))
                if self.listing.is_none() =>
            {
                match list_access(client, &request) {
                    Ok(access) => {
                        self.listing = Some(access.clone());
                        self.actions
                            .push_back(SessionAction::LookUpMachines(access));
                    }
                    Err(refusal) => self.send(RelayMessage::Error(refusal)),
                }
            }
            (LoggedIn::Client(_), _) => self
                .protocol_error("clients may only send requests after logging in, one at a time"),
        }
    }

    fn on_machines(&mut self, machines: &[Machine]) {
        let Some(access) = self.listing.take() else {
            return;
        };
        match list_machines(&access, machines) {
            Ok(listed) => {
                for part in machines_answer(listed.map(machine_info).collect()) {
                    self.send(part);
                }
            }
            Err(err) => self.send(RelayMessage::Error(scope_refusal(&err))),
        }
    }

    fn send(&mut self, message: RelayMessage) {
        self.actions.push_back(SessionAction::Send(message));
    }

    fn protocol_error(&mut self, message: &str) {
        self.send(RelayMessage::Error(ErrorMessage {
            code: ErrorCode::UNEXPECTED_MESSAGE,
            message: message.to_owned(),
        }));
        self.close(CloseCode::PROTOCOL_ERROR, message);
    }

    /// Ends the session because its credential no longer stands, and says so in the audit log.
    fn cut(&mut self, reason: &str) {
        self.cut_with(CloseCode::CREDENTIAL_REVOKED, reason);
    }

    /// Ends the session over its credential with `code`, and says so in the audit log.
    fn cut_with(&mut self, code: CloseCode, reason: &str) {
        let authenticated = self.authenticated();
        let fleet = match &self.peer {
            LoggedIn::Agent(agent) => Some(agent.access.fleet_id()),
            LoggedIn::Client(_) => None,
        };
        let event = AuditEvent {
            fleet,
            actor: format!("credential:{}", authenticated.credential_id()),
            action: "disconnect",
            outcome: "done",
            detail: format!("{reason}: live connection from {} closed", self.address),
        };
        self.actions.push_back(SessionAction::Audit(event));
        self.close(code, reason);
    }

    fn close(&mut self, code: CloseCode, reason: &str) {
        self.closed = true;
        self.actions.push_back(SessionAction::Close {
            code,
            reason: reason.to_owned(),
        });
    }
}

impl fmt::Debug for RelaySession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelaySession")
            .field("actor", &actor(self.authenticated()))
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// The fleet a client's `ListMachines` asks for, with permission to list it.
fn list_access(
    client: &ClientSession,
    request: &ListMachines,
) -> Result<FleetAccess, ErrorMessage> {
    let name = match request.workspace.as_deref().map(FleetName::parse) {
        None => None,
        Some(Ok(name)) => Some(name),
        Some(Err(_)) => {
            let asked = request.workspace.as_deref().unwrap_or_default();
            return Err(ErrorMessage {
                code: ErrorCode::FLEET_NOT_FOUND,
                message: no_such_fleet(asked),
            });
        }
    };
    client
        .authenticated
        .workspace_access(name.as_ref(), &client.fleets, Permission::List)
        .map_err(|err| scope_refusal(&err))
}

/// The fleet a logged-in peer belongs to, for agents.
pub fn agent_fleet(session: &RelaySession) -> Option<FleetId> {
    match session.peer() {
        LoggedIn::Agent(agent) => Some(agent.access.fleet_id()),
        LoggedIn::Client(_) => None,
    }
}

/// Why an agent's heartbeats stopped working.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    /// The relay did not acknowledge a heartbeat in time.
    #[error("the relay did not answer a heartbeat within {0:?}; check the relay and the network")]
    Unanswered(Duration),
    /// The relay sent something other than an acknowledgement.
    #[error("unexpected relay message {0} on the control stream")]
    Unexpected(&'static str),
}

/// An agent's heartbeat schedule: one heartbeat per interval, each acknowledged within a timeout.
#[derive(Debug, Clone)]
pub struct HeartbeatSchedule {
    interval: Duration,
    answer_within: Duration,
    next: Instant,
    unanswered_since: Option<Instant>,
}

impl HeartbeatSchedule {
    /// The first heartbeat one `interval` after `now`; each must be answered within `answer_within`.
    pub fn new(interval: Duration, answer_within: Duration, now: Instant) -> Self {
        Self {
            interval,
            answer_within,
            next: now + interval,
            unanswered_since: None,
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Instant {
        match self.unanswered_since {
            Some(sent) => sent + self.answer_within,
            None => self.next,
        }
    }

    /// At `now`: a heartbeat to send, nothing, or the error of an unanswered one.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<Option<PeerMessage>, HeartbeatError> {
        if let Some(sent) = self.unanswered_since {
            if now >= sent + self.answer_within {
                return Err(HeartbeatError::Unanswered(self.answer_within));
            }
            return Ok(None);
        }
        if now < self.next {
            return Ok(None);
        }
        self.unanswered_since = Some(now);
        // Missed ticks are not made up: the next heartbeat is one interval after this one.
        self.next = now + self.interval;
        Ok(Some(PeerMessage::Heartbeat))
    }

    /// Feeds a message from the relay's control stream.
    pub fn handle(&mut self, message: &RelayMessage) -> Result<(), HeartbeatError> {
        match message {
            RelayMessage::HeartbeatAck => {
                self.unanswered_since = None;
                Ok(())
            }
            other => Err(HeartbeatError::Unexpected(crate::login::message_name(
                other,
            ))),
        }
    }
}

/// How long a relay that stops on purpose should ask its agents to spread their return over, so that `online`
/// agents coming back uniformly within it arrive at no more than `admit_per_second` logins a second: at least
/// a second, at most five minutes. This is what a go-away message's "come back within" field carries
/// (cmdop-client's `ComeBack`); the agents' side picks a moment within it at random.
pub fn come_back_window(online: usize, admit_per_second: u32) -> Duration {
    let rate = u64::from(admit_per_second.max(1));
    let online = u64::try_from(online).unwrap_or(u64::MAX);
    let millis = online.saturating_mul(1000) / rate;
    Duration::from_millis(millis).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

/// How often a relay writes what changed in its [`PresenceBook`] to its store.
pub const PRESENCE_FLUSH: Duration = Duration::from_secs(1);

/// How stale the stored `last_seen` of an online machine may get before the [`PresenceBook`] writes it again.
pub const LAST_SEEN_EVERY: Duration = Duration::from_secs(60);

/// The relay's presence of every machine it serves, in memory; the store follows, heartbeats in batches.
///
/// A heartbeat only moves a time in memory. Coming online and going offline are rare and matter to whoever
/// reads the store (the admin verbs, `status`), so the relay writes them as they happen
/// ([`changes`](Self::changes)). The `last_seen` of online machines goes to the store in batches
/// ([`due`](Self::due), which the relay writes every [`PRESENCE_FLUSH`] in one transaction) once the stored one
/// is [`LAST_SEEN_EVERY`] old. So the stored `last_seen` of an online machine is at most `LAST_SEEN_EVERY` +
/// `PRESENCE_FLUSH` older than the last heartbeat the relay heard, and a machine that went offline has its
/// exact time written with its going offline. 10,000 agents heartbeating every 30 s thus cost one transaction
/// a second of about 170 rows, instead of 333 separate writes a second on the heartbeat path.
///
/// Connections are numbered by the relay; only the newest connection of a machine decides its presence (an
/// older one is replaced, and its heartbeats and its end no longer count). Offline machines leave the book
/// once their offline state is written: it holds the online machines, and little else.
#[derive(Debug, Clone)]
pub struct PresenceBook {
    entries: HashMap<MachineId, PresenceEntry>,
    /// Machines whose `online` changed since it was last written.
    changed: HashSet<MachineId>,
    last_seen_every: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PresenceEntry {
    /// The connection deciding the machine's presence, while it is online.
    connection: Option<u64>,
    last_seen: Timestamp,
    /// The `online` and `last_seen` last written to the store by this relay, if any.
    stored: Option<(bool, Timestamp)>,
}

/// One machine's presence to write to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceWrite {
    /// The machine.
    pub machine: MachineId,
    /// Whether it is online.
    pub online: bool,
    /// When it was last heard from.
    pub last_seen: Timestamp,
}

impl Default for PresenceBook {
    fn default() -> Self {
        Self::new(LAST_SEEN_EVERY)
    }
}

impl PresenceBook {
    /// An empty book that rewrites an online machine's `last_seen` once it is `last_seen_every` old.
    pub fn new(last_seen_every: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            changed: HashSet::new(),
            last_seen_every: last_seen_every.as_secs().max(1),
        }
    }

    /// `machine` logged in on `connection` at `now`; returns the connection it replaces, which the relay
    /// closes.
    pub fn online(&mut self, machine: MachineId, connection: u64, now: Timestamp) -> Option<u64> {
        let entry = self.entries.entry(machine).or_insert(PresenceEntry {
            connection: None,
            last_seen: now,
            stored: None,
        });
        entry.last_seen = now;
        let replaced = entry.connection.replace(connection);
        if replaced.is_none() {
            self.changed.insert(machine);
        }
        replaced
    }

    /// `machine` was heard from on `connection` (a heartbeat) at `now`.
    pub fn heard(&mut self, machine: MachineId, connection: u64, now: Timestamp) {
        if let Some(entry) = self.entries.get_mut(&machine)
            && entry.connection == Some(connection)
        {
            entry.last_seen = entry.last_seen.max(now);
        }
    }

    /// `connection` of `machine` ended at `now`. Returns whether it was the one deciding the machine's
    /// presence (then the machine is offline now).
    pub fn offline(&mut self, machine: MachineId, connection: u64, now: Timestamp) -> bool {
        match self.entries.get_mut(&machine) {
            Some(entry) if entry.connection == Some(connection) => {
                entry.connection = None;
                entry.last_seen = entry.last_seen.max(now);
                self.changed.insert(machine);
                true
            }
            _ => false,
        }
    }

    /// The connection deciding `machine`'s presence, if it is online.
    pub fn connection(&self, machine: MachineId) -> Option<u64> {
        self.entries.get(&machine).and_then(|e| e.connection)
    }

    /// How many machines are online.
    pub fn online_count(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.connection.is_some())
            .count()
    }

    /// Corrects a machine read from the store with what the book knows: whether it is online (the book is
    /// authoritative) and when it was last heard from (the later of the two).
    pub fn apply(&self, machine: &mut Machine) {
        match self.entries.get(&machine.id) {
            Some(entry) => {
                machine.online = entry.connection.is_some();
                machine.last_heartbeat = Some(
                    machine
                        .last_heartbeat
                        .map_or(entry.last_seen, |stored| stored.max(entry.last_seen)),
                );
            }
            None => machine.online = false,
        }
    }

    /// The machines that came online or went offline since their presence was last written, to write at
    /// once; a few entries, whatever the number of machines. Hand them back to [`written`](Self::written).
    pub fn changes(&self) -> Vec<PresenceWrite> {
        self.changed
            .iter()
            .filter_map(|machine| {
                let entry = self.entries.get(machine)?;
                self.is_due(entry, false)
                    .then_some(write_of(*machine, entry))
            })
            .collect()
    }

    /// Everything the store needs now: the [`changes`](Self::changes) not yet written, and the `last_seen` of
    /// online machines whose stored one is too old. Hand the writes back to [`written`](Self::written).
    pub fn due(&self) -> Vec<PresenceWrite> {
        self.entries
            .iter()
            .filter(|(_, entry)| self.is_due(entry, true))
            .map(|(machine, entry)| write_of(*machine, entry))
            .collect()
    }

    fn is_due(&self, entry: &PresenceEntry, with_last_seen: bool) -> bool {
        let online = entry.connection.is_some();
        match entry.stored {
            None => true,
            Some((stored_online, _)) if stored_online != online => true,
            Some((_, stored_seen)) if online => {
                with_last_seen && entry.last_seen.seconds_since(stored_seen) >= self.last_seen_every
            }
            Some((_, stored_seen)) => stored_seen != entry.last_seen,
        }
    }

    /// Records that `writes` (from [`due`](Self::due)) are in the store. A machine whose offline state is
    /// stored, and that has not come back meanwhile, leaves the book.
    pub fn written(&mut self, writes: &[PresenceWrite]) {
        for write in writes {
            let Some(entry) = self.entries.get_mut(&write.machine) else {
                continue;
            };
            entry.stored = Some((write.online, write.last_seen));
            if write.online == entry.connection.is_some() {
                self.changed.remove(&write.machine);
            }
            if !write.online && entry.connection.is_none() && entry.last_seen == write.last_seen {
                self.entries.remove(&write.machine);
            }
        }
        if self.entries.capacity() > 64 && self.entries.capacity() > 4 * self.entries.len() {
            // After a storm of disconnects the table shrinks back rather than keeping its peak size.
            self.entries.shrink_to_fit();
        }
        if self.changed.capacity() > 64 && self.changed.is_empty() {
            self.changed.shrink_to_fit();
        }
    }
}

fn write_of(machine: MachineId, entry: &PresenceEntry) -> PresenceWrite {
    PresenceWrite {
        machine,
        online: entry.connection.is_some(),
        last_seen: entry.last_seen,
    }
}
