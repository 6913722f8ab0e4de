//! The local terminal during an interactive session: raw mode that is always undone, and its size.
//!
//! Raw mode is restored when the guard drops (normal return, error), from the panic hook (a panic), and by the
//! session loop on SIGTERM, SIGHUP and SIGINT before exiting. Only SIGKILL can leave it raw, as with ssh.

use std::io::IsTerminal as _;
use std::os::fd::{AsFd as _, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use cmdop_proto::ops::shell::WindowSize;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

/// Whether raw mode is on, so every exit path restores it exactly once.
static RAW: AtomicBool = AtomicBool::new(false);
/// stdout's file status flags before [`TerminalWriter`] made it non-blocking; -1 when untouched.
static SAVED_FLAGS: AtomicI32 = AtomicI32::new(-1);
/// stdin's, before [`Keys`] made it non-blocking; -1 when untouched.
static SAVED_STDIN_FLAGS: AtomicI32 = AtomicI32::new(-1);

/// Raw mode for as long as it lives; a no-op when stdin is not a terminal.
#[derive(Debug)]
pub(crate) struct RawMode(());

impl RawMode {
    /// Puts the terminal in raw mode (keys reach the remote side as bytes: Ctrl-C, Ctrl-Z, arrows).
    pub(crate) fn enable() -> std::io::Result<Self> {
        if std::io::stdin().is_terminal() {
            install_panic_hook();
            crossterm::terminal::enable_raw_mode()?;
            RAW.store(true, Ordering::SeqCst);
        }
        Ok(Self(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Restores the terminal if raw mode is on, and stdin's and stdout's blocking mode; safe to call from any exit path, any
/// number of times.
pub(crate) fn restore() {
    if RAW.swap(false, Ordering::SeqCst) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
    let flags = SAVED_FLAGS.swap(-1, Ordering::SeqCst);
    if flags >= 0 {
        let _ = fcntl(
            std::io::stdout().as_raw_fd(),
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags)),
        );
    }
    restore_stdin_flags();
}

/// Keystrokes from stdin, read on the runtime itself when stdin can be polled (a terminal, a pipe): a key
/// is sent the moment the terminal has it, with no thread hand-off. Anything else (a file) is read on a
/// thread. stdin is made non-blocking for this; [`restore`] undoes it.
pub(crate) enum Keys {
    /// A duplicate of stdin registered with the runtime's reactor, and the buffer it is read into.
    Polled(pipe::Receiver, Vec<u8>),
    /// A reader thread's hand-over.
    Thread(mpsc::Receiver<Vec<u8>>),
}

impl Keys {
    /// Starts reading stdin; must be called inside the async runtime.
    pub(crate) fn start() -> Self {
        let stdin = std::io::stdin();
        let fd = stdin.as_raw_fd();
        let polled = fcntl(fd, FcntlArg::F_GETFL).ok().and_then(|flags| {
            let _ =
                SAVED_STDIN_FLAGS.compare_exchange(-1, flags, Ordering::SeqCst, Ordering::SeqCst);
            let old = OFlag::from_bits_truncate(flags);
            fcntl(fd, FcntlArg::F_SETFL(old | OFlag::O_NONBLOCK)).ok()?;
            let owned = stdin.as_fd().try_clone_to_owned().ok()?;
            // Not necessarily a pipe (usually a terminal), but read like one; the reactor refuses what it
            // cannot poll (a regular file), and the thread takes over.
            pipe::Receiver::from_owned_fd_unchecked(owned).ok()
        });
        match polled {
            Some(stdin) => Self::Polled(stdin, vec![0u8; 4096]),
            None => {
                restore_stdin_flags();
                Self::Thread(crate::stdin_reader::spawn(4096))
            }
        }
    }

    /// The next keys, or `None` at the end of stdin. Cancel-safe: nothing is lost when the future is dropped.
    pub(crate) async fn recv(&mut self) -> Option<Vec<u8>> {
        match self {
            Self::Thread(keys) => keys.recv().await,
            Self::Polled(stdin, buf) => loop {
                // `readable` then `try_read` rather than `read`: cancelling between them loses nothing.
                stdin.readable().await.ok()?;
                match stdin.try_read(buf) {
                    Ok(0) => return None,
                    Ok(n) => return Some(buf.get(..n).unwrap_or_default().to_vec()),
                    Err(err)
                        if matches!(
                            err.kind(),
                            std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                        ) => {}
                    Err(_) => return None,
                }
            },
        }
    }
}

fn restore_stdin_flags() {
    let flags = SAVED_STDIN_FLAGS.swap(-1, Ordering::SeqCst);
    if flags >= 0 {
        let _ = fcntl(
            std::io::stdin().as_raw_fd(),
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags)),
        );
    }
}

/// Writes session output to stdout with exact accounting of what reached it.
///
/// A blocking write that is interrupted by SIGKILL may already have handed part of its buffer to the terminal,
/// and nobody learns how much: the resume position would lag and the next attach would repeat bytes. So on a
/// terminal, stdout is made non-blocking (restored by [`restore`]): every `write` returns at once with the
/// count the terminal took, the caller records it, and waiting for room happens in `poll` (on the blocking
/// pool; it is rare, only when the terminal is slower than the output), where dying loses nothing. stdout and stdin usually share one open terminal, so stdin turns non-blocking too; its reader
/// polls (see `attach`).
pub(crate) struct TerminalWriter {
    nonblocking: bool,
}

impl TerminalWriter {
    /// Prepares stdout; on anything but a terminal (a file, a pipe) writes simply block.
    pub(crate) fn new() -> Self {
        let stdout = std::io::stdout();
        if !stdout.is_terminal() {
            return Self { nonblocking: false };
        }
        let fd: RawFd = stdout.as_raw_fd();
        let Ok(flags) = fcntl(fd, FcntlArg::F_GETFL) else {
            return Self { nonblocking: false };
        };
        let old = OFlag::from_bits_truncate(flags);
        let nonblocking = SAVED_FLAGS
            .compare_exchange(-1, flags, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
            && fcntl(fd, FcntlArg::F_SETFL(old | OFlag::O_NONBLOCK)).is_ok();
        if !nonblocking {
            SAVED_FLAGS.store(-1, Ordering::SeqCst);
        }
        Self { nonblocking }
    }

    /// Writes all of `bytes`, calling `wrote(n)` after every chunk the terminal accepted.
    pub(crate) async fn write_all(
        &mut self,
        bytes: &[u8],
        mut wrote: impl FnMut(usize),
    ) -> std::io::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            match nix::unistd::write(std::io::stdout().as_fd(), rest) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    wrote(n);
                    rest = rest.get(n..).unwrap_or_default();
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) if self.nonblocking => {
                    tokio::task::spawn_blocking(|| {
                        let stdout = std::io::stdout();
                        let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLOUT)];
                        let _ = poll(&mut fds, PollTimeout::NONE);
                    })
                    .await
                    .map_err(std::io::Error::other)?;
                }
                Err(errno) => return Err(errno.into()),
            }
        }
        Ok(())
    }
}

fn install_panic_hook() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Restore first, so the panic message is readable.
        restore();
        previous(info);
    }));
}

/// The terminal's size, or 80x24 when there is no terminal.
pub(crate) fn size() -> WindowSize {
    match crossterm::terminal::size() {
        Ok((cols, rows)) if cols > 0 && rows > 0 => WindowSize { cols, rows },
        _ => WindowSize { cols: 80, rows: 24 },
    }
}

/// `TERM` to give the remote shell.
pub(crate) fn term() -> String {
    std::env::var("TERM")
        .ok()
        .filter(|t| !t.is_empty() && t != "dumb")
        .unwrap_or_else(|| "xterm-256color".to_owned())
}
