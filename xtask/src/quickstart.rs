//! `cargo xtask quickstart`: builds the binaries and shows the contour on this machine with embedded defaults.
//!
//! Every step prints the exact command it runs, so a person can repeat it by hand.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs the quickstart. State lives under `target/quickstart/`, so a second run reuses the same identity.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    if let Some(unknown) = args.first() {
        bail!("quickstart takes no arguments, got `{unknown}`");
    }
    let state = root.join("target").join("quickstart");
    let agent_dir = state.join("agent");
    println!("# building the binaries");
    shown(Command::new("cargo").args(["build", "--release", "-p", "cmdop-agent"]))?;
    let agent = root.join("target").join("release").join("cmdop-agent");
    let agent_dir = agent_dir
        .to_str()
        .context("the quickstart directory is not UTF-8")?;
    println!("\n# the agent's identity: created on first run, the same on every run after");
    shown(Command::new(&agent).args(["--config-dir", agent_dir, "identity", "init"]))?;
    shown(Command::new(&agent).args(["--config-dir", agent_dir, "identity", "show"]))?;
    Ok(())
}

/// Prints a command the way a person would type it, then runs it with inherited stdio.
fn shown(command: &mut Command) -> Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let args: Vec<String> = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    println!("$ {program} {}", args.join(" "));
    let status = command
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("`{program}` exited with {status}");
    }
    Ok(())
}
