//! Interactive sessions on this machine: the registry that keeps them across client and relay connections,
//! its limits, and the handler for shell streams (attach, list, kill).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cmdop_client::secure_stream::{SecureReceiver, SecureSender, SecureStreamError};
use cmdop_proto::ops::shell::{
    AttachRequest, SessionInfo, ShellReply, ShellRequest, valid_session_name,
};
use tokio::sync::mpsc;

use crate::fleet_lock;
use crate::pty_session::{Expiry, Next, Owner, PtySession, SpawnError};

/// Limits on the sessions this agent keeps; documented in `docs/cli.md`.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Sessions at once (running or just ended).
    pub max_sessions: usize,
    /// A session nobody has been attached to for this long is ended.
    pub idle_ttl: Duration,
    /// Output kept per session for reattaching, in bytes.
    pub buffer: usize,
    /// How long an ended session is kept for a client that reconnects to collect its last output and status.
    pub keep_exited: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_sessions: 64,
            idle_ttl: Duration::from_secs(24 * 3600),
            buffer: 1 << 20,
            keep_exited: Duration::from_secs(600),
        }
    }
}

/// Why a client's attach or kill was refused; the message is what the client shows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The requested name is not one a session can have.
    #[error(
        "invalid session name {0:?}: use 1 to 32 letters, digits, '.', '_' or '-', not starting with '-' or '.'"
    )]
    InvalidName(String),
    /// A reattach named a session that is no longer here.
    #[error("no session {0:?} on this machine any more: it ended or the agent restarted")]
    Gone(String),
    /// A new session would exceed [`SessionLimits::max_sessions`].
    #[error(
        "this machine already has {0} sessions, the agent's limit; end one with `cmdop connect kill MACHINE SESSION`"
    )]
    Full(usize),
    /// The shell could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// A kill named a session that does not exist.
    #[error("no session {0:?} on this machine")]
    NotFound(String),
}

/// Every session on this machine, by name. Lives as long as the agent process, across relay reconnects.
#[derive(Debug)]
pub struct Sessions {
    limits: SessionLimits,
    sessions: Mutex<BTreeMap<String, Arc<PtySession>>>,
}

impl Sessions {
    /// An empty registry.
    pub fn new(limits: SessionLimits) -> Self {
        Self {
            limits,
            sessions: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<PtySession>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Finds the requested session, or creates it when allowed. Returns whether it was created.
    fn find_or_create(
        &self,
        request: &AttachRequest,
    ) -> Result<(Arc<PtySession>, bool), SessionError> {
        let mut sessions = self.lock();
        if let Some(name) = &request.session {
            if !valid_session_name(name) {
                return Err(SessionError::InvalidName(name.clone()));
            }
            if let Some(session) = sessions.get(name) {
                return Ok((Arc::clone(session), false));
            }
            if !request.create {
                return Err(SessionError::Gone(name.clone()));
            }
        }
        if sessions.len() >= self.limits.max_sessions {
            return Err(SessionError::Full(sessions.len()));
        }
        let name = match &request.session {
            Some(name) => name.clone(),
            // The smallest free number, so generated names stay short to type.
            None => (1..)
                .map(|n: u64| n.to_string())
                .find(|n| !sessions.contains_key(n))
                .unwrap_or_default(),
        };
        let session = PtySession::spawn(
            name.clone(),
            &request.term,
            request.size,
            self.limits.buffer,
        )?;
        tracing::info!(session = %name, "session started");
        sessions.insert(name, Arc::clone(&session));
        Ok((session, true))
    }

    /// Every session, by name.
    pub fn list(&self) -> Vec<SessionInfo> {
        let sessions: Vec<Arc<PtySession>> = self.lock().values().cloned().collect();
        sessions.iter().map(|s| s.info()).collect()
    }

    /// Ends a session by name.
    pub fn kill(&self, name: &str) -> Result<(), SessionError> {
        let session = self
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| SessionError::NotFound(name.to_owned()))?;
        session.kill();
        Ok(())
    }

    /// Forgets ended sessions and ends idle ones; run periodically.
    pub fn reap(&self, now: Instant) {
        let mut sessions = self.lock();
        sessions.retain(|name, session| {
            match session.expiry(now, self.limits.idle_ttl, self.limits.keep_exited) {
                Expiry::Keep => true,
                Expiry::Ended => false,
                Expiry::Idle => {
                    tracing::info!(session = %name, "ending a session idle for longer than its TTL");
                    session.kill();
                    true
                }
            }
        });
    }

    /// Runs [`Self::reap`] every `every` until dropped with the task.
    pub async fn reap_forever(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            self.reap(Instant::now());
        }
    }
}

/// What a viewer of a locked fleet is told when it asks for more than it may.
const VIEW_ONLY: &str =
    "a viewer may only list sessions and attach read-only (--read-only) to existing ones";

/// Serves one shell stream whose client proved `client_key`, with what the fleet lock granted it (a viewer
/// may only list sessions and attach read-only to existing ones).
pub async fn serve(
    mut sender: SecureSender,
    mut receiver: SecureReceiver,
    sessions: &Sessions,
    client_key: String,
    grant: fleet_lock::Grant,
) -> Result<(), SecureStreamError> {
    let first = receiver.recv::<ShellRequest>().await?;
    let view_only = grant == fleet_lock::Grant::ViewOnly;
    let allowed = match &first {
        Some(ShellRequest::List) => true,
        Some(ShellRequest::Attach(request)) => !view_only || request.read_only,
        _ => !view_only,
    };
    if !allowed {
        sender
            .send(&ShellReply::Failed {
                message: VIEW_ONLY.into(),
            })
            .await?;
        return sender.end(0).await;
    }
    let request = match first {
        // A viewer never starts a shell: only an existing session can be watched.
        Some(ShellRequest::Attach(mut request)) => {
            request.create &= !view_only;
            request
        }
        Some(ShellRequest::List) => {
            sender.send(&ShellReply::Sessions(sessions.list())).await?;
            return sender.end(0).await;
        }
        Some(ShellRequest::Kill { name }) => {
            let reply = match sessions.kill(&name) {
                Ok(()) => ShellReply::Killed,
                Err(err) => ShellReply::Failed {
                    message: err.to_string(),
                },
            };
            sender.send(&reply).await?;
            return sender.end(0).await;
        }
        _ => {
            sender
                .send(&ShellReply::Failed {
                    message: "a shell stream must start with attach, list or kill".into(),
                })
                .await?;
            return sender.end(0).await;
        }
    };
    let (session, created) = match sessions.find_or_create(&request) {
        Ok(found) => found,
        Err(err) => {
            let message = err.to_string();
            sender.send(&ShellReply::Failed { message }).await?;
            return sender.end(0).await;
        }
    };
    let owner = Owner {
        client_key,
        instance: request.instance,
    };
    let grant = session.attach(owner, request.resume_from);
    let id = grant.id;
    let result = attached(&mut sender, receiver, &session, &request, created, grant).await;
    session.detach(id);
    match result {
        Ok(Ending::Exited) => {
            // The client saw the exit; the registry may now forget the session.
            sessions.reap(Instant::now());
            sender.end(0).await
        }
        Ok(Ending::Detached | Ending::Replaced) => sender.end(0).await,
        Err(err) => Err(err),
    }
}

enum Ending {
    Exited,
    Detached,
    Replaced,
}

async fn attached(
    sender: &mut SecureSender,
    receiver: SecureReceiver,
    session: &Arc<PtySession>,
    request: &AttachRequest,
    created: bool,
    mut grant: crate::pty_session::Grant,
) -> Result<Ending, SecureStreamError> {
    if !request.read_only && !created {
        // The newest writer's window wins, as in tmux's "latest" policy.
        session.resize(request.size);
    }
    sender
        .send(&ShellReply::Attached {
            session: session.name().to_owned(),
            created,
            offset: grant.offset,
            dropped: grant.dropped,
        })
        .await?;

    let (mut detached, _reader_guard) =
        read_requests(receiver, Arc::clone(session), grant.id, request.read_only);
    let mut progress = session.progress();
    loop {
        // Send everything available before waiting.
        match session.next(grant.id) {
            Next::Output(bytes) => {
                let len = bytes.len();
                sender.send(&ShellReply::Output(bytes)).await?;
                session.sent(grant.id, len);
                continue;
            }
            Next::Exited(status) => {
                sender.send(&ShellReply::Exited(status)).await?;
                return Ok(Ending::Exited);
            }
            Next::Wait => {}
        }
        tokio::select! {
            changed = progress.changed() => {
                if changed.is_err() {
                    return Ok(Ending::Detached);
                }
            }
            replaced = grant.replaced.changed() => {
                if replaced.is_err() || *grant.replaced.borrow() {
                    sender.send(&ShellReply::Replaced).await?;
                    return Ok(Ending::Replaced);
                }
            }
            // A detach, or the client's side ended without one (its connection went away).
            _ = detached.recv() => return Ok(Ending::Detached),
        }
    }
}

/// Reads the client's requests on their own task and applies them there: a keystroke goes to the terminal
/// as soon as it is decrypted, a slow send of output never delays it, and it never interrupts a send half-way.
/// The returned receiver yields (or closes) when the client detaches or its side ends; the task stops when
/// the guard is dropped.
fn read_requests(
    mut receiver: SecureReceiver,
    session: Arc<PtySession>,
    id: u64,
    read_only: bool,
) -> (mpsc::Receiver<()>, AbortOnDrop) {
    let (detached_tx, detached) = mpsc::channel::<()>(1);
    let reader = tokio::spawn(async move {
        while let Some(request) = receiver.recv::<ShellRequest>().await? {
            match request {
                ShellRequest::Input(bytes) if !read_only => session.write(&bytes).await,
                ShellRequest::Resize(size) if !read_only => session.resize(size),
                ShellRequest::Ack(offset) => session.ack(id, offset),
                ShellRequest::Detach => break,
                // Observers' input is ignored; a second attach/list/kill on the same stream is meaningless.
                _ => {}
            }
        }
        let _ = detached_tx.send(()).await;
        Ok(())
    });
    (detached, AbortOnDrop(reader))
}

/// Aborts a task when the owner goes away, so no reader outlives its attachment.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), SecureStreamError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_they_always_have() {
        let cases = [
            (
                SessionError::InvalidName("-x".into()),
                "invalid session name \"-x\": use 1 to 32 letters, digits, '.', '_' or '-', not starting with '-' or '.'",
            ),
            (
                SessionError::Gone("work".into()),
                "no session \"work\" on this machine any more: it ended or the agent restarted",
            ),
            (
                SessionError::Full(64),
                "this machine already has 64 sessions, the agent's limit; end one with `cmdop connect kill MACHINE SESSION`",
            ),
            (
                SessionError::NotFound("work".into()),
                "no session \"work\" on this machine",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
        }
    }
}
