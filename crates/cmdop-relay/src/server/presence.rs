//! Presence in memory, written to the store in batches: the driver of cmdop-proto's [`PresenceBook`].
//!
//! Heartbeats only change the book (under its own lock, not the store's); a task writes the `last_seen` that
//! is due every [`PRESENCE_FLUSH`] in one transaction. Coming online and going offline are written at once
//! ([`write_changes`]). The relay itself reads presence from the book (listings, routing), so what it tells
//! clients is never stale; the store's copy is for the admin verbs and `status` in other processes, and for
//! `last_seen` across restarts.

use std::sync::Arc;
use std::time::Duration;

use cmdop_fleet::Machine;
use cmdop_proto::presence::PresenceBook;

use super::Shared;

pub(super) use cmdop_proto::presence::PRESENCE_FLUSH;

/// Writes what the book says is due, every `every`, until the task is aborted.
pub(super) async fn flush_every(shared: Arc<Shared>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        flush(&shared);
    }
}

/// Writes what is due now in one transaction. On a store error nothing is marked written, so the next flush
/// tries again.
pub(super) fn flush(shared: &Shared) {
    let writes = shared.presence().due();
    store(shared, &writes);
}

/// Writes the machines that came online or went offline, at once (with any others changed meanwhile, in the
/// same transaction).
pub(super) fn write_changes(shared: &Shared) {
    let writes = shared.presence().changes();
    store(shared, &writes);
}

fn store(shared: &Shared, writes: &[cmdop_proto::presence::PresenceWrite]) {
    if writes.is_empty() {
        return;
    }
    let stored = shared.lock_store().store_presence(writes);
    match stored {
        Ok(()) => shared.presence().written(writes),
        Err(err) => tracing::error!(%err, machines = writes.len(), "cannot record presence"),
    }
}

/// Corrects machines read from the store with the book: whether each is online, when it was last heard.
pub(super) fn apply(book: &PresenceBook, machines: &mut [Machine]) {
    for machine in machines {
        book.apply(machine);
    }
}
