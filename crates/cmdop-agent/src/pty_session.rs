//! One interactive session: a login shell in a PTY that outlives the clients attached to it.
//!
//! The PTY's master side is non-blocking and driven from the async runtime: a task reads it into the
//! session's [`OutputRing`], and keystrokes are written to it by the task that received them, so neither
//! direction waits for a thread hand-off. One thread waits for the shell to exit. Attached clients are
//! async tasks that read the ring from their own offset. While a client is attached the reader never
//! evicts bytes that client has not acknowledged writing to its terminal; it waits instead, so the program
//! is slowed to the pace of its slowest viewer, as over ssh, and a client that dies mid-burst resumes
//! without a gap. With nobody attached it keeps reading and the ring drops the oldest output, so a
//! detached program never blocks.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cmdop_proto::ops::shell::{SessionInfo, WindowSize};
use cmdop_proto::ops::{ExitStatus, MAX_CHUNK};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use portable_pty::{CommandBuilder, MasterPty, PtySize, native_pty_system};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::unix::pipe;
use tokio::sync::{Notify, watch};

use crate::exec::{SANE_PATH, account};
use crate::output_ring::OutputRing;

/// How long the reader may keep draining output after the shell exited before the exit is reported anyway
/// (a background job may hold the terminal open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);
/// Between SIGHUP and SIGKILL when a session is ended.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Why a session could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start a shell in a terminal on this machine: {0}")]
pub struct SpawnError(String);

/// Who an attachment belongs to: the client's key and the terminal instance it named.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The client key proven inside the end-to-end channel.
    pub client_key: String,
    /// The random instance id of the client's terminal.
    pub instance: [u8; 16],
}

/// What an attach was granted.
#[derive(Debug)]
pub struct Grant {
    /// The attachment's id within the session.
    pub id: u64,
    /// The offset of the first byte this attachment will be sent.
    pub offset: u64,
    /// Bytes the client asked for that the buffer no longer holds.
    pub dropped: u64,
    /// Becomes `true` when a newer attachment of the same owner replaced this one.
    pub replaced: watch::Receiver<bool>,
}

/// What an attachment should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Send these bytes (the next ones after the attachment's offset), then call [`PtySession::sent`].
    Output(Vec<u8>),
    /// All output is sent and the shell ended like this.
    Exited(ExitStatus),
    /// Nothing new yet: wait for [`PtySession::progress`] to change.
    Wait,
}

struct Attachment {
    owner: Owner,
    /// Output offset sent so far.
    sent: u64,
    /// Output offset the client confirmed it wrote to its terminal; the buffer keeps everything after it.
    acked: u64,
    replaced: watch::Sender<bool>,
}

struct State {
    ring: OutputRing,
    attachments: HashMap<u64, Attachment>,
    next_attachment: u64,
    last_attached: SystemTime,
    /// When the last attachment left (or the session was created detached).
    detached_since: Option<Instant>,
    /// The reader reached the end of the terminal's output.
    drained: bool,
    /// The shell's status, once it exited and its output was drained (or the drain timed out).
    exit: Option<ExitStatus>,
    /// When `exit` was set.
    exited_at: Option<Instant>,
    /// An attachment was sent the exit: the session can be forgotten.
    exit_delivered: bool,
    /// The session is being killed: the reader stops waiting for slow viewers.
    closing: bool,
}

impl State {
    /// A session that has produced nothing yet and has nobody attached, keeping `buffer` bytes of output.
    fn new(buffer: usize) -> Self {
        Self {
            ring: OutputRing::new(buffer),
            attachments: HashMap::new(),
            next_attachment: 1,
            last_attached: SystemTime::now(),
            detached_since: Some(Instant::now()),
            drained: false,
            exit: None,
            exited_at: None,
            exit_delivered: false,
            closing: false,
        }
    }
}

/// A running (or just ended) session.
pub struct PtySession {
    name: String,
    created: SystemTime,
    /// The shell's pid, which is also its process group and session id (it runs `setsid`).
    shell: Pid,
    master: Mutex<Box<dyn MasterPty + Send>>,
    /// The (non-blocking) master side's writing end: keystrokes go out through it, one writer at a time.
    writer: tokio::sync::Mutex<pipe::Sender>,
    state: Mutex<State>,
    /// Signalled when an attachment advances or leaves, so a waiting reader re-checks for room.
    room: Notify,
    /// Bumped on new output, exit, or drain; attachments wait on it.
    progress: watch::Sender<u64>,
}

impl std::fmt::Debug for PtySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtySession")
            .field("name", &self.name)
            .field("shell", &self.shell)
            .finish_non_exhaustive()
    }
}

impl PtySession {
    /// Starts the account's login shell in a new PTY of `size`, in its home directory, with `TERM` from the
    /// client and the same sane environment `exec` gives commands. Must be called inside the async runtime,
    /// which drives the terminal from then on.
    pub fn spawn(
        name: String,
        term: &str,
        size: WindowSize,
        buffer: usize,
    ) -> Result<Arc<Self>, SpawnError> {
        let fail = |what: &str, err: &dyn std::fmt::Display| SpawnError(format!("{what}: {err}"));
        let pair = native_pty_system()
            .openpty(pty_size(size))
            .map_err(|e| fail("openpty", &e))?;
        let child = pair
            .slave
            .spawn_command(login_shell(&name, term))
            .map_err(|e| fail("spawn the login shell", &e))?;
        // Only the child keeps the terminal's slave side open, so its end reaches the reader as EOF.
        drop(pair.slave);
        let pid = child
            .process_id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw)
            .ok_or_else(|| SpawnError("the shell has no process id".to_owned()))?;
        // We reap the shell ourselves (waitpid) to learn its signal number; the handle is not needed.
        drop(child);
        let (reader, writer) = nonblocking_ends(pair.master.as_ref())?;
        let session = Arc::new(Self {
            name,
            created: SystemTime::now(),
            shell: pid,
            master: Mutex::new(pair.master),
            writer: tokio::sync::Mutex::new(writer),
            state: Mutex::new(State::new(buffer)),
            room: Notify::new(),
            progress: watch::Sender::new(0),
        });
        tokio::spawn(Arc::clone(&session).read_loop(reader));
        spawn_thread("pty-wait", {
            let session = Arc::clone(&session);
            move || session.wait_loop()
        })?;
        Ok(session)
    }

    /// The session's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A receiver that changes whenever there is something new for attachments to look at.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// Attaches `owner`; replays from `resume_from`, or from the oldest byte held when `None`. An older
    /// attachment of the same owner (the same terminal, reconnecting) is replaced.
    pub fn attach(&self, owner: Owner, resume_from: Option<u64>) -> Grant {
        let mut state = self.lock();
        let stale: Vec<u64> = state
            .attachments
            .iter()
            .filter(|(_, a)| a.owner == owner)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(old) = state.attachments.remove(&id) {
                let _ = old.replaced.send(true);
            }
        }
        let wanted = resume_from.unwrap_or_else(|| state.ring.start());
        let offset = wanted.clamp(state.ring.start(), state.ring.end());
        let dropped = offset.saturating_sub(wanted);
        let id = state.next_attachment;
        state.next_attachment += 1;
        let (replaced_tx, replaced) = watch::channel(false);
        state.attachments.insert(
            id,
            Attachment {
                owner,
                sent: offset,
                acked: offset,
                replaced: replaced_tx,
            },
        );
        state.last_attached = SystemTime::now();
        state.detached_since = None;
        drop(state);
        self.room.notify_waiters();
        Grant {
            id,
            offset,
            dropped,
            replaced,
        }
    }

    /// Ends an attachment (detached, replaced or its stream broke).
    pub fn detach(&self, id: u64) {
        let mut state = self.lock();
        if state.attachments.remove(&id).is_some() && state.attachments.is_empty() {
            state.detached_since = Some(Instant::now());
        }
        drop(state);
        self.room.notify_waiters();
    }

    /// What attachment `id` should send next; at most [`MAX_CHUNK`] bytes at a time.
    pub fn next(&self, id: u64) -> Next {
        let mut state = self.lock();
        let Some(sent) = state.attachments.get(&id).map(|a| a.sent) else {
            return Next::Wait;
        };
        let slice = state.ring.read_from(sent, MAX_CHUNK);
        if !slice.bytes.is_empty() {
            return Next::Output(slice.bytes);
        }
        match state.exit {
            Some(status) => {
                state.exit_delivered = true;
                Next::Exited(status)
            }
            None => Next::Wait,
        }
    }

    /// Records that attachment `id` was sent `bytes` more bytes.
    pub fn sent(&self, id: u64, bytes: usize) {
        let mut state = self.lock();
        if let Some(attachment) = state.attachments.get_mut(&id) {
            attachment.sent = attachment.sent.saturating_add(bytes as u64);
        }
    }

    /// Records that attachment `id`'s client wrote output up to `offset`, making room for the reader. An
    /// offset beyond what was sent is a lying or confused client: it is capped, never trusted.
    pub fn ack(&self, id: u64, offset: u64) {
        let mut state = self.lock();
        if let Some(attachment) = state.attachments.get_mut(&id) {
            attachment.acked = attachment.acked.max(offset.min(attachment.sent));
        }
        drop(state);
        self.room.notify_waiters();
    }

    /// Writes keystrokes to the terminal at once; waits when the terminal is not reading them. A terminal
    /// that fails (the shell is gone) drops them.
    pub async fn write(&self, bytes: &[u8]) {
        let _ = self.writer.lock().await.write_all(bytes).await;
    }

    /// Changes the terminal's size; the foreground program gets SIGWINCH.
    pub fn resize(&self, size: WindowSize) {
        let master = self.master.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(err) = master.resize(pty_size(size)) {
            tracing::debug!(session = %self.name, error = %err, "resize failed");
        }
    }

    /// Ends the session: SIGHUP to its processes, as when a terminal closes, then SIGKILL after a grace
    /// period for whatever ignored it.
    pub fn kill(self: &Arc<Self>) {
        self.lock().closing = true;
        self.room.notify_waiters();
        let _ = killpg(self.shell, Signal::SIGHUP);
        let session = Arc::clone(self);
        let _ = std::thread::Builder::new()
            .name("pty-kill".into())
            .spawn(move || {
                std::thread::sleep(KILL_GRACE);
                if session.lock().exit.is_none() {
                    let _ = killpg(session.shell, Signal::SIGKILL);
                }
            });
    }

    /// The session as `cmdop connect sessions` lists it.
    pub fn info(&self) -> SessionInfo {
        let command = self.foreground_command();
        let state = self.lock();
        SessionInfo {
            name: self.name.clone(),
            created: unix_seconds(self.created),
            last_attached: unix_seconds(state.last_attached),
            attached: u32::try_from(state.attachments.len()).unwrap_or(u32::MAX),
            command,
            buffered: state.ring.len() as u64,
            exited: state.exit,
        }
    }

    /// Whether the registry may forget this session: its exit was delivered, or it ended `keep_exited` ago;
    /// or nobody has been attached for `idle_ttl` (the caller then kills it).
    pub fn expiry(&self, now: Instant, idle_ttl: Duration, keep_exited: Duration) -> Expiry {
        let state = self.lock();
        if let Some(at) = state.exited_at {
            if state.exit_delivered && state.attachments.is_empty()
                || now.duration_since(at) >= keep_exited
            {
                return Expiry::Ended;
            }
            return Expiry::Keep;
        }
        match state.detached_since {
            Some(since) if now.duration_since(since) >= idle_ttl => Expiry::Idle,
            _ => Expiry::Keep,
        }
    }

    /// Whether the shell has ended.
    pub fn has_exited(&self) -> bool {
        self.lock().exit.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the terminal into the ring until its end, waiting for room while an attached client lags.
    async fn read_loop(self: Arc<Self>, mut reader: pipe::Receiver) {
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            let n = match reader.read(&mut buf).await {
                // EIO: every slave descriptor closed, the usual way a PTY reports its end.
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.push(buf.get(..n).unwrap_or_default()).await;
            self.progress.send_modify(|n| *n = n.wrapping_add(1));
        }
        self.lock().drained = true;
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Appends `chunk` to the ring once no attached client would lose bytes it has not acknowledged.
    async fn push(&self, chunk: &[u8]) {
        loop {
            // Registered before the check, so a notification between the check and the wait is not missed.
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                let keep_from = state.ring.start_after_push(chunk.len());
                let lagging = state.attachments.values().any(|a| a.acked < keep_from);
                if !lagging || state.closing {
                    state.ring.push(chunk);
                    return;
                }
            }
            // Timed, so a missed notification costs a moment, never a hang.
            let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
        }
    }

    fn wait_loop(&self) {
        let status = loop {
            match waitpid(self.shell, None) {
                Ok(WaitStatus::Exited(_, code)) => break ExitStatus::Code(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => break ExitStatus::Signal(signal as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(err) => {
                    tracing::warn!(session = %self.name, error = %err, "cannot wait for the shell");
                    break ExitStatus::Code(255);
                }
            }
        };
        let deadline = Instant::now() + DRAIN_AFTER_EXIT;
        while !self.lock().drained && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut state = self.lock();
        state.exit = Some(status);
        state.exited_at = Some(Instant::now());
        drop(state);
        tracing::info!(session = %self.name, ?status, "session ended");
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The command line of the terminal's foreground process, from `/proc`; the shell's name otherwise.
    fn foreground_command(&self) -> String {
        let leader = self
            .master
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .process_group_leader();
        let pid = leader.unwrap_or(self.shell.as_raw());
        let cmdline = std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline"))
            .unwrap_or_default();
        let words: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        let text = words.join(" ");
        // Keep the listing one line and free of terminal control characters.
        text.chars()
            .filter(|c| !c.is_control())
            .take(80)
            .collect::<String>()
            .trim_start_matches('-')
            .to_owned()
    }
}

/// What the registry should do with a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Keep it.
    Keep,
    /// It ended: forget it.
    Ended,
    /// Nobody attached for the idle TTL: kill it.
    Idle,
}

/// The master side as two non-blocking ends the runtime drives: output is read, and keystrokes written, the
/// moment the terminal is ready, with no thread hand-off in between. Both are duplicates of the master's
/// descriptor, so `O_NONBLOCK` (a flag of the open file they share) set once holds for both.
fn nonblocking_ends(
    master: &(dyn MasterPty + Send),
) -> Result<(pipe::Receiver, pipe::Sender), SpawnError> {
    let fail = |what: &str, err: &dyn std::fmt::Display| SpawnError(format!("{what}: {err}"));
    let fd = master
        .as_raw_fd()
        .ok_or_else(|| SpawnError("the terminal has no descriptor".to_owned()))?;
    // portable-pty hands out the master's descriptor only as a number.
    #[expect(
        unsafe_code,
        reason = "borrowing a descriptor by number is unsafe; `master` owns it and is alive for the borrow"
    )]
    // SAFETY: `fd` is `master`'s open descriptor, and `master` outlives this borrow, which only duplicates it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let read_end = borrowed
        .try_clone_to_owned()
        .map_err(|e| fail("duplicate the terminal", &e))?;
    let write_end = read_end
        .try_clone()
        .map_err(|e| fail("duplicate the terminal", &e))?;
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| fail("read the terminal's flags", &e))?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| fail("make the terminal non-blocking", &e))?;
    // A PTY master is no pipe, but it reads and writes like one; the runtime only needs readiness.
    let reader = pipe::Receiver::from_owned_fd_unchecked(read_end)
        .map_err(|e| fail("watch the terminal", &e))?;
    let writer = pipe::Sender::from_owned_fd_unchecked(write_end)
        .map_err(|e| fail("watch the terminal", &e))?;
    Ok((reader, writer))
}

/// The account's login shell for session `name`, in its home directory, with `TERM` from the client and the
/// same sane environment `exec` gives commands.
fn login_shell(name: &str, term: &str) -> CommandBuilder {
    let account = account();
    let mut command = CommandBuilder::new_default_prog();
    command.env_clear();
    command.env("PATH", SANE_PATH);
    command.env("HOME", &account.home);
    command.env("USER", &account.name);
    command.env("LOGNAME", &account.name);
    command.env("SHELL", &account.shell);
    command.env("TERM", sanitize_term(term));
    command.env(
        "LANG",
        std::env::var_os("LANG").unwrap_or_else(|| OsString::from("C.UTF-8")),
    );
    // Lets a shell (or a person) tell it runs inside a cmdop session, as TMUX does for tmux.
    command.env("CMDOP_SESSION", name);
    command.cwd(&account.home);
    command
}

fn spawn_thread(name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), SpawnError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map(|_| ())
        .map_err(|e| SpawnError(format!("cannot start a thread: {e}")))
}

fn pty_size(size: WindowSize) -> PtySize {
    PtySize {
        // A zero size confuses full-screen programs; 80x24 is what terminals assume.
        rows: if size.rows == 0 { 24 } else { size.rows },
        cols: if size.cols == 0 { 80 } else { size.cols },
        pixel_width: 0,
        pixel_height: 0,
    }
}

/// `TERM` comes from the client: keep it to the characters terminal names use, else fall back.
fn sanitize_term(term: &str) -> &str {
    let ok = !term.is_empty()
        && term.len() <= 64
        && term
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'));
    if ok { term } else { "xterm-256color" }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn term_is_sanitized() {
        assert_eq!(sanitize_term("xterm-256color"), "xterm-256color");
        assert_eq!(sanitize_term("screen.xterm+new"), "screen.xterm+new");
        assert_eq!(sanitize_term(""), "xterm-256color");
        assert_eq!(sanitize_term("x\u{1b}]0;evil"), "xterm-256color");
        assert_eq!(sanitize_term("a b"), "xterm-256color");
    }

    fn owner(byte: u8) -> Owner {
        Owner {
            client_key: "k".into(),
            instance: [byte; 16],
        }
    }

    async fn collect_until(session: &PtySession, id: u64, needle: &str) -> String {
        let mut progress = session.progress();
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match session.next(id) {
                Next::Output(bytes) => {
                    session.sent(id, bytes.len());
                    seen.extend(bytes);
                    session.ack(id, u64::MAX);
                    if String::from_utf8_lossy(&seen).contains(needle) {
                        return String::from_utf8_lossy(&seen).into_owned();
                    }
                }
                Next::Exited(status) => {
                    panic!("exited {status:?}: {}", String::from_utf8_lossy(&seen))
                }
                Next::Wait => {
                    tokio::time::timeout_at(deadline, progress.changed())
                        .await
                        .expect("output in time")
                        .unwrap();
                }
            }
        }
    }

    #[tokio::test]
    async fn a_shell_runs_in_a_terminal_and_reports_its_exit() {
        let session = PtySession::spawn(
            "t".into(),
            "xterm",
            WindowSize {
                cols: 100,
                rows: 30,
            },
            1 << 20,
        )
        .unwrap();
        let grant = session.attach(owner(1), None);
        session.write(b"stty size; echo M-$((6*7))\r").await;
        let out = collect_until(&session, grant.id, "M-42").await;
        assert!(out.contains("30 100"), "{out}");
        session.write(b"exit 3\r").await;
        let mut progress = session.progress();
        loop {
            match session.next(grant.id) {
                Next::Output(bytes) => session.sent(grant.id, bytes.len()),
                Next::Exited(status) => {
                    assert_eq!(status, ExitStatus::Code(3));
                    break;
                }
                Next::Wait => progress.changed().await.unwrap(),
            }
        }
    }

    #[tokio::test]
    async fn the_same_owner_replaces_its_old_attachment() {
        let session = PtySession::spawn(
            "t".into(),
            "xterm",
            WindowSize { cols: 80, rows: 24 },
            1 << 20,
        )
        .unwrap();
        let first = session.attach(owner(1), None);
        let other = session.attach(owner(2), None);
        let second = session.attach(owner(1), Some(0));
        assert!(*first.replaced.borrow());
        assert!(!*other.replaced.borrow());
        assert_eq!(session.info().attached, 2);
        session.detach(second.id);
        session.detach(other.id);
        assert_eq!(session.info().attached, 0);
        session.kill();
    }
}
