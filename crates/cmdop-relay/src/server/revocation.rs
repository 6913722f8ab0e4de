//! Re-checks the credentials of live connections against the store, and hands each session its credential's
//! standing; the session's state machine decides whether to cut it (and its own timer cuts it at expiry).
//!
//! When: after the store changed (`PRAGMA data_version`, which moves when another process such as an admin
//! verb commits), and on a timer regardless, so a change the counter cannot show (a write through the
//! relay's own connection, a store replaced from a backup) is still found. How: fail closed. A credential
//! the store cannot read is reported as [`Standing::Unknown`] and that session ends; the change
//! is recorded as seen only once every live credential was checked, so a failed round is repeated.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cmdop_fleet::CredentialId;
use tokio::sync::watch;

use super::{Shared, Standing, now};

/// Polls the store's change counter every `poll` and re-checks every live credential when it moved (or could
/// not be read), and at least every `recheck`.
pub(super) async fn watch(shared: Arc<Shared>, poll: Duration, recheck: Duration) {
    let mut seen_version = None;
    let mut last_full_check = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // An unreadable counter counts as a change: the re-check below then finds out what the store can say.
        let version = shared.lock_store().data_version().ok();
        let changed = version.is_none() || version != seen_version;
        if !changed && last_full_check.elapsed() < recheck {
            continue;
        }
        last_full_check = tokio::time::Instant::now();
        if recheck_all(&shared) {
            seen_version = version;
        } else {
            // Not seen: the next tick checks again, and every session the store could not vouch for is cut.
            seen_version = None;
        }
    }
}

/// Sends every live session the standing of its credential; `false` if the store failed for any of them
/// (those sessions were told [`Standing::Unknown`]). Each credential is read once, however many connections
/// share it: a fleet of agents enrolled with one key costs one read, not one per machine.
fn recheck_all(shared: &Shared) -> bool {
    let mut live: HashMap<CredentialId, Vec<watch::Sender<Standing>>> = HashMap::new();
    for session in shared.sessions().values() {
        live.entry(session.credential)
            .or_default()
            .push(session.standing.clone());
    }
    let at = now().unix;
    let mut all_checked = true;
    for (credential, senders) in live {
        let record = shared.lock_store().credential(credential);
        let standing = match record {
            Ok(Some(record)) => Standing::Read(record.standing(at)),
            // A credential deleted from under a live connection no longer stands.
            Ok(None) => Standing::Read(Err(cmdop_fleet::AuthError::UnknownCredential {
                id: credential,
            })),
            Err(err) => {
                tracing::error!(%err, %credential, "cannot re-check a live credential; closing its connections");
                all_checked = false;
                Standing::Unknown
            }
        };
        for sender in senders {
            // A session that has just ended has dropped its receiver; nothing to tell it.
            let _ = sender.send(standing.clone());
        }
    }
    all_checked
}
