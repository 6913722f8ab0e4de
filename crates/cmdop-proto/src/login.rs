//! Logging in to the relay, as two sans-IO state machines: the relay's half ([`RelayLogin`]) and the peer's
//! half ([`PeerLogin`]), for agents and clients alike.
//!
//! ```text
//!  peer (PeerLogin)                       relay (RelayLogin)                      the relay's store
//!  hello() ── Hello{version, role} ──────▶ handle(Message)
//!                                 ◀────── Send(Challenge{nonce})
//!  handle(Challenge) ── AgentLogin | ClientLogin{credential, key, signature} ─▶ LookUpCredential(id) ─▶
//!                                          handle(Credential{record, fleets}) ◀──────────────────────────
//!                                            authenticate (cmdop-fleet), verify the key proof
//!                                            agent: LookUpFleet ─▶ register (cmdop-fleet) ─▶ Register ─▶
//!                                 ◀────── Send(Registered | Welcome), LoggedIn
//! ```
//!
//! Neither machine touches a socket, a clock or an RNG of its own: messages, lookup answers and [`Time`] come
//! in through `handle`, randomness through the caller's RNG, and what to do comes out of `poll_action` (relay)
//! or the returned step (peer). The signature binds the relay's fresh challenge and the TLS exporter of this
//! very connection ([`login_transcript`]), so a proof is useless on any other connection. Specified in
//! `docs/protocol.md` ("Login"); the decisions (credential, scope, registration) are cmdop-fleet's.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use cmdop_fleet::{
    AgentInfo, AuthError, Authenticated, CredentialId, CredentialKind, CredentialRecord,
    CredentialSecret, DisplayName, Enrolment, Fleet, FleetAccess, FleetId, FleetName, Hostname,
    LabelError, Machine, MachineLabels, NameError, Permission, Registration, RegistrationError,
    ScopeError, Timestamp, UserName, register,
};
use cmdop_identity::{Identity, PublicKey, Purpose, Signature};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::display;
use crate::wire::{
    AUTH_CAPABILITY_ED25519, AUTH_CAPABILITY_FLEET_LOCK, AUTH_CAPABILITY_GO_AWAY, AgentLogin,
    Challenge, ClientLogin, CloseCode, EXPORTER_LEN, ErrorCode, ErrorMessage, Hello, IdBytes,
    KeyBytes, MachineInfo, PROTOCOL_VERSION, PeerMessage, Registered, RelayMessage, Role,
    SignatureBytes, Welcome, login_transcript,
};

/// A point in time as both clocks see it: the monotonic one for deadlines and timers, the wall clock for
/// credential expiry and what is stored. The caller reads both once and passes them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    /// Monotonic time, for deadlines.
    pub instant: Instant,
    /// Wall-clock time, for expiry and records.
    pub unix: Timestamp,
}

impl Time {
    /// This time moved `by` later on both clocks (whole seconds on the wall clock).
    #[must_use]
    pub fn after(self, by: Duration) -> Self {
        Self {
            instant: self.instant + by,
            unix: self.unix.saturating_add_seconds(by.as_secs()),
        }
    }
}

/// Why a login or a logged-in session failed, as the relay counts it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoginFailure {
    /// The peer did not finish logging in before the deadline.
    Timeout,
    /// The peer broke the login protocol (wrong message, unsupported version).
    Protocol,
    /// The credential is malformed, unknown or has the wrong secret.
    Credential,
    /// The credential was revoked.
    Revoked,
    /// The credential has expired.
    Expired,
    /// The key proof signature is invalid.
    KeyProof,
    /// The credential's role may not do what was asked.
    Role,
    /// The requested fleet is not in the credential's scope.
    Scope,
    /// The agent lacks a required capability.
    Capability,
    /// Another machine of the fleet has the hostname.
    HostnameTaken,
    /// The agent reported a hostname, display name or system description that is not valid.
    InvalidRegistration,
    /// The relay's store failed.
    Internal,
    /// The credential already holds as many connections as one credential may.
    CredentialBusy,
}

impl LoginFailure {
    /// Whether the credential was looked at (an authentication failure) rather than the protocol broken
    /// before that (a handshake failure). The relay counts the two apart.
    pub fn is_authentication(self) -> bool {
        !matches!(self, Self::Timeout | Self::Protocol | Self::Internal)
    }
}

/// One line for the relay's audit log; the relay adds the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The fleet concerned, if known.
    pub fleet: Option<FleetId>,
    /// Who acted: `peer:<addr>`, `api_key:<id>` or `user_token:<id>`.
    pub actor: String,
    /// What happened: `auth`, `register`, `login`, `disconnect`, `session`.
    pub action: &'static str,
    /// `accepted`, `refused`, `done`, `closed` or `cut`.
    pub outcome: &'static str,
    /// Details, including the refusal reason.
    pub detail: String,
}

/// The audit actor of a credential: `api_key:<id>` or `user_token:<id>`.
pub fn actor(authenticated: &Authenticated) -> String {
    match authenticated.kind() {
        CredentialKind::UserToken => format!("user_token:{}", authenticated.credential_id()),
        _ => format!("api_key:{}", authenticated.credential_id()),
    }
}

/// What the relay's store says about a presented credential, answering [`LoginAction::LookUpCredential`].
#[derive(Debug, Clone)]
pub struct CredentialLookup {
    /// The record stored under the presented id, if any.
    pub record: Option<CredentialRecord>,
    /// Every fleet the relay has; scope decides which of them the credential reaches.
    pub fleets: Vec<Fleet>,
    /// The name of the user holding the credential, for a user token.
    pub user: Option<UserName>,
}

/// What the relay's store says about the fleet an agent enrols into, answering [`LoginAction::LookUpFleet`].
#[derive(Debug, Clone)]
pub struct FleetLookup {
    /// The fleet's machines that [`FleetQuery`] selects (a handful at most). More machines of the fleet, up to
    /// all of them, give the same answer; machines of other fleets are ignored. A relay with thousands of
    /// machines per fleet reads these few by index instead of the whole fleet on every agent login.
    pub machines: Vec<Machine>,
    /// The fleet's trust key, which the agent pins: capabilities must carry its signature.
    pub trust_key: PublicKey,
}

/// The credential already holds as many connections as one credential may: the answer to
/// [`LoginAction::ReserveConnection`] when the driver has no slot left for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialBusy {
    /// The most connections one credential may hold.
    pub limit: usize,
}

/// The machines an agent's registration depends on: those of its fleet with its key (the same machine,
/// coming back), or with a hostname or display name equal, ignoring ASCII case, to the hostname or display
/// name it asks for (another key may hold the hostname, and no name may shadow another machine's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetQuery {
    /// The fleet enrolled into.
    pub fleet: FleetId,
    /// The agent's proven key.
    pub public_key: PublicKey,
    /// The hostname it asks for.
    pub hostname: Hostname,
    /// The display name it asks for, if any.
    pub name: Option<DisplayName>,
}

/// Why storing a registration failed in a way the peer should hear about.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreRefusal {
    /// Another machine took the hostname between the lookup and the write.
    HostnameTaken,
    /// The store failed; the peer may retry later.
    Internal,
}

/// What the relay feeds its login machine.
#[derive(Debug)]
#[non_exhaustive]
// Inputs are moved into `handle` once and never stored, so their size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum LoginInput {
    /// A message the peer sent on its control stream.
    Message(PeerMessage),
    /// The answer to [`LoginAction::LookUpCredential`].
    Credential(CredentialLookup),
    /// The answer to [`LoginAction::LookUpFleet`].
    Fleet(FleetLookup),
    /// The answer to [`LoginAction::Register`].
    Stored(Result<(), StoreRefusal>),
    /// The answer to [`LoginAction::ReserveConnection`].
    Reserved(Result<(), CredentialBusy>),
    /// The store could not answer a lookup.
    StoreFailed,
}

/// A logged-in agent.
#[derive(Debug, Clone)]
pub struct AgentSession {
    /// The credential it logged in with.
    pub authenticated: Authenticated,
    /// Its access to the fleet it enrolled into.
    pub access: FleetAccess,
    /// The machine as stored.
    pub machine: Machine,
    /// Whether the machine was registered for the first time.
    pub is_new: bool,
    /// Whether the agent understands the fleet lock ([`AUTH_CAPABILITY_FLEET_LOCK`]): it gets the fleet's lock
    /// after `Registered` and whenever it changes.
    pub fleet_lock: bool,
    /// Whether the agent understands [`RelayMessage::GoAway`] ([`AUTH_CAPABILITY_GO_AWAY`]): a relay stopping on
    /// purpose tells it when to come back.
    pub go_away: bool,
}

/// What an agent said it understands, from its `auth_capabilities`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct AgentFeatures {
    /// [`AUTH_CAPABILITY_FLEET_LOCK`].
    fleet_lock: bool,
    /// [`AUTH_CAPABILITY_GO_AWAY`].
    go_away: bool,
}

impl AgentFeatures {
    fn of(login: &AgentLogin) -> Self {
        let has = |wanted: &str| login.auth_capabilities.iter().any(|c| c == wanted);
        Self {
            fleet_lock: has(AUTH_CAPABILITY_FLEET_LOCK),
            go_away: has(AUTH_CAPABILITY_GO_AWAY),
        }
    }
}

/// A logged-in client.
#[derive(Debug, Clone)]
pub struct ClientSession {
    /// The credential it logged in with.
    pub authenticated: Authenticated,
    /// Every fleet the relay had at login; scope picks the credential's.
    pub fleets: Vec<Fleet>,
    /// The key the client proved; capabilities are issued for it.
    pub client_key: PublicKey,
    /// Who the credential belongs to, for display.
    pub description: String,
}

impl ClientSession {
    /// The names of the fleets in the credential's scope.
    pub fn fleet_names(&self) -> Vec<String> {
        in_scope(&self.authenticated, &self.fleets)
            .map(|f| f.name.to_string())
            .collect()
    }
}

/// Who finished logging in.
#[derive(Debug, Clone)]
pub enum LoggedIn {
    /// An agent, registered as a machine.
    Agent(Box<AgentSession>),
    /// A person or a script.
    Client(Box<ClientSession>),
}

/// What the relay's login machine asks its driver to do, in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoginAction {
    /// Send this message on the control stream.
    Send(RelayMessage),
    /// Look up the credential with this id and answer with [`LoginInput::Credential`].
    LookUpCredential(CredentialId),
    /// Look up the fleet's machines with the enrolling key or hostname, and its trust key, and answer with
    /// [`LoginInput::Fleet`].
    LookUpFleet(FleetQuery),
    /// Store this registration and answer with [`LoginInput::Stored`].
    Register(Registration),
    /// Record a successful use of the credential.
    MarkUsed(CredentialId),
    /// Reserve one of the connections this (authenticated) client credential may hold, and answer with
    /// [`LoginInput::Reserved`]. The driver keeps the reservation for the life of the connection.
    ReserveConnection(CredentialId),
    /// Append this to the audit log.
    Audit(AuditEvent),
    /// The login is refused: flush what was sent, then close the connection with this code.
    Close {
        /// The QUIC application close code.
        code: CloseCode,
        /// The close reason, for the peer.
        reason: String,
        /// What to count it as.
        failure: LoginFailure,
    },
    /// The login succeeded; the connection belongs to this peer now.
    LoggedIn(Box<LoggedIn>),
}

/// How the relay's half of a login is set up.
#[derive(Debug, Clone)]
pub struct RelayLoginConfig {
    /// The fresh random challenge for this connection.
    pub nonce: [u8; 32],
    /// The TLS keying-material exporter of this connection ([`crate::wire::EXPORTER_LABEL`]).
    pub exporter: [u8; EXPORTER_LEN],
    /// The peer's address, for the audit log.
    pub peer: String,
    /// When the whole login must be done.
    pub deadline: Instant,
    /// The heartbeat interval told to agents.
    pub heartbeat_interval: Duration,
}

/// The relay's half of one connection's login.
pub struct RelayLogin {
    config: RelayLoginConfig,
    state: RelayState,
    actions: VecDeque<LoginAction>,
}

// Boxing the states that wait on the store would save little: one login per connection, short-lived.
#[allow(clippy::large_enum_variant)]
enum RelayState {
    Hello,
    Login {
        hello: Hello,
    },
    Credential {
        hello: Hello,
        login: LoginMessage,
        secret: CredentialSecret,
    },
    Fleet {
        authenticated: Authenticated,
        access: FleetAccess,
        enrolment: Enrolment,
        features: AgentFeatures,
    },
    Stored {
        authenticated: Authenticated,
        access: FleetAccess,
        registration: Registration,
        trust_key: PublicKey,
        features: AgentFeatures,
    },
    Reserving {
        session: ClientSession,
        single_fleet: Option<FleetId>,
    },
    Done,
}

/// The peer's login message, whichever role sent it.
enum LoginMessage {
    Agent(AgentLogin),
    Client(ClientLogin),
}

impl LoginMessage {
    fn key_and_signature(&self) -> (KeyBytes, SignatureBytes) {
        match self {
            Self::Agent(login) => (login.public_key, login.signature),
            Self::Client(login) => (login.public_key, login.signature),
        }
    }
}

/// A refusal: the error to send, the close code, and what to count it as.
struct Refusal {
    code: ErrorCode,
    message: String,
    close: CloseCode,
    failure: LoginFailure,
}

impl Refusal {
    fn new(
        code: ErrorCode,
        message: impl Into<String>,
        close: CloseCode,
        failure: LoginFailure,
    ) -> Self {
        Self {
            code,
            message: message.into(),
            close,
            failure,
        }
    }

    /// The one answer every credential or key-proof failure gets, so a peer learns nothing about which.
    fn authentication(failure: LoginFailure) -> Self {
        Self::new(
            ErrorCode::AUTHENTICATION_FAILED,
            "authentication failed: the credential is unknown, wrong, revoked or expired, or the key proof is invalid; ask the relay admin for a valid key",
            CloseCode::LOGIN_REFUSED,
            failure,
        )
    }

    fn protocol(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(
            code,
            message,
            CloseCode::PROTOCOL_ERROR,
            LoginFailure::Protocol,
        )
    }

    fn internal() -> Self {
        Self::new(
            ErrorCode::INTERNAL,
            "relay internal error; retry later",
            CloseCode::PROTOCOL_ERROR,
            LoginFailure::Internal,
        )
    }
}

impl RelayLogin {
    /// A login waiting for the peer's [`Hello`].
    pub fn new(config: RelayLoginConfig) -> Self {
        Self {
            config,
            state: RelayState::Hello,
            actions: VecDeque::new(),
        }
    }

    /// The next thing the driver must do, if any.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<LoginAction> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called: the login deadline, until it is over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!matches!(self.state, RelayState::Done)).then_some(self.config.deadline)
    }

    /// Whether the login is over, logged in or refused.
    pub fn is_done(&self) -> bool {
        matches!(self.state, RelayState::Done)
    }

    /// Ends the login if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.is_done() || now.instant < self.config.deadline {
            return;
        }
        self.state = RelayState::Done;
        self.actions.push_back(LoginAction::Audit(AuditEvent {
            fleet: None,
            actor: format!("peer:{}", self.config.peer),
            action: "login",
            outcome: "refused",
            detail: "login deadline exceeded".to_owned(),
        }));
        self.actions.push_back(LoginAction::Close {
            code: CloseCode::LOGIN_TIMEOUT,
            reason: "login deadline exceeded".to_owned(),
            failure: LoginFailure::Timeout,
        });
    }

    /// Feeds one input. `rng` draws a new machine's id; nothing else is random here.
    pub fn handle<R: CryptoRngCore + ?Sized>(&mut self, input: LoginInput, now: Time, rng: &mut R) {
        let state = std::mem::replace(&mut self.state, RelayState::Done);
        let next = match (state, input) {
            (RelayState::Done, _) => Ok(RelayState::Done),
            (_, LoginInput::StoreFailed) => Err(Refusal::internal()),
            (RelayState::Hello, LoginInput::Message(message)) => self.on_hello(message),
            (RelayState::Login { hello }, LoginInput::Message(message)) => {
                self.on_login(hello, message)
            }
            (
                RelayState::Credential {
                    hello,
                    login,
                    secret,
                },
                LoginInput::Credential(lookup),
            ) => self.on_credential(&hello, login, &secret, lookup, now),
            (
                RelayState::Fleet {
                    authenticated,
                    access,
                    enrolment,
                    features,
                },
                LoginInput::Fleet(lookup),
            ) => self.on_fleet(
                (authenticated, access, enrolment, features),
                lookup,
                now,
                rng,
            ),
            (
                RelayState::Stored {
                    authenticated,
                    access,
                    registration,
                    trust_key,
                    features,
                },
                LoginInput::Stored(stored),
            ) => self.on_stored(
                (authenticated, access, registration, features),
                trust_key,
                stored,
            ),
            (
                RelayState::Reserving {
                    session,
                    single_fleet,
                },
                LoginInput::Reserved(reserved),
            ) => self.on_reserved(session, single_fleet, reserved),
            // A message while a lookup is pending, or an answer nobody asked for: the peer sent more than one
            // message before its answer, which the protocol does not allow.
            (_, LoginInput::Message(_)) => Err(Refusal::protocol(
                ErrorCode::UNEXPECTED_MESSAGE,
                "send one login message and wait for the answer",
            )),
            (_, _) => Err(Refusal::internal()),
        };
        match next {
            Ok(state) => self.state = state,
            Err(refusal) => self.refuse(refusal),
        }
    }

    fn on_hello(&mut self, message: PeerMessage) -> Result<RelayState, Refusal> {
        let PeerMessage::Hello(hello) = message else {
            return Err(Refusal::protocol(
                ErrorCode::UNEXPECTED_MESSAGE,
                "expected Hello as the first message",
            ));
        };
        if hello.version != PROTOCOL_VERSION {
            return Err(Refusal::protocol(
                ErrorCode::UNSUPPORTED_VERSION,
                format!(
                    "protocol version {} is not supported (this relay speaks {PROTOCOL_VERSION}); upgrade the older side",
                    hello.version
                ),
            ));
        }
        self.send(RelayMessage::Challenge(Challenge {
            nonce: self.config.nonce,
        }));
        Ok(RelayState::Login { hello })
    }

    fn on_login(&mut self, hello: Hello, message: PeerMessage) -> Result<RelayState, Refusal> {
        let (login, credential) = match (message, hello.role) {
            (PeerMessage::AgentLogin(login), Role::Agent) => {
                let credential = CredentialSecret::parse(login.credential.expose());
                (LoginMessage::Agent(login), credential)
            }
            (PeerMessage::ClientLogin(login), Role::Client) => {
                let credential = CredentialSecret::parse(login.credential.expose());
                (LoginMessage::Client(login), credential)
            }
            _ => {
                return Err(Refusal::protocol(
                    ErrorCode::UNEXPECTED_MESSAGE,
                    "expected the login message matching the role announced in Hello",
                ));
            }
        };
        let Ok(secret) = credential else {
            self.audit_peer_refusal(&hello, "malformed credential");
            return Err(Refusal::authentication(LoginFailure::Credential));
        };
        self.actions
            .push_back(LoginAction::LookUpCredential(secret.id()));
        Ok(RelayState::Credential {
            hello,
            login,
            secret,
        })
    }

    fn on_credential(
        &mut self,
        hello: &Hello,
        login: LoginMessage,
        secret: &CredentialSecret,
        lookup: CredentialLookup,
        now: Time,
    ) -> Result<RelayState, Refusal> {
        let authenticated =
            match cmdop_fleet::authenticate(secret, lookup.record.as_ref(), now.unix) {
                Ok(authenticated) => authenticated,
                Err(err) => {
                    let failure = match err {
                        AuthError::Revoked { .. } => LoginFailure::Revoked,
                        AuthError::Expired { .. } => LoginFailure::Expired,
                        _ => LoginFailure::Credential,
                    };
                    self.audit_peer_refusal(hello, &audit_reason(&err));
                    return Err(Refusal::authentication(failure));
                }
            };
        let actor = actor(&authenticated);
        let single_fleet = single_fleet(&authenticated, &lookup.fleets);
        let (key_bytes, signature) = login.key_and_signature();
        let key = match self.verify_proof(key_bytes, signature) {
            Ok(key) => key,
            Err(reason) => {
                self.audit(
                    single_fleet,
                    &actor,
                    "auth",
                    "refused",
                    format!("{reason} (from {})", self.config.peer),
                );
                return Err(Refusal::authentication(LoginFailure::KeyProof));
            }
        };
        self.actions
            .push_back(LoginAction::MarkUsed(authenticated.credential_id()));
        match login {
            LoginMessage::Agent(login) => {
                self.on_agent_credential(authenticated, &lookup.fleets, login, key, single_fleet)
            }
            LoginMessage::Client(_) => self.welcome(authenticated, lookup, key, single_fleet),
        }
    }

    fn on_agent_credential(
        &mut self,
        authenticated: Authenticated,
        fleets: &[Fleet],
        login: AgentLogin,
        key: PublicKey,
        single_fleet: Option<FleetId>,
    ) -> Result<RelayState, Refusal> {
        let actor = actor(&authenticated);
        let refuse = |this: &mut Self, fleet: Option<FleetId>, reason: String, refusal: Refusal| {
            this.audit(fleet, &actor, "auth", "refused", reason);
            refusal
        };
        if let Err((reason, refusal)) = may_enrol(&authenticated, &login) {
            return Err(refuse(self, single_fleet, reason.to_owned(), refusal));
        }
        let access = FleetName::parse(&login.workspace).ok().and_then(|name| {
            authenticated
                .workspace_access(Some(&name), fleets, Permission::Enrol)
                .ok()
        });
        let Some(access) = access else {
            let reason = format!("workspace {:?} not in scope", shorten(&login.workspace));
            let refusal = Refusal::new(
                ErrorCode::FLEET_NOT_FOUND,
                no_such_fleet(&login.workspace),
                CloseCode::LOGIN_REFUSED,
                LoginFailure::Scope,
            );
            return Err(refuse(self, single_fleet, reason, refusal));
        };
        let enrolment = enrolment(&login, key).map_err(|invalid| {
            let fleet = Some(access.fleet_id());
            let message = invalid.to_string();
            self.audit(fleet, &actor, "register", "refused", message.clone());
            Refusal::new(
                ErrorCode::INVALID_REGISTRATION,
                message,
                CloseCode::LOGIN_REFUSED,
                LoginFailure::InvalidRegistration,
            )
        })?;
        let detail = format!("agent key {} from {}", key.fingerprint(), self.config.peer);
        self.audit(Some(access.fleet_id()), &actor, "auth", "accepted", detail);
        self.actions.push_back(LoginAction::LookUpFleet(FleetQuery {
            fleet: access.fleet_id(),
            public_key: enrolment.public_key,
            hostname: enrolment.hostname.clone(),
            name: enrolment.name.clone(),
        }));
        Ok(RelayState::Fleet {
            authenticated,
            access,
            enrolment,
            features: AgentFeatures::of(&login),
        })
    }

    fn welcome(
        &mut self,
        authenticated: Authenticated,
        lookup: CredentialLookup,
        client_key: PublicKey,
        single_fleet: Option<FleetId>,
    ) -> Result<RelayState, Refusal> {
        let actor = actor(&authenticated);
        // An agent key only enrols; anything that may list or reach machines may log in as a client.
        let may_use = authenticated.fleet_ids().into_iter().any(|fleet| {
            authenticated
                .role_in(fleet)
                .is_some_and(|role| role.allows(Permission::List) || role.allows(Permission::Reach))
        });
        if !may_use {
            self.audit(
                single_fleet,
                &actor,
                "auth",
                "refused",
                "client login with an agent API key".to_owned(),
            );
            return Err(Refusal::new(
                ErrorCode::FORBIDDEN,
                "an agent key can only enrol machines; use a member or admin API key or a user token",
                CloseCode::LOGIN_REFUSED,
                LoginFailure::Role,
            ));
        }
        let description = describe(&authenticated, lookup.user.as_ref(), &lookup.fleets);
        let session = ClientSession {
            authenticated,
            fleets: lookup.fleets,
            client_key,
            description,
        };
        self.actions.push_back(LoginAction::ReserveConnection(
            session.authenticated.credential_id(),
        ));
        Ok(RelayState::Reserving {
            session,
            single_fleet,
        })
    }

    /// A client whose credential got a connection slot is welcomed; one at its limit is refused with BUSY.
    fn on_reserved(
        &mut self,
        session: ClientSession,
        single_fleet: Option<FleetId>,
        reserved: Result<(), CredentialBusy>,
    ) -> Result<RelayState, Refusal> {
        let actor = actor(&session.authenticated);
        if let Err(CredentialBusy { limit }) = reserved {
            self.audit(
                single_fleet,
                &actor,
                "auth",
                "refused",
                format!(
                    "connection limit of the credential reached ({limit} connections) (from {})",
                    self.config.peer
                ),
            );
            return Err(Refusal::new(
                ErrorCode::BUSY,
                format!(
                    "this credential already has {limit} connections to the relay, the most one credential may hold; close some (other cmdop commands, sessions or forwards using it) or use another credential, then retry"
                ),
                CloseCode::LOGIN_REFUSED,
                LoginFailure::CredentialBusy,
            ));
        }
        self.audit(
            single_fleet,
            &actor,
            "auth",
            "accepted",
            format!(
                "client key {} from {} ({})",
                session.client_key.fingerprint(),
                self.config.peer,
                session.description
            ),
        );
        self.send(RelayMessage::Welcome(Welcome {
            principal: session.description.clone(),
            fleets: session.fleet_names(),
        }));
        self.actions
            .push_back(LoginAction::LoggedIn(Box::new(LoggedIn::Client(Box::new(
                session,
            )))));
        Ok(RelayState::Done)
    }

    fn on_fleet<R: CryptoRngCore + ?Sized>(
        &mut self,
        (authenticated, access, enrolment, features): (
            Authenticated,
            FleetAccess,
            Enrolment,
            AgentFeatures,
        ),
        lookup: FleetLookup,
        now: Time,
        rng: &mut R,
    ) -> Result<RelayState, Refusal> {
        match register(&access, &lookup.machines, enrolment, now.unix, rng) {
            Ok(registration) => {
                self.actions
                    .push_back(LoginAction::Register(registration.clone()));
                Ok(RelayState::Stored {
                    authenticated,
                    access,
                    registration,
                    trust_key: lookup.trust_key,
                    features,
                })
            }
            Err(RegistrationError::HostnameTaken { hostname, .. }) => {
                Err(self.hostname_taken(&authenticated, &access, hostname.as_str()))
            }
            Err(RegistrationError::NameClash(clash)) => {
                let message = clash.to_string();
                self.audit(
                    Some(access.fleet_id()),
                    &actor(&authenticated),
                    "register",
                    "refused",
                    message.clone(),
                );
                Err(Refusal::new(
                    ErrorCode::HOSTNAME_TAKEN,
                    message,
                    CloseCode::LOGIN_REFUSED,
                    LoginFailure::HostnameTaken,
                ))
            }
            Err(err) => {
                self.audit(
                    Some(access.fleet_id()),
                    &actor(&authenticated),
                    "register",
                    "refused",
                    err.to_string(),
                );
                Err(Refusal::new(
                    ErrorCode::FORBIDDEN,
                    err.to_string(),
                    CloseCode::LOGIN_REFUSED,
                    LoginFailure::Role,
                ))
            }
        }
    }

    fn on_stored(
        &mut self,
        (authenticated, access, registration, features): (
            Authenticated,
            FleetAccess,
            Registration,
            AgentFeatures,
        ),
        trust_key: PublicKey,
        stored: Result<(), StoreRefusal>,
    ) -> Result<RelayState, Refusal> {
        match stored {
            Ok(()) => {}
            Err(StoreRefusal::HostnameTaken) => {
                return Err(self.hostname_taken(
                    &authenticated,
                    &access,
                    registration.machine.hostname.as_str(),
                ));
            }
            Err(_) => return Err(Refusal::internal()),
        }
        let machine = &registration.machine;
        self.audit(
            Some(access.fleet_id()),
            &actor(&authenticated),
            "register",
            "accepted",
            format!(
                "machine {} hostname {:?} key {}",
                machine.id,
                machine.hostname.as_str(),
                machine.public_key.fingerprint()
            ),
        );
        self.send(RelayMessage::Registered(Registered {
            machine_id: IdBytes(machine.id.to_bytes()),
            fleet_id: IdBytes(access.fleet_id().to_bytes()),
            heartbeat_interval_secs: u32::try_from(self.config.heartbeat_interval.as_secs())
                .unwrap_or(u32::MAX),
            trust_key: KeyBytes(trust_key.to_bytes()),
        }));
        let session = AgentSession {
            authenticated,
            access,
            machine: registration.machine,
            is_new: registration.is_new,
            fleet_lock: features.fleet_lock,
            go_away: features.go_away,
        };
        self.actions
            .push_back(LoginAction::LoggedIn(Box::new(LoggedIn::Agent(Box::new(
                session,
            )))));
        Ok(RelayState::Done)
    }

    fn hostname_taken(
        &mut self,
        authenticated: &Authenticated,
        access: &FleetAccess,
        hostname: &str,
    ) -> Refusal {
        self.audit(
            Some(access.fleet_id()),
            &actor(authenticated),
            "auth",
            "refused",
            format!("hostname {hostname:?} taken by another key"),
        );
        Refusal::new(
            ErrorCode::HOSTNAME_TAKEN,
            format!(
                "hostname {hostname:?} is already used by another machine of this fleet; pass another --hostname or ask the admin to rename the old machine"
            ),
            CloseCode::LOGIN_REFUSED,
            LoginFailure::HostnameTaken,
        )
    }

    /// Verifies the peer's proof of key possession over this connection's challenge and exporter.
    fn verify_proof(
        &self,
        public_key: KeyBytes,
        signature: SignatureBytes,
    ) -> Result<PublicKey, &'static str> {
        let key = PublicKey::from_bytes(&public_key.0).map_err(|_| "invalid or weak public key")?;
        let transcript = login_transcript(&self.config.nonce, &self.config.exporter, &public_key);
        key.verify(
            Purpose::RelayLogin,
            &transcript,
            &Signature::from_bytes(&signature.0),
        )
        .map_err(|_| "key proof signature invalid")?;
        Ok(key)
    }

    fn audit_peer_refusal(&mut self, hello: &Hello, reason: &str) {
        let detail = format!(
            "{reason} ({:?} from {}, {})",
            hello.role,
            self.config.peer,
            display::for_terminal(&hello.client_software, display::AUDIT_FIELD_CHARS)
        );
        let actor = format!("peer:{}", self.config.peer);
        self.audit(None, &actor, "auth", "refused", detail);
    }

    fn audit(
        &mut self,
        fleet: Option<FleetId>,
        actor: &str,
        action: &'static str,
        outcome: &'static str,
        detail: String,
    ) {
        self.actions.push_back(LoginAction::Audit(AuditEvent {
            fleet,
            actor: actor.to_owned(),
            action,
            outcome,
            detail,
        }));
    }

    fn send(&mut self, message: RelayMessage) {
        self.actions.push_back(LoginAction::Send(message));
    }

    fn refuse(&mut self, refusal: Refusal) {
        self.state = RelayState::Done;
        self.send(RelayMessage::Error(ErrorMessage {
            code: refusal.code,
            message: refusal.message.clone(),
        }));
        self.actions.push_back(LoginAction::Close {
            code: refusal.close,
            reason: refusal.message,
            failure: refusal.failure,
        });
    }
}

impl fmt::Debug for RelayLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            RelayState::Hello => "hello",
            RelayState::Login { .. } => "login",
            RelayState::Credential { .. } => "credential",
            RelayState::Fleet { .. } => "fleet",
            RelayState::Stored { .. } => "stored",
            RelayState::Reserving { .. } => "reserving",
            RelayState::Done => "done",
        };
        f.debug_struct("RelayLogin")
            .field("peer", &self.config.peer)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// The reason an authentication failed, for the audit log (never for the peer).
fn audit_reason(err: &AuthError) -> String {
    match err {
        AuthError::UnknownCredential { .. } => "unknown credential id".to_owned(),
        AuthError::BadSecret { .. } => "wrong secret".to_owned(),
        AuthError::Revoked { .. } => "credential revoked".to_owned(),
        AuthError::Expired { .. } => "credential expired".to_owned(),
        other => other.to_string(),
    }
}

/// The fleets of `fleets` that `authenticated` reaches.
pub fn in_scope<'f>(
    authenticated: &'f Authenticated,
    fleets: &'f [Fleet],
) -> impl Iterator<Item = &'f Fleet> + 'f {
    fleets
        .iter()
        .filter(|fleet| authenticated.role_in(fleet.id).is_some())
}

/// The fleet of a credential that reaches exactly one, for audit entries.
fn single_fleet(authenticated: &Authenticated, fleets: &[Fleet]) -> Option<FleetId> {
    let mut reached = in_scope(authenticated, fleets);
    match (reached.next(), reached.next()) {
        (Some(only), None) => Some(only.id),
        _ => None,
    }
}

/// Who a credential belongs to, e.g. `user alice` or `api key 8f23… (member)`.
fn describe(authenticated: &Authenticated, user: Option<&UserName>, fleets: &[Fleet]) -> String {
    if let Some(user) = user {
        return format!("user {user}");
    }
    let role = single_fleet(authenticated, fleets)
        .and_then(|fleet| authenticated.role_in(fleet))
        .or_else(|| {
            authenticated
                .fleet_ids()
                .into_iter()
                .find_map(|fleet| authenticated.role_in(fleet))
        });
    match (authenticated.kind(), role) {
        (CredentialKind::ApiKey, Some(role)) => {
            format!(
                "api key {} ({})",
                authenticated.credential_id(),
                role.as_str()
            )
        }
        _ => format!("credential {}", authenticated.credential_id()),
    }
}

/// Whether this credential may enrol a machine with this login: agent keys enrol, admin keys may too,
/// members and user tokens may not; and the agent must prove its key the one way the relay knows. A refusal
/// comes with the reason for the audit log.
fn may_enrol(
    authenticated: &Authenticated,
    login: &AgentLogin,
) -> Result<(), (&'static str, Refusal)> {
    let enrols = authenticated.kind() == CredentialKind::ApiKey
        && authenticated.fleet_ids().into_iter().any(|fleet| {
            authenticated
                .role_in(fleet)
                .is_some_and(|r| r.allows(Permission::Enrol))
        });
    if !enrols {
        return Err((
            "agent login with a credential that is not an agent or admin API key",
            Refusal::new(
                ErrorCode::FORBIDDEN,
                "this credential cannot enrol machines; use an API key created with --role agent",
                CloseCode::LOGIN_REFUSED,
                LoginFailure::Role,
            ),
        ));
    }
    if !login
        .auth_capabilities
        .iter()
        .any(|c| c == AUTH_CAPABILITY_ED25519)
    {
        return Err((
            "agent does not advertise the ed25519 capability",
            Refusal::new(
                ErrorCode::MISSING_CAPABILITY,
                "the agent must support ed25519 key proofs; upgrade cmdop-agent",
                CloseCode::LOGIN_REFUSED,
                LoginFailure::Capability,
            ),
        ));
    }
    Ok(())
}

/// Why an agent's registration is not valid; the message is what the agent is told.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRegistration {
    /// The hostname breaks the hostname rule.
    #[error("invalid hostname {given:?}: {reason}; pass a valid --hostname")]
    Hostname {
        /// The hostname sent (cut to 80 characters).
        given: String,
        /// The rule it breaks.
        reason: NameError,
    },
    /// The display name breaks the display-name rule.
    #[error("invalid display name: {0}; pass a valid --name")]
    DisplayName(NameError),
    /// The OS, architecture or version is empty, too long or holds control characters.
    #[error("invalid agent description: {0}; upgrade cmdop-agent")]
    Description(NameError),
    /// A label breaks the label rules.
    #[error("invalid label: {0}; fix the agent's --label")]
    Label(LabelError),
}

/// What an agent's login asks to register, validated: names are checked once, here.
fn enrolment(login: &AgentLogin, public_key: PublicKey) -> Result<Enrolment, InvalidRegistration> {
    let hostname =
        Hostname::parse(&login.hostname).map_err(|reason| InvalidRegistration::Hostname {
            given: shorten(&login.hostname),
            reason,
        })?;
    let name = login
        .display_name
        .as_deref()
        .map(DisplayName::parse)
        .transpose()
        .map_err(InvalidRegistration::DisplayName)?;
    let info = AgentInfo::new(&login.os, &login.arch, &login.agent_version)
        .map_err(InvalidRegistration::Description)?;
    let labels =
        MachineLabels::new(login.labels.iter().cloned()).map_err(InvalidRegistration::Label)?;
    Ok(Enrolment {
        public_key,
        hostname,
        name,
        info,
        labels,
    })
}

/// Peer-supplied text in messages and audit entries stays bounded and shows no terminal controls.
fn shorten(text: &str) -> String {
    display::for_terminal(text, 80)
}

/// How a machine travels in [`RelayMessage::Machines`] and [`crate::wire::StreamReady`].
pub fn machine_info(machine: &Machine) -> MachineInfo {
    MachineInfo {
        id: IdBytes(machine.id.to_bytes()),
        hostname: machine.hostname.to_string(),
        name: machine.display_name().to_owned(),
        public_key: KeyBytes(machine.public_key.to_bytes()),
        online: machine.online,
        last_seen: machine.last_heartbeat.map(Timestamp::as_unix_seconds),
        os: machine.info.os().to_owned(),
        arch: machine.info.arch().to_owned(),
        agent_version: machine.info.version().to_owned(),
        labels: machine.labels.to_pairs(),
    }
}

/// The scope refusal a peer sees for a fleet it named (or did not name). A fleet that does not exist and one
/// the credential does not reach get the same words, so the answer reveals nothing about other fleets.
pub fn scope_refusal(err: &ScopeError) -> ErrorMessage {
    let (code, message) = match err {
        ScopeError::WorkspaceRequired { .. } => (ErrorCode::WORKSPACE_REQUIRED, err.to_string()),
        ScopeError::NotPermitted { .. } => (ErrorCode::FORBIDDEN, err.to_string()),
        ScopeError::NoSuchFleet { name } => {
            (ErrorCode::FLEET_NOT_FOUND, no_such_fleet(name.as_str()))
        }
        _ => (ErrorCode::FLEET_NOT_FOUND, err.to_string()),
    };
    ErrorMessage { code, message }
}

/// The words for a fleet that is not available, whether it exists or not (and whether the name is valid).
pub fn no_such_fleet(asked: &str) -> String {
    format!("fleet {:?} not found; check --workspace", shorten(asked))
}

// ---------------------------------------------------------------------------------------------------------
// The peer's half.

/// What an agent tells the relay about itself when it logs in.
#[derive(Clone)]
pub struct AgentLoginRequest {
    /// The agent API key text (`cmdop_ak_…`).
    pub api_key: Zeroizing<String>,
    /// The fleet to enrol into (`--workspace`).
    pub workspace: String,
    /// The machine's hostname.
    pub hostname: String,
    /// A display name; the relay keeps the current one (or the hostname) when `None`.
    pub display_name: Option<String>,
    /// Operating system.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// Agent version.
    pub agent_version: String,
    /// The machine's labels, (key, value); the relay checks them ([`MachineLabels`]).
    pub labels: Vec<(String, String)>,
}

impl fmt::Debug for AgentLoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentLoginRequest")
            .field("workspace", &self.workspace)
            .field("hostname", &self.hostname)
            .field("display_name", &self.display_name)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// Who is logging in, with what.
#[derive(Debug, Clone)]
pub enum LoginRequest {
    /// An agent registering its machine.
    Agent(AgentLoginRequest),
    /// A person or script, with an API key or a user token.
    Client {
        /// The API key or user token.
        credential: ClientCredential,
    },
}

/// A client's credential text: zeroized on drop and redacted in `Debug`.
#[derive(Clone)]
pub struct ClientCredential(Zeroizing<String>);

impl ClientCredential {
    /// Wraps the credential text (surrounding whitespace is dropped).
    pub fn new(text: &str) -> Self {
        Self(Zeroizing::new(text.trim().to_owned()))
    }
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientCredential(..)")
    }
}

/// Why the peer's login failed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The relay refused, with its reason.
    #[error("{}", .0.message)]
    Refused(ErrorMessage),
    /// The relay sent something this peer does not expect now.
    #[error(
        "unexpected relay message {0}; check that the relay and this peer run compatible versions"
    )]
    Unexpected(String),
    /// The relay sent a fleet trust key that is not a valid Ed25519 key.
    #[error("the relay sent an invalid fleet trust key")]
    InvalidTrustKey,
    /// The relay did not answer in time.
    #[error("the relay did not answer within {0:?}; check the relay and the network")]
    Timeout(Duration),
    /// The login is already over.
    #[error("the login is already over")]
    Finished,
}

/// What the relay granted.
#[derive(Debug, Clone, PartialEq, Eq)]
// Returned once per login and consumed at once.
#[allow(clippy::large_enum_variant)]
pub enum LoginOutcome {
    /// The agent's machine is registered.
    Registered {
        /// The relay's answer.
        registered: Registered,
        /// The fleet trust key it carries, validated.
        trust_key: PublicKey,
    },
    /// The client is logged in.
    Welcome(Welcome),
}

/// One step of the peer's login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginStep {
    /// Send this message and wait for the relay's answer.
    Send(PeerMessage),
    /// The login is done.
    Done(LoginOutcome),
}

/// The peer's half of a login: `Hello`, then the signed login message, then the relay's verdict.
pub struct PeerLogin {
    request: LoginRequest,
    software: String,
    timeout: Duration,
    deadline: Option<Instant>,
    state: PeerState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerState {
    Start,
    Challenge,
    Verdict,
    Done,
}

impl PeerLogin {
    /// A login that will present `request`; `software` goes into [`Hello`] for the audit log, and each answer
    /// must arrive within `timeout`.
    pub fn new(request: LoginRequest, software: &str, timeout: Duration) -> Self {
        Self {
            request,
            software: software.to_owned(),
            timeout,
            deadline: None,
            state: PeerState::Start,
        }
    }

    /// The first message, [`Hello`].
    pub fn hello(&mut self, now: Instant) -> PeerMessage {
        self.state = PeerState::Challenge;
        self.deadline = Some(now + self.timeout);
        PeerMessage::Hello(Hello {
            version: PROTOCOL_VERSION,
            role: match self.request {
                LoginRequest::Agent(_) => Role::Agent,
                LoginRequest::Client { .. } => Role::Client,
            },
            client_software: self.software.clone(),
        })
    }

    /// When the relay's answer is overdue.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Fails the login if the answer is overdue at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), LoginError> {
        match self.deadline {
            Some(deadline) if now >= deadline && self.state != PeerState::Done => {
                self.state = PeerState::Done;
                self.deadline = None;
                Err(LoginError::Timeout(self.timeout))
            }
            _ => Ok(()),
        }
    }

    /// Feeds the relay's answer. On the challenge, signs the login transcript with `identity` over this
    /// connection's `exporter`.
    pub fn handle(
        &mut self,
        message: RelayMessage,
        identity: &Identity,
        exporter: &[u8; EXPORTER_LEN],
        now: Instant,
    ) -> Result<LoginStep, LoginError> {
        let state = std::mem::replace(&mut self.state, PeerState::Done);
        self.deadline = None;
        match (state, message) {
            (PeerState::Done | PeerState::Start, _) => Err(LoginError::Finished),
            (_, RelayMessage::Error(error)) => Err(LoginError::Refused(error)),
            (PeerState::Challenge, RelayMessage::Challenge(challenge)) => {
                self.state = PeerState::Verdict;
                self.deadline = Some(now + self.timeout);
                Ok(LoginStep::Send(
                    self.login_message(&challenge, identity, exporter),
                ))
            }
            (PeerState::Verdict, RelayMessage::Registered(registered))
                if matches!(self.request, LoginRequest::Agent(_)) =>
            {
                let trust_key = PublicKey::from_bytes(&registered.trust_key.0)
                    .map_err(|_| LoginError::InvalidTrustKey)?;
                Ok(LoginStep::Done(LoginOutcome::Registered {
                    registered,
                    trust_key,
                }))
            }
            (PeerState::Verdict, RelayMessage::Welcome(welcome))
                if matches!(self.request, LoginRequest::Client { .. }) =>
            {
                Ok(LoginStep::Done(LoginOutcome::Welcome(welcome)))
            }
            (_, other) => Err(LoginError::Unexpected(message_name(&other).to_owned())),
        }
    }

    fn login_message(
        &self,
        challenge: &Challenge,
        identity: &Identity,
        exporter: &[u8; EXPORTER_LEN],
    ) -> PeerMessage {
        let public_key = KeyBytes(identity.public_key().to_bytes());
        let transcript = login_transcript(&challenge.nonce, exporter, &public_key);
        let signature = SignatureBytes(identity.sign(Purpose::RelayLogin, &transcript).to_bytes());
        match &self.request {
            LoginRequest::Agent(agent) => PeerMessage::AgentLogin(AgentLogin {
                credential: agent.api_key.as_str().into(),
                workspace: agent.workspace.clone(),
                public_key,
                signature,
                hostname: agent.hostname.clone(),
                display_name: agent.display_name.clone(),
                os: agent.os.clone(),
                arch: agent.arch.clone(),
                agent_version: agent.agent_version.clone(),
                auth_capabilities: vec![
                    AUTH_CAPABILITY_ED25519.to_owned(),
                    AUTH_CAPABILITY_FLEET_LOCK.to_owned(),
                    AUTH_CAPABILITY_GO_AWAY.to_owned(),
                ],
                labels: agent.labels.clone(),
            }),
            LoginRequest::Client { credential } => PeerMessage::ClientLogin(ClientLogin {
                credential: credential.0.as_str().into(),
                public_key,
                signature,
            }),
        }
    }
}

impl fmt::Debug for PeerLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerLogin")
            .field("request", &self.request)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The name of a relay message, for errors (never its contents, which may be long or hostile).
pub fn message_name(message: &RelayMessage) -> &'static str {
    match message {
        RelayMessage::Challenge(_) => "Challenge",
        RelayMessage::Registered(_) => "Registered",
        RelayMessage::Welcome(_) => "Welcome",
        RelayMessage::HeartbeatAck => "HeartbeatAck",
        RelayMessage::Machines(_) => "Machines",
        RelayMessage::Error(_) => "Error",
        RelayMessage::StreamReady(_) => "StreamReady",
        RelayMessage::IncomingStream(_) => "IncomingStream",
        RelayMessage::Candidates(_) => "Candidates",
        RelayMessage::RouteReady(_) => "RouteReady",
        RelayMessage::FleetLock(_) => "FleetLock",
        RelayMessage::LockItems(_) => "LockItems",
        RelayMessage::LockAccepted(_) => "LockAccepted",
        RelayMessage::EnrolAuthorization(_) => "EnrolAuthorization",
        RelayMessage::Enrolled => "Enrolled",
        RelayMessage::MoreMachines(_) => "MoreMachines",
        RelayMessage::GoAway(_) => "GoAway",
    }
}
