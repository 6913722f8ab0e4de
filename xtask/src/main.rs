//! Project automation: `cargo xtask ci` reproduces CI on this machine; `quickstart` shows the contour working.
//!
//! Kept to std, anyhow, serde_json and portable-pty (the keystroke bench drives real terminals), all of which
//! the workspace builds anyway.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod contour;
mod fuzz;
mod keystroke;
mod lab;
mod layering;
mod quickstart;
mod tidy;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

/// The cargo-deny release CI installs when none is on the PATH; pinned so a CI run is reproducible.
const CARGO_DENY_VERSION: &str = "0.20.2";

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci           fmt, clippy -D warnings, tests, rustdoc -D warnings, layering and tidy checks, cargo-deny,
               every fuzz target for 10 s, the network lab's short form
  lab [SCENARIO…]
               the network fault lab: client, relay and agent in network namespaces under delay, loss,
               partitions, relay kills, address changes and floods (root; skipped without namespaces)
  layering     check that crate dependencies point one way (identity <- fleet <- relay <- agent, cli)
  tidy         check that every Rust file opens with a //! line and no library function passes 80 lines
               without a `// long-function: <reason>` comment
  deny         run cargo-deny's offline checks (bans, licenses, sources), installing it if missing
  fuzz [--seconds N] [TARGET…]
               run the cargo-fuzz targets (installs nightly and cargo-fuzz when missing); reports executions
  quickstart   build the release binaries and bring up a local contour under target/quickstart
  bench exec   time `cmdop connect exec M -- true` against ssh to a local sshd; writes docs/benchmarks.md
  bench tunnel bulk TCP throughput through `cmdop connect forward` against `ssh -L`; writes docs/benchmarks.md
  bench cp     a 1 GiB file with `cmdop connect cp` against scp; writes docs/benchmarks.md
  bench keystroke
               keystroke-to-echo latency of `cmdop connect M` against `ssh -tt`; writes docs/benchmarks.md
  bench scale  N simulated agents on one relay: registration, memory, CPU, latency, a SIGKILL storm;
               writes docs/benchmarks.md
  bench idle   an idle cmdop-agent's memory and CPU per hour beside an idle sshd; writes docs/benchmarks.md
  bench … --link-mtu BYTES
               any benchmark inside a network namespace whose loopback has that MTU (1500: an Ethernet path)";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = workspace_root();
    env::set_current_dir(&root).with_context(|| format!("cannot enter {}", root.display()))?;
    match command.as_str() {
        "ci" => ci(&root),
        "layering" => layering::check(&root),
        "lab" => lab::run(&root, &rest),
        "tidy" => tidy::check(&root),
        "deny" => deny(),
        "fuzz" => fuzz::run(&root, &rest),
        "quickstart" => quickstart::run(&root, &rest),
        "bench" => bench::run(&root, &rest),
        "" | "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

fn ci(root: &Path) -> Result<()> {
    step("fmt", cargo(&["fmt", "--all", "--check"]))?;
    step("tidy", tidy::check(root))?;
    step("layering", layering::check(root))?;
    step("cargo-deny", deny())?;
    step(
        "clippy",
        cargo(&[
            "clippy",
            "--locked",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step("rustdoc", rustdoc())?;
    // The fuzz crate is its own workspace (nightly to run); on stable it must at least build its targets.
    step(
        "fuzz targets build",
        cargo(&["check", "--manifest-path", "fuzz/Cargo.toml", "--locked"]),
    )?;
    step("fuzz", fuzz::ci_smoke(root))?;
    // The lab builds the same debug binaries the tests use (the same cargo command, so only once).
    step("lab", lab::ci_short(root))?;
    // Tests last, so that the test runner's summary is the last thing a reader of the log sees.
    step("tests", tests())?;
    println!("\nxtask ci: all checks passed");
    Ok(())
}

fn step(name: &str, result: Result<()>) -> Result<()> {
    match result {
        Ok(()) => {
            println!("xtask ci: {name} ok");
            Ok(())
        }
        Err(err) => Err(err.context(format!("ci step `{name}` failed"))),
    }
}

fn tests() -> Result<()> {
    test_tools()?;
    // The end-to-end tests run the real binaries and the client library's examples; build them once here
    // rather than in every test process (tests/src/lib.rs runs the same build).
    cargo(&["build", "--locked", "--workspace", "--bins", "--examples"])?;
    // nextest does not run doctests.
    cargo(&["test", "--locked", "--workspace", "--doc"])?;
    let nextest = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if nextest {
        cargo(&[
            "nextest",
            "run",
            "--locked",
            "--workspace",
            "--no-fail-fast",
        ])?;
    } else {
        eprintln!("xtask: cargo-nextest not found, running `cargo test` instead");
        cargo(&[
            "test",
            "--locked",
            "--workspace",
            "--lib",
            "--bins",
            "--tests",
        ])?;
    }
    Ok(())
}

/// The programs the end-to-end tests drive through cmdop as real clients and servers (curl through a forward,
/// ssh to an sshd through a forward and through `connect proxy`, rsync and git through `cmdop rsh`), installed
/// from Debian's packages when missing: a fresh machine has none.
fn test_tools() -> Result<()> {
    let mut missing: Vec<&str> = [
        ("/usr/sbin/sshd", "openssh-server"),
        ("/usr/bin/ssh", "openssh-client"),
        ("/usr/bin/ssh-keygen", "openssh-client"),
        ("/usr/bin/curl", "curl"),
        ("/usr/bin/rsync", "rsync"),
    ]
    .iter()
    .filter(|(path, _)| !Path::new(path).exists())
    .map(|(_, package)| *package)
    .collect();
    // git may come from elsewhere (a source build in /usr/local): any git on PATH will do.
    let git = Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !git {
        missing.push("git");
    }
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing what the end-to-end tests need: {missing:?}");
    let update = Command::new("apt-get")
        .arg("update")
        .status()
        .context("cannot run apt-get update")?;
    ensure_success(update, "apt-get update")?;
    let install = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get install")?;
    ensure_success(install, "apt-get install")
}

fn rustdoc() -> Result<()> {
    let status = cargo_command()
        .args([
            "doc",
            "--locked",
            "--workspace",
            "--no-deps",
            "--document-private-items",
        ])
        .env("RUSTDOCFLAGS", "-D warnings")
        .status()
        .context("cannot run cargo doc")?;
    ensure_success(status, "cargo doc")
}

fn deny() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !installed {
        eprintln!(
            "xtask: cargo-deny not found; installing cargo-deny {CARGO_DENY_VERSION} (a few minutes)"
        );
        cargo(&[
            "install",
            "--locked",
            "cargo-deny",
            "--version",
            CARGO_DENY_VERSION,
        ])?;
    }
    // Advisories need the network to fetch the database; bans, licenses and sources do not.
    cargo(&["deny", "--offline", "check", "bans", "licenses", "sources"])
}

/// Runs `cargo ARGS` in the workspace root, inheriting stdio, and fails on a non-zero exit.
pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    let status = cargo_command()
        .args(args)
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    ensure_success(status, &format!("cargo {}", args.join(" ")))
}

/// `cargo` without the variables `cargo run` set for xtask itself: ring's build script tracks
/// CARGO_MANIFEST_DIR, so a nested build that inherits them rebuilds ring and everything above it, and the
/// end-to-end tests' own build (tests/src/lib.rs strips the same set) would then rebuild it all again.
pub(crate) fn cargo_command() -> Command {
    let mut command = Command::new("cargo");
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let package_variable = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
            || matches!(
                key.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "OUT_DIR"
            );
        if package_variable {
            command.env_remove(key.as_ref());
        }
    }
    command
}

fn ensure_success(status: std::process::ExitStatus, what: &str) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("`{what}` exited with {status}")
    }
}

fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is xtask/; the workspace root is its parent.
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(manifest_dir)
}
