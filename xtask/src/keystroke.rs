//! `cargo xtask bench keystroke`: how long a keystroke takes to come back as its echo, through `cmdop
//! connect` and the relay, against `ssh -tt` to a local sshd, in the same run.
//!
//! Each client runs in a real pseudo-terminal driven by this process, with `cat` in the remote terminal (so the
//! remote line discipline echoes every byte at once). One sample is the time from writing one byte to the
//! local terminal until that byte is read back from it. Both clients alternate in blocks, so they see the same
//! machine state.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use portable_pty::{CommandBuilder, PtySize, native_pty_system};

use crate::bench::{Summary, machine, publish, setup, utc_now, versions};
use crate::contour;

const USAGE: &str = "usage: cargo xtask bench keystroke [--keystrokes N] [--no-build]

  --keystrokes N  timed keystrokes per client (default 1000), after 100 warm-up ones
  --no-build      use the release binaries already in target/release instead of building them";

const SECTION: &str = "## keystroke: cmdop vs ssh";
const DEFAULT_KEYSTROKES: usize = 1000;
const WARMUP: usize = 100;
/// Keystrokes per block; the clients take turns block by block.
const BLOCK: usize = 50;
/// Longest wait for one echo before the run is declared broken.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `cargo xtask bench keystroke ARGS`.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    let (keystrokes, build) = parse_args(args)?;
    let (_scratch, sshd, contour) = setup(root, build)?;

    contour::header("the two clients, each in its own terminal, running `cat` remotely");
    let mut cmdop_command = contour.cli();
    cmdop_command.args(["connect", &contour.machine, "--escape-char", "none"]);
    let mut ssh_command = sshd.command();
    ssh_command.args(["-tt", "cat"]);
    println!("{}", contour::shell_line(&cmdop_command));
    println!("{}", contour::shell_line(&ssh_command));
    let mut cmdop = Echo::start(&cmdop_command, Some("cat"))?;
    let mut ssh = Echo::start(&ssh_command, None)?;

    contour::header(&format!(
        "{WARMUP} warm-up keystrokes each, then {keystrokes} timed, alternating in blocks of {BLOCK}"
    ));
    cmdop.keystrokes(WARMUP)?;
    ssh.keystrokes(WARMUP)?;
    let mut cmdop_times = Vec::with_capacity(keystrokes);
    let mut ssh_times = Vec::with_capacity(keystrokes);
    while cmdop_times.len() < keystrokes {
        let n = BLOCK.min(keystrokes - cmdop_times.len());
        cmdop_times.extend(cmdop.keystrokes(n)?);
        ssh_times.extend(ssh.keystrokes(n)?);
    }
    drop(cmdop);
    drop(ssh);
    drop(contour);
    drop(sshd);

    let rows = [
        (
            "`cmdop connect MACHINE` (client → relay → agent → PTY, and back)",
            Summary::of(&cmdop_times)?,
        ),
        ("`ssh -tt -p PORT 127.0.0.1 cat`", Summary::of(&ssh_times)?),
    ];
    let mut section = format!("{SECTION}\n\n");
    let _ = write!(
        section,
        "Method: each client runs in a pseudo-terminal driven by the bench, with `cat` in the remote terminal. \
         One sample is the time from writing one byte to the local terminal to reading its echo back from \
         it: client, relay (cmdop only), agent or sshd, the remote PTY's echo, and the way back. {WARMUP} \
         warm-up keystrokes each, then {keystrokes} timed per client, the two clients alternating in blocks \
         of {BLOCK}. Everything runs on this machine over 127.0.0.1; release build.\n\n\
         - date: {date}\n- command: `cargo xtask bench keystroke --keystrokes {keystrokes}{no_build}`\n\
         - machine: {machine}\n- versions: {versions}\n\n\
         | client | p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|\n",
        date = utc_now(),
        no_build = if build { "" } else { " --no-build" },
        machine = machine()?,
        versions = versions(build)?,
    );
    for (label, s) in &rows {
        let _ = writeln!(
            section,
            "| {label} | {} | {} | {} | {} |",
            us(s.median),
            us(s.p90),
            us(s.p99),
            us(s.max)
        );
    }
    let [(_, c), (_, s)] = &rows;
    let verdict = if c.median <= s.median && c.p99 <= s.p99 {
        "met"
    } else {
        "not met"
    };
    let _ = writeln!(
        section,
        "\ncmdop / ssh: p50 **{:.2}×**, p99 **{:.2}×** (goal: both ≤ 1.0×: {verdict}).",
        ratio(c.median, s.median),
        ratio(c.p99, s.p99)
    );
    publish(root, SECTION, &section)
}

fn parse_args(args: &[String]) -> Result<(usize, bool)> {
    let mut keystrokes = DEFAULT_KEYSTROKES;
    let mut build = true;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--no-build" => build = false,
            "--keystrokes" => {
                let n = args.next().context("--keystrokes takes a number")?;
                keystrokes = match n.parse::<usize>() {
                    Ok(n) if n >= 1 => n,
                    _ => bail!("--keystrokes takes a positive whole number, got `{n}`"),
                };
            }
            other => bail!("bench keystroke does not take `{other}`\n\n{USAGE}"),
        }
    }
    Ok((keystrokes, build))
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// A client in a pseudo-terminal with `cat` echoing on the far side.
struct Echo {
    reader: Box<dyn Read + Send>,
    writer: Box<dyn Write + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    /// Keeps the terminal open.
    _master: Box<dyn portable_pty::MasterPty + Send>,
    next: u8,
    /// Keys typed since the last line end.
    line: Vec<u8>,
}

impl Echo {
    /// Starts `command` in a terminal; `then` is typed first when the client opens a shell (cmdop), while
    /// `ssh … cat` runs `cat` directly.
    fn start(command: &Command, then: Option<&str>) -> Result<Self> {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: 24,
                cols: 200,
                pixel_width: 0,
                pixel_height: 0,
            })
            .map_err(|e| anyhow::anyhow!("cannot open a pseudo-terminal: {e}"))?;
        let mut builder = CommandBuilder::new(command.get_program());
        builder.args(command.get_args());
        builder.env("TERM", "xterm-256color");
        let child = pair
            .slave
            .spawn_command(builder)
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", contour::shell_line(command)))?;
        drop(pair.slave);
        let reader = pair
            .master
            .try_clone_reader()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let writer = pair
            .master
            .take_writer()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut echo = Self {
            reader,
            writer,
            child,
            _master: pair.master,
            next: b'a',
            line: Vec::new(),
        };
        if let Some(line) = then {
            // Wait for the shell, start cat, and wait until cat echoes.
            echo.type_until(b"\r", b"\n")?;
            echo.writer.write_all(format!("{line}\r").as_bytes())?;
            std::thread::sleep(Duration::from_millis(500));
        }
        // Whatever the terminal printed so far (banner, prompt, the echoed command) is not timed. The echo of
        // the line and then cat's copy of it must both arrive, so nothing is left to confuse the first sample.
        echo.type_until(b"ready\r", b"ready\r\nready\r\n")?;
        Ok(echo)
    }

    /// Types `input` and reads until `expect` shows up.
    fn type_until(&mut self, input: &[u8], expect: &[u8]) -> Result<()> {
        self.writer.write_all(input)?;
        self.writer.flush()?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen.windows(expect.len()).any(|w| w == expect) {
            if Instant::now() > deadline {
                bail!(
                    "no {:?} from the terminal within 30 s; it shows {:?}",
                    String::from_utf8_lossy(expect),
                    String::from_utf8_lossy(&seen)
                );
            }
            let n = self.reader.read(&mut buf)?;
            if n == 0 {
                bail!(
                    "the client's terminal closed: {:?}",
                    String::from_utf8_lossy(&seen)
                );
            }
            seen.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        Ok(())
    }

    /// Times `n` keystrokes, one at a time; ends lines now and then (untimed) to stay under the terminal's
    /// line limit.
    fn keystrokes(&mut self, n: usize) -> Result<Vec<Duration>> {
        let mut samples = Vec::with_capacity(n);
        let mut buf = [0u8; 256];
        for _ in 0..n {
            let key = self.next;
            self.next = if key == b'z' { b'a' } else { key + 1 };
            let start = Instant::now();
            self.writer.write_all(&[key])?;
            self.writer.flush()?;
            'echo: loop {
                let got = self.reader.read(&mut buf)?;
                if got == 0 {
                    bail!("the client's terminal closed mid-run");
                }
                if buf.get(..got).unwrap_or_default().contains(&key) {
                    break 'echo;
                }
                if start.elapsed() > ECHO_TIMEOUT {
                    bail!("no echo within {ECHO_TIMEOUT:?}");
                }
            }
            samples.push(start.elapsed());
            self.line.push(key);
            if self.line.len() == 64 {
                // The echo of Enter, then cat's copy of the line: both read before the next sample.
                let mut expect = b"\r\n".to_vec();
                expect.extend_from_slice(&self.line);
                expect.extend_from_slice(b"\r\n");
                self.line.clear();
                self.type_until(b"\r", &expect)?;
            }
        }
        Ok(samples)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
