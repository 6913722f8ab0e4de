//! What the `cmdop` process sets up before any subcommand runs: a quiet end when stdout's reader goes away,
//! logging to stderr, and the report of a command line that does not parse.

use std::process::ExitCode;

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

/// Reports a command line clap refused (exit 2, or 0 for `--help` and `--version`), with a tip for the mistake
/// ssh users make most: `cmdop connect exec web-1 uname` without the `--` before the command.
pub(crate) fn usage_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let _ = err.print();
    if !err.use_stderr() {
        return ExitCode::SUCCESS;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        err.kind(),
        ErrorKind::UnknownArgument | ErrorKind::MissingRequiredArgument
    ) && let Some(tip) = missing_double_dash(&args)
    {
        eprintln!("\ntip: {tip}");
    }
    ExitCode::from(2)
}

/// For `… exec MACHINE WORD…` without `--`: the same command line with `--` where it belongs.
fn missing_double_dash(args: &[String]) -> Option<String> {
    if args.iter().any(|arg| arg == "--") {
        return None;
    }
    let exec = args.iter().position(|arg| arg == "exec")?;
    let after = args.get(exec + 1..)?;
    // The first word after the machine (and its flags) that is not a flag starts the command.
    let machine = after.iter().position(|arg| !arg.starts_with('-'))?;
    let command = after
        .iter()
        .skip(machine + 1)
        .position(|arg| !arg.starts_with('-'))
        .map(|i| exec + 1 + machine + 1 + i)?;
    let mut fixed: Vec<&str> = vec!["cmdop"];
    fixed.extend(args.get(..command)?.iter().map(String::as_str));
    fixed.push("--");
    fixed.extend(args.get(command..)?.iter().map(String::as_str));
    Some(format!(
        "the command goes after `--`, as in: {}",
        fixed.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn a_forgotten_double_dash_is_put_back() {
        assert_eq!(
            missing_double_dash(&words("connect exec web-1 uname -a")).unwrap(),
            "the command goes after `--`, as in: cmdop connect exec web-1 -- uname -a"
        );
        assert!(missing_double_dash(&words("connect exec web-1 -- uname")).is_none());
        assert!(missing_double_dash(&words("connect --list")).is_none());
        assert!(missing_double_dash(&words("connect exec web-1")).is_none());
    }
}
