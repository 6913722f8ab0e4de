//! Routing decisions, sans-IO: what the relay answers a client's [`OpenStream`], before a byte reaches an agent.
//!
//! ```text
//!  OpenStream{workspace, machine, kind}
//!     │ scope: the stream kind, the fleet, permission to reach          ──▶ RouteRefusal
//!     ▼
//!  the fleet's machines (the driver looks them up)
//!     │ resolve: cmdop-fleet's resolver; capability signed for the client's key, this operation, now
//!     ▼
//!  Route { machine, StreamReady for the client, StreamHeader for the agent }
//! ```
//!
//! Whether the machine's agent is connected, opening the stream to it and splicing the bytes are the
//! driver's: they are IO. The channel id is the caller's randomness.

use cmdop_fleet::{
    Capability, FleetAccess, FleetName, Machine, OperationSet, Permission, ResolveError, Timestamp,
    resolve,
};
use cmdop_identity::{Identity, PublicKey};

use crate::e2e::StreamKind;
use crate::login::{ClientSession, machine_info, no_such_fleet, scope_refusal};
use crate::wire::{
    Candidate, ErrorCode, IdBytes, KeyBytes, MAX_CANDIDATES, OpenStream, StreamHeader, StreamReady,
};

/// How long a capability the relay issues for one stream stays valid. The agent checks it once, at the start
/// of the stream, so this bounds how late a captured capability could be replayed, not how long streams live.
pub const CAPABILITY_LIFETIME_SECS: u64 = 300;

/// How far back a capability's validity starts, so that an agent whose clock is a little behind accepts it.
pub const CAPABILITY_CLOCK_SKEW_SECS: u64 = 60;

/// Why a stream is not routed: the code and the words the client gets, and for an ambiguous name the
/// machines it matched, as data ([`RelayMessage::Candidates`](crate::wire::RelayMessage::Candidates)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RouteRefusal {
    /// The error code.
    pub code: ErrorCode,
    /// What the client is told, naming the fix.
    pub message: String,
    /// The machines an ambiguous name matched (at most [`MAX_CANDIDATES`]); empty otherwise.
    pub candidates: Vec<Candidate>,
}

impl RouteRefusal {
    /// A refusal without candidates.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            candidates: Vec::new(),
        }
    }
}

/// What a stream asks for once its scope is settled.
#[derive(Debug, Clone)]
pub struct ScopedRequest {
    /// The kind of stream.
    pub kind: StreamKind,
    /// Access to the fleet, with permission to reach its machines.
    pub access: FleetAccess,
}

/// The first step: the stream kind, the fleet (`workspace`, or the only one in scope) and the permission to
/// reach its machines.
pub fn scope(client: &ClientSession, request: &OpenStream) -> Result<ScopedRequest, RouteRefusal> {
    let kind = StreamKind::from_byte(request.kind).ok_or_else(|| {
        RouteRefusal::new(
            ErrorCode::UNEXPECTED_MESSAGE,
            format!("unknown stream kind {}", request.kind),
        )
    })?;
    let name = match request.workspace.as_deref() {
        None => None,
        Some(asked) => Some(
            FleetName::parse(asked)
                .map_err(|_| RouteRefusal::new(ErrorCode::FLEET_NOT_FOUND, no_such_fleet(asked)))?,
        ),
    };
    let access = client
        .authenticated
        .workspace_access(name.as_ref(), &client.fleets, Permission::Reach)
        .map_err(|err| {
            let refusal = scope_refusal(&err);
            RouteRefusal::new(refusal.code, refusal.message)
        })?;
    Ok(ScopedRequest { kind, access })
}

/// Where a stream goes and what both ends are told.
#[derive(Debug, Clone)]
pub struct Route {
    /// The kind of stream.
    pub kind: StreamKind,
    /// The machine the name resolved to.
    pub machine: Machine,
    /// The answer for the client.
    pub ready: StreamReady,
    /// The header for the agent.
    pub header: StreamHeader,
}

/// What the second step needs besides the fleet's machines.
#[derive(Debug)]
pub struct RouteContext<'a> {
    /// The key the client proved at login; the capability is issued for it.
    pub client_key: PublicKey,
    /// The fleet's trust key, which signs capabilities.
    pub trust_key: &'a Identity,
    /// A fresh random id for this stream.
    pub channel_id: [u8; 16],
    /// The wall-clock time, for the capability's validity.
    pub now: Timestamp,
}

/// The second step: resolve the machine among the fleet's `machines` and issue the capability.
pub fn resolve_route(
    scoped: &ScopedRequest,
    request: &OpenStream,
    machines: &[Machine],
    context: &RouteContext<'_>,
) -> Result<Route, RouteRefusal> {
    let found = resolve(&scoped.access, machines, &request.machine).map_err(|err| match &err {
        ResolveError::Ambiguous { candidates, .. } => RouteRefusal {
            code: ErrorCode::AMBIGUOUS,
            message: err.to_string(),
            candidates: candidates
                .iter()
                .take(MAX_CANDIDATES)
                .map(|candidate| Candidate {
                    id: IdBytes(candidate.id.to_bytes()),
                    hostname: candidate.hostname.as_str().to_owned(),
                    name: candidate.name.clone(),
                })
                .collect(),
        },
        ResolveError::Scope(_) => RouteRefusal::new(ErrorCode::FORBIDDEN, err.to_string()),
        _ => RouteRefusal::new(ErrorCode::MACHINE_NOT_FOUND, err.to_string()),
    })?;
    let fleet = scoped.access.fleet_id();
    // Issued per stream for exactly the operation asked for, for the key that proved itself at login.
    let capability = Capability {
        client_key: context.client_key,
        fleet,
        operations: OperationSet::from_iter([scoped.kind.operation()]),
        not_before: Timestamp::from_unix_seconds(
            context
                .now
                .as_unix_seconds()
                .saturating_sub(CAPABILITY_CLOCK_SKEW_SECS),
        ),
        not_after: context.now.saturating_add_seconds(CAPABILITY_LIFETIME_SECS),
    }
    .sign(context.trust_key)
    .to_bytes();
    Ok(Route {
        kind: scoped.kind,
        machine: found.clone(),
        ready: StreamReady {
            channel_id: context.channel_id,
            fleet_id: IdBytes(fleet.to_bytes()),
            machine: machine_info(found),
            capability,
        },
        header: StreamHeader {
            channel_id: context.channel_id,
            fleet_id: IdBytes(fleet.to_bytes()),
            kind: scoped.kind.to_byte(),
            client_key: KeyBytes(context.client_key.to_bytes()),
        },
    })
}

/// The refusal for a machine whose agent is not connected.
pub fn offline(machine: &Machine) -> RouteRefusal {
    RouteRefusal::new(
        ErrorCode::MACHINE_OFFLINE,
        format!(
            "machine {} ({}) is offline; check that its agent runs",
            machine.hostname, machine.id
        ),
    )
}
