//! `cargo xtask quickstart`: builds the release binaries and brings up the whole contour on this machine.
//!
//! State lives under `target/quickstart/`, so a second run reuses the same relay certificate, fleet, keys,
//! agent identity and login. Every step prints the exact command it runs.

use std::io::IsTerminal;
use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::contour::{self, Binaries, Contour};

/// The quickstart relay's address: fixed, so that a second run (and a person repeating the steps) finds it
/// where the saved login says it is.
const LISTEN: &str = "127.0.0.1:4433";

const USAGE: &str = "usage: cargo xtask quickstart [--locked] [--no-shell] [--no-build] [--debug] [--stop]

  --locked    lock the fleet with an admin key kept in the contour's client directory, and show the admin
              steps: certify this machine after the fingerprint check, make the CLI's key a member
  --no-shell  exit after showing the contour instead of opening a shell and keeping it up until Ctrl-C
  --no-build  use the binaries already built instead of building them
  --debug     use the debug binaries (target/debug, the ones `cargo xtask ci` builds) instead of release
              ones: CI uses this to skip a second, optimised build of the whole dependency tree
  --stop      stop a contour an earlier quickstart left running";

/// Runs the quickstart with its command-line arguments.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut no_shell = false;
    let mut stop = false;
    let mut build = true;
    let mut debug = false;
    let mut locked = false;
    for arg in args {
        match arg.as_str() {
            "--locked" => locked = true,
            "--no-shell" => no_shell = true,
            "--debug" => debug = true,
            "--stop" => stop = true,
            "--no-build" => build = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("quickstart does not take `{other}`\n\n{USAGE}"),
        }
    }
    let state = root.join("target").join("quickstart");
    if stop {
        if !contour::stop_leftovers(&state)? {
            println!("no quickstart contour is running");
        }
        return Ok(());
    }

    let bins = match (build, debug) {
        (true, false) => {
            contour::header("building the release binaries");
            Binaries::build_release(root)?
        }
        (true, true) => {
            contour::header("building the debug binaries");
            Binaries::build_debug(root)?
        }
        (false, false) => Binaries::existing_release(root)?,
        (false, true) => Binaries::existing_debug(root)?,
    };
    let mut contour = Contour::up(bins, &state, LISTEN)?;
    if locked {
        lock(&contour)?;
    }

    contour::header("the agent's identity (the same on every run)");
    let mut show = contour.agent_command();
    show.args(["identity", "show"]);
    // The identity store logs at info level; the summary on stdout is what a person wants here.
    show.env("RUST_LOG", "warn");
    contour::run_shown(&mut show)?;

    contour::header("the machines in the fleet, as the CLI sees them");
    let mut list = contour.cli();
    list.args(["connect", "--list"]);
    contour::run_shown(&mut list)?;

    contour::header("a command on this machine, through the relay");
    if exec_available(&contour) {
        let mut exec = contour.cli();
        exec.args(["connect", "exec", &contour.machine, "--", "uname", "-a"]);
        contour::run_shown(&mut exec)?;
    } else {
        println!("  `cmdop connect exec` is not available in this build yet; skipping it");
    }

    contour::header("how the relay is doing (it serves Prometheus metrics too)");
    let mut relay_status = contour.relay_command(&["status"]);
    contour::run_shown(&mut relay_status)?;
    println!("  metrics: {}", contour.metrics);
    let mut cli_status = contour.cli();
    cli_status.arg("status");
    contour::run_shown(&mut cli_status)?;

    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if !no_shell && interactive {
        contour::header(
            "an interactive shell on this machine, through the relay (exit it to go on)",
        );
        match contour.shell_command() {
            Some(mut shell) => {
                // The shell needs the terminal: stdin too, not the null device the other steps get.
                shell.stdin(std::process::Stdio::inherit());
                if let Err(err) = contour::run_shown(&mut shell) {
                    println!("  the shell ended with an error: {err:#}");
                }
            }
            None => {
                println!("  interactive shells are not available in this build yet; skipping it")
            }
        }
    }
    if no_shell || !interactive {
        contour::header("done; stopping the agent and the relay");
        contour.stop();
        println!(
            "  state kept in {} (run again to reuse it)",
            state.display()
        );
        return Ok(());
    }
    contour::header("the contour is up");
    println!(
        "  try it from another terminal:\n    {}\n  \
         Ctrl-C here stops the agent and the relay (or run `cargo xtask quickstart --stop`).",
        contour::shell_line(contour.cli().args(["connect", "--list"])).trim_start_matches("$ ")
    );
    // Ctrl-C reaches the whole foreground process group, so the relay and the agent stop on their own (and
    // this process with them). Should one of them exit for another reason, the other is stopped too.
    let why = contour.wait()?;
    println!("\n  {why}; stopping the rest");
    contour.stop();
    Ok(())
}

/// The admin steps of a locked fleet, each printed as it runs: lock it (the admin key stays in the client
/// directory, encrypted), see that the machine is refused until certified, certify it after comparing its
/// key, make the CLI's key a member, and show the lock. A second run finds everything in place.
fn lock(contour: &Contour) -> Result<()> {
    let admin_key = contour.admin_key()?;
    let admin = |args: &[&str]| {
        let mut command = contour.cli();
        command.args(["fleet", "lock"]).args(args);
        command.args(["--workspace", contour::FLEET, "--api-key-file"]);
        command.arg(&admin_key);
        command
    };
    contour::header("lock the fleet: its fleet key is made and kept on this (the admin's) machine");
    contour::run_shown(&mut admin(&["init"]))?;

    contour::header("until a fleet admin certifies it, the machine is not reachable");
    let mut early = contour.cli();
    early.args(["connect", "exec", &contour.machine, "--", "true"]);
    println!("{}", contour::shell_line(&early));
    let _ = early.status();

    contour::header(
        "certify the machine: compare its key with `cmdop-agent identity show` there, then sign",
    );
    let mut show = contour.agent_command();
    show.args(["identity", "show", "--json"])
        .env("RUST_LOG", "warn");
    let shown: serde_json::Value = serde_json::from_str(&contour::capture(&mut show)?)?;
    let agent_fingerprint = shown["fingerprint"]
        .as_str()
        .ok_or_else(|| {
            anyhow::anyhow!("`cmdop-agent identity show --json` printed no fingerprint")
        })?
        .to_owned();
    println!("  the agent's key fingerprint: {agent_fingerprint}");
    contour::run_shown(&mut admin(&[
        "sign",
        &contour.machine,
        "--fingerprint",
        &agent_fingerprint,
    ]))?;

    contour::header("make the CLI's key a member: `cmdop status` shows the fingerprint to sign");
    let mut status = contour.cli();
    status.args(["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&contour::capture(&mut status)?)?;
    let client_fingerprint = status["client_fingerprint"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("`cmdop status --json` printed no client fingerprint"))?
        .to_owned();
    println!("  this CLI's key fingerprint: {client_fingerprint}");
    contour::run_shown(&mut admin(&[
        "add-member",
        &client_fingerprint,
        "--role",
        "admin",
    ]))?;

    contour::header("the fleet's lock, every document verified against the fleet key");
    contour::run_shown(&mut admin(&["status"]))
}

/// Whether this build's CLI has `connect exec`: its help succeeds only once the subcommand exists.
pub(crate) fn exec_available(contour: &Contour) -> bool {
    let mut help: Command = contour.cli();
    help.args(["connect", "exec", "--help"]);
    help.output().is_ok_and(|out| out.status.success())
}
