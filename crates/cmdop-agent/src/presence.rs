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
    AgentConnection, AgentRegistration, ClientError, Dialer, RelayTarget, reconnect_delay,
};
use cmdop_fleet::FleetId;
use cmdop_identity::Identity;
use rand::rngs::OsRng;
use uuid::Uuid;

use crate::destination_policy::DestinationPolicy;
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
    loop {
        let connected = tokio::select! {
            () = &mut shutdown => return Ok(()),
            result = register(config, &identity) => result,
        };
        let failure = match connected {
            Ok(mut connection) => {
                attempt = 0;
                let trust_key = connection.trust_key();
                settings::pin_trust_key(
                    &config.state_dir,
                    &connection.fleet_id().to_string(),
                    &trust_key.to_string(),
                )?;
                let context = Arc::new(StreamContext {
                    identity: Arc::clone(&identity),
                    fleet_id: FleetId::from_bytes(connection.fleet_id().into_bytes()),
                    trust_key,
                    sessions: Arc::clone(&sessions),
                    forward_policy: config.forward_policy.clone(),
                    remote_pending: Arc::default(),
                });
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
                    err = connection.keep_alive() => err,
                };
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

/// How often ended and idle sessions are swept.
const REAP_INTERVAL: Duration = Duration::from_secs(30);

/// Aborts the session reaper when the presence loop returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
