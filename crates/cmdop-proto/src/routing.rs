//! Routing decisions, sans-IO: what the relay answers a client's [`OpenStream`], before a byte reaches an agent.
//!
//! ```text
//!  OpenStream | OpenRoute {workspace, machine, kind}
//!     │ scope: the stream kind, the fleet, permission to reach          ──▶ RouteRefusal
//!     ▼
//!  the fleet's machines and lock material (the driver looks them up)
//!     │ resolve: cmdop-fleet's resolver, over the certified machines by their certified hostnames in a
//!     │ locked fleet; capability signed for the client's key, this machine, this channel, this operation
//!     ▼
//!  Route { machine, RouteReady for the client (StreamReady for an old one), StreamHeader for the agent }
//! ```
//!
//! Whether the machine's agent is connected, opening the stream to it and splicing the bytes are the
//! driver's: they are IO. The channel id is the caller's randomness.

use cmdop_fleet::lock::{
    MachineCertificate, SignedRevocationList, VerifiedAuthority, VerifiedRevocations,
};
use cmdop_fleet::{
    Capability, FleetAccess, FleetName, Machine, MachineId, OperationSet, Permission, ResolveError,
    Target, Timestamp, resolve,
};
use cmdop_identity::{Identity, PublicKey};

use crate::e2e::StreamKind;
use crate::login::{ClientSession, machine_info, no_such_fleet, scope_refusal};
use crate::wire::{
    Candidate, ErrorCode, IdBytes, KeyBytes, MAX_CANDIDATES, OpenStream, RouteLock, RouteReady,
    StreamHeader, StreamReady,
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
    pub ready: RouteReady,
    /// The header for the agent.
    pub header: StreamHeader,
}

impl Route {
    /// The answer for a client that asked with [`OpenStream`] (before the fleet lock), which cannot carry the
    /// lock: refused for a locked fleet, whose machines such a client cannot check.
    pub fn stream_ready(&self) -> Result<StreamReady, RouteRefusal> {
        if self.ready.lock.is_some() {
            return Err(RouteRefusal::new(
                ErrorCode::FLEET_LOCKED,
                "this fleet is locked and this cmdop cannot check its machine certificates; upgrade cmdop",
            ));
        }
        Ok(StreamReady {
            channel_id: self.ready.channel_id,
            fleet_id: self.ready.fleet_id,
            machine: self.ready.machine.clone(),
            capability: self.ready.capability.clone(),
        })
    }
}

/// The fleet's lock as the relay stores it, for routing: what it sends the client, and what it uses to
/// resolve names in a locked fleet. The relay checks it for consistency only; the client and the agent
/// verify it against the fleet key they pinned.
#[derive(Debug, Clone, Default)]
pub struct LockMaterial {
    /// The fleet authority chain, every state from serial 1 on (empty: the fleet was never locked).
    pub authority: Vec<Vec<u8>>,
    /// The latest revocation list.
    pub revocations: Option<Vec<u8>>,
    /// The stored machine certificates, by machine.
    pub machine_certificates: Vec<(MachineId, Vec<u8>)>,
    /// The member certificate of the client's key, if one is stored.
    pub member_certificate: Option<Vec<u8>>,
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
    /// The fleet's lock material.
    pub lock: &'a LockMaterial,
}

/// The fleet's lock as the relay reads it: `None` for a fleet that was never locked.
struct RelayLockView {
    authority: VerifiedAuthority,
    revocations: VerifiedRevocations,
}

impl RelayLockView {
    fn of(material: &LockMaterial) -> Result<Option<Self>, RouteRefusal> {
        if material.authority.is_empty() {
            return Ok(None);
        }
        let corrupt = |err: cmdop_fleet::lock::LockError| {
            RouteRefusal::new(
                ErrorCode::INTERNAL,
                format!(
                    "the relay's copy of the fleet lock is unusable ({err}); an admin must re-submit it"
                ),
            )
        };
        let fleet_key =
            VerifiedAuthority::claimed_fleet_key(&material.authority).map_err(corrupt)?;
        let fleet = cmdop_fleet::lock::SignedAuthority::from_bytes(
            material.authority.first().map_or(&[][..], Vec::as_slice),
        )
        .map_err(corrupt)?
        .unverified_state()
        .fleet;
        let authority =
            VerifiedAuthority::verify(fleet, &fleet_key, &material.authority).map_err(corrupt)?;
        let revocations = match &material.revocations {
            Some(bytes) => SignedRevocationList::from_bytes(bytes)
                .and_then(|list| list.verify(&authority))
                .map_err(corrupt)?,
            None => VerifiedRevocations::none(),
        };
        Ok(Some(Self {
            authority,
            revocations,
        }))
    }

    /// The machines a locked fleet can route to: those with a valid certificate, under their certified
    /// hostnames. The relay's view is a convenience (clients verify for themselves); it keeps a machine whose
    /// agent changed its reported hostname reachable by the name it was certified with.
    fn certified(
        &self,
        machines: &[Machine],
        material: &LockMaterial,
        now: Timestamp,
    ) -> Vec<Machine> {
        machines
            .iter()
            .filter_map(|machine| {
                let (_, bytes) = material
                    .machine_certificates
                    .iter()
                    .find(|(id, _)| *id == machine.id)?;
                let certificate = MachineCertificate::from_bytes(bytes).ok()?;
                let body = certificate
                    .verify_for(
                        &self.authority,
                        &self.revocations,
                        machine.id,
                        &machine.public_key,
                        now,
                    )
                    .ok()?;
                Some(Machine {
                    hostname: body.hostname.clone(),
                    ..machine.clone()
                })
            })
            .collect()
    }
}

/// The second step: resolve the machine among the fleet's `machines` (in a locked fleet: among the certified
/// ones, by their certified hostnames) and issue the capability for it and this stream.
pub fn resolve_route(
    scoped: &ScopedRequest,
    request: &OpenStream,
    machines: &[Machine],
    context: &RouteContext<'_>,
) -> Result<Route, RouteRefusal> {
    let lock = RelayLockView::of(context.lock)?;
    let found = match lock.as_ref().filter(|view| view.authority.is_locked()) {
        None => resolve_name(scoped, machines, &request.machine)?,
        Some(view) => resolve_certified(scoped, request, machines, view, context)?,
    };
    let fleet = scoped.access.fleet_id();
    // Issued per stream for exactly the operation asked for, this machine and this channel, for the key
    // that proved itself at login.
    let capability = Capability::grant(
        &scoped.access,
        context.client_key,
        Target {
            machine: found.id,
            channel: context.channel_id,
        },
        OperationSet::from_iter([scoped.kind.operation()]),
        (
            Timestamp::from_unix_seconds(
                context
                    .now
                    .as_unix_seconds()
                    .saturating_sub(CAPABILITY_CLOCK_SKEW_SECS),
            ),
            context.now.saturating_add_seconds(CAPABILITY_LIFETIME_SECS),
        ),
    )
    .map_err(|err| RouteRefusal::new(ErrorCode::FORBIDDEN, err.to_string()))?
    .sign(context.trust_key)
    .to_bytes();
    let lock = lock.map(|_| RouteLock {
        authority: context.lock.authority.clone(),
        revocations: context.lock.revocations.clone(),
        machine_certificate: context
            .lock
            .machine_certificates
            .iter()
            .find(|(id, _)| *id == found.id)
            .map(|(_, bytes)| bytes.clone()),
        member_certificate: context.lock.member_certificate.clone(),
    });
    Ok(Route {
        kind: scoped.kind,
        machine: found.clone(),
        ready: RouteReady {
            channel_id: context.channel_id,
            fleet_id: IdBytes(fleet.to_bytes()),
            machine: machine_info(&found),
            capability,
            lock,
        },
        header: StreamHeader {
            channel_id: context.channel_id,
            fleet_id: IdBytes(fleet.to_bytes()),
            kind: scoped.kind.to_byte(),
            client_key: KeyBytes(context.client_key.to_bytes()),
        },
    })
}

/// Resolution in a locked fleet: over the certified machines, by their certified hostnames. A name only an
/// uncertified machine answers to is [`not_certified`], rather than "not found".
fn resolve_certified(
    scoped: &ScopedRequest,
    request: &OpenStream,
    machines: &[Machine],
    view: &RelayLockView,
    context: &RouteContext<'_>,
) -> Result<Machine, RouteRefusal> {
    let certified = view.certified(machines, context.lock, context.now);
    let refusal = match resolve_name(scoped, &certified, &request.machine) {
        Ok(found) => return Ok(found),
        Err(refusal) => refusal,
    };
    let uncertified: Vec<Machine> = machines
        .iter()
        .filter(|m| !certified.iter().any(|c| c.id == m.id))
        .cloned()
        .collect();
    if refusal.code == ErrorCode::MACHINE_NOT_FOUND
        && let Ok(uncertified) = resolve_name(scoped, &uncertified, &request.machine)
    {
        return Err(not_certified(&uncertified));
    }
    Err(refusal)
}

/// cmdop-fleet's resolver, its refusals as the client hears them.
fn resolve_name(
    scoped: &ScopedRequest,
    machines: &[Machine],
    query: &str,
) -> Result<Machine, RouteRefusal> {
    resolve(&scoped.access, machines, query)
        .cloned()
        .map_err(|err| match &err {
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
        })
}

/// The refusal for a machine of a locked fleet that has no valid certificate.
pub fn not_certified(machine: &Machine) -> RouteRefusal {
    RouteRefusal::new(
        ErrorCode::NOT_CERTIFIED,
        format!(
            "machine {} ({}) has no valid certificate in this locked fleet; a fleet admin signs it with `cmdop fleet lock sign {}` after comparing its key {}",
            machine.hostname,
            machine.id,
            machine.id,
            machine.fingerprint()
        ),
    )
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

/// Whether a stopping relay waits for a stream of `kind` to end before closing its connections. A command and a
/// copy end on their own and lose their work if cut, so they get the drain timeout to finish. An interactive
/// shell never ends on its own and resumes through a restart without losing output; a tunnel carries a
/// connection of unknown length (an ssh session through `cmdop proxy` as often as a download). Neither holds a
/// stopping relay up: waiting for them would only delay the restart, strand every attached person meanwhile,
/// and then cut them anyway.
pub fn drain_waits_for(kind: StreamKind) -> bool {
    matches!(kind, StreamKind::Exec | StreamKind::Copy)
}
