//! Keeping the machine present on its relay: register, heartbeat, and reconnect with backoff, forever.
//!
//! The rule for failures: what time can fix (the relay restarting, the network dropping) is retried with
//! capped exponential backoff and jitter; what needs a person (a refused or revoked key, a wrong relay
//! fingerprint, a hostname taken by another machine) stops the agent with that message, because retrying
//! a refused credential forever only fills the relay's audit log.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cmdop_client::{
    AgentConnection, AgentRegistration, ClientError, Dialer, EnrolmentReply, RelayTarget,
    reconnect_delay,
};
use cmdop_fleet::lock::{EnrolmentSecret, SignedEnrolmentAuthorization};
use cmdop_fleet::{FleetId, Hostname, MachineId, Timestamp};
use cmdop_identity::{Fingerprint, Identity};
use rand::rngs::OsRng;
use uuid::Uuid;

use crate::destination_policy::DestinationPolicy;
use crate::fleet_lock::{FleetLockKeeper, UpdateError, Updated};
use crate::settings::{self, SettingsError};
use crate::shell::{SessionLimits, Sessions};
use crate::streams::{self, StreamContext, StreamLimits};

/// Where and how the agent registers.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// The relay and its pinned certificate fingerprint.
    pub relay: RelayTarget,
    /// What the agent tells the relay about this machine.
    pub registration: AgentRegistration,
    /// Where the fleet trust key is pinned (the agent's config directory).
    pub state_dir: PathBuf,
    /// Limits on the streams served.
    pub stream_limits: StreamLimits,
    /// Limits on interactive sessions.
    pub session_limits: SessionLimits,
    /// Where forwards may connect.
    pub forward_policy: DestinationPolicy,
    /// The endpoint to connect from, shared with other agents in this process; `None` (the agent binary)
    /// opens one of its own per connection.
    pub dialer: Option<Dialer>,
    /// The fleet key to trust for the fleet's lock (`--fleet-key`, or the enrolment secret's); without one
    /// the first lock the relay shows is pinned.
    pub fleet_key: Option<Fingerprint>,
    /// An enrolment secret: the agent certifies its own machine with it in a locked fleet.
    pub enrolment: Option<Arc<EnrolmentSecret>>,
}

/// Something the presence loop reports, for logs and for the binary's status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    /// Registered; the machine is online.
    Online {
        /// The server-issued machine id (stable for this key in this fleet).
        machine_id: Uuid,
        /// The fleet's id.
        fleet_id: Uuid,
    },
    /// The connection failed or was lost; retrying after `delay`.
    Retrying {
        /// What went wrong.
        reason: String,
        /// How long until the next attempt.
        delay: Duration,
    },
}

/// Why the presence loop stopped without being asked to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// The relay refused in a way retrying cannot fix.
    #[error(transparent)]
    Refused(ClientError),
    /// The relay's fleet trust key does not match the pinned one (or the pin file is unusable).
    #[error(transparent)]
    TrustKey(#[from] SettingsError),
    /// The fleet-lock state file cannot be used.
    #[error(transparent)]
    FleetLock(#[from] UpdateError),
}

/// Registers and keeps the machine online until `shutdown` completes, then says goodbye so the relay marks it
/// offline at once. Returns an error only for refusals that need a person.
pub async fn run(
    identity: Arc<Identity>,
    config: &PresenceConfig,
    shutdown: impl Future<Output = ()>,
    mut on_event: impl FnMut(PresenceEvent),
) -> Result<(), PresenceError> {
    tokio::pin!(shutdown);
    let mut attempt: u32 = 0;
    // Sessions belong to the machine, not to a connection: a relay restart must not end anyone's shell.
    let sessions = Arc::new(Sessions::new(config.session_limits));
    let reaper = tokio::spawn(Arc::clone(&sessions).reap_forever(REAP_INTERVAL));
    let _reaper = AbortOnDrop(reaper);
    // The fleet's lock outlives connections too: what was verified stays enforced across reconnects.
    let mut keeper: Option<Arc<FleetLockKeeper>> = None;
    loop {
        let connected = tokio::select! {
            () = &mut shutdown => return Ok(()),
            result = register(config, &identity) => result,
        };
        let failure = match connected {
            Ok(mut connection) => {
                attempt = 0;
                let context =
                    connected_context(&mut connection, config, &identity, &mut keeper, &sessions)
                        .await?;
                let lock = Arc::clone(&context.lock);
                let serving = tokio::spawn(streams::serve(
                    connection.acceptor(),
                    context,
                    config.stream_limits,
                ));
                on_event(PresenceEvent::Online {
                    machine_id: connection.machine_id(),
                    fleet_id: connection.fleet_id(),
                });
                let failure = tokio::select! {
                    () = &mut shutdown => {
                        serving.abort();
                        if let Err(err) = connection.goodbye().await {
                            tracing::warn!(error = %err, "could not say goodbye to the relay");
                        }
                        return Ok(());
                    }
                    err = connection.keep_alive_with(|offered| take_lock(&lock, &offered)) => err,
                };
                if matches!(failure, ClientError::GoingAway(_)) {
                    // The relay stops on purpose and lets commands and copies finish first: serve the
                    // streams on this connection until it closes it, then come back as it asked.
                    tokio::select! {
                        () = &mut shutdown => {
                            serving.abort();
                            return Ok(());
                        }
                        _ = tokio::time::timeout(LINGER, connection.closed()) => {}
                    }
                }
                serving.abort();
                failure
            }
            Err(err) => err,
        };
        if !failure.is_retryable() {
            return Err(PresenceError::Refused(failure));
        }
        let delay = retry_delay(&failure, &mut attempt);
        on_event(PresenceEvent::Retrying {
            reason: failure.to_string(),
            delay,
        });
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// The longest a connection whose relay asked it to go away is kept for the streams still running on it; the
/// relay closes it sooner, once its drain is over.
const LINGER: Duration = Duration::from_secs(120);

/// How long to wait before the next registration attempt after `failure`. A relay stopping on purpose says
/// when to come back ([`ClientError::come_back`]): that moment, and the backoff starts over, since the relay
/// was not failing. Anything else backs off further with every failed attempt.
fn retry_delay(failure: &ClientError, attempt: &mut u32) -> Duration {
    if let Some(come_back) = failure.come_back() {
        *attempt = 0;
        return come_back.delay(&mut OsRng);
    }
    let delay = reconnect_delay(*attempt, &mut OsRng);
    *attempt = attempt.saturating_add(1);
    delay
}

/// One registration attempt, from the shared endpoint if there is one.
async fn register(
    config: &PresenceConfig,
    identity: &Identity,
) -> Result<AgentConnection, ClientError> {
    match &config.dialer {
        Some(dialer) => {
            AgentConnection::register_via(dialer, &config.relay, identity, &config.registration)
                .await
        }
        None => AgentConnection::register(&config.relay, identity, &config.registration).await,
    }
}

/// What a fresh connection serves streams with: the fleet trust key checked against its pin, the fleet's lock
/// (kept across reconnects in `keeper`, updated with what the relay sent after registering), and the machine
/// certified with the enrolment key if one was given.
async fn connected_context(
    connection: &mut AgentConnection,
    config: &PresenceConfig,
    identity: &Arc<Identity>,
    keeper: &mut Option<Arc<FleetLockKeeper>>,
    sessions: &Arc<Sessions>,
) -> Result<Arc<StreamContext>, PresenceError> {
    let trust_key = connection.trust_key();
    settings::pin_trust_key(
        &config.state_dir,
        &connection.fleet_id().to_string(),
        &trust_key.to_string(),
    )?;
    let fleet_id = FleetId::from_bytes(connection.fleet_id().into_bytes());
    let lock = match keeper {
        Some(lock) => Arc::clone(lock),
        None => Arc::new(FleetLockKeeper::load(
            &config.state_dir,
            fleet_id,
            config.fleet_key,
        )?),
    };
    *keeper = Some(Arc::clone(&lock));
    if let Some(offered) = connection.take_fleet_lock() {
        take_lock(&lock, &offered);
    }
    if let Some(secret) = &config.enrolment {
        enrol(connection, secret, identity, &config.registration).await;
    }
    Ok(Arc::new(StreamContext {
        identity: Arc::clone(identity),
        fleet_id,
        machine_id: MachineId::from_bytes(connection.machine_id().into_bytes()),
        lock,
        trust_key,
        sessions: Arc::clone(sessions),
        forward_policy: config.forward_policy.clone(),
        remote_pending: Arc::default(),
    }))
}

/// Takes a fleet lock the relay sent (after registering, or pushed when an admin changed it); one that does
/// not verify, or is older than what is held, is refused and the held one stays in force.
fn take_lock(keeper: &FleetLockKeeper, offered: &cmdop_proto::wire::FleetLockState) {
    match keeper.update(offered) {
        Ok(Updated::Newer {
            serial,
            revocations,
            pinned_now,
        }) => {
            if pinned_now {
                tracing::warn!(
                    fleet_key = %keeper.fleet_key().map(|k| k.to_string()).unwrap_or_default(),
                    "pinned the fleet key on first sight of the fleet's lock; pass --fleet-key to pin it out of band"
                );
            }
            tracing::info!(serial, revocations, "fleet lock updated");
        }
        Ok(Updated::Withheld) => {
            tracing::warn!("the relay sent no fleet lock, but one is held; it stays enforced")
        }
        Ok(Updated::Unlocked | Updated::Unchanged) => {}
        Err(err) => tracing::warn!(error = %err, "fleet lock update refused"),
    }
}

/// Certifies this machine with the enrolment secret, if the relay has its authorization; failures are
/// logged (an uncertified machine is simply unreachable in a locked fleet), never fatal.
async fn enrol(
    connection: &mut AgentConnection,
    secret: &EnrolmentSecret,
    identity: &Identity,
    registration: &AgentRegistration,
) {
    let reply = match connection.request_enrolment(&secret.public_key()).await {
        Ok(reply) => reply,
        Err(err) => {
            tracing::warn!(error = %err, "enrolment with the enrolment key failed");
            return;
        }
    };
    let authorization = match reply {
        EnrolmentReply::AlreadyCertified => {
            tracing::info!("this machine is already certified in its fleet");
            return;
        }
        EnrolmentReply::Authorization(bytes) => bytes,
    };
    let signed = match SignedEnrolmentAuthorization::from_bytes(&authorization) {
        Ok(signed) => signed,
        Err(err) => {
            tracing::warn!(error = %err, "the relay sent an unusable enrolment authorization");
            return;
        }
    };
    let Ok(hostname) = Hostname::parse(&registration.hostname) else {
        tracing::warn!("this machine's hostname cannot be certified");
        return;
    };
    let now = Timestamp::from_unix_seconds(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    let body = signed.unverified().certificate_body(
        MachineId::from_bytes(connection.machine_id().into_bytes()),
        identity.public_key(),
        hostname,
        now,
    );
    let certificate = body.sign_as_enrolment(&secret.signing_key(), signed);
    match connection.submit_enrolment(certificate.to_bytes()).await {
        Ok(()) => tracing::info!("certified this machine with the enrolment key"),
        Err(err) => tracing::warn!(error = %err, "the relay refused this machine's enrolment"),
    }
}

/// How often ended and idle sessions are swept.
const REAP_INTERVAL: Duration = Duration::from_secs(30);

/// Aborts the session reaper when the presence loop returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
