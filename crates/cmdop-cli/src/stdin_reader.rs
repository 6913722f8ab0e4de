//! Reading this process's stdin so that it can be abandoned: every command that forwards stdin (`exec`, `rsh`,
//! `proxy`, the interactive terminal) reads it here.
//!
//! A read from stdin blocks until input arrives, and nothing can cancel it. tokio's own `stdin()` runs that
//! read on the runtime's blocking pool, and a runtime waits for its blocking pool when it shuts down, so a
//! command whose remote side had long exited would still wait for its own stdin to close
//! (`sleep 8 | cmdop connect exec m -- echo hi` took 8 s, and `rsync -e 'cmdop rsh'` hung forever). Here the
//! read runs on a thread of its own that nobody joins: when the command is done, the process exits and the
//! thread goes with it, whatever stdin is doing.
//!
//! ```text
//!  stdin ──read()──▶ "stdin" thread (detached) ──chunks──▶ mpsc::Receiver ──▶ the command's async code
//!                    EOF or a read error: the channel closes
//! ```

use std::io::Read as _;
use std::os::fd::AsFd as _;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::sync::mpsc;

/// How many chunks may wait in the channel: enough to keep the reader busy while the sender encrypts, few
/// enough that a stalled remote side stops the reading (and so the writer at the other end of the pipe).
const QUEUED_CHUNKS: usize = 8;

/// Starts reading stdin in chunks of at most `chunk` bytes. The receiver yields each chunk as it arrives and
/// `None` once stdin has ended (EOF, or a read error, which is treated the same: no more input will come).
///
/// Dropping the receiver stops the reading after the read in progress; nothing waits for that read.
pub(crate) fn spawn(chunk: usize) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    let started = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || read_until_end(&tx, chunk.max(1)));
    if let Err(err) = started {
        // Without the thread the receiver reports the end at once: the remote side sees an empty stdin
        // rather than waiting forever for input that cannot come.
        tracing::warn!(%err, "cannot start the thread that reads stdin; sending no input");
    }
    rx
}

fn read_until_end(tx: &mpsc::Sender<Vec<u8>>, chunk: usize) {
    let mut stdin = std::io::stdin();
    let mut buf = vec![0u8; chunk];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let bytes = buf.get(..n).unwrap_or_default().to_vec();
                if tx.blocking_send(bytes).is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            // stdin may share its open file description with stdout (one terminal), which the interactive
            // terminal makes non-blocking: wait for input instead of spinning.
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                let stdin = std::io::stdin();
                let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::NONE);
            }
            Err(err) => {
                tracing::debug!(%err, "reading stdin failed; treating it as its end");
                return;
            }
        }
    }
}
