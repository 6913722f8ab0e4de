//! A client in a real pseudo-terminal for the lab's shell checks: the lab types into it and reads everything
//! the terminal shows, on a thread, so a check can wait for text while the session runs over a bad network.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use portable_pty::{CommandBuilder, PtySize, native_pty_system};

/// A command running in a terminal of 200 columns, with everything it printed so far.
pub(crate) struct Terminal {
    writer: Box<dyn Write + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    _master: Box<dyn portable_pty::MasterPty + Send>,
    shown: Arc<Mutex<Vec<u8>>>,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal").finish_non_exhaustive()
    }
}

impl Terminal {
    /// Starts `command` in a new terminal.
    pub(crate) fn start(command: &Command) -> Result<Self> {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: 50,
                cols: 200,
                pixel_width: 0,
                pixel_height: 0,
            })
            .map_err(|e| anyhow!("cannot open a pseudo-terminal: {e}"))?;
        let mut builder = CommandBuilder::new(command.get_program());
        builder.args(command.get_args());
        builder.env("TERM", "xterm-256color");
        let child = pair
            .slave
            .spawn_command(builder)
            .map_err(|e| anyhow!("cannot start {}: {e}", crate::contour::shell_line(command)))?;
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().map_err(|e| anyhow!("{e}"))?;
        let writer = pair.master.take_writer().map_err(|e| anyhow!("{e}"))?;
        let shown: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = Arc::clone(&shown);
        thread::spawn(move || {
            let mut buffer = [0u8; 16 * 1024];
            while let Ok(n) = reader.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                if let (Ok(mut shown), Some(bytes)) = (sink.lock(), buffer.get(..n)) {
                    shown.extend_from_slice(bytes);
                }
            }
        });
        Ok(Self {
            writer,
            child,
            _master: pair.master,
            shown,
        })
    }

    /// Types `text` (use `\r` for Enter).
    pub(crate) fn type_text(&mut self, text: &str) -> Result<()> {
        self.writer
            .write_all(text.as_bytes())
            .context("cannot type into the terminal")?;
        self.writer.flush().context("cannot type into the terminal")
    }

    /// Everything the terminal showed so far, as text.
    pub(crate) fn shown(&self) -> String {
        self.shown
            .lock()
            .map(|s| String::from_utf8_lossy(&s).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the terminal has shown `needle` after byte `from` of its output; returns where it ends.
    pub(crate) fn wait_for(
        &mut self,
        needle: &str,
        from: usize,
        timeout: Duration,
    ) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let shown = self.shown();
            if let Some(at) = shown.get(from..).and_then(|rest| rest.find(needle)) {
                return Ok(from + at + needle.len());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "the client exited ({status:?}) before showing {needle:?}; last output: {}",
                    tail(&shown)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the terminal did not show {needle:?} within {timeout:?}; last output: {}",
                    tail(&shown)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the client to exit, up to `timeout`.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Result<portable_pty::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("cannot poll the client")? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("the client did not exit within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The last 300 characters of `text`, for error messages.
fn tail(text: &str) -> String {
    let start = text.char_indices().rev().nth(300).map_or(0, |(i, _)| i);
    format!("{:?}", text.get(start..).unwrap_or_default())
}

/// The numbers of the lines of `text` that are exactly `prefix` followed by digits (terminal line ends and
/// stray carriage returns ignored), in the order shown.
pub(crate) fn numbered_lines(text: &str, prefix: &str) -> Vec<u64> {
    text.split('\n')
        .map(|line| line.trim_matches(|c| c == '\r' || c == ' '))
        .filter_map(|line| line.strip_prefix(prefix))
        .filter(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|rest| rest.parse().ok())
        .collect()
}

/// How `seen` differs from exactly `1..=n` once each, in order: counts of missing, repeated and out-of-order
/// numbers (all zero when it is exactly that).
pub(crate) fn sequence_faults(seen: &[u64], n: u64) -> (u64, u64, u64) {
    let mut counts = vec![0u32; usize::try_from(n).unwrap_or(0) + 1];
    let mut out_of_order = 0;
    let mut previous = 0;
    for &k in seen {
        if let Some(c) = usize::try_from(k).ok().and_then(|i| counts.get_mut(i)) {
            *c += 1;
        }
        if k < previous {
            out_of_order += 1;
        }
        previous = k;
    }
    let missing = counts.iter().skip(1).filter(|c| **c == 0).count() as u64;
    let repeated = counts
        .iter()
        .skip(1)
        .map(|c| u64::from(c.saturating_sub(1)))
        .sum();
    (missing, repeated, out_of_order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numbered_lines_from_terminal_output() {
        let shown = "$ seq -f 'out%06g' 1 3\r\nout000001\r\nout000002\r\n\rout000003\r\nout00000x\r\nout\r\n";
        assert_eq!(numbered_lines(shown, "out"), vec![1, 2, 3]);
    }

    #[test]
    fn finds_gaps_repeats_and_reorderings() {
        assert_eq!(sequence_faults(&[1, 2, 3], 3), (0, 0, 0));
        assert_eq!(sequence_faults(&[1, 3], 3), (1, 0, 0));
        assert_eq!(sequence_faults(&[1, 2, 2, 3], 3), (0, 1, 0));
        assert_eq!(sequence_faults(&[1, 3, 2], 3), (0, 0, 1));
    }
}
