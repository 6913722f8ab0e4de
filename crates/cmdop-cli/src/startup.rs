//! What the `cmdop` process sets up before any subcommand runs: a quiet end when stdout's reader goes away,
//! and logging to stderr.

/// `println!` panics when stdout is a pipe whose reader has gone (`cmdop connect --list | head -0`): Rust
/// ignores SIGPIPE, so the write fails with EPIPE. Output is printed from every subcommand, so rather than
/// thread a writer through all of them, such a panic ends the process quietly with status 0, the way a
/// reader that stopped early expects (the same as exec's own output does). Any other panic is reported as
/// usual.
pub(crate) fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// Logs go to stderr and default to warnings only, so that stdout carries exactly the command's output.
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
}
