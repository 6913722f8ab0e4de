//! The login, presence and routing state machines driven as a pair, in memory, with a simulated clock: a peer
//! ([`PeerLogin`], [`HeartbeatSchedule`]) and the relay ([`RelayLogin`], [`RelaySession`], [`PresenceBook`],
//! routing) over real wire frames, with an in-memory store of cmdop-fleet records. Time only moves when a test moves it: there is
//! no `sleep` here, and a test that waits three heartbeat intervals takes microseconds.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cmdop_fleet::{
    ApiKey, ApiKeySpec, CredentialId, CredentialRecord, CredentialSecret, Expected, Fleet, FleetId,
    FleetName, Machine, Operation, Role, SignedCapability, Timestamp, User, UserId, UserName,
    UserToken, UserTokenSpec,
};
use cmdop_identity::{Identity, Seed};
use cmdop_proto::e2e::StreamKind;
use cmdop_proto::login::{
    AgentLoginRequest, AuditEvent, ClientCredential, CredentialBusy, CredentialLookup, FleetLookup,
    FleetQuery, LoggedIn, LoginAction, LoginError, LoginFailure, LoginInput, LoginOutcome,
    LoginRequest, LoginStep, PeerLogin, RelayLogin, RelayLoginConfig, StoreRefusal, Time,
};
use cmdop_proto::presence::{
    HeartbeatError, HeartbeatSchedule, LAST_SEEN_EVERY, MISSED_HEARTBEATS, PRESENCE_FLUSH,
    PresenceBook, PresenceWrite, RelaySession, SessionAction, SessionInput,
};
use cmdop_proto::routing::{LockMaterial, RouteContext, resolve_route, scope};
use cmdop_proto::wire::{
    AUTH_CAPABILITY_GO_AWAY, CloseCode, ErrorCode, FrameDecoder, GoAway, ListMachines, OpenStream,
    PeerMessage, RelayMessage, encode,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

const HEARTBEAT: Duration = Duration::from_secs(30);
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
const LOGIN_DEADLINE: Duration = Duration::from_secs(10);
const EXPORTER: [u8; 32] = [0x5e; 32];
const START_UNIX: u64 = 1_800_000_000;

/// Simulated time: both clocks move together, only when a test says so.
struct Clock {
    start: Instant,
    elapsed: Duration,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    fn now(&self) -> Time {
        Time {
            instant: self.start + self.elapsed,
            unix: Timestamp::from_unix_seconds(START_UNIX + self.elapsed.as_secs()),
        }
    }

    /// Moves time forward to `at` (never back).
    fn advance_to(&mut self, at: Instant) {
        self.elapsed = self.elapsed.max(at.saturating_duration_since(self.start));
    }

    fn advance(&mut self, by: Duration) {
        self.elapsed += by;
    }
}

/// The relay's store, in memory, holding cmdop-fleet's records.
#[derive(Default)]
struct Store {
    fleets: Vec<Fleet>,
    trust: HashMap<FleetId, Identity>,
    credentials: HashMap<CredentialId, CredentialRecord>,
    users: HashMap<UserId, UserName>,
    machines: Vec<Machine>,
    used: Vec<CredentialId>,
    audit: Vec<AuditEvent>,
    heard: Vec<(cmdop_fleet::MachineId, Timestamp)>,
    /// The relay's presence in memory, and every batch of it written to `machines`.
    presence: PresenceBook,
    presence_writes: Vec<Vec<PresenceWrite>>,
}

impl Store {
    fn fleet(&mut self, name: &str, rng: &mut StdRng) -> FleetId {
        let fleet = Fleet {
            id: FleetId::generate(rng),
            name: FleetName::parse(name).unwrap(),
        };
        self.trust.insert(fleet.id, Identity::generate(rng));
        let id = fleet.id;
        self.fleets.push(fleet);
        id
    }

    fn api_key(
        &mut self,
        fleet: FleetId,
        role: Role,
        expires: Option<u64>,
        rng: &mut StdRng,
    ) -> CredentialSecret {
        let spec = ApiKeySpec {
            fleet,
            role,
            label: None,
            expires: expires.map(|secs| Timestamp::from_unix_seconds(START_UNIX + secs)),
        };
        let (record, secret) =
            ApiKey::issue(spec, Timestamp::from_unix_seconds(START_UNIX), rng).unwrap();
        self.credentials
            .insert(record.id, CredentialRecord::ApiKey(record));
        secret
    }

    fn user_token(&mut self, user: &str, fleets: &[FleetId], rng: &mut StdRng) -> CredentialSecret {
        let user = User {
            id: UserId::generate(rng),
            name: UserName::parse(user).unwrap(),
        };
        self.users.insert(user.id, user.name.clone());
        let spec = UserTokenSpec {
            user: user.id,
            fleets: fleets.iter().copied().collect(),
            label: None,
            expires: None,
        };
        let (record, secret) =
            UserToken::issue(spec, Timestamp::from_unix_seconds(START_UNIX), rng).unwrap();
        self.credentials
            .insert(record.id, CredentialRecord::UserToken(record));
        secret
    }

    fn revoke(&mut self, secret: &CredentialSecret, at: Timestamp) {
        match self.credentials.get_mut(&secret.id()).unwrap() {
            CredentialRecord::ApiKey(key) => key.revoked = Some(at),
            CredentialRecord::UserToken(token) => token.revoked = Some(at),
        }
    }

    fn lookup_credential(&self, id: CredentialId) -> CredentialLookup {
        let record = self.credentials.get(&id).cloned();
        let user = match &record {
            Some(CredentialRecord::UserToken(token)) => self.users.get(&token.user).cloned(),
            _ => None,
        };
        CredentialLookup {
            record,
            fleets: self.fleets.clone(),
            user,
        }
    }

    fn machines_of(&self, fleet: FleetId) -> Vec<Machine> {
        self.machines
            .iter()
            .filter(|m| m.fleet == fleet)
            .cloned()
            .collect()
    }

    /// What the relay reads on an agent's login: the fleet's machines with its key or hostname.
    fn machines_for_registration(&self, query: &FleetQuery) -> Vec<Machine> {
        self.machines_of(query.fleet)
            .into_iter()
            .filter(|m| m.public_key == query.public_key || m.hostname == query.hostname)
            .collect()
    }

    /// The relay's periodic presence flush: what the book says is due, written in one batch.
    fn flush_presence(&mut self) {
        let writes = self.presence.due();
        self.write_presence(writes);
    }

    /// What the relay writes as soon as a machine comes online or goes offline.
    fn write_presence_changes(&mut self) {
        let writes = self.presence.changes();
        self.write_presence(writes);
    }

    fn write_presence(&mut self, writes: Vec<PresenceWrite>) {
        for write in &writes {
            let machine = self.machines.iter_mut().find(|m| m.id == write.machine);
            let machine = machine.unwrap();
            machine.online = write.online;
            machine.last_heartbeat = Some(write.last_seen);
        }
        self.presence.written(&writes);
        if !writes.is_empty() {
            self.presence_writes.push(writes);
        }
    }

    fn store(&mut self, registration: &cmdop_fleet::Registration) -> Result<(), StoreRefusal> {
        let machine = &registration.machine;
        if self.machines.iter().any(|m| {
            m.fleet == machine.fleet && m.hostname == machine.hostname && m.id != machine.id
        }) {
            return Err(StoreRefusal::HostnameTaken);
        }
        self.machines.retain(|m| m.id != machine.id);
        self.machines.push(machine.clone());
        Ok(())
    }
}

/// How a connection ended, as the relay closed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Closed {
    code: CloseCode,
    reason: String,
}

/// The relay's end of one connection: the login, then the session, over real frames.
struct RelayEnd {
    /// The relay's number for this connection, as its presence book knows it.
    connection: u64,
    login: RelayLogin,
    session: Option<RelaySession>,
    logged_in: Option<LoggedIn>,
    decoder: FrameDecoder,
    to_peer: Vec<u8>,
    closed: Option<Closed>,
    failure: Option<LoginFailure>,
    /// What the driver answers a connection reservation with: `None` grants it, `Some(limit)` says the
    /// credential already holds `limit` connections.
    credential_full: Option<usize>,
}

impl RelayEnd {
    fn new(connection: u64, now: Time) -> Self {
        Self {
            connection,
            login: RelayLogin::new(RelayLoginConfig {
                nonce: [0xab; 32],
                exporter: EXPORTER,
                peer: "192.0.2.7:50000".to_owned(),
                deadline: now.instant + LOGIN_DEADLINE,
                heartbeat_interval: HEARTBEAT,
            }),
            session: None,
            logged_in: None,
            decoder: FrameDecoder::new(),
            to_peer: Vec::new(),
            closed: None,
            failure: None,
            credential_full: None,
        }
    }

    /// Decodes the peer's bytes and runs every message through the machines.
    fn receive(&mut self, bytes: &[u8], store: &mut Store, now: Time, rng: &mut StdRng) {
        let mut input = bytes;
        while let Some(message) = self.decoder.decode::<PeerMessage>(&mut input).unwrap() {
            if self.closed.is_some() {
                return;
            }
            match self.session.as_mut() {
                Some(session) => {
                    session.handle(SessionInput::Message(message), now);
                    self.drain_session(store, now);
                }
                None => {
                    self.login.handle(LoginInput::Message(message), now, rng);
                    self.drain_login(store, now, rng);
                }
            }
        }
    }

    fn drain_login(&mut self, store: &mut Store, now: Time, rng: &mut StdRng) {
        while let Some(action) = self.login.poll_action() {
            match action {
                LoginAction::Send(message) => self.to_peer.extend(encode(&message).unwrap()),
                LoginAction::LookUpCredential(id) => self.login.handle(
                    LoginInput::Credential(store.lookup_credential(id)),
                    now,
                    rng,
                ),
                LoginAction::LookUpFleet(query) => {
                    let lookup = FleetLookup {
                        machines: store.machines_for_registration(&query),
                        trust_key: store.trust[&query.fleet].public_key(),
                    };
                    self.login.handle(LoginInput::Fleet(lookup), now, rng);
                }
                LoginAction::Register(registration) => {
                    let stored = store.store(&registration);
                    self.login.handle(LoginInput::Stored(stored), now, rng);
                }
                LoginAction::MarkUsed(id) => store.used.push(id),
                LoginAction::ReserveConnection(_) => {
                    let reserved = match self.credential_full {
                        None => Ok(()),
                        Some(limit) => Err(CredentialBusy { limit }),
                    };
                    self.login.handle(LoginInput::Reserved(reserved), now, rng);
                }
                LoginAction::Audit(event) => store.audit.push(event),
                LoginAction::Close {
                    code,
                    reason,
                    failure,
                } => {
                    self.closed = Some(Closed { code, reason });
                    self.failure = Some(failure);
                }
                LoginAction::LoggedIn(peer) => {
                    if let LoggedIn::Agent(agent) = peer.as_ref() {
                        store
                            .presence
                            .online(agent.machine.id, self.connection, now.unix);
                        store.write_presence_changes();
                    }
                    self.logged_in = Some((*peer).clone());
                    self.session = Some(RelaySession::new(
                        *peer,
                        "192.0.2.7:50000".to_owned(),
                        HEARTBEAT,
                        now,
                    ));
                }
                other => panic!("unexpected login action {other:?}"),
            }
        }
    }

    fn drain_session(&mut self, store: &mut Store, now: Time) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        while let Some(action) = session.poll_action() {
            match action {
                SessionAction::Send(message) => self.to_peer.extend(encode(&message).unwrap()),
                SessionAction::Presence { machine, at } => {
                    store.heard.push((machine, at));
                    store.presence.heard(machine, self.connection, at);
                }
                SessionAction::LookUpMachines(access) => {
                    let machines = store.machines_of(access.fleet_id());
                    session.handle(SessionInput::Machines(machines), now);
                }
                SessionAction::Audit(event) => store.audit.push(event),
                SessionAction::Close { code, reason } => {
                    self.closed = Some(Closed { code, reason });
                }
                other => panic!("unexpected session action {other:?}"),
            }
        }
    }

    /// The connection is gone (the relay closed it, or the peer did): the relay's book hears of it.
    fn end(&mut self, store: &mut Store, now: Time) -> bool {
        let current = match &self.logged_in {
            Some(LoggedIn::Agent(agent)) => {
                store
                    .presence
                    .offline(agent.machine.id, self.connection, now.unix)
            }
            _ => false,
        };
        store.write_presence_changes();
        current
    }

    /// The time of the relay's next timer, if any.
    fn next_timeout(&self) -> Option<Instant> {
        match &self.session {
            Some(session) => session.poll_timeout(),
            None => self.login.poll_timeout(),
        }
    }

    fn fire_timers(&mut self, store: &mut Store, now: Time, rng: &mut StdRng) {
        match self.session.as_mut() {
            Some(session) => {
                session.handle_timeout(now);
                self.drain_session(store, now);
            }
            None => {
                self.login.handle_timeout(now);
                self.drain_login(store, now, rng);
            }
        }
    }

    /// The periodic re-check of the credential's standing against the store.
    fn recheck_standing(&mut self, store: &mut Store, now: Time) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let id = session.authenticated().credential_id();
        let standing = store.credentials[&id].standing(now.unix);
        session.handle(SessionInput::Standing(standing), now);
        self.drain_session(store, now);
    }

    fn take_to_peer(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.to_peer)
    }
}

/// Everything a test drives: the store, the clock, one connection's two ends.
struct Pair {
    store: Store,
    clock: Clock,
    rng: StdRng,
    relay: RelayEnd,
    peer_decoder: FrameDecoder,
    connections: u64,
}

impl Pair {
    fn new() -> Self {
        let clock = Clock::new();
        let relay = RelayEnd::new(1, clock.now());
        Self {
            store: Store::default(),
            clock,
            rng: StdRng::seed_from_u64(7),
            relay,
            peer_decoder: FrameDecoder::new(),
            connections: 1,
        }
    }

    /// A new connection on the same store and clock (the old one stays open until it is ended).
    fn reconnect(&mut self) -> RelayEnd {
        self.connections += 1;
        self.peer_decoder = FrameDecoder::new();
        std::mem::replace(
            &mut self.relay,
            RelayEnd::new(self.connections, self.clock.now()),
        )
    }

    /// Delivers `message` to the relay and returns what it answered.
    fn exchange(&mut self, message: &PeerMessage) -> Vec<RelayMessage> {
        let bytes = encode(message).unwrap();
        let now = self.clock.now();
        self.relay
            .receive(&bytes, &mut self.store, now, &mut self.rng);
        let answer = self.relay.take_to_peer();
        let mut input = answer.as_slice();
        let mut messages = Vec::new();
        while let Some(message) = self
            .peer_decoder
            .decode::<RelayMessage>(&mut input)
            .unwrap()
        {
            messages.push(message);
        }
        messages
    }

    /// Runs a whole login for `request` with `identity`; the peer's verdict.
    fn login(
        &mut self,
        request: LoginRequest,
        identity: &Identity,
        exporter: &[u8; 32],
    ) -> Result<LoginOutcome, LoginError> {
        let mut peer = PeerLogin::new(request, "cmdop-test 1", ANSWER_WITHIN);
        let mut outgoing = peer.hello(self.clock.now().instant);
        loop {
            let answers = self.exchange(&outgoing);
            let [answer] = answers.as_slice() else {
                panic!("expected one answer, got {answers:?}");
            };
            match peer.handle(answer.clone(), identity, exporter, self.clock.now().instant)? {
                LoginStep::Send(next) => outgoing = next,
                LoginStep::Done(outcome) => return Ok(outcome),
            }
        }
    }

    /// Like [`login`](Self::login), with the peer's login message changed by `edit` before it is sent (an
    /// older peer's, say).
    fn login_edited(
        &mut self,
        request: LoginRequest,
        identity: &Identity,
        edit: impl Fn(&mut PeerMessage),
    ) -> Result<LoginOutcome, LoginError> {
        let mut peer = PeerLogin::new(request, "cmdop-test 1", ANSWER_WITHIN);
        let mut outgoing = peer.hello(self.clock.now().instant);
        loop {
            edit(&mut outgoing);
            let answers = self.exchange(&outgoing);
            let [answer] = answers.as_slice() else {
                panic!("expected one answer, got {answers:?}");
            };
            match peer.handle(
                answer.clone(),
                identity,
                &EXPORTER,
                self.clock.now().instant,
            )? {
                LoginStep::Send(next) => outgoing = next,
                LoginStep::Done(outcome) => return Ok(outcome),
            }
        }
    }

    /// Feeds the logged-in session one input from the relay itself; returns what it sent the peer.
    fn session_input(&mut self, input: SessionInput) -> Vec<RelayMessage> {
        let now = self.clock.now();
        let session = self.relay.session.as_mut().unwrap();
        session.handle(input, now);
        self.relay.drain_session(&mut self.store, now);
        let answer = self.relay.take_to_peer();
        let mut bytes = answer.as_slice();
        let mut messages = Vec::new();
        while let Some(message) = self
            .peer_decoder
            .decode::<RelayMessage>(&mut bytes)
            .unwrap()
        {
            messages.push(message);
        }
        messages
    }

    /// Moves the clock to the relay's next timer and fires it.
    fn run_relay_timer(&mut self) {
        let at = self.relay.next_timeout().unwrap();
        self.clock.advance_to(at);
        let now = self.clock.now();
        self.relay.fire_timers(&mut self.store, now, &mut self.rng);
    }
}

fn identity(byte: u8) -> Identity {
    Identity::from_seed(&Seed::from_bytes([byte; 32]))
}

fn agent_request(key: &CredentialSecret, workspace: &str, hostname: &str) -> LoginRequest {
    LoginRequest::Agent(AgentLoginRequest {
        api_key: key.expose_text(),
        workspace: workspace.to_owned(),
        hostname: hostname.to_owned(),
        display_name: None,
        os: "linux".to_owned(),
        arch: "x86_64".to_owned(),
        agent_version: "0.1.0".to_owned(),
        labels: vec![("role".to_owned(), "web".to_owned())],
    })
}

fn client_request(key: &CredentialSecret) -> LoginRequest {
    LoginRequest::Client {
        credential: ClientCredential::new(&key.expose_text()),
    }
}

fn refused_code(result: &Result<LoginOutcome, LoginError>) -> ErrorCode {
    match result {
        Err(LoginError::Refused(error)) => error.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn an_agent_logs_in_registers_and_stays_online_on_heartbeats() {
    let mut pair = Pair::new();
    let prod = pair.store.fleet("prod", &mut pair.rng);
    let key = pair.store.api_key(prod, Role::Agent, None, &mut pair.rng);
    let agent = identity(1);
    let outcome = pair
        .login(agent_request(&key, "prod", "Web-1"), &agent, &EXPORTER)
        .unwrap();
    let LoginOutcome::Registered {
        registered,
        trust_key,
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(trust_key, pair.store.trust[&prod].public_key());
    assert_eq!(registered.heartbeat_interval_secs, 30);
    let [machine] = pair.store.machines.as_slice() else {
        panic!("{:?}", pair.store.machines);
    };
    assert_eq!(machine.id.to_bytes(), registered.machine_id.0);
    assert_eq!(
        machine.hostname.as_str(),
        "web-1",
        "hostnames are case-insensitive"
    );
    assert_eq!(machine.public_key, agent.public_key());
    assert_eq!(pair.store.used, vec![key.id()]);
    assert!(
        pair.store
            .audit
            .iter()
            .any(|e| e.action == "register" && e.outcome == "accepted")
    );

    // An hour of heartbeats on the agent's schedule keeps the session open; each is recorded.
    let mut schedule = HeartbeatSchedule::new(
        Duration::from_secs(registered.heartbeat_interval_secs.into()),
        ANSWER_WITHIN,
        pair.clock.now().instant,
    );
    for _ in 0..120 {
        pair.clock.advance_to(schedule.poll_timeout());
        let heartbeat = schedule
            .handle_timeout(pair.clock.now().instant)
            .unwrap()
            .unwrap();
        let answers = pair.exchange(&heartbeat);
        assert_eq!(answers, vec![RelayMessage::HeartbeatAck]);
        schedule.handle(&answers[0]).unwrap();
        assert!(
            pair.relay.closed.is_none(),
            "closed after {:?}",
            pair.clock.elapsed
        );
    }
    assert_eq!(pair.store.heard.len(), 120);
    assert_eq!(pair.clock.elapsed, HEARTBEAT * 120);

    // The same key coming back on a new connection is the same machine.
    pair.reconnect();
    let again = pair
        .login(agent_request(&key, "prod", "web-1"), &agent, &EXPORTER)
        .unwrap();
    let LoginOutcome::Registered {
        registered: again, ..
    } = again
    else {
        panic!("{again:?}");
    };
    assert_eq!(again.machine_id, registered.machine_id);
    assert_eq!(pair.store.machines.len(), 1);
}

#[test]
fn a_silent_agent_goes_offline_after_three_intervals_and_not_before() {
    let mut pair = Pair::new();
    let prod = pair.store.fleet("prod", &mut pair.rng);
    let key = pair.store.api_key(prod, Role::Agent, None, &mut pair.rng);
    pair.login(
        agent_request(&key, "prod", "web-1"),
        &identity(1),
        &EXPORTER,
    )
    .unwrap();
    let logged_in_at = pair.clock.elapsed;
    pair.run_relay_timer();
    assert_eq!(
        pair.relay.closed,
        Some(Closed {
            code: CloseCode::HEARTBEAT_TIMEOUT,
            reason: "no heartbeat".to_owned()
        })
    );
    assert_eq!(
        pair.clock.elapsed - logged_in_at,
        HEARTBEAT * MISSED_HEARTBEATS
    );
}

#[test]
fn an_unanswered_heartbeat_ends_the_agents_side() {
    let start = Instant::now();
    let mut schedule = HeartbeatSchedule::new(HEARTBEAT, ANSWER_WITHIN, start);
    assert_eq!(schedule.poll_timeout(), start + HEARTBEAT);
    assert_eq!(schedule.handle_timeout(start + HEARTBEAT / 2), Ok(None));
    assert_eq!(
        schedule.handle_timeout(start + HEARTBEAT),
        Ok(Some(PeerMessage::Heartbeat))
    );
    assert_eq!(schedule.poll_timeout(), start + HEARTBEAT + ANSWER_WITHIN);
    assert_eq!(
        schedule.handle_timeout(start + HEARTBEAT + ANSWER_WITHIN),
        Err(HeartbeatError::Unanswered(ANSWER_WITHIN))
    );
    assert!(matches!(
        schedule.handle(&RelayMessage::Machines(Vec::new())),
        Err(HeartbeatError::Unexpected("Machines"))
    ));
}

#[test]
fn a_revoked_credential_cuts_a_live_session_at_the_next_check() {
    let mut pair = Pair::new();
    let prod = pair.store.fleet("prod", &mut pair.rng);
    let member = pair.store.api_key(prod, Role::Member, None, &mut pair.rng);
    pair.login(client_request(&member), &identity(2), &EXPORTER)
        .unwrap();
    let now = pair.clock.now();
    pair.relay.recheck_standing(&mut pair.store, now);
    assert!(pair.relay.closed.is_none(), "a standing credential stays");

    pair.clock.advance(Duration::from_secs(5));
    let now = pair.clock.now();
    pair.store.revoke(&member, now.unix);
    pair.relay.recheck_standing(&mut pair.store, now);
    assert_eq!(
        pair.relay.closed,
        Some(Closed {
            code: CloseCode::CREDENTIAL_REVOKED,
            reason: "credential revoked".to_owned()
        })
    );
    let cut = pair.store.audit.last().unwrap();
    assert_eq!((cut.action, cut.outcome), ("disconnect", "done"));
    assert!(cut.detail.contains("credential revoked"), "{cut:?}");

    // And the same credential is refused at its next login.
    pair.reconnect();
    let again = pair.login(client_request(&member), &identity(2), &EXPORTER);
    assert_eq!(refused_code(&again), ErrorCode::AUTHENTICATION_FAILED);
    assert_eq!(pair.relay.failure, Some(LoginFailure::Revoked));
}

#[test]
fn a_credential_the_store_cannot_recheck_is_cut_and_told_to_come_back_later() {
    let mut pair = Pair::new();
    let prod = pair.store.fleet("prod", &mut pair.rng);
    let member = pair.store.api_key(prod, Role::Member, None, &mut pair.rng);
    pair.login(client_request(&member), &identity(2), &EXPORTER)
        .unwrap();
    let now = pair.clock.now();
    let session = pair.relay.session.as_mut().unwrap();
    session.handle(SessionInput::StandingUnknown, now);
    pair.relay.drain_session(&mut pair.store, now);
    // Fail closed: the session ends. The code is not "revoked": the credential may be fine, and a peer that
    // reconnects is checked afresh at login.
    assert_eq!(
        pair.relay.closed,
        Some(Closed {
            code: CloseCode::CREDENTIAL_UNCHECKED,
            reason: "the relay could not re-check the credential; reconnect later".to_owned()
        })
    );
    let cut = pair.store.audit.last().unwrap();
    assert_eq!((cut.action, cut.outcome), ("disconnect", "done"));
    assert!(cut.detail.contains("could not re-check"), "{cut:?}");
}

/// One member key cannot take every connection of the relay: past its per-credential limit a client login
/// is refused with BUSY (retry later), the limit named, and the refusal audited; nothing is welcomed.
/// A relay stopping on purpose tells an agent that understands it to come back, once, and goes on serving it
/// (heartbeats are still answered) until the relay closes the connection. A client, and an agent from before
/// the message, are told nothing: the close that follows is their signal, and an unknown message would read
/// to an older agent as a protocol error that stops it for good.
#[test]
fn a_stopping_relay_tells_agents_that_understand_it_when_to_come_back_and_nobody_else() {
    let go_away = GoAway {
        reconnect_after_ms: 250,
        spread_ms: 1_000,
    };
    let mut pair = Pair::new();
    let prod = pair.store.fleet("prod", &mut pair.rng);
    let agent_key = pair.store.api_key(prod, Role::Agent, None, &mut pair.rng);
    pair.login(
        agent_request(&agent_key, "prod", "web-1"),
        &identity(1),
        &EXPORTER,
    )
    .unwrap();
    assert_eq!(
        pair.session_input(SessionInput::Stopping(go_away)),
        vec![RelayMessage::GoAway(go_away)]
    );
    assert!(
        pair.session_input(SessionInput::Stopping(go_away))
            .is_empty(),
        "told twice"
    );
    assert_eq!(
        pair.exchange(&PeerMessage::Heartbeat),
        vec![RelayMessage::HeartbeatAck]
    );
    assert!(pair.relay.closed.is_none());

    pair.reconnect();
    pair.login_edited(
        agent_request(&agent_key, "prod", "web-2"),
        &identity(2),
        |message| {
            if let PeerMessage::AgentLogin(login) = message {
                login
                    .auth_capabilities
                    .retain(|c| c != AUTH_CAPABILITY_GO_AWAY);
            }
        },
    )
    .unwrap();
    assert!(
        pair.session_input(SessionInput::Stopping(go_away))
            .is_empty()
    );

    pair.reconnect();
    let member = pair.store.api_key(prod, Role::Member, None, &mut pair.rng);
    pair.login(client_request(&member), &identity(3), &EXPORTER)
        .unwrap();
    assert!(
        pair.session_input(SessionInput::Stopping(go_away))
            .is_empty()
    );
}

#[test]
fn a_credential_at_its_connection_limit_is_refused_busy_and_nothing_is_welcomed() {
    let mut pair = Pair::new();
    let prod = pair.store.fleet("prod", &mut pair.rng);
    let member = pair.store.api_key(prod, Role::Member, None, &mut pair.rng);
    pair.relay.credential_full = Some(64);
    let refused = pair.login(client_request(&member), &identity(2), &EXPORTER);
    let Err(LoginError::Refused(error)) = refused else {
        panic!("{refused:?}");
    };
    assert_eq!(error.code, ErrorCode::BUSY);
    assert!(
        error.message.contains("64 connections") && error.message.contains("close some"),
        "{}",
        error.message
    );
    assert_eq!(
        pair.relay.closed.as_ref().map(|c| c.code),
        Some(CloseCode::LOGIN_REFUSED)
    );
    assert!(pair.relay.logged_in.is_none());
    let entry = pair.store.audit.last().unwrap();
    assert_eq!((entry.action, entry.outcome), ("auth", "refused"));
    assert!(entry.detail.contains("connection limit"), "{entry:?}");
    // Below the limit the same credential logs in.
    pair.reconnect();
    pair.login(client_request(&member), &identity(2), &EXPORTER)
        .unwrap();
}

#[test]
fn an_expiring_credential_ends_its_session_at_expiry_without_a_store_check() {
    let mut pair = Pair::new();
    let prod = pair.store.fleet("prod", &mut pair.rng);
    let member = pair
        .store
        .api_key(prod, Role::Member, Some(90), &mut pair.rng);
    pair.login(client_request(&member), &identity(2), &EXPORTER)
        .unwrap();
    pair.run_relay_timer();
    assert_eq!(pair.clock.elapsed, Duration::from_secs(90));
    assert_eq!(
        pair.relay.closed,
        Some(Closed {
            code: CloseCode::CREDENTIAL_REVOKED,
            reason: "credential expired".to_owned()
        })
    );
}

#[test]
fn a_peer_that_never_finishes_is_cut_at_the_login_deadline() {
    let mut pair = Pair::new();
    let mut peer = PeerLogin::new(
        LoginRequest::Client {
            credential: ClientCredential::new("whatever"),
        },
        "slow",
        ANSWER_WITHIN,
    );
    let hello = peer.hello(pair.clock.now().instant);
    let answers = pair.exchange(&hello);
    assert!(matches!(answers.as_slice(), [RelayMessage::Challenge(_)]));
    pair.run_relay_timer();
    assert_eq!(pair.clock.elapsed, LOGIN_DEADLINE);
    assert_eq!(
        pair.relay.closed.as_ref().map(|c| c.code),
        Some(CloseCode::LOGIN_TIMEOUT)
    );
    assert_eq!(pair.relay.failure, Some(LoginFailure::Timeout));
    // The peer's own deadline says the same, from its side.
    assert_eq!(
        peer.handle_timeout(pair.clock.now().instant),
        Err(LoginError::Timeout(ANSWER_WITHIN))
    );
}

/// A peer's software string goes into the audit entry of its refusal. A hostile one (64 KiB, with terminal
/// escapes and a bidi override) must arrive there bounded and written out, never raw.
#[test]
fn a_hostile_software_string_reaches_the_audit_log_capped_and_escaped() {
    let mut pair = Pair::new();
    let hostile = format!(
        "evil\u{1b}]0;owned\u{7}\u{1b}[2J\r\n\u{202e}{}",
        "A".repeat(65_000)
    );
    let answers = pair.exchange(&PeerMessage::Hello(cmdop_proto::wire::Hello {
        version: cmdop_proto::wire::PROTOCOL_VERSION,
        role: cmdop_proto::wire::Role::Client,
        client_software: hostile,
    }));
    assert!(matches!(answers.as_slice(), [RelayMessage::Challenge(_)]));
    pair.exchange(&PeerMessage::ClientLogin(cmdop_proto::wire::ClientLogin {
        credential: "cmdop_ak_garbage".into(),
        public_key: cmdop_proto::wire::KeyBytes([0x11; 32]),
        signature: cmdop_proto::wire::SignatureBytes([0x22; 64]),
    }));
    let entry = pair.store.audit.last().unwrap();
    assert_eq!((entry.action, entry.outcome), ("auth", "refused"));
    assert!(entry.detail.contains("malformed credential"), "{entry:?}");
    assert!(entry.detail.contains("evil"), "{entry:?}");
    assert!(
        entry.detail.chars().count() <= 400,
        "{} characters",
        entry.detail.chars().count()
    );
    for forbidden in ['\u{1b}', '\u{7}', '\r', '\n', '\u{202e}'] {
        assert!(!entry.detail.contains(forbidden), "{:?}", entry.detail);
    }
    assert!(entry.detail.contains("\\e"), "{:?}", entry.detail);
}

#[test]
fn credential_failures_all_look_the_same_to_the_peer_and_differ_in_the_audit_log() {
    let mut pair = Pair::new();
    let prod = pair.store.fleet("prod", &mut pair.rng);
    let member = pair.store.api_key(prod, Role::Member, None, &mut pair.rng);
    let unknown = CredentialSecret::generate(cmdop_fleet::CredentialKind::ApiKey, &mut pair.rng);
    let mut words = Vec::new();
    for (request, reason) in [
        (client_request(&unknown), "unknown credential id"),
        (
            LoginRequest::Client {
                credential: ClientCredential::new("cmdop_ak_garbage"),
            },
            "malformed credential",
        ),
    ] {
        pair.reconnect();
        let result = pair.login(request, &identity(2), &EXPORTER);
        let Err(LoginError::Refused(error)) = result else {
            panic!("{result:?}");
        };
        assert_eq!(error.code, ErrorCode::AUTHENTICATION_FAILED);
        words.push(error.message);
        assert!(
            pair.store.audit.last().unwrap().detail.contains(reason),
            "{:?}",
            pair.store.audit.last()
        );
        assert_eq!(
            pair.relay.closed.as_ref().map(|c| c.code),
            Some(CloseCode::LOGIN_REFUSED)
        );
    }
    // A valid credential with a key proof over another connection's exporter: the relayed-signature attack.
    pair.reconnect();
    let replayed = pair.login(client_request(&member), &identity(2), &[0x11; 32]);
    let Err(LoginError::Refused(error)) = replayed else {
        panic!("{replayed:?}");
    };
    words.push(error.message);
    assert_eq!(pair.relay.failure, Some(LoginFailure::KeyProof));
    assert!(words.windows(2).all(|w| w[0] == w[1]), "{words:?}");
}

#[test]
fn roles_decide_who_may_enrol_and_who_may_log_in_as_a_client() {
    let mut pair = Pair::new();
    let prod = pair.store.fleet("prod", &mut pair.rng);
    let member = pair.store.api_key(prod, Role::Member, None, &mut pair.rng);
    let agent_key = pair.store.api_key(prod, Role::Agent, None, &mut pair.rng);
    let admin = pair.store.api_key(prod, Role::Admin, None, &mut pair.rng);

    let enrol_as_member = pair.login(agent_request(&member, "prod", "m"), &identity(3), &EXPORTER);
    assert_eq!(refused_code(&enrol_as_member), ErrorCode::FORBIDDEN);
    pair.reconnect();
    let client_as_agent = pair.login(client_request(&agent_key), &identity(3), &EXPORTER);
    assert_eq!(refused_code(&client_as_agent), ErrorCode::FORBIDDEN);
    pair.reconnect();
    let enrol_as_admin = pair.login(agent_request(&admin, "prod", "a"), &identity(3), &EXPORTER);
    assert!(enrol_as_admin.is_ok(), "{enrol_as_admin:?}");
    pair.reconnect();
    let bad_hostname = pair.login(
        agent_request(&agent_key, "prod", "no spaces"),
        &identity(4),
        &EXPORTER,
    );
    assert_eq!(refused_code(&bad_hostname), ErrorCode::INVALID_REGISTRATION);
    pair.reconnect();
    let mut bad_label = agent_request(&agent_key, "prod", "l");
    if let LoginRequest::Agent(request) = &mut bad_label {
        request.labels = vec![("Role".to_owned(), "web".to_owned())];
    }
    let refused = pair.login(bad_label, &identity(5), &EXPORTER);
    assert_eq!(refused_code(&refused), ErrorCode::INVALID_REGISTRATION);
    assert!(format!("{refused:?}").contains("label key"), "{refused:?}");
}

#[test]
fn another_key_cannot_take_a_registered_hostname() {
    let mut pair = Pair::new();
    let prod = pair.store.fleet("prod", &mut pair.rng);
    let key = pair.store.api_key(prod, Role::Agent, None, &mut pair.rng);
    pair.login(agent_request(&key, "prod", "db-1"), &identity(1), &EXPORTER)
        .unwrap();
    pair.reconnect();
    let taken = pair.login(agent_request(&key, "prod", "db-1"), &identity(9), &EXPORTER);
    assert_eq!(refused_code(&taken), ErrorCode::HOSTNAME_TAKEN);
    assert_eq!(pair.relay.failure, Some(LoginFailure::HostnameTaken));
    assert_eq!(pair.store.machines.len(), 1);
}

#[test]
fn a_fleet_outside_the_scope_looks_exactly_like_one_that_does_not_exist() {
    let mut pair = Pair::new();
    let alpha = pair.store.fleet("alpha", &mut pair.rng);
    pair.store.fleet("beta", &mut pair.rng);
    let key = pair.store.api_key(alpha, Role::Agent, None, &mut pair.rng);
    let mut answers = Vec::new();
    for workspace in ["beta", "nowhere", "Not A Name"] {
        pair.reconnect();
        let result = pair.login(agent_request(&key, workspace, "x"), &identity(1), &EXPORTER);
        let Err(LoginError::Refused(error)) = result else {
            panic!("{result:?}");
        };
        assert_eq!(error.code, ErrorCode::FLEET_NOT_FOUND);
        answers.push(error.message.replace(&format!("{workspace:?}"), "_"));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
}

#[test]
fn a_client_lists_the_machines_of_its_fleets_only_and_routes_with_a_bound_capability() {
    let mut pair = Pair::new();
    let alpha = pair.store.fleet("alpha", &mut pair.rng);
    let beta = pair.store.fleet("beta", &mut pair.rng);
    for (fleet, host, byte) in [(alpha, "a-1", 1), (beta, "b-1", 2)] {
        let key = pair.store.api_key(fleet, Role::Agent, None, &mut pair.rng);
        let name = pair
            .store
            .fleets
            .iter()
            .find(|f| f.id == fleet)
            .unwrap()
            .name
            .clone();
        pair.reconnect();
        pair.login(
            agent_request(&key, name.as_str(), host),
            &identity(byte),
            &EXPORTER,
        )
        .unwrap();
    }
    let token = pair.store.user_token("alice", &[alpha], &mut pair.rng);
    pair.reconnect();
    let client = identity(7);
    let welcome = pair
        .login(client_request(&token), &client, &EXPORTER)
        .unwrap();
    let LoginOutcome::Welcome(welcome) = welcome else {
        panic!("{welcome:?}");
    };
    assert_eq!(welcome.principal, "user alice");
    assert_eq!(welcome.fleets, vec!["alpha".to_owned()]);

    let listed = pair.exchange(&PeerMessage::ListMachines(ListMachines { workspace: None }));
    let [RelayMessage::Machines(machines)] = listed.as_slice() else {
        panic!("{listed:?}");
    };
    assert_eq!(
        machines
            .iter()
            .map(|m| m.hostname.as_str())
            .collect::<Vec<_>>(),
        vec!["a-1"]
    );
    let refused = pair.exchange(&PeerMessage::ListMachines(ListMachines {
        workspace: Some("beta".to_owned()),
    }));
    assert!(
        matches!(refused.as_slice(), [RelayMessage::Error(e)] if e.code == ErrorCode::FLEET_NOT_FOUND),
        "{refused:?}"
    );
    assert!(
        pair.relay.closed.is_none(),
        "a scope refusal keeps the connection"
    );

    // Routing: scope, resolve, and a capability for exactly this key, fleet, operation and time.
    let Some(LoggedIn::Client(session)) = pair.relay.logged_in.clone() else {
        panic!("not a client");
    };
    let request = OpenStream {
        workspace: None,
        machine: "a-1".to_owned(),
        kind: StreamKind::Exec.to_byte(),
    };
    let scoped = scope(&session, &request).unwrap();
    let now = pair.clock.now().unix;
    let unlocked = LockMaterial::default();
    let route = resolve_route(
        &scoped,
        &request,
        &pair.store.machines_of(alpha),
        &RouteContext {
            client_key: client.public_key(),
            trust_key: &pair.store.trust[&alpha],
            channel_id: [0x42; 16],
            now,
            lock: &unlocked,
        },
    )
    .unwrap();
    assert_eq!(route.machine.hostname.as_str(), "a-1");
    assert_eq!(route.header.channel_id, route.ready.channel_id);
    assert!(route.ready.lock.is_none());
    assert_eq!(
        route.stream_ready().unwrap().capability,
        route.ready.capability
    );
    let capability = SignedCapability::from_bytes(&route.ready.capability).unwrap();
    let trust = pair.store.trust[&alpha].public_key();
    let expected = Expected {
        client_key: client.public_key(),
        fleet: alpha,
        machine: route.machine.id,
        channel: [0x42; 16],
        operation: Operation::Exec,
        now,
    };
    capability.verify(&trust, &expected).unwrap();
    for wrong in [
        Expected {
            operation: Operation::Shell,
            ..expected
        },
        Expected {
            client_key: identity(8).public_key(),
            ..expected
        },
        Expected {
            channel: [0x43; 16],
            ..expected
        },
    ] {
        assert!(capability.verify(&trust, &wrong).is_err(), "{wrong:?}");
    }
    // A machine of the other fleet is not found, whatever its name.
    let other = OpenStream {
        machine: "b-1".to_owned(),
        ..request
    };
    let missing = resolve_route(
        &scoped,
        &other,
        &pair.store.machines,
        &RouteContext {
            client_key: client.public_key(),
            trust_key: &pair.store.trust[&alpha],
            channel_id: [0x43; 16],
            now,
            lock: &unlocked,
        },
    )
    .unwrap_err();
    assert_eq!(missing.code, ErrorCode::MACHINE_NOT_FOUND);
    assert!(scope(&session, &OpenStream { kind: 99, ..other }).is_err());
}

#[test]
fn messages_out_of_order_are_protocol_errors() {
    let mut pair = Pair::new();
    let answers = pair.exchange(&PeerMessage::Heartbeat);
    assert!(
        matches!(answers.as_slice(), [RelayMessage::Error(e)] if e.code == ErrorCode::UNEXPECTED_MESSAGE),
        "{answers:?}"
    );
    assert_eq!(pair.relay.failure, Some(LoginFailure::Protocol));
    pair.reconnect();
    let old = pair.exchange(&PeerMessage::Hello(cmdop_proto::wire::Hello {
        version: 0,
        role: cmdop_proto::wire::Role::Client,
        client_software: String::new(),
    }));
    assert!(
        matches!(old.as_slice(), [RelayMessage::Error(e)] if e.code == ErrorCode::UNSUPPORTED_VERSION),
        "{old:?}"
    );
}

/// Heartbeats only touch the relay's memory; the store gets the online state at the next flush and the
/// `last_seen` of an online machine about once a minute, never staler than the documented bound.
#[test]
fn heartbeats_reach_the_store_in_batches_within_the_staleness_bound() {
    let mut pair = Pair::new();
    let prod = pair.store.fleet("prod", &mut pair.rng);
    let key = pair.store.api_key(prod, Role::Agent, None, &mut pair.rng);
    pair.login(
        agent_request(&key, "prod", "web-1"),
        &identity(1),
        &EXPORTER,
    )
    .unwrap();
    let logged_in = pair.clock.now().unix;
    let machine = pair.store.machines[0].id;
    assert!(
        pair.store.machines[0].online,
        "coming online is written at once"
    );

    let mut schedule = HeartbeatSchedule::new(HEARTBEAT, ANSWER_WITHIN, pair.clock.now().instant);
    let bound = (LAST_SEEN_EVERY + PRESENCE_FLUSH).as_secs();
    let hour = Duration::from_secs(3600);
    while pair.clock.elapsed < hour {
        // The relay flushes every PRESENCE_FLUSH; heartbeats come when the agent's schedule says.
        pair.clock.advance(PRESENCE_FLUSH);
        if pair.clock.now().instant >= schedule.poll_timeout()
            && let Some(heartbeat) = schedule.handle_timeout(pair.clock.now().instant).unwrap()
        {
            let answers = pair.exchange(&heartbeat);
            schedule.handle(&answers[0]).unwrap();
        }
        pair.store.flush_presence();
        // Before the first heartbeat, the login is the last time the machine was heard from.
        let heard = pair.store.heard.last().map_or(logged_in, |(_, at)| *at);
        let stored = pair.store.machines[0].last_heartbeat.unwrap();
        assert!(
            heard.seconds_since(stored) <= bound,
            "stored last_seen {stored:?} is more than {bound} s behind the last heartbeat {heard:?}"
        );
    }
    let heartbeats = pair.store.heard.len();
    let writes: usize = pair.store.presence_writes.iter().map(Vec::len).sum();
    assert_eq!(heartbeats, 120);
    assert!(
        writes <= 1 + 3600 / LAST_SEEN_EVERY.as_secs() as usize,
        "{writes} presence writes for {heartbeats} heartbeats"
    );
    assert!(writes >= 3600 / (LAST_SEEN_EVERY + PRESENCE_FLUSH).as_secs() as usize);
    assert!(
        pair.store
            .presence_writes
            .iter()
            .all(|batch| batch.iter().all(|w| w.machine == machine && w.online))
    );
}

/// Only the newest connection of a machine decides its presence; when it ends, the store hears of it at once,
/// with the exact time, and the book forgets the machine.
#[test]
fn going_offline_is_written_at_once_and_a_replaced_connection_does_not_count() {
    let mut pair = Pair::new();
    let prod = pair.store.fleet("prod", &mut pair.rng);
    let key = pair.store.api_key(prod, Role::Agent, None, &mut pair.rng);
    let agent = identity(1);
    pair.login(agent_request(&key, "prod", "web-1"), &agent, &EXPORTER)
        .unwrap();
    pair.clock.advance(Duration::from_secs(5));
    let mut first = pair.reconnect();
    pair.login(agent_request(&key, "prod", "web-1"), &agent, &EXPORTER)
        .unwrap();
    let machine = pair.store.machines[0].id;
    assert_eq!(pair.store.presence.connection(machine), Some(2));

    // The replaced connection ends: the machine stays online.
    pair.clock.advance(Duration::from_secs(5));
    let now = pair.clock.now();
    assert!(!first.end(&mut pair.store, now));
    pair.store.flush_presence();
    assert!(pair.store.machines[0].online);

    // The current one ends: offline, at that time, written at once; then the book is empty.
    pair.clock.advance(Duration::from_secs(7));
    let now = pair.clock.now();
    assert!(pair.relay.end(&mut pair.store, now));
    assert!(!pair.store.machines[0].online);
    assert_eq!(pair.store.machines[0].last_heartbeat, Some(now.unix));
    assert_eq!(pair.store.presence.online_count(), 0);
    assert!(pair.store.presence.due().is_empty());
    let mut listed = pair.store.machines[0].clone();
    pair.store.presence.apply(&mut listed);
    assert!(!listed.online);
}

/// A relay stopping on purpose spreads its agents' return so that they arrive at the rate it can admit.
#[test]
fn a_stopping_relay_spreads_its_agents_over_a_window_it_can_admit() {
    use cmdop_proto::presence::come_back_window;
    assert_eq!(come_back_window(10_000, 500), Duration::from_secs(20));
    assert_eq!(come_back_window(3, 500), Duration::from_secs(1));
    assert_eq!(come_back_window(1_000_000, 100), Duration::from_secs(300));
    assert_eq!(come_back_window(10, 0), Duration::from_secs(10));
}
