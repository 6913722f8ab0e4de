//! The local terminal during an interactive session: raw mode that is always undone, and its size.
//!
//! Raw mode is restored when the guard drops (normal return, error), from the panic hook (a panic), and by the
//! session loop on SIGTERM and SIGHUP before exiting. Only SIGKILL can leave it raw, as with ssh.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};

use cmdop_relay::ops::shell::WindowSize;

/// Whether raw mode is on, so every exit path restores it exactly once.
static RAW: AtomicBool = AtomicBool::new(false);

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

/// Restores the terminal if raw mode is on; safe to call from any exit path, any number of times.
pub(crate) fn restore() {
    if RAW.swap(false, Ordering::SeqCst) {
        let _ = crossterm::terminal::disable_raw_mode();
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
