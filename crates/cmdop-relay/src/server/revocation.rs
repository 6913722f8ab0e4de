//! Re-checks the credentials of live connections against the store when it changes, and hands each session
//! its credential's standing; the session's state machine decides whether to cut it (and its own timer cuts
//! it at expiry).

use std::sync::Arc;
use std::time::Duration;

use cmdop_fleet::CredentialId;
use tokio::sync::watch;

use super::{Shared, Standing, now};

/// Polls the store's change counter every `poll`; after a change (an admin verb in another process, say),
/// sends every live session the current standing of its credential.
pub(super) async fn watch(shared: Arc<Shared>, poll: Duration) {
    let mut last_version = None;
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let version = shared.lock_store().data_version().ok();
        if version == last_version {
            continue;
        }
        last_version = version;
        let live: Vec<(CredentialId, watch::Sender<Standing>)> = shared
            .sessions()
            .values()
            .map(|s| (s.credential, s.standing.clone()))
            .collect();
        let at = now().unix;
        for (credential, standing) in live {
            let record = shared.lock_store().credential(credential);
            let input = match record {
                Ok(Some(record)) => record.standing(at),
                // A credential deleted from under a live connection no longer stands.
                Ok(None) => Err(cmdop_fleet::AuthError::UnknownCredential { id: credential }),
                // The store could not say: the session keeps running until the next change is seen.
                Err(err) => {
                    tracing::error!(%err, "cannot re-check a live credential");
                    continue;
                }
            };
            // A session that has just ended has dropped its receiver; nothing to tell it.
            let _ = standing.send(Some(input));
        }
    }
}
