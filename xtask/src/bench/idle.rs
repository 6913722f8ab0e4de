//! `cargo xtask bench idle`: what an idle `cmdop-agent` costs the machine it runs on, beside the daemons it
//! is compared with: `sshd` with no session, and `tailscaled` where Debian's package exists.
//!
//! The agent is the release binary, enrolled with a local relay exactly as `cargo xtask quickstart` does it;
//! sshd is the bench's own (`-D`, its own config and host key on a free loopback port), never connected to.
//! After a settling minute it reads each process's resident memory (`/proc/PID/status`, `smaps_rollup`) and
//! the CPU time it spends over `--minutes` (default 10), scaled to an hour.

use std::fmt::Write as _;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::procfs::{self, Memory, mib};
use super::{Scratch, Sshd, machine, publish, utc_now, versions};
use crate::contour::{self, Binaries, Contour};

pub(super) const USAGE: &str = "usage: cargo xtask bench idle [--minutes N] [--no-build]

  --minutes N  how long CPU time is counted, scaled to an hour (default 10)
  --no-build   use the release binaries already in target/release";

const SECTION: &str = "## idle: cmdop-agent beside sshd";
/// After registration and before counting: the first heartbeats, the first keep-alives.
const SETTLE: Duration = Duration::from_secs(60);
const TAILSCALED: &str = "/usr/sbin/tailscaled";

/// One daemon's idle figures.
#[derive(Debug)]
struct Idle {
    label: String,
    memory: Memory,
    threads: u64,
    cpu_seconds: f64,
    window: Duration,
}

impl Idle {
    fn per_hour(&self) -> f64 {
        self.cpu_seconds * 3600.0 / self.window.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Runs `cargo xtask bench idle ARGS`.
pub(super) fn run(root: &Path, args: &[String]) -> Result<()> {
    let (minutes, build) = parse(args)?;
    let bins = if build {
        contour::header("building the release binaries");
        Binaries::build_release(root)?
    } else {
        Binaries::existing_release(root)?
    };
    let scratch = Scratch::new()?;
    contour::header("a local sshd, never connected to");
    let sshd = Sshd::start(scratch.path())?;
    let contour = Contour::up(bins, &scratch.path().join("contour"), "127.0.0.1:0")?;
    let agent = contour.agent_pid().context("the agent is not running")?;
    let daemons = [
        ("`cmdop-agent run` (online, heartbeating)".to_owned(), agent),
        (
            "`sshd -D` listening, no session (OpenSSH, Debian's package)".to_owned(),
            sshd.pid(),
        ),
    ];
    contour::header(&format!(
        "settling for {} s, then counting CPU time for {minutes} min",
        SETTLE.as_secs()
    ));
    thread::sleep(SETTLE);
    let window = Duration::from_secs(minutes * 60);
    let before: Vec<f64> = daemons
        .iter()
        .map(|(_, pid)| procfs::cpu_seconds(*pid))
        .collect::<Result<_>>()?;
    let started = Instant::now();
    thread::sleep(window);
    let elapsed = started.elapsed();
    let load = procfs::load_average();
    let mut rows = Vec::new();
    for ((label, pid), before) in daemons.iter().zip(before) {
        rows.push(Idle {
            label: label.clone(),
            memory: Memory::of(*pid)?,
            threads: procfs::threads(*pid),
            cpu_seconds: procfs::cpu_seconds(*pid)? - before,
            window: elapsed,
        });
    }
    drop(contour);
    drop(sshd);
    let mut out = format!("{SECTION}\n\n");
    let _ = write!(
        out,
        "Method: the release `cmdop-agent`, enrolled with a local relay and online (heartbeats every 30 s, QUIC \
         keep-alives every 5 s), and the bench's own `sshd -D` with no session, on the same machine at the same \
         time. Memory after a settling minute, from `/proc/PID/status` and `smaps_rollup`: RSS, its anonymous \
         part (heap, stacks: this process's alone) and its file-backed part (the binary's and libraries' pages \
         it has touched, which the kernel maps 64 KiB around each fault), and PSS (shared pages divided among \
         their users). CPU is user + system time over {minutes} min, scaled to an hour (the kernel counts in \
         10 ms ticks).\n\n\
         - date: {date}\n- command: `cargo xtask bench idle --minutes {minutes}{flags}`\n- machine: {machine}\n\
         - versions: {versions}\n- load average at the end: {load}\n\n\
         | daemon | RSS | anon | file | PSS | threads | CPU per hour |\n|---|---:|---:|---:|---:|---:|---:|\n",
        date = utc_now(),
        flags = if build { "" } else { " --no-build" },
        machine = machine()?,
        versions = versions(build)?,
    );
    for row in &rows {
        let m = &row.memory;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.2} s |",
            row.label,
            mib(m.rss),
            mib(m.anon),
            mib(m.file),
            mib(m.pss),
            row.threads,
            row.per_hour()
        );
    }
    let _ = writeln!(out, "\n{}", tailscaled_note());
    publish(root, SECTION, &out)
}

/// What can be said about tailscaled on this machine.
fn tailscaled_note() -> String {
    if Path::new(TAILSCALED).exists() {
        format!(
            "`tailscaled` is installed ({TAILSCALED}) but not measured by this bench: it needs a tailnet login \
             to be idle the way an enrolled agent is."
        )
    } else {
        "`tailscaled`: not measured. Debian 12 has no `tailscale` package (`apt-get install tailscale`: \
         \"Unable to locate package tailscale\"); it comes only from Tailscale's own repository."
            .to_owned()
    }
}

fn parse(args: &[String]) -> Result<(u64, bool)> {
    let mut minutes = 10;
    let mut build = true;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--no-build" => build = false,
            "--minutes" => {
                let n = args.next().context("--minutes takes a number")?;
                minutes = match n.parse::<u64>() {
                    Ok(n) if n >= 1 => n,
                    _ => bail!("--minutes takes a positive whole number, got `{n}`"),
                };
            }
            other => bail!("bench idle does not take `{other}`\n\n{USAGE}"),
        }
    }
    Ok((minutes, build))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_arguments() {
        assert_eq!(parse(&[]).unwrap(), (10, true));
        assert_eq!(
            parse(&["--minutes".into(), "3".into(), "--no-build".into()]).unwrap(),
            (3, false)
        );
        assert!(parse(&["--minutes".into(), "0".into()]).is_err());
        assert!(parse(&["--hours".into()]).is_err());
    }
}
